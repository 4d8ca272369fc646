//! The switch policy compiled into kernel map entries: the same layers, in the layouts of
//! `bpf/lib/maps.h`. Only what the kernel programs can evaluate is accepted; anything else is an
//! error naming the rule, never a silently different data plane.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use flowgate_switch::{
    Action, AddrMatch, GroupId, IngressKind, LayerKind, Rule, RuleIndex, RuleKey, RuleRef, Selection, SetId,
    SwitchPolicy,
};
use ipnet::IpNet;

use crate::maps::{self, action, group, ingress, matching};

/// A rule the kernel programs cannot express.
#[derive(Debug, thiserror::Error)]
#[error("rule {rule:?} in {layer}: {what} is not supported by the kernel data plane")]
pub struct UnsupportedRule {
    /// The rule's name.
    pub rule: String,
    /// Its layer.
    pub layer: &'static str,
    /// What cannot be expressed.
    pub what: &'static str,
}

fn set_match(m: &Option<AddrMatch>, rule: &Rule, layer: &'static str) -> Result<(u8, u32), UnsupportedRule> {
    match m {
        None => Ok((matching::ANY, maps::NO_SET)),
        Some(AddrMatch::In(SetId(s))) => Ok((matching::IN, *s)),
        Some(AddrMatch::NotIn(SetId(s))) => Ok((matching::NOT_IN, *s)),
        Some(AddrMatch::Is(_)) => {
            Err(UnsupportedRule { rule: rule.name.to_string(), layer, what: "an exact-address condition" })
        }
    }
}

/// One rule in kernel form.
pub fn rule(r: &Rule, layer: &'static str) -> Result<maps::Rule, UnsupportedRule> {
    let c = &r.conditions;
    if c.proto.is_some() || c.sport.is_some() || c.dport.is_some() {
        return Err(UnsupportedRule {
            rule: r.name.to_string(),
            layer,
            what: "a protocol or port condition outside a keyed group",
        });
    }
    let (src_match, src_set) = set_match(&c.src, r, layer)?;
    let (dst_match, dst_set) = set_match(&c.dst, r, layer)?;
    let ingress = match c.ingress {
        None => ingress::ANY,
        Some(IngressKind::Endpoint) => ingress::ENDPOINT,
        Some(IngressKind::Host) => ingress::HOST,
        Some(IngressKind::Uplink) => ingress::UPLINK,
    };
    let mut k = maps::Rule { src_set, dst_set, src_match, dst_match, ingress, backends: 0, ..Default::default() };
    match r.action {
        Action::Allow => k.action = action::ALLOW,
        Action::Drop(reason) => {
            k.action = action::DROP;
            k.reason = reason as u8;
        }
        Action::Reject(reason) => {
            k.action = action::REJECT;
            k.reason = reason as u8;
        }
        Action::Dnat(d) => {
            k.action = action::DNAT;
            k.backends = d.backends.0;
            k.flags = if d.masquerade { maps::F_MASQUERADE } else { 0 } | if d.hairpin { maps::F_HAIRPIN } else { 0 };
        }
        Action::Snat => k.action = action::SNAT,
    }
    Ok(k)
}

/// A rule list in kernel form (first match wins, at most `MAX_RULES`).
pub fn rule_list(rules: &[Rule], layer: &'static str) -> Result<maps::RuleList, UnsupportedRule> {
    if rules.len() > maps::MAX_RULES {
        return Err(UnsupportedRule {
            rule: rules.first().map(|r| r.name.to_string()).unwrap_or_default(),
            layer,
            what: "more rules under one destination than the kernel's rule list holds",
        });
    }
    let mut list = maps::RuleList { count: rules.len() as u32, ..Default::default() };
    for (slot, r) in list.rules.iter_mut().zip(rules) {
        *slot = rule(r, layer)?;
    }
    Ok(list)
}

/// The LPM key of one prefix of a set.
pub fn set_key(set: u32, net: IpNet) -> maps::SetKey {
    let (addr, len, set) = match net {
        IpNet::V4(n) => (IpAddr::V4(n.network()), 96 + u32::from(n.prefix_len()), set | maps::SET_V4),
        IpNet::V6(n) => (IpAddr::V6(n.network()), u32::from(n.prefix_len()), set),
    };
    maps::SetKey { prefixlen: 32 + len, set, addr: maps::Addr::from_ip(addr) }
}

/// Whether a prefix is a single address (stored in the hash, not the trie).
pub fn is_host(net: IpNet) -> bool {
    net.prefix_len() == net.max_prefix_len()
}

