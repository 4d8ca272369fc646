//! Kubernetes semantics, compiled once into switch policy.
//!
//! [`compile`] takes the cluster state and the node being programmed and produces the
//! [`SwitchPolicy`] that the model engine walks (`flowgate trace`) and the kernel data plane is
//! programmed from:
//!
//! - endpoint ports for the node's pods ([`endpoint_ips`]);
//! - the service proxy ([`proxy`]): Services + EndpointSlices + Node + KubeProxyConfiguration →
//!   the `lb` and `service-filter` layers, with kube-proxy's nftables-mode semantics;
//! - outbound NAT on the endpoints, when flowgate's configuration enables it;
//! - NetworkPolicy ([`policy`]): Pods + Namespaces + NetworkPolicies → each endpoint's ACL layers.
//!
//! [`Compiler`] does the same incrementally: given what changed ([`Changes`]), it updates the
//! desired policy touching only the affected Services and pods, and reports the touched parts as a
//! [`flowgate_switch::PolicyDelta`] that a data plane applies. This crate is the only place
//! Kubernetes semantics live.

#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod endpoints;
pub mod local;
pub mod node;
pub mod policy;
pub mod proxy;
pub mod services;
pub mod settings;

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;

use flowgate_cluster::k8s_openapi::api::core::v1::Pod;
use flowgate_cluster::{parse_cidr_sloppy, parse_ip_sloppy, ClusterState, ObjectKey};
use flowgate_switch::{
    Action, AddrMatch, Conditions, GroupId, IngressKind, LayerKind, PolicyDelta, Port, PortId, PortKind, PrefixSet,
    Rule, RuleGroup, RuleIndex, RuleKey, RuleRef, SetId, SwitchPolicy,
};
use rustc_hash::FxHashMap;

pub use node::{select_node, NodeView};
pub use settings::ProxySettings;

/// Why a state could not be compiled for a node.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// No node could be chosen.
    #[error("cannot tell which node to compile for: {reason}; name one with --node")]
    NoNode {
        /// Why not.
        reason: String,
    },
    /// The named node is not among the manifests.
    #[error("node {name:?} is not among the manifests (a Node object with that name is needed for its addresses)")]
    UnknownNode {
        /// The name asked for.
        name: String,
    },
}

/// The result of compiling a state for a node.
#[derive(Debug)]
pub struct Compiled {
    /// The node's view.
    pub node: NodeView,
    /// The proxy settings in force.
    pub settings: ProxySettings,
    /// The switch policy.
    pub policy: SwitchPolicy,
    /// What is not programmed as written (conflicting or refused claims).
    pub problems: Vec<proxy::Problem>,
}

/// Compiles `state` for the node named `node` (or the default node, see [`select_node`]).
pub fn compile(state: &ClusterState, node: Option<&str>) -> Result<Compiled, CompileError> {
    let mut c = Compiler::new(node.map(String::from));
    c.compile_full(state)?;
    match c.inner {
        Some(inner) => {
            let problems = inner.proxy.problems();
            Ok(Compiled { node: inner.node, settings: inner.settings, policy: inner.policy, problems })
        }
        None => Err(CompileError::NoNode { reason: "nothing compiled".into() }),
    }
}

/// What changed in the cluster state since the last compile: the keys of objects added, updated or
/// deleted (no-ops already dropped by the change tracker).
#[derive(Clone, Debug, Default)]
pub struct Changes {
    /// Nodes, by name.
    pub nodes: BTreeSet<String>,
    /// The KubeProxyConfiguration or FlowgateConfiguration changed.
    pub config: bool,
    /// Services.
    pub services: BTreeSet<ObjectKey>,
    /// EndpointSlices.
    pub endpoint_slices: BTreeSet<ObjectKey>,
    /// Pods.
    pub pods: BTreeSet<ObjectKey>,
    /// ServiceCIDRs changed.
    pub service_cidrs: bool,
    /// Namespaces, by name.
    pub namespaces: BTreeSet<String>,
    /// NetworkPolicies.
    pub network_policies: BTreeSet<ObjectKey>,
    /// Endpoints of the node's host networking service.
    pub local_endpoints: BTreeSet<ObjectKey>,
    /// Load balancers of the node's host networking service, by name.
    pub local_load_balancers: BTreeSet<String>,
}

