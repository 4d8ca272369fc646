//! ICMP for IPv6 (RFC 4443): type, code, checksum, echo fields, and the copy
//! of the offending packet that error messages carry.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |     Type      |     Code      |          Checksum             |
//! |  Identifier (echo) / MTU (packet too big) / pointer / unused  |
//! |    Data / invoking packet: as much as fits in the minimum MTU |
//! ```
//!
//! The checksum covers an IPv6 pseudo-header (next header 58) and the whole
//! message, so a view must span exactly the message, as the IPv6 upper-layer
//! data does. Neighbor discovery types are named but their bodies are not
//! parsed.
//!
//! # Panics
//!
//! After [`Packet::new_checked`] no accessor or setter panics. On a view made
//! with [`Packet::new_unchecked`] over fewer than [`HEADER_LEN`] bytes,
//! accessors panic.

use std::net::Ipv6Addr;

use crate::checksum;
use crate::error::{Error, Result};
use crate::field::{read_u16, read_u32, write_u16, write_u32};
use crate::ip::{IpPair, Protocol};
use crate::ipv6;

/// Length of the header: type, code, checksum and the 4-byte rest of header.
pub const HEADER_LEN: usize = 8;

mod offset {
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: usize = 2;
    pub const REST: usize = 4;
    pub const ECHO_IDENT: usize = 4;
    pub const ECHO_SEQ: usize = 6;
}

enum_with_unknown! {
    /// ICMPv6 message type.
    pub enum Message(u8) {
        /// Destination unreachable (1).
        DstUnreachable = 1,
        /// Packet too big (2).
        PacketTooBig = 2,
        /// Time exceeded (3).
        TimeExceeded = 3,
        /// Parameter problem (4).
        ParamProblem = 4,
        /// Echo request (128).
        EchoRequest = 128,
        /// Echo reply (129).
        EchoReply = 129,
        /// Router solicitation (133).
        RouterSolicit = 133,
        /// Router advertisement (134).
        RouterAdvert = 134,
        /// Neighbor solicitation (135).
        NeighborSolicit = 135,
        /// Neighbor advertisement (136).
        NeighborAdvert = 136,
        /// Redirect (137).
        Redirect = 137,
    }
    /// Any other type.
    unknown Unknown
}

impl Message {
    /// Whether this is an error message (types 0–127), which carries the
    /// invoking packet after the header.
    pub fn is_error(self) -> bool {
        u8::from(self) < 128
    }

    /// Whether this is an echo request or reply.
    pub fn is_echo(self) -> bool {
        matches!(self, Message::EchoRequest | Message::EchoReply)
    }
}

/// A read/write view of an ICMPv6 message.
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

    /// Checks that the buffer holds the 8-byte header.
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

    /// Message type.
    pub fn msg_type(&self) -> Message {
        self.data()[offset::TYPE].into()
    }

    /// Message code.
    pub fn msg_code(&self) -> u8 {
        self.data()[offset::CODE]
    }

    /// The checksum field.
    pub fn checksum(&self) -> u16 {
        read_u16(self.data(), offset::CHECKSUM)
    }

    /// The 4 bytes after the checksum, whatever the type.
    pub fn rest_of_header(&self) -> u32 {
        read_u32(self.data(), offset::REST)
    }

    /// Echo identifier (meaningful for echo messages only).
    pub fn echo_ident(&self) -> u16 {
        read_u16(self.data(), offset::ECHO_IDENT)
    }

    /// Echo sequence number (meaningful for echo messages only).
    pub fn echo_seq_no(&self) -> u16 {
        read_u16(self.data(), offset::ECHO_SEQ)
    }

    /// MTU of a packet-too-big message (the rest of header).
    pub fn mtu(&self) -> u32 {
        self.rest_of_header()
    }

    /// Pointer of a parameter-problem message (the rest of header).
    pub fn pointer(&self) -> u32 {
        self.rest_of_header()
    }

    /// Whether the checksum is correct for this message sent from `src` to `dst`.
    pub fn verify_checksum(&self, src: Ipv6Addr, dst: Ipv6Addr) -> bool {
        let data = self.data();
        let pseudo = IpPair::V6 { src, dst }.pseudo_header(Protocol::Icmpv6, crate::field::saturating_u32(data.len()));
        checksum::combine(&[pseudo, checksum::sum(data)]) == 0xffff
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// Everything after the 8-byte header: echo data, the invoking packet, or
    /// a neighbor-discovery body.
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }

    /// The invoking packet, for error messages (see [`Message::is_error`]).
    pub fn invoking_packet(&self) -> Option<&'a [u8]> {
        self.msg_type().is_error().then(|| self.payload())
    }

    /// A view of the invoking packet's IPv6 header; its
    /// [`payload`](ipv6::Packet::payload) is the part of the original payload
    /// that was quoted.
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] for a non-error message; otherwise as
    /// [`ipv6::Packet::new_checked_header`].
    pub fn embedded_ipv6(&self) -> Result<ipv6::Packet<&'a [u8]>> {
        let invoking = self
            .invoking_packet()
            .ok_or(Error::Unsupported { what: "ICMPv6 informational message has no invoking packet" })?;
        ipv6::Packet::new_checked_header(invoking)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn data_mut(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }

    /// Sets the message type.
    pub fn set_msg_type(&mut self, value: Message) {
        self.data_mut()[offset::TYPE] = value.into();
    }

    /// Sets the message code.
    pub fn set_msg_code(&mut self, value: u8) {
        self.data_mut()[offset::CODE] = value;
    }

    /// Sets the checksum field.
    pub fn set_checksum(&mut self, value: u16) {
        write_u16(self.data_mut(), offset::CHECKSUM, value);
    }

    /// Sets the 4 bytes after the checksum (MTU, pointer, ...).
    pub fn set_rest_of_header(&mut self, value: u32) {
        write_u32(self.data_mut(), offset::REST, value);
    }

    /// Sets the echo identifier. The checksum is not updated.
    pub fn set_echo_ident(&mut self, value: u16) {
        write_u16(self.data_mut(), offset::ECHO_IDENT, value);
    }

    /// Sets the echo sequence number. The checksum is not updated.
    pub fn set_echo_seq_no(&mut self, value: u16) {
        write_u16(self.data_mut(), offset::ECHO_SEQ, value);
    }

    /// Computes and stores the checksum for this message sent from `src` to `dst`.
    pub fn fill_checksum(&mut self, src: Ipv6Addr, dst: Ipv6Addr) {
        self.set_checksum(0);
        let data = self.data_mut();
        let value = IpPair::V6 { src, dst }.upper_layer_checksum(Protocol::Icmpv6, data.len(), checksum::sum(data));
        self.set_checksum(value);
    }

    /// Everything after the header, mutably.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.data_mut()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Packet<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// The header of an ICMPv6 message.
