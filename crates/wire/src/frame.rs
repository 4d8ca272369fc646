//! Building complete, checksum-correct frames from a short description, for
//! tests and for the eBPF differential tests.

use crate::ethernet::{self, EtherType};
use crate::ip::{IpPair, Protocol};
use crate::{icmpv4, icmpv6, ipv4, ipv6, sctp, tcp, udp, vlan};

/// The upper layer of a frame to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum L4Spec {
    /// A TCP segment without options (window 65,535).
    Tcp {
        /// Source port.
        src_port: u16,
        /// Destination port.
        dst_port: u16,
        /// Control bits.
        flags: tcp::Flags,
        /// Sequence number.
        seq_number: u32,
        /// Acknowledgment number.
        ack_number: u32,
    },
    /// A UDP datagram, checksum filled in.
    Udp {
        /// Source port.
        src_port: u16,
        /// Destination port.
        dst_port: u16,
    },
    /// An SCTP packet; the frame's payload is taken as its chunks.
    Sctp {
        /// Source port.
        src_port: u16,
        /// Destination port.
        dst_port: u16,
        /// Verification tag.
        verification_tag: u32,
    },
    /// An echo request or reply: ICMP over IPv4, ICMPv6 over IPv6.
    IcmpEcho {
        /// Identifier.
        ident: u16,
        /// Sequence number.
        seq_no: u16,
        /// A reply rather than a request.
        reply: bool,
    },
    /// No upper-layer header: the payload follows the IP header as is.
    Raw {
        /// The IP protocol number to announce.
        protocol: Protocol,
    },
}

impl L4Spec {
    /// A TCP segment with sequence and acknowledgment numbers 0.
    pub fn tcp(src_port: u16, dst_port: u16, flags: tcp::Flags) -> L4Spec {
        L4Spec::Tcp { src_port, dst_port, flags, seq_number: 0, ack_number: 0 }
    }

    /// A UDP datagram.
    pub fn udp(src_port: u16, dst_port: u16) -> L4Spec {
        L4Spec::Udp { src_port, dst_port }
    }

    /// An SCTP packet with verification tag 0 (as an INIT carries).
    pub fn sctp(src_port: u16, dst_port: u16) -> L4Spec {
        L4Spec::Sctp { src_port, dst_port, verification_tag: 0 }
    }

    /// An echo request.
    pub fn icmp_echo(ident: u16, seq_no: u16) -> L4Spec {
        L4Spec::IcmpEcho { ident, seq_no, reply: false }
    }

    /// The IP protocol this upper layer is announced as, over `ips`.
    pub fn protocol(&self, ips: &IpPair) -> Protocol {
        match self {
            L4Spec::Tcp { .. } => Protocol::Tcp,
            L4Spec::Udp { .. } => Protocol::Udp,
            L4Spec::Sctp { .. } => Protocol::Sctp,
            L4Spec::IcmpEcho { .. } if ips.is_ipv6() => Protocol::Icmpv6,
            L4Spec::IcmpEcho { .. } => Protocol::Icmp,
            L4Spec::Raw { protocol } => *protocol,
        }
    }

    fn header_len(&self) -> usize {
        match self {
            L4Spec::Tcp { .. } => tcp::HEADER_LEN,
            L4Spec::Udp { .. } => udp::HEADER_LEN,
            L4Spec::Sctp { .. } => sctp::HEADER_LEN,
            L4Spec::IcmpEcho { .. } => icmpv4::HEADER_LEN,
            L4Spec::Raw { .. } => 0,
        }
    }
}

/// What [`build_frame`] builds: Ethernet, optional VLAN tag, IPv4 or IPv6
/// (by the family of `ips`), upper layer, payload.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FrameSpec {
    /// Source MAC address.
    pub src_mac: ethernet::Address,
    /// Destination MAC address.
    pub dst_mac: ethernet::Address,
    /// An 802.1Q VLAN identifier, to insert a tag.
    pub vlan_id: Option<u16>,
    /// IP source and destination.
    pub ips: IpPair,
    /// IPv4 TTL or IPv6 hop limit.
    pub ttl: u8,
    /// The upper layer.
    pub l4: L4Spec,
    /// Bytes after the upper-layer header.
    pub payload: Vec<u8>,
}

impl FrameSpec {
    /// A frame between locally administered MACs `02:00:00:00:00:01` →
    /// `02:00:00:00:00:02`, untagged, TTL 64, empty payload.
    pub fn new(ips: IpPair, l4: L4Spec) -> FrameSpec {
        FrameSpec {
            src_mac: ethernet::Address([0x02, 0, 0, 0, 0, 0x01]),
            dst_mac: ethernet::Address([0x02, 0, 0, 0, 0, 0x02]),
            vlan_id: None,
            ips,
            ttl: 64,
            l4,
            payload: Vec::new(),
        }
    }

    /// The same frame with `payload`.
    #[must_use]
    pub fn with_payload(mut self, payload: impl Into<Vec<u8>>) -> FrameSpec {
        self.payload = payload.into();
        self
    }

    /// The same frame tagged with VLAN `vlan_id`.
    #[must_use]
    pub fn with_vlan(mut self, vlan_id: u16) -> FrameSpec {
        self.vlan_id = Some(vlan_id);
        self
    }

