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

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use flowgate_cluster::{ClusterState, ObjectKey};
use flowgate_switch::layer::DestinationKey;
use flowgate_switch::{
    Action, AddrMatch, BackendSet, BackendSetId, Conditions, Dnat, DropReason, LayerKind, PolicyDelta, PrefixSet,
    Proto, Rule, RuleGroup, RuleIndex, RuleKey, RuleRef, Selection, SetId, SwitchPolicy,
};
use ipnet::IpNet;
use rustc_hash::FxHashMap;

use crate::endpoints::{categorize, endpoints, service_of_slice};
use crate::node::NodeView;
use crate::services::{service_ports, ServicePort};
use crate::settings::{LocalMatch, NodePortAddresses, ProxySettings};

const SERVICE_IPS: &str = "service-ips";
const SERVICE_NODEPORTS: &str = "service-nodeports";
const CLUSTER_IPS_CHECK: &str = "cluster-ips-check";

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
    /// Rules under each destination, per claiming Service (first in name order wins a conflict).
    destinations: FxHashMap<DestinationKey, BTreeMap<ObjectKey, Vec<Rule>>>,
    node_ports: FxHashMap<(Proto, u16), BTreeMap<ObjectKey, Vec<Rule>>>,
    cluster_ips: FxHashMap<IpAddr, BTreeSet<ObjectKey>>,
    slices_of_service: FxHashMap<ObjectKey, BTreeSet<ObjectKey>>,
    service_of_slice: FxHashMap<ObjectKey, ObjectKey>,
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
            node_ports: FxHashMap::default(),
            cluster_ips: FxHashMap::default(),
            slices_of_service: FxHashMap::default(),
            service_of_slice: FxHashMap::default(),
        };
        let lb = policy.layer_mut(LayerKind::Lb);
        lb.add_group(RuleGroup {
            name: SERVICE_IPS,
            priority: 100,
            index: RuleIndex::Destination(FxHashMap::default()),
        });
        lb.add_group(RuleGroup {
            name: SERVICE_NODEPORTS,
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
            name: CLUSTER_IPS_CHECK,
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
        for n in service_cidrs(state) {
            cidrs.insert(n);
        }
        if let Some(set) = policy.set_mut(self.service_cidrs_set) {
            set.prefixes = cidrs;
            delta.sets.insert(self.service_cidrs_set);
        }
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
            let mut rules_dest: BTreeMap<DestinationKey, Vec<Rule>> = BTreeMap::new();
            let mut rules_np: BTreeMap<(Proto, u16), Vec<Rule>> = BTreeMap::new();
            let slice_keys = self.slices_of_service.get(key).cloned().unwrap_or_default();
            for v4 in [true, false] {
                for sp in service_ports(key, svc, v4) {
                    let slices = slice_keys.iter().filter_map(|k| state.endpoint_slices.get(k));
                    let eps = endpoints(slices, &sp, &node.name);
                    self.compile_port(&sp, &eps, node, settings, policy, &mut frag, &mut rules_dest, &mut rules_np);
                }
            }
            for (d, rules) in rules_dest {
                self.destinations.entry(d).or_default().insert(key.clone(), rules);
                frag.destinations.push(d);
                touched_dest.insert(d);
            }
            for (n, rules) in rules_np {
                self.node_ports.entry(n).or_default().insert(key.clone(), rules);
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
        }
        for d in touched_dest {
            self.reprogram_destination(d, policy, delta);
        }
        for n in touched_np {
            let merged = merge_claims(self.node_ports.get(&n));
            if merged.is_none() {
                self.node_ports.remove(&n);
            }
            let r = RuleRef { layer: LayerKind::Lb, group: SERVICE_NODEPORTS, key: RuleKey::Port(n.0, n.1) };
            policy.put_rules(&r, merged);
            delta.rules.insert(r);
        }
        if !touched_ips.is_empty() {
            if let Some(set) = policy.set_mut(self.cluster_ips_set) {
                // Only a ClusterIP that came or went changes the set (an endpoint change touches
                // its Service's addresses without changing them).
                let mut changed = false;
                for ip in touched_ips {
                    if self.cluster_ips.get(&ip).is_some_and(|owners| !owners.is_empty()) {
                        changed |= set.prefixes.insert_addr(ip);
                    } else {
                        self.cluster_ips.remove(&ip);
                        changed |= set.prefixes.remove_addr(ip);
                    }
                }
                if changed {
                    delta.sets.insert(self.cluster_ips_set);
                }
            }
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
            Some(r) => {
                self.destinations.entry(d).or_default().insert(owner.clone(), r);
            }
            None => {
                if let Some(c) = self.destinations.get_mut(&d) {
                    c.remove(owner);
                }
            }
        }
        self.reprogram_destination(d, policy, delta);
    }

    /// Writes the merged claims of destination `d` into the policy (none left: the key goes).
    fn reprogram_destination(&mut self, d: DestinationKey, policy: &mut SwitchPolicy, delta: &mut PolicyDelta) {
        let merged = merge_claims(self.destinations.get(&d));
        if merged.is_none() {
            self.destinations.remove(&d);
        }
        let r = RuleRef { layer: LayerKind::Lb, group: SERVICE_IPS, key: RuleKey::Destination(d) };
        policy.put_rules(&r, merged);
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
        rules_dest: &mut BTreeMap<DestinationKey, Vec<Rule>>,
        rules_np: &mut BTreeMap<(Proto, u16), Vec<Rule>>,
    ) {
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
        rules_dest.insert((sp.cluster_ip, sp.proto, sp.port), rules);

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
            rules_dest.insert((*ip, sp.proto, sp.port), external(&what));
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
            rules_dest.insert((*ip, sp.proto, sp.port), rules);
        }

        if let Some(np) = sp.node_port {
            let what = format!("svc {name} nodePort {np}/{}", sp.proto);
            let family = if sp.cluster_ip.is_ipv4() { self.all_v4 } else { self.all_v6 };
            let entry = rules_np.entry((sp.proto, np)).or_default();
            for mut r in external(&what) {
                r.conditions.dst = Some(AddrMatch::In(family));
                entry.push(r);
            }
        }
    }
}

/// The rules of every claimant of a key, in claimant order; `None` when nobody claims it.
fn merge_claims(claims: Option<&BTreeMap<ObjectKey, Vec<Rule>>>) -> Option<Vec<Rule>> {
    let claims = claims.filter(|c| !c.is_empty())?;
    Some(claims.values().flatten().cloned().collect())
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
