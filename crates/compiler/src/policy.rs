//! NetworkPolicy (networking.k8s.io/v1): policies, pods and namespaces compiled into the ACL layers
//! of each endpoint on the node — an egress layer (judged on the translated destination) and an
//! ingress layer (judged on the client's address), as the switch walks them.
//!
//! The documented semantics, all here and nowhere else:
//!
//! - A policy selects pods of its own namespace (`spec.podSelector`, `{}` = all). A pod selected by
//!   a policy with `Ingress` (or `Egress`) in its types is isolated in that direction: only what
//!   some rule of some selecting policy allows passes (a union; the order of policies does not
//!   matter). A pod no policy selects for a direction is not isolated in it.
//! - `policyTypes` absent: `Ingress`, plus `Egress` when the policy has egress rules.
//! - A rule allows traffic from (to) any of its peers on any of its ports; a missing or empty
//!   peer list means every address, a missing or empty port list every port of every protocol.
//! - A peer: `podSelector` alone = pods of the policy's namespace; `namespaceSelector` alone =
//!   every pod of the selected namespaces; both = the selected pods of the selected namespaces;
//!   `ipBlock` = the CIDR minus its exceptions (pods' addresses included). Selectors use
//!   matchLabels and matchExpressions (In, NotIn, Exists, DoesNotExist); namespaces carry the
//!   `kubernetes.io/metadata.name` label whether or not the manifest gives it. Pods with
//!   `hostNetwork`, without an address, or finished (`Succeeded`, `Failed`) are never peers.
//! - A port: `protocol` (default TCP), a number, a range (`port`..`endPort`) or a name; a name is
//!   looked up in the container ports of the pod receiving the traffic (the selected pod for
//!   ingress, the peer pod for egress); a name no container declares with that protocol matches
//!   nothing.
//! - Traffic from and to the pod's own node (its addresses, its pods' gateways, and loopback for
//!   the node's clients of host ports on 127.0.0.1 / ::1) is always allowed.
//! - Stateful: the switch's flow table lets replies of an allowed connection through in both
//!   directions; the ACLs judge a connection's first packet (and re-check it after a change).
//!
//! An endpoint the node's host networking service made may also carry `ACL` policies of its own
//! (allow or block, by priority): they come first in its layers, before the NetworkPolicy rules.
//!
//! [`PolicyCompiler::sync`] recompiles what a change can affect and reports only the endpoints
//! whose ACLs changed; address sets are shared by content.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;

use ipnet::IpNet;
use rustc_hash::{FxHashMap, FxHashSet};

use flowgate_cluster::k8s_openapi::api::core::v1::Pod;
use flowgate_cluster::k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use flowgate_cluster::k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use flowgate_cluster::k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use flowgate_cluster::{parse_cidr_sloppy, ClusterState, LocalAcl, LocalEndpoint, ObjectKey};
use flowgate_switch::{
    Action, AddrMatch, Conditions, DropReason, GroupId, Layer, LayerKind, PolicyDelta, PortId, PortRange, PrefixSet,
    Proto, Rule, RuleGroup, RuleIndex, SetId, SwitchPolicy,
};

use crate::node::NodeView;

/// The name of the rule group holding an endpoint's NetworkPolicy rules in its ACL layers.
pub const GROUP: GroupId = GroupId::NetworkPolicy;

/// A set id no policy has: the empty set.
const NO_SET: SetId = SetId(u32::MAX);

/// The label every namespace carries with its own name.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// One allow rule of an ACL, before its addresses become an address set.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct AclRule {
    /// For trace: the policy, the rule and the port.
    name: String,
    /// The remote addresses (source for ingress, destination for egress); `None` = any.
    remote: Option<Vec<IpNet>>,
    /// The protocol; `None` = any.
    proto: Option<Proto>,
    /// The local (ingress) or remote (egress) destination ports; `None` = any.
    ports: Option<(u16, u16)>,
    /// Allow (NetworkPolicy rules always) or drop (an endpoint's `ACL` policy may block).
    allow: bool,
}

/// One direction of an endpoint: isolated (with the rules that allow) or not.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Direction {
    /// The policies that select the pod for this direction; empty = not isolated.
    selected_by: Vec<ObjectKey>,
    /// The allow rules, in policy order then rule order.
    rules: Vec<AclRule>,
}

/// What an endpoint's ACLs are compiled from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct EndpointAcl {
    egress: Direction,
    ingress: Direction,
}

