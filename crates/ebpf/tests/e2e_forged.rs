//! Forged sources from the network, with real traffic between namespaces (issue 12, "trust no
//! forged source"): the shared e2e topology (a node namespace, a client behind its uplink, pod-a
//! and pod-b behind veths, gateway 10.244.1.1 on every host-side veth, known to the switch as the
//! pods' local endpoints' gateway), the programs attached as the agent attaches them, and a
//! NetworkPolicy isolating pod-b for ingress with no rule (default deny). The client sends UDP
//! datagrams from a raw socket, with whatever source it likes:
//!
//! - as itself to pod-b: refused (policy-denied), the control;
//! - as the node (192.168.77.1) and as the pods' gateway (10.244.1.1) to pod-b: before issue 12
//!   both reached the isolated pod, since NetworkPolicy lets the node's own traffic through; now
//!   the uplink drops them as spoofed;
//! - as loopback (127.0.0.1) to pod-a: dropped as spoofed on the uplink;
//! - as 198.51.100.7, an address the node routes out of another interface (`side0`), to pod-a
//!   (not isolated), with the node's rp_filter strict: before issue 12 direct delivery handed it
//!   to the pod past the node's reverse-path filter; now the connection takes the stack's path
//!   and the filter drops it (the node counts it in `IPReversePathFilter`);
//! - as itself to pod-a: delivered, directly (the switch's `delivered_direct` counter moves).
//!
//! Namespaces are `flowgate-test-<pid>-<n>`, deleted when the test ends, also on failure; nothing
//! is attached in the machine's root namespace, and every datagram is addressed to a namespace
//! the test made.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod e2e;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use e2e::{build_topology, sysctl, Kernel, Servers, CLIENT_IP, GATEWAY, NODE_AND_PODS, NODE_IP, PODS};
use flowgate_ebpf::netns::Netns;
use flowgate_wire::{build_frame, FrameSpec, IpPair, L4Spec};

const PORT: u16 = 7000;
/// An address the node routes out of another interface than its uplink.
const ELSEWHERE: &str = "198.51.100.7";

/// pod-b labelled `app: db` and isolated for ingress by a policy with no rule.
fn manifests() -> String {
    let pods = NODE_AND_PODS.replace("name: pod-b\n  labels: {app: web}", "name: pod-b\n  labels: {app: db}");
    assert_ne!(pods, NODE_AND_PODS, "pod-b's labels moved in e2e/mod.rs");
    format!(
        "{pods}apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: deny-db, namespace: default}}\nspec:\n  podSelector: {{matchLabels: {{app: db}}}}\n  policyTypes: [Ingress]\n"
    )
}

/// Sends `count` UDP datagrams from `src` to `dst`:PORT out of `ns`'s routing, from a raw socket
/// (the IPv4 header as given: any source).
fn send_forged(ns: &Netns, src: &str, dst: &str, sport: u16, count: usize) {
    let ips = IpPair::new(src.parse().unwrap(), dst.parse().unwrap()).unwrap();
    let frame = build_frame(&FrameSpec::new(ips, L4Spec::udp(sport, PORT)).with_payload(b"forged?".to_vec()));
    let packet = frame[14..].to_vec();
    let to: Ipv4Addr = dst.parse().unwrap();
    ns.run(|| {
        #[allow(unsafe_code)]
        // SAFETY: plain socket calls on an fd this closure owns; `addr` and `packet` outlive them.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
            assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
            let addr = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(to.octets()) },
                sin_zero: [0; 8],
            };
            for _ in 0..count {
                let n = libc::sendto(
                    fd,
                    packet.as_ptr().cast(),
                    packet.len(),
                    0,
                    (&addr as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                );
                assert_eq!(n, packet.len() as isize, "sendto: {}", std::io::Error::last_os_error());
                std::thread::sleep(Duration::from_millis(5));
            }
            libc::close(fd);
        }
    })
    .unwrap();
}

/// A UDP server in `ns` on PORT recording the source of every datagram it receives.
fn spawn_recorder(servers: &mut Servers, ns: &Netns) -> Arc<Mutex<Vec<IpAddr>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let udp = ns.run(|| UdpSocket::bind(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), PORT))).unwrap().unwrap();
    udp.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let stop = servers.stop.clone();
    let out = seen.clone();
    servers.threads.push(std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok((_, peer)) = udp.recv_from(&mut buf) {
                out.lock().unwrap().push(peer.ip());
            }
        }
    }));
    seen
}

/// The node's `IpExt`/`Ip` counter `name` from /proc/net/netstat and /proc/net/snmp.
fn node_counter(node: &Netns, name: &str) -> u64 {
    let text = node.run(|| std::fs::read_to_string("/proc/thread-self/net/netstat")).unwrap().unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.chunks(2) {
        let [names, values] = pair else { continue };
        for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
            if n == name {
                return v.parse().unwrap_or(0);
            }
        }
    }
    0
}

