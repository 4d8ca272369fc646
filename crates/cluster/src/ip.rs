//! Lenient IP and CIDR parsing, as Kubernetes does for legacy data.
//!
//! Kubernetes once accepted IPv4 addresses with leading zeros ("010.000.000.001") and read each
//! octet as decimal; objects stored that way are still valid and still served. These functions
//! accept that form and return the canonical address, so flowgate uses `10.0.0.1`.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};

/// Parses an IP address, accepting IPv4 octets with leading zeros (read as decimal).
pub fn parse_ip_sloppy(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    parse_v4_sloppy(s).map(IpAddr::V4)
}

fn parse_v4_sloppy(s: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut n = 0;
    for part in s.split('.') {
        if n == 4 || part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        octets[n] = part.parse::<u8>().ok()?;
        n += 1;
    }
    (n == 4).then(|| Ipv4Addr::from(octets))
}

/// Parses a CIDR (`ADDR/LEN`), accepting a legacy IPv4 address part. Host bits are kept (use
/// `trunc()` for the network).
pub fn parse_cidr_sloppy(s: &str) -> Option<IpNet> {
    if let Ok(n) = s.parse::<IpNet>() {
        return Some(n);
    }
    let (addr, len) = s.split_once('/')?;
    if len.is_empty() || len.len() > 3 || !len.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let len: u8 = len.parse().ok()?;
    Ipv4Net::new(parse_v4_sloppy(addr)?, len).ok().map(IpNet::V4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_zeros_are_decimal() {
        assert_eq!(parse_ip_sloppy("010.000.000.001"), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(parse_ip_sloppy("192.168.099.011"), Some("192.168.99.11".parse().unwrap()));
        assert_eq!(parse_ip_sloppy("1.2.3.4"), Some("1.2.3.4".parse().unwrap()));
        assert_eq!(parse_ip_sloppy("2001:db8::1"), Some("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "1.2.3", "1.2.3.4.5", "256.1.1.1", "1.2.3.0004", "a.b.c.d", "1..2.3", " 1.2.3.4"] {
            assert_eq!(parse_ip_sloppy(bad), None, "{bad}");
        }
    }

    #[test]
    fn cidrs() {
        assert_eq!(parse_cidr_sloppy("010.0.0.0/8"), Some("10.0.0.0/8".parse().unwrap()));
        assert_eq!(parse_cidr_sloppy("fd00::/48"), Some("fd00::/48".parse().unwrap()));
        assert_eq!(parse_cidr_sloppy("10.0.0.0/33"), None);
        assert_eq!(parse_cidr_sloppy("10.0.0.0"), None);
    }
}
