//! Drives every parser, checked constructor, accessor, setter and
//! `Repr::parse` of `flowgate-wire` over arbitrary bytes.
//!
//! Shared, through `#[path]`, by the robustness tests in this directory and
//! the fuzz target `fuzz/fuzz_targets/packet.rs`, so the two exercise the
//! same surface. Besides "never panics", it asserts invariants that must
//! hold for any input: offsets stay in bounds, `fill_checksum` makes
//! `verify_checksum` true, and re-parsing what a `Repr` emits gives the same
//! `Repr`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::net::{Ipv4Addr, Ipv6Addr};

use flowgate_wire::{
    ethernet, icmpv4, icmpv6, ipv4, ipv6, parse_embedded_flow_key, parse_flow_key, parse_ip_flow_key, sctp, tcp, udp,
    vlan, FlowKey, IpPair,
};

/// Addresses for the pseudo-header checksums of bytes with no IP header.
const V4: IpPair = IpPair::V4 { src: Ipv4Addr::new(10, 244, 1, 5), dst: Ipv4Addr::new(10, 96, 0, 10) };
const V6_SRC: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, 5);
const V6_DST: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0xa);
const V6: IpPair = IpPair::V6 { src: V6_SRC, dst: V6_DST };
/// A length no header can hold, for the length setters.
const HOSTILE: usize = usize::MAX;

/// Runs everything over `data`; panics only if the crate breaks its contract.
pub fn exercise(data: &[u8]) {
    if let Ok(key) = parse_flow_key(data) {
        check_key(&key, data.len());
    }
    if let Ok(key) = parse_ip_flow_key(data) {
        check_key(&key, data.len());
        assert_eq!(key.l3_offset, 0);
    }
    if let Ok(key) = parse_embedded_flow_key(data) {
        assert!(key.l4_offset + 8 <= data.len());
    }
    ethernet(data);
    vlan(data);
    ipv4(data);
    ipv6(data);
    tcp(data);
    udp(data);
    sctp(data);
    icmpv4(data);
    icmpv6(data);
}

fn check_key(key: &FlowKey, len: usize) {
    assert!(key.l3_offset < key.l4_offset);
    assert!(key.l4_offset <= len);
    black_box(key.five_tuple());
}

fn ethernet(data: &[u8]) {
    let Ok(packet) = ethernet::Packet::new_checked(data) else { return };
    black_box((packet.dst_addr(), packet.src_addr(), packet.ethertype(), packet.header_len(), packet.payload()));
    let repr = ethernet::Repr::parse(&packet).expect("checked packet parses");
    let mut buf = vec![0u8; repr.buffer_len()];
    repr.emit(&mut ethernet::Packet::new_unchecked(&mut buf[..]));
    assert_eq!(buf[..], data[..ethernet::HEADER_LEN]);

    let mut copy = data.to_vec();
    let mut packet = ethernet::Packet::new_checked(&mut copy[..]).expect("same bytes");
    packet.set_src_addr(repr.dst_addr);
    packet.set_dst_addr(repr.src_addr);
    packet.set_ethertype(repr.ethertype);
    black_box(packet.payload_mut());
}

fn vlan(data: &[u8]) {
    let Ok(packet) = vlan::Packet::new_checked(data) else { return };
    black_box((packet.tci(), packet.pcp(), packet.dei(), packet.vid(), packet.ethertype(), packet.payload()));
    let repr = vlan::Repr::parse(&packet).expect("checked packet parses");
    let mut buf = vec![0u8; repr.buffer_len()];
    repr.emit(&mut vlan::Packet::new_unchecked(&mut buf[..]));
    assert_eq!(buf[..], data[..vlan::HEADER_LEN]);

    let mut copy = data.to_vec();
    let mut packet = vlan::Packet::new_checked(&mut copy[..]).expect("same bytes");
    packet.set_pcp(repr.pcp);
    packet.set_dei(repr.dei);
    packet.set_vid(repr.vid);
    packet.set_ethertype(repr.ethertype);
    black_box(packet.payload_mut());
}