    /// The IP protocol of the upper layer.
    pub fn protocol(&self) -> Protocol {
        self.l4.protocol(&self.ips)
    }
}

/// Builds the frame `spec` describes, with every length and checksum correct.
///
/// IPv4 headers have no options, identification 0 and Don't Fragment set;
/// IPv6 headers have traffic class and flow label 0 and no extension headers.
///
/// # Panics
///
/// If the upper layer and payload exceed 65,535 bytes (65,515 over IPv4),
/// which no IP packet without jumbograms can carry.
pub fn build_frame(spec: &FrameSpec) -> Vec<u8> {
    let ip_ethertype = if spec.ips.is_ipv6() { EtherType::Ipv6 } else { EtherType::Ipv4 };
    let eth_len = ethernet::HEADER_LEN + if spec.vlan_id.is_some() { vlan::HEADER_LEN } else { 0 };
    let ip_len = if spec.ips.is_ipv6() { ipv6::HEADER_LEN } else { ipv4::HEADER_LEN };
    let l4_header_len = spec.l4.header_len();
    let l4_len = l4_header_len + spec.payload.len();
    let max_l4_len = if spec.ips.is_ipv6() { 65_535 } else { 65_535 - ipv4::HEADER_LEN };
    assert!(l4_len <= max_l4_len, "build_frame: {l4_len} bytes of upper layer do not fit in one IP packet");

    let mut frame = vec![0u8; eth_len + ip_len + l4_len];
    let (eth_buf, rest) = frame.split_at_mut(eth_len);
    let (ip_buf, l4_buf) = rest.split_at_mut(ip_len);

    let outer_ethertype = if spec.vlan_id.is_some() { EtherType::Vlan } else { ip_ethertype };
    ethernet::Repr { src_addr: spec.src_mac, dst_addr: spec.dst_mac, ethertype: outer_ethertype }
        .emit(&mut ethernet::Packet::new_unchecked(&mut *eth_buf));
    if let Some(vid) = spec.vlan_id {
        let mut tag = ethernet::Packet::new_unchecked(&mut *eth_buf);
        vlan::Repr { pcp: 0, dei: false, vid, ethertype: ip_ethertype }
            .emit(&mut vlan::Packet::new_unchecked(tag.payload_mut()));
    }

    let protocol = spec.protocol();
    match spec.ips {
        IpPair::V4 { src, dst } => ipv4::Repr {
            src_addr: src,
            dst_addr: dst,
            protocol,
            payload_len: l4_len,
            ttl: spec.ttl,
            dscp: 0,
            ecn: 0,
            ident: 0,
            dont_frag: true,
            more_frags: false,
            frag_offset: 0,
        }
        .emit(&mut ipv4::Packet::new_unchecked(ip_buf)),
        IpPair::V6 { src, dst } => ipv6::Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: protocol,
            payload_len: l4_len,
            hop_limit: spec.ttl,
            traffic_class: 0,
            flow_label: 0,
        }
        .emit(&mut ipv6::Packet::new_unchecked(ip_buf)),
    }

    let (_, payload_buf) = l4_buf.split_at_mut(l4_header_len);
    payload_buf.copy_from_slice(&spec.payload);
    emit_l4(&spec.l4, &spec.ips, l4_buf);
    frame
}

/// Writes the upper-layer header into `l4` (which already holds the payload
/// after it) and fills its checksum.
fn emit_l4(l4: &L4Spec, ips: &IpPair, buf: &mut [u8]) {
    match *l4 {
        L4Spec::Tcp { src_port, dst_port, flags, seq_number, ack_number } => {
            let mut packet = tcp::Packet::new_unchecked(buf);
            tcp::Repr { src_port, dst_port, seq_number, ack_number, flags, window_len: 65_535, urgent_at: 0 }
                .emit(&mut packet);
            packet.fill_checksum(ips);
        }
        L4Spec::Udp { src_port, dst_port } => {
            let payload_len = buf.len().saturating_sub(udp::HEADER_LEN);
            let mut packet = udp::Packet::new_unchecked(buf);
            udp::Repr { src_port, dst_port, payload_len }.emit(&mut packet);
            packet.fill_checksum(ips);
        }
        L4Spec::Sctp { src_port, dst_port, verification_tag } => {
            let mut packet = sctp::Packet::new_unchecked(buf);
            sctp::Repr { src_port, dst_port, verification_tag }.emit(&mut packet);
            packet.fill_checksum();
        }
        L4Spec::IcmpEcho { ident, seq_no, reply } => match *ips {
            IpPair::V4 { .. } => {
                let mut packet = icmpv4::Packet::new_unchecked(buf);
                let repr = if reply {
                    icmpv4::Repr::EchoReply { ident, seq_no }
                } else {
                    icmpv4::Repr::EchoRequest { ident, seq_no }
                };
                repr.emit(&mut packet);
                packet.fill_checksum();
            }
            IpPair::V6 { src, dst } => {
                let mut packet = icmpv6::Packet::new_unchecked(buf);
                let repr = if reply {
                    icmpv6::Repr::EchoReply { ident, seq_no }
                } else {
                    icmpv6::Repr::EchoRequest { ident, seq_no }
                };
                repr.emit(&mut packet);
                packet.fill_checksum(src, dst);
            }
        },
        L4Spec::Raw { .. } => {}
    }
}
