//! Issue 12, item 2, with real traffic: a UDP datagram larger than the path's MTU is fragmented by
//! its sender, and its later fragments carry no ports. Through a NodePort (DNAT to pod-b, the
//! client's address kept) a 3,000-byte request and its 3,000-byte echo must arrive whole — the
//! later fragments follow their first fragment's translation both ways — while a datagram whose
//! first fragment the node never sees gets nothing through. Before issue 12, the request's later
//! fragments kept the node's address, so the backend never reassembled one.
//!
//! The shared e2e topology (`e2e/mod.rs`); namespaces are `flowgate-test-<pid>-<n>`, deleted when
//! the test ends, also on failure; nothing is attached in the machine's root namespace.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod e2e;

use std::net::UdpSocket;
use std::path::Path;
use std::time::Duration;

use e2e::{build_topology, sock, Kernel, Servers, CLIENT_IP, NODE_AND_PODS, NODE_IP, PODS};

const NODE_PORT: u16 = 30090;
const PORT: u16 = 7090;
const SIZE: usize = 3000;

fn manifests() -> String {
    format!(
        "{NODE_AND_PODS}apiVersion: v1\nkind: Service\nmetadata: {{name: big, namespace: default}}\nspec:\n  type: NodePort\n  clusterIP: 10.96.0.90\n  ports: [{{name: u, protocol: UDP, port: {PORT}, targetPort: {PORT}, nodePort: {NODE_PORT}}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: big-1, namespace: default, labels: {{kubernetes.io/service-name: big}}}}\naddressType: IPv4\nendpoints: [{{addresses: ['{}'], conditions: {{ready: true}}, nodeName: node}}]\nports: [{{name: u, port: {PORT}, protocol: UDP}}]\n",
        PODS[1].1
    )
}

#[test]
fn large_udp_through_a_node_port_arrives_whole_both_ways() {
    if !flowgate_ebpf::privileged_test("large_udp_through_a_node_port_arrives_whole_both_ways") {
        return;
    }
    let topo = build_topology();
    let state = flowgate_cluster::load_str(Path::new("fragments.yaml"), &manifests()).unwrap().state;
    let policy = flowgate_compiler::compile(&state, Some("node")).unwrap().policy;
    let kernel = Kernel::attach(&topo, &policy, &[], false);

    // pod-b echoes every datagram whole.
    let mut servers = Servers::default();
    let udp = topo.pods[1].run(|| UdpSocket::bind(sock("0.0.0.0", PORT))).unwrap().unwrap();
    udp.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let stop = servers.stop.clone();
    servers.threads.push(std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok((n, peer)) = udp.recv_from(&mut buf) {
                let _ = udp.send_to(&buf[..n], peer);
            }
        }
    }));

    let mut failures = Vec::new();
    let request: Vec<u8> = (0..SIZE).map(|i| (i * 7 % 251) as u8).collect();
    for round in 0..5 {
        let answer = topo
            .client
            .run(|| -> std::io::Result<Vec<u8>> {
                let s = UdpSocket::bind(sock(CLIENT_IP, 0))?;
                s.connect(sock(NODE_IP, NODE_PORT))?;
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                s.send(&request)?;
                let mut buf = vec![0u8; 65536];
                let n = s.recv(&mut buf)?;
                buf.truncate(n);
                Ok(buf)
            })
            .unwrap();
        match answer {
            Ok(a) if a == request => {}
            Ok(a) => failures.push(format!("round {round}: an echo of {} bytes differs", a.len())),
            Err(e) => failures.push(format!("round {round}: no echo of {SIZE} bytes: {e}")),
        }
    }
    drop(servers);
    let counters = kernel.evidence.counters();
    assert!(failures.is_empty(), "{}\n{counters:?}\n{}", failures.join("\n"), kernel.evidence.report());
}
