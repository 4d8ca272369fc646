//! Golden bytes: parse each captured-style frame, assert every field, and
//! emit the `Repr`s back into a buffer that must equal the original bytes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod vectors;

use std::net::{Ipv4Addr, Ipv6Addr};

use flowgate_wire::ethernet::{Address, EtherType};
use flowgate_wire::{ethernet, icmpv4, icmpv6, ipv4, ipv6, sctp, tcp, udp, vlan, IpPair, Protocol};
use vectors::*;

const NODE_MAC: Address = Address([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
const POD_MAC: Address = Address([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x05]);
const POD_V4: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
const DNS_V4: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const POD_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, 5);

/// Splits a frame after the Ethernet header (14 bytes).
fn l3(frame: &[u8]) -> &[u8] {
    &frame[ethernet::HEADER_LEN..]
}

// ---------------------------------------------------------------- ethernet

#[test]
fn ethernet_golden() {
    let packet = ethernet::Packet::new_checked(&TCP_V4[..]).unwrap();
    assert_eq!(packet.dst_addr(), NODE_MAC);
    assert_eq!(packet.src_addr(), POD_MAC);
    assert_eq!(packet.ethertype(), EtherType::Ipv4);
    assert_eq!(packet.header_len(), 14);
    assert_eq!(packet.payload(), &TCP_V4[14..]);
    assert_eq!(packet.dst_addr().to_string(), "52:54:00:12:34:56");
    assert!(packet.src_addr().is_local());
    assert!(!packet.src_addr().is_multicast());

    let repr = ethernet::Repr::parse(&packet).unwrap();
    assert_eq!(repr, ethernet::Repr { src_addr: POD_MAC, dst_addr: NODE_MAC, ethertype: EtherType::Ipv4 });
    let mut buf = TCP_V4;
    buf[..14].fill(0);
    repr.emit(&mut ethernet::Packet::new_unchecked(&mut buf[..]));
    assert_eq!(buf, TCP_V4);
}

#[test]
fn ethernet_setters() {
    let mut buf = TCP_V4;
    let mut packet = ethernet::Packet::new_checked(&mut buf[..]).unwrap();
    packet.set_src_addr(NODE_MAC);
    packet.set_dst_addr(Address::BROADCAST);
    packet.set_ethertype(EtherType::Arp);
    assert_eq!(&buf[..14], &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x08, 0x06]);
    assert!(Address::BROADCAST.is_broadcast());
}

#[test]
fn vlan_golden() {
    let eth = ethernet::Packet::new_checked(&UDP_V6_VLAN[..]).unwrap();
    assert_eq!(eth.ethertype(), EtherType::Vlan);
    assert!(eth.ethertype().is_vlan_tag());
    let tag = vlan::Packet::new_checked(eth.payload()).unwrap();
    assert_eq!(tag.tci(), 0xa064);
    assert_eq!(tag.pcp(), 5);
    assert!(!tag.dei());
    assert_eq!(tag.vid(), 100);
    assert_eq!(tag.ethertype(), EtherType::Ipv6);
    assert_eq!(tag.payload(), &UDP_V6_VLAN[18..]);

    let repr = vlan::Repr::parse(&tag).unwrap();
    assert_eq!(repr, vlan::Repr { pcp: 5, dei: false, vid: 100, ethertype: EtherType::Ipv6 });
    let mut buf = [0u8; 4];
    repr.emit(&mut vlan::Packet::new_unchecked(&mut buf[..]));
    assert_eq!(buf, UDP_V6_VLAN[14..18]);

    let mut buf = [0u8; 4];
    let mut tag = vlan::Packet::new_unchecked(&mut buf[..]);
    tag.set_vid(0xfff);
    tag.set_dei(true);
    tag.set_pcp(7);
    tag.set_ethertype(EtherType::Ipv4);
    assert_eq!(buf, [0xff, 0xff, 0x08, 0x00]);
}

// -------------------------------------------------------------------- ipv4