fn ipv4(data: &[u8]) {
    if let Ok(header) = ipv4::Packet::new_checked_header(data) {
        black_box((header.options(), header.payload(), header.verify_checksum()));
    }
    let Ok(packet) = ipv4::Packet::new_checked(data) else { return };
    black_box((
        packet.version(),
        packet.header_len(),
        packet.dscp(),
        packet.ecn(),
        packet.total_len(),
        packet.ident(),
        packet.dont_frag(),
        packet.more_frags(),
        packet.frag_offset(),
        packet.is_fragment(),
        packet.ttl(),
        packet.protocol(),
        packet.checksum(),
        packet.src_addr(),
        packet.dst_addr(),
        packet.options(),
        packet.payload(),
        packet.verify_checksum(),
    ));
    let repr = ipv4::Repr::parse(&packet).expect("checked packet parses");
    assert_eq!(repr.payload_len, packet.payload().len());
    let mut buf = vec![0u8; repr.buffer_len() + repr.payload_len];
    repr.emit(&mut ipv4::Packet::new_unchecked(&mut buf[..]));
    let emitted = ipv4::Packet::new_checked(&buf[..]).expect("emitted header is valid");
    assert!(emitted.verify_checksum());
    assert_eq!(ipv4::Repr::parse(&emitted), Ok(repr));

    let mut copy = data.to_vec();
    let mut packet = ipv4::Packet::new_checked(&mut copy[..]).expect("same bytes");
    packet.set_src_addr(repr.dst_addr);
    packet.set_dst_addr(repr.src_addr);
    packet.set_ttl(repr.ttl.wrapping_sub(1));
    packet.set_ident(repr.ident);
    packet.set_dscp(repr.dscp);
    packet.set_ecn(repr.ecn);
    packet.set_dont_frag(repr.dont_frag);
    packet.set_more_frags(repr.more_frags);
    packet.set_frag_offset(repr.frag_offset);
    packet.set_protocol(repr.protocol);
    packet.fill_checksum();
    assert!(packet.verify_checksum());
    black_box(packet.payload_mut());

    // Length setters given values the buffer cannot hold must not make a
    // later accessor panic.
    for (header_len, total_len) in [(0, 0), (60, u16::MAX), (24, 21), (HOSTILE, 0)] {
        packet.set_header_len(header_len);
        packet.set_total_len(total_len);
        packet.fill_checksum();
        let view = ipv4::Packet::new_unchecked(packet.as_ref());
        black_box((view.options(), view.payload(), view.verify_checksum()));
        black_box(packet.payload_mut());
    }
}

fn ipv6(data: &[u8]) {
    if let Ok(header) = ipv6::Packet::new_checked_header(data) {
        black_box((header.payload(), header.upper_layer().ok()));
    }
    let Ok(packet) = ipv6::Packet::new_checked(data) else { return };
    black_box((
        packet.version(),
        packet.traffic_class(),
        packet.flow_label(),
        packet.payload_len(),
        packet.next_header(),
        packet.hop_limit(),
        packet.src_addr(),
        packet.dst_addr(),
        packet.payload(),
    ));
    if let Ok(upper) = packet.upper_layer() {
        assert!(upper.offset >= ipv6::HEADER_LEN);
        assert!(upper.offset <= ipv6::HEADER_LEN + packet.payload().len());
        black_box(upper.is_non_initial_fragment());
    }
    let repr = ipv6::Repr::parse(&packet).expect("checked packet parses");
    let mut buf = vec![0u8; repr.buffer_len() + repr.payload_len];
    repr.emit(&mut ipv6::Packet::new_unchecked(&mut buf[..]));
    assert_eq!(buf[..ipv6::HEADER_LEN], data[..ipv6::HEADER_LEN]);

    let mut copy = data.to_vec();
    let mut packet = ipv6::Packet::new_checked(&mut copy[..]).expect("same bytes");
    packet.set_src_addr(repr.dst_addr);
    packet.set_dst_addr(repr.src_addr);
    packet.set_hop_limit(repr.hop_limit.wrapping_sub(1));
    packet.set_traffic_class(repr.traffic_class);
    packet.set_flow_label(repr.flow_label);
    packet.set_next_header(repr.next_header);
    black_box(packet.payload_mut());
    for payload_len in [0, u16::MAX] {
        packet.set_payload_len(payload_len);
        let view = ipv6::Packet::new_unchecked(packet.as_ref());
        black_box((view.payload(), view.upper_layer().ok()));
        black_box(packet.payload_mut());
    }
}

