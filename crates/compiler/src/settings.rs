//! kube-proxy's settings in force, from a `KubeProxyConfiguration` with kube-proxy's defaults for
//! nftables mode applied.

use std::collections::BTreeMap;

use flowgate_cluster::{parse_cidr_sloppy, KubeProxyConfiguration};
use flowgate_switch::{Conditions, IngressKind, PrefixSet};
use ipnet::IpNet;

use crate::node::NodeView;

/// How "traffic from a pod" (local traffic) is recognised.
#[derive(Clone, Debug)]
pub enum LocalDetector {
    /// No detector (`ClusterCIDR` mode with an empty `clusterCIDR`): nothing counts as local.
    None,
    /// Source address in these prefixes (`ClusterCIDR` or `NodeCIDR` mode).
    Cidrs(PrefixSet),
    /// Packets entering from a pod endpoint (`BridgeInterface`, `InterfaceNamePrefix`: the pod
    /// interfaces are flowgate's endpoints).
    Endpoints,
}

/// Which node addresses accept NodePort traffic, for one IP family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodePortAddresses {
    /// Every local address except loopback.
    All,
    /// Node addresses inside these prefixes, loopback never included.
    Cidrs(Vec<IpNet>),
}

/// The effective proxy settings.
#[derive(Clone, Debug)]
pub struct ProxySettings {
    /// Masquerade all ClusterIP traffic.
    pub masquerade_all: bool,
    /// The local-traffic detector.
    pub local: LocalDetector,
    /// The cluster's pod CIDRs as configured (`clusterCIDR`), whatever the detector mode.
    pub cluster_cidrs: Vec<IpNet>,
    /// NodePort addresses for IPv4.
    pub node_ports_v4: NodePortAddresses,
    /// NodePort addresses for IPv6.
    pub node_ports_v6: NodePortAddresses,
    /// Feature gate `PreferSameTrafficDistribution` (node hints).
    pub prefer_same_node: bool,
    /// Where Services' externalIPs and load-balancer IPs may point (`FlowgateConfiguration`
    /// `externalIPs.allowedCIDRs`); `None`: anywhere that does not shadow the cluster's own.
    pub external_ip_cidrs: Option<Vec<IpNet>>,
}

impl ProxySettings {
    /// Settings from an optional configuration, for `node`.
    pub fn new(config: Option<&KubeProxyConfiguration>, node: &NodeView) -> ProxySettings {
        let default = KubeProxyConfiguration::default();
        let c = config.unwrap_or(&default);
        let cluster_cidrs: Vec<IpNet> = c
            .cluster_cidr
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .filter_map(parse_cidr_sloppy)
            .map(|n| n.trunc())
            .collect();
        let local = match c.detect_local_mode.as_str() {
            "NodeCIDR" if !node.pod_cidrs.is_empty() => {
                LocalDetector::Cidrs(PrefixSet::from_nets(node.pod_cidrs.clone()))
            }
            "NodeCIDR" => LocalDetector::None,
            "BridgeInterface" | "InterfaceNamePrefix" => LocalDetector::Endpoints,
            _ if cluster_cidrs.is_empty() => LocalDetector::None,
            _ => LocalDetector::Cidrs(PrefixSet::from_nets(cluster_cidrs.clone())),
        };
        // nftables mode defaults nodePortAddresses to "primary" (cmd/kube-proxy, platformApplyDefaults).
        let mut cidrs: Vec<IpNet> = Vec::new();
        let values: Vec<&str> = if c.node_port_addresses.is_empty() {
            vec!["primary"]
        } else {
            c.node_port_addresses.iter().map(String::as_str).collect()
        };
        for v in values {
            match v {
                "primary" => cidrs.extend(node.primary_v4.into_iter().chain(node.primary_v6).map(IpNet::from)),
                "all" => cidrs.extend(["0.0.0.0/0", "::/0"].iter().filter_map(|s| s.parse::<IpNet>().ok())),
                "localhost" => cidrs.extend(["127.0.0.0/8", "::1/128"].iter().filter_map(|s| s.parse::<IpNet>().ok())),
                other => cidrs.extend(parse_cidr_sloppy(other).map(|n| n.trunc())),
            }
        }
        let family = |v4: bool| {
            let fam: Vec<IpNet> = cidrs.iter().filter(|n| matches!(n, IpNet::V4(_)) == v4).cloned().collect();
            // No CIDR of this family: every address of it (kube-proxy's NodePortAddresses).
            if fam.is_empty() || fam.iter().any(|n| n.prefix_len() == 0) {
                NodePortAddresses::All
            } else {
                NodePortAddresses::Cidrs(fam)
            }
        };
        let gates: &BTreeMap<String, bool> = &c.feature_gates;
        ProxySettings {
            masquerade_all: c.masquerade_all(),
            local,
            cluster_cidrs,
            node_ports_v4: family(true),
            node_ports_v6: family(false),
            prefer_same_node: gates.get("PreferSameTrafficDistribution").copied().unwrap_or(true),
            external_ip_cidrs: None,
        }
    }

