//! NetworkPolicy truth tables replayed with real traffic: the kernel's connectivity matrix must be
//! the model's.
//!
//! The scenario files `tests/scenarios/*netpol-xyz*.yaml` (sorted by name) describe upstream's
//! NetworkPolicy e2e model: namespaces x, y and z with pods a, b and c each, all on node `node-a`,
//! serving ports 80 and 81; each file holds one set of NetworkPolicies and probes between the
//! pods. Here the same nine pods are network namespaces behind veth pairs of a "node" namespace
//! (standing for the host; nothing is made or attached in the machine's root namespace), with the
//! files' addresses (x/a 10.0.1.11, x/b .12, x/c .13, y/a .21, ... z/c .33; a /32 each, default
//! route via 10.0.1.1 on the host side; the node's 192.168.0.2 on its `lo`), each serving TCP and
//! UDP on 80, 81 and any other port a probe names, answering with the pod's name ("x/a").
//!
//! The files are compiled in order by one incremental compiler (`flowgate_compiler::Compiler`):
//! the first with `compile_full`, each later one with `update` and the [`Changes`] between the two
//! states (the NetworkPolicies removed and added, and whatever else differs), and every delta is
//! applied to the eBPF backend, as the agent does; the pods' host-side interfaces are bound to
//! their endpoint ports (anti-spoofing) and carry the endpoint program (TCX). Then, for every
//! probe, the model's verdict is `flowgate_switch::trace` on the programmed policy (what
//! `flowgate trace` answers; allowed = `Allow`), and the kernel's is measured with a real
//! connection from the source pod's namespace: TCP connect within 400 ms and the server's
//! greeting read, or a UDP datagram answered within 400 ms. The probes of a file run
//! concurrently; every connection has a source port used by no earlier probe of the run, so no
//! flow of an earlier file (an older policy generation) can decide a later one. Every mismatch
//! (also a full compile of the same state disagreeing with the incrementally updated policy) is
//! collected and the test fails at the end if there is any, or if there is no such file.
//!
//! SCTP probes are skipped, counted and reported: this kernel has no SCTP sockets
//! (`socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP)` fails with EPROTONOSUPPORT), so they cannot be
//! replayed as real connections; the differential BPF_PROG_TEST_RUN tests (`differential.rs`)
//! cover SCTP packets against the model.
//!
//! `FLOWGATE_NETPOL_SCENARIOS=DIR` reads the `*netpol-xyz*.yaml` files of DIR instead (for trying
//! the harness on files of one's own).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod e2e;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use e2e::{Evidence, Servers};
use flowgate_cluster::ClusterState;
use flowgate_compiler::{Changes, Compiler};
use flowgate_dataplane::Dataplane;
use flowgate_ebpf::backend::{EbpfDataplane, KernelMaps};
use flowgate_ebpf::netns::Netns;
use flowgate_ebpf::{objects, Direction};
use flowgate_switch::{FlowKey, PortId, Proto, SwitchPolicy, Verdict};

/// The pods of upstream's NetworkPolicy e2e model: (name, address, host-side interface).
const PODS: [(&str, &str, &str); 9] = [
    ("x/a", "10.0.1.11", "veth-x-a"),
    ("x/b", "10.0.1.12", "veth-x-b"),
    ("x/c", "10.0.1.13", "veth-x-c"),
    ("y/a", "10.0.1.21", "veth-y-a"),
    ("y/b", "10.0.1.22", "veth-y-b"),
    ("y/c", "10.0.1.23", "veth-y-c"),
    ("z/a", "10.0.1.31", "veth-z-a"),
    ("z/b", "10.0.1.32", "veth-z-b"),
    ("z/c", "10.0.1.33", "veth-z-c"),
];
/// The node's InternalIP in the files; on the node namespace's `lo`, so probes from it can be sent.
const NODE_IP: &str = "192.168.0.2";
/// Every host-side interface's address, the pods' default gateway.
const GATEWAY: &str = "10.0.1.1";
/// The ports every pod serves (TCP and UDP), whatever the probes name.
const PORTS: [u16; 2] = [80, 81];

/// How long a TCP connect may take, and how long a UDP request waits for its answer.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(400);
/// How long the greeting may take once a TCP connection is up.
const GREETING_TIMEOUT: Duration = Duration::from_secs(2);
/// The timeout of the second, lone attempt of a probe the model allows whose first attempt got no
/// answer (a loaded machine, not a policy, may have made it slow).
const RETRY_TIMEOUT: Duration = Duration::from_secs(2);
/// Probes measured at once (a thread each), and second attempts.
const CHUNK: usize = 256;
const RETRY_AT_ONCE: usize = 32;
/// Source ports handed out, one per connection attempt, never twice in a run.
const SOURCE_PORTS: std::ops::RangeInclusive<u16> = 20000..=60999;

fn scenario_dir() -> PathBuf {
    match std::env::var_os("FLOWGATE_NETPOL_SCENARIOS") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/scenarios"),
    }
}

/// One probe as the file writes it.
struct FileProbe {
    name: String,
    from: String,
    to: String,
    /// The file's expectation (the scenario test checks it against the model; here only counted).
    verdict: Option<String>,
}

struct Scenario {
    name: String,
    node: Option<String>,
    manifests: String,
    probes: Vec<FileProbe>,
}

