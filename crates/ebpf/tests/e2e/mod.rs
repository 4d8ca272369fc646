//! Shared setup of the end-to-end tests with real traffic (`e2e_traffic.rs`, `e2e_restart.rs`,
//! `e2e_outbound.rs`, `e2e_policy.rs`, `e2e_delivery.rs`): a "node" namespace standing for the host (programs attached
//! there with TCX, nothing in the machine's root namespace), pods as namespaces behind veth pairs,
//! a client outside behind the node's uplink. Addresses: pods 10.244.1.0/24 (gateway 10.244.1.1
//! on every host-side veth), uplink 192.168.77.0/24, Services 10.96.0.0/16; no namespace has a
//! route out of the test's own ranges ([`build_node_with_pods`] takes the pods' addresses and
//! gateway from its caller).
//!
//! Each test file uses part of this module.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{self, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray};
use flowgate_ebpf::maps;
use flowgate_ebpf::netns::Netns;

pub const NODE_IP: &str = "192.168.77.1";
pub const CLIENT_IP: &str = "192.168.77.2";
pub const GATEWAY: &str = "10.244.1.1";
pub const UPLINK: &str = "uplink0";

/// The node (192.168.77.1, uplink `uplink0`), kube-proxy's configuration, the ServiceCIDR and the
/// two pods ([`PODS`]) as Kubernetes objects: the start of `e2e_traffic`'s and `e2e_restart`'s
/// manifests, each followed by its own Services.
pub const NODE_AND_PODS: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node}
status:
  addresses:
  - {type: InternalIP, address: 192.168.77.1}
---
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
clusterCIDR: 10.244.0.0/16
detectLocalMode: ClusterCIDR
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
  labels: {app: web}
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
"#;

/// (name, address, host-side interface in the node namespace)
pub const PODS: [(&str, &str, &str); 2] = [("pod-a", "10.244.1.2", "veth-a"), ("pod-b", "10.244.1.3", "veth-b")];

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);

