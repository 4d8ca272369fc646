//! The host networking service's objects, named after their HCN counterparts: a [`Network`]
//! (address ranges per family, gateway, MTU, DNS, network-wide policies such as outbound NAT) and
//! an [`Endpoint`] (one per pod: addresses, MAC, namespace, DNS, policies). They are the JSON of
//! the agent's API and of its store.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// A field that failed validation: the path of the field and what is wrong with it (an API 400,
/// a CNI error 7).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// The field, as a JSON path (`ranges[0][1].rangeStart`).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl FieldError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError { field: field.into(), message: message.into() }
    }
}

/// A network endpoints are made on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Network {
    /// The name (the CNI network name).
    pub name: String,
    /// Address ranges: one inner list per address an endpoint gets (one per family, as host-local's
    /// `ranges`); the ranges of an inner list are tried in order. Empty with `usePodCIDR`.
    #[serde(default)]
    pub ranges: Vec<Vec<IpRange>>,
    /// Take the ranges from the node's pod CIDRs (`spec.podCIDRs` of the agent's Node), one range
    /// set per CIDR: one configuration for every node of a cluster.
    #[serde(default, rename = "usePodCIDR", skip_serializing_if = "std::ops::Not::not")]
    pub use_pod_cidr: bool,
    /// MTU of the endpoints' interfaces (both ends of the veth); the kernel default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// DNS every endpoint gets (a pod's own search suffixes come first, see [`Dns::for_pod`]).
    #[serde(default)]
    pub dns: Dns,
    /// The cluster's DNS domain (`cluster.local` when absent), for the pods' search suffixes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_domain: Option<String>,
    /// Policies every endpoint of the network gets (outbound NAT).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<Policy>,
}

/// One range of addresses (host-local's range).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IpRange {
    /// The subnet.
    pub subnet: IpNet,
    /// First address handed out (default: the subnet's second address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_start: Option<IpAddr>,
    /// Last address handed out (default: the last before the broadcast address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_end: Option<IpAddr>,
    /// The pods' gateway (default: the subnet's first host address); never handed out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
}

/// DNS settings (the CNI result's `dns`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Dns {
    /// Name servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// The local domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Search suffixes, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// resolver options (`ndots:5`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty() && self.domain.is_none() && self.search.is_empty() && self.options.is_empty()
    }

    /// The DNS a pod in `namespace` gets: the runtime's settings (`runtime`, the `dns` capability)
    /// override the network's field by field; the pod's own suffixes come first in the search
    /// list (`<ns>.svc.<domain>`, `svc.<domain>`, `<domain>`, as the kubelet writes them), then
    /// the others without repeats.
    pub fn for_pod(&self, runtime: Option<&Dns>, namespace: Option<&str>, cluster_domain: &str) -> Dns {
        let mut dns = self.clone();
        if let Some(r) = runtime {
            if !r.nameservers.is_empty() {
                dns.nameservers = r.nameservers.clone();
            }
            if r.domain.is_some() {
                dns.domain = r.domain.clone();
            }
            if !r.search.is_empty() {
                dns.search = r.search.clone();
            }
            if !r.options.is_empty() {
                dns.options = r.options.clone();
            }
        }
        if let Some(ns) = namespace.filter(|n| !n.is_empty()) {
            let mut search =
                vec![format!("{ns}.svc.{cluster_domain}"), format!("svc.{cluster_domain}"), cluster_domain.to_owned()];
            for s in dns.search {
                if !search.contains(&s) {
                    search.push(s);
                }
            }
            dns.search = search;
        }
        dns
    }
}

/// A transport protocol of a port mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

