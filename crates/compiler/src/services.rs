//! Services as kube-proxy reads them: one [`ServicePort`] per port and IP family, with the
//! addresses, policies and flags that decide how its traffic is handled (pkg/proxy/service.go).

use std::net::IpAddr;

use flowgate_cluster::k8s_openapi::api::core::v1::Service;
use flowgate_cluster::{parse_cidr_sloppy, parse_ip_sloppy, ObjectKey};
use flowgate_switch::Proto;
use ipnet::IpNet;

/// kube-proxy's default ClientIP affinity timeout (3 hours), the API server's default.
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10800;

/// One port of one Service, for one IP family.
#[derive(Clone, Debug)]
pub struct ServicePort {
    /// The Service.
    pub service: ObjectKey,
    /// The port's name (empty for a single unnamed port).
    pub port_name: String,
    /// The ClusterIP of this family.
    pub cluster_ip: IpAddr,
    /// The service port.
    pub port: u16,
    /// The protocol.
    pub proto: Proto,
    /// The NodePort, if allocated.
    pub node_port: Option<u16>,
    /// externalIPs of this family.
    pub external_ips: Vec<IpAddr>,
    /// Load-balancer ingress IPs of this family, except `ipMode: Proxy` ones.
    pub lb_ips: Vec<IpAddr>,
    /// loadBalancerSourceRanges of this family.
    pub source_ranges: Vec<IpNet>,
    /// ClientIP affinity timeout, when affinity is on.
    pub affinity_timeout: Option<u32>,
    /// externalTrafficPolicy is Local (and the service is externally accessible).
    pub external_local: bool,
    /// internalTrafficPolicy is Local.
    pub internal_local: bool,
    /// healthCheckNodePort, when set.
    pub health_check_node_port: Option<u16>,
}

impl ServicePort {
    /// `namespace/name:port` as kube-proxy names service ports.
    pub fn name(&self) -> String {
        if self.port_name.is_empty() {
            format!("{}", self.service)
        } else {
            format!("{}:{}", self.service, self.port_name)
        }
    }

    /// Whether traffic can reach the service from outside (NodePort, externalIPs, LB IPs).
    pub fn externally_accessible(&self) -> bool {
        self.node_port.is_some() || !self.external_ips.is_empty() || !self.lb_ips.is_empty()
    }

    /// Whether Cluster-policy endpoints are needed (pkg/proxy UsesClusterEndpoints).
    pub fn uses_cluster_endpoints(&self) -> bool {
        !self.internal_local || self.externally_accessible()
    }

    /// Whether Local-policy endpoints are needed (pkg/proxy UsesLocalEndpoints).
    pub fn uses_local_endpoints(&self) -> bool {
        self.internal_local || (self.external_local && self.externally_accessible())
    }
}

fn family_ips<'a>(values: impl Iterator<Item = &'a String>, v4: bool) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for v in values {
        if let Some(ip) = parse_ip_sloppy(v.trim()) {
            if ip.is_ipv4() == v4 && !out.contains(&ip) {
                out.push(ip);
            }
        }
    }
    out
}

/// The ClusterIP of a family (pkg/proxy/util GetClusterIPByFamily), if the Service has one.
pub fn cluster_ip(svc: &Service, v4: bool) -> Option<IpAddr> {
    let spec = svc.spec.as_ref()?;
    let mut candidates: Vec<&String> = spec.cluster_ips.iter().flatten().collect();
    if candidates.is_empty() {
        candidates.extend(spec.cluster_ip.iter());
    }
    candidates.into_iter().filter_map(|c| parse_ip_sloppy(c)).find(|ip| ip.is_ipv4() == v4)
}

/// The service ports of `svc` for one family; empty for headless and ExternalName Services and
/// for a family the Service has no ClusterIP of.
pub fn service_ports(key: &ObjectKey, svc: &Service, v4: bool) -> Vec<ServicePort> {
    let Some(spec) = svc.spec.as_ref() else {
        return Vec::new();
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return Vec::new();
    }
    let Some(cluster_ip) = cluster_ip(svc, v4) else {
        return Vec::new();
    };
    let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
    let external_ips = family_ips(spec.external_ips.iter().flatten(), v4);
    let lb_ips = family_ips(
        svc.status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|l| l.ingress.as_ref())
            .into_iter()
            .flatten()
            .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
            .filter_map(|i| i.ip.as_ref()),
        v4,
    );
    let source_ranges: Vec<IpNet> = spec
        .load_balancer_source_ranges
        .iter()
        .flatten()
        .filter_map(|r| parse_cidr_sloppy(r.trim()))
        .filter(|n| matches!(n, IpNet::V4(_)) == v4)
        .map(|n| n.trunc())
        .collect();
    let externally_accessible =
        matches!(ty, "NodePort" | "LoadBalancer") || !spec.external_ips.as_deref().unwrap_or_default().is_empty();
    let external_local = externally_accessible && spec.external_traffic_policy.as_deref() == Some("Local");
    let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let affinity_timeout = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .unwrap_or(DEFAULT_AFFINITY_TIMEOUT)
    });
    let health_check_node_port = (ty == "LoadBalancer" && external_local)
        .then_some(spec.health_check_node_port)
        .flatten()
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0);
    spec.ports
        .iter()
        .flatten()
        .filter_map(|p| {
            Some(ServicePort {
                service: key.clone(),
                port_name: p.name.clone().unwrap_or_default(),
                cluster_ip,
                port: u16::try_from(p.port).ok()?,
                proto: Proto::from_name(p.protocol.as_deref().unwrap_or("TCP"))?,
                node_port: p
                    .node_port
                    .and_then(|n| u16::try_from(n).ok())
                    .filter(|n| *n != 0 && matches!(ty, "NodePort" | "LoadBalancer")),
                external_ips: external_ips.clone(),
                lb_ips: if ty == "LoadBalancer" { lb_ips.clone() } else { Vec::new() },
                source_ranges: source_ranges.clone(),
                affinity_timeout,
                external_local,
                internal_local,
                health_check_node_port,
            })
        })
        .collect()
}
