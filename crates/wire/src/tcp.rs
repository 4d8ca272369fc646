//! TCP segment header (RFC 9293).
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |          Source Port          |       Destination Port        |
//! |                        Sequence Number                        |
//! |                    Acknowledgment Number                      |
//! |  Data |     |N|C|E|U|A|P|R|S|F|                               |
//! | Offset| Rsvd|S|W|C|R|C|S|S|Y|I|            Window             |
//! |           Checksum            |         Urgent Pointer        |
//! |                    Options (Data Offset > 5)                  |
//! ```
//!
//! Options are skipped, not parsed: [`Packet::options`] returns their bytes.
//! The checksum covers a pseudo-header ([`IpPair`]) and the whole segment,
//! so a view must span exactly the segment, as the IP payload does.
//!
//! # Panics
//!
//! After [`Packet::new_checked`] no accessor or setter panics, even after
//! `set_header_len` wrote a length the buffer cannot hold: slices are clipped
//! to the buffer. On a view made with [`Packet::new_unchecked`], accessors
//! panic when the buffer is shorter than the fields they read.

use std::fmt;
use std::ops::{BitAnd, BitOr, BitOrAssign};

use crate::checksum;
use crate::error::{Error, Result};
use crate::field::{read_u16, read_u32, write_u16, write_u32};
use crate::ip::{IpPair, Protocol};

/// Length of a header without options.
pub const HEADER_LEN: usize = 20;

mod offset {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const SEQ: usize = 4;
    pub const ACK: usize = 8;
    pub const OFF_FLAGS: usize = 12;
    pub const WINDOW: usize = 14;
    pub const CHECKSUM: usize = 16;
    pub const URGENT: usize = 18;
}

const FLAGS_MASK: u16 = 0x01ff;

/// The nine TCP control bits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Flags(u16);

impl Flags {
    /// No more data from sender.
    pub const FIN: Flags = Flags(0x001);
    /// Synchronize sequence numbers.
    pub const SYN: Flags = Flags(0x002);
    /// Reset the connection.
    pub const RST: Flags = Flags(0x004);
    /// Push.
    pub const PSH: Flags = Flags(0x008);
    /// Acknowledgment field is significant.
    pub const ACK: Flags = Flags(0x010);
    /// Urgent pointer field is significant.
    pub const URG: Flags = Flags(0x020);
    /// ECN-Echo.
    pub const ECE: Flags = Flags(0x040);
    /// Congestion window reduced.
    pub const CWR: Flags = Flags(0x080);
    /// ECN nonce (historic, RFC 3540).
    pub const NS: Flags = Flags(0x100);

    const NAMES: [(Flags, &'static str); 9] = [
        (Flags::FIN, "FIN"),
        (Flags::SYN, "SYN"),
        (Flags::RST, "RST"),
        (Flags::PSH, "PSH"),
        (Flags::ACK, "ACK"),
        (Flags::URG, "URG"),
        (Flags::ECE, "ECE"),
        (Flags::CWR, "CWR"),
        (Flags::NS, "NS"),
    ];

    /// No flags.
    pub const fn empty() -> Flags {
        Flags(0)
    }

    /// Flags from their wire bits; bits above the nine flags are dropped.
    pub const fn from_bits(bits: u16) -> Flags {
        Flags(bits & FLAGS_MASK)
    }

    /// The wire bits.
    pub const fn bits(self) -> u16 {
        self.0
    }

    /// Whether every flag in `other` is set.
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether no flag is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Sets the flags in `other`.
    pub fn insert(&mut self, other: Flags) {
        self.0 |= other.0;
    }

    /// Clears the flags in `other`.
    pub fn remove(&mut self, other: Flags) {
        self.0 &= !other.0;
    }
}

impl BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        Flags(self.0 | rhs.0)
    }
}

impl BitOrAssign for Flags {
    fn bitor_assign(&mut self, rhs: Flags) {
        self.0 |= rhs.0;
    }
}

impl BitAnd for Flags {
    type Output = Flags;
    fn bitand(self, rhs: Flags) -> Flags {
        Flags(self.0 & rhs.0)
    }
}

/// Formats as `SYN|ACK`, or `-` when empty.
impl fmt::Display for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("-");
        }
        let mut first = true;
        for (flag, name) in Self::NAMES {
            if self.contains(flag) {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Flags({self})")
    }
}