pub fn sock(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// Writes `/proc/sys/<key>` with the calling thread inside `ns` (`/proc/sys/net` is the
/// namespace of the thread that opens it).
pub fn sysctl(ns: &Netns, key: &str, value: &str) {
    let path = Path::new("/proc/sys").join(key);
    ns.run(|| std::fs::write(&path, value))
        .unwrap()
        .unwrap_or_else(|e| panic!("sysctl {} = {value} in {}: {e}", path.display(), ns.name()));
}

/// The namespaces; dropped (deleted) last by whoever holds them.
pub struct Topology {
    pub node: Netns,
    pub client: Netns,
    pub pods: Vec<Netns>,
}

/// The node, a client behind its uplink (192.168.77.1/24 <-> 192.168.77.2/24, the client's default
/// route via the node) and the pods behind veth pairs (a /32 each, default route via the gateway).
/// The node forwards and accepts packets whose source is one of its own addresses (the switch
/// masquerades on ingress, before routing).
pub fn build_topology() -> Topology {
    let node = Netns::new().unwrap();
    let client = Netns::new().unwrap();
    let pods: Vec<Netns> = PODS.iter().map(|_| Netns::new().unwrap()).collect();

    sysctl(&node, "net/ipv4/ip_forward", "1");
    for conf in ["all", "default"] {
        sysctl(&node, &format!("net/ipv4/conf/{conf}/rp_filter"), "0");
        sysctl(&node, &format!("net/ipv4/conf/{conf}/accept_local"), "1");
        sysctl(&node, &format!("net/ipv4/conf/{conf}/send_redirects"), "0");
    }
    node.ip(&["link", "set", "lo", "up"]).unwrap();

    node.add_veth_to(UPLINK, &client, "eth0").unwrap();
    node.ip(&["addr", "add", &format!("{NODE_IP}/24"), "dev", UPLINK]).unwrap();
    client.ip(&["link", "set", "lo", "up"]).unwrap();
    client.ip(&["addr", "add", &format!("{CLIENT_IP}/24"), "dev", "eth0"]).unwrap();
    client.ip(&["route", "add", "default", "via", NODE_IP]).unwrap();

    for ((_, ip, host_if), pod) in PODS.iter().zip(&pods) {
        node.add_veth_to(host_if, pod, "eth0").unwrap();
        node.ip(&["addr", "add", &format!("{GATEWAY}/32"), "dev", host_if]).unwrap();
        node.ip(&["route", "add", &format!("{ip}/32"), "dev", host_if, "scope", "link"]).unwrap();
        pod.ip(&["link", "set", "lo", "up"]).unwrap();
        pod.ip(&["addr", "add", &format!("{ip}/32"), "dev", "eth0"]).unwrap();
        pod.ip(&["route", "add", &format!("{GATEWAY}/32"), "dev", "eth0", "scope", "link"]).unwrap();
        pod.ip(&["route", "add", "default", "via", GATEWAY, "dev", "eth0"]).unwrap();
    }
    for dev in std::iter::once(UPLINK).chain(PODS.iter().map(|p| p.2)) {
        node_accepts_local(&node, dev);
    }
    Topology { node, client, pods }
}

/// A node namespace and pods behind veth pairs, with no uplink: every pod `(address,
/// host-side interface)` gets `address/32` on its `eth0`, an on-link route to `gateway` and a
/// default route via it; the node has `gateway/32` on every host-side interface and an on-link /32
/// route to each pod, forwards, and has rp_filter off (as [`build_topology`] does for its pods).
/// The pods are returned in the order given.
pub fn build_node_with_pods(gateway: &str, pods: &[(&str, &str)]) -> (Netns, Vec<Netns>) {
    let node = Netns::new().unwrap();
    let pod_ns: Vec<Netns> = pods.iter().map(|_| Netns::new().unwrap()).collect();
    sysctl(&node, "net/ipv4/ip_forward", "1");
    for conf in ["all", "default"] {
        sysctl(&node, &format!("net/ipv4/conf/{conf}/rp_filter"), "0");
        sysctl(&node, &format!("net/ipv4/conf/{conf}/send_redirects"), "0");
    }
    node.ip(&["link", "set", "lo", "up"]).unwrap();
    for ((ip, host_if), pod) in pods.iter().zip(&pod_ns) {
        node.add_veth_to(host_if, pod, "eth0").unwrap();
        node.ip(&["addr", "add", &format!("{gateway}/32"), "dev", host_if]).unwrap();
        node.ip(&["route", "add", &format!("{ip}/32"), "dev", host_if, "scope", "link"]).unwrap();
        sysctl(&node, &format!("net/ipv4/conf/{host_if}/rp_filter"), "0");
        pod.ip(&["link", "set", "lo", "up"]).unwrap();
        pod.ip(&["addr", "add", &format!("{ip}/32"), "dev", "eth0"]).unwrap();
        pod.ip(&["route", "add", &format!("{gateway}/32"), "dev", "eth0", "scope", "link"]).unwrap();
        pod.ip(&["route", "add", "default", "via", gateway, "dev", "eth0"]).unwrap();
    }
    (node, pod_ns)
}

/// rp_filter off and accept_local on for `dev` in the node namespace.
pub fn node_accepts_local(node: &Netns, dev: &str) {
    sysctl(node, &format!("net/ipv4/conf/{dev}/rp_filter"), "0");
    sysctl(node, &format!("net/ipv4/conf/{dev}/accept_local"), "1");
}

/// Turns transmit checksum offload on `dev` in `ns` off (`ethtool -K dev tx off`; ethtool is not
/// installed here), then reads it back. With it off, senders compute full checksums and the
/// receivers verify them, so a wrong incremental update by a program loses the packet.
pub fn tx_checksum_off(ns: &Netns, dev: &str) {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GTXCSUM: u32 = 0x16;
    const ETHTOOL_STXCSUM: u32 = 0x17;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        data: *mut EthtoolValue,
        pad: [u8; 16],
    }
    #[allow(unsafe_code)]
    fn ethtool(fd: libc::c_int, dev: &str, cmd: u32, data: u32) -> io::Result<u32> {
        let mut value = EthtoolValue { cmd, data };
        let mut req = IfReq { name: [0; libc::IFNAMSIZ], data: &mut value, pad: [0; 16] };
        req.name[..dev.len()].copy_from_slice(dev.as_bytes());
        // SAFETY: `req` is a valid struct ifreq whose ifr_data points to a live ethtool_value;
        // the kernel reads and writes only those two, and both outlive the call.
        let rc = unsafe { libc::ioctl(fd, SIOCETHTOOL, &mut req as *mut IfReq) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(value.data)
    }
    assert!(dev.len() < libc::IFNAMSIZ);
    let after = ns
        .run(|| -> io::Result<u32> {
            let sock = UdpSocket::bind("127.0.0.1:0")?;
            let fd = std::os::fd::AsRawFd::as_raw_fd(&sock);
            ethtool(fd, dev, ETHTOOL_STXCSUM, 0)?;
            ethtool(fd, dev, ETHTOOL_GTXCSUM, 0)
        })
        .unwrap()
        .unwrap_or_else(|e| panic!("tx checksum offload off on {dev} in {}: {e}", ns.name()));
    assert_eq!(after, 0, "tx checksum offload still on for {dev} in {}", ns.name());
}

/// The counters of a namespace's /proc/net/snmp: ("Udp", "InCsumErrors") -> value.
pub fn snmp(ns: &Netns) -> BTreeMap<(String, String), u64> {
    let text = ns.run(|| std::fs::read_to_string("/proc/thread-self/net/snmp")).unwrap().unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = BTreeMap::new();
    for pair in lines.chunks(2) {
        let [names, values] = pair else { continue };
        let proto = names.split(':').next().unwrap_or("").to_owned();
        for (name, value) in names.split_whitespace().zip(values.split_whitespace()).skip(1) {
            out.insert((proto.clone(), name.to_owned()), value.parse().unwrap_or(0));
        }
    }
    out
}

/// The checksum-error counters of a namespace that are not zero.
pub fn checksum_errors(ns: &Netns) -> Vec<String> {
    snmp(ns)
        .into_iter()
        .filter(|((_, name), value)| name == "InCsumErrors" && *value != 0)
        .map(|((proto, name), value)| format!("{proto} {name} {value}"))
        .collect()
}

/// Server threads; dropping stops and joins them.
#[derive(Default)]
pub struct Servers {
    pub stop: Arc<AtomicBool>,
    pub threads: Vec<JoinHandle<()>>,
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Reads up to and without the next '\n' (at most 200 bytes).
pub fn read_line(s: &mut TcpStream) -> io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 200 {
        s.read_exact(&mut byte)?;
        if byte[0] == b'\n' {
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
        line.push(byte[0]);
    }
    Err(io::Error::new(io::ErrorKind::InvalidData, format!("no end of line in {:?}", String::from_utf8_lossy(&line))))
}

/// A TCP server on a listener (opened by the caller inside a namespace): per connection it sends
/// "<name> <peer ip>:<peer port>\n", then echoes everything until the peer ends its side, then
/// closes. Connections are served on threads of their own, joined when the server stops.
pub fn spawn_echo_server(servers: &mut Servers, name: &'static str, listener: std::net::TcpListener) {
    listener.set_nonblocking(true).unwrap();
    let stop = servers.stop.clone();
    servers.threads.push(std::thread::spawn(move || {
        let mut conns: Vec<JoinHandle<()>> = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut s, peer)) => {
                    let stop = stop.clone();
                    conns.push(std::thread::spawn(move || {
                        let _ = s.set_nonblocking(false);
                        // Short reads so that the thread notices `stop`; a stream paused for longer
                        // than this is fine (WouldBlock/TimedOut are retried).
                        let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
                        let _ = s.set_write_timeout(Some(IO_TIMEOUT));
                        if s.write_all(format!("{name} {peer}\n").as_bytes()).is_err() {
                            return;
                        }
                        let mut buf = vec![0u8; 64 * 1024];
                        while !stop.load(Ordering::Relaxed) {
                            match s.read(&mut buf) {
                                Ok(0) => break,
                                Ok(n) => {
                                    if s.write_all(&buf[..n]).is_err() {
                                        return;
                                    }
                                }
                                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
                                Err(_) => return,
                            }
                        }
                        let _ = s.shutdown(std::net::Shutdown::Write);
                    }));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
        for c in conns {
            let _ = c.join();
        }
    }));
}

/// A UDP server on a socket (opened by the caller inside a namespace): answers every datagram with
/// "<name> <peer ip>:<peer port>".
pub fn spawn_udp_server(servers: &mut Servers, name: &'static str, udp: UdpSocket) {
    udp.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let stop = servers.stop.clone();
    servers.threads.push(std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((_, peer)) = udp.recv_from(&mut buf) {
                let _ = udp.send_to(format!("{name} {peer}").as_bytes(), peer);
            }
        }
    }));
}

