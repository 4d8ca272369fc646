//! The service proxy: Services and their endpoints compiled into the load-balancing and
//! service-filter layers, with the semantics of kube-proxy in nftables mode
//! (pkg/proxy/nftables/proxier.go, syncProxyRules). Each kube-proxy chain becomes a short,
//! first-match rule list under the destination it serves:
//!
//! | kube-proxy | flowgate |
//! | --- | --- |
//! | `service-ips` map → `service-…` chain (ClusterIP) | `lb` layer, destination (clusterIP, proto, port) |
//! | `service-ips` map → `external-…` chain (externalIPs, LB IPs) | `lb` layer, destination (IP, proto, port) |
//! | `service-nodeports` map on NodePort addresses | `lb` layer, (proto, port) on the `nodeport-addresses` set |
//! | `firewall-ips` (loadBalancerSourceRanges) | first rule under each LB IP destination |
//! | `no-endpoint-services` / `no-endpoint-nodeports` | reject/drop rules under the same destinations |
//! | `cluster-ips-check` (`cluster-ips` set, service CIDRs) | `service-filter` layer |
//! | `mark-for-masquerade` | `masquerade` / `hairpin` flags of the DNAT action |
//!
//! ## One owner per destination
//!
//! Several Services may name the same address and port (the API allows it: an externalIP is any
//! string a tenant writes). Exactly one claim owns each destination (and each NodePort), chosen
//! deterministically: a Service's own ClusterIP first, then the node's host ports and load
//! balancers, then externalIPs and load-balancer IPs; within one kind the oldest Service
//! (`metadata.creationTimestamp`; none counts as newest), then namespace/name. The others are
//! reported as conflicting ([`ServiceProxy::problems`]) and programmed nowhere; the sync goes on.
//!
//! ## Addresses a Service may not claim
//!
//! An externalIP or load-balancer IP is refused (reported, the Service's other addresses still
//! programmed) when it would capture traffic it does not own: any Service's ClusterIP (on any
//! port), an address in a ServiceCIDR, the cluster's pod CIDRs (`clusterCIDR`) or the node's
//! podCIDRs, loopback, link-local, unspecified, multicast or broadcast addresses; and, when
//! `FlowgateConfiguration.externalIPs.allowedCIDRs` is set, any address outside it. The node's own
//! addresses are always allowed (kube-proxy's users and tests rely on them). A Service with more
//! than [`MAX_EXTERNAL_DESTINATIONS`] external destinations (addresses × ports) keeps its
//! ClusterIP and NodePorts and has all its external addresses refused.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use flowgate_cluster::{ClusterState, ObjectKey};
use flowgate_switch::layer::DestinationKey;
use flowgate_switch::{
    Action, AddrMatch, BackendSet, BackendSetId, Conditions, Dnat, DropReason, GroupId, LayerKind, PolicyDelta,
    PrefixSet, Proto, Rule, RuleGroup, RuleIndex, RuleKey, RuleRef, Selection, SetId, SwitchPolicy,
};
use ipnet::IpNet;
use rustc_hash::FxHashMap;

use crate::endpoints::{categorize, endpoints, service_of_slice};
use crate::node::NodeView;
use crate::services::{service_ports, ServicePort};
use crate::settings::{LocalMatch, NodePortAddresses, ProxySettings};

const SERVICE_IPS: GroupId = GroupId::ServiceIps;
const SERVICE_NODEPORTS: GroupId = GroupId::ServiceNodePorts;
const CLUSTER_IPS_CHECK: GroupId = GroupId::ClusterIpsCheck;

/// The most externalIP and load-balancer destinations (addresses × ports) one Service may have.
pub const MAX_EXTERNAL_DESTINATIONS: usize = 10_000;

/// What kind of claim a Service (or the node) makes on a destination; the first kind owns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum ClaimKind {
    /// A Service's own ClusterIP.
    ClusterIp,
    /// A host port or an HNS load balancer of this node.
    Local,
    /// A Service's externalIP.
    ExternalIp,
    /// A Service's load-balancer ingress IP.
    LoadBalancer,
    /// A Service's NodePort.
    NodePort,
}

impl ClaimKind {
    fn rank(self) -> u8 {
        match self {
            ClaimKind::ClusterIp => 0,
            ClaimKind::Local => 1,
            ClaimKind::ExternalIp | ClaimKind::LoadBalancer | ClaimKind::NodePort => 2,
        }
    }