#[test]
fn ipv4_golden() {
    let bytes = l3(&TCP_V4);
    let packet = ipv4::Packet::new_checked(bytes).unwrap();
    assert_eq!(packet.version(), 4);
    assert_eq!(packet.header_len(), 20);
    assert_eq!(packet.dscp(), 0);
    assert_eq!(packet.ecn(), 0);
    assert_eq!(packet.total_len(), 69);
    assert_eq!(packet.ident(), 0x1c46);
    assert!(packet.dont_frag());
    assert!(!packet.more_frags());
    assert_eq!(packet.frag_offset(), 0);
    assert!(!packet.is_fragment());
    assert_eq!(packet.ttl(), 64);
    assert_eq!(packet.protocol(), Protocol::Tcp);
    assert_eq!(packet.checksum(), 0x080b);
    assert!(packet.verify_checksum());
    assert_eq!(packet.src_addr(), POD_V4);
    assert_eq!(packet.dst_addr(), DNS_V4);
    assert!(packet.options().is_empty());
    assert_eq!(packet.payload(), &bytes[20..]);

    let repr = ipv4::Repr::parse(&packet).unwrap();
    assert_eq!(
        repr,
        ipv4::Repr {
            src_addr: POD_V4,
            dst_addr: DNS_V4,
            protocol: Protocol::Tcp,
            payload_len: 49,
            ttl: 64,
            dscp: 0,
            ecn: 0,
            ident: 0x1c46,
            dont_frag: true,
            more_frags: false,
            frag_offset: 0,
        }
    );
    let mut buf = bytes.to_vec();
    buf[..20].fill(0);
    repr.emit(&mut ipv4::Packet::new_unchecked(&mut buf[..]));
    assert_eq!(buf, bytes);
}

#[test]
fn ipv4_with_options_golden() {
    let bytes = l3(&UDP_V4_OPTIONS_NO_CHECKSUM);
    let packet = ipv4::Packet::new_checked(bytes).unwrap();
    assert_eq!(packet.header_len(), 24);
    assert_eq!(packet.options(), &[0x94, 0x04, 0x00, 0x00]);
    assert_eq!(packet.total_len(), 40);
    assert_eq!(packet.ttl(), 1);
    assert_eq!(packet.ident(), 1);
    assert!(!packet.dont_frag());
    assert_eq!(packet.protocol(), Protocol::Udp);
    assert_eq!(packet.checksum(), 0x56c6);
    assert!(packet.verify_checksum());
    assert_eq!(packet.src_addr(), Ipv4Addr::new(192, 0, 2, 1));
    assert_eq!(packet.payload(), &bytes[24..]);
    // The Repr skips options; its payload length still excludes them.
    assert_eq!(ipv4::Repr::parse(&packet).unwrap().payload_len, 16);
}

#[test]
fn ipv4_dscp_golden() {
    let packet = ipv4::Packet::new_checked(l3(&ICMPV4_PORT_UNREACHABLE)).unwrap();
    assert_eq!(packet.dscp(), 48);
    assert_eq!(packet.ecn(), 0);
    assert_eq!(packet.protocol(), Protocol::Icmp);
    assert!(packet.verify_checksum());
}

#[test]
fn ipv4_payload_excludes_ethernet_padding() {
    let mut frame = ICMPV4_ECHO.to_vec();
    frame.resize(64, 0);
    let packet = ipv4::Packet::new_checked(l3(&frame)).unwrap();
    assert_eq!(packet.payload().len(), 24);
}

#[test]
fn ipv4_setters_and_fragments() {
    let mut buf = l3(&TCP_V4).to_vec();
    let mut packet = ipv4::Packet::new_checked(&mut buf[..]).unwrap();
    packet.set_src_addr(Ipv4Addr::new(192, 168, 7, 1));
    packet.set_dst_addr(Ipv4Addr::new(10, 244, 3, 9));
    packet.set_ttl(63);
    packet.set_more_frags(true);
    packet.set_frag_offset(1480);
    packet.set_dont_frag(false);
    assert!(!packet.verify_checksum());
    packet.fill_checksum();
    assert!(packet.verify_checksum());
    assert!(packet.is_fragment());
    assert!(packet.more_frags());
    assert!(!packet.dont_frag());
    assert_eq!(packet.frag_offset(), 1480);
    assert_eq!(packet.ttl(), 63);
    assert_eq!(&buf[6..8], &[0x20, 0xb9]); // MF | 1480 / 8 = 185
}

#[test]
fn ipv4_rejects_bad_headers() {
    let mut buf = l3(&TCP_V4).to_vec();
    buf[0] = 0x44; // IHL 4
    assert!(matches!(ipv4::Packet::new_checked(&buf[..]), Err(flowgate_wire::Error::Malformed { .. })));
    buf[0] = 0x65; // version 6
    assert!(matches!(ipv4::Packet::new_checked(&buf[..]), Err(flowgate_wire::Error::Malformed { .. })));
    buf[0] = 0x4f; // IHL 15: a 60-byte header still fits in Total Length (69) and the buffer
    assert!(ipv4::Packet::new_checked(&buf[..]).is_ok());
    buf[0] = 0x45;
    buf[2..4].copy_from_slice(&19u16.to_be_bytes()); // total length below the header
    assert!(matches!(ipv4::Packet::new_checked(&buf[..]), Err(flowgate_wire::Error::Malformed { .. })));
    buf[2..4].copy_from_slice(&70u16.to_be_bytes()); // one byte more than the buffer
    assert_eq!(ipv4::Packet::new_checked(&buf[..]), Err(flowgate_wire::Error::Truncated));
    assert!(ipv4::Packet::new_checked_header(&buf[..]).is_ok());
}