#[test]
fn forged_sources_from_the_network_reach_no_pod() {
    if !flowgate_ebpf::privileged_test("forged_sources_from_the_network_reach_no_pod") {
        return;
    }
    let topo = build_topology();
    // Another interface of the node, with a route to ELSEWHERE's network; strict reverse-path
    // filtering on the uplink (the topology turns it off everywhere).
    topo.node.add_veth_pair("side0", "side1").unwrap();
    topo.node.ip(&["link", "set", "side0", "up"]).unwrap();
    topo.node.ip(&["link", "set", "side1", "up"]).unwrap();
    topo.node.ip(&["route", "add", "198.51.100.0/24", "dev", "side0"]).unwrap();
    sysctl(&topo.node, "net/ipv4/conf/all/rp_filter", "1");
    sysctl(&topo.node, "net/ipv4/conf/uplink0/rp_filter", "1");

    let mut state = flowgate_cluster::load_str(Path::new("forged.yaml"), &manifests()).unwrap().state;
    for (name, ip, _) in PODS {
        state.local_endpoints.insert(
            flowgate_cluster::ObjectKey::new("default", name),
            flowgate_cluster::LocalEndpoint {
                ips: vec![ip.parse().unwrap()],
                gateways: vec![GATEWAY.parse().unwrap()],
                ..flowgate_cluster::LocalEndpoint::default()
            },
        );
    }
    let policy = flowgate_compiler::compile(&state, Some("node")).unwrap().policy;
    let kernel = Kernel::attach(&topo, &policy, &[], false);

    let mut servers = Servers::default();
    let seen_a = spawn_recorder(&mut servers, &topo.pods[0]);
    let seen_b = spawn_recorder(&mut servers, &topo.pods[1]);
    let (pod_a, pod_b) = (PODS[0].1, PODS[1].1);

    // The client's own datagram to pod-a first: it makes the node's neighbour entry for pod-a,
    // so that the ones after it can be delivered directly.
    send_forged(&topo.client, CLIENT_IP, pod_a, 41000, 1);
    std::thread::sleep(Duration::from_millis(300));
    let rp_before = node_counter(&topo.node, "IPReversePathFilter");
    let delivered_before = kernel.evidence.counters().get("delivered-direct").copied().unwrap_or(0);

    let sends: [(&str, &str, u16); 6] = [
        (CLIENT_IP, pod_b, 41001),
        (NODE_IP, pod_b, 41002),
        (GATEWAY, pod_b, 41003),
        ("127.0.0.1", pod_a, 41004),
        (ELSEWHERE, pod_a, 41005),
        (CLIENT_IP, pod_a, 41006),
    ];
    for (src, dst, sport) in sends {
        send_forged(&topo.client, src, dst, sport, 5);
    }
    std::thread::sleep(Duration::from_millis(500));
    drop(servers);

    let got = |seen: &Arc<Mutex<Vec<IpAddr>>>| -> BTreeSet<String> {
        seen.lock().unwrap().iter().map(|a| a.to_string()).collect()
    };
    let (a, b) = (got(&seen_a), got(&seen_b));
    let evidence = kernel.evidence.report();
    let counters = kernel.evidence.counters();
    let mut failures = Vec::new();
    if !b.is_empty() {
        failures.push(format!("the isolated pod-b received datagrams from {b:?} (none may pass)"));
    }
    let want_a: BTreeSet<String> = [CLIENT_IP.to_string()].into();
    if a != want_a {
        failures.push(format!("pod-a received datagrams from {a:?}, want only {want_a:?}"));
    }
    // 5 as the node, 5 as the gateway, 5 as loopback.
    if counters.get("spoofed").copied().unwrap_or(0) < 15 {
        failures.push(format!("fewer than 15 spoofed drops: {counters:?}"));
    }
    if counters.get("policy-denied").copied().unwrap_or(0) < 1 {
        failures.push(format!("the client's own datagram to pod-b was not denied: {counters:?}"));
    }
    let rp = node_counter(&topo.node, "IPReversePathFilter") - rp_before;
    if rp < 5 {
        failures.push(format!("the node's reverse-path filter dropped {rp} datagrams from {ELSEWHERE}, want 5"));
    }
    let delivered = counters.get("delivered-direct").copied().unwrap_or(0) - delivered_before;
    if delivered < 5 {
        failures.push(format!("only {delivered} of the client's own datagrams to pod-a were delivered directly"));
    }
    assert!(failures.is_empty(), "{}\n{evidence}", failures.join("\n"));
}
