//! End to end with real traffic: outbound NAT on the endpoint (FlowgateConfiguration
//! `outboundNAT: {enabled: true}`), issue 4's "a pod's traffic to destinations outside the
//! exception list leaves with a node address, and replies come back to the pod".
//!
//! The topology of `e2e/mod.rs` (node, two pods, a client behind the uplink 192.168.77.0/24) plus
//! an "internet" namespace behind a second uplink of the node: node `inet0` 198.18.0.1/24 <->
//! internet `eth0` 198.18.0.2/24, the internet host also holding 203.0.113.10 (routed by the node
//! via 198.18.0.2). The internet host has no route but its on-link 198.18.0.0/24: it can answer
//! the node's address on that link, never a pod. The Node's InternalIP, hence the masquerade
//! source, is 198.18.0.1. The policy is compiled from manifests and programmed by the eBPF backend
//! as in `e2e_traffic.rs`; the endpoint program runs on the pods' host-side veths (bound to their
//! endpoints), the uplink programs (ingress and egress, as the agent attaches them) on both
//! uplinks, `uplink0` and `inet0` (replies from the internet enter there).
//!
//! `outbound_nat_with_real_traffic`: TCP (32 KiB echoed) and UDP from pod-a to the internet work
//! and the internet sees the node address; pod-a to pod-b, to a ClusterIP (backend pod-b), to the
//! node itself and to a configured exception (the client, 192.168.77.0/24) keep pod-a's address.
//! Twice: with veth's checksum offload, and with transmit checksum offload off everywhere (every
//! receiver verifies the checksums the programs updated).
//!
//! `established_outbound_nat_connection_survives_a_policy_sync`: a TCP stream from pod-a to the
//! internet keeps flowing across a sync of the same policy (what the agent's periodic full resync,
//! or any unrelated change, does).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod e2e;

use std::io::{self, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use e2e::{sock, Evidence, Servers, Topology, CLIENT_IP, PODS, UPLINK};
use flowgate_dataplane::Dataplane;
use flowgate_ebpf::backend::{EbpfDataplane, KernelMaps};
use flowgate_ebpf::netns::Netns;
use flowgate_ebpf::{objects, Direction};
use flowgate_switch::{PolicyDelta, SwitchPolicy};

/// The node's interface to the internet, and its address there (the Node's InternalIP).
const INET_IF: &str = "inet0";
const NODE_INET_IP: &str = "198.18.0.1";
const INTERNET_LINK_IP: &str = "198.18.0.2";
/// The server out there.
const INTERNET_IP: &str = "203.0.113.10";
const INTERNET_NET: &str = "203.0.113.0/24";
const CLUSTER_IP: &str = "10.96.0.10";
const POD_A: &str = PODS[0].1;
const POD_B: &str = PODS[1].1;
/// Connections or requests per check.
const ATTEMPTS: usize = 4;
const BULK: usize = 32 * 1024;

const MANIFESTS: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node}
spec: {podCIDRs: [10.244.1.0/24]}
status:
  addresses:
  - {type: InternalIP, address: 198.18.0.1}
---
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
clusterCIDR: 10.244.0.0/16
detectLocalMode: ClusterCIDR
---
apiVersion: flowgate.io/v1alpha1
kind: FlowgateConfiguration
outboundNAT:
  enabled: true
  exceptions: [192.168.77.0/24]
---
apiVersion: networking.k8s.io/v1
kind: ServiceCIDR
metadata: {name: kubernetes}
spec:
  cidrs: [10.96.0.0/16]
---
apiVersion: v1
kind: Pod
metadata:
  name: pod-a
  labels: {app: client}
spec:
  nodeName: node
  containers:
  - {name: main, image: 'registry.k8s.io/e2e-test-images/agnhost:2.53'}
status:
  podIP: 10.244.1.2
  podIPs:
  - {ip: 10.244.1.2}
---
apiVersion: v1
kind: Pod
metadata:
  name: pod-b
  labels: {app: web}
spec:
  nodeName: node
  containers:
  - {name: main, image: 'registry.k8s.io/e2e-test-images/agnhost:2.53'}