// -------------------------------------------------------------------- ipv6

#[test]
fn ipv6_golden() {
    let bytes = &UDP_V6_VLAN[18..];
    let packet = ipv6::Packet::new_checked(bytes).unwrap();
    assert_eq!(packet.version(), 6);
    assert_eq!(packet.traffic_class(), 0);
    assert_eq!(packet.flow_label(), 0x5a3c1);
    assert_eq!(packet.payload_len(), 32);
    assert_eq!(packet.next_header(), Protocol::Udp);
    assert_eq!(packet.hop_limit(), 64);
    assert_eq!(packet.src_addr(), POD_V6);
    assert_eq!(packet.dst_addr(), "fd00:10:96::a".parse::<Ipv6Addr>().unwrap());
    assert_eq!(packet.payload(), &bytes[40..]);
    let upper = packet.upper_layer().unwrap();
    assert_eq!(upper, ipv6::UpperLayer { protocol: Protocol::Udp, offset: 40, fragment: None });

    let repr = ipv6::Repr::parse(&packet).unwrap();
    assert_eq!(
        repr,
        ipv6::Repr {
            src_addr: POD_V6,
            dst_addr: "fd00:10:96::a".parse().unwrap(),
            next_header: Protocol::Udp,
            payload_len: 32,
            hop_limit: 64,
            traffic_class: 0,
            flow_label: 0x5a3c1,
        }
    );
    let mut buf = bytes.to_vec();
    buf[..40].fill(0);
    repr.emit(&mut ipv6::Packet::new_unchecked(&mut buf[..]));
    assert_eq!(buf, bytes);
}

#[test]
fn ipv6_extension_headers_golden() {
    let bytes = l3(&IPV6_EXT_HEADERS_TCP);
    let packet = ipv6::Packet::new_checked(bytes).unwrap();
    assert_eq!(packet.next_header(), Protocol::Other(ipv6::HOP_BY_HOP));
    assert_eq!(packet.payload_len(), 68);
    let upper = packet.upper_layer().unwrap();
    // 40 fixed + 8 hop-by-hop + 24 routing + 8 fragment + 8 destination options.
    assert_eq!(upper.offset, 88);
    assert_eq!(upper.protocol, Protocol::Tcp);
    assert_eq!(upper.fragment, Some(ipv6::Fragment { offset: 0, more_frags: false, ident: 0x6d2c_1a0b }));
    assert!(!upper.is_non_initial_fragment());

    let tcp = tcp::Packet::new_checked(&bytes[upper.offset..]).unwrap();
    assert_eq!((tcp.src_port(), tcp.dst_port()), (45678, 443));
    assert_eq!(tcp.flags(), tcp::Flags::SYN);
    let ips = IpPair::V6 { src: packet.src_addr(), dst: packet.dst_addr() };
    assert!(tcp.verify_checksum(&ips));
}

#[test]
fn ipv6_non_initial_fragment_golden() {
    let packet = ipv6::Packet::new_checked(l3(&IPV6_NON_INITIAL_FRAGMENT)).unwrap();
    let upper = packet.upper_layer().unwrap();
    assert_eq!(upper.protocol, Protocol::Udp);
    assert_eq!(upper.offset, 48);
    assert_eq!(upper.fragment, Some(ipv6::Fragment { offset: 1232, more_frags: false, ident: 0x6d2c_1a0c }));
    assert!(upper.is_non_initial_fragment());
}