impl EndpointAcl {
    fn is_open(&self) -> bool {
        [&self.egress, &self.ingress].iter().all(|d| d.selected_by.is_empty() && d.rules.is_empty())
    }

    fn remotes(&self) -> impl Iterator<Item = &Vec<IpNet>> {
        self.egress.rules.iter().chain(&self.ingress.rules).filter_map(|r| r.remote.as_ref())
    }
}

/// Compiles NetworkPolicies into the ACL layers of the node's endpoints, keeping what it compiled
/// so that a sync reports only the endpoints whose ACLs changed.
#[derive(Debug, Default)]
pub struct PolicyCompiler {
    compiled: FxHashMap<PortId, EndpointAcl>,
    /// The endpoints each policy selects (in either direction).
    by_policy: FxHashMap<ObjectKey, FxHashSet<PortId>>,
    /// What peers see of every pod, as last compiled.
    pods: FxHashMap<ObjectKey, PeerInfo>,
    /// The addresses that count as the pods' own node, as last compiled.
    node_nets: Vec<IpNet>,
    /// Address sets by content, with the number of ACLs referring to each.
    sets: FxHashMap<Vec<IpNet>, (SetId, usize)>,
}

/// A pod as a peer: its namespace, labels, addresses and named ports.
struct PeerPod<'a> {
    namespace: &'a str,
    labels: &'a BTreeMap<String, String>,
    ips: Vec<IpAddr>,
    pod: &'a Pod,
}

/// The cluster as policies see it, built once per sync.
struct View<'a> {
    namespaces: BTreeMap<&'a str, BTreeMap<String, String>>,
    pods: Vec<PeerPod<'a>>,
    empty: BTreeMap<String, String>,
}

