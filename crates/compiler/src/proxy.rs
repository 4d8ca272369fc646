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

use std::net::IpAddr;

use flowgate_cluster::ClusterState;
use flowgate_switch::layer::DestinationKey;
use flowgate_switch::{
    Action, AddrMatch, BackendSet, Conditions, Dnat, DropReason, LayerKind, PrefixSet, Proto, Rule, RuleGroup,
    RuleIndex, Selection, SetId, SwitchPolicy,
};
use ipnet::IpNet;
use rustc_hash::FxHashMap;

use crate::endpoints::{categorize, SliceIndex};
use crate::node::NodeView;
use crate::services::{service_ports, ServicePort};
use crate::settings::{LocalMatch, NodePortAddresses, ProxySettings};

/// Address sets the service rules refer to.
struct Sets {
    local: Option<LocalMatch>,
    node_local: SetId,
    /// Every IPv4 address, and every IPv6 address: NodePort rules of both families share a
    /// (protocol, port) key, so each rule also matches the destination's family.
    all_v4: SetId,
    all_v6: SetId,
}

/// Rules collected while compiling, before they are placed in the layers.
#[derive(Default)]
struct Tables {
    destinations: FxHashMap<DestinationKey, Vec<Rule>>,
    node_ports: FxHashMap<(Proto, u16), Vec<Rule>>,
    cluster_ips: PrefixSet,
}

/// Compiles every Service into `policy`'s `lb` and `service-filter` layers.
pub fn compile(state: &ClusterState, node: &NodeView, settings: &ProxySettings, policy: &mut SwitchPolicy) {
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
    let sets = Sets {
        local: LocalMatch::new(&settings.local, local_set),
        node_local: policy.add_set("node-local", node_local),
        all_v4: policy.add_set("all-ipv4", PrefixSet::from_nets([IpNet::V4(Default::default())])),
        all_v6: policy.add_set("all-ipv6", PrefixSet::from_nets([IpNet::V6(Default::default())])),
    };

    let slices = SliceIndex::new(&state.endpoint_slices);
    let mut tables = Tables::default();
    for (key, svc) in &state.services {
        for v4 in [true, false] {
            for sp in service_ports(key, svc, v4) {
                compile_service_port(&sp, &slices, node, settings, &sets, policy, &mut tables);
            }
        }
    }

    // NodePorts are served on these addresses (never loopback in nftables mode).
    let mut nodeport_addrs = PrefixSet::new();
    for a in &node.addresses {
        if a.is_loopback() {
            continue;
        }
        let serves = match settings.node_ports(a.is_ipv4()) {
            NodePortAddresses::All => true,
            NodePortAddresses::Cidrs(c) => c.iter().any(|n| n.contains(a)),
        };
        if serves {
            nodeport_addrs.insert_addr(*a);
        }
    }
    let nodeport_set = policy.add_set("nodeport-addresses", nodeport_addrs);

    let lb = policy.layer_mut(LayerKind::Lb);
    lb.add_group(RuleGroup { name: "service-ips", priority: 100, index: RuleIndex::Destination(tables.destinations) });
    lb.add_group(RuleGroup {
        name: "service-nodeports",
        priority: 200,
        index: RuleIndex::PortOnAddresses { addresses: nodeport_set, rules: tables.node_ports },
    });

    let mut service_cidrs = PrefixSet::new();
    for sc in state.service_cidrs.values() {
        for c in sc.spec.as_ref().and_then(|s| s.cidrs.as_ref()).into_iter().flatten() {
            if let Some(n) = flowgate_cluster::parse_cidr_sloppy(c) {
                service_cidrs.insert(n.trunc());
            }
        }
    }
    let mut filter_rules = Vec::new();
    if !tables.cluster_ips.is_empty() {
        let s = policy.add_set("cluster-ips", tables.cluster_ips);
        filter_rules.push(Rule::new(
            "ClusterIP, but no Service port of that protocol and number",
            Conditions { dst: Some(AddrMatch::In(s)), ..Conditions::any() },
            Action::Reject(DropReason::UndefinedServicePort),
        ));
    }
    if !service_cidrs.is_empty() {
        let s = policy.add_set("service-cidrs", service_cidrs);
        filter_rules.push(Rule::new(
            "address in a ServiceCIDR that no Service holds",
            Conditions { dst: Some(AddrMatch::In(s)), ..Conditions::any() },
            Action::Drop(DropReason::UnallocatedServiceIp),
        ));
    }
    policy.layer_mut(LayerKind::ServiceFilter).add_group(RuleGroup {
        name: "cluster-ips-check",
        priority: 100,
        index: RuleIndex::Ordered(filter_rules),
    });
}

