//! UDP datagram header (RFC 768).
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |          Source Port          |       Destination Port        |
//! |            Length             |           Checksum            |
//! ```
//!
//! The checksum covers a pseudo-header ([`IpPair`]) and the datagram up to
//! Length. Over IPv4 a checksum of 0 means "none was computed" and is
//! accepted by [`Packet::verify_checksum`]; a computed checksum of 0 is sent
//! as `0xffff`. Over IPv6 the checksum is mandatory.
//!
//! When a NAT rewrites an address or port with
//! [`checksum::update_u16`] / [`checksum::update_ip_addr`], it must leave a
//! zero (IPv4) checksum alone and store a result of 0 as `0xffff`.
//!
//! # Panics
//!
//! After [`Packet::new_checked`] no accessor or setter panics, even after
//! `set_len` wrote a length the buffer cannot hold: slices are clipped to the
//! buffer. On a view made with [`Packet::new_unchecked`], accessors panic
//! when the buffer is shorter than the fields they read.

use crate::checksum;
use crate::error::{Error, Result};
use crate::field::{read_u16, saturating_u16, write_u16};
use crate::ip::{IpPair, Protocol};

/// Length of the header.
pub const HEADER_LEN: usize = 8;

mod offset {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const LENGTH: usize = 4;
    pub const CHECKSUM: usize = 6;
}

/// A read/write view of a UDP datagram.
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
    /// As [`Packet::check_len`].
    pub fn new_checked(buffer: T) -> Result<Packet<T>> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that the buffer holds the header and Length bytes.
    ///
    /// # Errors
    ///
    /// [`Error::Truncated`] if it is shorter than 8 bytes or than Length;
    /// [`Error::Malformed`] if Length is below 8.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let udp_len = usize::from(self.len());
        if udp_len < HEADER_LEN {
            return Err(Error::Malformed { what: "UDP length below 8" });
        }
        if udp_len > len {
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

    /// The Length field: header plus payload.
    pub fn len(&self) -> u16 {
        read_u16(self.data(), offset::LENGTH)
    }

    /// Whether the payload is empty (Length is 8).
    pub fn is_empty(&self) -> bool {
        usize::from(self.len()) <= HEADER_LEN
    }

    /// The checksum field.
    pub fn checksum(&self) -> u16 {
        read_u16(self.data(), offset::CHECKSUM)
    }

    /// End of the datagram: Length, kept within `HEADER_LEN..=buffer length`
    /// so that `set_len` cannot make a later read panic. For a checked packet
    /// this is exactly Length.
    fn datagram_end(&self) -> usize {
        usize::from(self.len()).max(HEADER_LEN).min(self.data().len())
    }

    /// Whether the checksum is correct for this datagram sent between `ips`.
    /// A zero checksum over IPv4 counts as correct (it means none).
    pub fn verify_checksum(&self, ips: &IpPair) -> bool {
        if self.checksum() == 0 {
            return !ips.is_ipv6();
        }
        let data = &self.data()[..self.datagram_end()];
        let pseudo = ips.pseudo_header(Protocol::Udp, crate::field::saturating_u32(data.len()));
        checksum::combine(&[pseudo, checksum::sum(data)]) == 0xffff
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// The payload: from the end of the header to Length.
    pub fn payload(&self) -> &'a [u8] {
        let end = self.datagram_end();
        &self.buffer.as_ref()[HEADER_LEN..end]
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

    /// Sets the Length field.
    pub fn set_len(&mut self, value: u16) {
        write_u16(self.data_mut(), offset::LENGTH, value);
    }

    /// Sets the checksum field.
    pub fn set_checksum(&mut self, value: u16) {
        write_u16(self.data_mut(), offset::CHECKSUM, value);
    }

    /// Computes and stores the checksum for this datagram sent between `ips`
    /// (a computed 0 is stored as `0xffff`).
    pub fn fill_checksum(&mut self, ips: &IpPair) {
        self.set_checksum(0);
        let end = self.datagram_end();
        let data = &self.data_mut()[..end];
        let value = ips.upper_layer_checksum(Protocol::Udp, data.len(), checksum::sum(data));
        self.set_checksum(if value == 0 { 0xffff } else { value });
    }

    /// The payload, mutably.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = self.datagram_end();
        &mut self.data_mut()[HEADER_LEN..end]
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Packet<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// The fields of a UDP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Payload length in bytes (Length minus 8).
    pub payload_len: usize,
}

impl Repr {
    /// Reads the header of `packet`. The checksum is not verified: call
    /// [`Packet::verify_checksum`] for that.
    ///
    /// # Errors
    ///
    /// As [`Packet::check_len`].
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Result<Repr> {
        packet.check_len()?;
        Ok(Repr {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            payload_len: usize::from(packet.len()).saturating_sub(HEADER_LEN),
        })
    }

    /// Length of the header [`Repr::emit`] writes, [`HEADER_LEN`].
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header into the first [`Repr::buffer_len`] bytes of
    /// `packet` with a zero checksum. Length saturates at 65,535. Write the
    /// payload, then call [`Packet::fill_checksum`] (or leave 0 over IPv4).
    ///
    /// # Panics
    ///
    /// If the buffer is shorter than [`Repr::buffer_len`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]> + ?Sized>(&self, packet: &mut Packet<&mut T>) {
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_len(saturating_u16(HEADER_LEN.saturating_add(self.payload_len)));
        packet.set_checksum(0);
    }
}
