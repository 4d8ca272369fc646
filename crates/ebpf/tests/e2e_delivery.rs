//! Direct delivery to local pods (bpf/lib/deliver.h), with real traffic between namespaces: the
//! shared e2e topology (a node namespace, a client behind its uplink, two pods behind veths), the
//! programs loaded twice — as shipped (FG_DIRECT_DELIVERY = 1) and with direct delivery off
//! (`localDelivery: Routed`) — and in each mode:
//!
//! - a UDP flow from the client to a NodePort and a UDP flow from pod-a to a ClusterIP, both with
//!   pod-b as their only backend, over IPv4 and over IPv6 (a dual-stack Service), deliver every
//!   datagram; with direct delivery the node's IP stack
//!   forwards (almost) none of them and the node's host-side veth of pod-b transmits none (the
//!   switch handed them to the pod), while routed, the node forwards every one of them;
//! - the datagrams arrive with the TTL forwarding gives (the sender's minus one, read with
//!   IP_RECVTTL / IPV6_RECVHOPLIMIT in the pod) and the MAC header forwarding gives (the node's interface as source,
//!   the pod's as destination, read with a packet socket in the pod), and one sent with TTL 1 is
//!   not delivered: the node's stack answers it with an ICMP time-exceeded, as a router must;
//! - a TCP connection with bulk data both ways works through the NodePort;
//! - the client sending as pod-a (its address) to pod-b gets nothing through: dropped as spoofed;
//! - with transmit checksum offload off everywhere, so that every receiver verifies the checksums
//!   the programs updated, no namespace counts a checksum error.
//!
//! Namespaces are `flowgate-test-<pid>-<n>`, deleted when the test ends, also on failure; nothing
//! is attached in the machine's root namespace.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod e2e;

use std::collections::BTreeMap;
use std::io::{self, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::path::Path;
use std::time::{Duration, Instant};

use e2e::{
    checksum_errors, snmp, sock, tx_checksum_off, Kernel, Servers, Topology, CONNECT_TIMEOUT, IO_TIMEOUT, NODE_IP, PODS,
};
use flowgate_ebpf::netns::Netns;
use flowgate_ebpf::GlobalValue;

const CLUSTER_IP: &str = "10.96.0.70";
const CLUSTER_IP6: &str = "fd00:96::70";
const NODE_IP6: &str = "fd00:77::1";
const CLIENT_IP6: &str = "fd00:77::2";
const GATEWAY6: &str = "fd00:244::1";
/// The pods' IPv6 addresses, in the order of `PODS`.
const POD_IPS6: [&str; 2] = ["fd00:244::2", "fd00:244::3"];
const NODE_PORT: u16 = 30070;
const UDP_PORT: u16 = 7000;
const TCP_PORT: u16 = 7001;
/// Datagrams per flow.
const DATAGRAMS: u64 = 300;
/// At most this many of a flow's established datagrams may take the stack's path with direct
/// delivery on (none should: the first one, sent and awaited alone, made the neighbour entry; the
/// host-side interface's own IPv6 chatter — MLD — counts on its transmit counter).
const VIA_STACK_AT_MOST: u64 = 10;

/// A dual-stack node (the shared e2e topology's IPv4 addresses, and IPv6 ones this test adds), its
/// two pods, and Service `sink` (UDP 7000 and TCP 7001, NodePort 30070) with pod-b as its only
/// endpoint in each family.
const MANIFESTS: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node}
status:
  addresses:
  - {type: InternalIP, address: 192.168.77.1}
  - {type: InternalIP, address: 'fd00:77::1'}
---
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
clusterCIDR: 10.244.0.0/16,fd00:244::/64
detectLocalMode: ClusterCIDR
---
apiVersion: networking.k8s.io/v1
kind: ServiceCIDR
metadata: {name: kubernetes}
spec:
  cidrs: [10.96.0.0/16, 'fd00:96::/112']
---
apiVersion: v1
kind: Pod
metadata: {name: pod-a, labels: {app: client}}
spec:
  nodeName: node
  containers:
  - {name: main, image: 'registry.k8s.io/e2e-test-images/agnhost:2.53'}
status:
  podIP: 10.244.1.2
  podIPs:
  - {ip: 10.244.1.2}
  - {ip: 'fd00:244::2'}
