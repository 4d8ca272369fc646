//! Address sets: sets of CIDR prefixes with a lookup cost bounded by the number of distinct prefix
//! lengths (at most 33 for IPv4, 129 for IPv6), never by the number of prefixes.

use std::net::IpAddr;

use ipnet::IpNet;
use rustc_hash::FxHashSet;

/// A set of IPv4 and IPv6 prefixes answering "does this address fall in any of them?".
///
/// Prefixes are stored masked, in one hash set per prefix length, so a lookup is one hash probe per
/// distinct length present — what a kernel LPM trie does, in user space.
#[derive(Clone, Debug, Default)]
pub struct PrefixSet {
    v4: Vec<(u8, FxHashSet<u32>)>,
    v6: Vec<(u8, FxHashSet<u128>)>,
}

impl PrefixSet {
    /// An empty set.
    pub fn new() -> PrefixSet {
        PrefixSet::default()
    }

    /// A set holding the given prefixes.
    pub fn from_nets<I: IntoIterator<Item = IpNet>>(nets: I) -> PrefixSet {
        let mut set = PrefixSet::new();
        for net in nets {
            set.insert(net);
        }
        set
    }

    /// Adds a prefix (host bits are ignored). Returns whether it was new.
    pub fn insert(&mut self, net: IpNet) -> bool {
        let net = net.trunc();
        match net {
            IpNet::V4(n) => insert_at(&mut self.v4, n.prefix_len(), u32::from(n.network())),
            IpNet::V6(n) => insert_at(&mut self.v6, n.prefix_len(), u128::from(n.network())),
        }
    }

    /// Removes a prefix (host bits are ignored). Returns whether it was present.
    pub fn remove(&mut self, net: IpNet) -> bool {
        match net.trunc() {
            IpNet::V4(n) => {
                let Some(i) = self.v4.iter().position(|(l, _)| *l == n.prefix_len()) else { return false };
                let removed = self.v4[i].1.remove(&u32::from(n.network()));
                if self.v4[i].1.is_empty() {
                    self.v4.remove(i);
                }
                removed
            }
            IpNet::V6(n) => {
                let Some(i) = self.v6.iter().position(|(l, _)| *l == n.prefix_len()) else { return false };
                let removed = self.v6[i].1.remove(&u128::from(n.network()));
                if self.v6[i].1.is_empty() {
                    self.v6.remove(i);
                }
                removed
            }
        }
    }

    /// Adds a single address (a /32 or /128). Returns whether it was new.
    pub fn insert_addr(&mut self, ip: IpAddr) -> bool {
        self.insert(IpNet::from(ip))
    }

    /// Whether `ip` falls in any prefix of the set.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                self.v4.iter().any(|(len, s)| s.contains(&mask32(a, *len)))
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                self.v6.iter().any(|(len, s)| s.contains(&mask128(a, *len)))
            }
        }
    }

    /// Removes a single address.
    pub fn remove_addr(&mut self, ip: IpAddr) -> bool {
        self.remove(IpNet::from(ip))
    }

    /// Whether the set holds no prefix.
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// The prefixes, longest first within each family, IPv4 first; unordered within a length.
    pub fn nets(&self) -> Vec<IpNet> {
        let v4 = self.v4.iter().flat_map(|(len, s)| {
            s.iter().filter_map(move |a| ipnet::Ipv4Net::new(std::net::Ipv4Addr::from(*a), *len).ok().map(IpNet::V4))
        });
        let v6 = self.v6.iter().flat_map(|(len, s)| {
            s.iter().filter_map(move |a| ipnet::Ipv6Net::new(std::net::Ipv6Addr::from(*a), *len).ok().map(IpNet::V6))
        });
        v4.chain(v6).collect()
    }
}

/// Whether `src` is a source no packet from the network may carry whatever the node's addresses,
/// as the kernel's martian-source checks have it (`ip_route_input_slow`, `ip6_rcv_core`): loopback,
/// multicast, the limited broadcast, 0.0.0.0/8 and `::` (except to a broadcast or multicast
/// destination `dst`: DHCP, IGMP, duplicate address detection, MLD), and IPv4-mapped IPv6.
/// Link-local sources are not martians (a cloud's metadata service answers from 169.254.169.254).
/// The kernel's `fg_uplink_source_ok` (bpf/lib/switch.h) is the same function.
pub fn martian_source(src: IpAddr, dst: IpAddr) -> bool {
    let to_group = match dst {
        IpAddr::V4(d) => d.is_broadcast() || d.is_multicast(),
        IpAddr::V6(d) => d.is_multicast(),
    };
    match src {
        IpAddr::V4(s) => s.is_loopback() || s.is_multicast() || s.is_broadcast() || (s.octets()[0] == 0 && !to_group),
        IpAddr::V6(s) => {
            s.is_loopback() || s.is_multicast() || s.to_ipv4_mapped().is_some() || (s.is_unspecified() && !to_group)
        }
    }
}

/// Adds `key` to the set of prefix length `len` in `by_len` (kept longest first). Returns whether
/// it was new.
fn insert_at<K: std::hash::Hash + Eq>(by_len: &mut Vec<(u8, FxHashSet<K>)>, len: u8, key: K) -> bool {
    match by_len.iter_mut().find(|(l, _)| *l == len) {
        Some((_, s)) => s.insert(key),
        None => {
            let mut s = FxHashSet::default();
            s.insert(key);
            by_len.push((len, s));
            by_len.sort_by_key(|(len, _)| std::cmp::Reverse(*len));
            true
        }
    }
}

fn mask32(a: u32, len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        a & (u32::MAX << (32 - u32::from(len)))
    }
}

fn mask128(a: u128, len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        a & (u128::MAX << (128 - u32::from(len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn contains_by_prefix() {
        let set = PrefixSet::from_nets([net("10.0.0.0/8"), net("192.168.1.7/32"), net("fd00::/48")]);
        assert!(set.contains(ip("10.200.3.4")));
        assert!(!set.contains(ip("11.0.0.1")));
        assert!(set.contains(ip("192.168.1.7")));
        assert!(!set.contains(ip("192.168.1.8")));
        assert!(set.contains(ip("fd00::1:2")));
        assert!(!set.contains(ip("fd00:1::1")));
    }

    #[test]
    fn zero_length_matches_everything_of_its_family() {
        let set = PrefixSet::from_nets([net("0.0.0.0/0")]);
        assert!(set.contains(ip("1.2.3.4")));
        assert!(!set.contains(ip("::1")));
    }

    #[test]
    fn remove() {
        let mut set = PrefixSet::from_nets([net("10.0.0.0/8"), net("10.1.0.0/16")]);
        assert!(set.remove(net("10.0.0.0/8")));
        assert!(!set.remove(net("10.0.0.0/8")));
        assert!(!set.contains(ip("10.2.0.1")));
        assert!(set.contains(ip("10.1.0.1")));
        assert!(!set.remove_addr("10.1.0.0".parse().unwrap()));
        assert_eq!(set.nets().len(), 1);
    }

    #[test]
    fn host_bits_are_ignored() {
        let set = PrefixSet::from_nets([net("10.1.2.3/16")]);
        assert!(set.contains(ip("10.1.9.9")));
        assert_eq!(set.nets(), vec![net("10.1.0.0/16")]);
    }
}