/// A read/write view of a TCP segment.
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

    /// Checks that the buffer holds the whole header, options included.
    ///
    /// # Errors
    ///
    /// [`Error::Truncated`] if it is shorter than 20 bytes or than Data Offset
    /// says; [`Error::Malformed`] if Data Offset is below 5.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let header_len = self.header_len();
        if header_len < HEADER_LEN {
            return Err(Error::Malformed { what: "TCP data offset below 5" });
        }
        if header_len > len {
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

    /// Source port.
    pub fn src_port(&self) -> u16 {
        read_u16(self.data(), offset::SRC_PORT)
    }

    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        read_u16(self.data(), offset::DST_PORT)
    }

    /// Sequence number.
    pub fn seq_number(&self) -> u32 {
        read_u32(self.data(), offset::SEQ)
    }

    /// Acknowledgment number.
    pub fn ack_number(&self) -> u32 {
        read_u32(self.data(), offset::ACK)
    }

    /// Header length in bytes (Data Offset × 4), options included.
    pub fn header_len(&self) -> usize {
        usize::from(self.data()[offset::OFF_FLAGS] >> 4) * 4
    }

    /// The control bits.
    pub fn flags(&self) -> Flags {
        Flags::from_bits(read_u16(self.data(), offset::OFF_FLAGS))
    }

    /// Window size.
    pub fn window_len(&self) -> u16 {
        read_u16(self.data(), offset::WINDOW)
    }

    /// The checksum field.
    pub fn checksum(&self) -> u16 {
        read_u16(self.data(), offset::CHECKSUM)
    }

    /// Urgent pointer.
    pub fn urgent_at(&self) -> u16 {
        read_u16(self.data(), offset::URGENT)
    }

    /// End of the header: Data Offset × 4, kept within
    /// `HEADER_LEN..=buffer length` so that `set_header_len` cannot make a
    /// later read panic. For a checked packet this is [`Packet::header_len`].
    fn header_end(&self) -> usize {
        self.header_len().max(HEADER_LEN).min(self.data().len())
    }

    /// Whether the checksum is correct for this segment sent between `ips`.
    pub fn verify_checksum(&self, ips: &IpPair) -> bool {
        let data = self.data();
        let pseudo = ips.pseudo_header(Protocol::Tcp, crate::field::saturating_u32(data.len()));
        checksum::combine(&[pseudo, checksum::sum(data)]) == 0xffff
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// The options: header bytes after the first 20.
    pub fn options(&self) -> &'a [u8] {
        let header_end = self.header_end();
        &self.buffer.as_ref()[HEADER_LEN..header_end]
    }

    /// The payload: everything after the header.
    pub fn payload(&self) -> &'a [u8] {
        let header_end = self.header_end();
        &self.buffer.as_ref()[header_end..]
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

    /// Sets the sequence number.
    pub fn set_seq_number(&mut self, value: u32) {
        write_u32(self.data_mut(), offset::SEQ, value);
    }

    /// Sets the acknowledgment number.
    pub fn set_ack_number(&mut self, value: u32) {
        write_u32(self.data_mut(), offset::ACK, value);
    }

    /// Sets Data Offset from a header length in bytes (rounded down to a
    /// multiple of 4, at most 60), keeping the flags.
    pub fn set_header_len(&mut self, value: usize) {
        let words = u8::try_from(value / 4).unwrap_or(0x0f).min(0x0f);
        let byte = &mut self.data_mut()[offset::OFF_FLAGS];
        *byte = (*byte & 0x0f) | (words << 4);
    }

    /// Sets the control bits, keeping Data Offset and the reserved bits.
    pub fn set_flags(&mut self, value: Flags) {
        let raw = read_u16(self.data_mut(), offset::OFF_FLAGS) & !FLAGS_MASK;
        write_u16(self.data_mut(), offset::OFF_FLAGS, raw | value.bits());
    }

    /// Sets the window size.
    pub fn set_window_len(&mut self, value: u16) {
        write_u16(self.data_mut(), offset::WINDOW, value);
    }

    /// Sets the checksum field.
    pub fn set_checksum(&mut self, value: u16) {
        write_u16(self.data_mut(), offset::CHECKSUM, value);
    }

    /// Sets the urgent pointer.
    pub fn set_urgent_at(&mut self, value: u16) {
        write_u16(self.data_mut(), offset::URGENT, value);
    }

    /// Computes and stores the checksum for this segment sent between `ips`.
    pub fn fill_checksum(&mut self, ips: &IpPair) {
        self.set_checksum(0);
        let data = self.data_mut();
        let value = ips.upper_layer_checksum(Protocol::Tcp, data.len(), checksum::sum(data));
        self.set_checksum(value);
    }

    /// The payload, mutably.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let header_end = self.header_end();
        &mut self.data_mut()[header_end..]
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Packet<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// The fields of a TCP header, options aside.
///
/// [`Repr::parse`] skips options; [`Repr::emit`] writes a 20-byte header
/// without them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Sequence number.
    pub seq_number: u32,
    /// Acknowledgment number.
    pub ack_number: u32,
    /// Control bits.
    pub flags: Flags,
    /// Window size.
    pub window_len: u16,
    /// Urgent pointer.
    pub urgent_at: u16,
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
            seq_number: packet.seq_number(),
            ack_number: packet.ack_number(),
            flags: packet.flags(),
            window_len: packet.window_len(),
            urgent_at: packet.urgent_at(),
        })
    }

    /// Length of the header [`Repr::emit`] writes, [`HEADER_LEN`].
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header into the first [`Repr::buffer_len`] bytes of
    /// `packet` with a zero checksum (reserved bits cleared). Write the
    /// payload, then call [`Packet::fill_checksum`].
    ///
    /// # Panics
    ///
    /// If the buffer is shorter than [`Repr::buffer_len`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]> + ?Sized>(&self, packet: &mut Packet<&mut T>) {
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_seq_number(self.seq_number);
        packet.set_ack_number(self.ack_number);
        write_u16(packet.data_mut(), offset::OFF_FLAGS, 0);
        packet.set_header_len(HEADER_LEN);
        packet.set_flags(self.flags);
        packet.set_window_len(self.window_len);
        packet.set_checksum(0);
        packet.set_urgent_at(self.urgent_at);
    }
}