    fn name(self) -> &'static str {
        match self {
            ClaimKind::ClusterIp => "clusterIP",
            ClaimKind::Local => "host port or load balancer",
            ClaimKind::ExternalIp => "externalIP",
            ClaimKind::LoadBalancer => "loadBalancer IP",
            ClaimKind::NodePort => "nodePort",
        }
    }

    /// Whether the address is one a tenant chose (and so may be refused).
    fn external(self) -> bool {
        matches!(self, ClaimKind::ExternalIp | ClaimKind::LoadBalancer)
    }
}

/// One owner's claim on a destination or NodePort.
#[derive(Clone, Debug)]
struct Claim {
    kind: ClaimKind,
    /// Seconds since the epoch of the owner's creation; `i64::MAX` when unknown (newest).
    created: i64,
    rules: Vec<Rule>,
}

/// Where one Service's ports put the claims they make.
struct NewClaims<'a> {
    destinations: &'a mut BTreeMap<DestinationKey, Claim>,
    node_ports: &'a mut BTreeMap<(Proto, u16), Claim>,
    /// The Service's creation, for every claim.
    created: i64,
}

/// An object the data plane does not carry as written, and why.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Problem {
    /// The object, as a person names it (`Service ns/name`, `hostport ns/pod`).
    pub object: String,
    /// What is not programmed, and why.
    pub message: String,
}

/// Where Services' externalIPs and load-balancer IPs may point (see the module's documentation).
#[derive(Clone, Debug, Default)]
struct ExternalGuard {
    node_addresses: Vec<IpAddr>,
    /// Pod CIDRs: the cluster's and this node's.
    pod_cidrs: Vec<IpNet>,
    service_cidrs: Vec<IpNet>,
    allowed: Option<Vec<IpNet>>,
}

impl ExternalGuard {
    /// Why `ip` may not be claimed as an external address, if it may not (ClusterIPs are checked
    /// by the caller, who knows them).
    fn refusal(&self, ip: IpAddr) -> Option<String> {
        if self.node_addresses.contains(&ip) {
            return None;
        }
        if let Some(allowed) = &self.allowed {
            if !allowed.iter().any(|n| n.contains(&ip)) {
                return Some("outside FlowgateConfiguration externalIPs.allowedCIDRs".into());
            }
        }
        let local_only = match ip {
            IpAddr::V4(a) => {
                a.is_loopback() || a.is_link_local() || a.is_unspecified() || a.is_multicast() || a.is_broadcast()
            }
            IpAddr::V6(a) => {
                a.is_loopback()
                    || a.is_unspecified()
                    || a.is_multicast()
                    || a.is_unicast_link_local()
                    || a.to_ipv4_mapped().is_some()
            }
        };
        if local_only {
            return Some("a loopback, link-local, unspecified, multicast or broadcast address".into());
        }
        if let Some(n) = self.service_cidrs.iter().find(|n| n.contains(&ip)) {
            return Some(format!("inside the ServiceCIDR {n}"));
        }
        if let Some(n) = self.pod_cidrs.iter().find(|n| n.contains(&ip)) {
            return Some(format!("inside the pod CIDR {n}"));
        }
        None
    }
}

/// How a person names the owner of a claim.
fn owner_name(owner: &ObjectKey) -> String {
    match owner.namespace.strip_prefix(' ') {
        Some(kind) => format!("{kind} {}", owner.name),
        None => format!("Service {owner}"),
    }
}

fn creation_seconds(svc: &flowgate_cluster::k8s_openapi::api::core::v1::Service) -> i64 {
    svc.metadata.creation_timestamp.as_ref().map(|t| t.0.as_second()).unwrap_or(i64::MAX)
}

/// What one Service contributed to the policy, so that it can be taken back exactly.
#[derive(Debug, Default)]
struct Fragment {
    destinations: Vec<DestinationKey>,
    node_ports: Vec<(Proto, u16)>,
    backend_sets: Vec<BackendSetId>,
    sets: Vec<SetId>,
    cluster_ips: Vec<IpAddr>,
}

