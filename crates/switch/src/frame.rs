//! Real packets through the switch: an Ethernet frame is parsed with `flowgate-wire`, decided by the
//! engine, and rewritten in place — addresses and ports changed, checksums updated incrementally
//! (RFC 1624; SCTP's CRC32c recomputed) — exactly the bytes the kernel programs must produce.

use std::net::IpAddr;

use flowgate_wire::{checksum, ipv4, ipv6, sctp, tcp, udp, Protocol};

use crate::engine::{Outcome, Switch};
use crate::flow::Transposition;
use crate::packet::{FlowKey, Proto};
use crate::port::PortId;
use crate::walk::Verdict;

/// Why a frame could not be processed.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The frame is not a packet the switch understands (truncated, malformed, non-initial fragment).
    #[error("cannot parse frame: {0}")]
    Parse(#[from] flowgate_wire::Error),
}

/// The switch's 5-tuple of a frame, and the wire-level key (with header offsets).
pub fn key_of(frame: &[u8]) -> Result<(FlowKey, flowgate_wire::FlowKey), FrameError> {
    let w = flowgate_wire::parse_flow_key(frame)?;
    let key =
        FlowKey { src: w.src, dst: w.dst, proto: Proto(u8::from(w.protocol)), sport: w.src_port, dport: w.dst_port };
    Ok((key, w))
}

impl Switch {
    /// Processes one Ethernet frame entering on `ingress`: decides, and when allowed rewrites the
    /// frame in place to the outcome's addresses and ports with correct checksums.
    pub fn process_frame(&mut self, ingress: PortId, frame: &mut [u8], now: u64) -> Result<Outcome, FrameError> {
        let (key, w) = key_of(frame)?;
        if let Some(outcome) = self.icmp_error(frame, &key, &w)? {
            return Ok(outcome);
        }
        let outcome = self.process(ingress, key, now);
        if outcome.verdict == Verdict::Allow && outcome.packet != key {
            rewrite(frame, &w, &outcome.packet)?;
        }
        Ok(outcome)
    }
}

/// Whether an ICMP/ICMPv6 message type is an error that quotes the packet it is about.
fn is_icmp_error(proto: Protocol, ty: u8) -> bool {
    match proto {
        Protocol::Icmp => matches!(ty, 3 | 11 | 12),
        Protocol::Icmpv6 => (1..=4).contains(&ty),
        _ => false,
    }
}

impl Switch {
    /// ICMP errors about a flow the switch translated are translated back, as conntrack does: the
    /// quoted packet's 5-tuple, reversed, finds the flow; the outer destination and the quoted
    /// header get its transposition, and the outer source too when the error comes from the peer
    /// itself. `None` when the frame is not such an error (or the flow is unknown).
    fn icmp_error(
        &mut self,
        frame: &mut [u8],
        key: &FlowKey,
        w: &flowgate_wire::FlowKey,
    ) -> Result<Option<Outcome>, FrameError> {
        let ty = frame.get(w.l4_offset).copied().unwrap_or(0);
        if !is_icmp_error(w.protocol, ty) {
            return Ok(None);
        }
        let quote_at = w.l4_offset + 8;
        let Ok(inner) = flowgate_wire::parse_embedded_flow_key(frame.get(quote_at..).unwrap_or_default()) else {
            return Ok(None);
        };
        let rev = FlowKey {
            src: inner.dst,
            dst: inner.src,
            proto: Proto(u8::from(inner.protocol)),
            sport: inner.dst_port,
            dport: inner.src_port,
        };
        let Some(Transposition::Forward { src, dst, egress }) = self.flows().get(&rev).map(|e| e.transposition) else {
            return Ok(None);
        };
        let mut outer_src = w.src;
        let mut outer_dst = w.dst;
        if let Some(d) = dst {
            outer_dst = d.ip();
        }
        if let Some(s) = src {
            if w.src == inner.dst {
                outer_src = s.ip();
            }
        }
        // The quoted header: its source becomes the transposition's destination and vice versa.
        let (q_l3, q_l4) = (quote_at + inner.l3_offset, quote_at + inner.l4_offset);
        let set_port = |frame: &mut [u8], at: usize, port: u16| {
            if let Some(b) = frame.get_mut(at..at + 2) {
                b.copy_from_slice(&port.to_be_bytes());
            }
        };
        if let Some(d) = dst {
            set_port(frame, q_l4, d.port());
        }
        if let Some(s) = src {
            set_port(frame, q_l4 + 2, s.port());
        }
        match (outer_src, outer_dst) {
            (IpAddr::V4(os), IpAddr::V4(od)) => {
                let mut q = ipv4::Packet::new_checked_header(frame.get_mut(q_l3..).unwrap_or_default())?;
                if let Some(IpAddr::V4(d)) = dst.map(|d| d.ip()) {
                    q.set_src_addr(d);
                }
                if let Some(IpAddr::V4(s)) = src.map(|s| s.ip()) {
                    q.set_dst_addr(s);
                }
                q.fill_checksum();
                let mut o = ipv4::Packet::new_checked(frame.get_mut(w.l3_offset..).unwrap_or_default())?;
                o.set_src_addr(os);
                o.set_dst_addr(od);
                o.fill_checksum();
                let end = (w.l3_offset + usize::from(o.total_len())).min(frame.len());
                let mut icmp =
                    flowgate_wire::icmpv4::Packet::new_checked(frame.get_mut(w.l4_offset..end).unwrap_or_default())?;
                icmp.fill_checksum();
            }
            (IpAddr::V6(os), IpAddr::V6(od)) => {
                let mut q = ipv6::Packet::new_checked_header(frame.get_mut(q_l3..).unwrap_or_default())?;
                if let Some(IpAddr::V6(d)) = dst.map(|d| d.ip()) {
                    q.set_src_addr(d);
                }
                if let Some(IpAddr::V6(s)) = src.map(|s| s.ip()) {
                    q.set_dst_addr(s);
                }
                let mut o = ipv6::Packet::new_checked(frame.get_mut(w.l3_offset..).unwrap_or_default())?;
                o.set_src_addr(os);
                o.set_dst_addr(od);
                let end = (w.l3_offset + 40 + usize::from(o.payload_len())).min(frame.len());
                let mut icmp =
                    flowgate_wire::icmpv6::Packet::new_checked(frame.get_mut(w.l4_offset..end).unwrap_or_default())?;
                icmp.fill_checksum(os, od);
            }
            _ => return Ok(None),
        }
        let mut packet = *key;
        packet.src = outer_src;
        packet.dst = outer_dst;
        Ok(Some(Outcome { verdict: Verdict::Allow, reason: None, packet, egress: Some(egress), cached: true }))
    }
}