/// The pattern of the bytes of chunk `i` of a stream: every chunk differs from its neighbours,
/// so a lost, repeated or reordered chunk shows.
pub fn chunk(i: u64, len: usize) -> Vec<u8> {
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// One TCP exchange with an echo server from inside `ns`: connect (bounded), read the greeting,
/// send `len` bytes, end the request, read the echo to EOF and compare. Returns the greeting
/// ("<server name> <peer as the server saw it>").
pub fn tcp_echo(ns: &Netns, to: SocketAddr, len: usize) -> io::Result<String> {
    ns.run(|| {
        let mut s = TcpStream::connect_timeout(&to, CONNECT_TIMEOUT)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        let greeting = read_line(&mut s)?;
        let data = chunk(u64::from(to.port()), len);
        // Write and read at once: the echo must not wait for the whole request.
        let mut reader = s.try_clone()?;
        let echo = std::thread::scope(|scope| {
            let r = scope.spawn(move || {
                let mut echo = Vec::new();
                reader.read_to_end(&mut echo).map(|_| echo)
            });
            let w = s.write_all(&data).and_then(|()| s.shutdown(std::net::Shutdown::Write));
            let echo = r.join().unwrap();
            w.and(echo)
        })?;
        if echo != data {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("echo of {} bytes differs from the {len} bytes sent", echo.len()),
            ));
        }
        Ok(greeting)
    })
    .unwrap()
}

