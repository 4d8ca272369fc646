//! The traced node as kube-proxy sees it: name, addresses, primary IP per family, zone, pod CIDRs.

use std::collections::BTreeMap;
use std::net::IpAddr;

use flowgate_cluster::k8s_openapi::api::core::v1::Node;
use flowgate_cluster::{parse_cidr_sloppy, parse_ip_sloppy, ClusterState};
use ipnet::IpNet;

use crate::CompileError;

/// The label holding a node's zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// What the compiler needs to know about the node whose switch it compiles.
#[derive(Clone, Debug, Default)]
pub struct NodeView {
    /// The node's name.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its IP addresses (InternalIP and ExternalIP), in status order.
    pub addresses: Vec<IpAddr>,
    /// The primary IPv4 address: the first IPv4 InternalIP, else the first IPv4 ExternalIP.
    pub primary_v4: Option<IpAddr>,
    /// The primary IPv6 address, chosen the same way.
    pub primary_v6: Option<IpAddr>,
    /// `spec.podCIDRs` (falling back to `spec.podCIDR`).
    pub pod_cidrs: Vec<IpNet>,
}

impl NodeView {
    /// Builds the view of a Node object.
    pub fn from_node(node: &Node) -> NodeView {
        let mut view = NodeView {
            name: node.metadata.name.clone().unwrap_or_default(),
            labels: node.metadata.labels.clone().unwrap_or_default(),
            ..NodeView::default()
        };
        let addrs = node.status.as_ref().and_then(|s| s.addresses.as_deref()).unwrap_or_default();
        for ty in ["InternalIP", "ExternalIP"] {
            for a in addrs.iter().filter(|a| a.type_ == ty) {
                if let Some(ip) = parse_ip_sloppy(&a.address) {
                    if !view.addresses.contains(&ip) {
                        view.addresses.push(ip);
                    }
                    if ip.is_ipv4() && view.primary_v4.is_none() {
                        view.primary_v4 = Some(ip);
                    }
                    if ip.is_ipv6() && view.primary_v6.is_none() {
                        view.primary_v6 = Some(ip);
                    }
                }
            }
        }
        if let Some(spec) = &node.spec {
            let cidrs = spec.pod_cidrs.clone().unwrap_or_default();
            let cidrs = if cidrs.is_empty() { spec.pod_cidr.iter().cloned().collect() } else { cidrs };
            view.pod_cidrs = cidrs.iter().filter_map(|c| parse_cidr_sloppy(c)).map(|c| c.trunc()).collect();
        }
        view
    }

    /// The node's zone, if labelled.
    pub fn zone(&self) -> Option<&str> {
        self.labels.get(ZONE_LABEL).map(String::as_str)
    }

    /// The primary IP of a family.
    pub fn primary(&self, v4: bool) -> Option<IpAddr> {
        if v4 {
            self.primary_v4
        } else {
            self.primary_v6
        }
    }
}

/// Chooses the traced node: `requested` if given, else the KubeProxyConfiguration's
/// `hostnameOverride`, else the only Node object.
pub fn select_node(state: &ClusterState, requested: Option<&str>) -> Result<NodeView, CompileError> {
    let name = match requested {
        Some(n) => n.to_string(),
        None => match state.kube_proxy.as_ref().map(|c| c.hostname_override.trim()).filter(|h| !h.is_empty()) {
            Some(h) => h.to_string(),
            None => match state.nodes.len() {
                1 => state.nodes.keys().next().cloned().unwrap_or_default(),
                0 => return Err(CompileError::NoNode { reason: "the manifests hold no Node object".into() }),
                n => {
                    return Err(CompileError::NoNode {
                        reason: format!(
                            "the manifests hold {n} Node objects and no KubeProxyConfiguration hostnameOverride"
                        ),
                    })
                }
            },
        },
    };
    match state.nodes.get(&name) {
        Some(node) => Ok(NodeView::from_node(node)),
        None => Err(CompileError::UnknownNode { name }),
    }
}