#[test]
fn ipv6_extension_chain_is_bounded_and_ordered() {
    // Nine destination-options headers: one more than the walk allows.
    let mut buf = [0u8; 40 + 9 * 8 + 8];
    buf[0] = 0x60;
    buf[4..6].copy_from_slice(&(9 * 8 + 8u16).to_be_bytes());
    buf[6] = ipv6::DEST_OPTIONS;
    for i in 0..9 {
        buf[40 + i * 8] = if i == 8 { 17 } else { ipv6::DEST_OPTIONS };
    }
    let packet = ipv6::Packet::new_checked(&buf[..]).unwrap();
    assert!(matches!(packet.upper_layer(), Err(flowgate_wire::Error::Unsupported { .. })));

    // Eight are fine.
    buf[40 + 7 * 8] = 17;
    assert_eq!(ipv6::Packet::new_checked(&buf[..]).unwrap().upper_layer().unwrap().offset, 40 + 64);

    // Hop-by-hop anywhere but first is malformed.
    buf[40] = ipv6::HOP_BY_HOP;
    assert!(matches!(
        ipv6::Packet::new_checked(&buf[..]).unwrap().upper_layer(),
        Err(flowgate_wire::Error::Malformed { .. })
    ));

    // A header running past the payload is truncated.
    buf[40] = ipv6::DEST_OPTIONS;
    buf[41] = 200;
    assert_eq!(ipv6::Packet::new_checked(&buf[..]).unwrap().upper_layer(), Err(flowgate_wire::Error::Truncated));
}

#[test]
fn ipv6_setters() {
    let mut buf = UDP_V6_VLAN[18..].to_vec();
    let mut packet = ipv6::Packet::new_checked(&mut buf[..]).unwrap();
    packet.set_traffic_class(0xb8);
    packet.set_flow_label(0xfffff);
    packet.set_hop_limit(1);
    assert_eq!(packet.traffic_class(), 0xb8);
    assert_eq!(packet.flow_label(), 0xfffff);
    assert_eq!(packet.version(), 6);
    assert_eq!(&buf[..4], &[0x6b, 0x8f, 0xff, 0xff]);
    assert_eq!(buf[7], 1);
}

// --------------------------------------------------------------------- tcp

#[test]
fn tcp_golden() {
    let ip = ipv4::Packet::new_checked(l3(&TCP_V4)).unwrap();
    let ips = IpPair::V4 { src: ip.src_addr(), dst: ip.dst_addr() };
    let bytes = ip.payload();
    let packet = tcp::Packet::new_checked(bytes).unwrap();
    assert_eq!(packet.src_port(), 43512);
    assert_eq!(packet.dst_port(), 80);
    assert_eq!(packet.seq_number(), 0x4f2a_1c3b);
    assert_eq!(packet.ack_number(), 0x9d8e_7f60);
    assert_eq!(packet.header_len(), 20);
    assert_eq!(packet.flags(), tcp::Flags::PSH | tcp::Flags::ACK);
    assert_eq!(packet.flags().to_string(), "PSH|ACK");
    assert_eq!(packet.window_len(), 502);
    assert_eq!(packet.checksum(), 0xaf9f);
    assert_eq!(packet.urgent_at(), 0);
    assert!(packet.options().is_empty());
    assert_eq!(packet.payload(), b"GET / HTTP/1.1\r\nHost: web\r\n\r\n");
    assert!(packet.verify_checksum(&ips));
    // The checksum covers the addresses through the pseudo-header.
    assert!(!packet.verify_checksum(&IpPair::V4 { src: POD_V4, dst: Ipv4Addr::new(10, 96, 0, 11) }));

    let repr = tcp::Repr::parse(&packet).unwrap();
    assert_eq!(
        repr,
        tcp::Repr {
            src_port: 43512,
            dst_port: 80,
            seq_number: 0x4f2a_1c3b,
            ack_number: 0x9d8e_7f60,
            flags: tcp::Flags::PSH | tcp::Flags::ACK,
            window_len: 502,
            urgent_at: 0,
        }
    );
    let mut buf = vec![0u8; repr.buffer_len()];
    buf.extend_from_slice(packet.payload());
    let mut out = tcp::Packet::new_unchecked(&mut buf[..]);
    repr.emit(&mut out);
    out.fill_checksum(&ips);
    assert_eq!(buf, bytes);
}

#[test]
fn tcp_options_are_skipped() {
    let ip = ipv4::Packet::new_checked(l3(&TCP_V4_SYN_OPTIONS)).unwrap();
    let ips = IpPair::V4 { src: ip.src_addr(), dst: ip.dst_addr() };
    let packet = tcp::Packet::new_checked(ip.payload()).unwrap();
    assert_eq!(packet.header_len(), 40);
    assert_eq!(packet.flags(), tcp::Flags::SYN);
    assert_eq!(packet.window_len(), 64240);
    assert_eq!(packet.checksum(), 0x5dc7);
    assert_eq!(packet.options().len(), 20);
    assert_eq!(&packet.options()[..4], &[0x02, 0x04, 0x05, 0xb4]); // MSS 1460
    assert!(packet.payload().is_empty());
    assert!(packet.verify_checksum(&ips));
    assert_eq!(tcp::Repr::parse(&packet).unwrap().seq_number, 0x4f2a_1c3a);

    // Data offset beyond the buffer, and below 5.
    let mut buf = ip.payload().to_vec();
    buf[12] = 0xf0;
    assert_eq!(tcp::Packet::new_checked(&buf[..]), Err(flowgate_wire::Error::Truncated));
    buf[12] = 0x40;
    assert!(matches!(tcp::Packet::new_checked(&buf[..]), Err(flowgate_wire::Error::Malformed { .. })));
}

