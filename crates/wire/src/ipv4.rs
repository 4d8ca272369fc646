//! IPv4 header (RFC 791), options included via IHL.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |Version|  IHL  |   DSCP    |ECN|          Total Length         |
//! |         Identification        |Flags|      Fragment Offset    |
//! |  Time to Live |    Protocol   |         Header Checksum       |
//! |                       Source Address                          |
//! |                    Destination Address                        |
//! |                    Options (IHL > 5)                          |
//! ```
//!
//! [`Packet::payload`] ends at the Total Length, so Ethernet padding after a
//! short packet is not part of it.
//!
//! # Panics
//!
//! After [`Packet::new_checked`] (or [`Packet::new_checked_header`]) no
//! accessor or setter panics, even after a setter wrote a length the buffer
//! cannot hold: slices are clipped to the buffer. On a view made with
//! [`Packet::new_unchecked`], accessors panic when the buffer is shorter than
//! the fields they read.

use std::net::Ipv4Addr;

use crate::checksum;
use crate::error::{Error, Result};
use crate::field::{read_array, read_u16, saturating_u16, write_bytes, write_u16};
use crate::ip::Protocol;

/// Length of a header without options.
pub const HEADER_LEN: usize = 20;

mod offset {
    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const LENGTH: usize = 2;
    pub const IDENT: usize = 4;
    pub const FLG_OFF: usize = 6;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: usize = 10;
    pub const SRC: usize = 12;
    pub const DST: usize = 16;
}

const FLAG_DF: u16 = 0x4000;
const FLAG_MF: u16 = 0x2000;
const FRAG_OFFSET_MASK: u16 = 0x1fff;

