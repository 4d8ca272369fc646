//! `parse_flow_key`, `parse_ip_flow_key`, `parse_embedded_flow_key` and
//! `build_frame`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod vectors;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use flowgate_wire::ethernet::{self, EtherType};
use flowgate_wire::{
    build_frame, icmpv4, icmpv6, ipv4, ipv6, parse_embedded_flow_key, parse_flow_key, parse_ip_flow_key, sctp, tcp,
    udp, Error, FlowKey, FrameSpec, IpPair, L4Spec, Protocol,
};
use vectors::*;

fn v4(a: [u8; 4]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(a))
}

fn v6(s: &str) -> IpAddr {
    IpAddr::V6(s.parse().unwrap())
}

fn key(src: IpAddr, dst: IpAddr, protocol: Protocol, ports: (u16, u16), offsets: (usize, usize)) -> FlowKey {
    FlowKey { src, dst, protocol, src_port: ports.0, dst_port: ports.1, l3_offset: offsets.0, l4_offset: offsets.1 }
}

#[test]
fn golden_frames_give_their_flow_keys() {
    let pod = v4([10, 244, 1, 5]);
    let pod6 = v6("fd00:10:244:1::5");
    let cases = [
        (&TCP_V4[..], Ok(key(pod, v4([10, 96, 0, 10]), Protocol::Tcp, (43512, 80), (14, 34)))),
        (&TCP_V4_SYN_OPTIONS[..], Ok(key(pod, v4([10, 96, 0, 10]), Protocol::Tcp, (43512, 80), (14, 34)))),
        (&UDP_V4_DNS[..], Ok(key(pod, v4([10, 96, 0, 10]), Protocol::Udp, (41234, 53), (14, 34)))),
        (&UDP_V4_OPTIONS_NO_CHECKSUM[..], Ok(key(v4([192, 0, 2, 1]), pod, Protocol::Udp, (4789, 4789), (14, 38)))),
        (&UDP_V6_VLAN[..], Ok(key(pod6, v6("fd00:10:96::a"), Protocol::Udp, (50123, 53), (18, 58)))),
        (&SCTP_V4_INIT[..], Ok(key(pod, v4([10, 96, 0, 20]), Protocol::Sctp, (36412, 38412), (14, 34)))),
        (&ICMPV4_ECHO[..], Ok(key(pod, v4([10, 244, 2, 7]), Protocol::Icmp, (0x0b1e, 0x0b1e), (14, 34)))),
        (&ICMPV4_PORT_UNREACHABLE[..], Ok(key(v4([10, 96, 0, 10]), pod, Protocol::Icmp, (0, 0), (14, 34)))),
        (&ICMPV6_ECHO[..], Ok(key(pod6, v6("fd00:10:244:2::7"), Protocol::Icmpv6, (0x2f01, 0x2f01), (14, 54)))),
        (&ICMPV6_PACKET_TOO_BIG[..], Ok(key(v6("fd00:10:244::1"), pod6, Protocol::Icmpv6, (0, 0), (14, 54)))),
        (&IPV6_EXT_HEADERS_TCP[..], Ok(key(pod6, v6("fd00:10:96::1bb"), Protocol::Tcp, (45678, 443), (14, 102)))),
        (&IPV6_NON_INITIAL_FRAGMENT[..], Err(Error::Unsupported { what: "non-initial IPv6 fragment" })),
    ];
    for (frame, expected) in cases {
        assert_eq!(parse_flow_key(frame), expected);
        // The same packet without Ethernet framing.
        let l3_offset = expected.map_or(14, |k| k.l3_offset);
        let bare = parse_ip_flow_key(&frame[l3_offset..]);
        assert_eq!(bare, expected.map(|k| FlowKey { l3_offset: 0, l4_offset: k.l4_offset - l3_offset, ..k }));
    }
}

#[test]
fn ethernet_padding_is_ignored() {
    let mut frame = ICMPV4_ECHO.to_vec();
    frame.resize(60, 0);
    assert_eq!(parse_flow_key(&frame), parse_flow_key(&ICMPV4_ECHO));
}

#[test]
fn non_ip_and_bad_framing_are_errors() {
    let mut frame = TCP_V4.to_vec();
    frame[12..14].copy_from_slice(&0x0806u16.to_be_bytes()); // ARP
    assert_eq!(parse_flow_key(&frame), Err(Error::Unsupported { what: "non-IP ethertype" }));
    frame[12..14].copy_from_slice(&0x86ddu16.to_be_bytes()); // IPv6 ethertype over IPv4 bytes
    assert!(matches!(parse_flow_key(&frame), Err(Error::Malformed { .. })));
    assert_eq!(parse_ip_flow_key(&[]), Err(Error::Truncated));
    assert!(matches!(parse_ip_flow_key(&[0x50; 40]), Err(Error::Malformed { .. })));
}

