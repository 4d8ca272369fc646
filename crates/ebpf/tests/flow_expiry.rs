//! Masquerade ports of finished connections are reused (issue 4: "flow timeouts for closed TCP
//! connections"): a connection masqueraded to the node address holds its source port on the node
//! while it lives; once a FIN or RST has been seen and it has been idle for the closed timeout (a
//! load-time constant, 10 s in the agent, 0 here), a new connection may take the port over, and
//! both entries of the old one go. BPF_PROG_TEST_RUN of the uplink program on outside clients
//! reaching a NodePort whose one backend is on another node (so every connection is masqueraded
//! to the same node address and backend: at most 64,512 ports).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use aya::maps::PerCpuArray;
use flowgate_dataplane::Dataplane;
use flowgate_ebpf::backend::{EbpfDataplane, KernelMaps};
use flowgate_ebpf::{maps, objects, test_run, GlobalValue};
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
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  ports: [{name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: [{addresses: [10.0.2.5], nodeName: node-b, conditions: {ready: true}}]
ports: [{name: http, port: 8080, protocol: TCP}]
"#;

fn segment(client: SocketAddr, flags: tcp::Flags) -> Vec<u8> {
    let dst: SocketAddr = "192.168.0.2:30080".parse().unwrap();
    build_frame(&FrameSpec::new(
        IpPair::new(client.ip(), dst.ip()).unwrap(),
        L4Spec::tcp(client.port(), dst.port(), flags),
    ))
}

/// The source port a packet left with (after masquerade), and the program's verdict.
fn run(prog: &aya::programs::SchedClassifier, frame: &[u8]) -> (u32, u16) {
    let r = test_run(prog, frame).unwrap();
    let (key, _) = flowgate_switch::frame::key_of(&r.output).unwrap();
    (r.retval, key.sport)
}

#[test]
fn closed_connections_give_their_masquerade_ports_back() {
    if !flowgate_ebpf::privileged_test("closed_connections_give_their_masquerade_ports_back") {
        return;
    }
    let state = flowgate_cluster::load_str(Path::new("m.yaml"), MANIFESTS).unwrap().state;
    let policy = flowgate_compiler::compile(&state, Some("node-a")).unwrap().policy;
    let mut loaded =
        flowgate_ebpf::load(objects::UPLINK, None, &[("FG_CLOSED_TIMEOUT_NS", GlobalValue::U64(0))]).unwrap();
    let dp = EbpfDataplane::new(KernelMaps::take(&mut loaded.ebpf).unwrap());
    dp.apply(&policy, &PolicyDelta::full()).unwrap();
    let last: PerCpuArray<_, maps::Last> = PerCpuArray::try_from(loaded.ebpf.take_map("fg_last").unwrap()).unwrap();
    let prog = loaded.classifier("fg_uplink_ingress").unwrap();
    let cached = || last.get(&0, 0).unwrap().iter().any(|l| l.cached == 1);

    // Two clients with the same source port: the second cannot have it (the first holds it).
    let a: SocketAddr = "203.0.113.1:1000".parse().unwrap();
    let b: SocketAddr = "203.0.113.2:1000".parse().unwrap();
    let c: SocketAddr = "203.0.113.3:1000".parse().unwrap();
    assert_eq!(run(prog, &segment(a, tcp::Flags::SYN)), (0, 1000), "a keeps its port");
    let (rb, pb) = run(prog, &segment(b, tcp::Flags::SYN));
    assert_eq!(rb, 0);
    assert_ne!(pb, 1000, "b cannot take a's port while a's connection lives");
    // a closes (FIN): once idle for the closed timeout, its port is free for c, and a's entries go.
    assert_eq!(run(prog, &segment(a, tcp::Flags::FIN | tcp::Flags::ACK)), (0, 1000));
    std::thread::sleep(std::time::Duration::from_millis(2));
    assert_eq!(run(prog, &segment(c, tcp::Flags::SYN)), (0, 1000), "c takes the closed connection's port");
    let _ = run(prog, &segment(a, tcp::Flags::ACK));
    assert!(!cached(), "a's old flow is gone (its next packet is a first packet again)");
    // b's connection is not closed: its port stays b's.
    let (_, again) = run(prog, &segment(b, tcp::Flags::ACK));
    assert_eq!(again, pb);

    // Churn: more connections than there are ports, each closed after its SYN — none exhausts the
    // masquerade ports (without the timeout, the 64,513th would find no free port).
    let mut exhausted = 0;
    for n in 0..70_000u32 {
        let client = SocketAddr::new(Ipv4Addr::from(0xc633_0000 + (n >> 10)).into(), 1024 + (n & 0x3ff) as u16);
        let (r, _) = run(prog, &segment(client, tcp::Flags::SYN));
        if r != 0 {
            exhausted += 1;
            continue;
        }
        let (r, _) = run(prog, &segment(client, tcp::Flags::RST));
        assert_eq!(r, 0);
    }
    let nat_exhausted: u64 =
        dp.counters().into_iter().find(|(name, _)| name == "dropped_nat_exhausted").map(|(_, v)| v).unwrap();
    assert_eq!((exhausted, nat_exhausted), (0, 0), "connections refused for lack of a masquerade port");
}