impl Changes {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
            && !self.config
            && self.services.is_empty()
            && self.endpoint_slices.is_empty()
            && self.pods.is_empty()
            && !self.service_cidrs
            && self.namespaces.is_empty()
            && self.network_policies.is_empty()
            && self.local_endpoints.is_empty()
            && self.local_load_balancers.is_empty()
    }
}

#[derive(Debug)]
struct Inner {
    node: NodeView,
    settings: ProxySettings,
    policy: SwitchPolicy,
    proxy: proxy::ServiceProxy,
    endpoints: FxHashMap<ObjectKey, PortId>,
    /// The outbound NAT sets (exceptions, sources), once outbound NAT was on.
    outbound: Option<(SetId, SetId)>,
    local: local::LocalClaims,
    policies: policy::PolicyCompiler,
}

/// The incremental compiler: keeps the desired switch policy of one node and updates it with what
/// changed, reporting the touched parts as a [`PolicyDelta`] for the data plane.
#[derive(Debug)]
pub struct Compiler {
    requested_node: Option<String>,
    inner: Option<Inner>,
    /// Port numbers endpoints had before (a restarted agent's kernel bindings name them).
    port_hints: FxHashMap<ObjectKey, PortId>,
}

impl Compiler {
    /// A compiler for the node `node` (or the default node of the state, see [`select_node`]).
    pub fn new(node: Option<String>) -> Compiler {
        Compiler { requested_node: node, inner: None, port_hints: FxHashMap::default() }
    }

    /// Asks that these endpoints keep these port numbers when compiled (where the number is free):
    /// a restarted agent passes what the kernel's interface bindings still name, so its first
    /// compile does not renumber the ports under them.
    pub fn prefer_ports(&mut self, hints: impl IntoIterator<Item = (ObjectKey, PortId)>) {
        self.port_hints.extend(hints);
    }

    /// The desired policy, once compiled.
    pub fn policy(&self) -> Option<&SwitchPolicy> {
        self.inner.as_ref().map(|i| &i.policy)
    }

    /// The port of a pod's (or a local endpoint's) endpoint, once compiled.
    pub fn endpoint_port(&self, key: &ObjectKey) -> Option<PortId> {
        self.inner.as_ref().and_then(|i| i.endpoints.get(key).copied())
    }

    /// The claims of Services (and the node's host ports and load balancers) that are not
    /// programmed: conflicting with another's on the same address and port, or refused.
    pub fn problems(&self) -> Vec<proxy::Problem> {
        self.inner.as_ref().map(|i| i.proxy.problems()).unwrap_or_default()
    }

    /// The health check node ports to serve on this node (kube-proxy's service health server):
    /// one per Service of type LoadBalancer with `externalTrafficPolicy: Local` and a
    /// `healthCheckNodePort`, with the number of this node's ready endpoints of the Service per IP
    /// family. Empty before the first compile.
    pub fn health_checks(&self) -> Vec<proxy::HealthCheck> {
        self.inner.as_ref().map(|i| i.proxy.health_checks().cloned().collect()).unwrap_or_default()
    }