///
/// A message whose header does not fit a named variant exactly (an echo with
/// a non-zero code, a non-zero unused field, any other type) parses as
/// [`Repr::Other`], so `emit(parse(p))` always reproduces `p`'s header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Repr {
    /// Echo request (type 128, code 0).
    EchoRequest {
        /// Identifier.
        ident: u16,
        /// Sequence number.
        seq_no: u16,
    },
    /// Echo reply (type 129, code 0).
    EchoReply {
        /// Identifier.
        ident: u16,
        /// Sequence number.
        seq_no: u16,
    },
    /// Destination unreachable (type 1); the payload is the invoking packet.
    DstUnreachable {
        /// Reason, e.g. 1 "administratively prohibited", 4 "port unreachable".
        code: u8,
    },
    /// Packet too big (type 2, code 0); the payload is the invoking packet.
    PacketTooBig {
        /// MTU of the next-hop link.
        mtu: u32,
    },
    /// Time exceeded (type 3); the payload is the invoking packet.
    TimeExceeded {
        /// 0 "hop limit exceeded", 1 "fragment reassembly time exceeded".
        code: u8,
    },
    /// Parameter problem (type 4); the payload is the invoking packet.
    ParamProblem {
        /// Kind of problem.
        code: u8,
        /// Offset in the invoking packet of the problem.
        pointer: u32,
    },
    /// Any other header, kept verbatim.
    Other {
        /// Message type.
        msg_type: Message,
        /// Message code.
        code: u8,
        /// The 4 bytes after the checksum.
        rest_of_header: u32,
    },
}

impl Repr {
    /// Reads the header of `packet`. The checksum is not verified: call
    /// [`Packet::verify_checksum`] for that.
    ///
    /// # Errors
    ///
    /// [`Error::Truncated`] if the buffer is shorter than [`HEADER_LEN`].
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Result<Repr> {
        packet.check_len()?;
        let code = packet.msg_code();
        let rest = packet.rest_of_header();
        let (ident, seq_no) = (packet.echo_ident(), packet.echo_seq_no());
        Ok(match (packet.msg_type(), code) {
            (Message::EchoRequest, 0) => Repr::EchoRequest { ident, seq_no },
            (Message::EchoReply, 0) => Repr::EchoReply { ident, seq_no },
            (Message::DstUnreachable, _) if rest == 0 => Repr::DstUnreachable { code },
            (Message::PacketTooBig, 0) => Repr::PacketTooBig { mtu: rest },
            (Message::TimeExceeded, _) if rest == 0 => Repr::TimeExceeded { code },
            (Message::ParamProblem, _) => Repr::ParamProblem { code, pointer: rest },
            (msg_type, _) => Repr::Other { msg_type, code, rest_of_header: rest },
        })
    }

    /// The message type this header has.
    pub fn msg_type(&self) -> Message {
        match self {
            Repr::EchoRequest { .. } => Message::EchoRequest,
            Repr::EchoReply { .. } => Message::EchoReply,
            Repr::DstUnreachable { .. } => Message::DstUnreachable,
            Repr::PacketTooBig { .. } => Message::PacketTooBig,
            Repr::TimeExceeded { .. } => Message::TimeExceeded,
            Repr::ParamProblem { .. } => Message::ParamProblem,
            Repr::Other { msg_type, .. } => *msg_type,
        }
    }

    /// Length of the header [`Repr::emit`] writes, [`HEADER_LEN`].
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header into the first [`Repr::buffer_len`] bytes of
    /// `packet` with a zero checksum. Write the payload, then call
    /// [`Packet::fill_checksum`].
    ///
    /// # Panics
    ///
    /// If the buffer is shorter than [`Repr::buffer_len`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]> + ?Sized>(&self, packet: &mut Packet<&mut T>) {
        packet.set_msg_type(self.msg_type());
        packet.set_checksum(0);
        let (code, rest) = match *self {
            Repr::EchoRequest { ident, seq_no } | Repr::EchoReply { ident, seq_no } => {
                (0, (u32::from(ident) << 16) | u32::from(seq_no))
            }
            Repr::DstUnreachable { code } | Repr::TimeExceeded { code } => (code, 0),
            Repr::PacketTooBig { mtu } => (0, mtu),
            Repr::ParamProblem { code, pointer } => (code, pointer),
            Repr::Other { code, rest_of_header, .. } => (code, rest_of_header),
        };
        packet.set_msg_code(code);
        packet.set_rest_of_header(rest);
    }
}