---
apiVersion: v1
kind: Pod
metadata: {name: pod-b, labels: {app: sink}}
spec:
  nodeName: node
  containers:
  - {name: main, image: 'registry.k8s.io/e2e-test-images/agnhost:2.53'}
status:
  podIP: 10.244.1.3
  podIPs:
  - {ip: 10.244.1.3}
  - {ip: 'fd00:244::3'}
---
apiVersion: v1
kind: Service
metadata: {name: sink}
spec:
  type: NodePort
  selector: {app: sink}
  clusterIP: 10.96.0.70
  clusterIPs: [10.96.0.70, 'fd00:96::70']
  ipFamilies: [IPv4, IPv6]
  ipFamilyPolicy: RequireDualStack
  ports:
  - {name: udp, protocol: UDP, port: 7000, targetPort: 7000, nodePort: 30070}
  - {name: tcp, protocol: TCP, port: 7001, targetPort: 7001, nodePort: 30070}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: sink-e2e01
  labels: {kubernetes.io/service-name: sink}
addressType: IPv4
endpoints:
- addresses: [10.244.1.3]
  conditions: {ready: true}
  nodeName: node
ports:
- {name: udp, port: 7000, protocol: UDP}
- {name: tcp, port: 7001, protocol: TCP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: sink-e2e02
  labels: {kubernetes.io/service-name: sink}
addressType: IPv6
endpoints:
- addresses: ['fd00:244::3']
  conditions: {ready: true}
  nodeName: node
ports:
- {name: udp, port: 7000, protocol: UDP}
- {name: tcp, port: 7001, protocol: TCP}
"#;

struct Node {
    _servers: Servers,
    kernel: Kernel,
    topo: Topology,
}

fn node(direct: bool) -> Node {
    let state = flowgate_cluster::load_str(Path::new("e2e-delivery.yaml"), MANIFESTS).unwrap().state;
    let policy = flowgate_compiler::compile(&state, Some("node")).unwrap().policy;
    let topo = e2e::build_topology();
    // IPv6 beside the shared topology's IPv4: the node routes between the client's /64 and a /128
    // per pod, with the gateway's address on every host-side interface.
    e2e::sysctl(&topo.node, "net/ipv6/conf/all/forwarding", "1");
    topo.node.ip(&["addr", "add", &format!("{NODE_IP6}/64"), "dev", e2e::UPLINK, "nodad"]).unwrap();
    topo.client.ip(&["addr", "add", &format!("{CLIENT_IP6}/64"), "dev", "eth0", "nodad"]).unwrap();
    topo.client.ip(&["-6", "route", "add", "default", "via", NODE_IP6]).unwrap();
    for (((_, _, host_if), pod), ip6) in PODS.iter().zip(&topo.pods).zip(POD_IPS6) {
        topo.node.ip(&["addr", "add", &format!("{GATEWAY6}/128"), "dev", host_if, "nodad"]).unwrap();
        topo.node.ip(&["-6", "route", "add", &format!("{ip6}/128"), "dev", host_if]).unwrap();
        pod.ip(&["addr", "add", &format!("{ip6}/128"), "dev", "eth0", "nodad"]).unwrap();
        pod.ip(&["-6", "route", "add", &format!("{GATEWAY6}/128"), "dev", "eth0"]).unwrap();
        pod.ip(&["-6", "route", "add", "default", "via", GATEWAY6, "dev", "eth0"]).unwrap();
    }
    // The node solicits a pod's neighbour entry from its link-local address (a masqueraded packet's
    // source is on another interface): wait until duplicate address detection has let it use them.
    let deadline = Instant::now() + Duration::from_secs(10);
    for ns in std::iter::once(&topo.node).chain(&topo.pods).chain([&topo.client]) {
        while !ns.ip(&["-6", "addr", "show", "tentative"]).unwrap().trim().is_empty() {
            assert!(Instant::now() < deadline, "IPv6 addresses still tentative in {}", ns.name());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // Every sender computes full checksums, every receiver verifies them.
    for (_, _, host_if) in PODS {
        tx_checksum_off(&topo.node, host_if);
    }
    tx_checksum_off(&topo.node, e2e::UPLINK);
    tx_checksum_off(&topo.client, "eth0");
    for pod in &topo.pods {
        tx_checksum_off(pod, "eth0");
    }
    let globals = [("FG_DIRECT_DELIVERY", GlobalValue::U8(u8::from(direct)))];
    let kernel = Kernel::attach(&topo, &policy, &globals, false);
    let mut servers = Servers::default();
    let listener = topo.pods[1].run(|| TcpListener::bind(sock("0.0.0.0", TCP_PORT))).unwrap().unwrap();
    e2e::spawn_echo_server(&mut servers, "pod-b", listener);
    Node { _servers: servers, kernel, topo }
}

/// A device's transmitted packets in `ns` (/proc/net/dev of the namespace).
fn tx_packets(ns: &Netns, dev: &str) -> u64 {
    let text = ns.run(|| std::fs::read_to_string("/proc/thread-self/net/dev")).unwrap().unwrap();
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{dev}:")))
        .unwrap_or_else(|| panic!("{dev} not in /proc/net/dev of {}", ns.name()));
    let fields: Vec<&str> = line.split(':').nth(1).unwrap().split_whitespace().collect();
    fields[9].parse().unwrap()
}

fn counter(ns: &Netns, group: &str, name: &str) -> u64 {
    snmp(ns).get(&(group.to_owned(), name.to_owned())).copied().unwrap_or(0)
}

/// A counter of the namespace's /proc/net/snmp6 ("Ip6OutForwDatagrams").
fn snmp6(ns: &Netns, name: &str) -> u64 {
    let text = ns.run(|| std::fs::read_to_string("/proc/thread-self/net/snmp6")).unwrap().unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or_else(|| panic!("{name} not in /proc/net/snmp6 of {}", ns.name()))
}

fn set_int_option(s: &UdpSocket, level: libc::c_int, name: libc::c_int, value: libc::c_int) {
    #[allow(unsafe_code)]
    // SAFETY: setsockopt on a live socket with a pointer to an int and its size.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt({level}, {name}): {}", io::Error::last_os_error());
}

/// A UDP socket in `ns` bound to `addr` that reports each datagram's TTL or hop limit
/// (IP_RECVTTL, IPV6_RECVHOPLIMIT).
fn ttl_socket(ns: &Netns, addr: SocketAddr) -> UdpSocket {
    let s = ns.run(|| UdpSocket::bind(addr)).unwrap().unwrap();
    if addr.is_ipv4() {
        set_int_option(&s, libc::IPPROTO_IP, libc::IP_RECVTTL, 1);
    } else {
        set_int_option(&s, libc::IPPROTO_IPV6, libc::IPV6_RECVHOPLIMIT, 1);
    }
    s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    s
}

/// Receives one datagram: its TTL, or None once the socket's timeout passes.
fn recv_ttl(s: &UdpSocket) -> Option<u8> {
    let mut buf = [0u8; 2048];
    let mut control = [0u64; 16];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    #[allow(unsafe_code)]
    // SAFETY: msghdr points at live buffers of the given lengths for the duration of the call; the
    // control messages are read within msg_controllen with the libc CMSG macros.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        if libc::recvmsg(s.as_raw_fd(), &mut msg, 0) < 0 {
            return None;
        }
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if ((*c).cmsg_level == libc::IPPROTO_IP && (*c).cmsg_type == libc::IP_TTL)
                || ((*c).cmsg_level == libc::IPPROTO_IPV6 && (*c).cmsg_type == libc::IPV6_HOPLIMIT)
            {
                return Some(*(libc::CMSG_DATA(c) as *const libc::c_int) as u8);
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    panic!("a datagram without its TTL");
}

/// What one UDP flow did: datagrams received, their TTLs, and the node's forwarding counters.
#[derive(Debug)]
struct Flow {
    received: u64,
    ttls: BTreeMap<u8, u64>,
    forwarded: u64,
    pod_veth_tx: u64,
    /// (source MAC, destination MAC) -> frames, as pod-b's eth0 received the established ones.
    macs: BTreeMap<([u8; 6], [u8; 6]), u64>,
}

/// Sends `DATAGRAMS` datagrams (one flow, TTL 64) from `from` to `to`, pod-b receiving on
/// `UDP_PORT`; the first one alone and awaited, so that the rest find the flow established.
fn udp_flow(n: &Node, from: &Netns, from_addr: &str, to: SocketAddr) -> Flow {
    let pod_b = &n.topo.pods[1];
    let v6 = to.is_ipv6();
    let rx = ttl_socket(pod_b, sock(if v6 { "::" } else { "0.0.0.0" }, UDP_PORT));
    let tx = from.run(|| UdpSocket::bind(sock(from_addr, 0))).unwrap().unwrap();
    if v6 {
        set_int_option(&tx, libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, 64);
    } else {
        tx.set_ttl(64).unwrap();
    }
    let forwarded = |ns: &Netns| if v6 { snmp6(ns, "Ip6OutForwDatagrams") } else { counter(ns, "Ip", "ForwDatagrams") };
    let mut ttls = BTreeMap::new();
    tx.send_to(b"first", to).unwrap();
    let first = recv_ttl(&rx).unwrap_or_else(|| {
        panic!("the first datagram from {from_addr} to {to} did not reach pod-b\n{}", n.kernel.evidence.report())
    });
    *ttls.entry(first).or_default() += 1;
    let (fwd0, tx0) = (forwarded(&n.topo.node), tx_packets(&n.topo.node, PODS[1].2));
    let frames = FrameTap::open(pod_b);
    for i in 1..DATAGRAMS {
        tx.send_to(format!("datagram {i}").as_bytes(), to).unwrap();
        // Paced by the receiver, so that no socket buffer overflows.
        if let Some(ttl) = recv_ttl(&rx) {
            *ttls.entry(ttl).or_default() += 1;
        }
    }
    // Any that came late.
    while ttls.values().sum::<u64>() < DATAGRAMS {
        let Some(ttl) = recv_ttl(&rx) else { break };
        *ttls.entry(ttl).or_default() += 1;
    }
    let received = ttls.values().sum();
    Flow {
        received,
        ttls,
        forwarded: forwarded(&n.topo.node) - fwd0,
        pod_veth_tx: tx_packets(&n.topo.node, PODS[1].2) - tx0,
        macs: frames.udp_macs(UDP_PORT),
    }
}

/// A packet socket on pod-b's eth0: the Ethernet headers of the frames that arrive.
struct FrameTap(std::os::fd::OwnedFd);

impl FrameTap {
    fn open(pod: &Netns) -> FrameTap {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        #[allow(unsafe_code)]
        let fd = pod
            .run(|| {
                // SAFETY: plain socket/bind calls; the fd is owned by the OwnedFd below.
                unsafe {
                    let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_NONBLOCK, i32::from(proto));
                    assert!(fd >= 0, "packet socket: {}", io::Error::last_os_error());
                    let mut sll: libc::sockaddr_ll = std::mem::zeroed();
                    sll.sll_family = libc::AF_PACKET as u16;
                    sll.sll_protocol = proto;
                    sll.sll_ifindex = libc::if_nametoindex(c"eth0".as_ptr()) as i32;
                    let rc = libc::bind(
                        fd,
                        (&sll as *const libc::sockaddr_ll).cast(),
                        std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                    );
                    assert_eq!(rc, 0, "bind packet socket: {}", io::Error::last_os_error());
                    // Room for every frame of a flow (the default holds ~256 of them).
                    let size: libc::c_int = 16 << 20;
                    let rc = libc::setsockopt(
                        fd,
                        libc::SOL_SOCKET,
                        libc::SO_RCVBUFFORCE,
                        (&size as *const libc::c_int).cast(),
                        std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                    );
                    assert_eq!(rc, 0, "SO_RCVBUFFORCE: {}", io::Error::last_os_error());
                    <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
                }
            })
            .unwrap();
        FrameTap(fd)
    }

    /// (source MAC, destination MAC) -> frames, of the UDP frames (IPv4 without options, or IPv6
    /// without extension headers) to `port` received so far.
    fn udp_macs(&self, port: u16) -> BTreeMap<([u8; 6], [u8; 6]), u64> {
        let mut out = BTreeMap::new();
        let mut buf = [0u8; 2048];
        loop {
            #[allow(unsafe_code)]
            // SAFETY: recv into a live buffer of the given length.
            let n = unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            if n <= 0 {
                break;
            }
            let f = &buf[..n as usize];
            let dport = |l4: usize| f.len() >= l4 + 4 && u16::from_be_bytes([f[l4 + 2], f[l4 + 3]]) == port;
            let udp_to_port = (f.len() >= 34 && f[12..14] == [0x08, 0x00] && f[23] == 17 && dport(34))
                || (f.len() >= 54 && f[12..14] == [0x86, 0xdd] && f[20] == 17 && dport(54));
            if udp_to_port {
                let (dst, src): ([u8; 6], [u8; 6]) = (f[0..6].try_into().unwrap(), f[6..12].try_into().unwrap());
                *out.entry((src, dst)).or_default() += 1;
            }
        }
        out
    }
}

/// One datagram with TTL 1 from the client to the NodePort: it must not reach pod-b, and the
/// node must answer it as expired. Returns the failures.
fn expiring_datagram(n: &Node) -> Vec<String> {
    let rx = ttl_socket(&n.topo.pods[1], sock("0.0.0.0", UDP_PORT));
    let tx = n.topo.client.run(|| UdpSocket::bind(sock(e2e::CLIENT_IP, 0))).unwrap().unwrap();
    let before = counter(&n.topo.node, "Icmp", "OutTimeExcds");
    tx.set_ttl(1).unwrap();
    tx.send_to(b"expiring", sock(NODE_IP, NODE_PORT)).unwrap();
    let mut failures = Vec::new();
    if let Some(ttl) = recv_ttl(&rx) {
        failures.push(format!("a datagram sent with TTL 1 reached pod-b (TTL {ttl} there)"));
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while counter(&n.topo.node, "Icmp", "OutTimeExcds") == before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if counter(&n.topo.node, "Icmp", "OutTimeExcds") == before {
        failures.push("the node sent no ICMP time-exceeded for a datagram sent with TTL 1".to_owned());
    }
    failures
}

/// The client sends as pod-a (pod-a's address added to its own interface) to pod-b: nothing from
/// the network may send as a pod of the node, so pod-b must get nothing. Returns the failures.
fn sending_as_a_pod_from_the_network(n: &Node) -> Vec<String> {
    let rx = ttl_socket(&n.topo.pods[1], sock("0.0.0.0", UDP_PORT));
    n.topo.client.ip(&["addr", "add", &format!("{}/32", PODS[0].1), "dev", "eth0"]).unwrap();
    let spoofed_before = n.kernel.evidence.counters().get("spoofed").copied().unwrap_or(0);
    let tx = n.topo.client.run(|| UdpSocket::bind(sock(PODS[0].1, 0))).unwrap().unwrap();
    for _ in 0..3 {
        tx.send_to(b"as pod-a", sock(PODS[1].1, UDP_PORT)).unwrap();
    }
    let mut failures = Vec::new();
    if let Some(ttl) = recv_ttl(&rx) {
        failures.push(format!("a datagram from the network as pod-a reached pod-b (TTL {ttl})"));
    }
    let spoofed = n.kernel.evidence.counters().get("spoofed").copied().unwrap_or(0) - spoofed_before;
    if spoofed < 3 {
        failures.push(format!("{spoofed} datagrams from the network as pod-a counted as spoofed, want 3"));
    }
    n.topo.client.ip(&["addr", "del", &format!("{}/32", PODS[0].1), "dev", "eth0"]).unwrap();
    failures
}

/// A TCP exchange through the NodePort: 256 KiB echoed back by pod-b.
fn tcp_exchange(n: &Node) -> io::Result<()> {
    n.topo
        .client
        .run(|| {
            let mut s = TcpStream::connect_timeout(&sock(NODE_IP, NODE_PORT), CONNECT_TIMEOUT)?;
            s.set_read_timeout(Some(IO_TIMEOUT))?;
            s.set_write_timeout(Some(IO_TIMEOUT))?;
            let mut greeting = [0u8; 1];
            while greeting[0] != b'\n' {
                s.read_exact(&mut greeting)?;
            }
            let sent: Vec<u8> = (0..256 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
            let mut got = vec![0u8; sent.len()];
            let reader = s.try_clone()?;
            let read = std::thread::spawn(move || {
                let mut reader = reader;
                reader.read_exact(&mut got).map(|_| got)
            });
            s.write_all(&sent)?;
            let got = read.join().map_err(|_| io::Error::other("reader panicked"))??;
            if got != sent {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "the echo differs from what was sent"));
            }
            Ok(())
        })
        .unwrap()
}

fn check_mode(direct: bool) -> Vec<String> {
    let mode = if direct { "direct delivery" } else { "routed" };
    let n = node(direct);
    let mut failures = Vec::new();
    let flows = [
        ("client -> NodePort", udp_flow(&n, &n.topo.client, e2e::CLIENT_IP, sock(NODE_IP, NODE_PORT))),
        ("pod-a -> ClusterIP", udp_flow(&n, &n.topo.pods[0], PODS[0].1, sock(CLUSTER_IP, UDP_PORT))),
        ("client -> NodePort, IPv6", udp_flow(&n, &n.topo.client, CLIENT_IP6, sock(NODE_IP6, NODE_PORT))),
        ("pod-a -> ClusterIP, IPv6", udp_flow(&n, &n.topo.pods[0], POD_IPS6[0], sock(CLUSTER_IP6, UDP_PORT))),
    ];
    let want_macs = (n.topo.node.mac(PODS[1].2).unwrap(), n.topo.pods[1].mac("eth0").unwrap());
    for (what, f) in &flows {
        eprintln!("{mode}, {what}: {f:?}");
        if f.macs.keys().any(|m| *m != want_macs) || f.macs.values().sum::<u64>() + 1 < DATAGRAMS {
            failures.push(format!(
                "{mode}, {what}: frames at pod-b by (source, destination) MAC {:?}, want all {} from {:?}",
                f.macs,
                DATAGRAMS - 1,
                want_macs
            ));
        }
        if f.received != DATAGRAMS {
            failures.push(format!("{mode}, {what}: {} of {DATAGRAMS} datagrams reached pod-b", f.received));
        }
        if f.ttls.keys().any(|&t| t != 63) {
            failures.push(format!("{mode}, {what}: TTLs at pod-b {:?}, want 63 (sent with 64, one hop)", f.ttls));
        }
        let rest = DATAGRAMS - 1;
        if direct && (f.forwarded > VIA_STACK_AT_MOST || f.pod_veth_tx > VIA_STACK_AT_MOST) {
            failures.push(format!(
                "{mode}, {what}: the node's stack forwarded {} and pod-b's host veth sent {} of {rest} \
                 established datagrams, want at most {VIA_STACK_AT_MOST}",
                f.forwarded, f.pod_veth_tx
            ));
        }
        if !direct && (f.forwarded < rest || f.pod_veth_tx < rest) {
            failures.push(format!(
                "{mode}, {what}: the node's stack forwarded {} and pod-b's host veth sent {} of {rest} \
                 established datagrams, want all",
                f.forwarded, f.pod_veth_tx
            ));
        }
    }
    // The programs' own count of what they handed over (`flowgate status`: delivered_direct).
    let delivered = n.kernel.evidence.counters().get("delivered-direct").copied().unwrap_or(0);
    let want_at_least = flows.len() as u64 * (DATAGRAMS - VIA_STACK_AT_MOST);
    if direct && delivered < want_at_least {
        failures
            .push(format!("{mode}: the programs counted {delivered} direct deliveries, want at least {want_at_least}"));
    }
    if !direct && delivered != 0 {
        failures.push(format!("{mode}: the programs counted {delivered} direct deliveries, want none"));
    }
    failures.extend(expiring_datagram(&n).into_iter().map(|f| format!("{mode}: {f}")));
    failures.extend(sending_as_a_pod_from_the_network(&n).into_iter().map(|f| format!("{mode}: {f}")));
    if let Err(e) = tcp_exchange(&n) {
        failures.push(format!("{mode}: TCP through the NodePort: {e}"));
    }
    for (name, ns) in
        [("node", &n.topo.node), ("client", &n.topo.client), ("pod-a", &n.topo.pods[0]), ("pod-b", &n.topo.pods[1])]
    {
        let mut errors = checksum_errors(ns);
        for name6 in ["Udp6InCsumErrors", "Icmp6InCsumErrors"] {
            let v = snmp6(ns, name6);
            if v != 0 {
                errors.push(format!("{name6} {v}"));
            }
        }
        if !errors.is_empty() {
            failures.push(format!("{mode}, {name}: checksum errors counted by the kernel: {errors:?}"));
        }
    }
    if !failures.is_empty() {
        failures.push(n.kernel.evidence.report());
    }
    failures
}

#[test]
fn pods_on_the_node_get_allowed_packets_directly_with_forwarding_semantics() {
    if !flowgate_ebpf::privileged_test("pods_on_the_node_get_allowed_packets_directly_with_forwarding_semantics") {
        return;
    }
    let mut failures = check_mode(true);
    failures.extend(check_mode(false));
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}