    /// Where health check node ports are served, per family, as kube-proxy does: on the node's
    /// addresses that `nodePortAddresses` selects (loopback too when a CIDR holds it: kube-proxy
    /// takes the addresses of the node's interfaces, loopback included; flowgate knows the Node's
    /// addresses), or on every address of the family (the unspecified address) when it selects
    /// all of them. Empty before the first compile.
    pub fn health_check_addresses(&self) -> Vec<IpAddr> {
        let Some(inner) = self.inner.as_ref() else { return Vec::new() };
        let mut out = Vec::new();
        for v4 in [true, false] {
            let (any, loopback): (IpAddr, IpAddr) = if v4 {
                (std::net::Ipv4Addr::UNSPECIFIED.into(), std::net::Ipv4Addr::LOCALHOST.into())
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED.into(), std::net::Ipv6Addr::LOCALHOST.into())
            };
            match inner.settings.node_ports(v4) {
                settings::NodePortAddresses::All => out.push(any),
                settings::NodePortAddresses::Cidrs(cidrs) => {
                    for a in inner.node.addresses.iter().chain([&loopback]) {
                        if a.is_ipv4() == v4 && cidrs.iter().any(|n| n.contains(a)) && !out.contains(a) {
                            out.push(*a);
                        }
                    }
                }
            }
        }
        out
    }

    /// The node compiled for, once compiled.
    pub fn node(&self) -> Option<&NodeView> {
        self.inner.as_ref().map(|i| &i.node)
    }

    /// Compiles the whole state from scratch.
    pub fn compile_full(&mut self, state: &ClusterState) -> Result<PolicyDelta, CompileError> {
        let node = select_node(state, self.requested_node.as_deref())?;
        let mut settings = ProxySettings::new(state.kube_proxy.as_ref(), &node);
        settings.external_ip_cidrs = state
            .flowgate
            .as_ref()
            .and_then(|f| f.external_ips.allowed_cidrs.as_ref())
            .map(|cidrs| cidrs.iter().filter_map(|c| parse_cidr_sloppy(c)).map(|n| n.trunc()).collect());
        let mut policy = SwitchPolicy::new();
        for a in &node.addresses {
            policy.host_addresses.insert_addr(*a);
        }
        policy.snat_v4 = node.primary_v4;
        policy.snat_v6 = node.primary_v6;
        let mut delta = PolicyDelta::full();
        // Endpoints keep their port numbers across full compiles (the kernel binds interfaces to
        // them), and across restarts where the agent said what they were.
        let mut hints = std::mem::take(&mut self.port_hints);
        if let Some(old) = &self.inner {
            hints.extend(old.endpoints.iter().map(|(k, id)| (k.clone(), *id)));
        }
        let proxy = proxy::ServiceProxy::new(&node, &settings, &mut policy);
        let mut inner = Inner {
            node,
            settings,
            policy,
            proxy,
            endpoints: FxHashMap::default(),
            outbound: None,
            local: local::LocalClaims::default(),
            policies: policy::PolicyCompiler::default(),
        };
        // Those with a number first, so that no other endpoint takes it.
        let (hinted, others): (Vec<ObjectKey>, Vec<ObjectKey>) =
            state.pods.keys().chain(state.local_endpoints.keys()).cloned().partition(|k| hints.contains_key(k));
        inner.sync_pods(state, &hinted, &hints, &mut delta);
        inner.sync_pods(state, &others, &hints, &mut delta);
        inner.proxy.sync_all(state, &inner.node, &inner.settings, &mut inner.policy, &mut delta);
        for key in state.local_endpoints.keys() {
            inner.local.sync_host_ports(key, state, &inner.node, &mut inner.proxy, &mut inner.policy, &mut delta);
        }
        for name in state.local_load_balancers.keys() {
            inner.local.sync_load_balancer(name, state, &mut inner.proxy, &mut inner.policy, &mut delta);
        }
        inner.sync_outbound_nat(state, &mut delta);
        inner.policies.sync(state, &inner.node, &inner.endpoints, None, &mut inner.policy, &mut delta);
        self.inner = Some(inner);
        Ok(delta)
    }

    /// Applies what changed. Falls back to a full compile before the first one, and when the traced
    /// node or the configuration changed (they shape every rule).
    pub fn update(&mut self, state: &ClusterState, changes: &Changes) -> Result<PolicyDelta, CompileError> {
        let Some(inner) = self.inner.as_mut() else {
            return self.compile_full(state);
        };
        if changes.config || changes.nodes.contains(&inner.node.name) {
            return self.compile_full(state);
        }
        let mut delta = PolicyDelta::default();
        let pods: Vec<ObjectKey> = changes.pods.union(&changes.local_endpoints).cloned().collect();
        inner.sync_pods(state, &pods, &FxHashMap::default(), &mut delta);
        if !changes.local_endpoints.is_empty() {
            // Their OutBoundNAT policies may switch outbound NAT on or off, or change exceptions.
            inner.sync_outbound_nat(state, &mut delta);
        }
        for key in &changes.local_endpoints {
            inner.local.sync_host_ports(key, state, &inner.node, &mut inner.proxy, &mut inner.policy, &mut delta);
        }
        for name in &changes.local_load_balancers {
            inner.local.sync_load_balancer(name, state, &mut inner.proxy, &mut inner.policy, &mut delta);
        }
        let slices: Vec<ObjectKey> = changes.endpoint_slices.iter().cloned().collect();
        let mut services = inner.proxy.slices_changed(state, &slices);
        services.extend(changes.services.iter().cloned());
        if changes.service_cidrs {
            inner.proxy.sync_service_cidrs(state, &mut inner.policy, &mut delta);
            inner.sync_outbound_nat(state, &mut delta);
        }
        for key in &services {
            inner.proxy.sync_service(key, state, &inner.node, &inner.settings, &mut inner.policy, &mut delta);
        }
        if !changes.pods.is_empty()
            || !changes.namespaces.is_empty()
            || !changes.network_policies.is_empty()
            || !changes.local_endpoints.is_empty()
        {
            inner.policies.sync(state, &inner.node, &inner.endpoints, Some(changes), &mut inner.policy, &mut delta);
        }
        Ok(delta)
    }
}

