//! Address management, host-local style: each range set hands out one address per endpoint, the
//! next free one after the last handed out (so a released address is not reused at once), never the
//! subnet's network address, its broadcast address (IPv4) or the gateway. Pure: what is taken and
//! what was last handed out come from the store.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::objects::IpRange;

/// Most addresses looked at for one allocation (a huge IPv6 range is never walked whole).
const MAX_PROBES: u128 = 1 << 20;

fn to_u128(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_u128(v: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(v as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(v))
    }
}

/// The gateway of a range: given, or the subnet's first host address.
pub fn gateway(r: &IpRange) -> IpAddr {
    r.gateway.unwrap_or_else(|| from_u128(to_u128(r.subnet.network()) + 1, r.subnet.addr().is_ipv4()))
}

/// The first and last address a range hands out.
pub fn bounds(r: &IpRange) -> (u128, u128) {
    let v4 = r.subnet.addr().is_ipv4();
    let net = to_u128(r.subnet.network());
    let last = to_u128(r.subnet.broadcast());
    let first = r.range_start.map(to_u128).unwrap_or(net + 1).max(net + 1);
    let end = r.range_end.map(to_u128).unwrap_or(if v4 { last - 1 } else { last });
    let end = if v4 { end.min(last - 1) } else { end.min(last) };
    (first, end)
}

/// How many addresses a range set can hand out (gateways excluded), saturating.
pub fn capacity(set: &[IpRange]) -> u128 {
    set.iter()
        .map(|r| {
            let (a, b) = bounds(r);
            if a > b {
                return 0;
            }
            let gw = to_u128(gateway(r));
            (b - a).saturating_add(1).saturating_sub(u128::from((a..=b).contains(&gw)))
        })
        .fold(0u128, u128::saturating_add)
}

/// The next free address of `set` after `last` (or from the start), with the index of its range;
/// `None` when every address is taken.
pub fn allocate(set: &[IpRange], last: Option<IpAddr>, taken: impl Fn(IpAddr) -> bool) -> Option<(IpAddr, usize)> {
    if set.is_empty() {
        return None;
    }
    let ranges: Vec<(u128, u128, u128, bool)> = set
        .iter()
        .filter_map(|r| {
            let (a, b) = bounds(r);
            (a <= b).then(|| (a, b, to_u128(gateway(r)), r.subnet.addr().is_ipv4()))
        })
        .collect();
    if ranges.is_empty() {
        return None;
    }
    // Start just after `last` when it lies in one of the ranges, else at the first address.
    let (mut ri, mut cur) = (0usize, ranges[0].0);
    if let Some(l) = last.map(to_u128) {
        if let Some(i) = ranges.iter().position(|(a, b, _, _)| (*a..=*b).contains(&l)) {
            (ri, cur) =
                if l < ranges[i].1 { (i, l + 1) } else { ((i + 1) % ranges.len(), ranges[(i + 1) % ranges.len()].0) };
        }
    }
    let total: u128 = ranges.iter().map(|(a, b, _, _)| (b - a).saturating_add(1)).fold(0, u128::saturating_add);
    let mut probes = 0u128;
    while probes < total.min(MAX_PROBES) {
        let (_, end, gw, v4) = ranges[ri];
        if cur != gw {
            let ip = from_u128(cur, v4);
            if !taken(ip) {
                return Some((ip, ri));
            }
        }
        probes += 1;
        if cur >= end {
            ri = (ri + 1) % ranges.len();
            cur = ranges[ri].0;
        } else {
            cur += 1;
        }
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn range(s: &str) -> IpRange {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn hands_out_in_order_skipping_gateway_network_and_broadcast() {
        let set = [range(r#"{"subnet":"10.0.0.0/29"}"#)];
        let mut taken = Vec::new();
        let mut last = None;
        while let Some((ip, _)) = allocate(&set, last, |a| taken.contains(&a)) {
            taken.push(ip);
            last = Some(ip);
        }
        let got: Vec<String> = taken.iter().map(|a| a.to_string()).collect();
        assert_eq!(got, ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]);
        assert_eq!(capacity(&set), 5);
    }

    #[test]
    fn continues_after_the_last_and_wraps_across_ranges() {
        let set = [
            range(r#"{"subnet":"10.0.0.0/24","rangeStart":"10.0.0.10","rangeEnd":"10.0.0.11","gateway":"10.0.0.1"}"#),
            range(r#"{"subnet":"10.0.1.0/24","rangeStart":"10.0.1.5","rangeEnd":"10.0.1.5"}"#),
        ];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // After 10.0.0.10 comes .11 even though .10 was released meanwhile.
        assert_eq!(allocate(&set, Some(ip("10.0.0.10")), |_| false), Some((ip("10.0.0.11"), 0)));
        assert_eq!(allocate(&set, Some(ip("10.0.0.11")), |_| false), Some((ip("10.0.1.5"), 1)));
        assert_eq!(allocate(&set, Some(ip("10.0.1.5")), |_| false), Some((ip("10.0.0.10"), 0)));
        let all = [ip("10.0.0.10"), ip("10.0.0.11"), ip("10.0.1.5")];
        assert_eq!(allocate(&set, None, |a| all.contains(&a)), None, "exhausted");
        assert_eq!(capacity(&set), 3);
    }

    #[test]
    fn empty_ranges_hand_out_nothing_and_do_not_overflow() {
        let set = [range(r#"{"subnet":"10.0.0.0/24","rangeStart":"10.0.0.255"}"#)];
        assert_eq!(capacity(&set), 0);
        assert_eq!(allocate(&set, None, |_| false), None);
        let all = [range(r#"{"subnet":"::/0"}"#)];
        assert_eq!(capacity(&all), u128::MAX - 1);
        assert!(allocate(&all, None, |_| false).is_some());
    }

    #[test]
    fn ipv6_ranges_hand_out_the_last_address_too() {
        let set = [range(r#"{"subnet":"fd00::/126"}"#)];
        let mut taken = Vec::new();
        while let Some((ip, _)) = allocate(&set, taken.last().copied(), |a| taken.contains(&a)) {
            taken.push(ip);
        }
        let got: Vec<String> = taken.iter().map(|a| a.to_string()).collect();
        assert_eq!(got, ["fd00::2", "fd00::3"]);
        let big = [range(r#"{"subnet":"fd00::/64"}"#)];
        assert_eq!(allocate(&big, None, |_| false).unwrap().0.to_string(), "fd00::2");
    }
}