fn tcp(data: &[u8]) {
    let Ok(packet) = tcp::Packet::new_checked(data) else { return };
    black_box((
        packet.src_port(),
        packet.dst_port(),
        packet.seq_number(),
        packet.ack_number(),
        packet.header_len(),
        packet.flags(),
        packet.window_len(),
        packet.checksum(),
        packet.urgent_at(),
        packet.options(),
        packet.payload(),
        packet.verify_checksum(&V4),
        packet.verify_checksum(&V6),
    ));
    let repr = tcp::Repr::parse(&packet).expect("checked packet parses");
    let mut buf = vec![0u8; repr.buffer_len()];
    repr.emit(&mut tcp::Packet::new_unchecked(&mut buf[..]));
    let emitted = tcp::Packet::new_checked(&buf[..]).expect("emitted header is valid");
    assert_eq!(tcp::Repr::parse(&emitted), Ok(repr));

    let mut copy = data.to_vec();
    let mut packet = tcp::Packet::new_checked(&mut copy[..]).expect("same bytes");
    packet.set_src_port(repr.dst_port);
    packet.set_dst_port(repr.src_port);
    packet.set_seq_number(repr.ack_number);
    packet.set_ack_number(repr.seq_number);
    packet.set_flags(repr.flags | tcp::Flags::ACK);
    packet.set_window_len(repr.window_len);
    packet.set_urgent_at(repr.urgent_at);
    for ips in [V4, V6] {
        packet.fill_checksum(&ips);
        assert!(packet.verify_checksum(&ips));
    }
    black_box(packet.payload_mut());
    for header_len in [0, 60, HOSTILE] {
        packet.set_header_len(header_len);
        packet.fill_checksum(&V4);
        let view = tcp::Packet::new_unchecked(packet.as_ref());
        black_box((view.options(), view.payload(), view.verify_checksum(&V4)));
        black_box(packet.payload_mut());
    }
}

fn udp(data: &[u8]) {
    let Ok(packet) = udp::Packet::new_checked(data) else { return };
    black_box((
        packet.src_port(),
        packet.dst_port(),
        packet.len(),
        packet.is_empty(),
        packet.checksum(),
        packet.payload(),
        packet.verify_checksum(&V4),
        packet.verify_checksum(&V6),
    ));
    let repr = udp::Repr::parse(&packet).expect("checked packet parses");
    let mut buf = vec![0u8; repr.buffer_len() + repr.payload_len];
    repr.emit(&mut udp::Packet::new_unchecked(&mut buf[..]));
    let emitted = udp::Packet::new_checked(&buf[..]).expect("emitted header is valid");
    assert_eq!(udp::Repr::parse(&emitted), Ok(repr));

    let mut copy = data.to_vec();
    let mut packet = udp::Packet::new_checked(&mut copy[..]).expect("same bytes");
    packet.set_src_port(repr.dst_port);
    packet.set_dst_port(repr.src_port);
    for ips in [V4, V6] {
        packet.fill_checksum(&ips);
        assert_ne!(packet.checksum(), 0);
        assert!(packet.verify_checksum(&ips));
    }
    black_box(packet.payload_mut());
    for len in [0, 7, u16::MAX] {
        packet.set_len(len);
        packet.fill_checksum(&V6);
        let view = udp::Packet::new_unchecked(packet.as_ref());
        black_box((view.payload(), view.verify_checksum(&V6)));
        black_box(packet.payload_mut());
    }
}