impl Inner {
    /// Adds, updates or removes the endpoint ports of the given pods.
    fn sync_pods(
        &mut self,
        state: &ClusterState,
        pods: &[ObjectKey],
        hints: &FxHashMap<ObjectKey, PortId>,
        delta: &mut PolicyDelta,
    ) {
        for key in pods {
            // An endpoint this node made is what the pod really sends from; else the API's view.
            let want = match state.local_endpoints.get(key) {
                Some(local) => Some(local.ips.clone()).filter(|ips| !ips.is_empty()),
                None => state.pods.get(key).and_then(|p| endpoint_ips(p, &self.node.name)),
            };
            match (self.endpoints.get(key).copied(), want) {
                (Some(id), Some(ips)) => {
                    if self.policy.port(id).map(|p| p.addresses != ips).unwrap_or(true) {
                        self.policy.put_port(
                            id,
                            Some(Port { kind: PortKind::Endpoint { pod: key.to_string() }, addresses: ips }),
                        );
                        delta.ports.insert(id);
                    }
                }
                (Some(id), None) => {
                    self.policy.remove_endpoint(id);
                    self.endpoints.remove(key);
                    delta.ports.insert(id);
                }
                (None, Some(ips)) => {
                    let free =
                        |id: &PortId| *id != PortId::HOST && *id != PortId::UPLINK && self.policy.port(*id).is_none();
                    let id = match hints.get(key).filter(|id| free(id)) {
                        Some(id) => {
                            let port = Port { kind: PortKind::Endpoint { pod: key.to_string() }, addresses: ips };
                            self.policy.put_port(*id, Some(port));
                            *id
                        }
                        None => self.policy.add_endpoint(key.to_string(), ips),
                    };
                    self.endpoints.insert(key.clone(), id);
                    delta.ports.insert(id);
                }
                (None, None) => {}
            }
        }
    }