fn load_scenario(path: &Path) -> Scenario {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("?").to_owned();
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{name}: {e}"));
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{name}: not YAML: {e}"));
    let manifests =
        doc.get("manifests").and_then(|m| m.as_sequence()).unwrap_or_else(|| panic!("{name}: no manifests"));
    let mut yaml = String::new();
    for m in manifests {
        yaml.push_str("---\n");
        yaml.push_str(&serde_yaml::to_string(m).unwrap());
    }
    let str_of = |p: &serde_yaml::Value, field: &str| p.get(field).and_then(|v| v.as_str()).map(str::to_owned);
    let probes = doc
        .get("probes")
        .and_then(|p| p.as_sequence())
        .map(|probes| {
            probes
                .iter()
                .enumerate()
                .map(|(i, p)| FileProbe {
                    name: str_of(p, "name").unwrap_or_default(),
                    from: str_of(p, "from").unwrap_or_else(|| panic!("{name}: probe {i}: no from")),
                    to: str_of(p, "to").unwrap_or_else(|| panic!("{name}: probe {i}: no to")),
                    verdict: str_of(p, "verdict"),
                })
                .collect()
        })
        .unwrap_or_default();
    Scenario { node: doc.get("node").and_then(|n| n.as_str()).map(str::to_owned), name, manifests: yaml, probes }
}

/// A probe's packet: `ADDR[:PORT]` and `ADDR:PORT[/PROTO]`, IPv4 only (the topology's family).
/// The source port, if any, is ignored: every attempt gets a fresh one.
fn parse_probe(from: &str, to: &str) -> Result<(Ipv4Addr, SocketAddrV4, Proto), String> {
    let src = from.split(':').next().unwrap_or("");
    let src: Ipv4Addr = src.parse().map_err(|_| format!("source {from:?} is not an IPv4 address[:port]"))?;
    let (dst, proto) = match to.rsplit_once('/') {
        Some((d, p)) => (d, Proto::from_name(p).filter(|p| p.has_ports()).ok_or(format!("protocol {p:?}"))?),
        None => (to, Proto::TCP),
    };
    let dst: SocketAddrV4 = dst.parse().map_err(|_| format!("destination {to:?} is not IPv4ADDR:PORT[/PROTO]"))?;
    Ok((src, dst, proto))
}

/// What changed from `old` to `new`, as the agent's change tracker would report it: the keys of
/// every object that differs, in either.
fn changes(old: &ClusterState, new: &ClusterState) -> Changes {
    fn differ<K: Ord + Clone, V: PartialEq>(a: &BTreeMap<K, V>, b: &BTreeMap<K, V>) -> BTreeSet<K> {
        a.keys().chain(b.keys()).filter(|k| a.get(*k) != b.get(*k)).cloned().collect()
    }
    Changes {
        nodes: differ(&old.nodes, &new.nodes),
        config: old.kube_proxy != new.kube_proxy || old.flowgate != new.flowgate,
        services: differ(&old.services, &new.services),
        endpoint_slices: differ(&old.endpoint_slices, &new.endpoint_slices),
        pods: differ(&old.pods, &new.pods),
        service_cidrs: !differ(&old.service_cidrs, &new.service_cidrs).is_empty(),
        namespaces: differ(&old.namespaces, &new.namespaces),
        network_policies: differ(&old.network_policies, &new.network_policies),
        local_endpoints: differ(&old.local_endpoints, &new.local_endpoints),
        local_load_balancers: differ(&old.local_load_balancers, &new.local_load_balancers),
    }
}

/// For the per-file line: what an update was given.
fn describe(c: &Changes, old: &ClusterState, new: &ClusterState) -> String {
    let mut parts = Vec::new();
    let removed = c.network_policies.iter().filter(|k| !new.network_policies.contains_key(*k)).count();
    let added = c.network_policies.iter().filter(|k| !old.network_policies.contains_key(*k)).count();
    let changed = c.network_policies.len() - removed - added;
    parts.push(format!("NetworkPolicies -{removed} +{added} ~{changed}"));
    for (what, n) in [
        ("nodes", c.nodes.len()),
        ("namespaces", c.namespaces.len()),
        ("pods", c.pods.len()),
        ("services", c.services.len()),
        ("endpoint slices", c.endpoint_slices.len()),
        ("configuration", usize::from(c.config)),
        ("service CIDRs", usize::from(c.service_cidrs)),
    ] {
        if n > 0 {
            parts.push(format!("{what} {n}"));
        }
    }
    format!("update ({})", parts.join(", "))
}

/// The incremental compiler and the state it last compiled.
struct Model {
    node: Option<String>,
    compiler: Compiler,
    state: ClusterState,
}

/// Where a probe is sent from.
#[derive(Clone, Copy)]
enum Source {
    Pod(usize),
    Node,
}

/// What a connection attempt got.
#[derive(Clone, Debug, PartialEq)]
enum Measured {
    /// The server's greeting: the name of the pod that answered.
    Answered(String),
    /// ECONNREFUSED: a TCP reset or an ICMP unreachable.
    Refused,
    /// Nothing within the timeout.
    Silent,
    /// Anything else (connected, then no greeting; unreachable; ...).
    Failed(String),
}

impl std::fmt::Display for Measured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Measured::Answered(name) => write!(f, "answered by {name}"),
            Measured::Refused => write!(f, "refused"),
            Measured::Silent => write!(f, "no answer"),
            Measured::Failed(e) => write!(f, "failed: {e}"),
        }
    }
}