/// Rewrites the frame whose parsed key is `w` so that its 5-tuple becomes `new`.
pub fn rewrite(frame: &mut [u8], w: &flowgate_wire::FlowKey, new: &FlowKey) -> Result<(), FrameError> {
    let (old_src, old_dst) = (w.src, w.dst);
    // Network layer: addresses (and the IPv4 header checksum), and the end of the IP packet.
    let l3 = frame.get_mut(w.l3_offset..).ok_or(flowgate_wire::Error::Truncated)?;
    let ip_end = match (new.src, new.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut p = ipv4::Packet::new_checked(&mut *l3)?;
            let mut c = p.checksum();
            c = checksum::update_ip_addr(c, old_src, new.src);
            c = checksum::update_ip_addr(c, old_dst, new.dst);
            p.set_src_addr(s);
            p.set_dst_addr(d);
            p.set_checksum(c);
            w.l3_offset + usize::from(p.total_len())
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut p = ipv6::Packet::new_checked(&mut *l3)?;
            p.set_src_addr(s);
            p.set_dst_addr(d);
            w.l3_offset + 40 + usize::from(p.payload_len())
        }
        _ => return Err(flowgate_wire::Error::Malformed { what: "rewrite mixes IP families" }.into()),
    };
    let l4 = frame.get_mut(w.l4_offset..ip_end.min(frame.len())).ok_or(flowgate_wire::Error::Truncated)?;
    let pseudo = |c: u16| checksum::update_ip_addr(checksum::update_ip_addr(c, old_src, new.src), old_dst, new.dst);
    match w.protocol {
        Protocol::Tcp => {
            let mut p = tcp::Packet::new_checked(l4)?;
            let mut c = pseudo(p.checksum());
            c = checksum::update_u16(c, w.src_port, new.sport);
            c = checksum::update_u16(c, w.dst_port, new.dport);
            p.set_src_port(new.sport);
            p.set_dst_port(new.dport);
            p.set_checksum(c);
        }
        Protocol::Udp => {
            let mut p = udp::Packet::new_checked(l4)?;
            let old = p.checksum();
            p.set_src_port(new.sport);
            p.set_dst_port(new.dport);
            // A zero UDP checksum over IPv4 means "none" and stays so.
            if !(old == 0 && new.src.is_ipv4()) {
                let mut c = pseudo(old);
                c = checksum::update_u16(c, w.src_port, new.sport);
                c = checksum::update_u16(c, w.dst_port, new.dport);
                p.set_checksum(if c == 0 { 0xffff } else { c });
            }
        }
        Protocol::Sctp => {
            let mut p = sctp::Packet::new_checked(l4)?;
            p.set_src_port(new.sport);
            p.set_dst_port(new.dport);
            p.fill_checksum();
        }
        Protocol::Icmp => {
            // The echo identifier plays the port; ICMPv4's checksum has no pseudo-header.
            let mut p = flowgate_wire::icmpv4::Packet::new_checked(l4)?;
            if w.src_port != new.sport && p.echo_ident() == w.src_port {
                let c = checksum::update_u16(p.checksum(), w.src_port, new.sport);
                p.set_echo_ident(new.sport);
                p.set_checksum(c);
            }
        }
        Protocol::Icmpv6 => {
            let mut p = flowgate_wire::icmpv6::Packet::new_checked(l4)?;
            let mut c = pseudo(p.checksum());
            if w.src_port != new.sport && p.echo_ident() == w.src_port {
                c = checksum::update_u16(c, w.src_port, new.sport);
                p.set_echo_ident(new.sport);
            }
            p.set_checksum(c);
        }
        _ => {}
    }
    Ok(())
}
