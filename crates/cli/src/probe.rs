//! Parsing probes: `--from SRC[:SPORT]` and `--to DST:DPORT[/PROTO]`, as docs/trace.md defines them.

use std::net::{IpAddr, SocketAddr};

use flowgate_cluster::parse_ip_sloppy;
use flowgate_switch::{FlowKey, Proto};

/// Source port used when `--from` gives none.
pub const DEFAULT_SOURCE_PORT: u16 = 40000;

/// Parses `ADDR`, `ADDR:PORT`, `[V6]` or `[V6]:PORT`. Returns the address and the port, if given.
fn parse_host_port(s: &str) -> Result<(IpAddr, Option<u16>), String> {
    let s = s.trim();
    if let Some(rest) = s.strip_prefix('[') {
        let (addr, after) = rest.split_once(']').ok_or_else(|| format!("{s:?}: missing ']'"))?;
        let ip: IpAddr = addr.parse().map_err(|_| format!("{s:?}: {addr:?} is not an IPv6 address"))?;
        if !ip.is_ipv6() {
            return Err(format!("{s:?}: brackets are only for IPv6 addresses"));
        }
        return match after {
            "" => Ok((ip, None)),
            p => match p.strip_prefix(':') {
                Some(port) => Ok((ip, Some(parse_port(s, port)?))),
                None => Err(format!("{s:?}: expected ':PORT' after ']'")),
            },
        };
    }
    if s.matches(':').count() > 1 {
        // A bare IPv6 address (no port possible without brackets).
        let ip: IpAddr =
            s.parse().map_err(|_| format!("{s:?} is not an IP address (IPv6 with a port is written [ADDR]:PORT)"))?;
        return Ok((ip, None));
    }
    match s.split_once(':') {
        Some((addr, port)) => {
            let ip = parse_ip_sloppy(addr).ok_or_else(|| format!("{s:?}: {addr:?} is not an IP address"))?;
            Ok((ip, Some(parse_port(s, port)?)))
        }
        None => Ok((parse_ip_sloppy(s).ok_or_else(|| format!("{s:?} is not an IP address"))?, None)),
    }
}

fn parse_port(whole: &str, port: &str) -> Result<u16, String> {
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("{whole:?}: {port:?} is not a port (1-65535)")),
    }
}

/// Builds the flow key of a probe from its `from` and `to` strings.
pub fn parse_probe(from: &str, to: &str) -> Result<FlowKey, String> {
    let (src, sport) = parse_host_port(from).map_err(|e| format!("--from {e}"))?;
    let (dst_part, proto) = match to.rsplit_once('/') {
        Some((d, p)) => {
            let proto = Proto::from_name(p)
                .filter(|p| p.has_ports() || p.name() == "icmp")
                .ok_or_else(|| format!("--to {to:?}: unknown protocol {p:?} (tcp, udp, sctp or icmp)"))?;
            (d, proto)
        }
        None => (to, Proto::TCP),
    };
    if !proto.has_ports() {
        // An ICMP (ICMPv6 for IPv6) echo request: no ports.
        let (src, _) = parse_host_port(from).map_err(|e| format!("--from {e}"))?;
        let (dst, port) = parse_host_port(dst_part).map_err(|e| format!("--to {e}"))?;
        if port.is_some() {
            return Err(format!("--to {to:?}: ICMP has no ports (ADDR/icmp)"));
        }
        if src.is_ipv4() != dst.is_ipv4() {
            return Err(format!("--from {from:?} and --to {to:?} are of different IP families"));
        }
        let proto = if dst.is_ipv4() { Proto::ICMP } else { Proto::ICMPV6 };
        return Ok(FlowKey::new(SocketAddr::new(src, 0), SocketAddr::new(dst, 0), proto));
    }
    let (dst, dport) = parse_host_port(dst_part).map_err(|e| format!("--to {e}"))?;
    let dport = dport.ok_or_else(|| format!("--to {to:?}: a destination port is required (DST:DPORT[/PROTO])"))?;
    if src.is_ipv4() != dst.is_ipv4() {
        return Err(format!("--from {from:?} and --to {to:?} are of different IP families"));
    }
    Ok(FlowKey::new(SocketAddr::new(src, sport.unwrap_or(DEFAULT_SOURCE_PORT)), SocketAddr::new(dst, dport), proto))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let k = parse_probe("10.0.0.1", "172.30.0.1:80").unwrap();
        assert_eq!((k.sport, k.dport, k.proto), (40000, 80, Proto::TCP));
        let k = parse_probe("10.0.0.1:1234", "172.30.0.1:53/UDP").unwrap();
        assert_eq!((k.sport, k.proto), (1234, Proto::UDP));
        let k = parse_probe("[2001:db8::5]:40001", "[fd00::1]:80/sctp").unwrap();
        assert_eq!((k.sport, k.proto), (40001, Proto::SCTP));
        let k = parse_probe("2001:db8::5", "[fd00::1]:80").unwrap();
        assert_eq!(k.sport, 40000);
        let k = parse_probe("010.000.000.001", "172.30.0.1:80").unwrap();
        assert_eq!(k.src, "10.0.0.1".parse::<IpAddr>().unwrap());
        let k = parse_probe("10.0.0.1", "172.30.0.1/icmp").unwrap();
        assert_eq!((k.proto, k.sport, k.dport), (Proto::ICMP, 0, 0));
        let k = parse_probe("fd00::5", "[fd00::1]/icmp").unwrap();
        assert_eq!(k.proto, Proto::ICMPV6);
    }

    #[test]
    fn errors() {
        for (f, t) in [
            ("10.0.0.1", "172.30.0.1"),
            ("10.0.0.1", "172.30.0.1:0"),
            ("10.0.0.1", "172.30.0.1:80/icmp"),
            ("10.0.0.1", "fd00::1:80"),
            ("10.0.0.1", "[fd00::1]:80"),
            ("x", "1.2.3.4:80"),
            ("[1.2.3.4]:5", "1.2.3.4:80"),
            ("10.0.0.1:99999", "1.2.3.4:80"),
        ] {
            assert!(parse_probe(f, t).is_err(), "{f} {t}");
        }
    }
}
