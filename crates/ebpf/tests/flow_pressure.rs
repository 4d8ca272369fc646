//! The flow table and the masquerade ports under pressure (issue 12, section 2), with
//! BPF_PROG_TEST_RUN of the real programs on crafted packets and the timeouts the agent uses
//! (or, where a test is about expiry, load-time timeouts of a millisecond and a sleep):
//!
//! - half-open connections (SYNs from forged sources, never answered) and answered-once UDP
//!   exchanges (DNS lookups through outbound NAT) cannot exhaust the masquerade ports: a free port
//!   is found whenever one is free, and when none is the oldest embryonic connection gives way —
//!   never an established one;
//! - established connections survive a flood of new flows (they live in a table of their own);
//!   dropped first packets take no entries;
//! - established connections age out on their idle timeout (the sweep, `fg_flow_gc`);
//! - a first packet never takes over a live connection's reply key: the node's own connection
//!   from a port a client's masqueraded connection holds gets another source port.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use aya::maps::PerCpuArray;
use flowgate_dataplane::Dataplane;
use flowgate_ebpf::backend::{EbpfDataplane, KernelMaps};
use flowgate_ebpf::{maps, objects, test_run, GlobalValue, Loaded};
use flowgate_switch::{FlowKey, PolicyDelta};
use flowgate_wire::{build_frame, tcp, FrameSpec, IpPair, L4Spec};

const NODE: &str = "192.168.0.2";
const NODE_PORT: u16 = 30080;

