//! Per-rule counters: every connection's first packet counts under the rule that decided it — the
//! Service's load-balancing rule (ClusterIP or NodePort), the NetworkPolicy rule that let it in —
//! read back from user space under the names trace gives those rules. BPF_PROG_TEST_RUN of the
//! uplink program.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use flowgate_dataplane::Dataplane;
use flowgate_ebpf::backend::{EbpfDataplane, KernelMaps};
use flowgate_ebpf::{objects, test_run};
use flowgate_switch::PolicyDelta;
use flowgate_wire::{build_frame, tcp, FrameSpec, IpPair, L4Spec};

const MANIFESTS: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node-a}
status: {addresses: [{type: InternalIP, address: 192.168.0.2}]}
---
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clusterCIDR: 10.0.0.0/8
---
apiVersion: networking.k8s.io/v1
kind: ServiceCIDR
metadata: {name: k}
spec: {cidrs: [172.30.0.0/16]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, labels: {app: web}}
spec: {nodeName: node-a, containers: [{name: c, image: i}]}
status: {podIP: 10.0.1.10}
---
apiVersion: v1
kind: Pod
metadata: {name: web-2, labels: {app: web}}
spec: {nodeName: node-a, containers: [{name: c, image: i}]}
status: {podIP: 10.0.1.11}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  clusterIP: 172.30.0.10
  ports: [{name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints:
- {addresses: [10.0.1.10], nodeName: node-a, conditions: {ready: true}}
- {addresses: [10.0.1.11], nodeName: node-a, conditions: {ready: true}}
ports: [{name: http, port: 8080, protocol: TCP}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-partners}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{ipBlock: {cidr: 203.0.113.0/24}}], ports: [{port: 8080}]}]
"#;

#[test]
fn every_connection_counts_under_the_rules_that_decided_it() {
    if !flowgate_ebpf::privileged_test("every_connection_counts_under_the_rules_that_decided_it") {
        return;
    }
    let state = flowgate_cluster::load_str(Path::new("m.yaml"), MANIFESTS).unwrap().state;
    let policy = flowgate_compiler::compile(&state, Some("node-a")).unwrap().policy;
    let mut loaded = flowgate_ebpf::load(objects::UPLINK, None, &[]).unwrap();
    let dp = EbpfDataplane::new(KernelMaps::take(&mut loaded.ebpf).unwrap());
    dp.apply(&policy, &PolicyDelta::full()).unwrap();
    let prog = loaded.classifier("fg_uplink_ingress").unwrap();
    let connect = |client: [u8; 4], port: u16, to: &str| {
        let client = SocketAddr::new(IpAddr::V4(Ipv4Addr::from(client)), port);
        let to: SocketAddr = to.parse().unwrap();
        let frame = build_frame(&FrameSpec::new(
            IpPair::new(client.ip(), to.ip()).unwrap(),
            L4Spec::tcp(client.port(), to.port(), tcp::Flags::SYN),
        ));
        test_run(prog, &frame).unwrap().retval
    };
    for n in 0..3 {
        assert_eq!(connect([203, 0, 113, 7], 41000 + n, "172.30.0.10:80"), 0, "partner to the ClusterIP");
    }
    for n in 0..2 {
        assert_eq!(connect([203, 0, 113, 8], 42000 + n, "192.168.0.2:30080"), 0, "partner to the NodePort");
    }
    assert_eq!(connect([198, 51, 100, 1], 43000, "172.30.0.10:80"), 2, "not a partner: denied");
    // The same connection again is no new decision.
    assert_eq!(connect([203, 0, 113, 7], 41000, "172.30.0.10:80"), 0);

    let hits = dp.rule_hits(&policy);
    eprintln!("{hits:#?}");
    let find = |pred: &dyn Fn(&str) -> bool| hits.iter().find(|(n, _)| pred(n)).map(|(_, v)| *v);
    assert_eq!(find(&|n| n.starts_with("lb: ") && n.contains("clusterIP")), Some(4), "{hits:?}");
    assert_eq!(find(&|n| n.starts_with("lb: ") && n.contains("nodePort")), Some(2), "{hits:?}");
    assert_eq!(
        find(&|n| n.starts_with("acl-in: default/from-partners ingress rule 0, port 8080/TCP")),
        Some(5),
        "{hits:?}"
    );
}
