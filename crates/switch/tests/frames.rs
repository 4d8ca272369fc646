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
