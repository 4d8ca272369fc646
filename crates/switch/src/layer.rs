//! Layers: ordered groups of rules, each group indexed so that finding the rules that can match a
//! packet costs a hash lookup, not a scan of every rule.

use std::net::IpAddr;

use rustc_hash::FxHashMap;

use crate::packet::{FlowKey, Proto};
use crate::policy::{SetId, SwitchPolicy};
use crate::rule::{Action, IngressKind, Rule};

/// The layers of the switch, in the order a new connection walks them.
///
/// Out of a pod: ACL-out, then the node-wide layers; into a pod: ACL-in last. The load-balancing
/// layer sees the original destination, the service filter the destination after DNAT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LayerKind {
    /// The source endpoint's egress ACL.
    AclOut,
    /// Service load balancing: DNAT, masquerade marks, source-range firewall, no-endpoint verdicts.
    Lb,
    /// Filtering after load balancing: service addresses that no rule translated.
    ServiceFilter,
    /// Outbound NAT on the endpoint, with its exception list.
    OutboundNat,
    /// The destination endpoint's ingress ACL.
    AclIn,
}

impl LayerKind {
    /// The layer's name as trace shows it.
    pub fn name(self) -> &'static str {
        match self {
            LayerKind::AclOut => "acl-out",
            LayerKind::Lb => "lb",
            LayerKind::ServiceFilter => "service-filter",
            LayerKind::OutboundNat => "outbound-nat",
            LayerKind::AclIn => "acl-in",
        }
    }
}

/// Key of the destination index: exact destination address, protocol and port.
pub type DestinationKey = (IpAddr, Proto, u16);

/// How the rules of a group are found for a packet.
#[derive(Clone, Debug)]
pub enum RuleIndex {
    /// Rules keyed on the exact destination address, protocol and port (ClusterIPs, externalIPs,
    /// load-balancer IPs).
    Destination(FxHashMap<DestinationKey, Vec<Rule>>),
    /// Rules keyed on protocol and port, for packets whose destination is in an address set
    /// (NodePorts on the node's NodePort addresses).
    PortOnAddresses {
        /// The destinations the group applies to.
        addresses: SetId,
        /// Rules per (protocol, port).
        rules: FxHashMap<(Proto, u16), Vec<Rule>>,
    },
    /// Rules tried in order for every packet (few, and not keyed on a destination).
    Ordered(Vec<Rule>),
}

/// Which rule group this is: the identity the compiler gives a group and the data planes find it
/// by (the kernel backend keys its maps and slots on it), never a name matched as a string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GroupId {
    /// Exact destinations: ClusterIPs, externalIPs, load-balancer IPs, host ports, HNS load
    /// balancers (kube-proxy's `service-ips` map).
    ServiceIps,
    /// NodePorts on the NodePort addresses (kube-proxy's `service-nodeports`).
    ServiceNodePorts,
    /// The service filter: a ClusterIP without such a port, an unallocated Service address
    /// (kube-proxy's `cluster-ips-check`).
    ClusterIpsCheck,
    /// Outbound NAT on the endpoints.
    OutboundNat,
    /// An endpoint's ACL rules: NetworkPolicy and the host networking service's ACL policies.
    NetworkPolicy,
    /// A group no data plane keys on (examples, tests), by its name.
    Other(&'static str),
}

impl GroupId {
    /// The group's name, as trace and the API show it.
    pub fn name(self) -> &'static str {
        match self {
            GroupId::ServiceIps => "service-ips",
            GroupId::ServiceNodePorts => "service-nodeports",
            GroupId::ClusterIpsCheck => "cluster-ips-check",
            GroupId::OutboundNat => "outbound-nat",
            GroupId::NetworkPolicy => "network-policy",
            GroupId::Other(name) => name,
        }
    }
}

impl std::fmt::Display for GroupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A group of rules within a layer. Within a group, rules are in priority order (first match
/// wins); groups are tried by ascending `priority`.
#[derive(Clone, Debug)]
pub struct RuleGroup {
    /// Which group.
    pub id: GroupId,
    /// Lower values are tried first.
    pub priority: u32,
    /// The rules and how they are found.
    pub index: RuleIndex,
}

impl RuleGroup {
    /// The candidate rules of this group for `key`, in priority order.
    fn candidates<'a>(&'a self, policy: &SwitchPolicy, key: &FlowKey) -> &'a [Rule] {
        match &self.index {
            RuleIndex::Destination(map) => map.get(&(key.dst, key.proto, key.dport)).map(Vec::as_slice).unwrap_or(&[]),
            RuleIndex::PortOnAddresses { addresses, rules } => {
                if policy.set(*addresses).contains(key.dst) {
                    rules.get(&(key.proto, key.dport)).map(Vec::as_slice).unwrap_or(&[])
                } else {
                    &[]
                }
            }
            RuleIndex::Ordered(rules) => rules,
        }
    }
}

/// A layer: rule groups tried in order; the first rule that matches decides.
#[derive(Clone, Debug)]
pub struct Layer {
    /// Which layer this is.
    pub kind: LayerKind,
    /// The groups, in priority order (use [`Layer::add_group`]).
    pub groups: Vec<RuleGroup>,
}

/// The outcome of one layer for one packet.
#[derive(Clone, Copy, Debug)]
pub struct LayerVerdict<'a> {
    /// The action taken (`Allow` when no rule matched).
    pub action: Action,
    /// The rule that matched, if any.
    pub rule: Option<&'a Rule>,
}

impl Layer {
    /// An empty layer: lets every packet through.
    pub fn new(kind: LayerKind) -> Layer {
        Layer { kind, groups: Vec::new() }
    }

    /// Adds a group, keeping groups ordered by priority (equal priorities keep insertion order).
    pub fn add_group(&mut self, group: RuleGroup) {
        let pos = self.groups.iter().position(|g| g.priority > group.priority).unwrap_or(self.groups.len());
        self.groups.insert(pos, group);
    }

    /// Evaluates the layer for `key` entering on a port of kind `ingress`.
    pub fn evaluate<'a>(&'a self, policy: &SwitchPolicy, key: &FlowKey, ingress: IngressKind) -> LayerVerdict<'a> {
        for group in &self.groups {
            for rule in group.candidates(policy, key) {
                if rule.conditions.matches(policy, key, ingress) {
                    return LayerVerdict { action: rule.action, rule: Some(rule) };
                }
            }
        }
        LayerVerdict { action: Action::Allow, rule: None }
    }

    /// Number of rules in the layer.
    pub fn rule_count(&self) -> usize {
        self.groups
            .iter()
            .map(|g| match &g.index {
                RuleIndex::Destination(m) => m.values().map(Vec::len).sum(),
                RuleIndex::PortOnAddresses { rules, .. } => rules.values().map(Vec::len).sum(),
                RuleIndex::Ordered(r) => r.len(),
            })
            .sum()
    }
}