fn compile_service_port(
    sp: &ServicePort,
    slices: &SliceIndex<'_>,
    node: &NodeView,
    settings: &ProxySettings,
    sets: &Sets,
    policy: &mut SwitchPolicy,
    tables: &mut Tables,
) {
    let name = sp.name();
    let eps = slices.endpoints(sp, &node.name);
    let cat = categorize(&eps, sp, &node.name, node.zone(), settings.prefer_same_node);
    let selection = match sp.affinity_timeout {
        Some(timeout_seconds) => Selection::ClientIp { timeout_seconds },
        None => Selection::Random,
    };
    let cluster_set = (!cat.cluster.is_empty()).then(|| {
        policy.add_backend_set(BackendSet {
            name: format!("{name} (cluster)").into(),
            backends: cat.cluster.clone(),
            selection,
        })
    });
    let local_set = (!cat.local.is_empty()).then(|| {
        policy.add_backend_set(BackendSet {
            name: format!("{name} (local)").into(),
            backends: cat.local.clone(),
            selection,
        })
    });
    let dnat = |set, masquerade| Action::Dnat(Dnat { backends: set, masquerade, hairpin: true });
    let topo = if cat.topology.is_empty() { String::new() } else { format!(", topology {}", cat.topology) };

    // Internal traffic (the ClusterIP).
    tables.cluster_ips.insert_addr(sp.cluster_ip);
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
                if let Some(local) = &sets.local {
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
    tables.destinations.insert((sp.cluster_ip, sp.proto, sp.port), rules);

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
        if let Some(local) = &sets.local {
            for c in &local.local {
                rules.push(Rule::new(
                    format!("{what}: pod traffic short-circuits to {} cluster endpoints{topo}", cat.cluster.len()),
                    c.clone(),
                    dnat(cluster, false),
                ));
            }
        }
        rules.push(Rule::new(
            format!("{what}: traffic from the node goes to {} cluster endpoints{topo}, masquerade", cat.cluster.len()),
            Conditions::src(AddrMatch::In(sets.node_local)),
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
        tables.destinations.insert((*ip, sp.proto, sp.port), external(&what));
    }

    let firewall: Option<SetId> = (!sp.lb_ips.is_empty() && !sp.source_ranges.is_empty()).then(|| {
        let mut allowed = PrefixSet::from_nets(sp.source_ranges.iter().cloned());
        // A range holding the node's IP also admits the LB IPs as sources (requests from the node
        // to a VIP it holds locally loop back with the VIP as source).
        if let Some(node_ip) = node.primary(sp.cluster_ip.is_ipv4()) {
            if sp.source_ranges.iter().any(|r| r.contains(&node_ip)) {
                for ip in &sp.lb_ips {
                    allowed.insert_addr(*ip);
                }
            }
        }
        policy.add_set(format!("{name} source ranges"), allowed)
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
        tables.destinations.insert((*ip, sp.proto, sp.port), rules);
    }

    if let Some(np) = sp.node_port {
        let what = format!("svc {name} nodePort {np}/{}", sp.proto);
        let rules = external(&what);
        let family = if sp.cluster_ip.is_ipv4() { sets.all_v4 } else { sets.all_v6 };
        let entry = tables.node_ports.entry((sp.proto, np)).or_default();
        for mut r in rules {
            r.conditions.dst = Some(AddrMatch::In(family));
            entry.push(r);
        }
    }
}

fn fmt_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    }
}
