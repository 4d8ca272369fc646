//! RFC 1624 incremental checksum updates, applied the way a NAT rewrites a
//! packet, must give exactly the bytes a full recompute gives.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use flowgate_wire::{
    build_frame, checksum, icmpv4, icmpv6, ipv4, ipv6, parse_flow_key, sctp, tcp, udp, FrameSpec, IpPair, L4Spec,
    Protocol,
};

/// What a NAT changes: any of the addresses and ports (for ICMP echo, the
/// identifier stands in for both ports and only `src_port` is used).
#[derive(Debug, Clone, Copy)]
struct Rewrite {
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    src_port: Option<u16>,
    dst_port: Option<u16>,
}

/// Applies `rw` to `frame` in place, fixing checksums incrementally only.
fn rewrite_incrementally(frame: &mut [u8], rw: Rewrite) {
    let key = parse_flow_key(frame).unwrap();
    let v6 = key.src.is_ipv6();

    // Address changes: the IPv4 header checksum, and every upper-layer
    // checksum that covers the pseudo-header.
    let mut l4_csum_delta: Vec<(IpAddr, IpAddr)> = Vec::new();
    for (old, new, is_src) in [(key.src, rw.src, true), (key.dst, rw.dst, false)] {
        let Some(new) = new else { continue };
        match (old, new) {
            (IpAddr::V4(_), IpAddr::V4(new4)) => {
                let mut ip = ipv4::Packet::new_checked(&mut frame[key.l3_offset..]).unwrap();
                if is_src {
                    ip.set_src_addr(new4)
                } else {
                    ip.set_dst_addr(new4)
                }
                let c = checksum::update_ip_addr(ip.checksum(), old, new);
                ip.set_checksum(c);
            }
            (IpAddr::V6(_), IpAddr::V6(new6)) => {
                let mut ip = ipv6::Packet::new_checked(&mut frame[key.l3_offset..]).unwrap();
                if is_src {
                    ip.set_src_addr(new6)
                } else {
                    ip.set_dst_addr(new6)
                }
            }
            _ => unreachable!("NAT46 is not exercised here"),
        }
        l4_csum_delta.push((old, new));
    }

    let l4 = &mut frame[key.l4_offset..];
    match key.protocol {
        Protocol::Tcp => {
            let mut p = tcp::Packet::new_checked(&mut *l4).unwrap();
            let mut c = p.checksum();
            for (old, new) in &l4_csum_delta {
                c = checksum::update_ip_addr(c, *old, *new);
            }
            if let Some(port) = rw.src_port {
                c = checksum::update_u16(c, p.src_port(), port);
                p.set_src_port(port);
            }
            if let Some(port) = rw.dst_port {
                c = checksum::update_u16(c, p.dst_port(), port);
                p.set_dst_port(port);
            }
            p.set_checksum(c);
        }
        Protocol::Udp => {
            let mut p = udp::Packet::new_checked(&mut *l4).unwrap();
            let old = p.checksum();
            let mut c = old;
            for (o, n) in &l4_csum_delta {
                c = checksum::update_ip_addr(c, *o, *n);
            }
            if let Some(port) = rw.src_port {
                c = checksum::update_u16(c, p.src_port(), port);
                p.set_src_port(port);
            }
            if let Some(port) = rw.dst_port {
                c = checksum::update_u16(c, p.dst_port(), port);
                p.set_dst_port(port);
            }
            // Zero over IPv4 means "no checksum": leave it; never store 0 otherwise.
            if old != 0 || v6 {
                p.set_checksum(if c == 0 { 0xffff } else { c });
            }
        }
        Protocol::Icmp => {
            // No pseudo-header: only the identifier counts.
            let mut p = icmpv4::Packet::new_checked(&mut *l4).unwrap();
            if let Some(ident) = rw.src_port {
                let c = checksum::update_u16(p.checksum(), p.echo_ident(), ident);
                p.set_echo_ident(ident);
                p.set_checksum(c);
            }
        }
        Protocol::Icmpv6 => {
            let mut p = icmpv6::Packet::new_checked(&mut *l4).unwrap();
            let mut c = p.checksum();
            for (old, new) in &l4_csum_delta {
                c = checksum::update_ip_addr(c, *old, *new);
            }
            if let Some(ident) = rw.src_port {
                c = checksum::update_u16(c, p.echo_ident(), ident);
                p.set_echo_ident(ident);
            }
            p.set_checksum(c);
        }
        other => panic!("no incremental rewrite for {other}"),
    }
}