#[test]
fn tcp_flags_setter_keeps_data_offset() {
    let mut buf = ipv4::Packet::new_checked(l3(&TCP_V4_SYN_OPTIONS)).unwrap().payload().to_vec();
    let mut packet = tcp::Packet::new_checked(&mut buf[..]).unwrap();
    packet.set_flags(tcp::Flags::SYN | tcp::Flags::ACK | tcp::Flags::ECE);
    assert_eq!(packet.header_len(), 40);
    assert!(packet.flags().contains(tcp::Flags::SYN | tcp::Flags::ACK));
    assert!(!packet.flags().contains(tcp::Flags::FIN));
    assert_eq!(buf[12..14], [0xa0, 0x52]);
    let mut flags = tcp::Flags::empty();
    flags.insert(tcp::Flags::RST);
    flags |= tcp::Flags::NS;
    flags.remove(tcp::Flags::RST);
    assert_eq!(flags.bits(), 0x100);
    assert_eq!(format!("{:?}", tcp::Flags::FIN | tcp::Flags::ACK), "Flags(FIN|ACK)");
}

// --------------------------------------------------------------------- udp

#[test]
fn udp_golden() {
    let ip = ipv4::Packet::new_checked(l3(&UDP_V4_DNS)).unwrap();
    let ips = IpPair::V4 { src: ip.src_addr(), dst: ip.dst_addr() };
    let bytes = ip.payload();
    let packet = udp::Packet::new_checked(bytes).unwrap();
    assert_eq!(packet.src_port(), 41234);
    assert_eq!(packet.dst_port(), 53);
    assert_eq!(packet.len(), 44);
    assert!(!packet.is_empty());
    assert_eq!(packet.checksum(), 0x3d78);
    assert_eq!(packet.payload().len(), 36);
    assert_eq!(&packet.payload()[..2], &[0x1a, 0x2b]); // DNS id
    assert!(packet.verify_checksum(&ips));

    let repr = udp::Repr::parse(&packet).unwrap();
    assert_eq!(repr, udp::Repr { src_port: 41234, dst_port: 53, payload_len: 36 });
    let mut buf = vec![0u8; repr.buffer_len()];
    buf.extend_from_slice(packet.payload());
    let mut out = udp::Packet::new_unchecked(&mut buf[..]);
    repr.emit(&mut out);
    out.fill_checksum(&ips);
    assert_eq!(buf, bytes);
}

#[test]
fn udp_v6_golden() {
    let ip = ipv6::Packet::new_checked(&UDP_V6_VLAN[18..]).unwrap();
    let ips = IpPair::V6 { src: ip.src_addr(), dst: ip.dst_addr() };
    let packet = udp::Packet::new_checked(ip.payload()).unwrap();
    assert_eq!((packet.src_port(), packet.dst_port(), packet.len()), (50123, 53, 32));
    assert_eq!(packet.checksum(), 0xe791);
    assert!(packet.verify_checksum(&ips));
    let mut buf = ip.payload().to_vec();
    let mut out = udp::Packet::new_unchecked(&mut buf[..]);
    out.fill_checksum(&ips);
    assert_eq!(buf, ip.payload());
}

#[test]
fn udp_zero_checksum_means_none_over_ipv4_only() {
    let ip = ipv4::Packet::new_checked(l3(&UDP_V4_OPTIONS_NO_CHECKSUM)).unwrap();
    let packet = udp::Packet::new_checked(ip.payload()).unwrap();
    assert_eq!((packet.src_port(), packet.dst_port(), packet.len()), (4789, 4789, 16));
    assert_eq!(packet.checksum(), 0);
    assert!(packet.verify_checksum(&IpPair::V4 { src: ip.src_addr(), dst: ip.dst_addr() }));
    assert!(!packet.verify_checksum(&IpPair::V6 { src: POD_V6, dst: POD_V6 }));
}