/// The service proxy's compiled state: which Service claims which destination, and the address
/// sets shared by all Services. Updating one Service touches only what it claims.
#[derive(Debug)]
pub struct ServiceProxy {
    local: Option<LocalMatch>,
    node_local: SetId,
    all_v4: SetId,
    all_v6: SetId,
    cluster_ips_set: SetId,
    service_cidrs_set: SetId,
    fragments: FxHashMap<ObjectKey, Fragment>,
    /// Claims on each destination, per owner (one owns it; see the module's documentation).
    destinations: FxHashMap<DestinationKey, BTreeMap<ObjectKey, Claim>>,
    /// The destinations claimed on each address (to re-decide them when a ClusterIP comes or goes).
    destinations_of_ip: FxHashMap<IpAddr, BTreeSet<DestinationKey>>,
    node_ports: FxHashMap<(Proto, u16), BTreeMap<ObjectKey, Claim>>,
    cluster_ips: FxHashMap<IpAddr, BTreeSet<ObjectKey>>,
    guard: ExternalGuard,
    /// Claims not programmed (conflicting or refused), by what they claimed.
    problems: FxHashMap<DestinationKey, Vec<Problem>>,
    node_port_problems: FxHashMap<(Proto, u16), Vec<Problem>>,
    /// Services refused as a whole part (too many external destinations).
    service_problems: FxHashMap<ObjectKey, Problem>,
    slices_of_service: FxHashMap<ObjectKey, BTreeSet<ObjectKey>>,
    service_of_slice: FxHashMap<ObjectKey, ObjectKey>,
    /// The health check node ports of Services that have one, kept as their Services are synced.
    health_checks: BTreeMap<ObjectKey, HealthCheck>,
}

/// A Service's `healthCheckNodePort` and what its answer depends on: the number of this node's
/// ready endpoints, per IP family (kube-proxy's `LocalReadyEndpoints`: distinct addresses of the
/// Service's endpoints that are ready and on this node, over all its ports).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    /// The Service.
    pub service: ObjectKey,
    /// Its health check node port.
    pub port: u16,
    /// Local ready endpoints of the Service's IPv4 ports; `None` when it has no IPv4 ClusterIP.
    pub local_endpoints_v4: Option<usize>,
    /// The same for IPv6.
    pub local_endpoints_v6: Option<usize>,
}

impl HealthCheck {
    /// The count of local ready endpoints of one family (`None` when the Service is not of it).
    pub fn local_endpoints(&self, v4: bool) -> Option<usize> {
        if v4 {
            self.local_endpoints_v4
        } else {
            self.local_endpoints_v6
        }
    }
}

impl ServiceProxy {
    /// Creates the shared sets and the (empty) rule groups in `policy`.
    pub fn new(node: &NodeView, settings: &ProxySettings, policy: &mut SwitchPolicy) -> ServiceProxy {
        let local_set = match &settings.local {
            crate::settings::LocalDetector::Cidrs(p) => Some(policy.add_set("local-traffic", p.clone())),
            _ => None,
        };
        let mut node_local = PrefixSet::new();
        for a in &node.addresses {
            node_local.insert_addr(*a);
        }
        for lo in ["127.0.0.0/8", "::1/128"] {
            if let Ok(n) = lo.parse::<IpNet>() {
                node_local.insert(n);
            }
        }
        // NodePorts are served on these addresses (never loopback in nftables mode).
        let mut nodeport_addrs = PrefixSet::new();
        for a in node.addresses.iter().filter(|a| !a.is_loopback()) {
            let serves = match settings.node_ports(a.is_ipv4()) {
                NodePortAddresses::All => true,
                NodePortAddresses::Cidrs(c) => c.iter().any(|n| n.contains(a)),
            };
            if serves {
                nodeport_addrs.insert_addr(*a);
            }
        }
        let nodeport_set = policy.add_set("nodeport-addresses", nodeport_addrs);
        let proxy = ServiceProxy {
            local: LocalMatch::new(&settings.local, local_set),
            node_local: policy.add_set("node-local", node_local),
            all_v4: policy.add_set("all-ipv4", PrefixSet::from_nets([IpNet::V4(Default::default())])),
            all_v6: policy.add_set("all-ipv6", PrefixSet::from_nets([IpNet::V6(Default::default())])),
            cluster_ips_set: policy.add_set("cluster-ips", PrefixSet::new()),
            service_cidrs_set: policy.add_set("service-cidrs", PrefixSet::new()),
            fragments: FxHashMap::default(),
            destinations: FxHashMap::default(),
            destinations_of_ip: FxHashMap::default(),
            node_ports: FxHashMap::default(),
            cluster_ips: FxHashMap::default(),
            guard: ExternalGuard {
                node_addresses: node.addresses.clone(),
                pod_cidrs: settings.cluster_cidrs.iter().chain(&node.pod_cidrs).map(IpNet::trunc).collect(),
                service_cidrs: Vec::new(),
                allowed: settings.external_ip_cidrs.clone(),
            },
            problems: FxHashMap::default(),
            node_port_problems: FxHashMap::default(),
            service_problems: FxHashMap::default(),
            slices_of_service: FxHashMap::default(),
            service_of_slice: FxHashMap::default(),
            health_checks: BTreeMap::new(),
        };
        let lb = policy.layer_mut(LayerKind::Lb);
        lb.add_group(RuleGroup { id: SERVICE_IPS, priority: 100, index: RuleIndex::Destination(FxHashMap::default()) });
        lb.add_group(RuleGroup {
            id: SERVICE_NODEPORTS,
            priority: 200,
            index: RuleIndex::PortOnAddresses { addresses: nodeport_set, rules: FxHashMap::default() },
        });
        let filter_rules = vec![
            Rule::new(
                "ClusterIP, but no Service port of that protocol and number",
                Conditions { dst: Some(AddrMatch::In(proxy.cluster_ips_set)), ..Conditions::any() },
                Action::Reject(DropReason::UndefinedServicePort),
            ),
            Rule::new(
                "address in a ServiceCIDR that no Service holds",
                Conditions { dst: Some(AddrMatch::In(proxy.service_cidrs_set)), ..Conditions::any() },
                Action::Drop(DropReason::UnallocatedServiceIp),
            ),
        ];
        policy.layer_mut(LayerKind::ServiceFilter).add_group(RuleGroup {
            id: CLUSTER_IPS_CHECK,
            priority: 100,
            index: RuleIndex::Ordered(filter_rules),
        });
        proxy
    }

