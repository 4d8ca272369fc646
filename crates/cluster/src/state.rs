//! The cluster state: every object flowgate reads, keyed by namespace and name.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{NetworkPolicy, ServiceCIDR};

use crate::config::{FlowgateConfiguration, KubeProxyConfiguration};

/// The namespace and name of a namespaced object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// The namespace (`default` when the manifest gives none).
    pub namespace: String,
    /// The name.
    pub name: String,
}

impl ObjectKey {
    /// A key.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> ObjectKey {
        ObjectKey { namespace: namespace.into(), name: name.into() }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Everything flowgate knows about the cluster.
#[derive(Clone, Debug, Default)]
pub struct ClusterState {
    /// Nodes by name.
    pub nodes: BTreeMap<String, Node>,
    /// Namespaces by name.
    pub namespaces: BTreeMap<String, Namespace>,
    /// Pods.
    pub pods: BTreeMap<ObjectKey, Pod>,
    /// Services.
    pub services: BTreeMap<ObjectKey, Service>,
    /// EndpointSlices.
    pub endpoint_slices: BTreeMap<ObjectKey, EndpointSlice>,
    /// NetworkPolicies.
    pub network_policies: BTreeMap<ObjectKey, NetworkPolicy>,
    /// ServiceCIDRs by name.
    pub service_cidrs: BTreeMap<String, ServiceCIDR>,
    /// kube-proxy's configuration, if given.
    pub kube_proxy: Option<KubeProxyConfiguration>,
    /// flowgate's own configuration, if given.
    pub flowgate: Option<FlowgateConfiguration>,
    /// Endpoints the node's host networking service made (pods attached through CNI), keyed by
    /// pod (or, without one, by `""` and the attachment id). Not a cluster object: node-local.
    pub local_endpoints: BTreeMap<ObjectKey, LocalEndpoint>,
    /// Load balancers the node's host networking service holds (HNS LoadBalancer objects), by name.
    pub local_load_balancers: BTreeMap<String, LocalLoadBalancer>,
}

/// A load balancer of the node's host networking service: frontend VIPs and ports spread over
/// backend addresses, served by the switch like a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalLoadBalancer {
    /// The addresses it answers on.
    pub frontend_vips: Vec<std::net::IpAddr>,
    /// Its ports.
    pub ports: Vec<LoadBalancerPort>,
    /// The backends' addresses.
    pub backends: Vec<std::net::IpAddr>,
    /// Rewrite the source to a node address (so replies come back through this node).
    pub source_nat: bool,
}

/// One port of a [`LocalLoadBalancer`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LoadBalancerPort {
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    /// The port on the VIPs.
    pub frontend_port: u16,
    /// The port on the backends.
    pub backend_port: u16,
}

/// An endpoint made on this node by its host networking service: the addresses it was given are
/// what the pod sends from, whether or not the API server reports them yet.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct LocalEndpoint {
    /// Its addresses.
    pub ips: Vec<std::net::IpAddr>,
    /// Outbound NAT on it (an `OutBoundNAT` policy) with these exceptions, if any.
    pub outbound_nat: Option<Vec<ipnet::IpNet>>,
    /// Host ports forwarded to it (`PortMapping` policies, the CNI `portMappings` capability).
    pub host_ports: Vec<HostPort>,
    /// Its ACL rules (`ACL` policies), in the order given.
    pub acls: Vec<LocalAcl>,
    /// The gateway addresses on its host side: addresses of the node (what the node's own
    /// connections to the pod come from).
    pub gateways: Vec<std::net::IpAddr>,
}

/// An ACL rule of a local endpoint (the host networking service's `ACL` policy).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalAcl {
    /// Allow (true) or block.
    pub allow: bool,
    /// Connections to the endpoint (true) or from it.
    pub inbound: bool,
    /// Lower first.
    pub priority: u16,
    /// `TCP`, `UDP`, `SCTP`; any when absent.
    pub protocol: Option<String>,
    /// Remote prefixes; any when empty.
    pub remote: Vec<ipnet::IpNet>,
    /// Destination port ranges; any when empty.
    pub ports: Vec<(u16, u16)>,
}

/// A port of the node forwarded to a local endpoint (a pod's `hostPort`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HostPort {
    /// The port on the node.
    pub host_port: u16,
    /// The port in the pod.
    pub container_port: u16,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    /// Only on this node address (every node address when absent).
    pub host_ip: Option<std::net::IpAddr>,
}

impl ClusterState {
    /// An empty state.
    pub fn new() -> ClusterState {
        ClusterState::default()
    }
}
