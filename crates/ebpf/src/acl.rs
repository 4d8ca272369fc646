//! An endpoint's ACL layer compiled into the kernel's constant-cost form (`bpf/lib/acl.h`):
//!
//! 1. **Address classes.** Every prefix the layer's rules name on the remote address goes into an
//!    LPM trie. Prefixes nest or are disjoint, so the longest prefix holding an address decides
//!    which of the rules' address conditions the address meets; the prefixes that decide the same
//!    are one class. An address in no prefix is class 0.
//! 2. **Verdicts.** For each class, protocol and destination port, the first rule that matches
//!    decides (the layer's order). The port space is cut where the rules' ranges start and end,
//!    runs with the same decision are merged, and each run is written as port prefixes; a class
//!    whose decision is the same everywhere is one entry. Only what allows is written: a lookup
//!    that finds nothing drops.
//!
//! A packet then costs two LPM lookups per table whatever the number of rules, and two endpoints
//! whose layers compile to the same entries share one table.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use rustc_hash::FxHashMap;

use flowgate_switch::{Action, AddrMatch, Layer, LayerKind, Proto, Rule, RuleIndex, SetId, SwitchPolicy};

/// The protocols ACLs judge: those whose connections the switch walks, and ICMP echo requests
/// (as port 0).
pub const PROTOCOLS: [Proto; 5] = [Proto::TCP, Proto::UDP, Proto::SCTP, Proto::ICMP, Proto::ICMPV6];

/// A verdict entry: a class, optionally narrowed to a protocol and a destination port prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VerdictEntry {
    /// The address class.
    pub class: u32,
    /// The protocol; `None` = every protocol and port of the class.
    pub proto: Option<u8>,
    /// The port prefix (first port, length in bits 0..=16); `None` = every port of the protocol.
    pub ports: Option<(u16, u8)>,
    /// The index of the allowing rule in the layer (`u32::MAX` = no rule matched: the layer's
    /// default, allow).
    pub rule: u32,
}

/// A run of ports `first..=last` of one protocol and what decides them (a rule, or none: the
/// layer's default).
type Run = (u32, u32, Option<usize>);

/// The kernel form of one ACL layer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AclTable {
    /// Remote prefix → class (never 0).
    pub classes: Vec<(IpNet, u32)>,
    /// What allows.
    pub verdicts: Vec<VerdictEntry>,
}

/// Why a layer has no kernel form.
#[derive(Debug, thiserror::Error)]
#[error("ACL rule {rule:?}: {what} cannot be compiled for the kernel")]
pub struct AclError {
    rule: String,
    what: &'static str,
}

/// A rule's remote-address condition as prefixes.
enum Remote {
    Any,
    In(Vec<IpNet>),
    NotIn(Vec<IpNet>),
}

fn remote_of(policy: &SwitchPolicy, m: Option<&AddrMatch>) -> Remote {
    let nets = |s: &SetId| -> Vec<IpNet> { policy.set(*s).nets().into_iter().map(|n| n.trunc()).collect() };
    match m {
        None => Remote::Any,
        Some(AddrMatch::In(s)) => Remote::In(nets(s)),
        Some(AddrMatch::NotIn(s)) => Remote::NotIn(nets(s)),
        Some(AddrMatch::Is(ip)) => Remote::In(vec![IpNet::from(*ip)]),
    }
}

/// The sets an ACL layer refers to.
pub fn sets_of(layer: &Layer) -> Vec<SetId> {
    rules_of(layer)
        .flat_map(|r| [&r.conditions.src, &r.conditions.dst])
        .filter_map(|m| match m {
            Some(AddrMatch::In(s) | AddrMatch::NotIn(s)) => Some(*s),
            _ => None,
        })
        .collect()
}

/// The rules of an ACL layer, in the order they are tried.
pub(crate) fn rules_of(layer: &Layer) -> impl Iterator<Item = &Rule> {
    layer.groups.iter().flat_map(|g| match &g.index {
        RuleIndex::Ordered(rules) => rules.as_slice(),
        _ => &[],
    })
}

