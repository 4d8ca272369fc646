//! Kubernetes semantics, compiled once into switch policy.
//!
//! [`compile`] takes the cluster state and the node being programmed and produces the
//! [`SwitchPolicy`] that the model engine walks (`flowgate trace`) and the kernel data plane is
//! programmed from:
//!
//! - endpoint ports for the node's pods ([`endpoints_of_node`]);
//! - the service proxy ([`proxy`]): Services + EndpointSlices + Node + KubeProxyConfiguration →
//!   the `lb` and `service-filter` layers, with kube-proxy's nftables-mode semantics;
//! - outbound NAT on the endpoints, when flowgate's configuration enables it.
//!
//! This crate is the only place Kubernetes semantics live.

#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod endpoints;
pub mod node;
pub mod proxy;
pub mod services;
pub mod settings;

use std::net::IpAddr;

use flowgate_cluster::{parse_cidr_sloppy, parse_ip_sloppy, ClusterState};
use flowgate_switch::{
    Action, AddrMatch, Conditions, IngressKind, LayerKind, PrefixSet, Rule, RuleGroup, RuleIndex, SwitchPolicy,
};

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
}

/// Compiles `state` for the node named `node` (or the default node, see [`select_node`]).
pub fn compile(state: &ClusterState, node: Option<&str>) -> Result<Compiled, CompileError> {
    let node = select_node(state, node)?;
    let settings = ProxySettings::new(state.kube_proxy.as_ref(), &node);
    let mut policy = SwitchPolicy::new();
    for a in &node.addresses {
        policy.host_addresses.insert_addr(*a);
    }
    policy.snat_v4 = node.primary_v4;
    policy.snat_v6 = node.primary_v6;
    for (pod, ips) in endpoints_of_node(state, &node.name) {
        policy.add_endpoint(pod, ips);
    }
    proxy::compile(state, &node, &settings, &mut policy);
    outbound_nat(state, &node, &settings, &mut policy);
    Ok(Compiled { node, settings, policy })
}

/// The pods that get an endpoint on `node`: scheduled there, not host-network, with an address.
/// Returns `namespace/name` and the pod's IPs, in name order.
pub fn endpoints_of_node(state: &ClusterState, node: &str) -> Vec<(String, Vec<IpAddr>)> {
    let mut out = Vec::new();
    for (key, pod) in &state.pods {
        let Some(spec) = &pod.spec else { continue };
        if spec.node_name.as_deref() != Some(node) || spec.host_network == Some(true) {
            continue;
        }
        let Some(status) = &pod.status else { continue };
        let mut ips: Vec<IpAddr> = Vec::new();
        for ip in status.pod_ips.iter().flatten().map(|p| p.ip.as_str()).chain(status.pod_ip.as_deref()) {
            if let Some(ip) = parse_ip_sloppy(ip) {
                if !ips.contains(&ip) {
                    ips.push(ip);
                }
            }
        }
        if !ips.is_empty() {
            out.push((key.to_string(), ips));
        }
    }
    out
}

/// Outbound NAT: traffic from an endpoint to a destination outside the exceptions (cluster CIDRs,
/// service CIDRs, the node's pod CIDRs and addresses, and configured ones) leaves with a node address.
fn outbound_nat(state: &ClusterState, node: &NodeView, settings: &ProxySettings, policy: &mut SwitchPolicy) {
    let Some(cfg) = state.flowgate.as_ref().map(|f| &f.outbound_nat).filter(|o| o.enabled) else {
        return;
    };
    let mut exceptions = PrefixSet::from_nets(settings.cluster_cidrs.iter().cloned());
    for n in &node.pod_cidrs {
        exceptions.insert(*n);
    }
    for a in &node.addresses {
        exceptions.insert_addr(*a);
    }
    for sc in state.service_cidrs.values() {
        for c in sc.spec.as_ref().and_then(|s| s.cidrs.as_ref()).into_iter().flatten() {
            if let Some(n) = parse_cidr_sloppy(c) {
                exceptions.insert(n.trunc());
            }
        }
    }
    for e in &cfg.exceptions {
        if let Some(n) = parse_cidr_sloppy(e) {
            exceptions.insert(n.trunc());
        }
    }
    let set = policy.add_set("outbound-nat-exceptions", exceptions);
    policy.layer_mut(LayerKind::OutboundNat).add_group(RuleGroup {
        name: "outbound-nat",
        priority: 0,
        index: RuleIndex::Ordered(vec![Rule::new(
            "destination outside the exception list: source NAT to the node address",
            Conditions { dst: Some(AddrMatch::NotIn(set)), ingress: Some(IngressKind::Endpoint), ..Conditions::any() },
            Action::Snat,
        )]),
    });
}
