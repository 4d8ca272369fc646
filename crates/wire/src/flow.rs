//! Flow key extraction: the 5-tuple and header offsets of a frame or packet.
//!
//! This is the parse the switch runs on every packet, and the one the eBPF
//! programs must agree with: keep the two in step.

use std::net::IpAddr;

use crate::error::{Error, Result};
use crate::ethernet::{self, EtherType};
use crate::ip::Protocol;
use crate::{icmpv4, icmpv6, ipv4, ipv6, sctp, tcp, udp, vlan};

/// Most VLAN tags [`parse_flow_key`] skips (802.1ad service tag plus 802.1Q tag).
pub const MAX_VLAN_TAGS: usize = 2;

/// The 5-tuple of a packet, and where its IP and upper-layer headers start.
///
/// Ports are those of TCP, UDP or SCTP. For ICMP and ICMPv6 echo requests
/// and replies both ports hold the echo identifier, so a request and its
/// reply have the same key up to swapping the addresses; other ICMP messages
/// and other protocols have ports 0.
///
/// Equality and hashing include the offsets; compare [`FlowKey::five_tuple`]
/// to ignore framing (e.g. a VLAN tag).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Upper-layer protocol (after any IPv6 extension headers).
    pub protocol: Protocol,
    /// Source port (or echo identifier, or 0).
    pub src_port: u16,
    /// Destination port (or echo identifier, or 0).
    pub dst_port: u16,
    /// Offset of the IP header in the parsed bytes.
    pub l3_offset: usize,
    /// Offset of the upper-layer header in the parsed bytes (after IPv4
    /// options and IPv6 extension headers).
    pub l4_offset: usize,
}

impl FlowKey {
    /// The addresses, protocol and ports, without offsets.
    pub fn five_tuple(&self) -> (IpAddr, IpAddr, Protocol, u16, u16) {
        (self.src, self.dst, self.protocol, self.src_port, self.dst_port)
    }

    fn shifted(mut self, by: usize) -> FlowKey {
        self.l3_offset += by;
        self.l4_offset += by;
        self
    }
}

/// Extracts the flow key of an Ethernet frame carrying IPv4 or IPv6.
///
/// Skips up to [`MAX_VLAN_TAGS`] VLAN tags, checks the IP header and the
/// upper-layer header of TCP, UDP, SCTP, ICMP and ICMPv6 with their
/// `new_checked`, and walks IPv6 extension headers. Checksums are not
/// verified. Trailing bytes after the IP packet (Ethernet padding) are
/// ignored.
///
/// # Errors
///
/// - [`Error::Truncated`] if a header the key needs is cut short;
/// - [`Error::Malformed`] if a length or version field is inconsistent (for
///   example an IPv6 EtherType over an IPv4 header);
/// - [`Error::Unsupported`] for a non-IP EtherType, more than
///   [`MAX_VLAN_TAGS`] tags, a non-initial fragment (its upper-layer header
///   is in another packet), or an IPv6 extension chain longer than
///   [`ipv6::MAX_EXTENSION_HEADERS`].
pub fn parse_flow_key(frame: &[u8]) -> Result<FlowKey> {
    let eth = ethernet::Packet::new_checked(frame)?;
    let mut ethertype = eth.ethertype();
    let mut offset = ethernet::HEADER_LEN;
    let mut tags = 0;
    while ethertype.is_vlan_tag() {
        if tags == MAX_VLAN_TAGS {
            return Err(Error::Unsupported { what: "more than 2 VLAN tags" });
        }
        let tag = vlan::Packet::new_checked(frame.get(offset..).ok_or(Error::Truncated)?)?;
        ethertype = tag.ethertype();
        offset += vlan::HEADER_LEN;
        tags += 1;
    }
    let l3 = frame.get(offset..).ok_or(Error::Truncated)?;
    let key = match ethertype {
        EtherType::Ipv4 => parse_ipv4(l3)?,
        EtherType::Ipv6 => parse_ipv6(l3)?,
        _ => return Err(Error::Unsupported { what: "non-IP ethertype" }),
    };
    Ok(key.shifted(offset))
}

/// Extracts the flow key of a bare IPv4 or IPv6 packet (no Ethernet header),
/// telling the two apart by the version field.
///
/// `l3_offset` is 0. Same checks as [`parse_flow_key`].
///
/// # Errors
///
/// As [`parse_flow_key`], plus [`Error::Malformed`] if the version is neither
/// 4 nor 6.
pub fn parse_ip_flow_key(packet: &[u8]) -> Result<FlowKey> {
    match ip_version(packet)? {
        4 => parse_ipv4(packet),
        _ => parse_ipv6(packet),
    }
}

