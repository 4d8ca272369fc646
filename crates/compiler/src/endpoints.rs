//! Endpoints of a service port, from EndpointSlices (pkg/proxy/endpointslicecache.go), and their
//! categorisation into Cluster- and Local-policy endpoints with topology (pkg/proxy/topology.go).

use std::net::SocketAddr;

use flowgate_cluster::k8s_openapi::api::discovery::v1::EndpointSlice;
use flowgate_cluster::{parse_ip_sloppy, ObjectKey};

use crate::services::ServicePort;

/// The label tying an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// One endpoint of a service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Address and port.
    pub addr: SocketAddr,
    /// Ready (conditions.ready, nil meaning true).
    pub ready: bool,
    /// Serving (conditions.serving, nil meaning true).
    pub serving: bool,
    /// Terminating (conditions.terminating, nil meaning false).
    pub terminating: bool,
    /// On the traced node.
    pub local: bool,
    /// Zones it is hinted for.
    pub zone_hints: Vec<String>,
    /// Nodes it is hinted for.
    pub node_hints: Vec<String>,
}

/// The Service an EndpointSlice belongs to (its `kubernetes.io/service-name` label, in the
/// slice's namespace); `None` for slices without the label, which kube-proxy ignores.
pub fn service_of_slice(key: &ObjectKey, slice: &EndpointSlice) -> Option<ObjectKey> {
    let svc = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some(ObjectKey::new(key.namespace.clone(), svc.clone()))
}

/// The endpoints of a service port, from the Service's slices, for the port's family,
/// deduplicated by address and port (a ready copy wins over a not-ready one).
pub fn endpoints<'a>(slices: impl Iterator<Item = &'a EndpointSlice>, sp: &ServicePort, node: &str) -> Vec<Endpoint> {
    let v4 = sp.cluster_ip.is_ipv4();
    let mut out: Vec<Endpoint> = Vec::new();
    for slice in slices {
        if slice.address_type != if v4 { "IPv4" } else { "IPv6" } {
            continue;
        }
        for port in slice.ports.iter().flatten() {
            if port.name.as_deref().unwrap_or("") != sp.port_name {
                continue;
            }
            if port.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase() != sp.proto.name() {
                continue;
            }
            let Some(num) = port.port.and_then(|p| u16::try_from(p).ok()) else {
                continue;
            };
            for e in &slice.endpoints {
                let Some(ip) = e.addresses.first().and_then(|a| parse_ip_sloppy(a)) else {
                    continue;
                };
                if ip.is_ipv4() != v4 {
                    continue;
                }
                let c = e.conditions.clone().unwrap_or_default();
                let ready = c.ready.unwrap_or(true);
                let ep = Endpoint {
                    addr: SocketAddr::new(ip, num),
                    ready,
                    serving: c.serving.unwrap_or(true),
                    terminating: c.terminating.unwrap_or(false),
                    local: e.node_name.as_deref() == Some(node),
                    zone_hints: e
                        .hints
                        .iter()
                        .flat_map(|h| h.for_zones.iter().flatten())
                        .map(|z| z.name.clone())
                        .collect(),
                    node_hints: e
                        .hints
                        .iter()
                        .flat_map(|h| h.for_nodes.iter().flatten())
                        .map(|n| n.name.clone())
                        .collect(),
                };
                match out.iter_mut().find(|o| o.addr == ep.addr) {
                    Some(existing) if !existing.ready && ep.ready => *existing = ep,
                    Some(_) => {}
                    None => out.push(ep),
                }
            }
        }
    }
    out
}

/// Endpoints sorted into what Cluster and Local traffic policies may use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Categorized {
    /// Usable with Cluster policy (topology applied), when the service uses Cluster endpoints.
    pub cluster: Vec<SocketAddr>,
    /// Usable with Local policy, when the service uses Local endpoints.
    pub local: Vec<SocketAddr>,
    /// Whether the service has a usable endpoint anywhere in the cluster.
    pub has_any: bool,
    /// The topology mode that applied to Cluster endpoints (`""`, `PreferSameZone`, `PreferSameNode`).
    pub topology: &'static str,
}