    /// NodePort addresses of a family.
    pub fn node_ports(&self, v4: bool) -> &NodePortAddresses {
        if v4 {
            &self.node_ports_v4
        } else {
            &self.node_ports_v6
        }
    }
}

/// Conditions meaning "the packet is local traffic" and "it is not", as lists of alternatives
/// (any one suffices). `None` when there is no detector.
#[derive(Debug)]
pub struct LocalMatch {
    /// Alternatives that identify local (pod) traffic.
    pub local: Vec<Conditions>,
    /// Alternatives that identify non-local traffic.
    pub not_local: Vec<Conditions>,
}

impl LocalMatch {
    /// Builds the conditions; `set` is the policy's address set holding the detector's CIDRs.
    pub fn new(detector: &LocalDetector, set: Option<flowgate_switch::SetId>) -> Option<LocalMatch> {
        use flowgate_switch::AddrMatch;
        match (detector, set) {
            (LocalDetector::Cidrs(_), Some(s)) => Some(LocalMatch {
                local: vec![Conditions::src(AddrMatch::In(s))],
                not_local: vec![Conditions::src(AddrMatch::NotIn(s))],
            }),
            (LocalDetector::Endpoints, _) => Some(LocalMatch {
                local: vec![Conditions { ingress: Some(IngressKind::Endpoint), ..Conditions::any() }],
                not_local: vec![
                    Conditions { ingress: Some(IngressKind::Host), ..Conditions::any() },
                    Conditions { ingress: Some(IngressKind::Uplink), ..Conditions::any() },
                ],
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeView {
        NodeView {
            name: "n".into(),
            addresses: vec![
                "192.168.0.2".parse().unwrap(),
                "192.168.1.2".parse().unwrap(),
                "2001:db8::2".parse().unwrap(),
            ],
            primary_v4: Some("192.168.0.2".parse().unwrap()),
            primary_v6: Some("2001:db8::2".parse().unwrap()),
            pod_cidrs: vec!["10.0.1.0/24".parse().unwrap()],
            ..NodeView::default()
        }
    }

    fn cfg(yaml: &str) -> KubeProxyConfiguration {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn nftables_defaults_to_primary_node_ports() {
        let s = ProxySettings::new(None, &node());
        assert_eq!(s.node_ports_v4, NodePortAddresses::Cidrs(vec!["192.168.0.2/32".parse().unwrap()]));
        assert_eq!(s.node_ports_v6, NodePortAddresses::Cidrs(vec!["2001:db8::2/128".parse().unwrap()]));
        assert!(matches!(s.local, LocalDetector::None), "no clusterCIDR, no detector");
        assert!(!s.masquerade_all);
    }

    #[test]
    fn keywords_and_per_family_fallback() {
        let s = ProxySettings::new(Some(&cfg("nodePortAddresses: [all]")), &node());
        assert_eq!(
            (s.node_ports_v4.clone(), s.node_ports_v6.clone()),
            (NodePortAddresses::All, NodePortAddresses::All)
        );
        let s = ProxySettings::new(Some(&cfg("nodePortAddresses: [192.168.1.0/24]")), &node());
        assert_eq!(s.node_ports_v4, NodePortAddresses::Cidrs(vec!["192.168.1.0/24".parse().unwrap()]));
        assert_eq!(s.node_ports_v6, NodePortAddresses::All, "no IPv6 CIDR given: every IPv6 address");
        let s = ProxySettings::new(Some(&cfg("nodePortAddresses: [localhost]")), &node());
        assert_eq!(s.node_ports_v4, NodePortAddresses::Cidrs(vec!["127.0.0.0/8".parse().unwrap()]));
    }

    #[test]
    fn detectors_and_masquerade_all() {
        let s = ProxySettings::new(
            Some(&cfg("clusterCIDR: 10.0.0.0/8,fd00::/48\nnftables: {masqueradeAll: true}")),
            &node(),
        );
        assert!(matches!(&s.local, LocalDetector::Cidrs(p) if p.contains("fd00::1".parse().unwrap())));
        assert!(s.masquerade_all);
        let s = ProxySettings::new(Some(&cfg("mode: iptables\nnftables: {masqueradeAll: true}")), &node());
        assert!(!s.masquerade_all, "iptables mode reads iptables.masqueradeAll");
        let s = ProxySettings::new(Some(&cfg("detectLocalMode: NodeCIDR\nclusterCIDR: 10.0.0.0/8")), &node());
        assert!(
            matches!(&s.local, LocalDetector::Cidrs(p) if p.contains("10.0.1.7".parse().unwrap()) && !p.contains("10.0.2.7".parse().unwrap()))
        );
        let s = ProxySettings::new(
            Some(&cfg("detectLocalMode: InterfaceNamePrefix\ndetectLocal: {interfaceNamePrefix: veth}")),
            &node(),
        );
        assert!(matches!(s.local, LocalDetector::Endpoints));
    }
}