fn sctp(data: &[u8]) {
    let Ok(packet) = sctp::Packet::new_checked(data) else { return };
    black_box((
        packet.src_port(),
        packet.dst_port(),
        packet.verification_tag(),
        packet.checksum(),
        packet.payload(),
        packet.verify_checksum(),
    ));
    let repr = sctp::Repr::parse(&packet).expect("checked packet parses");
    let mut buf = vec![0u8; repr.buffer_len()];
    repr.emit(&mut sctp::Packet::new_unchecked(&mut buf[..]));
    assert_eq!(buf[..8], data[..8]);

    let mut copy = data.to_vec();
    let mut packet = sctp::Packet::new_checked(&mut copy[..]).expect("same bytes");
    packet.set_src_port(repr.dst_port);
    packet.set_dst_port(repr.src_port);
    packet.set_verification_tag(repr.verification_tag);
    packet.fill_checksum();
    assert!(packet.verify_checksum());
    black_box(packet.payload_mut());
}

fn icmpv4(data: &[u8]) {
    let Ok(packet) = icmpv4::Packet::new_checked(data) else { return };
    black_box((
        packet.msg_type(),
        packet.msg_code(),
        packet.checksum(),
        packet.rest_of_header(),
        packet.echo_ident(),
        packet.echo_seq_no(),
        packet.next_hop_mtu(),
        packet.payload(),
        packet.invoking_packet(),
        packet.verify_checksum(),
    ));
    if let Ok(inner) = packet.embedded_ipv4() {
        black_box((inner.src_addr(), inner.dst_addr(), inner.protocol(), inner.options(), inner.payload()));
    }
    let repr = icmpv4::Repr::parse(&packet).expect("checked packet parses");
    let mut buf = vec![0u8; repr.buffer_len()];
    repr.emit(&mut icmpv4::Packet::new_unchecked(&mut buf[..]));
    assert_eq!(buf[..2], data[..2]);
    assert_eq!(buf[4..], data[4..icmpv4::HEADER_LEN]);

    let mut copy = data.to_vec();
    let mut packet = icmpv4::Packet::new_checked(&mut copy[..]).expect("same bytes");
    packet.set_echo_ident(packet.echo_seq_no());
    packet.fill_checksum();
    assert!(packet.verify_checksum());
    black_box(packet.payload_mut());
}

fn icmpv6(data: &[u8]) {
    let Ok(packet) = icmpv6::Packet::new_checked(data) else { return };
    black_box((
        packet.msg_type(),
        packet.msg_code(),
        packet.checksum(),
        packet.rest_of_header(),
        packet.echo_ident(),
        packet.echo_seq_no(),
        packet.mtu(),
        packet.pointer(),
        packet.payload(),
        packet.invoking_packet(),
        packet.verify_checksum(V6_SRC, V6_DST),
    ));
    if let Ok(inner) = packet.embedded_ipv6() {
        black_box((inner.src_addr(), inner.dst_addr(), inner.next_header(), inner.payload(), inner.upper_layer().ok()));
    }
    let repr = icmpv6::Repr::parse(&packet).expect("checked packet parses");
    let mut buf = vec![0u8; repr.buffer_len()];
    repr.emit(&mut icmpv6::Packet::new_unchecked(&mut buf[..]));
    assert_eq!(buf[..2], data[..2]);
    assert_eq!(buf[4..], data[4..icmpv6::HEADER_LEN]);

    let mut copy = data.to_vec();
    let mut packet = icmpv6::Packet::new_checked(&mut copy[..]).expect("same bytes");
    packet.set_echo_seq_no(packet.echo_ident());
    packet.fill_checksum(V6_SRC, V6_DST);
    assert!(packet.verify_checksum(V6_SRC, V6_DST));
    black_box(packet.payload_mut());
}