status:
  podIP: 10.244.1.3
  podIPs:
  - {ip: 10.244.1.3}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  clusterIP: 10.96.0.10
  ports:
  - {name: echo, protocol: TCP, port: 80, targetPort: 8080}
  - {name: dns, protocol: UDP, port: 53, targetPort: 5353}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-e2e01
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
endpoints:
- addresses: [10.244.1.3]
  conditions: {ready: true}
  nodeName: node
ports:
- {name: echo, port: 8080, protocol: TCP}
- {name: dns, port: 5353, protocol: UDP}
"#;

/// The namespaces of `e2e::build_topology` and the internet; dropped last.
struct World {
    topo: Topology,
    internet: Netns,
}

fn build_world() -> World {
    let topo = e2e::build_topology();
    let internet = Netns::new().unwrap();
    let node = &topo.node;
    node.add_veth_to(INET_IF, &internet, "eth0").unwrap();
    node.ip(&["addr", "add", &format!("{NODE_INET_IP}/24"), "dev", INET_IF]).unwrap();
    node.ip(&["route", "add", INTERNET_NET, "via", INTERNET_LINK_IP, "dev", INET_IF]).unwrap();
    e2e::node_accepts_local(node, INET_IF);
    internet.ip(&["link", "set", "lo", "up"]).unwrap();
    internet.ip(&["addr", "add", &format!("{INTERNET_LINK_IP}/24"), "dev", "eth0"]).unwrap();
    internet.ip(&["addr", "add", &format!("{INTERNET_IP}/32"), "dev", "eth0"]).unwrap();
    // The internet host can reach the node's address on its link, and nothing else of ours.
    if let Ok(route) = internet.ip(&["route", "get", POD_A]) {
        panic!("the internet namespace must have no route to the pods, but has: {route}");
    }
    World { topo, internet }
}

/// Everything a test runs on. Fields drop in declaration order: servers, links, the backend,
/// the programs, the namespaces last.
struct Harness {
    _servers: Servers,
    _links: Vec<aya::programs::links::FdLink>,
    evidence: Evidence,
    dataplane: EbpfDataplane,
    policy: SwitchPolicy,
    _loaded: Vec<flowgate_ebpf::Loaded>,
    world: World,
}

impl Harness {
    fn new() -> Harness {
        let state = flowgate_cluster::load_str(Path::new("e2e-outbound.yaml"), MANIFESTS).unwrap().state;
        let policy = flowgate_compiler::compile(&state, Some("node")).unwrap().policy;
        assert_eq!(
            policy.snat_v4,
            Some(NODE_INET_IP.parse().unwrap()),
            "the masquerade source must be the Node's InternalIP"
        );

        let world = build_world();
        let topo = &world.topo;
        let mut loaded = flowgate_ebpf::load_all(&[objects::UPLINK, objects::ENDPOINT], None, &[]).unwrap();
        let dataplane = EbpfDataplane::new(KernelMaps::take(&mut loaded[0].ebpf).unwrap());
        dataplane.apply(&policy, &PolicyDelta::full()).unwrap();
        for ((_, ip, host_if), pod) in PODS.iter().zip(&topo.pods) {
            let port = policy.endpoint_for(ip.parse().unwrap()).expect("the pod is an endpoint of the policy");
            let ifindex = topo.node.ifindex(host_if).unwrap();
            dataplane.bind_endpoint(ifindex, port, Some(pod.mac("eth0").unwrap())).unwrap();
        }
        let evidence = Evidence::take(&mut loaded[1]);
        let mut links = Vec::new();
        topo.node
            .run(|| {
                let (uplink, endpoint) = loaded.split_at_mut(1);
                // As the agent attaches them to an uplink: ingress and egress.
                for dev in [UPLINK, INET_IF] {
                    links.push(uplink[0].attach_tcx("fg_uplink_ingress", dev, Direction::Ingress).unwrap());
                    links.push(uplink[0].attach_tcx("fg_uplink_egress", dev, Direction::Egress).unwrap());
                }
                for (_, _, host_if) in PODS {
                    links.push(endpoint[0].attach_tcx("fg_from_endpoint", host_if, Direction::Ingress).unwrap());
                }
            })
            .unwrap();

        let mut servers = Servers::default();
        let listen = |ns: &Netns, ip: &str, tcp: u16, udp: Option<u16>| {
            ns.run(|| -> io::Result<(TcpListener, Option<UdpSocket>)> {
                Ok((TcpListener::bind(sock(ip, tcp))?, udp.map(|p| UdpSocket::bind(sock(ip, p))).transpose()?))
            })
            .unwrap()
            .unwrap_or_else(|e| panic!("servers in {}: {e}", ns.name()))
        };
        for (name, ns, ip, tcp, udp) in [
            ("internet", &world.internet, INTERNET_IP, 9000, Some(9053)),
            ("pod-b", &topo.pods[1], "0.0.0.0", 8080, Some(5353)),
            ("client", &topo.client, "0.0.0.0", 9000, Some(9053)),
            ("node", &topo.node, NODE_INET_IP, 9100, None),
        ] {
            let (t, u) = listen(ns, ip, tcp, udp);
            e2e::spawn_echo_server(&mut servers, name, t);
            if let Some(u) = u {
                e2e::spawn_udp_server(&mut servers, name, u);
            }
        }
        Harness { _servers: servers, _links: links, evidence, dataplane, policy, _loaded: loaded, world }
    }
}