/// A NodePort Service over backends on another node (every connection from outside is masqueraded
/// to the node address), a UDP one, and outbound NAT for the node's pods.
fn manifests(backends: &[&str]) -> String {
    let endpoints: Vec<String> = backends
        .iter()
        .map(|b| format!("{{addresses: [{b}], nodeName: node-b, conditions: {{ready: true}}}}"))
        .collect();
    format!(
        r#"
apiVersion: v1
kind: Node
metadata: {{name: node-a}}
spec: {{podCIDRs: [10.0.1.0/24]}}
status: {{addresses: [{{type: InternalIP, address: {NODE}}}]}}
---
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clusterCIDR: 10.0.0.0/8
---
apiVersion: flowgate.io/v1alpha1
kind: FlowgateConfiguration
outboundNAT: {{enabled: true}}
---
apiVersion: networking.k8s.io/v1
kind: ServiceCIDR
metadata: {{name: kubernetes}}
spec: {{cidrs: [10.96.0.0/16]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: resolver-client, namespace: default}}
spec: {{nodeName: node-a, containers: [{{name: c, image: busybox}}]}}
status: {{podIP: 10.0.1.5, podIPs: [{{ip: 10.0.1.5}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: resolver-client-2, namespace: default}}
spec: {{nodeName: node-a, containers: [{{name: c, image: busybox}}]}}
status: {{podIP: 10.0.1.6, podIPs: [{{ip: 10.0.1.6}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  ports: [{{name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: {NODE_PORT}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-1, namespace: default, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
endpoints: [{}]
ports: [{{name: http, port: 8080, protocol: TCP}}]
"#,
        endpoints.join(", ")
    )
}

/// The uplink object (ingress, egress, the sweep) and the endpoint object, sharing maps.
struct Node {
    loaded: Vec<Loaded>,
    dp: EbpfDataplane,
    last: PerCpuArray<aya::maps::MapData, maps::Last>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Prog {
    UplinkIn,
    UplinkOut,
    Endpoint,
}

/// What one packet got: verdict (TC action), the packet as it left, whether the flow table decided.
#[derive(Debug)]
struct Out {
    retval: u32,
    key: FlowKey,
    cached: bool,
}

impl Node {
    fn new(backends: &[&str], globals: &[(&str, GlobalValue)]) -> Node {
        pin_to_cpu0();
        let state = flowgate_cluster::load_str(Path::new("m.yaml"), &manifests(backends)).unwrap().state;
        let policy = flowgate_compiler::compile(&state, Some("node-a")).unwrap().policy;
        let mut loaded = flowgate_ebpf::load_all(&[objects::UPLINK, objects::ENDPOINT], None, globals).unwrap();
        let dp = EbpfDataplane::new(KernelMaps::take(&mut loaded[0].ebpf).unwrap());
        dp.apply(&policy, &PolicyDelta::full()).unwrap();
        let last = PerCpuArray::try_from(loaded[0].ebpf.take_map("fg_last").unwrap()).unwrap();
        let mut node = Node { loaded, dp, last };
        for (i, name) in [(0, "fg_uplink_ingress"), (0, "fg_uplink_egress"), (0, "fg_flow_gc"), (1, "fg_from_endpoint")]
        {
            node.loaded[i].classifier(name).unwrap();
        }
        node
    }

    fn run(&mut self, prog: Prog, frame: &[u8]) -> Out {
        let (i, name) = match prog {
            Prog::UplinkIn => (0, "fg_uplink_ingress"),
            Prog::UplinkOut => (0, "fg_uplink_egress"),
            Prog::Endpoint => (1, "fg_from_endpoint"),
        };
        let r = test_run(self.loaded[i].classifier(name).unwrap(), frame).unwrap();
        let (key, _) = flowgate_switch::frame::key_of(&r.output).unwrap();
        // (The endpoint object's fg_last is its own; only the uplink's is read.)
        let cached = prog != Prog::Endpoint && self.last.get(&0, 0).unwrap()[0].cached == 1;
        Out { retval: r.retval, key, cached }
    }

    fn sweep(&mut self) {
        let frame = tcp_frame(sa("10.9.9.9:1"), sa("10.9.9.8:1"), tcp::Flags::ACK);
        assert_eq!(test_run(self.loaded[0].classifier("fg_flow_gc").unwrap(), &frame).unwrap().retval, 0);
    }

    fn counter(&self, name: &str) -> u64 {
        self.dp.counters().into_iter().find(|(n, _)| n == name).map(|(_, v)| v).unwrap_or_else(|| panic!("{name}"))
    }
}

/// Runs this thread on CPU 0 only, so that `fg_last` (per CPU) is read where the program ran.
fn pin_to_cpu0() {
    #[allow(unsafe_code)]
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it; sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn tcp_frame(from: SocketAddr, to: SocketAddr, flags: tcp::Flags) -> Vec<u8> {
    build_frame(&FrameSpec::new(IpPair::new(from.ip(), to.ip()).unwrap(), L4Spec::tcp(from.port(), to.port(), flags)))
}

fn udp_frame(from: SocketAddr, to: SocketAddr) -> Vec<u8> {
    build_frame(
        &FrameSpec::new(IpPair::new(from.ip(), to.ip()).unwrap(), L4Spec::udp(from.port(), to.port()))
            .with_payload(b"query".to_vec()),
    )
}

fn node_port() -> SocketAddr {
    SocketAddr::new(NODE.parse().unwrap(), NODE_PORT)
}

/// The n-th forged source of a flood: 198.51.0.0/16 and beyond, 1,024 ports each.
fn forged(n: u32) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0xc633_0000 + (n >> 10))), 1024 + (n & 0x3ff) as u16)
}

/// A client's connection to the NodePort as it left the node: (backend, masquerade port).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Leg {
    backend: SocketAddr,
    masq_port: u16,
}

/// A full handshake of `client` to the NodePort: SYN, the backend's SYN-ACK (arriving on the
/// uplink, as from another node), the client's ACK. Returns the connection as it left the node.
fn connect(node: &mut Node, client: SocketAddr) -> Result<Leg, String> {
    let syn = node.run(Prog::UplinkIn, &tcp_frame(client, node_port(), tcp::Flags::SYN));
    if syn.retval != 0 {
        return Err(format!("{client}: SYN dropped (retval {})", syn.retval));
    }
    let leg = Leg { backend: syn.key.dst_socket(), masq_port: syn.key.sport };
    let synack = node.run(
        Prog::UplinkIn,
        &tcp_frame(leg.backend, SocketAddr::new(syn.key.src, leg.masq_port), tcp::Flags::SYN | tcp::Flags::ACK),
    );
    if synack.retval != 0 || synack.key.dst_socket() != client || synack.key.src_socket() != node_port() {
        return Err(format!("{client}: SYN-ACK came back as {} (retval {})", synack.key, synack.retval));
    }
    let ack = node.run(Prog::UplinkIn, &tcp_frame(client, node_port(), tcp::Flags::ACK));
    if ack.retval != 0 || !ack.cached || ack.key.dst_socket() != leg.backend || ack.key.sport != leg.masq_port {
        return Err(format!("{client}: ACK left as {} (retval {}, cached {})", ack.key, ack.retval, ack.cached));
    }
    Ok(leg)
}

/// The client's next packet of an established connection: a flow hit, to the same backend from
/// the same masquerade port, and the backend's answer back to the client.
fn still_connected(node: &mut Node, client: SocketAddr, leg: Leg) -> Result<(), String> {
    let data = node.run(Prog::UplinkIn, &tcp_frame(client, node_port(), tcp::Flags::ACK | tcp::Flags::PSH));
    if data.retval != 0 || !data.cached || data.key.dst_socket() != leg.backend || data.key.sport != leg.masq_port {
        return Err(format!(
            "{client}: was {leg:?}, its next packet left as {} (retval {}, flow hit {})",
            data.key, data.retval, data.cached
        ));
    }
    let answer = node.run(
        Prog::UplinkIn,
        &tcp_frame(leg.backend, SocketAddr::new(NODE.parse().unwrap(), leg.masq_port), tcp::Flags::ACK),
    );
    if answer.retval != 0 || answer.key.dst_socket() != client {
        return Err(format!("{client}: the backend's answer went to {}", answer.key.dst_socket()));
    }
    Ok(())
}

/// 70,000 SYNs from forged sources, never answered, take masquerade ports towards the one backend
/// (64,512 of them); 200 legitimate clients after them all connect (the oldest half-open
/// connections give way), and their connections, established, survive another 70,000 SYNs.
/// Before: 134 of 200 were dropped as nat-exhausted (unclosed TCP entries had no timeout, and a
/// port was looked for with 8 random tries).
#[test]
fn half_open_connections_cannot_exhaust_the_masquerade_ports() {
    if !flowgate_ebpf::privileged_test("half_open_connections_cannot_exhaust_the_masquerade_ports") {
        return;
    }
    let mut node = Node::new(&["10.0.2.5"], &[]);
    let flood = |node: &mut Node, from: u32| {
        for n in from..from + 70_000 {
            node.run(Prog::UplinkIn, &tcp_frame(forged(n), node_port(), tcp::Flags::SYN));
        }
    };
    flood(&mut node, 0);
    let clients: Vec<SocketAddr> = (0..200)
        .map(|i| SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1 + (i % 200) as u8)), 40_000))
        .collect();
    let mut legs = Vec::new();
    let mut failures = Vec::new();
    for c in &clients {
        match connect(&mut node, *c) {
            Ok(leg) => legs.push((*c, leg)),
            Err(e) => failures.push(e),
        }
    }
    let exhausted = node.counter("dropped_nat_exhausted");
    assert!(
        failures.is_empty() && exhausted == 0,
        "{} of 200 clients could not connect after a half-open flood ({exhausted} nat-exhausted drops):\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(node.counter("flows_evicted") > 0, "the pool was full: half-open connections gave way");
    // Established now: another flood takes none of their ports.
    flood(&mut node, 70_000);
    for (c, leg) in &legs {
        if let Err(e) = still_connected(&mut node, *c, *leg) {
            failures.push(e);
        }
    }
    assert!(
        failures.is_empty(),
        "{} established connections broken by a flood:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(node.counter("dropped_nat_exhausted"), 0);
}

/// Two pods resolve names straight to an upstream resolver through outbound NAT: 70,000 lookups
/// (one query, one answer each) — more than the 64,512 masquerade ports towards the resolver.
/// Every query leaves and every answer reaches its pod: answered-once UDP exchanges are
/// embryonic (conntrack's 30 s, not 5 minutes) and the oldest give way when the pool is full.
/// Before: UDP held its port for 5 minutes after its last packet, and lookups were dropped as
/// nat-exhausted once the ports ran short.
#[test]
fn name_lookups_through_outbound_nat_never_run_out_of_ports() {
    if !flowgate_ebpf::privileged_test("name_lookups_through_outbound_nat_never_run_out_of_ports") {
        return;
    }
    let mut node = Node::new(&["10.0.2.5"], &[]);
    let resolver = sa("198.18.0.53:53");
    let mut failures = Vec::new();
    for n in 0..70_000u32 {
        let pod = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 1, 5 + (n % 2) as u8)), 1024 + (n / 2) as u16);
        let q = node.run(Prog::Endpoint, &udp_frame(pod, resolver));
        if q.retval != 0 || q.key.src != NODE.parse::<IpAddr>().unwrap() {
            failures.push(format!("query {n} from {pod}: retval {}, left as {}", q.retval, q.key));
            continue;
        }
        let a = node.run(Prog::UplinkIn, &udp_frame(resolver, q.key.src_socket()));
        if a.retval != 0 || a.key.dst_socket() != pod {
            failures.push(format!("answer {n} for {pod}: retval {}, went to {}", a.retval, a.key.dst_socket()));
        }
        if failures.len() > 20 {
            break;
        }
    }
    let exhausted = node.counter("dropped_nat_exhausted");
    assert!(
        failures.is_empty() && exhausted == 0,
        "lookups lost ({exhausted} nat-exhausted drops):\n{}",
        failures.join("\n")
    );
}

/// An idle masqueraded NodePort connection (three backends) through a flood of 400,000 new flows
/// to the node, each seen twice: its next packet is still a flow hit, to the same backend, from
/// the same port. Before: its entries were evicted (LRU) and the packet decided anew — on another
/// backend, a broken connection. Also: a flood of refused first packets takes no entries.
#[test]
fn established_connections_survive_a_flood_of_new_flows() {
    if !flowgate_ebpf::privileged_test("established_connections_survive_a_flood_of_new_flows") {
        return;
    }
    let mut node = Node::new(&["10.0.2.5", "10.0.2.6", "10.0.2.7"], &[]);
    let clients: Vec<SocketAddr> =
        (1..=5).map(|i| SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, i)), 41_000)).collect();
    let legs: Vec<(SocketAddr, Leg)> = clients.iter().map(|c| (*c, connect(&mut node, *c).unwrap())).collect();
    // Junk: new 5-tuples to the node itself (not a Service: allowed, untranslated, each entering
    // the flow table), each packet twice.
    let node_ip: IpAddr = NODE.parse().unwrap();
    for n in 0..400_000u32 {
        let frame = tcp_frame(forged(n), SocketAddr::new(node_ip, 1 + (n % 20_000) as u16), tcp::Flags::SYN);
        node.run(Prog::UplinkIn, &frame);
        node.run(Prog::UplinkIn, &frame);
    }
    let mut failures = Vec::new();
    for (c, leg) in &legs {
        if let Err(e) = still_connected(&mut node, *c, *leg) {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "established connections lost to a flood:\n{}", failures.join("\n"));

    // Refused first packets (a NodePort no Service has: dropped) take no entries.
    node.sweep();
    let before = node.counter("flow_entries_embryonic") + node.counter("flow_entries_established");
    let refused = node.counter("dropped_undefined_service_port") + node.counter("dropped_unallocated_service_ip");
    for n in 0..1000u32 {
        node.run(Prog::UplinkIn, &tcp_frame(forged(n), sa("10.96.0.99:80"), tcp::Flags::SYN));
    }
    assert!(
        node.counter("dropped_undefined_service_port") + node.counter("dropped_unallocated_service_ip")
            >= refused + 1000,
        "the probes were refused"
    );
    node.sweep();
    let after = node.counter("flow_entries_embryonic") + node.counter("flow_entries_established");
    assert_eq!(after, before, "refused first packets took flow entries");
}