impl<'a> View<'a> {
    fn new(state: &'a ClusterState) -> View<'a> {
        let mut namespaces: BTreeMap<&str, BTreeMap<String, String>> = BTreeMap::new();
        for (name, ns) in &state.namespaces {
            let mut labels = ns.metadata.labels.clone().unwrap_or_default();
            labels.insert(NAMESPACE_NAME_LABEL.to_string(), name.clone());
            namespaces.insert(name.as_str(), labels);
        }
        for key in state.pods.keys().chain(state.network_policies.keys()) {
            namespaces
                .entry(key.namespace.as_str())
                .or_insert_with(|| BTreeMap::from([(NAMESPACE_NAME_LABEL.to_string(), key.namespace.clone())]));
        }
        let pods = state
            .pods
            .iter()
            .filter_map(|(key, pod)| {
                let ips = peer_ips(pod)?;
                Some(PeerPod { namespace: key.namespace.as_str(), labels: labels(pod), ips, pod })
            })
            .collect();
        View { namespaces, pods, empty: BTreeMap::new() }
    }

    fn namespace_labels(&self, ns: &str) -> &BTreeMap<String, String> {
        self.namespaces.get(ns).unwrap_or(&self.empty)
    }

    /// The pods a peer with selectors names (for a policy in namespace `ns`).
    fn peer_pods(&self, ns: &str, peer: &NetworkPolicyPeer) -> Vec<usize> {
        self.pods
            .iter()
            .enumerate()
            .filter(|(_, p)| self.names(peer, ns, p.namespace, p.labels))
            .map(|(i, _)| i)
            .collect()
    }

    /// Whether a peer with selectors, of a policy in namespace `ns`, names a pod of namespace
    /// `pod_ns` with these labels: `podSelector` alone, pods of the policy's namespace;
    /// `namespaceSelector` alone, every pod of the selected namespaces; both, the selected pods
    /// of the selected namespaces.
    fn names(&self, peer: &NetworkPolicyPeer, ns: &str, pod_ns: &str, pod_labels: &BTreeMap<String, String>) -> bool {
        let ns_ok = match &peer.namespace_selector {
            Some(sel) => selects(sel, self.namespace_labels(pod_ns)),
            None => pod_ns == ns,
        };
        ns_ok && peer.pod_selector.as_ref().map(|sel| selects(sel, pod_labels)).unwrap_or(true)
    }
}

static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

fn labels(pod: &Pod) -> &BTreeMap<String, String> {
    pod.metadata.labels.as_ref().unwrap_or(&NO_LABELS)
}

/// The addresses of a pod that can be a peer: not host-network, not finished, with an address.
fn peer_ips(pod: &Pod) -> Option<Vec<IpAddr>> {
    if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
        return None;
    }
    if matches!(pod.status.as_ref()?.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    crate::pod_ips(pod)
}

/// Whether a label selector selects an object with these labels (an empty selector selects all).
pub fn selects(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    for (k, v) in sel.match_labels.iter().flatten() {
        if labels.get(k) != Some(v) {
            return false;
        }
    }
    for req in sel.match_expressions.iter().flatten() {
        let values = req.values.as_deref().unwrap_or_default();
        let have = labels.get(&req.key);
        let ok = match req.operator.as_str() {
            "In" => have.map(|v| values.contains(v)).unwrap_or(false),
            "NotIn" => have.map(|v| !values.contains(v)).unwrap_or(true),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

/// The policy's types, with the documented inference when absent.
fn policy_types(np: &NetworkPolicy) -> (bool, bool) {
    let Some(spec) = &np.spec else { return (false, false) };
    match spec.policy_types.as_deref() {
        Some(types) if !types.is_empty() => (types.iter().any(|t| t == "Ingress"), types.iter().any(|t| t == "Egress")),
        _ => (true, spec.egress.as_ref().map(|e| !e.is_empty()).unwrap_or(false)),
    }
}

/// `cidr` minus every prefix of `except`, as prefixes: at most (prefix bits) × |except| + 1 of
/// them, in time proportional to that (each half only looks at the exceptions inside it).
fn subtract(net: IpNet, except: &[IpNet]) -> Vec<IpNet> {
    let mut inside: Vec<IpNet> = except.iter().filter(|e| e.contains(&net) || net.contains(*e)).copied().collect();
    inside.sort_unstable();
    inside.dedup();
    let mut out = Vec::new();
    subtract_into(net, &inside, &mut out);
    out
}

fn subtract_into(net: IpNet, except: &[IpNet], out: &mut Vec<IpNet>) {
    if except.is_empty() {
        out.push(net);
        return;
    }
    if except.iter().any(|e| e.contains(&net)) {
        return;
    }
    let Ok(halves) = net.subnets(net.prefix_len() + 1) else { return };
    for half in halves {
        let within: Vec<IpNet> = except.iter().filter(|e| half.contains(*e)).copied().collect();
        subtract_into(half, &within, out);
    }
}

/// The (protocol, name or range) of a policy port.
enum PolicyPort<'a> {
    Range(Proto, Option<(u16, u16)>),
    Named(Proto, &'a str),
}

fn policy_port(p: &NetworkPolicyPort) -> Option<PolicyPort<'_>> {
    let proto = Proto::from_name(p.protocol.as_deref().unwrap_or("TCP"))?;
    Some(match &p.port {
        None => PolicyPort::Range(proto, None),
        Some(IntOrString::Int(n)) => {
            let first = u16::try_from(*n).ok()?;
            let last = p.end_port.map(u16::try_from).transpose().ok()?.unwrap_or(first);
            PolicyPort::Range(proto, Some((first, last)))
        }
        Some(IntOrString::String(name)) => PolicyPort::Named(proto, name.as_str()),
    })
}

/// The number a pod's containers give a named port with this protocol.
fn named_port(pod: &Pod, name: &str, proto: Proto) -> Option<u16> {
    let spec = pod.spec.as_ref()?;
    spec.containers.iter().flat_map(|c| c.ports.iter().flatten()).find_map(|p| {
        let p_proto = Proto::from_name(p.protocol.as_deref().unwrap_or("TCP"))?;
        (p.name.as_deref() == Some(name) && p_proto == proto).then(|| u16::try_from(p.container_port).ok()).flatten()
    })
}

fn port_label(proto: Option<Proto>, ports: Option<(u16, u16)>) -> String {
    let proto = proto.map(|p| p.name().to_ascii_uppercase()).unwrap_or_else(|| "any protocol".into());
    match ports {
        None => format!("{proto}, any port"),
        Some((a, b)) if a == b => format!("port {a}/{proto}"),
        Some((a, b)) => format!("ports {a}-{b}/{proto}"),
    }
}

/// Addresses by the port number a named port has on them.
type ByNumber = Vec<(u16, Vec<IpNet>)>;

/// A rule's peer list resolved (once per policy rule, shared by every endpoint the policy
/// selects): pods (indices into the view) and address blocks, and what is derived from them.
#[derive(Default)]
struct Resolved {
    pods: Vec<usize>,
    blocks: Vec<IpNet>,
    any: bool,
    /// Every address the peers name (`None`: any address), once computed.
    all: std::cell::OnceCell<Option<Vec<IpNet>>>,
    /// Egress named ports: the peers' addresses grouped by the number the name has on each.
    named: std::cell::RefCell<FxHashMap<(String, Proto), Rc<ByNumber>>>,
}

impl Resolved {
    /// Every address the peers name; `None` for any address.
    fn remote(&self, view: &View<'_>) -> Option<Vec<IpNet>> {
        self.all
            .get_or_init(|| {
                (!self.any).then(|| {
                    let mut nets: BTreeSet<IpNet> = self.blocks.iter().copied().collect();
                    for i in &self.pods {
                        nets.extend(view.pods[*i].ips.iter().map(|ip| IpNet::from(*ip)));
                    }
                    nets.into_iter().collect()
                })
            })
            .clone()
    }

    /// A named port as the destination pods define it: the peers' pods (and pods inside their
    /// address blocks) grouped by the number the name has there, with the addresses the peers
    /// name.
    fn by_named_port(&self, view: &View<'_>, name: &str, proto: Proto) -> Rc<ByNumber> {
        let key = (name.to_owned(), proto);
        if let Some(v) = self.named.borrow().get(&key) {
            return v.clone();
        }
        let in_blocks = |ip: &IpAddr| self.blocks.iter().any(|b| b.contains(ip));
        let pods: BTreeSet<usize> = self.pods.iter().copied().collect();
        let mut by_number: BTreeMap<u16, BTreeSet<IpNet>> = BTreeMap::new();
        for (i, pod) in view.pods.iter().enumerate() {
            let named = self.any || pods.contains(&i);
            if !named && !pod.ips.iter().any(in_blocks) {
                continue;
            }
            let Some(n) = named_port(pod.pod, name, proto) else { continue };
            let nets = by_number.entry(n).or_default();
            nets.extend(pod.ips.iter().filter(|ip| named || in_blocks(ip)).map(|ip| IpNet::from(*ip)));
        }
        let v: ByNumber = by_number
            .into_iter()
            .filter(|(_, n)| !n.is_empty())
            .map(|(n, nets)| (n, nets.into_iter().collect()))
            .collect();
        let v = Rc::new(v);
        self.named.borrow_mut().insert(key, v.clone());
        v
    }
}

/// Compiles the allow rules of one rule of a policy (its resolved peers and its `ports`) for the
/// endpoint of pod `me` (`None`: a pod whose object is unknown), appending them to `out`.
fn rules_of(
    view: &View<'_>,
    me: Option<&Pod>,
    (name, ingress): (&str, bool),
    resolved: &Resolved,
    ports: &[NetworkPolicyPort],
    out: &mut Vec<AclRule>,
) {
    // A rule whose peers name no address allows nothing.
    let mut push = |what: String, remote: Option<Vec<IpNet>>, proto: Option<Proto>, ports: Option<(u16, u16)>| {
        if remote.as_ref().map(|r| !r.is_empty()).unwrap_or(true) {
            out.push(AclRule { name: format!("{name}, {what}"), remote, proto, ports, allow: true });
        }
    };
    if ports.is_empty() {
        push("any port".into(), resolved.remote(view), None, None);
        return;
    }
    for p in ports {
        match policy_port(p) {
            None => {}
            Some(PolicyPort::Range(proto, range)) => {
                push(port_label(Some(proto), range), resolved.remote(view), Some(proto), range);
            }
            Some(PolicyPort::Named(proto, port_name)) if ingress => {
                // The name is the selected pod's own port.
                if let Some(n) = me.and_then(|me| named_port(me, port_name, proto)) {
                    let what = format!("port {port_name:?} = {n}/{}", proto.name().to_ascii_uppercase());
                    push(what, resolved.remote(view), Some(proto), Some((n, n)));
                }
            }
            Some(PolicyPort::Named(proto, port_name)) => {
                // The name is each destination pod's port.
                for (n, nets) in resolved.by_named_port(view, port_name, proto).iter() {
                    let what = format!("port {port_name:?} = {n}/{}", proto.name().to_ascii_uppercase());
                    push(what, Some(nets.clone()), Some(proto), Some((*n, *n)));
                }
            }
        }
    }
}

/// The ACLs of one endpoint: every policy of its namespace that selects its pod.
fn endpoint_acl<'s>(
    state: &'s ClusterState,
    view: &View<'_>,
    key: &ObjectKey,
    pod: Option<&Pod>,
    node_nets: &[IpNet],
    memo: &mut FxHashMap<(&'s ObjectKey, bool, usize), Resolved>,
) -> EndpointAcl {
    let mut acl = EndpointAcl::default();
    // An endpoint of this node whose Pod object is not known (yet, or any more): a pod without
    // labels, so that the policies selecting every pod of its namespace still isolate it.
    let pod_labels = match pod {
        Some(pod) => labels(pod),
        None if !key.namespace.is_empty() => &NO_LABELS,
        None => {
            acl.add_local_rules(state.local_endpoints.get(key));
            return acl;
        }
    };
    let range =
        ObjectKey::new(key.namespace.clone(), String::new())..=ObjectKey::new(key.namespace.clone(), "\u{10ffff}");
    for (pkey, np) in state.network_policies.range(range) {
        let Some(spec) = &np.spec else { continue };
        if !spec.pod_selector.as_ref().map(|s| selects(s, pod_labels)).unwrap_or(true) {
            continue;
        }
        let (ing, eg) = policy_types(np);
        if ing {
            acl.ingress.selected_by.push(pkey.clone());
            for (i, rule) in spec.ingress.iter().flatten().enumerate() {
                let peers = rule.from.as_deref().unwrap_or_default();
                let r = memo.entry((pkey, true, i)).or_insert_with(|| resolve(view, &pkey.namespace, peers));
                let name = format!("{pkey} ingress rule {i}");
                let ports = rule.ports.as_deref().unwrap_or_default();
                rules_of(view, pod, (&name, true), r, ports, &mut acl.ingress.rules);
            }
        }
        if eg {
            acl.egress.selected_by.push(pkey.clone());
            for (i, rule) in spec.egress.iter().flatten().enumerate() {
                let peers = rule.to.as_deref().unwrap_or_default();
                let r = memo.entry((pkey, false, i)).or_insert_with(|| resolve(view, &pkey.namespace, peers));
                let name = format!("{pkey} egress rule {i}");
                let ports = rule.ports.as_deref().unwrap_or_default();
                rules_of(view, pod, (&name, false), r, ports, &mut acl.egress.rules);
            }
        }
    }
    for (d, name) in
        [(&mut acl.ingress, "traffic from the pod's own node"), (&mut acl.egress, "traffic to the pod's own node")]
    {
        if !d.selected_by.is_empty() && !node_nets.is_empty() {
            let mut remote = node_nets.to_vec();
            if name.starts_with("traffic from") {
                // The node's own clients of a host port on loopback reach the pod with their
                // loopback source; only the node can send it (the uplink and every endpoint
                // drop it as spoofed).
                remote.extend(["127.0.0.0/8", "::1/128"].iter().filter_map(|n| n.parse::<IpNet>().ok()));
            }
            d.rules
                .insert(0, AclRule { name: name.into(), remote: Some(remote), proto: None, ports: None, allow: true });
        }
    }
    acl.add_local_rules(state.local_endpoints.get(key));
    acl
}

impl EndpointAcl {
    /// Puts the endpoint's own `ACL` policies (from the host networking service) first, by
    /// ascending priority.
    fn add_local_rules(&mut self, local: Option<&LocalEndpoint>) {
        let Some(local) = local else { return };
        let mut acls: Vec<&LocalAcl> = local.acls.iter().collect();
        acls.sort_by_key(|a| a.priority);
        let (mut ingress, mut egress) = (Vec::new(), Vec::new());
        for a in acls {
            let proto = a.protocol.as_deref().and_then(Proto::from_name);
            let remote = (!a.remote.is_empty()).then(|| {
                let set: BTreeSet<IpNet> = a.remote.iter().map(|n| n.trunc()).collect();
                set.into_iter().collect::<Vec<_>>()
            });
            let ranges: Vec<Option<(u16, u16)>> =
                if a.ports.is_empty() { vec![None] } else { a.ports.iter().copied().map(Some).collect() };
            for ports in ranges {
                let name = format!(
                    "ACL policy (priority {}): {} {} {}, {}",
                    a.priority,
                    if a.allow { "allow" } else { "block" },
                    if a.inbound { "in from" } else { "out to" },
                    match &remote {
                        None => "any address".to_string(),
                        Some(r) => r.iter().map(ToString::to_string).collect::<Vec<_>>().join(" "),
                    },
                    port_label(proto, ports)
                );
                let rule = AclRule { name, remote: remote.clone(), proto, ports, allow: a.allow };
                if a.inbound {
                    ingress.push(rule);
                } else {
                    egress.push(rule);
                }
            }
        }
        ingress.append(&mut self.ingress.rules);
        self.ingress.rules = ingress;
        egress.append(&mut self.egress.rules);
        self.egress.rules = egress;
    }
}

/// What a policy's peers can see of a pod: enough to tell, after the pod changed, whether the
/// policy's peers named it before.
#[derive(Clone, Debug)]
struct PeerInfo {
    namespace: String,
    labels: BTreeMap<String, String>,
}

impl PeerInfo {
    fn of(key: &ObjectKey, pod: &Pod) -> Option<PeerInfo> {
        // Only pods with an address are peers.
        peer_ips(pod)?;
        Some(PeerInfo { namespace: key.namespace.clone(), labels: labels(pod).clone() })
    }
}

/// Whether a policy's peers name this pod (or may, through the named ports of a rule with
/// address blocks, which are looked up in the pods inside them).
fn names_peer(np: &NetworkPolicy, pkey: &ObjectKey, pod: &PeerInfo, view: &View<'_>) -> bool {
    let Some(spec) = &np.spec else { return false };
    let rules = spec
        .ingress
        .iter()
        .flatten()
        .map(|r| (r.from.as_deref().unwrap_or_default(), r.ports.as_deref().unwrap_or_default()))
        .chain(
            spec.egress
                .iter()
                .flatten()
                .map(|r| (r.to.as_deref().unwrap_or_default(), r.ports.as_deref().unwrap_or_default())),
        );
    for (peers, ports) in rules {
        let named = ports.iter().any(|p| matches!(p.port, Some(IntOrString::String(_))));
        if peers.is_empty() && named {
            return true;
        }
        for peer in peers {
            if peer.ip_block.is_some() {
                if named {
                    return true;
                }
                continue;
            }
            if view.names(peer, &pkey.namespace, &pod.namespace, &pod.labels) {
                return true;
            }
        }
    }
    false
}

/// Resolves a rule's peer list.
fn resolve(view: &View<'_>, ns: &str, peers: &[NetworkPolicyPeer]) -> Resolved {
    if peers.is_empty() {
        return Resolved { any: true, ..Resolved::default() };
    }
    let mut r = Resolved::default();
    let mut pods: BTreeSet<usize> = BTreeSet::new();
    for peer in peers {
        if let Some(block) = &peer.ip_block {
            let Some(net) = parse_cidr_sloppy(&block.cidr) else { continue };
            let except: Vec<IpNet> =
                block.except.iter().flatten().filter_map(|e| parse_cidr_sloppy(e)).map(|n| n.trunc()).collect();
            r.blocks.extend(subtract(net.trunc(), &except));
        } else {
            pods.extend(view.peer_pods(ns, peer));
        }
    }
    r.pods = pods.into_iter().collect();
    r
}

impl PolicyCompiler {
    /// Compiles the ACLs of the node's endpoints (`endpoints`: pod → port) from the state and
    /// writes those that changed into `policy`, marking them in `delta`. With `changes`, only the
    /// endpoints a change can affect are compiled again: those whose pod changed, and those
    /// selected (before or after) by a policy that changed or whose peers match a changed pod (as
    /// it was or as it is); a namespace change compiles everything.
    pub fn sync(
        &mut self,
        state: &ClusterState,
        node: &NodeView,
        endpoints: &FxHashMap<ObjectKey, PortId>,
        changes: Option<&crate::Changes>,
        policy: &mut SwitchPolicy,
        delta: &mut PolicyDelta,
    ) {
        let view = View::new(state);
        // The node's addresses, and the gateway addresses on its pods' host sides (the source of
        // the node's own connections to its pods).
        let node_nets: Vec<IpNet> = {
            let gateways = state.local_endpoints.values().flat_map(|e| e.gateways.iter());
            let set: BTreeSet<IpNet> = node.addresses.iter().chain(gateways).map(|a| IpNet::from(*a)).collect();
            set.into_iter().collect()
        };
        // The same addresses are the switch's host addresses: what the node's own traffic comes
        // from, so what nothing arriving from the network may carry (the uplink drops it as
        // spoofed). One list for both, so that "traffic from the node is allowed" never holds for a
        // source the network can forge.
        let mut hosts: Vec<IpNet> = policy.host_addresses.nets();
        hosts.sort();
        if hosts != node_nets {
            policy.host_addresses = PrefixSet::from_nets(node_nets.iter().copied());
            delta.host = true;
        }
        // (They are in every isolated endpoint's rules: when they change, everything is compiled.)
        let changes = changes.filter(|c| c.namespaces.is_empty() && node_nets == self.node_nets);
        self.node_nets = node_nets.clone();
        let affected: Vec<(&ObjectKey, PortId)> = match changes {
            None => {
                self.pods = state.pods.iter().filter_map(|(k, p)| Some((k.clone(), PeerInfo::of(k, p)?))).collect();
                endpoints.iter().map(|(k, p)| (k, *p)).collect()
            }
            Some(c) => self.affected(state, &view, endpoints, c),
        };
        // Peers resolved once per policy rule, shared by every endpoint the policy selects.
        let mut memo: FxHashMap<(&ObjectKey, bool, usize), Resolved> = FxHashMap::default();
        let mut want: Vec<(PortId, Option<EndpointAcl>)> = Vec::with_capacity(affected.len());
        for (key, port) in affected {
            let pod = state.pods.get(key).filter(|pod| pod.spec.as_ref().and_then(|s| s.host_network) != Some(true));
            let acl = Some(endpoint_acl(state, &view, key, pod, &node_nets, &mut memo)).filter(|acl| !acl.is_open());
            want.push((port, acl));
        }
        // Endpoints that are gone.
        let live: FxHashSet<PortId> = endpoints.values().copied().collect();
        want.extend(self.compiled.keys().filter(|p| !live.contains(p)).map(|p| (*p, None)));
        for (port, acl) in want {
            if self.compiled.get(&port) == acl.as_ref() {
                continue;
            }
            match acl {
                None => {
                    if let Some(old) = self.compiled.remove(&port) {
                        self.unindex(port, &old);
                        self.release(&old, policy, delta);
                    }
                    policy.put_acl(port, None);
                }
                Some(acl) => {
                    // The new sets before the old go (a set both use is never removed between).
                    for remote in acl.remotes() {
                        self.acquire(remote, policy, delta);
                    }
                    let layers =
                        (self.layer(LayerKind::AclOut, &acl.egress), self.layer(LayerKind::AclIn, &acl.ingress));
                    policy.put_acl(port, Some(layers));
                    if let Some(old) = self.compiled.remove(&port) {
                        self.unindex(port, &old);
                        self.release(&old, policy, delta);
                    }
                    for p in acl.ingress.selected_by.iter().chain(&acl.egress.selected_by) {
                        self.by_policy.entry(p.clone()).or_default().insert(port);
                    }
                    self.compiled.insert(port, acl);
                }
            }
            delta.acls.insert(port);
        }
    }

    /// The endpoints a change can affect (see [`PolicyCompiler::sync`]); keeps the peers' view of
    /// the changed pods up to date.
    fn affected<'e>(
        &mut self,
        state: &ClusterState,
        view: &View<'_>,
        endpoints: &'e FxHashMap<ObjectKey, PortId>,
        c: &crate::Changes,
    ) -> Vec<(&'e ObjectKey, PortId)> {
        let mut ports: BTreeSet<PortId> = BTreeSet::new();
        let mut policies: BTreeSet<ObjectKey> = c.network_policies.clone();
        for key in c.pods.iter().chain(&c.local_endpoints) {
            if let Some(port) = endpoints.get(key) {
                ports.insert(*port);
            }
            let old = self.pods.remove(key);
            let new = state.pods.get(key).and_then(|p| PeerInfo::of(key, p));
            for (pkey, np) in &state.network_policies {
                if [&old, &new].into_iter().flatten().any(|peer| names_peer(np, pkey, peer, view)) {
                    policies.insert(pkey.clone());
                }
            }
            if let Some(new) = new {
                self.pods.insert(key.clone(), new);
            }
        }
        for pkey in &policies {
            if let Some(old) = self.by_policy.get(pkey) {
                ports.extend(old.iter().copied());
            }
            let Some(sel) = state.network_policies.get(pkey).and_then(|np| np.spec.as_ref()) else { continue };
            for (key, port) in endpoints.iter().filter(|(k, _)| k.namespace == pkey.namespace) {
                // (An endpoint whose Pod object is unknown counts as a pod without labels.)
                let pod_labels = state.pods.get(key).map(labels).unwrap_or(&NO_LABELS);
                let selected = sel.pod_selector.as_ref().map(|s| selects(s, pod_labels)).unwrap_or(true);
                if selected {
                    ports.insert(*port);
                }
            }
        }
        let by_port: FxHashMap<PortId, &ObjectKey> = endpoints.iter().map(|(k, p)| (*p, k)).collect();
        ports.into_iter().filter_map(|p| by_port.get(&p).map(|k| (*k, p))).collect()
    }

    fn unindex(&mut self, port: PortId, acl: &EndpointAcl) {
        for p in acl.ingress.selected_by.iter().chain(&acl.egress.selected_by) {
            if let Some(set) = self.by_policy.get_mut(p) {
                set.remove(&port);
                if set.is_empty() {
                    self.by_policy.remove(p);
                }
            }
        }
    }

    fn acquire(&mut self, remote: &[IpNet], policy: &mut SwitchPolicy, delta: &mut PolicyDelta) {
        if let Some((_, n)) = self.sets.get_mut(remote) {
            *n += 1;
            return;
        }
        let id = policy.add_set(format!("network-policy peers ({} prefixes)", remote.len()), {
            PrefixSet::from_nets(remote.iter().copied())
        });
        delta.sets.insert(id);
        self.sets.insert(remote.to_vec(), (id, 1));
    }

    fn release(&mut self, acl: &EndpointAcl, policy: &mut SwitchPolicy, delta: &mut PolicyDelta) {
        for remote in acl.remotes() {
            if let Some((id, n)) = self.sets.get_mut(remote) {
                *n -= 1;
                if *n == 0 {
                    let id = *id;
                    self.sets.remove(remote);
                    policy.remove_set(id);
                    delta.sets.insert(id);
                }
            }
        }
    }

    /// The ACL layer of one direction: nothing when the pod is not isolated; else the allow rules
    /// and a final default deny naming the policies that isolate it.
    fn layer(&self, kind: LayerKind, d: &Direction) -> Layer {
        let mut layer = Layer::new(kind);
        if d.selected_by.is_empty() && d.rules.is_empty() {
            return layer;
        }
        let mut rules: Vec<Rule> = Vec::with_capacity(d.rules.len() + 1);
        for r in &d.rules {
            // (Every remote's set was acquired before the layer is built; were one missing, the
            // rule would match no address rather than every one.)
            let remote = r.remote.as_ref().map(|nets| AddrMatch::In(self.sets.get(nets).map_or(NO_SET, |(id, _)| *id)));
            let mut c = Conditions {
                proto: r.proto,
                dport: r.ports.map(|(first, last)| PortRange { first, last }),
                ..Conditions::any()
            };
            if kind == LayerKind::AclIn {
                c.src = remote;
            } else {
                c.dst = remote;
            }
            let action = if r.allow { Action::Allow } else { Action::Drop(DropReason::PolicyDenied) };
            rules.push(Rule { name: Arc::from(r.name.as_str()), conditions: c, action });
        }
        if d.selected_by.is_empty() {
            // Only the endpoint's own ACL policies: what they do not match passes.
            layer.add_group(RuleGroup { id: GROUP, priority: 0, index: RuleIndex::Ordered(rules) });
            return layer;
        }
        rules.push(Rule::new(
            format!(
                "default deny (isolated by {})",
                d.selected_by.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            ),
            Conditions::any(),
            Action::Drop(DropReason::PolicyDenied),
        ));
        layer.add_group(RuleGroup { id: GROUP, priority: 0, index: RuleIndex::Ordered(rules) });
        layer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ip_block_with_ten_thousand_exceptions_stays_small_and_exact() {
        // A fixed pseudo-random spread of /32 and /24 exceptions over 10.0.0.0/8.
        let mut x: u32 = 0x9e37_79b9;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        let except: Vec<IpNet> = (0..10_000)
            .map(|i| {
                let a = std::net::Ipv4Addr::from(0x0a00_0000 | (next() & 0x00ff_ffff));
                let len = if i % 10 == 0 { 24 } else { 32 };
                IpNet::V4(ipnet::Ipv4Net::new(a, len).unwrap().trunc())
            })
            .collect();
        let net: IpNet = "10.0.0.0/8".parse().unwrap();
        let out = subtract(net, &except);
        assert!(out.len() <= 24 * except.len() + 1, "{} prefixes", out.len());
        // Exact: an exception's address is in no prefix, and every other sampled address of the
        // block is in exactly one.
        let set = flowgate_switch::PrefixSet::from_nets(out.iter().copied());
        for e in except.iter().step_by(7) {
            assert!(!set.contains(e.network()), "{e}");
        }
        for _ in 0..2_000 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 | (next() & 0x00ff_ffff)));
            let excepted = except.iter().any(|e| e.contains(&ip));
            assert_eq!(set.contains(ip), !excepted, "{ip}");
        }
    }
}