/// Makes an IPv4 socket of `kind` (SOCK_STREAM, SOCK_DGRAM) in the calling thread's namespace,
/// bound to 0.0.0.0:`sport`, non-blocking.
#[allow(unsafe_code)]
fn bound_socket(kind: libc::c_int, sport: u16) -> io::Result<OwnedFd> {
    // SAFETY: socket() takes no pointers; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, kind | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new, valid descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let addr = sockaddr(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, sport));
    // SAFETY: `addr` is a valid sockaddr_in that outlives the call, and the length is its size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*a.ip()).to_be() },
        sin_zero: [0; 8],
    }
}

/// A TCP connection from source port `sport` (std cannot bind before connecting), within `timeout`.
#[allow(unsafe_code)]
fn tcp_connect_from(sport: u16, to: SocketAddrV4, timeout: Duration) -> io::Result<TcpStream> {
    let fd = bound_socket(libc::SOCK_STREAM, sport)?;
    let addr = sockaddr(to);
    // SAFETY: as in `bound_socket`.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
        let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLOUT, revents: 0 };
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: `pfd` is one valid pollfd that outlives the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"));
        }
        let mut err: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `err` and `len` are valid for writes of the sizes given, and outlive the call.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                (&mut err as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        if err != 0 {
            return Err(io::Error::from_raw_os_error(err));
        }
    }
    let stream = TcpStream::from(fd);
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// One attempt, with the calling thread inside the source's namespace.
fn attempt(proto: Proto, sport: u16, to: SocketAddrV4, timeout: Duration) -> Measured {
    let outcome = |e: io::Error| match e.kind() {
        io::ErrorKind::ConnectionRefused => Measured::Refused,
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Measured::Silent,
        _ => Measured::Failed(e.to_string()),
    };
    if proto == Proto::TCP {
        let mut s = match tcp_connect_from(sport, to, timeout) {
            Ok(s) => s,
            Err(e) => return outcome(e),
        };
        let mut greeting = String::new();
        let read = s.set_read_timeout(Some(GREETING_TIMEOUT)).and_then(|()| s.read_to_string(&mut greeting));
        return match read {
            Ok(_) if !greeting.trim().is_empty() => Measured::Answered(greeting.trim().to_owned()),
            Ok(_) => Measured::Failed("connected, then closed without a greeting".to_owned()),
            Err(e) => Measured::Failed(format!("connected, then no greeting: {e}")),
        };
    }
    let udp = || -> io::Result<String> {
        let s = UdpSocket::from(bound_socket(libc::SOCK_DGRAM, sport)?);
        s.set_nonblocking(false)?;
        s.connect(to)?;
        s.set_read_timeout(Some(timeout))?;
        s.send(b"?")?;
        let mut buf = [0u8; 512];
        let n = s.recv(&mut buf)?;
        // "<name> <peer>" (e2e's UDP server): the name.
        Ok(String::from_utf8_lossy(&buf[..n]).split_whitespace().next().unwrap_or("").to_owned())
    };
    match udp() {
        Ok(name) => Measured::Answered(name),
        Err(e) => outcome(e),
    }
}

/// Everything the test runs on. Fields drop in declaration order: servers, links, maps,
/// programs, and the namespaces last.
struct Harness {
    _servers: Servers,
    _links: Vec<aya::programs::links::FdLink>,
    evidence: Evidence,
    dataplane: EbpfDataplane,
    _loaded: Vec<flowgate_ebpf::Loaded>,
    node: Netns,
    pods: Vec<Netns>,
    /// The port each pod's host-side interface is bound to.
    bound: Vec<Option<PortId>>,
    /// The programs attached to every host-side interface, for the report.
    attached: Vec<&'static str>,
}

impl Harness {
    fn new(tcp_ports: &BTreeSet<u16>, udp_ports: &BTreeSet<u16>) -> Harness {
        let pods: Vec<(&str, &str)> = PODS.iter().map(|(_, ip, host_if)| (*ip, *host_if)).collect();
        let (node, pod_ns) = e2e::build_node_with_pods(GATEWAY, &pods);
        node.ip(&["addr", "add", &format!("{NODE_IP}/32"), "dev", "lo"]).unwrap();

        let mut loaded = flowgate_ebpf::load_all(&[objects::UPLINK, objects::ENDPOINT], None, &[]).unwrap();
        let dataplane = EbpfDataplane::new(KernelMaps::take(&mut loaded[0].ebpf).unwrap());
        // The same (shared) maps through the endpoint object's handles.
        let evidence = Evidence::take(&mut loaded[1]);
        // The endpoint program on every pod's host-side interface, as the agent attaches it (and
        // a to-endpoint program too, should the object have one).
        let mut attached = vec!["fg_from_endpoint (TCX ingress)"];
        let to_endpoint = loaded[1].ebpf.program("fg_to_endpoint").is_some();
        if to_endpoint {
            attached.push("fg_to_endpoint (TCX egress)");
        }
        let mut links = Vec::new();
        node.run(|| {
            for (_, _, host_if) in PODS {
                links.push(loaded[1].attach_tcx("fg_from_endpoint", host_if, Direction::Ingress).unwrap());
                if to_endpoint {
                    links.push(loaded[1].attach_tcx("fg_to_endpoint", host_if, Direction::Egress).unwrap());
                }
            }
        })
        .unwrap();

        let mut servers = Servers::default();
        for ((name, _, _), pod) in PODS.iter().zip(&pod_ns) {
            for &port in tcp_ports {
                let listener = pod
                    .run(|| TcpListener::bind(("0.0.0.0", port)))
                    .unwrap()
                    .unwrap_or_else(|e| panic!("{name}: TCP server on {port}: {e}"));
                spawn_tcp_server(&mut servers, name, listener);
            }
            for &port in udp_ports {
                let udp = pod
                    .run(|| UdpSocket::bind(("0.0.0.0", port)))
                    .unwrap()
                    .unwrap_or_else(|e| panic!("{name}: UDP server on {port}: {e}"));
                e2e::spawn_udp_server(&mut servers, name, udp);
            }
        }
        let bound = vec![None; PODS.len()];
        Harness {
            _servers: servers,
            _links: links,
            evidence,
            dataplane,
            _loaded: loaded,
            node,
            pods: pod_ns,
            bound,
            attached,
        }
    }