/// Extracts the flow key of the invoking packet quoted in an ICMP or ICMPv6
/// error (see [`icmpv4::Packet::invoking_packet`] and
/// [`icmpv6::Packet::invoking_packet`]).
///
/// The quote holds the IP header but usually not the whole payload: only the
/// first 8 bytes of the upper layer are required, enough for ports and the
/// echo identifier. The key is that of the original packet, as its sender
/// saw it; offsets are relative to `invoking`.
///
/// # Errors
///
/// As [`parse_ip_flow_key`], except that a payload shorter than Total Length
/// or Payload Length is accepted; [`Error::Truncated`] if fewer than 8
/// upper-layer bytes are quoted.
pub fn parse_embedded_flow_key(invoking: &[u8]) -> Result<FlowKey> {
    let (src, dst, protocol, l4_offset, l4): (IpAddr, IpAddr, _, _, &[u8]) = match ip_version(invoking)? {
        4 => {
            let ip = ipv4::Packet::new_checked_header(invoking)?;
            if ip.frag_offset() != 0 {
                return Err(Error::Unsupported { what: "non-initial IPv4 fragment" });
            }
            (ip.src_addr().into(), ip.dst_addr().into(), ip.protocol(), ip.header_len(), ip.payload())
        }
        _ => {
            let ip = ipv6::Packet::new_checked_header(invoking)?;
            let upper = ip.upper_layer()?;
            if upper.is_non_initial_fragment() {
                return Err(Error::Unsupported { what: "non-initial IPv6 fragment" });
            }
            let l4 = invoking.get(upper.offset..).ok_or(Error::Truncated)?;
            (ip.src_addr().into(), ip.dst_addr().into(), upper.protocol, upper.offset, l4)
        }
    };
    let quoted: [u8; 8] = l4.get(..8).and_then(|q| q.try_into().ok()).ok_or(Error::Truncated)?;
    let be16 = |at: usize| u16::from_be_bytes([quoted[at], quoted[at + 1]]);
    let (src_port, dst_port) = match protocol {
        Protocol::Tcp | Protocol::Udp | Protocol::Sctp => (be16(0), be16(2)),
        Protocol::Icmp if icmpv4::Message::from(quoted[0]).is_echo() => (be16(4), be16(4)),
        Protocol::Icmpv6 if icmpv6::Message::from(quoted[0]).is_echo() => (be16(4), be16(4)),
        _ => (0, 0),
    };
    Ok(FlowKey { src, dst, protocol, src_port, dst_port, l3_offset: 0, l4_offset })
}

fn ip_version(packet: &[u8]) -> Result<u8> {
    match packet.first().map(|b| b >> 4) {
        None => Err(Error::Truncated),
        Some(version @ (4 | 6)) => Ok(version),
        Some(_) => Err(Error::Malformed { what: "IP version is neither 4 nor 6" }),
    }
}

fn parse_ipv4(packet: &[u8]) -> Result<FlowKey> {
    let ip = ipv4::Packet::new_checked(packet)?;
    if ip.frag_offset() != 0 {
        return Err(Error::Unsupported { what: "non-initial IPv4 fragment" });
    }
    let protocol = ip.protocol();
    let (src_port, dst_port) = l4_ports(protocol, ip.payload())?;
    Ok(FlowKey {
        src: ip.src_addr().into(),
        dst: ip.dst_addr().into(),
        protocol,
        src_port,
        dst_port,
        l3_offset: 0,
        l4_offset: ip.header_len(),
    })
}

fn parse_ipv6(packet: &[u8]) -> Result<FlowKey> {
    let ip = ipv6::Packet::new_checked(packet)?;
    let upper = ip.upper_layer()?;
    if upper.is_non_initial_fragment() {
        return Err(Error::Unsupported { what: "non-initial IPv6 fragment" });
    }
    let ip_end = ipv6::HEADER_LEN + usize::from(ip.payload_len());
    let l4 = packet.get(upper.offset..ip_end).ok_or(Error::Truncated)?;
    let (src_port, dst_port) = l4_ports(upper.protocol, l4)?;
    Ok(FlowKey {
        src: ip.src_addr().into(),
        dst: ip.dst_addr().into(),
        protocol: upper.protocol,
        src_port,
        dst_port,
        l3_offset: 0,
        l4_offset: upper.offset,
    })
}

/// Ports of a whole upper-layer message, after checking its header.
fn l4_ports(protocol: Protocol, l4: &[u8]) -> Result<(u16, u16)> {
    Ok(match protocol {
        Protocol::Tcp => {
            let p = tcp::Packet::new_checked(l4)?;
            (p.src_port(), p.dst_port())
        }
        Protocol::Udp => {
            let p = udp::Packet::new_checked(l4)?;
            (p.src_port(), p.dst_port())
        }
        Protocol::Sctp => {
            let p = sctp::Packet::new_checked(l4)?;
            (p.src_port(), p.dst_port())
        }
        Protocol::Icmp => {
            let p = icmpv4::Packet::new_checked(l4)?;
            if p.msg_type().is_echo() {
                (p.echo_ident(), p.echo_ident())
            } else {
                (0, 0)
            }
        }
        Protocol::Icmpv6 => {
            let p = icmpv6::Packet::new_checked(l4)?;
            if p.msg_type().is_echo() {
                (p.echo_ident(), p.echo_ident())
            } else {
                (0, 0)
            }
        }
        Protocol::Other(_) => (0, 0),
    })
}
