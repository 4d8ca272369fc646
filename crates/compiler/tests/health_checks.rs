//! Health check node ports as kube-proxy's service health server sees them: which Services have
//! one, the count of this node's ready endpoints per family (distinct addresses over the Service's
//! ports), kept by incremental updates, and the addresses they are served on (nodePortAddresses).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;

use flowgate_cluster::{load_str, ObjectKey};
use flowgate_compiler::{Changes, Compiler};

const NODE: &str = "apiVersion: v1\nkind: Node\nmetadata: {name: node-a}\nstatus: {addresses: [{type: InternalIP, address: 192.168.0.2}, {type: InternalIP, address: 'fd00::2'}]}\n";

fn lb(name: &str, policy: &str, hc: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  type: LoadBalancer\n  clusterIP: 172.30.0.{n}\n  externalTrafficPolicy: {policy}\n{hcline}  ports: [{{name: http, port: 80, nodePort: 3{hc}}}, {{name: https, port: 443, nodePort: 3{hc2}}}]\n",
        n = hc % 200,
        hcline = if policy == "Local" { format!("  healthCheckNodePort: {hc}\n") } else { String::new() },
        hc2 = hc + 1000
    )
}

/// A slice of `web`: the same pod serves both ports (counted once); one pod on another node, one
/// local pod not ready.
const SLICE: &str = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nports: [{name: http, port: 8080}, {name: https, port: 8443}]\nendpoints:\n- {addresses: [10.0.1.5], nodeName: node-a}\n- {addresses: [10.0.2.5], nodeName: node-b}\n- {addresses: [10.0.1.6], nodeName: node-a, conditions: {ready: false}}\n";

#[test]
fn health_checks_follow_services_and_local_ready_endpoints() {
    let text = format!("{NODE}---\n{}---\n{}---\n{SLICE}", lb("web", "Local", 1101), lb("other", "Cluster", 1102));
    let mut state = load_str(std::path::Path::new("t.yaml"), &text).unwrap().state;
    let mut c = Compiler::new(None);
    c.compile_full(&state).unwrap();
    let checks = c.health_checks();
    assert_eq!(checks.len(), 1, "only the Local Service has one: {checks:?}");
    assert_eq!(checks[0].service, ObjectKey::new("shop", "web"));
    assert_eq!(checks[0].port, 1101);
    assert_eq!(checks[0].local_endpoints_v4, Some(1), "one local ready pod, over two ports");
    assert_eq!(checks[0].local_endpoints_v6, None, "a single-stack Service");

    // The slice goes: no local endpoint; the Service stays.
    let slice = ObjectKey::new("shop", "web-1");
    state.endpoint_slices.remove(&slice);
    let mut ch = Changes::default();
    ch.endpoint_slices.insert(slice);
    c.update(&state, &ch).unwrap();
    assert_eq!(c.health_checks()[0].local_endpoints_v4, Some(0));

    // The Service goes: no health check.
    let web = ObjectKey::new("shop", "web");
    state.services.remove(&web);
    let mut ch = Changes::default();
    ch.services.insert(web);
    c.update(&state, &ch).unwrap();
    assert!(c.health_checks().is_empty());
}

#[test]
fn health_checks_are_served_on_the_node_port_addresses() {
    let addrs = |config: &str| -> Vec<IpAddr> {
        let text = format!("{NODE}---\n{config}");
        let state = load_str(std::path::Path::new("t.yaml"), &text).unwrap().state;
        let mut c = Compiler::new(None);
        c.compile_full(&state).unwrap();
        c.health_check_addresses()
    };
    let ips = |v: &[&str]| v.iter().map(|s| s.parse::<IpAddr>().unwrap()).collect::<Vec<_>>();
    let kp = |npa: &str| {
        format!(
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nnodePortAddresses: {npa}\n"
        )
    };
    // nftables mode's default: the primary addresses.
    assert_eq!(addrs(""), ips(&["192.168.0.2", "fd00::2"]));
    assert_eq!(addrs(&kp("[all]")), ips(&["0.0.0.0", "::"]));
    // Loopback when a CIDR holds it; a family with no CIDR: every address of it.
    assert_eq!(addrs(&kp("['127.0.0.0/8']")), ips(&["127.0.0.1", "::"]));
    assert_eq!(addrs(&kp("['192.168.0.0/16', '::1/128']")), ips(&["192.168.0.2", "::1"]));
}