    /// Binds every pod's host-side interface to its endpoint port in `policy` (again when the
    /// number changed). Errs naming a pod that is not an endpoint of the policy.
    fn bind(&mut self, policy: &SwitchPolicy) -> Result<(), String> {
        for (i, ((name, ip, host_if), pod)) in PODS.iter().zip(&self.pods).enumerate() {
            let port = policy.endpoint_for(ip.parse().unwrap()).ok_or_else(|| {
                format!(
                    "pod {name} ({ip}) is not an endpoint of the compiled policy (the file must hold the nine pods)"
                )
            })?;
            if self.bound[i] != Some(port) {
                let ifindex = self.node.ifindex(host_if).unwrap();
                self.dataplane.bind_endpoint(ifindex, port, Some(pod.mac("eth0").unwrap())).unwrap();
                self.bound[i] = Some(port);
            }
        }
        Ok(())
    }

    fn source_ns(&self, source: Source) -> &Netns {
        match source {
            Source::Pod(i) => &self.pods[i],
            Source::Node => &self.node,
        }
    }
}

/// A TCP server that sends "<name>\n" on every connection and closes it.
fn spawn_tcp_server(servers: &mut Servers, name: &'static str, listener: TcpListener) {
    listener.set_nonblocking(true).unwrap();
    let stop = servers.stop.clone();
    servers.threads.push(std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut s, _)) => {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_write_timeout(Some(GREETING_TIMEOUT));
                    let _ = s.write_all(format!("{name}\n").as_bytes());
                }
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    }));
}

/// One probe to measure.
struct Job {
    index: usize,
    source: Source,
    to: SocketAddrV4,
    proto: Proto,
    sport: u16,
    /// The model's verdict and explanation.
    model: flowgate_switch::Trace,
    /// The pods that may answer when allowed (the destination, or the candidate backends).
    answerers: Vec<&'static str>,
    measured: Measured,
    retried: bool,
}

/// Hands out source ports, each once.
struct SourcePorts(u16);

impl SourcePorts {
    fn next(&mut self) -> u16 {
        let p = self.0;
        assert!(SOURCE_PORTS.contains(&p), "more connection attempts than source ports ({SOURCE_PORTS:?})");
        self.0 += 1;
        p
    }
}

#[derive(Default)]
struct Report {
    files: usize,
    probes: usize,
    measured: usize,
    /// Connection attempts that must pass an endpoint program (from a pod, not to itself).
    through_programs: u64,
    skipped_sctp: usize,
    retried: Vec<String>,
    mismatches: Vec<String>,
    /// Probes denied both ways, but one way refused and the other silent.
    deny_kinds: Vec<String>,
    /// Probes where the file's expectation is not the model's (the scenario test's business).
    file_disagrees: Vec<String>,
}

fn verdict_name(v: Verdict) -> &'static str {
    match v {
        Verdict::Allow => "allow",
        Verdict::Drop => "drop",
        Verdict::Reject => "reject",
    }
}

/// Measures `jobs` concurrently, `CHUNK` at a time.
fn measure_all<'a>(h: &Harness, jobs: impl Iterator<Item = &'a mut Job>, at_once: usize, timeout: Duration) {
    let mut jobs = jobs.peekable();
    while jobs.peek().is_some() {
        std::thread::scope(|scope| {
            for job in jobs.by_ref().take(at_once) {
                let ns = h.source_ns(job.source);
                scope.spawn(move || {
                    job.measured = ns.run(|| attempt(job.proto, job.sport, job.to, timeout)).expect("enter namespace");
                });
            }
        });
    }
}