    /// Compiles every Service of `state`.
    pub fn sync_all(
        &mut self,
        state: &ClusterState,
        node: &NodeView,
        settings: &ProxySettings,
        policy: &mut SwitchPolicy,
        delta: &mut PolicyDelta,
    ) {
        let slices: Vec<ObjectKey> = state.endpoint_slices.keys().cloned().collect();
        self.slices_changed(state, &slices);
        self.sync_service_cidrs(state, policy, delta);
        for key in state.services.keys() {
            self.sync_service(key, state, node, settings, policy, delta);
        }
    }

    /// Records EndpointSlice changes; returns the Services whose endpoints may have changed.
    pub fn slices_changed(&mut self, state: &ClusterState, slices: &[ObjectKey]) -> BTreeSet<ObjectKey> {
        let mut affected = BTreeSet::new();
        for key in slices {
            if let Some(old) = self.service_of_slice.remove(key) {
                if let Some(set) = self.slices_of_service.get_mut(&old) {
                    set.remove(key);
                    if set.is_empty() {
                        self.slices_of_service.remove(&old);
                    }
                }
                affected.insert(old);
            }
            if let Some(svc) = state.endpoint_slices.get(key).and_then(|s| service_of_slice(key, s)) {
                self.slices_of_service.entry(svc.clone()).or_default().insert(key.clone());
                self.service_of_slice.insert(key.clone(), svc.clone());
                affected.insert(svc);
            }
        }
        affected
    }

    /// Re-reads the ServiceCIDRs (addresses in them that no Service holds are dropped).
    pub fn sync_service_cidrs(&mut self, state: &ClusterState, policy: &mut SwitchPolicy, delta: &mut PolicyDelta) {
        let mut cidrs = PrefixSet::new();
        let nets: Vec<IpNet> = service_cidrs(state).collect();
        for n in &nets {
            cidrs.insert(*n);
        }
        if let Some(set) = policy.set_mut(self.service_cidrs_set) {
            set.prefixes = cidrs;
            delta.sets.insert(self.service_cidrs_set);
        }
        if nets != self.guard.service_cidrs {
            self.guard.service_cidrs = nets;
            // External addresses are judged against the ServiceCIDRs: judge them again.
            let external: Vec<DestinationKey> = self
                .destinations
                .iter()
                .filter(|(_, claims)| claims.values().any(|c| c.kind.external()))
                .map(|(d, _)| *d)
                .collect();
            for d in external {
                self.reprogram_destination(d, policy, delta);
            }
        }
    }