/// Compiles an endpoint's ACL layer; `None` when it has no rule group (the direction is open).
pub fn compile(policy: &SwitchPolicy, layer: &Layer) -> Result<Option<AclTable>, AclError> {
    if layer.groups.is_empty() {
        return Ok(None);
    }
    let ingress = layer.kind == LayerKind::AclIn;
    struct R {
        remote: Remote,
        proto: Option<Proto>,
        ports: (u32, u32),
        allow: bool,
    }
    let mut rules: Vec<R> = Vec::new();
    for g in &layer.groups {
        let RuleIndex::Ordered(list) = &g.index else {
            return Err(AclError { rule: g.id.name().to_string(), what: "a keyed rule group" });
        };
        for r in list {
            let c = &r.conditions;
            let bad = |what| Err(AclError { rule: r.name.to_string(), what });
            let (remote, local) = if ingress { (&c.src, &c.dst) } else { (&c.dst, &c.src) };
            if local.is_some() {
                return bad("a condition on the endpoint's own address");
            }
            if c.sport.is_some() {
                return bad("a source port condition");
            }
            if c.ingress.is_some() {
                return bad("an ingress-port condition");
            }
            let allow = match r.action {
                Action::Allow => true,
                Action::Drop(_) => false,
                _ => return bad("an action other than allow or drop"),
            };
            rules.push(R {
                remote: remote_of(policy, remote.as_ref()),
                proto: c.proto,
                ports: c.dport.map(|p| (u32::from(p.first), u32::from(p.last))).unwrap_or((0, 65535)),
                allow,
            });
        }
    }

    // 1. Classes: the rules (by index) whose prefixes hold each prefix, via its ancestors.
    let mut owners: FxHashMap<IpNet, Vec<usize>> = FxHashMap::default();
    for (i, r) in rules.iter().enumerate() {
        if let Remote::In(nets) | Remote::NotIn(nets) = &r.remote {
            for n in nets {
                let v = owners.entry(*n).or_default();
                if v.last() != Some(&i) {
                    v.push(i);
                }
            }
        }
    }
    let mut signatures: BTreeMap<Vec<usize>, u32> = BTreeMap::new();
    signatures.insert(Vec::new(), 0);
    let mut classes: Vec<(IpNet, u32)> = Vec::new();
    let prefixes: BTreeSet<IpNet> = owners.keys().copied().collect();
    for p in &prefixes {
        let mut sig: BTreeSet<usize> = BTreeSet::new();
        for len in 0..=p.prefix_len() {
            let Ok(a) = IpNet::new(p.addr(), len).map(|a| a.trunc()) else { continue };
            if let Some(v) = owners.get(&a) {
                sig.extend(v.iter().copied());
            }
        }
        let sig: Vec<usize> = sig.into_iter().collect();
        let next = signatures.len() as u32;
        let class = *signatures.entry(sig).or_insert(next);
        classes.push((*p, class));
    }

    // 2. Verdicts per class.
    let mut verdicts: Vec<VerdictEntry> = Vec::new();
    for (sig, class) in &signatures {
        let addr_ok = |i: usize| match &rules[i].remote {
            Remote::Any => true,
            Remote::In(_) => sig.binary_search(&i).is_ok(),
            Remote::NotIn(_) => sig.binary_search(&i).is_err(),
        };
        let candidates: Vec<usize> = (0..rules.len()).filter(|i| addr_ok(*i)).collect();
        // Per protocol: runs of (first, last, decision), decision = Some(rule) or None (default).
        let mut per_proto: Vec<(Proto, Vec<Run>)> = Vec::new();
        for proto in PROTOCOLS {
            let rs: Vec<usize> =
                candidates.iter().copied().filter(|i| rules[*i].proto.map(|p| p == proto).unwrap_or(true)).collect();
            let mut cuts: BTreeSet<u32> = BTreeSet::from([0, 65536]);
            for i in &rs {
                cuts.insert(rules[*i].ports.0);
                cuts.insert(rules[*i].ports.1 + 1);
            }
            let cuts: Vec<u32> = cuts.into_iter().collect();
            let mut runs: Vec<Run> = Vec::new();
            for w in cuts.windows(2) {
                let (a, b) = (w[0], w[1] - 1);
                let d = rs.iter().copied().find(|i| rules[*i].ports.0 <= a && a <= rules[*i].ports.1);
                match runs.last_mut() {
                    Some(last) if last.2 == d && last.1 + 1 == a => last.1 = b,
                    _ => runs.push((a, b, d)),
                }
            }
            per_proto.push((proto, runs));
        }
        let allows = |d: Option<usize>| d.map(|i| rules[i].allow).unwrap_or(true);
        let rule_no = |d: Option<usize>| d.map(|i| i as u32).unwrap_or(u32::MAX);
        let whole: Vec<Option<usize>> = per_proto.iter().filter(|(_, r)| r.len() == 1).map(|(_, r)| r[0].2).collect();
        if whole.len() == PROTOCOLS.len() && whole.iter().all(|d| *d == whole[0]) {
            if allows(whole[0]) {
                verdicts.push(VerdictEntry { class: *class, proto: None, ports: None, rule: rule_no(whole[0]) });
            }
            continue;
        }
        for (proto, runs) in per_proto {
            if runs.len() == 1 {
                if allows(runs[0].2) {
                    verdicts.push(VerdictEntry {
                        class: *class,
                        proto: Some(proto.0),
                        ports: None,
                        rule: rule_no(runs[0].2),
                    });
                }
                continue;
            }
            for (a, b, d) in runs {
                if !allows(d) {
                    continue;
                }
                for (first, len) in port_prefixes(a, b) {
                    verdicts.push(VerdictEntry {
                        class: *class,
                        proto: Some(proto.0),
                        ports: Some((first, len)),
                        rule: rule_no(d),
                    });
                }
            }
        }
    }
    classes.sort();
    verdicts.sort();
    Ok(Some(AclTable { classes, verdicts }))
}