#[test]
fn vlan_tags_are_skipped_up_to_two() {
    let ips = IpPair::V4 { src: Ipv4Addr::new(10, 0, 0, 1), dst: Ipv4Addr::new(10, 0, 0, 2) };
    let frame = build_frame(&FrameSpec::new(ips, L4Spec::udp(1000, 2000)).with_vlan(42));
    let single = parse_flow_key(&frame).unwrap();
    assert_eq!((single.l3_offset, single.l4_offset, single.dst_port), (18, 38, 2000));

    // Wrap it in an 802.1ad service tag: QinQ.
    let mut qinq = frame[..12].to_vec();
    qinq.extend_from_slice(&[0x88, 0xa8, 0x00, 0x07]);
    qinq.extend_from_slice(&frame[12..]);
    let double = parse_flow_key(&qinq).unwrap();
    assert_eq!((double.l3_offset, double.l4_offset), (22, 42));
    assert_eq!(double.five_tuple(), single.five_tuple());
    assert_ne!(double, single);

    // A third tag is refused.
    let mut triple = qinq[..12].to_vec();
    triple.extend_from_slice(&[0x88, 0xa8, 0x00, 0x08]);
    triple.extend_from_slice(&qinq[12..]);
    assert_eq!(parse_flow_key(&triple), Err(Error::Unsupported { what: "more than 2 VLAN tags" }));
}

#[test]
fn ipv4_fragments() {
    let ips = IpPair::V4 { src: Ipv4Addr::new(10, 0, 0, 1), dst: Ipv4Addr::new(10, 0, 0, 2) };
    let mut frame = build_frame(&FrameSpec::new(ips, L4Spec::udp(1000, 2000)).with_payload(vec![7; 32]));
    {
        let mut ip = ipv4::Packet::new_checked(&mut frame[14..]).unwrap();
        ip.set_dont_frag(false);
        ip.set_more_frags(true);
        ip.fill_checksum();
    }
    // The first fragment still carries the UDP header.
    assert_eq!(parse_flow_key(&frame).unwrap().dst_port, 2000);
    {
        let mut ip = ipv4::Packet::new_checked(&mut frame[14..]).unwrap();
        ip.set_frag_offset(1480);
        ip.fill_checksum();
    }
    assert_eq!(parse_flow_key(&frame), Err(Error::Unsupported { what: "non-initial IPv4 fragment" }));
}

#[test]
fn embedded_flow_keys_name_the_original_flow() {
    let icmp = ipv4::Packet::new_checked(&ICMPV4_PORT_UNREACHABLE[14..]).unwrap();
    let invoking = icmpv4::Packet::new_checked(icmp.payload()).unwrap().invoking_packet().unwrap();
    let inner = parse_embedded_flow_key(invoking).unwrap();
    assert_eq!(inner.five_tuple(), parse_flow_key(&UDP_V4_DNS).unwrap().five_tuple());
    assert_eq!((inner.l3_offset, inner.l4_offset), (0, 20));

    let icmp = ipv4::Packet::new_checked(&ICMPV4_FRAG_NEEDED[14..]).unwrap();
    let invoking = icmpv4::Packet::new_checked(icmp.payload()).unwrap().invoking_packet().unwrap();
    assert_eq!(
        parse_embedded_flow_key(invoking).unwrap().five_tuple(),
        parse_flow_key(&TCP_V4_SYN_OPTIONS).unwrap().five_tuple()
    );

    let icmp = ipv6::Packet::new_checked(&ICMPV6_PACKET_TOO_BIG[14..]).unwrap();
    let invoking = icmpv6::Packet::new_checked(icmp.payload()).unwrap().invoking_packet().unwrap();
    let inner = parse_embedded_flow_key(invoking).unwrap();
    assert_eq!(inner.five_tuple(), (v6("fd00:10:244:1::5"), v6("2001:db8::80"), Protocol::Tcp, 51000, 443));

    // Fewer than 8 quoted bytes of the upper layer.
    assert_eq!(parse_embedded_flow_key(&invoking[..47]), Err(Error::Truncated));
    // An echo quoted in an error keeps its identifier as ports.
    let echo = &ICMPV4_ECHO[14..14 + 28];
    assert_eq!(parse_embedded_flow_key(echo).unwrap().src_port, 0x0b1e);
}

/// xorshift64*, deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn u16(&mut self) -> u16 {
        self.next() as u16
    }
}

