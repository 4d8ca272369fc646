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
    /// Idle timeouts of the kernel flow table's connections. Read when the agent starts.
    pub flow_timeouts: FlowTimeouts,
}

/// How long the kernel data plane keeps an idle connection (its flow entries, its masquerade
/// port), as Go durations (`30s`, `5m`, `24h`); empty = the default. A connection is established
/// once a reply has passed and its opener went on (TCP: its handshake's last ACK); until then it is
/// embryonic, and embryonic connections are also the first to go under pressure.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FlowTimeouts {
    /// Established TCP and SCTP connections (default `24h`, kube-proxy's conntrack
    /// `tcpEstablishedTimeout`).
    pub tcp_established: String,
    /// TCP and SCTP connections not established yet: a SYN with no answer (default `30s`).
    pub tcp_embryonic: String,
    /// TCP connections after a FIN or RST (default `10s`).
    pub tcp_closing: String,
    /// UDP flows with traffic both ways past one exchange (default `120s`, conntrack's
    /// `udp_timeout_stream`).
    pub udp: String,
    /// UDP flows with no reply or a single exchange, such as a DNS lookup (default `30s`,
    /// conntrack's `udp_timeout`).
    pub udp_embryonic: String,
}

/// The flow timeouts in force, defaults filled in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResolvedFlowTimeouts {
    /// `tcpEstablished`.
    pub tcp_established: std::time::Duration,
    /// `tcpEmbryonic`.
    pub tcp_embryonic: std::time::Duration,
    /// `tcpClosing`.
    pub tcp_closing: std::time::Duration,
    /// `udp`.
    pub udp: std::time::Duration,
    /// `udpEmbryonic`.
    pub udp_embryonic: std::time::Duration,
}

impl Default for ResolvedFlowTimeouts {
    fn default() -> Self {
        use std::time::Duration;
        ResolvedFlowTimeouts {
            tcp_established: Duration::from_secs(24 * 3600),
            tcp_embryonic: Duration::from_secs(30),
            tcp_closing: Duration::from_secs(10),
            udp: Duration::from_secs(120),
            udp_embryonic: Duration::from_secs(30),
        }
    }
}

impl FlowTimeouts {
    /// The fields by name, with their values as written.
    pub fn fields(&self) -> [(&'static str, &str); 5] {
        [
            ("tcpEstablished", &self.tcp_established),
            ("tcpEmbryonic", &self.tcp_embryonic),
            ("tcpClosing", &self.tcp_closing),
            ("udp", &self.udp),
            ("udpEmbryonic", &self.udp_embryonic),
        ]
    }

    /// The timeouts in force: each field's duration, or its default when empty (or, in a document
    /// that was not validated, unparsable).
    pub fn resolved(&self) -> ResolvedFlowTimeouts {
        let d = ResolvedFlowTimeouts::default();
        let or = |s: &str, default| parse_go_duration(s).unwrap_or(default);
        ResolvedFlowTimeouts {
            tcp_established: or(&self.tcp_established, d.tcp_established),
            tcp_embryonic: or(&self.tcp_embryonic, d.tcp_embryonic),
            tcp_closing: or(&self.tcp_closing, d.tcp_closing),
            udp: or(&self.udp, d.udp),
            udp_embryonic: or(&self.udp_embryonic, d.udp_embryonic),
        }
    }
}

/// A Go duration (`300ms`, `30s`, `1m30s`, `24h`; units ns, us, µs, ms, s, m, h; whole numbers).
pub fn parse_go_duration(s: &str) -> Option<std::time::Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let n: u128 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let ns_per: u128 = match &rest[..unit_len] {
            "ns" => 1,
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total = total.checked_add(n.checked_mul(ns_per)?)?;
    }
    Some(std::time::Duration::from_nanos(u64::try_from(total).ok()?))
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