/// Applies `rw` to `frame` and recomputes every checksum from scratch.
fn rewrite_and_recompute(frame: &mut [u8], rw: Rewrite, udp_checksum_was_zero: bool) {
    let key = parse_flow_key(frame).unwrap();
    let l3 = &mut frame[key.l3_offset..];
    let ips = match (rw.src.unwrap_or(key.src), rw.dst.unwrap_or(key.dst)) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let mut ip = ipv4::Packet::new_checked(&mut *l3).unwrap();
            ip.set_src_addr(src);
            ip.set_dst_addr(dst);
            ip.fill_checksum();
            IpPair::V4 { src, dst }
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            let mut ip = ipv6::Packet::new_checked(&mut *l3).unwrap();
            ip.set_src_addr(src);
            ip.set_dst_addr(dst);
            IpPair::V6 { src, dst }
        }
        _ => unreachable!(),
    };
    let l4 = &mut frame[key.l4_offset..];
    match key.protocol {
        Protocol::Tcp => {
            let mut p = tcp::Packet::new_checked(&mut *l4).unwrap();
            p.set_src_port(rw.src_port.unwrap_or(key.src_port));
            p.set_dst_port(rw.dst_port.unwrap_or(key.dst_port));
            p.fill_checksum(&ips);
        }
        Protocol::Udp => {
            let mut p = udp::Packet::new_checked(&mut *l4).unwrap();
            p.set_src_port(rw.src_port.unwrap_or(key.src_port));
            p.set_dst_port(rw.dst_port.unwrap_or(key.dst_port));
            if udp_checksum_was_zero && !ips.is_ipv6() {
                p.set_checksum(0);
            } else {
                p.fill_checksum(&ips);
            }
        }
        Protocol::Icmp => {
            let mut p = icmpv4::Packet::new_checked(&mut *l4).unwrap();
            p.set_echo_ident(rw.src_port.unwrap_or(key.src_port));
            p.fill_checksum();
        }
        Protocol::Icmpv6 => {
            let IpPair::V6 { src, dst } = ips else { unreachable!() };
            let mut p = icmpv6::Packet::new_checked(&mut *l4).unwrap();
            p.set_echo_ident(rw.src_port.unwrap_or(key.src_port));
            p.fill_checksum(src, dst);
        }
        other => panic!("no rewrite for {other}"),
    }
}

/// Rewrites a copy of `frame` both ways and asserts the results are equal.
fn assert_incremental_matches_full(frame: &[u8], rw: Rewrite) {
    let key = parse_flow_key(frame).unwrap();
    let udp_zero =
        key.protocol == Protocol::Udp && udp::Packet::new_checked(&frame[key.l4_offset..]).unwrap().checksum() == 0;
    let mut incremental = frame.to_vec();
    rewrite_incrementally(&mut incremental, rw);
    let mut full = frame.to_vec();
    rewrite_and_recompute(&mut full, rw, udp_zero);
    assert_eq!(incremental, full, "rewrite {rw:?} of {key:?}");
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
    fn maybe<T>(&mut self, value: T) -> Option<T> {
        (!self.next().is_multiple_of(3)).then_some(value)
    }
    fn v4(&mut self) -> Ipv4Addr {
        Ipv4Addr::from(self.next() as u32)
    }
    fn v6(&mut self) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.next()) << 64 | u128::from(self.next()))
    }
}

fn random_case(rng: &mut Rng, v6: bool, l4: L4Spec) -> (Vec<u8>, Rewrite) {
    let ips =
        if v6 { IpPair::V6 { src: rng.v6(), dst: rng.v6() } } else { IpPair::V4 { src: rng.v4(), dst: rng.v4() } };
    let payload: Vec<u8> = (0..rng.next() % 97).map(|_| rng.next() as u8).collect();
    let frame = build_frame(&FrameSpec::new(ips, l4).with_payload(payload));
    let (src, dst): (IpAddr, IpAddr) =
        if v6 { (rng.v6().into(), rng.v6().into()) } else { (rng.v4().into(), rng.v4().into()) };
    let (new_sp, new_dp) = (rng.next() as u16, rng.next() as u16);
    let rw =
        Rewrite { src: rng.maybe(src), dst: rng.maybe(dst), src_port: rng.maybe(new_sp), dst_port: rng.maybe(new_dp) };
    (frame, rw)
}

#[test]
fn tcp_dnat_and_snat() {
    let mut rng = Rng(0x7c9_0001);
    for v6 in [false, true] {
        for _ in 0..1_000 {
            let (sp, dp) = (rng.next() as u16, rng.next() as u16);
            let (frame, rw) = random_case(&mut rng, v6, L4Spec::tcp(sp, dp, tcp::Flags::SYN | tcp::Flags::ACK));
            assert_incremental_matches_full(&frame, rw);
        }
    }
}