fn random_spec(rng: &mut Rng) -> FrameSpec {
    let ips = if rng.next().is_multiple_of(2) {
        IpPair::V4 { src: Ipv4Addr::from(rng.next() as u32), dst: Ipv4Addr::from(rng.next() as u32) }
    } else {
        IpPair::V6 {
            src: Ipv6Addr::from(u128::from(rng.next()) << 64 | u128::from(rng.next())),
            dst: Ipv6Addr::from(u128::from(rng.next()) << 64 | u128::from(rng.next())),
        }
    };
    let (sp, dp) = (rng.u16(), rng.u16());
    let l4 = match rng.next() % 5 {
        0 => L4Spec::Tcp {
            src_port: sp,
            dst_port: dp,
            flags: tcp::Flags::from_bits(rng.u16()),
            seq_number: rng.next() as u32,
            ack_number: rng.next() as u32,
        },
        1 => L4Spec::udp(sp, dp),
        2 => L4Spec::Sctp { src_port: sp, dst_port: dp, verification_tag: rng.next() as u32 },
        3 => L4Spec::IcmpEcho { ident: sp, seq_no: dp, reply: rng.next().is_multiple_of(2) },
        _ => L4Spec::Raw { protocol: Protocol::Other(253) },
    };
    let payload: Vec<u8> = (0..rng.next() % 200).map(|_| rng.next() as u8).collect();
    let mut spec = FrameSpec::new(ips, l4).with_payload(payload);
    if rng.next().is_multiple_of(4) {
        spec = spec.with_vlan(rng.u16() & 0x0fff);
    }
    spec.ttl = rng.next() as u8;
    spec
}

#[test]
fn built_frames_parse_back_with_correct_checksums() {
    let mut rng = Rng(0xb01d_face_0000_0001);
    for _ in 0..2_000 {
        let spec = random_spec(&mut rng);
        let frame = build_frame(&spec);
        let key = parse_flow_key(&frame).unwrap();
        assert_eq!((key.src, key.dst, key.protocol), (spec.ips.src(), spec.ips.dst(), spec.protocol()));
        let expected_ports = match spec.l4 {
            L4Spec::Tcp { src_port, dst_port, .. }
            | L4Spec::Udp { src_port, dst_port }
            | L4Spec::Sctp { src_port, dst_port, .. } => (src_port, dst_port),
            L4Spec::IcmpEcho { ident, .. } => (ident, ident),
            L4Spec::Raw { .. } => (0, 0),
        };
        assert_eq!((key.src_port, key.dst_port), expected_ports);
        assert_eq!(key.l3_offset, if spec.vlan_id.is_some() { 18 } else { 14 });

        let eth = ethernet::Packet::new_checked(&frame[..]).unwrap();
        assert_eq!((eth.src_addr(), eth.dst_addr()), (spec.src_mac, spec.dst_mac));
        let l3 = &frame[key.l3_offset..];
        let l4 = &frame[key.l4_offset..];
        match spec.ips {
            IpPair::V4 { .. } => {
                let ip = ipv4::Packet::new_checked(l3).unwrap();
                assert!(ip.verify_checksum());
                assert_eq!(ip.ttl(), spec.ttl);
                assert_eq!(eth.ethertype(), if spec.vlan_id.is_some() { EtherType::Vlan } else { EtherType::Ipv4 });
            }
            IpPair::V6 { .. } => {
                let ip = ipv6::Packet::new_checked(l3).unwrap();
                assert_eq!(ip.hop_limit(), spec.ttl);
            }
        }
        let (checksum_ok, payload) = match spec.l4 {
            L4Spec::Tcp { flags, .. } => {
                let p = tcp::Packet::new_checked(l4).unwrap();
                assert_eq!(p.flags(), flags);
                (p.verify_checksum(&spec.ips), p.payload())
            }
            L4Spec::Udp { .. } => {
                let p = udp::Packet::new_checked(l4).unwrap();
                (p.verify_checksum(&spec.ips) && p.checksum() != 0, p.payload())
            }
            L4Spec::Sctp { .. } => {
                let p = sctp::Packet::new_checked(l4).unwrap();
                (p.verify_checksum(), p.payload())
            }
            L4Spec::IcmpEcho { seq_no, .. } => match spec.ips {
                IpPair::V4 { .. } => {
                    let p = icmpv4::Packet::new_checked(l4).unwrap();
                    assert_eq!(p.echo_seq_no(), seq_no);
                    (p.verify_checksum(), p.payload())
                }
                IpPair::V6 { src, dst } => {
                    let p = icmpv6::Packet::new_checked(l4).unwrap();
                    assert_eq!(p.echo_seq_no(), seq_no);
                    (p.verify_checksum(src, dst), p.payload())
                }
            },
            L4Spec::Raw { .. } => (true, l4),
        };
        assert!(checksum_ok, "{spec:?}");
        assert_eq!(payload, &spec.payload[..]);
    }
}

#[test]
fn build_frame_matches_golden_bytes() {
    // The builder reproduces a golden frame byte for byte when asked for the
    // same fields (identification 0 and DF, like the SCTP golden frame).
    let ip = ipv4::Packet::new_checked(&SCTP_V4_INIT[14..]).unwrap();
    let mut spec = FrameSpec::new(
        IpPair::V4 { src: ip.src_addr(), dst: ip.dst_addr() },
        L4Spec::Sctp { src_port: 36412, dst_port: 38412, verification_tag: 0 },
    )
    .with_payload(&SCTP_V4_INIT[46..]);
    spec.src_mac = ethernet::Address([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x05]);
    spec.dst_mac = ethernet::Address([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
    assert_eq!(build_frame(&spec), SCTP_V4_INIT);
}