fn run_file(h: &mut Harness, sc: &Scenario, model: &mut Option<Model>, ports: &mut SourcePorts, r: &mut Report) {
    let started = Instant::now();
    let file = &sc.name;
    r.files += 1;
    let state = match flowgate_cluster::load_str(Path::new(file), &sc.manifests) {
        Ok(l) => l.state,
        Err(e) => return r.mismatches.push(format!("{file}: the manifests do not load: {e}")),
    };
    // Compile: incrementally after the first file (for the same node).
    let compiled = match model.as_mut().filter(|m| m.node == sc.node) {
        Some(m) => {
            let c = changes(&m.state, &state);
            let how = describe(&c, &m.state, &state);
            let delta = m.compiler.update(&state, &c);
            m.state = state.clone();
            delta.map(|d| (d, how))
        }
        None => {
            let mut compiler = Compiler::new(sc.node.clone());
            let delta = compiler.compile_full(&state);
            *model = Some(Model { node: sc.node.clone(), compiler, state: state.clone() });
            delta.map(|d| (d, "full compile".to_owned()))
        }
    };
    let (delta, how) = match compiled {
        Ok(x) => x,
        Err(e) => return r.mismatches.push(format!("{file}: does not compile: {e}")),
    };
    let m = model.as_ref().unwrap();
    let policy = m.compiler.policy().expect("compiled");
    if let Err(e) = h.dataplane.apply(policy, &delta) {
        return r.mismatches.push(format!("{file}: the eBPF backend did not apply the {how}: {e}"));
    }
    if let Err(e) = h.bind(policy) {
        return r.mismatches.push(format!("{file}: {e}"));
    }
    // The same state compiled from scratch: the incremental update must agree with it.
    let full = match flowgate_compiler::compile(&state, sc.node.as_deref()) {
        Ok(c) => c.policy,
        Err(e) => return r.mismatches.push(format!("{file}: a full compile fails: {e}")),
    };

    let pod_of = |ip: IpAddr| PODS.iter().position(|p| p.1.parse::<IpAddr>().ok() == Some(ip));
    let mut jobs: Vec<Job> = Vec::new();
    let mut skipped = 0;
    for (index, p) in sc.probes.iter().enumerate() {
        r.probes += 1;
        let what = format!("{file}: probe {index} {:?} ({} -> {})", p.name, p.from, p.to);
        let (src, to, proto) = match parse_probe(&p.from, &p.to) {
            Ok(x) => x,
            Err(e) => {
                r.mismatches.push(format!("{what}: cannot be replayed: {e}"));
                continue;
            }
        };
        if proto == Proto::SCTP {
            skipped += 1;
            continue;
        }
        let source = match pod_of(IpAddr::V4(src)) {
            Some(i) => Source::Pod(i),
            None if src.to_string() == NODE_IP => Source::Node,
            None => {
                r.mismatches
                    .push(format!("{what}: cannot be replayed: the source is neither one of the pods nor the node"));
                continue;
            }
        };
        let sport = ports.next();
        let key = FlowKey::new(SocketAddr::new(src.into(), sport), SocketAddr::V4(to), proto);
        let trace = flowgate_switch::trace(policy, &key);
        let from_scratch = flowgate_switch::trace(&full, &key);
        if from_scratch.verdict != trace.verdict {
            r.mismatches.push(format!(
                "{what}: the incrementally updated policy says {}, a full compile of the same state says {}",
                verdict_name(trace.verdict),
                verdict_name(from_scratch.verdict)
            ));
        }
        if let Some(v) = &p.verdict {
            if !v.eq_ignore_ascii_case(verdict_name(trace.verdict)) {
                r.file_disagrees
                    .push(format!("{what}: the file expects {v}, the model says {}", verdict_name(trace.verdict)));
            }
        }
        let mut answerers: Vec<&'static str> = Vec::new();
        for (name, ip, _) in PODS {
            let ip: IpAddr = ip.parse().unwrap();
            if ip == IpAddr::V4(*to.ip())
                || trace.dnat.iter().any(|d| d.parse::<SocketAddr>().map(|s| s.ip()) == Ok(ip))
            {
                answerers.push(name);
            }
        }
        jobs.push(Job {
            index,
            source,
            to,
            proto,
            sport,
            model: trace,
            answerers,
            measured: Measured::Silent,
            retried: false,
        });
    }
    r.skipped_sctp += skipped;

    measure_all(h, jobs.iter_mut(), CHUNK, ATTEMPT_TIMEOUT);
    // A probe the model allows that got no answer is measured again, fewer at once, with more time
    // (and a new source port): a loaded machine may be slow, a dropping policy is not.
    let mut again: Vec<&mut Job> = jobs
        .iter_mut()
        .filter(|j| j.model.verdict == Verdict::Allow && matches!(j.measured, Measured::Silent | Measured::Failed(_)))
        .collect();
    let firsts: Vec<Measured> = again.iter().map(|j| j.measured.clone()).collect();
    for job in again.iter_mut() {
        job.sport = ports.next();
        job.retried = true;
    }
    measure_all(h, again.iter_mut().map(|j| &mut **j), RETRY_AT_ONCE, RETRY_TIMEOUT);
    for (job, first) in again.iter().zip(firsts) {
        let p = &sc.probes[job.index];
        r.retried.push(format!(
            "{file}: probe {} ({} -> {}): first {first}, again (timeout {RETRY_TIMEOUT:?}): {}",
            job.index, p.from, p.to, job.measured
        ));
    }

    let mut file_mismatches = 0;
    for job in &jobs {
        r.measured += 1;
        if let Source::Pod(i) = job.source {
            if PODS[i].1.parse::<Ipv4Addr>().ok() != Some(*job.to.ip()) {
                r.through_programs += 1 + u64::from(job.retried);
            }
        }
        let p = &sc.probes[job.index];
        let allowed = job.model.verdict == Verdict::Allow;
        let ok = match &job.measured {
            Measured::Answered(name) => allowed && job.answerers.contains(&name.as_str()),
            _ => !allowed,
        };
        if !ok {
            file_mismatches += 1;
            let proto = if job.proto == Proto::TCP { "tcp" } else { "udp" };
            let mut line = format!(
                "{file}: probe {} {:?}: {} -> {}/{proto} (source port {}): model {}{}, kernel {}",
                job.index,
                p.name,
                p.from,
                job.to,
                job.sport,
                verdict_name(job.model.verdict),
                job.model.reason.map(|r| format!(" ({r:?})")).unwrap_or_default(),
                job.measured,
            );
            if job.retried {
                line.push_str(" (measured twice)");
            }
            if allowed && job.answerers.is_empty() {
                line.push_str(" (no pod of this test has the destination address: nothing here can answer)");
            } else if allowed {
                line.push_str(&format!(" (want an answer from {})", job.answerers.join(" or ")));
            }
            if r.mismatches.len() < 20 {
                line.push_str(&format!("\n      model steps: {}", job.model.steps.join(" | ")));
            }
            r.mismatches.push(line);
        } else if !allowed {
            let kernel_refused = job.measured == Measured::Refused;
            let model_rejects = job.model.verdict == Verdict::Reject;
            if kernel_refused != model_rejects {
                r.deny_kinds.push(format!(
                    "{file}: probe {} ({} -> {}): model {}, kernel {}",
                    job.index,
                    p.from,
                    p.to,
                    verdict_name(job.model.verdict),
                    job.measured
                ));
            }
        }
    }
    eprintln!(
        "{file}: {how}; {} probes measured ({} allowed by the model), {skipped} SCTP skipped, {file_mismatches} mismatches, {:?}",
        jobs.len(),
        jobs.iter().filter(|j| j.model.verdict == Verdict::Allow).count(),
        started.elapsed()
    );
}