/// `FG_SET_HAS_PREFIXES_*` for a set's prefixes: which families have prefixes that are not single
/// addresses.
pub fn prefix_families(nets: &BTreeSet<IpNetOrd>) -> u8 {
    nets.iter().filter(|n| !is_host(n.0)).fold(0, |acc, n| acc | if matches!(n.0, IpNet::V4(_)) { 0x1 } else { 0x2 })
}

/// Where a rule reference lives in the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KernelRuleKey {
    /// `fg_lb_dest`.
    Dest(maps::LbKeyOrd),
    /// `fg_lb_nodeport`.
    NodePort(u16, u8),
    /// `fg_groups` slot.
    Group(u32),
}

impl maps::LbKey {
    /// An orderable copy (for sorted diffs).
    pub fn ord(&self) -> maps::LbKeyOrd {
        maps::LbKeyOrd { dst: self.dst.w, dport: self.dport, proto: self.proto }
    }
}

/// Maps a policy rule reference to its kernel key; `None` for groups the kernel does not hold.
pub fn kernel_key(r: &RuleRef) -> Option<KernelRuleKey> {
    match (r.layer, r.group, &r.key) {
        (LayerKind::Lb, GroupId::ServiceIps, RuleKey::Destination((ip, proto, port))) => Some(KernelRuleKey::Dest(
            maps::LbKey { dst: maps::Addr::from_ip(*ip), dport: port.to_be(), proto: proto.0, pad: 0 }.ord(),
        )),
        (LayerKind::Lb, GroupId::ServiceNodePorts, RuleKey::Port(proto, port)) => {
            Some(KernelRuleKey::NodePort(port.to_be(), proto.0))
        }
        (LayerKind::ServiceFilter, GroupId::ClusterIpsCheck, RuleKey::Group) => {
            Some(KernelRuleKey::Group(group::SERVICE_FILTER))
        }
        (LayerKind::OutboundNat, GroupId::OutboundNat, RuleKey::Group) => {
            Some(KernelRuleKey::Group(group::OUTBOUND_NAT))
        }
        _ => None,
    }
}

/// Every rule reference of a policy.
pub fn all_rule_refs(policy: &SwitchPolicy) -> Vec<RuleRef> {
    let mut out = Vec::new();
    for layer in &policy.layers {
        for g in &layer.groups {
            match &g.index {
                RuleIndex::Destination(m) => out.extend(m.keys().map(|k| RuleRef {
                    layer: layer.kind,
                    group: g.id,
                    key: RuleKey::Destination(*k),
                })),
                RuleIndex::PortOnAddresses { rules, .. } => out.extend(rules.keys().map(|(p, n)| RuleRef {
                    layer: layer.kind,
                    group: g.id,
                    key: RuleKey::Port(*p, *n),
                })),
                RuleIndex::Ordered(_) => out.push(RuleRef { layer: layer.kind, group: g.id, key: RuleKey::Group }),
            }
        }
    }
    out
}

/// The NodePort-addresses set of a policy (the set the `service-nodeports` group applies to).
pub fn nodeport_set(policy: &SwitchPolicy) -> u32 {
    policy
        .layer(LayerKind::Lb)
        .and_then(|l| {
            l.groups.iter().find_map(|g| match &g.index {
                RuleIndex::PortOnAddresses { addresses, .. } => Some(addresses.0),
                _ => None,
            })
        })
        .unwrap_or(maps::NO_SET)
}

/// The kernel form of one backend set: its header, its backends by index, its members.
pub fn backend_set(set: &flowgate_switch::BackendSet) -> (maps::BackendSet, Vec<maps::Backend>) {
    let header = maps::BackendSet {
        count: set.backends.len() as u32,
        affinity_timeout: match set.selection {
            Selection::Random => 0,
            Selection::ClientIp { timeout_seconds } => timeout_seconds.max(1),
        },
    };
    let backends = set
        .backends
        .iter()
        .map(|b| maps::Backend { addr: maps::Addr::from_ip(b.ip()), port: b.port().to_be(), pad: 0 })
        .collect();
    (header, backends)
}

/// The prefixes of every set, for diffing.
pub fn set_prefixes(policy: &SwitchPolicy, id: SetId) -> BTreeSet<IpNetOrd> {
    policy.address_set(id).map(|s| s.prefixes.nets().into_iter().map(IpNetOrd).collect()).unwrap_or_default()
}

/// An orderable prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpNetOrd(pub IpNet);

impl PartialOrd for IpNetOrd {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for IpNetOrd {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.0.addr(), self.0.prefix_len()).cmp(&(other.0.addr(), other.0.prefix_len()))
    }
}

/// Groups sorted for stable output.
pub type Sorted<K, V> = BTreeMap<K, V>;