#[test]
fn udp_dnat_and_snat() {
    let mut rng = Rng(0x0d9_0002);
    for v6 in [false, true] {
        for _ in 0..1_000 {
            let (sp, dp) = (rng.next() as u16, rng.next() as u16);
            let (frame, rw) = random_case(&mut rng, v6, L4Spec::udp(sp, dp));
            assert_incremental_matches_full(&frame, rw);
        }
    }
}

#[test]
fn udp_without_checksum_stays_without() {
    let ips = IpPair::V4 { src: Ipv4Addr::new(10, 244, 1, 5), dst: Ipv4Addr::new(10, 96, 0, 10) };
    let mut frame = build_frame(&FrameSpec::new(ips, L4Spec::udp(5000, 53)).with_payload(*b"query"));
    udp::Packet::new_checked(&mut frame[34..]).unwrap().set_checksum(0);
    let rw =
        Rewrite { src: None, dst: Some(Ipv4Addr::new(10, 244, 2, 9).into()), src_port: None, dst_port: Some(5353) };
    assert_incremental_matches_full(&frame, rw);
    let mut out = frame.clone();
    rewrite_incrementally(&mut out, rw);
    assert_eq!(udp::Packet::new_checked(&out[34..]).unwrap().checksum(), 0);
}

#[test]
fn udp_checksum_that_becomes_zero_is_stored_as_ffff() {
    // Search for a rewrite whose true checksum is 0: both paths must store 0xffff.
    let ips = IpPair::V4 { src: Ipv4Addr::new(10, 244, 1, 5), dst: Ipv4Addr::new(10, 96, 0, 10) };
    let frame = build_frame(&FrameSpec::new(ips, L4Spec::udp(5000, 53)).with_payload(*b"query"));
    let found = (0..=u16::MAX).find_map(|port| {
        let rw = Rewrite { src: None, dst: None, src_port: Some(port), dst_port: None };
        let mut full = frame.clone();
        rewrite_and_recompute(&mut full, rw, false);
        (udp::Packet::new_checked(&full[34..]).unwrap().checksum() == 0xffff).then_some(rw)
    });
    let rw = found.expect("some source port makes the checksum 0");
    assert_incremental_matches_full(&frame, rw);
}

#[test]
fn icmp_echo_identifier_and_address_rewrites() {
    let mut rng = Rng(0x1c3_0003);
    for v6 in [false, true] {
        for _ in 0..1_000 {
            let (ident, seq) = (rng.next() as u16, rng.next() as u16);
            let (frame, mut rw) = random_case(&mut rng, v6, L4Spec::icmp_echo(ident, seq));
            rw.dst_port = None; // the identifier is rewritten once
            assert_incremental_matches_full(&frame, rw);
        }
    }
}

#[test]
fn sctp_port_rewrite_needs_full_crc() {
    // CRC32c has no incremental form here: rewriting a port invalidates it,
    // and fill_checksum repairs it. Addresses are not covered at all.
    let ips = IpPair::V4 { src: Ipv4Addr::new(10, 244, 1, 5), dst: Ipv4Addr::new(10, 96, 0, 20) };
    let mut frame = build_frame(&FrameSpec::new(ips, L4Spec::sctp(36412, 38412)).with_payload([1u8, 0, 0, 4]));
    let mut packet = sctp::Packet::new_checked(&mut frame[34..]).unwrap();
    assert!(packet.verify_checksum());
    packet.set_dst_port(38413);
    assert!(!packet.verify_checksum());
    packet.fill_checksum();
    assert!(packet.verify_checksum());
    let mut ip = ipv4::Packet::new_checked(&mut frame[14..]).unwrap();
    ip.set_dst_addr(Ipv4Addr::new(10, 244, 3, 3));
    assert!(sctp::Packet::new_checked(&frame[34..]).unwrap().verify_checksum());
}

#[test]
fn update_u32_and_bytes_match_update_u16() {
    let c = 0x1234;
    assert_eq!(
        checksum::update_u32(c, 0xdead_beef, 0x0102_0304),
        checksum::update_u16(checksum::update_u16(c, 0xdead, 0x0102), 0xbeef, 0x0304)
    );
    assert_eq!(checksum::update_bytes(c, &[0xde, 0xad], &[0x01, 0x02]), checksum::update_u16(c, 0xdead, 0x0102));
}