/// One UDP request/reply from inside `ns` on a new (connected) socket, so a new flow each time.
pub fn udp_ask(ns: &Netns, to: SocketAddr) -> io::Result<String> {
    udp_ask_within(ns, to, IO_TIMEOUT)
}

/// [`udp_ask`] waiting at most `wait` for the answer.
pub fn udp_ask_within(ns: &Netns, to: SocketAddr, wait: Duration) -> io::Result<String> {
    ns.run(|| {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.connect(to)?;
        s.set_read_timeout(Some(wait))?;
        s.send(b"?")?;
        let mut buf = [0u8; 512];
        let n = s.recv(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
    .unwrap()
}

/// The kernel's view, for failure messages: counters (summed over CPUs) and the flow table.
pub struct Evidence {
    pub counters: PerCpuArray<MapData, u64>,
    pub flows: BpfHashMap<MapData, maps::FlowKey, maps::Flow>,
    /// The established connections' table.
    pub flows_est: BpfHashMap<MapData, maps::FlowKey, maps::Flow>,
}

impl Evidence {
    /// The counters and flow table of a loaded object (shared with every object loaded with the
    /// same pin directory).
    pub fn take(loaded: &mut flowgate_ebpf::Loaded) -> Evidence {
        Evidence {
            counters: PerCpuArray::try_from(loaded.ebpf.take_map("fg_counters").unwrap()).unwrap(),
            flows: BpfHashMap::try_from(loaded.ebpf.take_map("fg_flows").unwrap()).unwrap(),
            flows_est: BpfHashMap::try_from(loaded.ebpf.take_map("fg_flows_est").unwrap()).unwrap(),
        }
    }

    /// Every entry of both flow tables (established first).
    pub fn all_flows(&self) -> Vec<(maps::FlowKey, maps::Flow)> {
        self.flows_est.iter().chain(self.flows.iter()).flatten().collect()
    }

    /// Non-zero counters by name, spelled as `flowgate trace` spells reasons ("no-endpoints").
    pub fn counters(&self) -> BTreeMap<String, u64> {
        let mut names: Vec<(u32, String)> = vec![(0, "allowed".to_owned())];
        names.extend(flowgate_switch::DropReason::ALL.iter().map(|r| (*r as u32, r.name().to_owned())));
        names.push((maps::COUNTER_FLOW_HIT, "flow-hit".to_owned()));
        names.push((maps::COUNTER_FIRST_PACKET, "first-packet".to_owned()));
        names.push((maps::COUNTER_DELIVERED, "delivered-direct".to_owned()));
        names
            .into_iter()
            .map(|(i, name)| (name, self.counters.get(&i, 0).map(|v| v.iter().sum::<u64>()).unwrap_or(0)))
            .filter(|(_, v)| *v != 0)
            .collect()
    }

    pub fn report(&self) -> String {
        let mut out = format!("counters: {:?}\nflow table:\n", self.counters());
        let mut n = 0;
        for (k, f) in self.all_flows() {
            n += 1;
            if n > 60 {
                continue;
            }
            out.push_str(&format!("  {}\n", flow_line(&k, &f)));
        }
        out.push_str(&format!("  ({n} entries)\n"));
        out
    }
}

pub fn flow_line(k: &maps::FlowKey, f: &maps::Flow) -> String {
    let proto = match k.proto {
        6 => "tcp",
        17 => "udp",
        _ => "?",
    };
    format!(
        "{proto} {}:{} -> {}:{}  verdict {} reason {} flags {:#x} gen {}: src {}:{} dst {}:{}",
        k.src.to_ip(),
        u16::from_be(k.sport),
        k.dst.to_ip(),
        u16::from_be(k.dport),
        f.verdict,
        f.reason,
        f.flags,
        f.generation,
        f.new_src.to_ip(),
        u16::from_be(f.new_sport),
        f.new_dst.to_ip(),
        u16::from_be(f.new_dport),
    )
}

/// The kernel side of [`build_topology`]'s node, as the agent sets it up: the programs loaded
/// (with the load-time constants `globals`), `policy` programmed by the eBPF backend, each pod's
/// host-side interface bound to its endpoint (anti-spoofing), and with TCX in the node namespace
/// the uplink's ingress program and each pod interface's endpoint program — with `host_egress`,
/// also the egress program on the uplink and lo (the node's own traffic to Services and to its
/// own NodePorts). Dropping it detaches everything.
pub struct Kernel {
    pub evidence: Evidence,
    pub dataplane: flowgate_ebpf::backend::EbpfDataplane,
    pub links: Vec<aya::programs::links::FdLink>,
    pub loaded: Vec<flowgate_ebpf::Loaded>,
}

impl Kernel {
    pub fn attach(
        topo: &Topology,
        policy: &flowgate_switch::SwitchPolicy,
        globals: &[(&str, flowgate_ebpf::GlobalValue)],
        host_egress: bool,
    ) -> Kernel {
        use flowgate_dataplane::Dataplane as _;
        use flowgate_ebpf::{objects, Direction};
        let mut loaded = flowgate_ebpf::load_all(&[objects::UPLINK, objects::ENDPOINT], None, globals).unwrap();
        let dataplane = flowgate_ebpf::backend::EbpfDataplane::new(
            flowgate_ebpf::backend::KernelMaps::take(&mut loaded[0].ebpf).unwrap(),
        );
        dataplane.apply(policy, &flowgate_switch::PolicyDelta::full()).unwrap();
        for ((_, ip, host_if), pod) in PODS.iter().zip(&topo.pods) {
            let port = policy.endpoint_for(ip.parse().unwrap()).expect("the pod is an endpoint of the policy");
            dataplane.bind_endpoint(topo.node.ifindex(host_if).unwrap(), port, Some(pod.mac("eth0").unwrap())).unwrap();
        }
        // The same (shared) maps through the endpoint object's handles, whatever the backend took
        // from the uplink object's.
        let evidence = Evidence::take(&mut loaded[1]);
        let mut links = Vec::new();
        topo.node
            .run(|| {
                let (uplink, endpoint) = loaded.split_at_mut(1);
                links.push(uplink[0].attach_tcx("fg_uplink_ingress", UPLINK, Direction::Ingress).unwrap());
                if host_egress {
                    links.push(uplink[0].attach_tcx("fg_uplink_egress", UPLINK, Direction::Egress).unwrap());
                    links.push(uplink[0].attach_tcx("fg_uplink_egress", "lo", Direction::Egress).unwrap());
                }
                for (_, _, host_if) in PODS {
                    links.push(endpoint[0].attach_tcx("fg_from_endpoint", host_if, Direction::Ingress).unwrap());
                }
            })
            .unwrap();
        Kernel { evidence, dataplane, links, loaded }
    }
}
