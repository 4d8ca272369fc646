//! Synthetic clusters of any size, for benchmarks and load tests: one node (`node-a`,
//! 192.168.0.2), `services` ClusterIP Services from 172.30.0.1 upward (every fourth a NodePort),
//! each with one EndpointSlice of `endpoints` ready endpoints from 10.64.0.0 upward (the first on
//! node-a, the others on node-b), and a KubeProxyConfiguration with clusterCIDR 10.0.0.0/8.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeStatus, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::api::networking::v1::{ServiceCIDR, ServiceCIDRSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::config::KubeProxyConfiguration;
use crate::state::{ClusterState, ObjectKey};

/// The namespace every synthetic object lives in.
pub const NAMESPACE: &str = "bench";

/// The ClusterIP of synthetic Service `i`.
pub fn cluster_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 30, 0, 0)) + i as u32 + 1)
}

/// Endpoint `e` of synthetic Service `i`, with `per` endpoints per Service.
pub fn endpoint_ip(i: usize, e: usize, per: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 64, 0, 0)) + (i * per + e) as u32)
}

/// The Service object `i`.
pub fn service(i: usize) -> Service {
    // NodePorts come from 30000-32767 (2,768 of them): the first 11,072 Services get one.
    let node_port = (i.is_multiple_of(4) && i / 4 < 2768).then(|| 30000 + (i / 4) as i32);
    Service {
        metadata: meta(&format!("svc-{i}"), None),
        spec: Some(ServiceSpec {
            type_: Some(if node_port.is_some() { "NodePort" } else { "ClusterIP" }.into()),
            cluster_ip: Some(cluster_ip(i).to_string()),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                protocol: Some("TCP".into()),
                node_port,
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

/// The EndpointSlice of Service `i` with endpoints `0..count` (of `per` address slots).
pub fn endpoint_slice(i: usize, count: usize, per: usize) -> EndpointSlice {
    let mut labels = BTreeMap::new();
    labels.insert("kubernetes.io/service-name".to_string(), format!("svc-{i}"));
    EndpointSlice {
        metadata: meta(&format!("svc-{i}-abcde"), Some(labels)),
        address_type: "IPv4".into(),
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(8080),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        endpoints: (0..count)
            .map(|e| Endpoint {
                addresses: vec![endpoint_ip(i, e, per).to_string()],
                node_name: Some(if e == 0 { "node-a" } else { "node-b" }.into()),
                conditions: Some(EndpointConditions { ready: Some(true), ..Default::default() }),
                ..Default::default()
            })
            .collect(),
    }
}

fn meta(name: &str, labels: Option<BTreeMap<String, String>>) -> ObjectMeta {
    ObjectMeta { name: Some(name.into()), namespace: Some(NAMESPACE.into()), labels, ..Default::default() }
}

/// The whole synthetic cluster.
pub fn cluster(services: usize, endpoints: usize) -> ClusterState {
    let mut s = ClusterState::new();
    s.nodes.insert(
        "node-a".into(),
        Node {
            metadata: ObjectMeta { name: Some("node-a".into()), ..Default::default() },
            status: Some(NodeStatus {
                addresses: Some(vec![NodeAddress { type_: "InternalIP".into(), address: "192.168.0.2".into() }]),
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    s.service_cidrs.insert(
        "kubernetes".into(),
        ServiceCIDR {
            metadata: ObjectMeta { name: Some("kubernetes".into()), ..Default::default() },
            spec: Some(ServiceCIDRSpec { cidrs: Some(vec!["172.30.0.0/16".into()]) }),
            status: None,
        },
    );
    s.kube_proxy = Some(KubeProxyConfiguration {
        api_version: "kubeproxy.config.k8s.io/v1alpha1".into(),
        kind: "KubeProxyConfiguration".into(),
        cluster_cidr: "10.0.0.0/8".into(),
        ..Default::default()
    });
    for i in 0..services {
        s.services.insert(ObjectKey::new(NAMESPACE, format!("svc-{i}")), service(i));
        s.endpoint_slices
            .insert(ObjectKey::new(NAMESPACE, format!("svc-{i}-abcde")), endpoint_slice(i, endpoints, endpoints));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_are_valid() {
        let s = cluster(5, 3);
        for svc in s.services.values() {
            crate::validate::service(svc).unwrap();
        }
        for sl in s.endpoint_slices.values() {
            crate::validate::endpoint_slice(sl).unwrap();
        }
        assert_eq!(s.endpoint_slices.values().map(|e| e.endpoints.len()).sum::<usize>(), 15);
    }
}