#[test]
fn udp_length_is_checked() {
    let mut buf = ipv4::Packet::new_checked(l3(&UDP_V4_DNS)).unwrap().payload().to_vec();
    buf[4..6].copy_from_slice(&7u16.to_be_bytes());
    assert!(matches!(udp::Packet::new_checked(&buf[..]), Err(flowgate_wire::Error::Malformed { .. })));
    buf[4..6].copy_from_slice(&45u16.to_be_bytes());
    assert_eq!(udp::Packet::new_checked(&buf[..]), Err(flowgate_wire::Error::Truncated));
    // Trailing bytes past Length are not payload.
    buf[4..6].copy_from_slice(&10u16.to_be_bytes());
    assert_eq!(udp::Packet::new_checked(&buf[..]).unwrap().payload().len(), 2);
}

// -------------------------------------------------------------------- sctp

#[test]
fn sctp_golden() {
    let ip = ipv4::Packet::new_checked(l3(&SCTP_V4_INIT)).unwrap();
    assert_eq!(ip.protocol(), Protocol::Sctp);
    let bytes = ip.payload();
    let packet = sctp::Packet::new_checked(bytes).unwrap();
    assert_eq!(packet.src_port(), 36412);
    assert_eq!(packet.dst_port(), 38412);
    assert_eq!(packet.verification_tag(), 0);
    assert_eq!(packet.checksum(), 0x2748_a440);
    assert_eq!(packet.compute_checksum(), 0x2748_a440);
    assert!(packet.verify_checksum());
    assert_eq!(packet.payload().len(), 20);
    assert_eq!(packet.payload()[0], 1); // INIT chunk

    let repr = sctp::Repr::parse(&packet).unwrap();
    assert_eq!(repr, sctp::Repr { src_port: 36412, dst_port: 38412, verification_tag: 0 });
    let mut buf = vec![0u8; repr.buffer_len()];
    buf.extend_from_slice(packet.payload());
    let mut out = sctp::Packet::new_unchecked(&mut buf[..]);
    repr.emit(&mut out);
    out.fill_checksum();
    assert_eq!(buf, bytes);

    let mut out = sctp::Packet::new_unchecked(&mut buf[..]);
    out.set_dst_port(38413);
    assert!(!out.verify_checksum());
}

// ------------------------------------------------------------------ icmpv4

#[test]
fn icmpv4_echo_golden() {
    let bytes = ipv4::Packet::new_checked(l3(&ICMPV4_ECHO)).unwrap().payload();
    let packet = icmpv4::Packet::new_checked(bytes).unwrap();
    assert_eq!(packet.msg_type(), icmpv4::Message::EchoRequest);
    assert_eq!(packet.msg_code(), 0);
    assert_eq!(packet.checksum(), 0x3420);
    assert_eq!(packet.echo_ident(), 0x0b1e);
    assert_eq!(packet.echo_seq_no(), 1);
    assert_eq!(packet.rest_of_header(), 0x0b1e_0001);
    assert_eq!(packet.payload(), &(0x10..0x20).collect::<Vec<u8>>()[..]);
    assert!(packet.invoking_packet().is_none());
    assert!(matches!(packet.embedded_ipv4(), Err(flowgate_wire::Error::Unsupported { .. })));
    assert!(packet.verify_checksum());

    let repr = icmpv4::Repr::parse(&packet).unwrap();
    assert_eq!(repr, icmpv4::Repr::EchoRequest { ident: 0x0b1e, seq_no: 1 });
    let mut buf = vec![0u8; repr.buffer_len()];
    buf.extend_from_slice(packet.payload());
    let mut out = icmpv4::Packet::new_unchecked(&mut buf[..]);
    repr.emit(&mut out);
    out.fill_checksum();
    assert_eq!(buf, bytes);
}

#[test]
fn icmpv4_port_unreachable_golden() {
    let bytes = ipv4::Packet::new_checked(l3(&ICMPV4_PORT_UNREACHABLE)).unwrap().payload();
    let packet = icmpv4::Packet::new_checked(bytes).unwrap();
    assert_eq!(packet.msg_type(), icmpv4::Message::DstUnreachable);
    assert_eq!(packet.msg_code(), 3);
    assert_eq!(packet.checksum(), 0x1e11);
    assert!(packet.verify_checksum());
    assert_eq!(packet.invoking_packet(), Some(&UDP_V4_DNS[14..14 + 28]));

    let inner = packet.embedded_ipv4().unwrap();
    assert_eq!(inner.src_addr(), POD_V4);
    assert_eq!(inner.dst_addr(), DNS_V4);
    assert_eq!(inner.protocol(), Protocol::Udp);
    assert_eq!(inner.total_len(), 64); // the original length, more than was quoted
    assert!(inner.verify_checksum());
    let quoted = inner.payload();
    assert_eq!(quoted.len(), 8);
    assert_eq!(quoted, &UDP_V4_DNS[34..42]);
    // The quote is too short for the full-length check.
    assert_eq!(ipv4::Packet::new_checked(packet.invoking_packet().unwrap()), Err(flowgate_wire::Error::Truncated));

    let repr = icmpv4::Repr::parse(&packet).unwrap();
    assert_eq!(repr, icmpv4::Repr::DstUnreachable { code: 3, next_hop_mtu: 0 });
    let mut buf = vec![0u8; repr.buffer_len()];
    buf.extend_from_slice(packet.payload());
    let mut out = icmpv4::Packet::new_unchecked(&mut buf[..]);
    repr.emit(&mut out);
    out.fill_checksum();
    assert_eq!(buf, bytes);
}

