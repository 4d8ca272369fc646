//! ICMP for IPv4 (RFC 792): type, code, checksum, echo fields, and the copy
//! of the offending packet that error messages carry.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |     Type      |     Code      |          Checksum             |
//! |    Identifier (echo) / unused |  Sequence (echo) / Next-hop MTU|
//! |    Data / invoking packet: IP header + first 8 bytes ...      |
//! ```
//!
//! The checksum covers the whole message and no pseudo-header, so a view
//! must span exactly the message, as the IPv4 payload does.
//!
//! # Panics
//!
//! After [`Packet::new_checked`] no accessor or setter panics. On a view made
//! with [`Packet::new_unchecked`] over fewer than [`HEADER_LEN`] bytes,
//! accessors panic.

use crate::checksum;
use crate::error::{Error, Result};
use crate::field::{read_u16, read_u32, write_u16, write_u32};
use crate::ipv4;

/// Length of the header: type, code, checksum and the 4-byte rest of header.
pub const HEADER_LEN: usize = 8;

mod offset {
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: usize = 2;
    pub const REST: usize = 4;
    pub const ECHO_IDENT: usize = 4;
    pub const ECHO_SEQ: usize = 6;
    pub const NEXT_HOP_MTU: usize = 6;
}

enum_with_unknown! {
    /// ICMP message type.
    pub enum Message(u8) {
        /// Echo reply (0).
        EchoReply = 0,
        /// Destination unreachable (3); code 4 is "fragmentation needed".
        DstUnreachable = 3,
        /// Redirect (5).
        Redirect = 5,
        /// Echo request (8).
        EchoRequest = 8,
        /// Time exceeded (11).
        TimeExceeded = 11,
        /// Parameter problem (12).
        ParamProblem = 12,
    }
    /// Any other type.
    unknown Unknown
}

impl Message {
    /// Whether messages of this type carry the invoking packet (its IP header
    /// and at least 8 bytes of its payload) after the header.
    pub fn carries_invoking_packet(self) -> bool {
        matches!(self, Message::DstUnreachable | Message::Redirect | Message::TimeExceeded | Message::ParamProblem)
    }

    /// Whether this is an echo request or reply.
    pub fn is_echo(self) -> bool {
        matches!(self, Message::EchoRequest | Message::EchoReply)
    }
}

/// A read/write view of an ICMP message.
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

    /// Next-hop MTU (RFC 1191; meaningful for "fragmentation needed" only).
    pub fn next_hop_mtu(&self) -> u16 {
        read_u16(self.data(), offset::NEXT_HOP_MTU)
    }

    /// Whether the checksum is correct.
    pub fn verify_checksum(&self) -> bool {
        checksum::internet(self.data()) == 0
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// Everything after the 8-byte header: echo data, or the invoking packet.
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }

    /// The invoking packet, for types that carry one (see
    /// [`Message::carries_invoking_packet`]).
    pub fn invoking_packet(&self) -> Option<&'a [u8]> {
        self.msg_type().carries_invoking_packet().then(|| self.payload())
    }

    /// A view of the invoking packet's IPv4 header; its
    /// [`payload`](ipv4::Packet::payload) is the part of the original payload
    /// that was quoted (normally its first 8 bytes: ports or echo identifier).
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] if this type carries no invoking packet;
    /// otherwise as [`ipv4::Packet::new_checked_header`].
    pub fn embedded_ipv4(&self) -> Result<ipv4::Packet<&'a [u8]>> {
        let invoking = self
            .invoking_packet()
            .ok_or(Error::Unsupported { what: "ICMP message type without an invoking packet" })?;
        ipv4::Packet::new_checked_header(invoking)
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

    /// Sets the 4 bytes after the checksum.
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

    /// Sets the next-hop MTU. The checksum is not updated.
    pub fn set_next_hop_mtu(&mut self, value: u16) {
        write_u16(self.data_mut(), offset::NEXT_HOP_MTU, value);
    }

    /// Computes and stores the checksum over the whole message.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let value = checksum::internet(self.data_mut());
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

/// The header of an ICMP message.
///
/// A message whose header does not fit a named variant exactly (an echo with
/// a non-zero code, a non-zero unused field, an unnamed type) parses as
/// [`Repr::Other`], so `emit(parse(p))` always reproduces `p`'s header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Repr {
    /// Echo request (type 8, code 0).
    EchoRequest {
        /// Identifier.
        ident: u16,
        /// Sequence number.
        seq_no: u16,
    },
    /// Echo reply (type 0, code 0).
    EchoReply {
        /// Identifier.
        ident: u16,
        /// Sequence number.
        seq_no: u16,
    },
    /// Destination unreachable (type 3); the payload is the invoking packet.
    DstUnreachable {
        /// Reason, e.g. 3 "port unreachable", 4 "fragmentation needed".
        code: u8,
        /// Next-hop MTU for code 4, otherwise 0.
        next_hop_mtu: u16,
    },
    /// Time exceeded (type 11); the payload is the invoking packet.
    TimeExceeded {
        /// 0 "TTL exceeded in transit", 1 "fragment reassembly time exceeded".
        code: u8,
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
            (Message::DstUnreachable, _) if rest >> 16 == 0 => {
                Repr::DstUnreachable { code, next_hop_mtu: packet.next_hop_mtu() }
            }
            (Message::TimeExceeded, _) if rest == 0 => Repr::TimeExceeded { code },
            (msg_type, _) => Repr::Other { msg_type, code, rest_of_header: rest },
        })
    }

    /// The message type this header has.
    pub fn msg_type(&self) -> Message {
        match self {
            Repr::EchoRequest { .. } => Message::EchoRequest,
            Repr::EchoReply { .. } => Message::EchoReply,
            Repr::DstUnreachable { .. } => Message::DstUnreachable,
            Repr::TimeExceeded { .. } => Message::TimeExceeded,
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
        match *self {
            Repr::EchoRequest { ident, seq_no } | Repr::EchoReply { ident, seq_no } => {
                packet.set_msg_code(0);
                packet.set_echo_ident(ident);
                packet.set_echo_seq_no(seq_no);
            }
            Repr::DstUnreachable { code, next_hop_mtu } => {
                packet.set_msg_code(code);
                packet.set_rest_of_header(u32::from(next_hop_mtu));
            }
            Repr::TimeExceeded { code } => {
                packet.set_msg_code(code);
                packet.set_rest_of_header(0);
            }
            Repr::Other { code, rest_of_header, .. } => {
                packet.set_msg_code(code);
                packet.set_rest_of_header(rest_of_header);
            }
        }
    }
}