/// Whether this kernel makes SCTP sockets, for the report.
fn sctp_sockets(ns: &Netns) -> String {
    #[allow(unsafe_code)]
    // SAFETY: socket() takes no pointers; a descriptor it returns is owned and closed at once.
    let made = ns
        .run(|| {
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, libc::IPPROTO_SCTP) };
            if fd < 0 {
                Err(io::Error::last_os_error())
            } else {
                // SAFETY: `fd` is a new descriptor that nothing else owns.
                drop(unsafe { OwnedFd::from_raw_fd(fd) });
                Ok(())
            }
        })
        .unwrap();
    match made {
        Ok(()) => "this kernel does make SCTP sockets now: replaying SCTP probes is left to do".to_owned(),
        Err(e) => format!("socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP): {e}"),
    }
}

#[test]
fn network_policy_truth_tables_hold_with_real_traffic() {
    if !flowgate_ebpf::privileged_test("network_policy_truth_tables_hold_with_real_traffic") {
        return;
    }
    let started = Instant::now();
    let dir = scenario_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.contains("netpol-xyz") && name.ends_with(".yaml")
        })
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no *netpol-xyz*.yaml scenario file under {}: nothing to replay (the NetworkPolicy truth tables are missing)",
        dir.display()
    );
    let scenarios: Vec<Scenario> = files.iter().map(|f| load_scenario(f)).collect();

    // Every pod serves 80 and 81 and whatever else a probe names, over TCP and UDP.
    let mut tcp_ports: BTreeSet<u16> = PORTS.into();
    let mut udp_ports: BTreeSet<u16> = PORTS.into();
    for p in scenarios.iter().flat_map(|s| &s.probes) {
        match parse_probe(&p.from, &p.to) {
            Ok((_, to, Proto::TCP)) => tcp_ports.insert(to.port()),
            Ok((_, to, Proto::UDP)) => udp_ports.insert(to.port()),
            _ => false,
        };
    }
    let mut h = Harness::new(&tcp_ports, &udp_ports);
    eprintln!(
        "setup: {} pods serving TCP {tcp_ports:?} and UDP {udp_ports:?}; {} on every host-side interface; {:?}",
        PODS.len(),
        h.attached.join(" and "),
        started.elapsed()
    );

    let mut model: Option<Model> = None;
    let mut ports = SourcePorts(*SOURCE_PORTS.start());
    let mut r = Report::default();
    for sc in &scenarios {
        run_file(&mut h, sc, &mut model, &mut ports, &mut r);
    }

    if r.skipped_sctp > 0 {
        eprintln!(
            "{} SCTP probes skipped: they cannot be replayed as real connections ({})",
            r.skipped_sctp,
            sctp_sockets(&h.node)
        );
    }
    if !r.retried.is_empty() {
        eprintln!(
            "{} probes allowed by the model measured a second time:\n  {}",
            r.retried.len(),
            r.retried.join("\n  ")
        );
    }
    if !r.deny_kinds.is_empty() {
        eprintln!(
            "{} probes denied by both, but refused by one and silently dropped by the other:\n  {}",
            r.deny_kinds.len(),
            r.deny_kinds.join("\n  ")
        );
    }
    if !r.file_disagrees.is_empty() {
        eprintln!(
            "{} probes whose file expectation is not the model's (the scenario test reports these): first {:?}",
            r.file_disagrees.len(),
            r.file_disagrees.iter().take(3).collect::<Vec<_>>()
        );
    }
    let counters = h.evidence.counters();
    eprintln!("kernel counters: {counters:?}");
    // Every connection attempt from a pod to another address walked the switch in the kernel: a
    // first packet each (the programs are on the path, not beside it).
    let first_packets = counters.get("first-packet").copied().unwrap_or(0);
    if first_packets < r.through_programs {
        r.mismatches.push(format!(
            "the endpoint programs counted {first_packets} first packets for {} connection attempts from the pods",
            r.through_programs
        ));
    }
    eprintln!(
        "{} files, {} probes: {} measured with real traffic, {} SCTP skipped, {} mismatches; {:?}",
        r.files,
        r.probes,
        r.measured,
        r.skipped_sctp,
        r.mismatches.len(),
        started.elapsed()
    );
    assert!(
        r.mismatches.is_empty(),
        "{} mismatches between the model and the kernel:\n{}\n\n{}",
        r.mismatches.len(),
        r.mismatches.join("\n"),
        h.evidence.report()
    );
}