/// The inclusive port range `a..=b` as prefixes (first port, length in bits).
pub fn port_prefixes(mut a: u32, b: u32) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    while a <= b {
        // The largest aligned block starting at `a` that fits.
        let mut size = if a == 0 { 65536 } else { 1u32 << a.trailing_zeros() };
        while a + size - 1 > b {
            size >>= 1;
        }
        out.push((a as u16, 16 - size.trailing_zeros() as u8));
        a += size;
    }
    out
}

impl AclTable {
    /// What the kernel decides for a connection: the class of `remote` by longest prefix, then the
    /// most specific verdict entry; `None` = dropped (the kernel's lookups, in user space: tests
    /// compare it with the layer itself).
    pub fn lookup(&self, remote: IpAddr, proto: Proto, port: u16) -> Option<u32> {
        let class = self
            .classes
            .iter()
            .filter(|(n, _)| n.contains(&remote))
            .max_by_key(|(n, _)| n.prefix_len())
            .map(|(_, c)| *c)
            .unwrap_or(0);
        self.verdicts
            .iter()
            .filter(|v| v.class == class)
            .filter(|v| v.proto.map(|p| p == proto.0).unwrap_or(true))
            .filter(|v| match v.ports {
                None => true,
                Some((first, len)) => {
                    let span = 1u32 << (16 - u32::from(len));
                    u32::from(first) <= u32::from(port) && u32::from(port) < u32::from(first) + span
                }
            })
            .max_by_key(|v| (v.proto.is_some(), v.ports.map(|p| p.1)))
            .map(|v| v.rule)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowgate_switch::{Conditions, DropReason, FlowKey, GroupId, IngressKind, PortRange, PrefixSet, RuleGroup};

    #[test]
    fn port_prefixes_cover_exactly_the_range() {
        for (a, b) in [(0, 65535), (80, 80), (80, 81), (81, 90), (1, 65535), (1000, 2047), (0, 0), (65535, 65535)] {
            let ps = port_prefixes(a, b);
            let mut covered = 0u32;
            for (first, len) in &ps {
                let span = 1u32 << (16 - u32::from(*len));
                assert_eq!(u32::from(*first) % span, 0, "{a}-{b}: unaligned {first}/{len}");
                assert!(u32::from(*first) >= a && u32::from(*first) + span - 1 <= b, "{a}-{b}: {first}/{len} outside");
                covered += span;
            }
            assert_eq!(covered, b - a + 1, "{a}-{b}: {ps:?}");
        }
        assert_eq!(port_prefixes(0, 65535), vec![(0, 0)]);
    }

    /// A small deterministic generator (no dependency needed).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn random_net(rng: &mut Rng) -> IpNet {
        if rng.below(4) == 0 {
            let a = std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, rng.below(8) as u16);
            IpNet::new(IpAddr::V6(a), [64, 120, 126, 128][rng.below(4) as usize]).unwrap().trunc()
        } else {
            let a = std::net::Ipv4Addr::new(10, 0, rng.below(3) as u8, rng.below(8) as u8);
            IpNet::new(IpAddr::V4(a), [8, 16, 24, 29, 30, 32][rng.below(6) as usize]).unwrap().trunc()
        }
    }

    /// Random layers: the table's lookups must decide exactly as the layer does, for addresses and
    /// ports around every boundary.
    #[test]
    fn tables_decide_as_the_layer_does() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..300 {
            let mut policy = SwitchPolicy::new();
            let kind = if round % 2 == 0 { LayerKind::AclIn } else { LayerKind::AclOut };
            let mut rules = Vec::new();
            for i in 0..rng.below(7) {
                let remote = match rng.below(5) {
                    0 => None,
                    1 => Some(AddrMatch::Is(random_net(&mut rng).addr())),
                    2 => {
                        let s = policy.add_set("s", PrefixSet::from_nets((0..3).map(|_| random_net(&mut rng))));
                        Some(AddrMatch::NotIn(s))
                    }
                    _ => {
                        let s = policy.add_set("s", PrefixSet::from_nets((0..3).map(|_| random_net(&mut rng))));
                        Some(AddrMatch::In(s))
                    }
                };
                let proto = [None, Some(Proto::TCP), Some(Proto::UDP), Some(Proto::SCTP)][rng.below(4) as usize];
                let dport = match rng.below(3) {
                    0 => None,
                    _ => {
                        let a = [0u16, 79, 80, 81, 1000, 65535][rng.below(6) as usize];
                        let b = a.saturating_add([0u16, 1, 9, 1000][rng.below(4) as usize]);
                        Some(PortRange { first: a, last: b })
                    }
                };
                let mut c = Conditions { proto, dport, ..Conditions::any() };
                if kind == LayerKind::AclIn {
                    c.src = remote;
                } else {
                    c.dst = remote;
                }
                let action = if rng.below(4) == 0 { Action::Drop(DropReason::PolicyDenied) } else { Action::Allow };
                rules.push(Rule::new(format!("r{i}"), c, action));
            }
            if rng.below(3) > 0 {
                rules.push(Rule::new("default deny", Conditions::any(), Action::Drop(DropReason::PolicyDenied)));
            }
            let mut layer = Layer::new(kind);
            layer.add_group(RuleGroup { id: GroupId::Other("t"), priority: 0, index: RuleIndex::Ordered(rules) });
            let table = compile(&policy, &layer).unwrap().unwrap();
            let local: IpAddr = "10.9.9.9".parse().unwrap();
            for _ in 0..200 {
                let remote = {
                    let n = random_net(&mut rng);
                    match n {
                        IpNet::V4(n) => IpAddr::V4(
                            (u32::from(n.network()) + rng.below(1 << (32 - n.prefix_len()).min(12)) as u32).into(),
                        ),
                        IpNet::V6(n) => IpAddr::V6((u128::from(n.network()) + u128::from(rng.below(300))).into()),
                    }
                };
                let proto = PROTOCOLS[rng.below(PROTOCOLS.len() as u64) as usize];
                let port = if proto.has_ports() {
                    [0u16, 1, 79, 80, 81, 82, 89, 90, 91, 999, 1000, 1001, 2000, 2001, 65534, 65535]
                        [rng.below(16) as usize]
                } else {
                    0
                };
                let local = if remote.is_ipv4() { local } else { "fd00::9".parse().unwrap() };
                let key = if kind == LayerKind::AclIn {
                    FlowKey::new((remote, 40000).into(), (local, port).into(), proto)
                } else {
                    FlowKey::new((local, 40000).into(), (remote, port).into(), proto)
                };
                let want = !matches!(layer.evaluate(&policy, &key, IngressKind::Endpoint).action, Action::Drop(_));
                let got = table.lookup(remote, proto, port).is_some();
                assert_eq!(got, want, "round {round}: {remote} {proto:?} {port}: layer {layer:?} table {table:?}");
            }
        }
    }
}
