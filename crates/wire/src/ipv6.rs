//! IPv6 fixed header (RFC 8200) and a bounded walk over its extension headers.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |Version| Traffic Class |              Flow Label               |
//! |         Payload Length        |  Next Header  |   Hop Limit   |
//! |                 Source Address (16 bytes)                     |
//! |              Destination Address (16 bytes)                   |
//! ```
//!
//! [`Packet::upper_layer`] follows hop-by-hop options, routing, fragment,
//! destination options and authentication headers (at most
//! [`MAX_EXTENSION_HEADERS`]) to the upper-layer protocol and its offset.
//! Jumbograms (RFC 2675) are not supported: a Payload Length of 0 means an
//! empty payload.
//!
//! # Panics
//!
//! After [`Packet::new_checked`] (or [`Packet::new_checked_header`]) no
//! accessor or setter panics, even after `set_payload_len` wrote a length the
//! buffer cannot hold: the payload is clipped to the buffer. On a view made
//! with [`Packet::new_unchecked`], accessors panic when the buffer is shorter
//! than the fields they read.

use std::net::Ipv6Addr;

use crate::error::{Error, Result};
use crate::field::{read_array, read_u16, read_u32, saturating_u16, write_bytes, write_u16, write_u32};
use crate::ip::Protocol;

/// Length of the fixed header.
pub const HEADER_LEN: usize = 40;

/// Most extension headers [`Packet::upper_layer`] walks before giving up.
pub const MAX_EXTENSION_HEADERS: usize = 8;

/// Next Header value of the hop-by-hop options header.
pub const HOP_BY_HOP: u8 = 0;
/// Next Header value of the routing header.
pub const ROUTING: u8 = 43;
/// Next Header value of the fragment header.
pub const FRAGMENT: u8 = 44;
/// Next Header value of ESP, which ends the walk (its content is encrypted).
pub const ESP: u8 = 50;
/// Next Header value of the authentication header.
pub const AUTH: u8 = 51;
/// Next Header value meaning "nothing follows".
pub const NO_NEXT_HEADER: u8 = 59;
/// Next Header value of the destination options header.
pub const DEST_OPTIONS: u8 = 60;

mod offset {
    pub const VER_TC_FLOW: usize = 0;
    pub const LENGTH: usize = 4;
    pub const NXT_HDR: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC: usize = 8;
    pub const DST: usize = 24;
}

/// The fragment header fields, when the walk met one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fragment {
    /// Offset of this fragment's data in the original payload, in bytes.
    pub offset: u16,
    /// The M flag: more fragments follow.
    pub more_frags: bool,
    /// Identification.
    pub ident: u32,
}

/// Where the upper layer starts, as found by [`Packet::upper_layer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UpperLayer {
    /// The first Next Header value that is not a walked extension header.
    /// For a non-initial fragment, the Next Header of the fragment header:
    /// the data at `offset` is then a piece of that protocol's message, not
    /// its header.
    pub protocol: Protocol,
    /// Offset of the upper-layer data from the start of the IPv6 header.
    pub offset: usize,
    /// The fragment header, if there was one.
    pub fragment: Option<Fragment>,
}

impl UpperLayer {
    /// Whether the upper-layer header is absent because this is a fragment
    /// other than the first.
    pub fn is_non_initial_fragment(&self) -> bool {
        self.fragment.is_some_and(|f| f.offset != 0)
    }
}