/// A policy on a network or an endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum Policy {
    /// Traffic from the endpoint to destinations outside `exceptions` (and outside the cluster,
    /// service and node ranges the compiler always excepts) leaves with a node address.
    #[serde(rename = "OutBoundNAT")]
    OutboundNat {
        /// Destinations reached without translation.
        #[serde(default)]
        exceptions: Vec<IpNet>,
    },
    /// A host port forwarded to the endpoint (the `portMappings` capability).
    #[serde(rename = "PortMapping", rename_all = "camelCase")]
    PortMapping {
        /// The port on the node.
        host_port: u16,
        /// The port in the pod.
        container_port: u16,
        /// The protocol.
        protocol: Protocol,
        /// Only on this node address (all when absent).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        host_ip: Option<IpAddr>,
    },
    /// A 5-tuple ACL rule on the endpoint (HNS's ACL policy): connections in `direction` whose
    /// remote address, protocol and destination port match are allowed or blocked. Rules are tried
    /// by ascending `priority` (then in order), before the pod's NetworkPolicy rules; with no
    /// NetworkPolicy isolating the pod, what no rule matches is allowed.
    #[serde(rename = "ACL", rename_all = "camelCase")]
    Acl {
        /// Allow or Block.
        action: AclAction,
        /// In or Out.
        direction: AclDirection,
        /// Lower first.
        #[serde(default)]
        priority: u16,
        /// The protocol; any when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        protocol: Option<Protocol>,
        /// Remote prefixes; any address when empty.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        remote_addresses: Vec<IpNet>,
        /// Destination ports (`"80"`, `"8000-8100"`): the endpoint's own for In, the remote's
        /// for Out; every port when empty (then `protocol` may be absent).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        ports: Vec<String>,
    },
}

impl Policy {
    /// Checks an ACL policy's fields (`field` names the policy); other policies are checked where
    /// they are used.
    pub fn validate_acl(&self, field: &str) -> Result<(), FieldError> {
        let Policy::Acl { protocol, ports, .. } = self else { return Ok(()) };
        for (i, p) in ports.iter().enumerate() {
            if acl_port_range(p).is_none() {
                return Err(FieldError::new(
                    format!("{field}.ports[{i}]"),
                    format!("{p:?} is not a port or a range (\"80\", \"8000-8100\"; 1..65535)"),
                ));
            }
        }
        if !ports.is_empty() && protocol.is_none() {
            return Err(FieldError::new(format!("{field}.protocol"), "ports need a protocol (tcp, udp or sctp)"));
        }
        Ok(())
    }
}

/// What an [`Policy::Acl`] rule does with the traffic it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AclAction {
    /// Let it through.
    Allow,
    /// Drop it.
    Block,
}

/// Which traffic of the endpoint an [`Policy::Acl`] rule judges.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AclDirection {
    /// Connections to the endpoint (the remote address is the client).
    In,
    /// Connections from the endpoint (the remote address is the server).
    Out,
}

/// Parses an ACL port entry: `"80"` or `"8000-8100"`.
pub fn acl_port_range(s: &str) -> Option<(u16, u16)> {
    let (a, b) = match s.split_once('-') {
        Some((a, b)) => (a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?),
        None => {
            let p = s.trim().parse::<u16>().ok()?;
            (p, p)
        }
    };
    (a >= 1 && a <= b).then_some((a, b))
}

/// The Kubernetes pod an endpoint belongs to (from `K8S_POD_NAMESPACE` / `K8S_POD_NAME`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodRef {
    /// The namespace.
    pub namespace: String,
    /// The name.
    pub name: String,
}

/// One address of an endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointIp {
    /// The address, with the prefix length of the range it came from (the pod's interface holds
    /// it as a host route, /32 or /128, and that is what the CNI result reports).
    pub address: IpNet,
    /// The gateway of its range.
    pub gateway: IpAddr,
}

/// Where an endpoint is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum EndpointState {
    /// Addresses reserved and recorded; links being made. An agent that finds an endpoint in this
    /// state at start removes it (the ADD did not return).
    Creating,
    /// Links made, under the switch; the ADD returned.
    Ready,
}

