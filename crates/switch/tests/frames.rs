//! Frames through the switch: the rewritten bytes carry the decided addresses and ports, with
//! checksums that verify, in both directions, for TCP, UDP and SCTP over IPv4.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::{policy, sa, VIP};
use flowgate_switch::{frame, PortId, Selection, Switch, Verdict};
use flowgate_wire::{build_frame, sctp, tcp, udp, FrameSpec, IpPair, L4Spec, Protocol};

/// Builds the L4 header of a test frame from source and destination ports.
type L4Builder = fn(u16, u16) -> L4Spec;

fn frame_for(src: SocketAddr, dst: SocketAddr, l4: L4Builder) -> Vec<u8> {
    let ips = IpPair::new(src.ip(), dst.ip()).unwrap();
    build_frame(&FrameSpec::new(ips, l4(src.port(), dst.port())).with_payload(b"hello flowgate".to_vec()))
}

/// Every checksum in the frame verifies.
fn checksums_ok(f: &[u8]) -> bool {
    let (_, w) = frame::key_of(f).unwrap();
    let ips = IpPair::new(w.src, w.dst).unwrap();
    let ip = flowgate_wire::ipv4::Packet::new_checked(&f[w.l3_offset..]).unwrap();
    let l4 = &f[w.l4_offset..w.l3_offset + usize::from(ip.total_len())];
    ip.verify_checksum()
        && match w.protocol {
            Protocol::Tcp => tcp::Packet::new_checked(l4).unwrap().verify_checksum(&ips),
            Protocol::Udp => udp::Packet::new_checked(l4).unwrap().verify_checksum(&ips),
            Protocol::Sctp => sctp::Packet::new_checked(l4).unwrap().verify_checksum(),
            _ => true,
        }
}

#[test]
fn dnat_and_masquerade_rewrite_bytes_with_valid_checksums() {
    let l4s: [(L4Builder, flowgate_switch::Proto); 3] = [
        (|s, d| L4Spec::tcp(s, d, tcp::Flags::SYN), flowgate_switch::Proto::TCP),
        (L4Spec::udp, flowgate_switch::Proto::UDP),
        (L4Spec::sctp, flowgate_switch::Proto::SCTP),
    ];
    for (l4, proto) in l4s {
        let mut p = policy(&["10.0.2.7:8080"], Selection::Random, true);
        // The fixture's VIP rule is TCP; make the VIP answer this protocol too.
        common::add_vip_for(&mut p, proto);
        let mut sw = Switch::new(Arc::new(p));
        let client = sa("203.0.113.7:5555");
        let mut f = frame_for(client, sa(VIP), l4);
        assert!(checksums_ok(&f));
        let out = sw.process_frame(PortId::UPLINK, &mut f, 0).unwrap();
        assert_eq!(out.verdict, Verdict::Allow, "{proto}");
        let (k, _) = frame::key_of(&f).unwrap();
        assert_eq!(k.src_socket(), sa("192.168.0.2:5555"), "{proto}: masqueraded");
        assert_eq!(k.dst_socket(), sa("10.0.2.7:8080"), "{proto}: DNAT");
        assert!(checksums_ok(&f), "{proto}: checksums after rewrite");

        // The backend answers; the reply is restored to VIP -> client.
        let mut reply = frame_for(k.dst_socket(), k.src_socket(), l4);
        sw.process_frame(PortId::UPLINK, &mut reply, 0).unwrap();
        let (r, _) = frame::key_of(&reply).unwrap();
        assert_eq!((r.src_socket(), r.dst_socket()), (sa(VIP), client), "{proto}: reply");
        assert!(checksums_ok(&reply), "{proto}: reply checksums");
    }
}

#[test]
fn untranslated_frames_are_left_alone_and_garbage_is_an_error() {
    let mut sw = Switch::new(Arc::new(policy(&["10.0.2.7:8080"], Selection::Random, true)));
    let mut f = frame_for(sa("203.0.113.7:5555"), sa("10.9.9.9:80"), |s, d| L4Spec::tcp(s, d, tcp::Flags::SYN));
    let before = f.clone();
    sw.process_frame(PortId::UPLINK, &mut f, 0).unwrap();
    assert_eq!(f, before);
    let mut junk = vec![0u8; 20];
    assert!(sw.process_frame(PortId::UPLINK, &mut junk, 0).is_err());
}

/// An ICMPv4 port-unreachable from `from` about `about` (a frame), quoting its IP header and the
/// first 8 bytes after it.
pub fn icmp_unreachable(from: std::net::Ipv4Addr, about: &[u8]) -> Vec<u8> {
    let (_, w) = frame::key_of(about).unwrap();
    let quote = &about[w.l3_offset..w.l4_offset + 8];
    let total = 20 + 8 + quote.len();
    let mut f = vec![0u8; 14 + total];
    f[..6].copy_from_slice(&about[6..12]);
    f[6..12].copy_from_slice(&about[..6]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let to = match w.src {
        std::net::IpAddr::V4(a) => a,
        _ => unreachable!(),
    };
    {
        let ip = &mut f[14..34];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        ip[8] = 64;
        ip[9] = 1;
        ip[12..16].copy_from_slice(&from.octets());
        ip[16..20].copy_from_slice(&to.octets());
    }
    flowgate_wire::ipv4::Packet::new_checked(&mut f[14..]).unwrap().fill_checksum();
    f[34] = 3;
    f[35] = 3;
    f[42..].copy_from_slice(quote);
    flowgate_wire::icmpv4::Packet::new_checked(&mut f[34..]).unwrap().fill_checksum();
    f
}

#[test]
fn icmp_errors_of_translated_flows_are_translated_back() {
    let mut p = policy(&["10.0.2.7:8080"], Selection::Random, true);
    common::add_vip_for(&mut p, flowgate_switch::Proto::UDP);
    let mut sw = Switch::new(Arc::new(p));
    let client = sa("203.0.113.7:5555");
    let mut f = frame_for(client, sa(VIP), L4Spec::udp);
    sw.process_frame(PortId::UPLINK, &mut f, 0).unwrap();
    // The backend answers the translated datagram with "port unreachable".
    let mut err = icmp_unreachable("10.0.2.7".parse().unwrap(), &f);
    let out = sw.process_frame(PortId::UPLINK, &mut err, 0).unwrap();
    assert_eq!(out.verdict, Verdict::Allow);
    let ip = flowgate_wire::ipv4::Packet::new_checked(&err[14..]).unwrap();
    assert_eq!((ip.src_addr().to_string(), ip.dst_addr().to_string()), ("172.30.0.10".into(), "203.0.113.7".into()));
    assert!(ip.verify_checksum());
    let icmp = flowgate_wire::icmpv4::Packet::new_checked(&err[34..]).unwrap();
    assert!(icmp.verify_checksum());
    let quoted = flowgate_wire::parse_embedded_flow_key(&err[42..]).unwrap();
    assert_eq!((quoted.src, quoted.src_port), (client.ip(), client.port()), "the quote shows the client's own packet");
    assert_eq!((quoted.dst, quoted.dst_port), (sa(VIP).ip(), sa(VIP).port()));
    assert!(flowgate_wire::ipv4::Packet::new_checked_header(&err[42..]).unwrap().verify_checksum());
    // An error about a flow the switch does not know passes untouched.
    let mut stray =
        icmp_unreachable("10.9.9.9".parse().unwrap(), &frame_for(sa("10.1.1.1:1"), sa("10.2.2.2:2"), L4Spec::udp));
    let before = stray.clone();
    sw.process_frame(PortId::UPLINK, &mut stray, 0).unwrap();
    assert_eq!(stray, before);
}