/// A read/write view of an IPv6 packet.
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

    /// Wraps `buffer` after [`Packet::check_header`]: the fixed header is
    /// whole but the payload may be cut short, as in the copy of a packet that
    /// an ICMPv6 error carries. [`Packet::payload`] then returns what is there.
    ///
    /// # Errors
    ///
    /// As [`Packet::check_header`].
    pub fn new_checked_header(buffer: T) -> Result<Packet<T>> {
        let packet = Self::new_unchecked(buffer);
        packet.check_header()?;
        Ok(packet)
    }

    /// Checks the fixed header and that the buffer holds Payload Length bytes after it.
    ///
    /// # Errors
    ///
    /// [`Error::Truncated`] if the payload is cut short, and anything
    /// [`Packet::check_header`] returns.
    pub fn check_len(&self) -> Result<()> {
        self.check_header()?;
        if HEADER_LEN + usize::from(self.payload_len()) > self.buffer.as_ref().len() {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// Checks that the buffer holds the fixed header and the version is 6.
    ///
    /// # Errors
    ///
    /// [`Error::Truncated`] if the buffer is shorter than [`HEADER_LEN`];
    /// [`Error::Malformed`] if the version is not 6.
    pub fn check_header(&self) -> Result<()> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if self.version() != 6 {
            return Err(Error::Malformed { what: "IPv6 version field is not 6" });
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

    /// The fixed header length, [`HEADER_LEN`] (extension headers are payload).
    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }

    /// The version field (6 for a checked packet).
    pub fn version(&self) -> u8 {
        self.data()[offset::VER_TC_FLOW] >> 4
    }

    /// Traffic class.
    pub fn traffic_class(&self) -> u8 {
        ((read_u16(self.data(), offset::VER_TC_FLOW) >> 4) & 0xff) as u8
    }

    /// Flow label (20 bits).
    pub fn flow_label(&self) -> u32 {
        read_u32(self.data(), offset::VER_TC_FLOW) & 0x000f_ffff
    }

    /// Payload Length: bytes after the fixed header, extension headers included.
    pub fn payload_len(&self) -> u16 {
        read_u16(self.data(), offset::LENGTH)
    }

    /// The Next Header field of the fixed header (which may name an extension header).
    pub fn next_header(&self) -> Protocol {
        self.data()[offset::NXT_HDR].into()
    }

    /// Hop limit.
    pub fn hop_limit(&self) -> u8 {
        self.data()[offset::HOP_LIMIT]
    }

    /// Source address.
    pub fn src_addr(&self) -> Ipv6Addr {
        read_array::<16>(self.data(), offset::SRC).into()
    }

    /// Destination address.
    pub fn dst_addr(&self) -> Ipv6Addr {
        read_array::<16>(self.data(), offset::DST).into()
    }

    /// End of the payload: the Payload Length, or the buffer's end if it is
    /// shorter (only possible after [`Packet::new_checked_header`]).
    fn payload_end(&self) -> usize {
        (HEADER_LEN + usize::from(self.payload_len())).min(self.data().len())
    }

    /// Walks the extension headers to the upper layer.
    ///
    /// Stops at the first Next Header value that is not hop-by-hop, routing,
    /// fragment, destination options or authentication, or right after a
    /// fragment header whose offset is not zero (what follows is not a header).
    ///
    /// # Errors
    ///
    /// - [`Error::Truncated`] if an extension header runs past the payload;
    /// - [`Error::Malformed`] if a hop-by-hop header is not the first;
    /// - [`Error::Unsupported`] if more than [`MAX_EXTENSION_HEADERS`] precede the upper layer.
    pub fn upper_layer(&self) -> Result<UpperLayer> {
        let payload = self.data().get(HEADER_LEN..self.payload_end()).ok_or(Error::Truncated)?;
        let mut next = self.data()[offset::NXT_HDR];
        let mut at = 0usize;
        let mut fragment = None;
        for index in 0..=MAX_EXTENSION_HEADERS {
            if !matches!(next, HOP_BY_HOP | ROUTING | FRAGMENT | AUTH | DEST_OPTIONS) {
                return Ok(UpperLayer { protocol: next.into(), offset: HEADER_LEN + at, fragment });
            }
            if index == MAX_EXTENSION_HEADERS {
                return Err(Error::Unsupported { what: "IPv6 extension header chain longer than 8" });
            }
            if next == HOP_BY_HOP && index != 0 {
                return Err(Error::Malformed { what: "IPv6 hop-by-hop header not first" });
            }
            let rest = payload.get(at..).ok_or(Error::Truncated)?;
            let (following, len) = match next {
                FRAGMENT => {
                    let header: [u8; 8] = rest.get(..8).and_then(|h| h.try_into().ok()).ok_or(Error::Truncated)?;
                    let raw = u16::from_be_bytes([header[2], header[3]]);
                    fragment = Some(Fragment {
                        offset: raw & 0xfff8,
                        more_frags: raw & 0x0001 != 0,
                        ident: u32::from_be_bytes([header[4], header[5], header[6], header[7]]),
                    });
                    (header[0], 8)
                }
                _ => {
                    let (following, units) = match rest {
                        [following, units, ..] => (*following, usize::from(*units)),
                        _ => return Err(Error::Truncated),
                    };
                    // AH counts 4-byte units minus 2; the others 8-byte units minus 1.
                    let len = if next == AUTH { (units + 2) * 4 } else { (units + 1) * 8 };
                    (following, len)
                }
            };
            if rest.len() < len {
                return Err(Error::Truncated);
            }
            at += len;
            next = following;
            if fragment.is_some_and(|f| f.offset != 0) {
                return Ok(UpperLayer { protocol: next.into(), offset: HEADER_LEN + at, fragment });
            }
        }
        // The loop returns at the latest when index reaches MAX_EXTENSION_HEADERS.
        Err(Error::Unsupported { what: "IPv6 extension header chain longer than 8" })
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// The payload: Payload Length bytes after the fixed header (or what is
    /// there of them in a cut-short buffer), extension headers included.
    pub fn payload(&self) -> &'a [u8] {
        let end = self.payload_end();
        &self.buffer.as_ref()[HEADER_LEN..end]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn data_mut(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }

    /// Sets the version field; only the low 4 bits of `value` are used.
    pub fn set_version(&mut self, value: u8) {
        let byte = &mut self.data_mut()[offset::VER_TC_FLOW];
        *byte = (*byte & 0x0f) | (value << 4);
    }

    /// Sets the traffic class.
    pub fn set_traffic_class(&mut self, value: u8) {
        let raw = read_u16(self.data_mut(), offset::VER_TC_FLOW);
        let raw = (raw & 0xf00f) | (u16::from(value) << 4);
        write_u16(self.data_mut(), offset::VER_TC_FLOW, raw);
    }

    /// Sets the flow label; only the low 20 bits of `value` are used.
    pub fn set_flow_label(&mut self, value: u32) {
        let raw = read_u32(self.data_mut(), offset::VER_TC_FLOW);
        let raw = (raw & 0xfff0_0000) | (value & 0x000f_ffff);
        write_u32(self.data_mut(), offset::VER_TC_FLOW, raw);
    }

    /// Sets Payload Length.
    pub fn set_payload_len(&mut self, value: u16) {
        write_u16(self.data_mut(), offset::LENGTH, value);
    }

    /// Sets the Next Header field of the fixed header.
    pub fn set_next_header(&mut self, value: Protocol) {
        self.data_mut()[offset::NXT_HDR] = value.into();
    }

    /// Sets the hop limit.
    pub fn set_hop_limit(&mut self, value: u8) {
        self.data_mut()[offset::HOP_LIMIT] = value;
    }

    /// Sets the source address. Upper-layer checksums that cover it through
    /// the pseudo-header are not updated.
    pub fn set_src_addr(&mut self, value: Ipv6Addr) {
        write_bytes(self.data_mut(), offset::SRC, &value.octets());
    }

    /// Sets the destination address. Upper-layer checksums are not updated.
    pub fn set_dst_addr(&mut self, value: Ipv6Addr) {
        write_bytes(self.data_mut(), offset::DST, &value.octets());
    }

    /// The payload, mutably (see [`Packet::payload`]).
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = self.payload_end();
        &mut self.data_mut()[HEADER_LEN..end]
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Packet<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// The fields of an IPv6 fixed header.
///
/// Extension headers are payload: [`Repr::parse`] does not walk them and
/// `next_header` is the fixed header's field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// Source address.
    pub src_addr: Ipv6Addr,
    /// Destination address.
    pub dst_addr: Ipv6Addr,
    /// Next Header of the fixed header.
    pub next_header: Protocol,
    /// Payload length in bytes.
    pub payload_len: usize,
    /// Hop limit.
    pub hop_limit: u8,
    /// Traffic class.
    pub traffic_class: u8,
    /// Flow label (20 bits).
    pub flow_label: u32,
}

impl Repr {
    /// Reads the fixed header of `packet`.
    ///
    /// # Errors
    ///
    /// As [`Packet::check_len`].
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Result<Repr> {
        packet.check_len()?;
        Ok(Repr {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            next_header: packet.next_header(),
            payload_len: usize::from(packet.payload_len()),
            hop_limit: packet.hop_limit(),
            traffic_class: packet.traffic_class(),
            flow_label: packet.flow_label(),
        })
    }

    /// Length of the header [`Repr::emit`] writes, [`HEADER_LEN`].
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the fixed header into the first [`Repr::buffer_len`] bytes of
    /// `packet`. Payload Length saturates at 65,535.
    ///
    /// # Panics
    ///
    /// If the buffer is shorter than [`Repr::buffer_len`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]> + ?Sized>(&self, packet: &mut Packet<&mut T>) {
        packet.set_version(6);
        packet.set_traffic_class(self.traffic_class);
        packet.set_flow_label(self.flow_label);
        packet.set_payload_len(saturating_u16(self.payload_len));
        packet.set_next_header(self.next_header);
        packet.set_hop_limit(self.hop_limit);
        packet.set_src_addr(self.src_addr);
        packet.set_dst_addr(self.dst_addr);
    }
}