/// A pod's one endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Endpoint {
    /// `<network>/<containerId>/<ifname>`: the CNI attachment it stands for.
    pub id: String,
    /// The network.
    pub network: String,
    /// The container (CNI_CONTAINERID).
    pub container_id: String,
    /// The interface in the pod (CNI_IFNAME).
    pub ifname: String,
    /// The pod's network namespace (CNI_NETNS).
    pub netns: String,
    /// The pod, when the runtime said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodRef>,
    /// Its addresses, one per range set of the network.
    pub ips: Vec<EndpointIp>,
    /// The MAC of the pod's interface (`aa:bb:...`), once made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// The host side of the veth.
    pub host_interface: String,
    /// MTU, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// What the pod's resolver should use.
    #[serde(default)]
    pub dns: Dns,
    /// Policies on this endpoint (the network's, then its own).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<Policy>,
    /// Where it is in its life.
    pub state: EndpointState,
}

impl Endpoint {
    /// The id of the attachment (`network`, `container_id`, `ifname`).
    pub fn id_of(network: &str, container_id: &str, ifname: &str) -> String {
        format!("{network}/{container_id}/{ifname}")
    }

    /// The addresses without prefix lengths.
    pub fn addresses(&self) -> Vec<IpAddr> {
        self.ips.iter().map(|i| i.address.addr()).collect()
    }
}

/// A load balancer (HCN's LoadBalancer): frontend VIPs and ports spread over backend addresses by
/// the switch, like a Service, for what does not come from Kubernetes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancer {
    /// The name.
    pub name: String,
    /// The addresses it answers on.
    pub frontend_vips: Vec<IpAddr>,
    /// Its ports.
    pub port_mappings: Vec<LoadBalancerPortMapping>,
    /// The backends (a VIP's connections go to the backends of its family); none: connections are
    /// refused, as for a Service without endpoints.
    #[serde(default)]
    pub backends: Vec<IpAddr>,
    /// Rewrite the source to a node address (replies then come back through this node whatever the
    /// backend's route).
    #[serde(default)]
    pub source_nat: bool,
}

/// One port of a [`LoadBalancer`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancerPortMapping {
    /// The protocol.
    pub protocol: Protocol,
    /// The port on the VIPs.
    pub frontend_port: u16,
    /// The port on the backends.
    pub backend_port: u16,
}

impl LoadBalancer {
    /// Checks every field.
    pub fn validate(&self) -> Result<(), FieldError> {
        if !valid_name(&self.name) {
            return Err(FieldError::new("name", format!("{:?} is not a valid name", self.name)));
        }
        if self.frontend_vips.is_empty() {
            return Err(FieldError::new("frontendVips", "at least one VIP is needed"));
        }
        for (i, v) in self.frontend_vips.iter().enumerate() {
            if v.is_unspecified() || v.is_loopback() || v.is_multicast() {
                return Err(FieldError::new(format!("frontendVips[{i}]"), format!("{v} cannot be a VIP")));
            }
        }
        if self.port_mappings.is_empty() {
            return Err(FieldError::new("portMappings", "at least one port mapping is needed"));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, p) in self.port_mappings.iter().enumerate() {
            if p.frontend_port == 0 {
                return Err(FieldError::new(format!("portMappings[{i}].frontendPort"), "must be 1..65535"));
            }
            if p.backend_port == 0 {
                return Err(FieldError::new(format!("portMappings[{i}].backendPort"), "must be 1..65535"));
            }
            if !seen.insert((p.protocol, p.frontend_port)) {
                return Err(FieldError::new(
                    format!("portMappings[{i}].frontendPort"),
                    format!("{}/{:?} is mapped twice", p.frontend_port, p.protocol),
                ));
            }
        }
        for (i, b) in self.backends.iter().enumerate() {
            if !self.frontend_vips.iter().any(|v| v.is_ipv4() == b.is_ipv4()) {
                return Err(FieldError::new(format!("backends[{i}]"), format!("no frontend VIP of {b}'s family")));
            }
        }
        Ok(())
    }
}

/// What a runtime asks for when it adds a pod to a network (what the CNI plugin sends).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointRequest {
    /// The network (must exist).
    pub network: String,
    /// CNI_CONTAINERID.
    pub container_id: String,
    /// CNI_IFNAME.
    pub ifname: String,
    /// CNI_NETNS.
    pub netns: String,
    /// From CNI_ARGS, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodRef>,
    /// Ranges from the `ipRanges` capability: replace the network's for this endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_ranges: Option<Vec<Vec<IpRange>>>,
    /// DNS from the `dns` capability.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Dns>,
    /// Policies of this endpoint only (port mappings).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<Policy>,
}

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