#[test]
fn icmpv4_frag_needed_golden() {
    let bytes = ipv4::Packet::new_checked(l3(&ICMPV4_FRAG_NEEDED)).unwrap().payload();
    let packet = icmpv4::Packet::new_checked(bytes).unwrap();
    assert_eq!(packet.msg_type(), icmpv4::Message::DstUnreachable);
    assert_eq!(packet.msg_code(), 4);
    assert_eq!(packet.next_hop_mtu(), 1400);
    assert_eq!(packet.checksum(), 0xe1d6);
    assert!(packet.verify_checksum());
    let inner = packet.embedded_ipv4().unwrap();
    assert_eq!(inner.protocol(), Protocol::Tcp);
    assert_eq!(&inner.payload()[..4], &[0xa9, 0xf8, 0x00, 0x50]);

    let repr = icmpv4::Repr::parse(&packet).unwrap();
    assert_eq!(repr, icmpv4::Repr::DstUnreachable { code: 4, next_hop_mtu: 1400 });
    let mut buf = vec![0u8; repr.buffer_len()];
    buf.extend_from_slice(packet.payload());
    let mut out = icmpv4::Packet::new_unchecked(&mut buf[..]);
    repr.emit(&mut out);
    out.fill_checksum();
    assert_eq!(buf, bytes);
}

#[test]
fn icmpv4_other_types_round_trip() {
    let mut buf = [0u8; 8];
    let repr = icmpv4::Repr::Other { msg_type: icmpv4::Message::ParamProblem, code: 0, rest_of_header: 0x1400_0000 };
    repr.emit(&mut icmpv4::Packet::new_unchecked(&mut buf[..]));
    assert_eq!(icmpv4::Repr::parse(&icmpv4::Packet::new_checked(&buf[..]).unwrap()), Ok(repr));
    let repr = icmpv4::Repr::TimeExceeded { code: 1 };
    repr.emit(&mut icmpv4::Packet::new_unchecked(&mut buf[..]));
    assert_eq!(buf[..2], [11, 1]);
    assert_eq!(icmpv4::Repr::parse(&icmpv4::Packet::new_checked(&buf[..]).unwrap()), Ok(repr));
}

// ------------------------------------------------------------------ icmpv6

#[test]
fn icmpv6_echo_golden() {
    let ip = ipv6::Packet::new_checked(l3(&ICMPV6_ECHO)).unwrap();
    assert_eq!(ip.next_header(), Protocol::Icmpv6);
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    let bytes = ip.payload();
    let packet = icmpv6::Packet::new_checked(bytes).unwrap();
    assert_eq!(packet.msg_type(), icmpv6::Message::EchoRequest);
    assert_eq!(packet.msg_code(), 0);
    assert_eq!(packet.checksum(), 0x982a);
    assert_eq!(packet.echo_ident(), 0x2f01);
    assert_eq!(packet.echo_seq_no(), 7);
    assert_eq!(packet.payload(), b"0123456789:;<=>?");
    assert!(packet.invoking_packet().is_none());
    assert!(packet.verify_checksum(src, dst));
    assert!(!packet.verify_checksum(src, Ipv6Addr::LOCALHOST));

    let repr = icmpv6::Repr::parse(&packet).unwrap();
    assert_eq!(repr, icmpv6::Repr::EchoRequest { ident: 0x2f01, seq_no: 7 });
    let mut buf = vec![0u8; repr.buffer_len()];
    buf.extend_from_slice(packet.payload());
    let mut out = icmpv6::Packet::new_unchecked(&mut buf[..]);
    repr.emit(&mut out);
    out.fill_checksum(src, dst);
    assert_eq!(buf, bytes);
}

