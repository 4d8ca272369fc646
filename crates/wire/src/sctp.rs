//! SCTP common header (RFC 9260 §3.1).
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |     Source Port Number        |     Destination Port Number   |
//! |                      Verification Tag                         |
//! |                         Checksum                              |
//! |                    Chunks ...                                 |
//! ```
//!
//! The checksum is CRC32c ([`crate::checksum::crc32c`]) over the whole packet with
//! the checksum field zeroed. Unlike every other field, it is stored
//! least-significant byte first (RFC 9260 appendix A, and what Linux and
//! Wireshark do); [`Packet::checksum`] returns the CRC value itself. It covers
//! no addresses, so NAT needs no checksum update for SCTP addresses, but a
//! port rewrite needs a full recompute. Chunks are not parsed: they are the
//! payload.
//!
//! # Panics
//!
//! After [`Packet::new_checked`] no accessor or setter panics. On a view made
//! with [`Packet::new_unchecked`] over fewer than [`HEADER_LEN`] bytes,
//! accessors panic.

use crate::checksum::Crc32c;
use crate::error::{Error, Result};
use crate::field::{read_array, read_u16, read_u32, write_bytes, write_u16, write_u32};

/// Length of the common header.
pub const HEADER_LEN: usize = 12;

mod offset {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const VERIFICATION_TAG: usize = 4;
    pub const CHECKSUM: usize = 8;
}

/// A read/write view of an SCTP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps `buffer` without checking it; accessors may then panic.
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps `buffer` after [`Packet::check_len`]; no accessor can panic afterwards.
    ///
    /// # Errors
    ///
    /// [`Error::Truncated`] if `buffer` is shorter than [`HEADER_LEN`].
    pub fn new_checked(buffer: T) -> Result<Packet<T>> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that the buffer holds the common header.
    ///
    /// # Errors
    ///
    /// [`Error::Truncated`] if it is shorter than [`HEADER_LEN`].
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// Returns the underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn data(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// The header length, [`HEADER_LEN`].
    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }

    /// Source port.
    pub fn src_port(&self) -> u16 {
        read_u16(self.data(), offset::SRC_PORT)
    }

    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        read_u16(self.data(), offset::DST_PORT)
    }

    /// Verification tag.
    pub fn verification_tag(&self) -> u32 {
        read_u32(self.data(), offset::VERIFICATION_TAG)
    }

    /// The CRC32c in the checksum field (read least-significant byte first).
    pub fn checksum(&self) -> u32 {
        u32::from_le_bytes(read_array(self.data(), offset::CHECKSUM))
    }

    /// The CRC32c of the packet with its checksum field taken as zero.
    pub fn compute_checksum(&self) -> u32 {
        let data = self.data();
        Crc32c::new().update(&data[..offset::CHECKSUM]).update(&[0; 4]).update(&data[HEADER_LEN..]).finish()
    }

    /// Whether the checksum field holds the packet's CRC32c.
    pub fn verify_checksum(&self) -> bool {
        self.checksum() == self.compute_checksum()
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// The chunks: everything after the common header.
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn data_mut(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }

    /// Sets the source port. The checksum is not updated.
    pub fn set_src_port(&mut self, value: u16) {
        write_u16(self.data_mut(), offset::SRC_PORT, value);
    }

    /// Sets the destination port. The checksum is not updated.
    pub fn set_dst_port(&mut self, value: u16) {
        write_u16(self.data_mut(), offset::DST_PORT, value);
    }

    /// Sets the verification tag. The checksum is not updated.
    pub fn set_verification_tag(&mut self, value: u32) {
        write_u32(self.data_mut(), offset::VERIFICATION_TAG, value);
    }

    /// Stores `value` as the CRC32c (least-significant byte first).
    pub fn set_checksum(&mut self, value: u32) {
        write_bytes(self.data_mut(), offset::CHECKSUM, &value.to_le_bytes());
    }

    /// Computes and stores the CRC32c.
    pub fn fill_checksum(&mut self) {
        let value = self.compute_checksum();
        self.set_checksum(value);
    }

    /// The chunks, mutably.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.data_mut()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Packet<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// The fields of an SCTP common header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Verification tag.
    pub verification_tag: u32,
}

impl Repr {
    /// Reads the common header of `packet`. The checksum is not verified:
    /// call [`Packet::verify_checksum`] for that.
    ///
    /// # Errors
    ///
    /// [`Error::Truncated`] if the buffer is shorter than [`HEADER_LEN`].
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Result<Repr> {
        packet.check_len()?;
        Ok(Repr {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            verification_tag: packet.verification_tag(),
        })
    }

    /// Length of the header [`Repr::emit`] writes, [`HEADER_LEN`].
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the common header into the first [`Repr::buffer_len`] bytes of
    /// `packet` with a zero checksum. Write the chunks, then call
    /// [`Packet::fill_checksum`].
    ///
    /// # Panics
    ///
    /// If the buffer is shorter than [`Repr::buffer_len`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]> + ?Sized>(&self, packet: &mut Packet<&mut T>) {
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_verification_tag(self.verification_tag);
        packet.set_checksum(0);
    }
}