/// `ATTEMPTS` TCP exchanges (new connections, `BULK` bytes echoed) and, with `udp`, as many UDP
/// requests from pod-a; each answer must come from `server` and name pod-a as `want_peer`.
fn check(
    what: &str,
    h: &Harness,
    server: &str,
    tcp: SocketAddr,
    udp: Option<SocketAddr>,
    want_peer: &str,
    failures: &mut Vec<String>,
) {
    let pod_a = &h.world.topo.pods[0];
    let t = Instant::now();
    let mut peers = std::collections::BTreeSet::new();
    let mut bad = |proto: &str, answer: io::Result<String>| match answer {
        Ok(greeting) => {
            let mut words = greeting.split_whitespace();
            let (name, peer) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
            let ip = peer.rsplit_once(':').map(|(ip, _)| ip).unwrap_or("");
            if name != server || ip != want_peer {
                failures.push(format!("{what} ({proto}): answered {greeting:?}, want {server} seeing {want_peer}"));
            }
            peers.insert(format!("{proto} {peer}"));
        }
        Err(e) => failures.push(format!("{what} ({proto}): {:?}: {e}", e.kind())),
    };
    for _ in 0..ATTEMPTS {
        bad("tcp", e2e::tcp_echo(pod_a, tcp, BULK));
    }
    if let Some(udp) = udp {
        for _ in 0..ATTEMPTS {
            bad("udp", e2e::udp_ask(pod_a, udp));
        }
    }
    eprintln!("{what}: seen as {peers:?}, {:?}", t.elapsed());
}

fn run_checks(round: &str, h: &Harness, failures: &mut Vec<String>) {
    // Outside the exceptions: masqueraded to the node address.
    check(
        &format!("{round}: pod-a -> internet {INTERNET_IP}"),
        h,
        "internet",
        sock(INTERNET_IP, 9000),
        Some(sock(INTERNET_IP, 9053)),
        NODE_INET_IP,
        failures,
    );
    // Exceptions keep the pod's address: another pod (cluster CIDR), a Service (load-balanced to
    // pod-b), the node itself (its address), a configured exception (the client's range).
    check(
        &format!("{round}: pod-a -> pod-b {POD_B}"),
        h,
        "pod-b",
        sock(POD_B, 8080),
        Some(sock(POD_B, 5353)),
        POD_A,
        failures,
    );
    check(
        &format!("{round}: pod-a -> ClusterIP {CLUSTER_IP}"),
        h,
        "pod-b",
        sock(CLUSTER_IP, 80),
        Some(sock(CLUSTER_IP, 53)),
        POD_A,
        failures,
    );
    check(
        &format!("{round}: pod-a -> node {NODE_INET_IP}"),
        h,
        "node",
        sock(NODE_INET_IP, 9100),
        None,
        POD_A,
        failures,
    );
    check(
        &format!("{round}: pod-a -> exception 192.168.77.0/24 (client {CLIENT_IP})"),
        h,
        "client",
        sock(CLIENT_IP, 9000),
        Some(sock(CLIENT_IP, 9053)),
        POD_A,
        failures,
    );
}