/// With a 50 ms idle timeout for established connections, a connection idle longer is removed by
/// the sweep (both entries; its masquerade port back in the pool): its next packet is a new
/// connection. Counted as expired. Before: TCP connections that saw no FIN or RST never expired.
#[test]
fn established_connections_age_out_on_their_idle_timeout() {
    if !flowgate_ebpf::privileged_test("established_connections_age_out_on_their_idle_timeout") {
        return;
    }
    let mut node = Node::new(&["10.0.2.5"], &[("FG_TCP_TIMEOUT_NS", GlobalValue::U64(50_000_000))]);
    let client = sa("203.0.113.9:42000");
    let leg = connect(&mut node, client).unwrap();
    node.sweep();
    assert_eq!(node.counter("flow_entries_established"), 2, "one connection established");
    assert_eq!(node.counter("flows_promoted"), 1);
    std::thread::sleep(std::time::Duration::from_millis(100));
    node.sweep();
    assert_eq!(node.counter("flow_entries_established"), 0, "the idle connection was swept");
    assert_eq!(node.counter("flows_expired"), 1);
    let again = node.run(Prog::UplinkIn, &tcp_frame(client, node_port(), tcp::Flags::ACK));
    assert!(!again.cached, "its next packet is a new connection");
    assert_eq!(again.key.sport, leg.masq_port, "its port was free again");
}