impl Network {
    /// Checks every field; the first problem names its field.
    pub fn validate(&self) -> Result<(), FieldError> {
        if !valid_name(&self.name) {
            return Err(FieldError::new(
                "name",
                format!("{:?} is not a valid network name (letters, digits, '-', '_', '.'; at most 253)", self.name),
            ));
        }
        match (self.use_pod_cidr, self.ranges.is_empty()) {
            (true, false) => {
                return Err(FieldError::new("usePodCIDR", "give either ranges or usePodCIDR, not both"));
            }
            (true, true) => {}
            (false, _) => validate_ranges(&self.ranges, "ranges")?,
        }
        if let Some(mtu) = self.mtu {
            if !(68..=65535).contains(&mtu) {
                return Err(FieldError::new("mtu", format!("{mtu} is outside 68..65535")));
            }
        }
        if let Some(d) = &self.cluster_domain {
            if d.is_empty() || d.starts_with('.') || d.ends_with('.') || d.contains(char::is_whitespace) {
                return Err(FieldError::new("clusterDomain", format!("{d:?} is not a DNS domain")));
            }
        }
        validate_dns(&self.dns, "dns")?;
        for (i, p) in self.policies.iter().enumerate() {
            if matches!(p, Policy::PortMapping { .. }) {
                return Err(FieldError::new(
                    format!("policies[{i}]"),
                    "a PortMapping belongs to an endpoint, not a network",
                ));
            }
            p.validate_acl(&format!("policies[{i}]"))?;
        }
        Ok(())
    }

    /// The cluster DNS domain.
    pub fn cluster_domain(&self) -> &str {
        self.cluster_domain.as_deref().unwrap_or("cluster.local")
    }
}

/// Checks range sets: at least one, each non-empty, one family per set and no overlap between sets'
/// subnets, boundaries and gateway inside the subnet.
pub fn validate_ranges(sets: &[Vec<IpRange>], field: &str) -> Result<(), FieldError> {
    if sets.is_empty() {
        return Err(FieldError::new(field, "at least one range set is needed"));
    }
    let mut seen: Vec<IpNet> = Vec::new();
    for (i, set) in sets.iter().enumerate() {
        if set.is_empty() {
            return Err(FieldError::new(format!("{field}[{i}]"), "a range set needs at least one range"));
        }
        let v4 = set[0].subnet.addr().is_ipv4();
        for (j, r) in set.iter().enumerate() {
            let at = |f: &str| format!("{field}[{i}][{j}]{f}");
            if r.subnet.addr().is_ipv4() != v4 {
                return Err(FieldError::new(at(".subnet"), "all ranges of one set must be of one address family"));
            }
            if r.subnet != r.subnet.trunc() {
                return Err(FieldError::new(
                    at(".subnet"),
                    format!("{} has host bits set (did you mean {}?)", r.subnet, r.subnet.trunc()),
                ));
            }
            let host_bits = u32::from(r.subnet.max_prefix_len() - r.subnet.prefix_len());
            if host_bits < 2 {
                return Err(FieldError::new(at(".subnet"), format!("{} is too small for pods", r.subnet)));
            }
            for (name, a) in [(".rangeStart", r.range_start), (".rangeEnd", r.range_end), (".gateway", r.gateway)] {
                if let Some(a) = a {
                    if !r.subnet.contains(&a) {
                        return Err(FieldError::new(at(name), format!("{a} is not in {}", r.subnet)));
                    }
                }
            }
            if let (Some(s), Some(e)) = (r.range_start, r.range_end) {
                if s > e {
                    return Err(FieldError::new(at(".rangeEnd"), format!("{e} is before rangeStart {s}")));
                }
            }
            if crate::ipam::capacity(std::slice::from_ref(r)) == 0 {
                return Err(FieldError::new(
                    at(""),
                    format!("{} holds no address to hand out (network, broadcast and gateway excluded)", r.subnet),
                ));
            }
            if let Some(o) = seen.iter().find(|o| o.contains(&r.subnet.addr()) || r.subnet.contains(&o.addr())) {
                return Err(FieldError::new(at(".subnet"), format!("{} overlaps {o}", r.subnet)));
            }
            seen.push(r.subnet);
        }
    }
    Ok(())
}