    /// Every claim that is not programmed (conflicting with an owner, or refused), sorted.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out: Vec<Problem> =
            self.problems.values().chain(self.node_port_problems.values()).flatten().cloned().collect();
        out.extend(self.service_problems.values().cloned());
        out.sort();
        out
    }

    /// The health check node ports of the Services that have one (type LoadBalancer with
    /// `externalTrafficPolicy: Local`), by Service.
    pub fn health_checks(&self) -> impl Iterator<Item = &HealthCheck> {
        self.health_checks.values()
    }

    /// Recompiles one Service (removing it if it no longer exists).
    pub fn sync_service(
        &mut self,
        key: &ObjectKey,
        state: &ClusterState,
        node: &NodeView,
        settings: &ProxySettings,
        policy: &mut SwitchPolicy,
        delta: &mut PolicyDelta,
    ) {
        let mut touched_dest: BTreeSet<DestinationKey> = BTreeSet::new();
        let mut touched_np: BTreeSet<(Proto, u16)> = BTreeSet::new();
        let mut touched_ips: BTreeSet<IpAddr> = BTreeSet::new();
        self.health_checks.remove(key);
        if let Some(old) = self.fragments.remove(key) {
            for d in old.destinations {
                if let Some(claims) = self.destinations.get_mut(&d) {
                    claims.remove(key);
                }
                touched_dest.insert(d);
            }
            for n in old.node_ports {
                if let Some(claims) = self.node_ports.get_mut(&n) {
                    claims.remove(key);
                }
                touched_np.insert(n);
            }
            for id in old.backend_sets {
                policy.remove_backend_set(id);
                delta.backend_sets.insert(id);
            }
            for id in old.sets {
                policy.remove_set(id);
                delta.sets.insert(id);
            }
            for ip in old.cluster_ips {
                touched_ips.insert(ip);
                if let Some(c) = self.cluster_ips.get_mut(&ip) {
                    c.remove(key);
                }
            }
        }
        if let Some(svc) = state.services.get(key) {
            let mut frag = Fragment::default();
            let mut rules_dest: BTreeMap<DestinationKey, Claim> = BTreeMap::new();
            let mut rules_np: BTreeMap<(Proto, u16), Claim> = BTreeMap::new();
            let created = creation_seconds(svc);
            let slice_keys = self.slices_of_service.get(key).cloned().unwrap_or_default();
            let mut ports: Vec<ServicePort> =
                [true, false].into_iter().flat_map(|v4| service_ports(key, svc, v4)).collect();
            let external: usize = ports.iter().map(|sp| sp.external_ips.len() + sp.lb_ips.len()).sum();
            if external > MAX_EXTERNAL_DESTINATIONS {
                // Addresses × ports grow as a product (3,000 of each is 9 million destinations
                // in an object the API accepts): past the limit the Service keeps its ClusterIP
                // and NodePorts, and its external addresses are refused.
                for sp in &mut ports {
                    sp.external_ips.clear();
                    sp.lb_ips.clear();
                }
                self.service_problems.insert(
                    key.clone(),
                    Problem {
                        object: owner_name(key),
                        message: format!(
                            "{external} externalIP and loadBalancer destinations (addresses × ports) refused: \
                             more than {MAX_EXTERNAL_DESTINATIONS}"
                        ),
                    },
                );
            } else {
                self.service_problems.remove(key);
            }
            // Local ready endpoint addresses per family, for the health check node port.
            let mut local_ready: [Option<BTreeSet<IpAddr>>; 2] = [None, None];
            let health_check_port = ports.iter().find_map(|sp| sp.health_check_node_port);
            for sp in ports {
                let slices = slice_keys.iter().filter_map(|k| state.endpoint_slices.get(k));
                let eps = endpoints(slices, &sp, &node.name);
                if health_check_port.is_some() {
                    let family = &mut local_ready[usize::from(sp.cluster_ip.is_ipv6())];
                    let ips = family.get_or_insert_with(BTreeSet::new);
                    ips.extend(eps.iter().filter(|e| e.local && e.ready).map(|e| e.addr.ip()));
                }
                let claims = NewClaims { destinations: &mut rules_dest, node_ports: &mut rules_np, created };
                self.compile_port(&sp, &eps, node, settings, policy, &mut frag, claims);
            }
            for (d, claim) in rules_dest {
                self.destinations.entry(d).or_default().insert(key.clone(), claim);
                self.destinations_of_ip.entry(d.0).or_default().insert(d);
                frag.destinations.push(d);
                touched_dest.insert(d);
            }
            for (n, claim) in rules_np {
                self.node_ports.entry(n).or_default().insert(key.clone(), claim);
                frag.node_ports.push(n);
                touched_np.insert(n);
            }
            for ip in &frag.cluster_ips {
                self.cluster_ips.entry(*ip).or_default().insert(key.clone());
                touched_ips.insert(*ip);
            }
            delta.backend_sets.extend(frag.backend_sets.iter().copied());
            delta.sets.extend(frag.sets.iter().copied());
            self.fragments.insert(key.clone(), frag);
            if let Some(port) = health_check_port {
                let [v4, v6] = local_ready;
                self.health_checks.insert(
                    key.clone(),
                    HealthCheck {
                        service: key.clone(),
                        port,
                        local_endpoints_v4: v4.map(|s| s.len()),
                        local_endpoints_v6: v6.map(|s| s.len()),
                    },
                );
            }
        } else {
            self.service_problems.remove(key);
        }
        for n in touched_np {
            let (owned, problems) = decide(self.node_ports.get(&n), |_| None, &|| {
                format!("{} {}/{}", ClaimKind::NodePort.name(), n.1, n.0)
            });
            if self.node_ports.get(&n).is_none_or(|c| c.is_empty()) {
                self.node_ports.remove(&n);
            }
            set_problems(&mut self.node_port_problems, n, problems);
            let r = RuleRef { layer: LayerKind::Lb, group: SERVICE_NODEPORTS, key: RuleKey::Port(n.0, n.1) };
            policy.put_rules(&r, owned);
            delta.rules.insert(r);
        }
        if !touched_ips.is_empty() {
            if let Some(set) = policy.set_mut(self.cluster_ips_set) {
                // Only a ClusterIP that came or went changes the set (an endpoint change touches
                // its Service's addresses without changing them).
                let mut changed = false;
                for ip in touched_ips {
                    let came_or_went = if self.cluster_ips.get(&ip).is_some_and(|owners| !owners.is_empty()) {
                        set.prefixes.insert_addr(ip)
                    } else {
                        self.cluster_ips.remove(&ip);
                        set.prefixes.remove_addr(ip)
                    };
                    if came_or_went {
                        changed = true;
                        // An external claim on this address is refused or admitted now.
                        touched_dest.extend(self.destinations_of_ip.get(&ip).into_iter().flatten().copied());
                    }
                }
                if changed {
                    delta.sets.insert(self.cluster_ips_set);
                }
            }
        }
        for d in touched_dest {
            self.reprogram_destination(d, policy, delta);
        }
    }

    /// Claims an exact destination for `owner`, something other than a Service (a host port), or
    /// releases it (`None`). Claims of one destination are merged in owner order, as Services'.
    pub(crate) fn claim_destination(
        &mut self,
        d: DestinationKey,
        owner: &ObjectKey,
        rules: Option<Vec<Rule>>,
        policy: &mut SwitchPolicy,
        delta: &mut PolicyDelta,
    ) {
        match rules {
            Some(rules) => {
                let claim = Claim { kind: ClaimKind::Local, created: i64::MAX, rules };
                self.destinations.entry(d).or_default().insert(owner.clone(), claim);
                self.destinations_of_ip.entry(d.0).or_default().insert(d);
            }
            None => {
                if let Some(c) = self.destinations.get_mut(&d) {
                    c.remove(owner);
                }
            }
        }
        self.reprogram_destination(d, policy, delta);
    }

    /// Writes the owner's rules of destination `d` into the policy (none left: the key goes) and
    /// records the claims left out.
    fn reprogram_destination(&mut self, d: DestinationKey, policy: &mut SwitchPolicy, delta: &mut PolicyDelta) {
        let guard = &self.guard;
        let cluster_ip = self.cluster_ips.get(&d.0).is_some_and(|o| !o.is_empty());
        let refusal = |c: &Claim| {
            if !c.kind.external() {
                None
            } else if cluster_ip {
                Some("the address is a Service's ClusterIP".to_string())
            } else {
                guard.refusal(d.0)
            }
        };
        let (owned, problems) =
            decide(self.destinations.get(&d), refusal, &|| format!("{}:{}/{}", fmt_ip(d.0), d.2, d.1));
        if self.destinations.get(&d).is_none_or(|c| c.is_empty()) {
            self.destinations.remove(&d);
            if let Some(set) = self.destinations_of_ip.get_mut(&d.0) {
                set.remove(&d);
                if set.is_empty() {
                    self.destinations_of_ip.remove(&d.0);
                }
            }
        }
        set_problems(&mut self.problems, d, problems);
        let r = RuleRef { layer: LayerKind::Lb, group: SERVICE_IPS, key: RuleKey::Destination(d) };
        policy.put_rules(&r, owned);
        delta.rules.insert(r);
    }

    /// Compiles one service port into rules under its destinations.
    #[allow(clippy::too_many_arguments)]
    fn compile_port(
        &self,
        sp: &ServicePort,
        eps: &[crate::endpoints::Endpoint],
        node: &NodeView,
        settings: &ProxySettings,
        policy: &mut SwitchPolicy,
        frag: &mut Fragment,
        claims: NewClaims<'_>,
    ) {
        let NewClaims { destinations: rules_dest, node_ports: rules_np, created } = claims;
        let claim = |kind, rules| Claim { kind, created, rules };
        let name = sp.name();
        let cat = categorize(eps, sp, &node.name, node.zone(), settings.prefer_same_node);
        let selection = match sp.affinity_timeout {
            Some(timeout_seconds) => Selection::ClientIp { timeout_seconds },
            None => Selection::Random,
        };
        let mut backend_set = |policy: &mut SwitchPolicy, which: &str, backends: &[std::net::SocketAddr]| {
            (!backends.is_empty()).then(|| {
                let id = policy.add_backend_set(BackendSet {
                    name: format!("{name} ({which})").into(),
                    backends: backends.to_vec(),
                    selection,
                });
                frag.backend_sets.push(id);
                id
            })
        };
        let cluster_set = backend_set(policy, "cluster", &cat.cluster);
        let local_set = backend_set(policy, "local", &cat.local);
        let dnat = |set, masquerade| Action::Dnat(Dnat { backends: set, masquerade, hairpin: true });
        let topo = if cat.topology.is_empty() { String::new() } else { format!(", topology {}", cat.topology) };

        // Internal traffic (the ClusterIP).
        frag.cluster_ips.push(sp.cluster_ip);
        let internal = if sp.internal_local { local_set } else { cluster_set };
        let mut rules = Vec::new();
        let what = format!("svc {name} clusterIP {}:{}/{}", fmt_ip(sp.cluster_ip), sp.port, sp.proto);
        match internal {
            Some(set) => {
                let n = if sp.internal_local { cat.local.len() } else { cat.cluster.len() };
                let policy_name = if sp.internal_local { "local" } else { "cluster" };
                if settings.masquerade_all {
                    rules.push(Rule::new(
                        format!("{what} -> {n} {policy_name} endpoints{topo}, masqueradeAll"),
                        Conditions::any(),
                        dnat(set, true),
                    ));
                } else {
                    if let Some(local) = &self.local {
                        for c in &local.not_local {
                            rules.push(Rule::new(
                                format!("{what} -> {n} {policy_name} endpoints{topo}, masquerade (not local traffic)"),
                                c.clone(),
                                dnat(set, true),
                            ));
                        }
                    }
                    rules.push(Rule::new(
                        format!("{what} -> {n} {policy_name} endpoints{topo}"),
                        Conditions::any(),
                        dnat(set, false),
                    ));
                }
            }
            None if !cat.has_any => rules.push(Rule::new(
                format!("{what} has no endpoints: reject"),
                Conditions::any(),
                Action::Reject(DropReason::NoEndpoints),
            )),
            None => rules.push(Rule::new(
                format!("{what}: internalTrafficPolicy Local and no local endpoint: drop"),
                Conditions::any(),
                Action::Drop(DropReason::NoLocalEndpoints),
            )),
        }
        rules_dest.insert((sp.cluster_ip, sp.proto, sp.port), claim(ClaimKind::ClusterIp, rules));

        // External traffic: externalIPs, load-balancer IPs, NodePort.
        let external = |what: &str| -> Vec<Rule> {
            let mut rules = Vec::new();
            if !cat.has_any {
                rules.push(Rule::new(
                    format!("{what} has no endpoints: reject"),
                    Conditions::any(),
                    Action::Reject(DropReason::NoEndpoints),
                ));
                return rules;
            }
            let Some(cluster) = cluster_set else {
                return rules;
            };
            if !sp.external_local {
                rules.push(Rule::new(
                    format!(
                        "{what} -> {} cluster endpoints{topo}, masquerade (externalTrafficPolicy Cluster)",
                        cat.cluster.len()
                    ),
                    Conditions::any(),
                    dnat(cluster, true),
                ));
                return rules;
            }
            if let Some(local) = &self.local {
                for c in &local.local {
                    rules.push(Rule::new(
                        format!("{what}: pod traffic short-circuits to {} cluster endpoints{topo}", cat.cluster.len()),
                        c.clone(),
                        dnat(cluster, false),
                    ));
                }
            }
            rules.push(Rule::new(
                format!(
                    "{what}: traffic from the node goes to {} cluster endpoints{topo}, masquerade",
                    cat.cluster.len()
                ),
                Conditions::src(AddrMatch::In(self.node_local)),
                dnat(cluster, true),
            ));
            match local_set {
                Some(set) => rules.push(Rule::new(
                    format!("{what} -> {} local endpoints (externalTrafficPolicy Local)", cat.local.len()),
                    Conditions::any(),
                    dnat(set, false),
                )),
                None => rules.push(Rule::new(
                    format!("{what}: externalTrafficPolicy Local and no local endpoint: drop"),
                    Conditions::any(),
                    Action::Drop(DropReason::NoLocalEndpoints),
                )),
            }
            rules
        };

        for ip in &sp.external_ips {
            let what = format!("svc {name} externalIP {}:{}/{}", fmt_ip(*ip), sp.port, sp.proto);
            // (Its own ClusterIP stays its ClusterIP.)
            rules_dest.entry((*ip, sp.proto, sp.port)).or_insert_with(|| claim(ClaimKind::ExternalIp, external(&what)));
        }

        let firewall: Option<SetId> = (!sp.lb_ips.is_empty() && !sp.source_ranges.is_empty()).then(|| {
            let mut allowed = PrefixSet::from_nets(sp.source_ranges.iter().cloned());
            // A range holding the node's IP also admits the LB IPs as sources (requests from the
            // node to a VIP it holds locally loop back with the VIP as source).
            if let Some(node_ip) = node.primary(sp.cluster_ip.is_ipv4()) {
                if sp.source_ranges.iter().any(|r| r.contains(&node_ip)) {
                    for ip in &sp.lb_ips {
                        allowed.insert_addr(*ip);
                    }
                }
            }
            let id = policy.add_set(format!("{name} source ranges"), allowed);
            frag.sets.push(id);
            id
        });
        for ip in &sp.lb_ips {
            let what = format!("svc {name} loadBalancer {}:{}/{}", fmt_ip(*ip), sp.port, sp.proto);
            let mut rules = Vec::new();
            if let Some(fw) = firewall {
                rules.push(Rule::new(
                    format!("{what}: source outside loadBalancerSourceRanges: drop"),
                    Conditions::src(AddrMatch::NotIn(fw)),
                    Action::Drop(DropReason::SourceRangeDenied),
                ));
            }
            rules.extend(external(&what));
            rules_dest.entry((*ip, sp.proto, sp.port)).or_insert_with(|| claim(ClaimKind::LoadBalancer, rules));
        }

        if let Some(np) = sp.node_port {
            let what = format!("svc {name} nodePort {np}/{}", sp.proto);
            let family = if sp.cluster_ip.is_ipv4() { self.all_v4 } else { self.all_v6 };
            let entry = rules_np.entry((sp.proto, np)).or_insert_with(|| claim(ClaimKind::NodePort, Vec::new()));
            for mut r in external(&what) {
                r.conditions.dst = Some(AddrMatch::In(family));
                entry.rules.push(r);
            }
        }
    }
}