/// The node's own connection from a port that a client's masqueraded connection holds (the
/// node's socket picked the masquerade port, to the same backend): it gets another source port,
/// and both connections work. Before: its reply entry overwrote the client's, whose replies then
/// went to the node's socket.
#[test]
fn a_first_packet_never_takes_a_live_connections_reply_key() {
    if !flowgate_ebpf::privileged_test("a_first_packet_never_takes_a_live_connections_reply_key") {
        return;
    }
    let mut node = Node::new(&["10.0.2.5"], &[]);
    let client = sa("203.0.113.7:43000");
    let leg = connect(&mut node, client).unwrap();
    assert_eq!(leg.masq_port, 43000, "the client kept its port");
    // The node's socket, from the same port, to the same backend.
    let host = SocketAddr::new(NODE.parse().unwrap(), leg.masq_port);
    let out = node.run(Prog::UplinkOut, &tcp_frame(host, leg.backend, tcp::Flags::SYN));
    assert_eq!(out.retval, 0);
    assert_eq!(out.key.src, host.ip(), "the node's address stays");
    assert_ne!(out.key.sport, host.port(), "the node's connection got another source port");
    assert_eq!(node.counter("flows_rebound"), 1);
    // The backend answers both: each answer reaches its own connection.
    let to_host = node.run(
        Prog::UplinkIn,
        &tcp_frame(leg.backend, SocketAddr::new(host.ip(), out.key.sport), tcp::Flags::SYN | tcp::Flags::ACK),
    );
    assert_eq!((to_host.retval, to_host.key.dst_socket()), (0, host), "the node's answer, translated back");
    still_connected(&mut node, client, leg).unwrap();
}