fn validate_dns(dns: &Dns, field: &str) -> Result<(), FieldError> {
    for (i, n) in dns.nameservers.iter().enumerate() {
        if n.parse::<IpAddr>().is_err() {
            return Err(FieldError::new(format!("{field}.nameservers[{i}]"), format!("{n:?} is not an IP address")));
        }
    }
    for (i, s) in dns.search.iter().enumerate() {
        if s.is_empty() || s.contains(char::is_whitespace) {
            return Err(FieldError::new(format!("{field}.search[{i}]"), format!("{s:?} is not a DNS suffix")));
        }
    }
    Ok(())
}

impl EndpointRequest {
    /// Checks every field.
    pub fn validate(&self) -> Result<(), FieldError> {
        if !valid_name(&self.network) {
            return Err(FieldError::new("network", format!("{:?} is not a valid network name", self.network)));
        }
        if self.container_id.is_empty()
            || !self.container_id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(FieldError::new(
                "containerId",
                format!("{:?} must be letters, digits, '-', '_' or '.', and not empty", self.container_id),
            ));
        }
        if self.ifname.is_empty()
            || self.ifname.len() > 15
            || self.ifname == "."
            || self.ifname == ".."
            || self.ifname.contains(|c: char| c == '/' || c == ':' || c.is_whitespace())
        {
            return Err(FieldError::new(
                "ifname",
                format!("{:?} is not a valid interface name (1 to 15 bytes, no '/', ':' or spaces)", self.ifname),
            ));
        }
        if self.netns.is_empty() || !self.netns.starts_with('/') {
            return Err(FieldError::new("netns", format!("{:?} must be an absolute path", self.netns)));
        }
        if let Some(r) = &self.ip_ranges {
            validate_ranges(r, "ipRanges")?;
        }
        if let Some(d) = &self.dns {
            validate_dns(d, "dns")?;
        }
        let mut used = std::collections::BTreeSet::new();
        for (i, p) in self.policies.iter().enumerate() {
            if let Policy::PortMapping { host_port, container_port, protocol, host_ip } = p {
                if *host_port == 0 || *container_port == 0 {
                    return Err(FieldError::new(format!("policies[{i}]"), "ports must be 1..65535"));
                }
                if !used.insert((*host_port, *protocol, *host_ip)) {
                    return Err(FieldError::new(
                        format!("policies[{i}].hostPort"),
                        format!("{host_port}/{protocol:?} is mapped twice"),
                    ));
                }
            }
            p.validate_acl(&format!("policies[{i}]"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn net(json: &str) -> Network {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn pod_search_suffixes_come_first_without_repeats() {
        let dns = Dns { search: vec!["svc.cluster.local".into(), "example.com".into()], ..Dns::default() };
        let got = dns.for_pod(None, Some("web"), "cluster.local");
        assert_eq!(got.search, ["web.svc.cluster.local", "svc.cluster.local", "cluster.local", "example.com"]);
        let runtime = Dns { nameservers: vec!["10.96.0.10".into()], options: vec!["ndots:5".into()], ..Dns::default() };
        let got = dns.for_pod(Some(&runtime), None, "cluster.local");
        assert_eq!(got.nameservers, ["10.96.0.10"]);
        assert_eq!(got.search, ["svc.cluster.local", "example.com"], "no namespace: no pod suffixes");
    }

    #[test]
    fn validation_names_the_field() {
        let n = net(r#"{"name":"n","ranges":[[{"subnet":"10.1.0.0/24","rangeStart":"10.2.0.1"}]]}"#);
        assert_eq!(n.validate().unwrap_err().field, "ranges[0][0].rangeStart");
        let n = net(r#"{"name":"n","ranges":[[{"subnet":"10.1.0.1/24"}]]}"#);
        assert!(n.validate().unwrap_err().message.contains("10.1.0.0/24"));
        let n = net(r#"{"name":"n","ranges":[[{"subnet":"10.1.0.0/24"}],[{"subnet":"10.1.0.0/16"}]]}"#);
        assert_eq!(n.validate().unwrap_err().field, "ranges[1][0].subnet");
        let n = net(r#"{"name":"n","ranges":[[{"subnet":"10.1.0.0/24"}, {"subnet":"fd00::/64"}]]}"#);
        assert_eq!(n.validate().unwrap_err().field, "ranges[0][1].subnet");
        let n = net(r#"{"name":"n","ranges":[[{"subnet":"10.1.0.0/24","rangeStart":"10.1.0.255"}]]}"#);
        assert_eq!(n.validate().unwrap_err().field, "ranges[0][0]");
        let n = net(r#"{"name":"bad name","ranges":[[{"subnet":"10.1.0.0/24"}]]}"#);
        assert_eq!(n.validate().unwrap_err().field, "name");
        let n = net(r#"{"name":"n","ranges":[[{"subnet":"10.1.0.0/24"}]],"dns":{"nameservers":["x"]}}"#);
        assert_eq!(n.validate().unwrap_err().field, "dns.nameservers[0]");
        let n = net(r#"{"name":"n","ranges":[[{"subnet":"10.1.0.0/24"}],[{"subnet":"fd00::/64"}]],"mtu":1400}"#);
        n.validate().unwrap();
        net(r#"{"name":"n","usePodCIDR":true}"#).validate().unwrap();
        assert_eq!(net(r#"{"name":"n"}"#).validate().unwrap_err().field, "ranges");
        let both = net(r#"{"name":"n","usePodCIDR":true,"ranges":[[{"subnet":"10.1.0.0/24"}]]}"#);
        assert_eq!(both.validate().unwrap_err().field, "usePodCIDR");
        assert!(serde_json::from_str::<Network>(r#"{"name":"n","ranges":[],"bogus":1}"#).is_err());
    }

    #[test]
    fn policies_round_trip_with_hcn_type_names() {
        let p = vec![
            Policy::OutboundNat { exceptions: vec!["10.0.0.0/8".parse().unwrap()] },
            Policy::PortMapping { host_port: 8080, container_port: 80, protocol: Protocol::Tcp, host_ip: None },
        ];
        let s = serde_json::to_string(&p).unwrap();
        assert_eq!(
            s,
            r#"[{"type":"OutBoundNAT","exceptions":["10.0.0.0/8"]},{"type":"PortMapping","hostPort":8080,"containerPort":80,"protocol":"tcp"}]"#
        );
        assert_eq!(serde_json::from_str::<Vec<Policy>>(&s).unwrap(), p);
    }

    #[test]
    fn acl_policies_parse_and_are_checked() {
        let p: Policy = serde_json::from_str(
            r#"{"type":"ACL","action":"Block","direction":"Out","priority":100,"protocol":"tcp",
                "remoteAddresses":["169.254.169.254/32"],"ports":["80","8000-8100"]}"#,
        )
        .unwrap();
        assert!(p.validate_acl("policies[0]").is_ok());
        assert_eq!(acl_port_range("8000-8100"), Some((8000, 8100)));
        assert_eq!(acl_port_range("0"), None);
        assert_eq!(acl_port_range("90-80"), None);
        let bad: Policy =
            serde_json::from_str(r#"{"type":"ACL","action":"Allow","direction":"In","ports":["80"]}"#).unwrap();
        assert_eq!(bad.validate_acl("policies[2]").unwrap_err().field, "policies[2].protocol");
        let bad: Policy = serde_json::from_str(
            r#"{"type":"ACL","action":"Allow","direction":"In","protocol":"udp","ports":["http"]}"#,
        )
        .unwrap();
        assert_eq!(bad.validate_acl("policies[0]").unwrap_err().field, "policies[0].ports[0]");
        assert!(serde_json::from_str::<Policy>(r#"{"type":"ACL","action":"Deny","direction":"In"}"#).is_err());
    }
}