/// Decides who owns a key: the owner's rules (`None` when nobody may claim it), and a problem for
/// every other claim (refused by `refusal`, or conflicting with the owner). `what` names the key.
fn decide(
    claims: Option<&BTreeMap<ObjectKey, Claim>>,
    refusal: impl Fn(&Claim) -> Option<String>,
    what: &dyn Fn() -> String,
) -> (Option<Vec<Rule>>, Vec<Problem>) {
    let Some(claims) = claims.filter(|c| !c.is_empty()) else { return (None, Vec::new()) };
    let mut problems = Vec::new();
    let mut admitted: Vec<(&ObjectKey, &Claim)> = Vec::new();
    for (owner, c) in claims {
        match refusal(c) {
            Some(why) => problems.push(Problem {
                object: owner_name(owner),
                message: format!("{} {} refused: {why}", c.kind.name(), what()),
            }),
            None => admitted.push((owner, c)),
        }
    }
    let Some(&(winner, won)) = admitted.iter().min_by_key(|(o, c)| (c.kind.rank(), c.created, *o)) else {
        return (None, problems);
    };
    for (owner, c) in admitted.iter().filter(|(o, _)| *o != winner) {
        let why = if won.kind.rank() < c.kind.rank() {
            format!("its {} comes first", won.kind.name())
        } else if won.created < c.created {
            "it is older".to_string()
        } else {
            "it sorts first by namespace/name".to_string()
        };
        problems.push(Problem {
            object: owner_name(owner),
            message: format!(
                "{} {} conflicts with {}, which owns it ({why})",
                c.kind.name(),
                what(),
                owner_name(winner)
            ),
        });
    }
    (Some(won.rules.clone()), problems)
}

fn set_problems<K: std::hash::Hash + Eq>(all: &mut FxHashMap<K, Vec<Problem>>, key: K, problems: Vec<Problem>) {
    if problems.is_empty() {
        all.remove(&key);
    } else {
        all.insert(key, problems);
    }
}

pub(crate) fn fmt_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    }
}

/// The prefixes of every ServiceCIDR (host bits cleared; unreadable ones skipped, as validation
/// reported them).
pub(crate) fn service_cidrs(state: &ClusterState) -> impl Iterator<Item = IpNet> + '_ {
    state
        .service_cidrs
        .values()
        .flat_map(|sc| sc.spec.as_ref().and_then(|s| s.cidrs.as_ref()).into_iter().flatten())
        .filter_map(|c| flowgate_cluster::parse_cidr_sloppy(c))
        .map(|n| n.trunc())
}