#[test]
fn icmpv6_packet_too_big_golden() {
    let ip = ipv6::Packet::new_checked(l3(&ICMPV6_PACKET_TOO_BIG)).unwrap();
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    let bytes = ip.payload();
    let packet = icmpv6::Packet::new_checked(bytes).unwrap();
    assert_eq!(packet.msg_type(), icmpv6::Message::PacketTooBig);
    assert!(packet.msg_type().is_error());
    assert_eq!(packet.msg_code(), 0);
    assert_eq!(packet.checksum(), 0x9383);
    assert_eq!(packet.mtu(), 1280);
    assert!(packet.verify_checksum(src, dst));

    let inner = packet.embedded_ipv6().unwrap();
    assert_eq!(inner.src_addr(), POD_V6);
    assert_eq!(inner.dst_addr(), "2001:db8::80".parse::<Ipv6Addr>().unwrap());
    assert_eq!(inner.payload_len(), 1420);
    assert_eq!(inner.hop_limit(), 63);
    assert_eq!(inner.payload(), &[0xc7, 0x38, 0x01, 0xbb, 0x01, 0x02, 0x03, 0x04]);
    assert_eq!(inner.upper_layer().unwrap().protocol, Protocol::Tcp);

    let repr = icmpv6::Repr::parse(&packet).unwrap();
    assert_eq!(repr, icmpv6::Repr::PacketTooBig { mtu: 1280 });
    let mut buf = vec![0u8; repr.buffer_len()];
    buf.extend_from_slice(packet.payload());
    let mut out = icmpv6::Packet::new_unchecked(&mut buf[..]);
    repr.emit(&mut out);
    out.fill_checksum(src, dst);
    assert_eq!(buf, bytes);
}

#[test]
fn icmpv6_other_types_round_trip() {
    for repr in [
        icmpv6::Repr::DstUnreachable { code: 4 },
        icmpv6::Repr::TimeExceeded { code: 0 },
        icmpv6::Repr::ParamProblem { code: 1, pointer: 40 },
        icmpv6::Repr::EchoReply { ident: 9, seq_no: 10 },
        icmpv6::Repr::Other { msg_type: icmpv6::Message::NeighborSolicit, code: 0, rest_of_header: 0 },
    ] {
        let mut buf = [0u8; 8];
        repr.emit(&mut icmpv6::Packet::new_unchecked(&mut buf[..]));
        assert_eq!(icmpv6::Repr::parse(&icmpv6::Packet::new_checked(&buf[..]).unwrap()), Ok(repr));
    }
}

#[test]
fn every_golden_checksum_verifies() {
    for (name, frame) in ALL {
        let key = flowgate_wire::parse_flow_key(frame);
        let ethertype = ethernet::Packet::new_checked(frame).unwrap().ethertype();
        let l3_offset = if ethertype == EtherType::Vlan { 18 } else { 14 };
        let l3 = &frame[l3_offset..];
        match l3[0] >> 4 {
            4 => {
                let ip = ipv4::Packet::new_checked(l3).unwrap();
                assert!(ip.verify_checksum(), "{name}: IPv4 header checksum");
                let ips = IpPair::V4 { src: ip.src_addr(), dst: ip.dst_addr() };
                let ok = match ip.protocol() {
                    Protocol::Tcp => tcp::Packet::new_checked(ip.payload()).unwrap().verify_checksum(&ips),
                    Protocol::Udp => udp::Packet::new_checked(ip.payload()).unwrap().verify_checksum(&ips),
                    Protocol::Sctp => sctp::Packet::new_checked(ip.payload()).unwrap().verify_checksum(),
                    Protocol::Icmp => icmpv4::Packet::new_checked(ip.payload()).unwrap().verify_checksum(),
                    other => panic!("{name}: unexpected {other}"),
                };
                assert!(ok, "{name}: upper-layer checksum");
                assert!(key.is_ok(), "{name}");
            }
            _ => {
                let ip = ipv6::Packet::new_checked(l3).unwrap();
                let upper = ip.upper_layer().unwrap();
                if upper.is_non_initial_fragment() {
                    continue;
                }
                let ips = IpPair::V6 { src: ip.src_addr(), dst: ip.dst_addr() };
                let data = &l3[upper.offset..];
                let ok = match upper.protocol {
                    Protocol::Tcp => tcp::Packet::new_checked(data).unwrap().verify_checksum(&ips),
                    Protocol::Udp => udp::Packet::new_checked(data).unwrap().verify_checksum(&ips),
                    Protocol::Icmpv6 => {
                        icmpv6::Packet::new_checked(data).unwrap().verify_checksum(ip.src_addr(), ip.dst_addr())
                    }
                    other => panic!("{name}: unexpected {other}"),
                };
                assert!(ok, "{name}: upper-layer checksum");
                assert!(key.is_ok(), "{name}");
            }
        }
    }
}