#[test]
fn outbound_nat_with_real_traffic() {
    if !flowgate_ebpf::privileged_test("outbound_nat_with_real_traffic") {
        return;
    }
    let started = Instant::now();
    let h = Harness::new();
    eprintln!("setup: {:?}", started.elapsed());
    let mut failures = Vec::new();
    run_checks("checksum offload on (veth default)", &h, &mut failures);

    let (topo, internet) = (&h.world.topo, &h.world.internet);
    for dev in [UPLINK, INET_IF].into_iter().chain(PODS.iter().map(|p| p.2)) {
        e2e::tx_checksum_off(&topo.node, dev);
    }
    for ns in [&topo.client, internet].into_iter().chain(&topo.pods) {
        e2e::tx_checksum_off(ns, "eth0");
    }
    run_checks("checksum offload off (checksums verified)", &h, &mut failures);
    for (name, ns) in [("node", &topo.node), ("client", &topo.client), ("internet", internet)]
        .into_iter()
        .chain([("pod-a", &topo.pods[0]), ("pod-b", &topo.pods[1])])
    {
        let errors = e2e::checksum_errors(ns);
        if !errors.is_empty() {
            failures.push(format!("{name}: checksum errors counted by the kernel: {errors:?}"));
        }
    }
    // The programs did the translating: the flow table holds pod-a's masqueraded flows.
    let masqueraded = h
        .evidence
        .all_flows()
        .into_iter()
        .filter(|(k, f)| k.src.to_ip().to_string() == POD_A && f.flags & 0x1 != 0)
        .count();
    if masqueraded == 0 {
        failures.push("no masqueraded flow of pod-a in the flow table".to_owned());
    }
    eprintln!("{masqueraded} masqueraded flows of pod-a; total: {:?}", started.elapsed());
    assert!(failures.is_empty(), "{} failures:\n{}\n\n{}", failures.len(), failures.join("\n"), h.evidence.report());
}

#[test]
fn established_outbound_nat_connection_survives_a_policy_sync() {
    if !flowgate_ebpf::privileged_test("established_outbound_nat_connection_survives_a_policy_sync") {
        return;
    }
    let started = Instant::now();
    let h = Harness::new();
    let pod_a = &h.world.topo.pods[0];
    let mut s =
        pod_a.run(|| TcpStream::connect_timeout(&sock(INTERNET_IP, 9000), e2e::CONNECT_TIMEOUT)).unwrap().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let greeting = e2e::read_line(&mut s).unwrap();
    let port = s.local_addr().unwrap().port();
    let mut echo = |i: u64| -> io::Result<()> {
        let data = e2e::chunk(i, 1024);
        s.write_all(&data)?;
        let mut back = vec![0u8; data.len()];
        s.read_exact(&mut back)?;
        if back != data {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("chunk {i} corrupted")));
        }
        Ok(())
    };
    let mut failures = Vec::new();
    let mut i = 0;
    let mut stream = |phase: &str, failures: &mut Vec<String>| {
        for _ in 0..30 {
            if let Err(e) = echo(i) {
                failures.push(format!("{phase}: chunk {i}: {:?}: {e}", e.kind()));
                return;
            }
            i += 1;
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    stream("before the sync", &mut failures);
    // The same policy again, in full: what the agent's periodic resync does; the generation moves.
    h.dataplane.apply(&h.policy, &PolicyDelta::full()).unwrap();
    if failures.is_empty() {
        stream("after the sync", &mut failures);
    }
    let flows: Vec<String> = h
        .evidence
        .all_flows()
        .into_iter()
        .filter(|(k, f)| [k.sport, k.dport, f.new_sport, f.new_dport].map(u16::from_be).contains(&port))
        .map(|(k, f)| e2e::flow_line(&k, &f))
        .collect();
    eprintln!("stream from pod-a port {port} ({greeting}); total: {:?}", started.elapsed());
    assert!(
        failures.is_empty(),
        "an established outbound-NAT connection (pod-a port {port}, greeted {greeting:?}) did not survive a sync of \
         the same policy:\n{}\n\nits flows:\n  {}\n\n{}",
        failures.join("\n"),
        flows.join("\n  "),
        h.evidence.report()
    );
}