/// What happens to an established connection that a new policy denies (as docs/network-policy.md
/// says): the connection's next packet from the side that opened it is re-checked against the new
/// policy (its flow was cached under an older generation) and dropped, so the connection stalls;
/// when the policy is lifted again before TCP gives up, a retransmission passes and the same
/// connection carries on, nothing lost — also through a Service that masquerades (the connection
/// keeps its backend and its masquerade port).
///
/// Pods x/a (server, echo on TCP 7000) and y/a (client) of the x/y/z model; the policy is
/// `80-netpol-xyz-default-deny-ingress.yaml`'s (every pod of x isolated for ingress), added and
/// removed as incremental updates. Second round: the client goes through ClusterIP 10.96.0.50
/// with kube-proxy's masqueradeAll.
#[test]
fn an_established_connection_a_new_policy_denies_stalls_and_resumes_when_lifted() {
    if !flowgate_ebpf::privileged_test("an_established_connection_a_new_policy_denies_stalls_and_resumes_when_lifted") {
        return;
    }
    let sc = load_scenario(&scenario_dir().join("80-netpol-xyz-default-deny-ingress.yaml"));
    let service = r#"
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: x}
spec:
  clusterIP: 10.96.0.50
  ports: [{name: echo, protocol: TCP, port: 7000, targetPort: 7000}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: echo-1, namespace: x, labels: {kubernetes.io/service-name: echo}}
addressType: IPv4
endpoints: [{addresses: [10.0.1.11], nodeName: node-a, conditions: {ready: true}}]
ports: [{name: echo, port: 7000, protocol: TCP}]
"#;
    let mut denied =
        flowgate_cluster::load_str(Path::new(&sc.name), &format!("{}{service}", sc.manifests)).unwrap().state;
    assert!(!denied.network_policies.is_empty(), "{}: no NetworkPolicy", sc.name);
    denied.kube_proxy.as_mut().expect("a KubeProxyConfiguration").nftables.masquerade_all = true;
    let mut open = denied.clone();
    open.network_policies.clear();

    let mut h = Harness::new(&BTreeSet::new(), &BTreeSet::new());
    let listener = h.pods[0].run(|| TcpListener::bind("0.0.0.0:7000")).unwrap().unwrap();
    e2e::spawn_echo_server(&mut h._servers, "x/a", listener);
    // The switch masquerades on the pod's interface, before routing: the node accepts packets
    // from its own address there (as the agent sets up its node).
    e2e::sysctl(&h.node, "net/ipv4/conf/all/accept_local", "1");
    for (_, _, host_if) in PODS {
        e2e::node_accepts_local(&h.node, host_if);
    }
    let mut compiler = Compiler::new(sc.node.clone());
    let delta = compiler.compile_full(&open).unwrap();
    h.dataplane.apply(compiler.policy().unwrap(), &delta).unwrap();
    h.bind(compiler.policy().unwrap()).unwrap();

    for (via, to, seen_as) in
        [("pod address", "10.0.1.11:7000", "10.0.1.21:"), ("masquerading Service", "10.96.0.50:7000", "192.168.0.2:")]
    {
        let server: SocketAddr = to.parse().unwrap();
        let mut s = h.pods[3].run(|| TcpStream::connect_timeout(&server, Duration::from_secs(2))).unwrap().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let greeting = e2e::read_line(&mut s).unwrap();
        assert!(greeting.starts_with(&format!("x/a {seen_as}")), "{via}: greeting {greeting:?}");
        let echo = |s: &mut TcpStream, msg: &str, wait: Duration| -> io::Result<String> {
            s.set_read_timeout(Some(wait))?;
            s.write_all(msg.as_bytes())?;
            let mut buf = vec![0u8; msg.len()];
            s.read_exact(&mut buf)?;
            Ok(String::from_utf8_lossy(&buf).into_owned())
        };
        assert_eq!(echo(&mut s, "one\n", Duration::from_secs(2)).unwrap(), "one\n", "{via}: before the policy");

        // The policy arrives: the client's next segment is re-checked and dropped.
        let policy_denied = |h: &Harness| h.evidence.counters().get("policy-denied").copied().unwrap_or(0);
        let before = policy_denied(&h);
        let delta = compiler.update(&denied, &changes(&open, &denied)).unwrap();
        h.dataplane.apply(compiler.policy().unwrap(), &delta).unwrap();
        let key = FlowKey::new("10.0.1.21:40000".parse().unwrap(), server, Proto::TCP);
        assert_eq!(flowgate_switch::trace(compiler.policy().unwrap(), &key).verdict, Verdict::Drop, "{via}");
        match echo(&mut s, "two\n", Duration::from_millis(1500)) {
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            other => panic!(
                "{via}: the established connection went on under a policy that denies it: {other:?}\n{}",
                h.evidence.report()
            ),
        }
        let dropped = policy_denied(&h) - before;
        assert!(dropped >= 1, "{via}: no packet was dropped as policy-denied");

        // The policy goes: TCP's retransmission passes and the same connection carries on.
        let delta = compiler.update(&open, &changes(&denied, &open)).unwrap();
        h.dataplane.apply(compiler.policy().unwrap(), &delta).unwrap();
        let lifted = Instant::now();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf)
            .unwrap_or_else(|e| panic!("{via}: the stalled connection did not resume: {e}\n{}", h.evidence.report()));
        assert_eq!(&buf, b"two\n");
        eprintln!(
            "{via}: denied: {dropped} segments dropped as policy-denied; lifted: resumed after {:?}",
            lifted.elapsed()
        );
        assert_eq!(echo(&mut s, "three\n", Duration::from_secs(2)).unwrap(), "three\n", "{via}: after the policy");
    }
}

