//! Configuration documents that are not Kubernetes API objects: kube-proxy's
//! `KubeProxyConfiguration` (so a kube-proxy user's configuration carries over) and flowgate's own
//! `FlowgateConfiguration`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `kubeproxy.config.k8s.io/v1alpha1` `KubeProxyConfiguration`: the fields flowgate uses, with the
/// published field names. Fields flowgate does not use are accepted and ignored.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct KubeProxyConfiguration {
    /// `kubeproxy.config.k8s.io/v1alpha1`.
    pub api_version: String,
    /// `KubeProxyConfiguration`.
    pub kind: String,
    /// The proxy mode; flowgate implements nftables-mode semantics whatever is written here, but
    /// the mode chooses which `masqueradeAll` applies, as in kube-proxy.
    pub mode: String,
    /// Pod CIDRs of the cluster (comma-separated, one per family) for the local-traffic detector.
    #[serde(rename = "clusterCIDR")]
    pub cluster_cidr: String,
    /// `ClusterCIDR` (default), `NodeCIDR`, `BridgeInterface` or `InterfaceNamePrefix`.
    pub detect_local_mode: String,
    /// Settings of the interface-based detectors.
    pub detect_local: DetectLocalConfiguration,
    /// CIDRs of node addresses that serve NodePorts, or `primary`; flowgate also reads `all` and
    /// `localhost`.
    pub node_port_addresses: Vec<String>,
    /// The node this configuration is for.
    pub hostname_override: String,
    /// nftables-mode settings.
    pub nftables: ModeConfiguration,
    /// iptables-mode settings.
    pub iptables: ModeConfiguration,
    /// Feature gates, by name.
    pub feature_gates: BTreeMap<String, bool>,
}

/// Settings of the interface-based local-traffic detectors.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DetectLocalConfiguration {
    /// Bridge interface name for `BridgeInterface`.
    pub bridge_interface: String,
    /// Interface name prefix for `InterfaceNamePrefix`.
    pub interface_name_prefix: String,
}

/// The per-mode settings block (`nftables:` / `iptables:`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ModeConfiguration {
    /// Masquerade all traffic sent to Service cluster IPs.
    pub masquerade_all: bool,
}

impl KubeProxyConfiguration {
    /// The `masqueradeAll` in force: the nftables block's, unless the mode is iptables or ipvs.
    pub fn masquerade_all(&self) -> bool {
        match self.mode.as_str() {
            "iptables" | "ipvs" => self.iptables.masquerade_all,
            _ => self.nftables.masquerade_all,
        }
    }
}

/// `flowgate.io/v1alpha1` `FlowgateConfiguration`: settings of flowgate's own.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FlowgateConfiguration {
    /// `flowgate.io/v1alpha1`.
    pub api_version: String,
    /// `FlowgateConfiguration`.
    pub kind: String,
    /// Outbound NAT on pod endpoints.
    #[serde(rename = "outboundNAT")]
    pub outbound_nat: OutboundNatConfiguration,
    /// How packets the switch has allowed reach the pods on this node: `Direct` (the default:
    /// the switch hands them to the pod's interface itself, past the node's IP stack) or `Routed`
    /// (through the node's routing and netfilter, as plain forwarding would). Read when the agent
    /// starts.
    pub local_delivery: String,
    /// What Services may claim as externalIPs and load-balancer IPs.
    #[serde(rename = "externalIPs")]
    pub external_ips: ExternalIpsConfiguration,
}

/// Limits on the addresses Services claim (what kube-proxy's users get from the
/// DenyServiceExternalIPs admission plugin or a webhook).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ExternalIpsConfiguration {
    /// When set, externalIPs and load-balancer IPs outside these CIDRs are refused (the node's own
    /// addresses are always allowed). Unset: any address that does not shadow the cluster's own.
    #[serde(rename = "allowedCIDRs")]
    pub allowed_cidrs: Option<Vec<String>>,
}

impl FlowgateConfiguration {
    /// Whether packets to local pods go through the node's IP stack (`localDelivery: Routed`).
    pub fn routed_delivery(&self) -> bool {
        self.local_delivery == "Routed"
    }
}

/// Outbound NAT: a pod's traffic to destinations outside the exceptions leaves with a node address.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OutboundNatConfiguration {
    /// Whether outbound NAT applies.
    pub enabled: bool,
    /// Destinations reached with the pod's own address, in addition to the cluster CIDRs, the
    /// service CIDRs and the node's addresses, which are always exceptions.
    pub exceptions: Vec<String>,
}