/// Sorts endpoints as kube-proxy's CategorizeEndpoints: ready endpoints by default, falling back
/// to serving-and-terminating ones (separately for Cluster and Local); topology hints narrow the
/// Cluster endpoints when every ready endpoint carries them and one matches this node or zone.
pub fn categorize(
    eps: &[Endpoint],
    sp: &ServicePort,
    node: &str,
    zone: Option<&str>,
    prefer_same_node: bool,
) -> Categorized {
    let mut out = Categorized::default();
    if eps.is_empty() {
        return out;
    }
    if sp.uses_cluster_endpoints() {
        out.topology = topology_mode(eps, node, zone, prefer_same_node);
        out.cluster = eps
            .iter()
            .filter(|e| e.ready && available_for_topology(e, out.topology, node, zone))
            .map(|e| e.addr)
            .collect();
        if out.cluster.is_empty() {
            out.cluster = eps.iter().filter(|e| e.serving && e.terminating).map(|e| e.addr).collect();
        }
        out.has_any = !out.cluster.is_empty();
    }
    if !sp.uses_local_endpoints() {
        return out;
    }
    let mut local_ready = false;
    let mut local_serving_terminating = false;
    for e in eps {
        if e.ready {
            out.has_any = true;
            local_ready |= e.local;
        } else if e.serving && e.terminating {
            out.has_any = true;
            local_serving_terminating |= e.local;
        }
    }
    if local_ready {
        out.local = eps.iter().filter(|e| e.local && e.ready).map(|e| e.addr).collect();
    } else if local_serving_terminating {
        out.local = eps.iter().filter(|e| e.local && e.serving && e.terminating).map(|e| e.addr).collect();
    }
    out
}

fn topology_mode(eps: &[Endpoint], node: &str, zone: Option<&str>, prefer_same_node: bool) -> &'static str {
    let ready: Vec<&Endpoint> = eps.iter().filter(|e| e.ready).collect();
    if ready.is_empty() {
        return "";
    }
    if prefer_same_node
        && ready.iter().all(|e| !e.node_hints.is_empty())
        && ready.iter().any(|e| e.node_hints.iter().any(|n| n == node))
    {
        return "PreferSameNode";
    }
    if let Some(zone) = zone {
        if ready.iter().all(|e| !e.zone_hints.is_empty())
            && ready.iter().any(|e| e.zone_hints.iter().any(|z| z == zone))
        {
            return "PreferSameZone";
        }
    }
    ""
}