/// One ICMP echo request from inside `ns` to `dst`; whether a reply came within `wait`.
fn ping(ns: &Netns, dst: Ipv4Addr, wait: Duration) -> bool {
    ns.run(|| {
        #[allow(unsafe_code)]
        // SAFETY: plain socket calls on a descriptor this function owns; buffers outlive the calls.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP);
            assert!(fd >= 0, "raw socket: {}", io::Error::last_os_error());
            let fd = OwnedFd::from_raw_fd(fd);
            let ident = (std::process::id() & 0xffff) as u16;
            let mut msg = [8u8, 0, 0, 0, (ident >> 8) as u8, ident as u8, 0, 1, b'f', b'g', b'a', b't', b'e', 0, 0, 0];
            let sum = msg.chunks(2).fold(0u32, |a, c| a + u32::from(u16::from_be_bytes([c[0], c[1]])));
            let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
            msg[2..4].copy_from_slice(&sum.to_be_bytes());
            let to = sockaddr(SocketAddrV4::new(dst, 0));
            let sent = libc::sendto(
                fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&to as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            );
            assert_eq!(sent, msg.len() as isize, "sendto: {}", io::Error::last_os_error());
            let deadline = Instant::now() + wait;
            let mut buf = [0u8; 1500];
            while Instant::now() < deadline {
                let left = deadline - Instant::now();
                let tv = libc::timeval { tv_sec: left.as_secs() as _, tv_usec: left.subsec_micros().max(1) as _ };
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&tv as *const libc::timeval).cast(),
                    std::mem::size_of::<libc::timeval>() as u32,
                );
                let n = libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0);
                if n < 28 {
                    continue;
                }
                // An echo reply (type 0) to our identifier, from `dst`.
                let ihl = usize::from(buf[0] & 0x0f) * 4;
                let from = Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]);
                if from == dst && buf[ihl] == 0 && buf[ihl + 4..ihl + 6] == ident.to_be_bytes() {
                    return true;
                }
            }
            false
        }
    })
    .unwrap()
}

/// ICMP under NetworkPolicy: an echo request is judged by the endpoints' ACLs as protocol ICMP with
/// no port — a pod isolated for ingress answers pings only from peers a rule without ports allows.
/// Pods y/a (client) and x/a (server) of the x/y/z model, under no policy, the default deny of
/// `80-netpol-xyz-default-deny-ingress.yaml`, and the allow-all of `83-netpol-xyz-allow-all-ingress.yaml`;
/// the model (`flowgate trace` with `/icmp`) says the same.
#[test]
fn pings_follow_network_policy() {
    if !flowgate_ebpf::privileged_test("pings_follow_network_policy") {
        return;
    }
    let mut h = Harness::new(&BTreeSet::new(), &BTreeSet::new());
    let mut compiler: Option<Compiler> = None;
    let mut previous: Option<ClusterState> = None;
    let mut failures = Vec::new();
    let open = {
        let sc = load_scenario(&scenario_dir().join("80-netpol-xyz-default-deny-ingress.yaml"));
        let mut s = flowgate_cluster::load_str(Path::new(&sc.name), &sc.manifests).unwrap().state;
        s.network_policies.clear();
        (sc.node, s)
    };
    let steps: Vec<(&str, ClusterState, bool)> = vec![
        ("no policy", open.1.clone(), true),
        ("80-netpol-xyz-default-deny-ingress.yaml", ClusterState::default(), false),
        ("83-netpol-xyz-allow-all-ingress.yaml", ClusterState::default(), true),
    ];
    for (what, state, want) in steps {
        let state = if what.ends_with(".yaml") {
            let sc = load_scenario(&scenario_dir().join(what));
            flowgate_cluster::load_str(Path::new(&sc.name), &sc.manifests).unwrap().state
        } else {
            state
        };
        let c = compiler.get_or_insert_with(|| Compiler::new(open.0.clone()));
        let delta = match &previous {
            None => c.compile_full(&state).unwrap(),
            Some(old) => c.update(&state, &changes(old, &state)).unwrap(),
        };
        h.dataplane.apply(c.policy().unwrap(), &delta).unwrap();
        h.bind(c.policy().unwrap()).unwrap();
        let key = FlowKey::new("10.0.1.21:0".parse().unwrap(), "10.0.1.11:0".parse().unwrap(), Proto::ICMP);
        let model = flowgate_switch::trace(c.policy().unwrap(), &key).verdict == Verdict::Allow;
        let got = ping(&h.pods[3], Ipv4Addr::new(10, 0, 1, 11), Duration::from_millis(if want { 2000 } else { 600 }));
        eprintln!("{what}: y/a pings x/a: model {model}, kernel {got}, expected {want}");
        if model != want || got != want {
            failures.push(format!("{what}: y/a -> x/a ping: expected {want}, model {model}, kernel {got}"));
        }
        previous = Some(state);
    }
    assert!(failures.is_empty(), "{failures:#?}\n{}", h.evidence.report());
}