/// A read/write view of an IPv4 packet.
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

    /// Wraps `buffer` after [`Packet::check_header`]: the header is whole but
    /// the payload may be cut short, as in the copy of a packet that an ICMP
    /// error carries. [`Packet::payload`] then returns what is there.
    ///
    /// # Errors
    ///
    /// As [`Packet::check_header`].
    pub fn new_checked_header(buffer: T) -> Result<Packet<T>> {
        let packet = Self::new_unchecked(buffer);
        packet.check_header()?;
        Ok(packet)
    }

    /// Checks the header (see [`Packet::check_header`]) and that the buffer
    /// holds Total Length bytes.
    ///
    /// # Errors
    ///
    /// [`Error::Truncated`] if the buffer is shorter than Total Length, and
    /// anything [`Packet::check_header`] returns.
    pub fn check_len(&self) -> Result<()> {
        self.check_header()?;
        if usize::from(self.total_len()) > self.buffer.as_ref().len() {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// Checks that the buffer holds the whole header, options included, and
    /// that the version and lengths are consistent.
    ///
    /// # Errors
    ///
    /// - [`Error::Truncated`] if the buffer is shorter than 20 bytes or than IHL says;
    /// - [`Error::Malformed`] if the version is not 4, IHL is below 5, or
    ///   Total Length is smaller than the header.
    pub fn check_header(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if self.version() != 4 {
            return Err(Error::Malformed { what: "IPv4 version field is not 4" });
        }
        let header_len = self.header_len();
        if header_len < HEADER_LEN {
            return Err(Error::Malformed { what: "IPv4 IHL below 5" });
        }
        if header_len > len {
            return Err(Error::Truncated);
        }
        if usize::from(self.total_len()) < header_len {
            return Err(Error::Malformed { what: "IPv4 total length smaller than the header" });
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

    /// The version field (4 for a checked packet).
    pub fn version(&self) -> u8 {
        self.data()[offset::VER_IHL] >> 4
    }

    /// The header length in bytes (IHL × 4), options included.
    pub fn header_len(&self) -> usize {
        usize::from(self.data()[offset::VER_IHL] & 0x0f) * 4
    }

    /// Differentiated services code point (6 bits).
    pub fn dscp(&self) -> u8 {
        self.data()[offset::DSCP_ECN] >> 2
    }

    /// Explicit congestion notification (2 bits).
    pub fn ecn(&self) -> u8 {
        self.data()[offset::DSCP_ECN] & 0x03
    }

    /// Total Length: header plus payload, in bytes.
    pub fn total_len(&self) -> u16 {
        read_u16(self.data(), offset::LENGTH)
    }

    /// Identification.
    pub fn ident(&self) -> u16 {
        read_u16(self.data(), offset::IDENT)
    }

    /// The Don't Fragment flag.
    pub fn dont_frag(&self) -> bool {
        read_u16(self.data(), offset::FLG_OFF) & FLAG_DF != 0
    }

    /// The More Fragments flag.
    pub fn more_frags(&self) -> bool {
        read_u16(self.data(), offset::FLG_OFF) & FLAG_MF != 0
    }

    /// Fragment offset in bytes (the field times 8).
    pub fn frag_offset(&self) -> u16 {
        (read_u16(self.data(), offset::FLG_OFF) & FRAG_OFFSET_MASK) << 3
    }

    /// Whether this packet is a fragment (More Fragments set or a non-zero offset).
    pub fn is_fragment(&self) -> bool {
        self.more_frags() || self.frag_offset() != 0
    }

    /// Time to live.
    pub fn ttl(&self) -> u8 {
        self.data()[offset::TTL]
    }

    /// The upper-layer protocol.
    pub fn protocol(&self) -> Protocol {
        self.data()[offset::PROTOCOL].into()
    }

    /// The header checksum field.
    pub fn checksum(&self) -> u16 {
        read_u16(self.data(), offset::CHECKSUM)
    }

    /// Source address.
    pub fn src_addr(&self) -> Ipv4Addr {
        read_array::<4>(self.data(), offset::SRC).into()
    }

    /// Destination address.
    pub fn dst_addr(&self) -> Ipv4Addr {
        read_array::<4>(self.data(), offset::DST).into()
    }

    /// Whether the header checksum is correct.
    pub fn verify_checksum(&self) -> bool {
        checksum::internet(&self.data()[..self.header_end()]) == 0
    }

    /// End of the header: IHL × 4, kept within `HEADER_LEN..=buffer length`
    /// so that a setter writing odd lengths cannot make a later read panic.
    /// For a checked packet this is exactly [`Packet::header_len`].
    fn header_end(&self) -> usize {
        self.header_len().max(HEADER_LEN).min(self.data().len())
    }

    /// End of the payload: Total Length, clipped to the buffer (possible after
    /// [`Packet::new_checked_header`]) and never before the header's end.
    fn payload_end(&self) -> usize {
        usize::from(self.total_len()).min(self.data().len()).max(self.header_end())
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// The options: the header bytes after the first 20.
    pub fn options(&self) -> &'a [u8] {
        let header_end = self.header_end();
        &self.buffer.as_ref()[HEADER_LEN..header_end]
    }

    /// The payload: from the end of the header to Total Length (or to the end
    /// of a cut-short buffer).
    pub fn payload(&self) -> &'a [u8] {
        let range = self.header_end()..self.payload_end();
        &self.buffer.as_ref()[range]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn data_mut(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }

    /// Sets the version field; only the low 4 bits of `value` are used.
    pub fn set_version(&mut self, value: u8) {
        let byte = &mut self.data_mut()[offset::VER_IHL];
        *byte = (*byte & 0x0f) | (value << 4);
    }

    /// Sets IHL from a header length in bytes (rounded down to a multiple of 4, at most 60).
    pub fn set_header_len(&mut self, value: usize) {
        let ihl = u8::try_from(value / 4).unwrap_or(0x0f).min(0x0f);
        let byte = &mut self.data_mut()[offset::VER_IHL];
        *byte = (*byte & 0xf0) | ihl;
    }

    /// Sets the DSCP; only the low 6 bits of `value` are used.
    pub fn set_dscp(&mut self, value: u8) {
        let byte = &mut self.data_mut()[offset::DSCP_ECN];
        *byte = (*byte & 0x03) | (value << 2);
    }

    /// Sets the ECN; only the low 2 bits of `value` are used.
    pub fn set_ecn(&mut self, value: u8) {
        let byte = &mut self.data_mut()[offset::DSCP_ECN];
        *byte = (*byte & 0xfc) | (value & 0x03);
    }

    /// Sets Total Length.
    pub fn set_total_len(&mut self, value: u16) {
        write_u16(self.data_mut(), offset::LENGTH, value);
    }

    /// Sets Identification.
    pub fn set_ident(&mut self, value: u16) {
        write_u16(self.data_mut(), offset::IDENT, value);
    }

    fn set_flags_offset(&mut self, value: u16) {
        write_u16(self.data_mut(), offset::FLG_OFF, value);
    }

    /// Clears the flags (including the reserved bit), keeping the offset.
    pub fn clear_flags(&mut self) {
        let raw = read_u16(self.data_mut(), offset::FLG_OFF) & FRAG_OFFSET_MASK;
        self.set_flags_offset(raw);
    }

    /// Sets or clears Don't Fragment.
    pub fn set_dont_frag(&mut self, value: bool) {
        let raw = read_u16(self.data_mut(), offset::FLG_OFF) & !FLAG_DF;
        self.set_flags_offset(raw | if value { FLAG_DF } else { 0 });
    }

    /// Sets or clears More Fragments.
    pub fn set_more_frags(&mut self, value: bool) {
        let raw = read_u16(self.data_mut(), offset::FLG_OFF) & !FLAG_MF;
        self.set_flags_offset(raw | if value { FLAG_MF } else { 0 });
    }

    /// Sets the fragment offset from a byte offset (rounded down to a multiple of 8).
    pub fn set_frag_offset(&mut self, value: u16) {
        let raw = read_u16(self.data_mut(), offset::FLG_OFF) & !FRAG_OFFSET_MASK;
        self.set_flags_offset(raw | (value >> 3));
    }

    /// Sets the time to live.
    pub fn set_ttl(&mut self, value: u8) {
        self.data_mut()[offset::TTL] = value;
    }

    /// Sets the upper-layer protocol.
    pub fn set_protocol(&mut self, value: Protocol) {
        self.data_mut()[offset::PROTOCOL] = value.into();
    }

    /// Sets the header checksum field.
    pub fn set_checksum(&mut self, value: u16) {
        write_u16(self.data_mut(), offset::CHECKSUM, value);
    }

    /// Sets the source address. The header checksum is not updated: call
    /// [`Packet::fill_checksum`] or use [`checksum::update_ip_addr`].
    pub fn set_src_addr(&mut self, value: Ipv4Addr) {
        write_bytes(self.data_mut(), offset::SRC, &value.octets());
    }

    /// Sets the destination address. The header checksum is not updated.
    pub fn set_dst_addr(&mut self, value: Ipv4Addr) {
        write_bytes(self.data_mut(), offset::DST, &value.octets());
    }

    /// Computes and stores the header checksum.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let header_end = self.header_end();
        let value = checksum::internet(&self.data_mut()[..header_end]);
        self.set_checksum(value);
    }

    /// The payload, mutably (see [`Packet::payload`]).
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let range = self.header_end()..self.payload_end();
        &mut self.data_mut()[range]
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Packet<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// The fields of an IPv4 header, options aside.
///
/// [`Repr::parse`] skips options; [`Repr::emit`] writes a 20-byte header
/// without them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// Source address.
    pub src_addr: Ipv4Addr,
    /// Destination address.
    pub dst_addr: Ipv4Addr,
    /// Upper-layer protocol.
    pub protocol: Protocol,
    /// Payload length in bytes (Total Length minus the header).
    pub payload_len: usize,
    /// Time to live.
    pub ttl: u8,
    /// DSCP (6 bits).
    pub dscp: u8,
    /// ECN (2 bits).
    pub ecn: u8,
    /// Identification.
    pub ident: u16,
    /// Don't Fragment.
    pub dont_frag: bool,
    /// More Fragments.
    pub more_frags: bool,
    /// Fragment offset in bytes (a multiple of 8).
    pub frag_offset: u16,
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
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            protocol: packet.protocol(),
            payload_len: usize::from(packet.total_len()).saturating_sub(packet.header_len()),
            ttl: packet.ttl(),
            dscp: packet.dscp(),
            ecn: packet.ecn(),
            ident: packet.ident(),
            dont_frag: packet.dont_frag(),
            more_frags: packet.more_frags(),
            frag_offset: packet.frag_offset(),
        })
    }

    /// Length of the header [`Repr::emit`] writes, [`HEADER_LEN`].
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes a header without options, checksum included, into the first
    /// [`Repr::buffer_len`] bytes of `packet`. Total Length saturates at
    /// 65,535 if `payload_len` is larger than IPv4 allows.
    ///
    /// # Panics
    ///
    /// If the buffer is shorter than [`Repr::buffer_len`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]> + ?Sized>(&self, packet: &mut Packet<&mut T>) {
        packet.set_version(4);
        packet.set_header_len(HEADER_LEN);
        packet.set_dscp(self.dscp);
        packet.set_ecn(self.ecn);
        packet.set_total_len(saturating_u16(HEADER_LEN.saturating_add(self.payload_len)));
        packet.set_ident(self.ident);
        packet.clear_flags();
        packet.set_frag_offset(self.frag_offset);
        packet.set_dont_frag(self.dont_frag);
        packet.set_more_frags(self.more_frags);
        packet.set_ttl(self.ttl);
        packet.set_protocol(self.protocol);
        packet.set_src_addr(self.src_addr);
        packet.set_dst_addr(self.dst_addr);
        packet.fill_checksum();
    }
}