fn available_for_topology(e: &Endpoint, mode: &str, node: &str, zone: Option<&str>) -> bool {
    match mode {
        "PreferSameNode" => e.node_hints.iter().any(|n| n == node),
        "PreferSameZone" => zone.is_some_and(|z| e.zone_hints.iter().any(|h| h == z)),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowgate_cluster::ObjectKey;
    use flowgate_switch::Proto;

    fn sp(internal_local: bool, external_local: bool, node_port: Option<u16>) -> ServicePort {
        ServicePort {
            service: ObjectKey::new("ns", "svc"),
            port_name: String::new(),
            cluster_ip: "172.30.0.1".parse().unwrap(),
            port: 80,
            proto: Proto::TCP,
            node_port,
            external_ips: Vec::new(),
            lb_ips: Vec::new(),
            source_ranges: Vec::new(),
            affinity_timeout: None,
            external_local,
            internal_local,
            health_check_node_port: None,
        }
    }

    fn ep(addr: &str, ready: bool, serving: bool, terminating: bool, local: bool, zones: &[&str]) -> Endpoint {
        Endpoint {
            addr: addr.parse().unwrap(),
            ready,
            serving,
            terminating,
            local,
            zone_hints: zones.iter().map(|z| z.to_string()).collect(),
            node_hints: Vec::new(),
        }
    }

    fn addrs(v: &[SocketAddr]) -> Vec<String> {
        v.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn ready_endpoints_win_over_terminating_ones() {
        let eps = [ep("10.0.0.1:80", true, true, false, false, &[]), ep("10.0.0.2:80", false, true, true, false, &[])];
        let c = categorize(&eps, &sp(false, false, None), "n", None, true);
        assert_eq!(addrs(&c.cluster), ["10.0.0.1:80"]);
        assert!(c.has_any);
    }

    #[test]
    fn serving_terminating_fallback_and_never_not_serving() {
        let eps = [ep("10.0.0.1:80", false, false, true, false, &[]), ep("10.0.0.2:80", false, true, true, false, &[])];
        let c = categorize(&eps, &sp(false, false, None), "n", None, true);
        assert_eq!(addrs(&c.cluster), ["10.0.0.2:80"]);
        let none = [ep("10.0.0.1:80", false, false, false, false, &[])];
        let c = categorize(&none, &sp(false, false, None), "n", None, true);
        assert!(c.cluster.is_empty() && !c.has_any);
    }

    #[test]
    fn local_policy_falls_back_separately() {
        // Remote endpoint ready, local one only serving-terminating: Local uses the terminating
        // local one, Cluster the ready remote one.
        let eps = [ep("10.0.0.1:80", true, true, false, false, &[]), ep("10.0.0.2:80", false, true, true, true, &[])];
        let c = categorize(&eps, &sp(false, true, Some(30000)), "n", None, true);
        assert_eq!(addrs(&c.cluster), ["10.0.0.1:80"]);
        assert_eq!(addrs(&c.local), ["10.0.0.2:80"]);
    }

    #[test]
    fn zone_hints_apply_only_when_complete_and_matching() {
        let eps =
            [ep("10.0.0.1:80", true, true, false, false, &["a"]), ep("10.0.0.2:80", true, true, false, false, &["b"])];
        let c = categorize(&eps, &sp(false, false, None), "n", Some("a"), true);
        assert_eq!((addrs(&c.cluster), c.topology), (vec!["10.0.0.1:80".to_string()], "PreferSameZone"));
        let c = categorize(&eps, &sp(false, false, None), "n", Some("c"), true);
        assert_eq!(c.cluster.len(), 2, "no endpoint for this zone: hints ignored");
        let partial =
            [ep("10.0.0.1:80", true, true, false, false, &["a"]), ep("10.0.0.2:80", true, true, false, false, &[])];
        let c = categorize(&partial, &sp(false, false, None), "n", Some("a"), true);
        assert_eq!(c.cluster.len(), 2, "an endpoint without hints: hints ignored");
    }

    #[test]
    fn node_hints_need_the_feature_gate() {
        let mut a = ep("10.0.0.1:80", true, true, false, true, &["z"]);
        a.node_hints = vec!["n".into()];
        let mut b = ep("10.0.0.2:80", true, true, false, false, &["z"]);
        b.node_hints = vec!["m".into()];
        let eps = [a, b];
        let c = categorize(&eps, &sp(false, false, None), "n", Some("z"), true);
        assert_eq!((c.cluster.len(), c.topology), (1, "PreferSameNode"));
        let c = categorize(&eps, &sp(false, false, None), "n", Some("z"), false);
        assert_eq!((c.cluster.len(), c.topology), (2, "PreferSameZone"));
    }

    #[test]
    fn internal_local_without_external_access_skips_cluster_endpoints() {
        let eps = [ep("10.0.0.1:80", true, true, false, false, &[])];
        let c = categorize(&eps, &sp(true, false, None), "n", None, true);
        assert!(c.cluster.is_empty() && c.local.is_empty());
        assert!(c.has_any, "an endpoint exists elsewhere: drop, not reject");
    }
}