    /// Outbound NAT: traffic from an endpoint to a destination outside the exceptions (cluster
    /// CIDRs, service CIDRs, the node's pod CIDRs and addresses, and configured ones) leaves with a
    /// node address.
    fn sync_outbound_nat(&mut self, state: &ClusterState, delta: &mut PolicyDelta) {
        let configured = state.flowgate.as_ref().map(|f| &f.outbound_nat).filter(|o| o.enabled);
        let from_endpoints: Vec<(&Vec<IpAddr>, &Vec<IpNet>)> =
            state.local_endpoints.values().filter_map(|e| e.outbound_nat.as_ref().map(|x| (&e.ips, x))).collect();
        let on = configured.is_some() || !from_endpoints.is_empty();
        if !on && self.outbound.is_none() {
            return;
        }
        let mut exceptions = PrefixSet::from_nets(self.settings.cluster_cidrs.iter().cloned());
        let mut sources = PrefixSet::new();
        for (ips, ex) in &from_endpoints {
            for n in ex.iter() {
                exceptions.insert(n.trunc());
            }
            for ip in ips.iter() {
                sources.insert_addr(*ip);
            }
        }
        for n in &self.node.pod_cidrs {
            exceptions.insert(*n);
        }
        for a in &self.node.addresses {
            exceptions.insert_addr(*a);
        }
        for n in proxy::service_cidrs(state) {
            exceptions.insert(n);
        }
        for e in configured.iter().flat_map(|c| &c.exceptions) {
            if let Some(n) = parse_cidr_sloppy(e) {
                exceptions.insert(n.trunc());
            }
        }
        let (exc, src) = match self.outbound {
            Some(ids) => ids,
            None => {
                let ids = (
                    self.policy.add_set("outbound-nat-exceptions", PrefixSet::new()),
                    self.policy.add_set("outbound-nat-sources", PrefixSet::new()),
                );
                self.outbound = Some(ids);
                self.policy.layer_mut(LayerKind::OutboundNat).add_group(RuleGroup {
                    id: GroupId::OutboundNat,
                    priority: 0,
                    index: RuleIndex::Ordered(Vec::new()),
                });
                ids
            }
        };
        if let Some(set) = self.policy.set_mut(exc) {
            set.prefixes = exceptions;
        }
        if let Some(set) = self.policy.set_mut(src) {
            set.prefixes = sources;
        }
        // Every endpoint when flowgate's configuration turns it on for the node; else the
        // endpoints whose network has an OutBoundNAT policy. Exceptions apply to all of them.
        let rules = match (configured.is_some(), on) {
            (true, _) => vec![Rule::new(
                "destination outside the exception list: source NAT to the node address",
                Conditions { dst: Some(AddrMatch::NotIn(exc)), ingress: Some(IngressKind::Endpoint), ..Conditions::any() },
                Action::Snat,
            )],
            (false, true) => vec![Rule::new(
                "endpoint with an OutBoundNAT policy, destination outside the exception list: source NAT to the node address",
                Conditions {
                    src: Some(AddrMatch::In(src)),
                    dst: Some(AddrMatch::NotIn(exc)),
                    ingress: Some(IngressKind::Endpoint),
                    ..Conditions::any()
                },
                Action::Snat,
            )],
            (false, false) => Vec::new(),
        };
        let r = RuleRef { layer: LayerKind::OutboundNat, group: GroupId::OutboundNat, key: RuleKey::Group };
        self.policy.put_rules(&r, Some(rules));
        delta.rules.insert(r);
        delta.sets.insert(exc);
        delta.sets.insert(src);
    }
}

/// The IPs of a pod that gets an endpoint on `node`: scheduled there, not host-network, with an
/// address. `None` otherwise.
pub fn endpoint_ips(pod: &Pod, node: &str) -> Option<Vec<IpAddr>> {
    let spec = pod.spec.as_ref()?;
    if spec.node_name.as_deref() != Some(node) || spec.host_network == Some(true) {
        return None;
    }
    pod_ips(pod)
}

/// A pod's addresses as its status reports them (`podIPs`, then `podIP`), each once; `None` when
/// it has none.
pub(crate) fn pod_ips(pod: &Pod) -> Option<Vec<IpAddr>> {
    let status = pod.status.as_ref()?;
    let mut ips: Vec<IpAddr> = Vec::new();
    for ip in status.pod_ips.iter().flatten().map(|p| p.ip.as_str()).chain(status.pod_ip.as_deref()) {
        if let Some(ip) = parse_ip_sloppy(ip) {
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
    }
    (!ips.is_empty()).then_some(ips)
}
