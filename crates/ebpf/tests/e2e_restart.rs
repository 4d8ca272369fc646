//! End to end: `kill -9` of the agent during a running TCP stream, then a restart, loses no
//! connection (issue 4, "restarts lose nothing").
//!
//! The real agent binary, `flowgated --dataplane ebpf`, runs inside the "node" namespace (built by
//! `e2e/mod.rs`: node, client behind the uplink, two pods) with its maps and links pinned in a
//! private bpffs of the test's. It attaches the uplink program itself; the pods' host-side
//! programs are attached by the test (the CNI plugin's job, later), loaded with the agent's pinned
//! maps and their links pinned beside the agent's. A client outside opens a TCP connection to a
//! NodePort (DNAT to a pod and masquerade to the node address, both in the kernel) and streams
//! 1 KiB chunks every 10 ms, each echoed by the pod and checked; meanwhile the agent is killed
//! with SIGKILL, the stream runs on without any agent, a new agent starts with the same settings,
//! adopts the pinned maps and links and syncs, and the stream runs on again. Every chunk must come
//! back intact and in order, the connection must never reset, and new connections must work
//! without an agent and after the restart. At the end the agent is stopped, every pinned link is
//! detached (the hooks are then checked empty) and the pins and bpffs removed, the namespaces
//! deleted.
//!
//! `flowgated` is `target/debug/flowgated` (the target directory from `CARGO_TARGET_DIR`, else the
//! workspace's `target`); when it is missing or older than the sources it is built with
//! `cargo build -j2 -p flowgate-cli`, and the test fails with the command to run if that fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod e2e;

use std::io::{self, Read as _, Write as _};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use aya::maps::{Array, MapData};
use e2e::{sock, Evidence, Servers, Topology, NODE_IP, PODS, UPLINK};
use flowgate_ebpf::bpffs::TempBpffs;
use flowgate_ebpf::netns::Netns;
use flowgate_ebpf::{loader, maps, objects, Direction};

const NODEPORT: u16 = 30080;
/// The stream: one chunk of this size every `STREAM_PERIOD`, echoed and checked.
const CHUNK: usize = 1024;
const STREAM_PERIOD: Duration = Duration::from_millis(10);
/// How long each phase streams: with the first agent, with none, with the second.
const PHASE: Duration = Duration::from_secs(1);
/// An echo later than this fails the stream (a stall that long is a lost connection in practice).
const ECHO_TIMEOUT: Duration = Duration::from_secs(3);
/// How long an agent may take from start to its first successful sync.
const AGENT_READY: Duration = Duration::from_secs(10);

/// The whole cluster of this test.
fn manifests() -> String {
    format!("{}{SERVICES}", e2e::NODE_AND_PODS)
}

/// The Services of this test, after the shared node and pods ([`e2e::NODE_AND_PODS`]).
const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  selector: {app: web}
  clusterIP: 10.96.0.10
  ports:
  - {name: echo, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30080}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-e2e01
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
endpoints:
- addresses: [10.244.1.2]
  conditions: {ready: true}
  nodeName: node
- addresses: [10.244.1.3]
  conditions: {ready: true}
  nodeName: node
ports:
- {name: echo, port: 8080, protocol: TCP}
"#;

// ---- the agent binary --------------------------------------------------------------------------

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The target directory: `CARGO_TARGET_DIR` (relative to the workspace root when relative), else
/// the workspace's `target`.
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// The newest modification time of the files the agent is built from.
fn newest_source() -> Option<SystemTime> {
    fn walk(dir: &Path, newest: &mut Option<SystemTime>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, newest);
            } else if let Ok(m) = entry.metadata().and_then(|m| m.modified()) {
                *newest = (*newest).max(Some(m));
            }
        }
    }
    let root = workspace_root();
    let mut newest = None;
    for dir in ["bpf", "crates/agent/src", "crates/cli/src", "crates/ebpf/src", "crates/ebpf/build.rs"] {
        let path = root.join(dir);
        if path.is_file() {
            newest = newest.max(path.metadata().and_then(|m| m.modified()).ok());
        } else {
            walk(&path, &mut newest);
        }
    }
    for krate in ["cluster", "compiler", "switch", "dataplane", "wire"] {
        walk(&root.join("crates").join(krate).join("src"), &mut newest);
    }
    newest
}

/// `target/debug/flowgated`, built first when missing or older than its sources.
fn flowgated() -> PathBuf {
    let bin = target_dir().join("debug/flowgated");
    let modified = bin.metadata().and_then(|m| m.modified()).ok();
    let stale = match (modified, newest_source()) {
        (None, _) => Some("missing"),
        (Some(bin), Some(src)) if src > bin => Some("older than its sources"),
        _ => None,
    };
    let Some(why) = stale else { return bin };
    let how = "cargo build -j2 -p flowgate-cli";
    eprintln!("{} is {why}: running `{how}`", bin.display());
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let t = Instant::now();
    let mut child = Command::new(cargo)
        .args(["build", "-j2", "-p", "flowgate-cli"])
        .current_dir(workspace_root())
        .env("CARGO_TARGET_DIR", target_dir())
        .spawn()
        .unwrap_or_else(|e| panic!("{} is {why} and `{how}` could not run: {e}", bin.display()));
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if t.elapsed() > Duration::from_secs(900) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{} is {why} and `{how}` did not finish in 15 minutes: run it first", bin.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{} is {why} and `{how}` failed ({status}): run it and fix the build", bin.display());
    assert!(bin.exists(), "`{how}` succeeded but {} does not exist", bin.display());
    eprintln!("built {} in {:?}", bin.display(), t.elapsed());
    bin
}

// ---- the agent process -------------------------------------------------------------------------

/// Where one test keeps its files: manifests, the API socket, logs. Removed on drop.
struct Dirs {
    root: PathBuf,
}

impl Dirs {
    fn new() -> Dirs {
        let root = std::env::temp_dir().join(format!("flowgate-e2e-restart-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("manifests")).unwrap();
        std::fs::write(root.join("manifests/cluster.yaml"), manifests()).unwrap();
        Dirs { root }
    }
    fn manifests(&self) -> PathBuf {
        self.root.join("manifests")
    }
    fn socket(&self) -> PathBuf {
        self.root.join("run/api.sock")
    }
}

impl Drop for Dirs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// A `flowgated` running in the node namespace; killed on drop if still running.
struct Agent {
    child: Child,
    log: PathBuf,
    started: Instant,
}

impl Agent {
    fn start(bin: &Path, node: &Netns, dirs: &Dirs, bpffs: &Path, n: usize) -> Agent {
        let log = dirs.root.join(format!("agent-{n}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let mut command = node.command(bin.to_str().unwrap());
        command
            .arg("--manifests")
            .arg(dirs.manifests())
            .args(["--node", "node"])
            .arg("--socket")
            .arg(dirs.socket())
            .arg("--state-dir")
            .arg(dirs.root.join("state"))
            .args(["--healthz-bind-address", "", "--metrics-bind-address", ""])
            .args(["--dataplane", "ebpf", "--uplink", UPLINK])
            .arg("--bpffs")
            .arg(bpffs)
            .args(["--min-sync-period", "20ms"])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let started = Instant::now();
        let child = command.spawn().unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        Agent { child, log, started }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(25)..].join("\n")
    }

    /// Waits for the first successful sync (the status says `sync.syncs >= 1`); fails when the
    /// agent exits or takes longer than `AGENT_READY`. Returns the time since the start.
    fn wait_synced(&mut self, socket: &Path) -> Result<Duration, String> {
        let mut last = String::from("no answer yet");
        while self.started.elapsed() < AGENT_READY {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Err(format!("the agent exited ({status}) before syncing:\n{}", self.log_tail()));
            }
            match agent_status(socket) {
                Ok(v) => {
                    let syncs = v["sync"]["syncs"].as_u64().unwrap_or(0);
                    if syncs >= 1 {
                        return Ok(self.started.elapsed());
                    }
                    last = format!("{v:?}");
                }
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(format!("the agent did not sync within {AGENT_READY:?} (last status: {last}):\n{}", self.log_tail()))
    }

    /// SIGKILL, reaped.
    fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then SIGKILL after 5 s; the exit status.
    fn stop(&mut self) -> std::process::ExitStatus {
        if let Some(status) = self.child.try_wait().unwrap() {
            return status;
        }
        #[allow(unsafe_code)]
        // SAFETY: kill(2) on our own child's pid (not reaped yet, so not reused); touches no memory.
        let _ = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        self.child.wait().unwrap()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `GET /v1/status` on the agent's unix socket (what `flowgate status` prints), parsed.
fn agent_status(socket: &Path) -> io::Result<serde_yaml::Value> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    s.write_all(b"GET /v1/status HTTP/1.1\r\nHost: flowgate\r\nConnection: close\r\n\r\n")?;
    let mut response = Vec::new();
    s.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("{what}: {text:?}"));
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| bad("no HTTP header"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(bad("not 200"));
    }
    let (Some(from), Some(to)) = (body.find('{'), body.rfind('}')) else { return Err(bad("no JSON body")) };
    serde_yaml::from_str(&body[from..=to]).map_err(|e| bad(&format!("invalid JSON ({e})")))
}

// ---- the stream ----------------------------------------------------------------------------------

/// What the streaming client saw.
#[derive(Debug, Default)]
struct StreamReport {
    /// The greeting: "<pod> <the client's address as the pod saw it>".
    greeting: String,
    /// The client's port.
    port: u16,
    /// Chunks sent and echoed back intact.
    chunks: u64,
    /// The first failure: when (since the stream started), after how many chunks, what.
    error: Option<(Duration, u64, String)>,
    /// The slowest echo, and when it was sent (since the stream started).
    max_rtt: (Duration, Duration),
    /// Echoes slower than 100 ms (stalls: retransmissions).
    slow: u64,
    /// How the connection ended: the client half-closed and read the rest to EOF.
    close: Option<String>,
}

struct Stream {
    stop: Arc<AtomicBool>,
    /// Chunks echoed so far.
    progress: Arc<AtomicU64>,
    started: Instant,
    thread: JoinHandle<StreamReport>,
}

/// Connects from `client` to `to` and streams on a thread until stopped.
fn start_stream(client: &Netns, to: std::net::SocketAddr) -> Stream {
    let mut s = client
        .run(|| TcpStream::connect_timeout(&to, e2e::CONNECT_TIMEOUT))
        .unwrap()
        .unwrap_or_else(|e| panic!("client -> {to}: the stream's connection failed: {e}"));
    s.set_read_timeout(Some(ECHO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(ECHO_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    let greeting = e2e::read_line(&mut s).unwrap_or_else(|e| panic!("client -> {to}: no greeting: {e}"));
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let thread = {
        let (stop, progress) = (stop.clone(), progress.clone());
        std::thread::spawn(move || {
            let port = s.local_addr().map(|a| a.port()).unwrap_or(0);
            let mut report = StreamReport { greeting, port, ..StreamReport::default() };
            let mut next = started;
            let mut back = vec![0u8; CHUNK];
            while !stop.load(Ordering::Relaxed) {
                let i = report.chunks;
                let data = e2e::chunk(i, CHUNK);
                let sent = Instant::now();
                let r = s.write_all(&data).and_then(|()| s.read_exact(&mut back));
                if let Err(e) = r {
                    report.error = Some((started.elapsed(), i, format!("chunk {i}: {:?}: {e}", e.kind())));
                    return report;
                }
                let rtt = sent.elapsed();
                if back != data {
                    let first = back.iter().zip(&data).position(|(a, b)| a != b).unwrap_or(0);
                    report.error =
                        Some((started.elapsed(), i, format!("chunk {i} came back corrupted from byte {first}")));
                    return report;
                }
                if rtt > report.max_rtt.0 {
                    report.max_rtt = (rtt, sent - started);
                }
                if rtt > Duration::from_millis(100) {
                    report.slow += 1;
                }
                report.chunks += 1;
                progress.store(report.chunks, Ordering::Relaxed);
                next += STREAM_PERIOD;
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                } else {
                    next = now;
                }
            }
            // End cleanly: half-close, the pod closes after echoing the rest (nothing).
            let end = s.shutdown(std::net::Shutdown::Write).and_then(|()| {
                let mut rest = Vec::new();
                s.read_to_end(&mut rest).map(|_| rest)
            });
            report.close = Some(match end {
                Ok(rest) if rest.is_empty() => "clean (FIN both ways)".to_owned(),
                Ok(rest) => format!("{} unexpected bytes before EOF", rest.len()),
                Err(e) => format!("error: {:?}: {e}", e.kind()),
            });
            report
        })
    };
    Stream { stop, progress, started, thread }
}

// ---- the harness -----------------------------------------------------------------------------

/// Detaches every link pinned in `dir` on drop (also on failure).
struct PinnedLinks {
    dir: PathBuf,
}

impl PinnedLinks {
    /// Detaches every link pinned here and removes the pins; their names.
    fn detach_all(&self) -> Vec<String> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            match loader::detach_pinned(&entry.path()) {
                Ok(_) => names.push(entry.file_name().to_string_lossy().into_owned()),
                Err(e) => eprintln!("detaching {}: {e}", entry.path().display()),
            }
        }
        names.sort();
        names
    }
}

impl Drop for PinnedLinks {
    fn drop(&mut self) {
        self.detach_all();
    }
}

/// Reads `fg_config` (the policy generation the agent last programmed).
fn generation(config: &Array<MapData, maps::Config>) -> u64 {
    config.get(&0, 0).map(|c| c.generation).unwrap_or(0)
}

/// The programs on every TCX hook of the node's uplink, its loopback (the agent's program for the
/// node's own traffic) and the pods' host-side interfaces: ("uplink0 ingress", [program ids]).
fn hook_programs(node: &Netns) -> std::collections::BTreeMap<String, Vec<u32>> {
    let mut out = std::collections::BTreeMap::new();
    for dev in [UPLINK, "lo"].into_iter().chain(PODS.iter().map(|p| p.2)) {
        for (direction, name) in [(Direction::Ingress, "ingress"), (Direction::Egress, "egress")] {
            let ids = node
                .run(|| loader::tcx_program_ids(dev, direction))
                .unwrap()
                .unwrap_or_else(|e| panic!("{dev} {name}: {e}"));
            out.insert(format!("{dev} {name}"), ids);
        }
    }
    out
}

/// New connections until both pods have answered (at least `min`, at most 24); each must see the
/// client as the node address (masqueraded). Failures are pushed to `failures`.
fn new_connections(what: &str, client: &Netns, min: usize, failures: &mut Vec<String>) {
    let t = Instant::now();
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    let mut errors = Vec::new();
    let mut attempts = 0;
    while attempts < 24 && (seen.len() < PODS.len() || attempts < min) && errors.len() < 3 {
        attempts += 1;
        match e2e::tcp_echo(client, sock(NODE_IP, NODEPORT), 16 * 1024) {
            Ok(greeting) => {
                let mut words = greeting.split_whitespace();
                let (pod, peer) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
                if !peer.starts_with(&format!("{NODE_IP}:")) {
                    failures.push(format!("{what}: {pod} saw the client as {peer}, want {NODE_IP} (masquerade)"));
                }
                *seen.entry(pod.to_owned()).or_default() += 1;
            }
            Err(e) => errors.push(format!("{:?}: {e}", e.kind())),
        }
    }
    if !errors.is_empty() {
        failures.push(format!("{what}: {} of {attempts} new connections failed: {errors:?}", errors.len()));
    }
    if seen.len() < min.min(PODS.len()) {
        failures.push(format!("{what}: after {attempts} new connections only {seen:?} answered"));
    }
    eprintln!("{what}: {attempts} new connections, answers {seen:?}, {:?}", t.elapsed());
}

#[test]
fn kill_9_of_the_agent_during_a_tcp_stream_then_restart_loses_no_connection() {
    if !flowgate_ebpf::privileged_test("kill_9_of_the_agent_during_a_tcp_stream_then_restart_loses_no_connection") {
        return;
    }
    let bin = flowgated();
    let started = Instant::now();
    let mut failures: Vec<String> = Vec::new();

    // Declared in reverse order of dropping: namespaces last, then the files and the bpffs (after
    // the links pinned in it are detached), the test's programs, the servers, the agents first.
    let topo: Topology = e2e::build_topology();
    let dirs = Dirs::new();
    let bpffs = TempBpffs::new().unwrap();
    // Outside /sys: `ip netns exec` gives the agent a mount namespace of its own (a copy of ours,
    // in which it remounts /sys), where this mount is still visible.
    let pin_root = bpffs.path().join("flowgate");
    let links = PinnedLinks { dir: pin_root.join("links") };
    let mut endpoint_obj: Option<flowgate_ebpf::Loaded> = None;
    let mut servers = Servers::default();
    for ((name, _, _), pod) in PODS.iter().zip(&topo.pods) {
        let listener = pod.run(|| std::net::TcpListener::bind("0.0.0.0:8080")).unwrap().unwrap();
        e2e::spawn_echo_server(&mut servers, name, listener);
    }

    // The first agent: it loads the programs, pins the maps, attaches the uplink program.
    let mut agent1 = Agent::start(&bin, &topo.node, &dirs, &pin_root, 1);
    let ready1 = agent1.wait_synced(&dirs.socket()).unwrap_or_else(|e| panic!("agent 1: {e}"));
    eprintln!("setup: namespaces and agent 1 (pid {}) synced after {ready1:?}", agent1.pid());
    // What `ip netns exec` started is the agent itself (it execs, no fork): SIGKILL reaches it.
    let exe = std::fs::read_link(format!("/proc/{}/exe", agent1.pid())).unwrap();
    assert!(exe.ends_with("flowgated"), "pid {} is {}, not flowgated", agent1.pid(), exe.display());

    // The pods' host-side programs, with the agent's pinned maps, links pinned beside its own.
    let maps_dir = pin_root.join("maps");
    let endpoint = endpoint_obj.insert(flowgate_ebpf::load(objects::ENDPOINT, Some(&maps_dir), &[]).unwrap());
    topo.node
        .run(|| {
            for (_, _, host_if) in PODS {
                let pin = links.dir.join(format!("endpoint-{host_if}-ingress"));
                endpoint.attach_pinned("fg_from_endpoint", host_if, Direction::Ingress, &pin).unwrap();
            }
        })
        .unwrap();
    let config: Array<MapData, maps::Config> = Array::try_from(endpoint.ebpf.take_map("fg_config").unwrap()).unwrap();
    let evidence = Evidence::take(endpoint);
    let generation1 = generation(&config);
    let hooks1 = hook_programs(&topo.node);

    // A new connection with the first agent, as a control.
    new_connections("agent 1: client -> NodePort", &topo.client, 2, &mut failures);

    // The stream, through kill -9, no agent, and a restart.
    let stream = start_stream(&topo.client, sock(NODE_IP, NODEPORT));
    std::thread::sleep(PHASE);
    let at_kill = stream.progress.load(Ordering::Relaxed);
    let kill_time = stream.started.elapsed();
    agent1.kill9();
    eprintln!("agent 1 killed with SIGKILL at {kill_time:?} into the stream, after {at_kill} chunks");
    if agent_status(&dirs.socket()).is_ok() {
        failures.push("the agent's socket still answers after kill -9".to_owned());
    }
    // Without any agent: the kernel keeps serving the stream and new connections.
    new_connections("no agent: client -> NodePort", &topo.client, 2, &mut failures);
    std::thread::sleep(PHASE.saturating_sub(stream.started.elapsed() - kill_time));
    let at_restart = stream.progress.load(Ordering::Relaxed);
    let restart_time = stream.started.elapsed();
    let mut agent2 = Agent::start(&bin, &topo.node, &dirs, &pin_root, 2);
    let ready2 = agent2.wait_synced(&dirs.socket()).unwrap_or_else(|e| {
        failures.push(format!("agent 2: {e}"));
        Duration::ZERO
    });
    let synced_time = stream.started.elapsed();
    eprintln!(
        "agent 2 (pid {}) started at {restart_time:?} into the stream (after {at_restart} chunks), synced after {ready2:?}",
        agent2.pid()
    );
    std::thread::sleep(PHASE);
    stream.stop.store(true, Ordering::Relaxed);
    let report = stream.thread.join().unwrap();
    eprintln!("stream: {report:?}");

    // The stream: every chunk back intact, no reset, through every phase, closed cleanly.
    if let Some((when, after, what)) = &report.error {
        failures.push(format!(
            "the stream failed {when:?} into it, after {after} chunks ({}): {what}",
            if *when < kill_time {
                "before the kill"
            } else if *when < restart_time {
                "after kill -9, with no agent"
            } else if *when < synced_time {
                "after agent 2 started, by the time the test saw it synced"
            } else {
                "after agent 2 synced"
            }
        ));
    }
    if report.error.is_none() {
        if report.close.as_deref() != Some("clean (FIN both ways)") {
            failures.push(format!("the stream did not end cleanly: {:?}", report.close));
        }
        let phases = [at_kill, at_restart - at_kill, report.chunks - at_restart];
        if phases.iter().any(|n| *n < 20) {
            failures.push(format!(
                "too few chunks in a phase (with agent 1, none, agent 2): {phases:?}; the stream did not run across the restart"
            ));
        }
    }
    let greeting_peer = report.greeting.split_whitespace().nth(1).unwrap_or("");
    if !greeting_peer.starts_with(&format!("{NODE_IP}:")) {
        failures.push(format!("the stream's pod saw the client as {greeting_peer:?}, want {NODE_IP} (masquerade)"));
    }

    // After the restart: new connections, the adopted state re-programmed (new generation), the
    // uplink hook switched to the new agent's program rather than stacked.
    new_connections("agent 2: client -> NodePort", &topo.client, 4, &mut failures);
    let generation2 = generation(&config);
    if generation2 <= generation1 {
        failures.push(format!("policy generation {generation1} before the restart, {generation2} after: agent 2 did not sync into the pinned maps"));
    }
    // The agent's hooks (the uplink's) each switched to a program of the new agent, rather than
    // stacked; the test's own (the pods') untouched.
    let hooks2 = hook_programs(&topo.node);
    eprintln!("TCX hooks before the restart: {hooks1:?}\n           after the restart: {hooks2:?}");
    if hooks1.get(&format!("{UPLINK} ingress")).is_none_or(|ids| ids.is_empty()) {
        failures.push(format!("agent 1 attached nothing to {UPLINK} ingress: {hooks1:?}"));
    }
    for (hook, before) in &hooks1 {
        let after = &hooks2[hook];
        // The agent's hooks (uplink, lo) hold the new agent's program; the pods' are the test's.
        let agents = hook.starts_with(UPLINK) || hook.starts_with("lo ");
        let ok = if agents {
            after.len() == before.len() && after.len() <= 1 && (before.is_empty() || after != before)
        } else {
            after == before
        };
        if !ok {
            let want = if agents { "the same number (at most one), the new agent's" } else { "unchanged" };
            failures.push(format!("{hook}: programs {before:?} before the restart, {after:?} after; want {want}"));
        }
    }
    let log2 = std::fs::read_to_string(&agent2.log).unwrap_or_default();
    if !log2.contains("Replaced") {
        failures
            .push(format!("agent 2 did not report adopting the pinned uplink link (Replaced):\n{}", agent2.log_tail()));
    }
    for (_, _, host_if) in PODS {
        let ids = &hooks2[&format!("{host_if} ingress")];
        if ids.len() != 1 {
            failures.push(format!("{host_if} ingress: programs {ids:?}, want exactly one"));
        }
    }
    let kernel = evidence.report();
    // The stream's entries in the flow table: (client -> NodePort) and the pod's replies.
    let masq_port: u16 = greeting_peer.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let stream_flows: Vec<String> = evidence
        .all_flows()
        .into_iter()
        .filter(|(k, f)| {
            let ports = [k.sport, k.dport, f.new_sport, f.new_dport].map(u16::from_be);
            ports.contains(&report.port) || ports.contains(&masq_port)
        })
        .map(|(k, f)| e2e::flow_line(&k, &f))
        .collect();
    eprintln!(
        "policy generation {generation1} before the restart, {generation2} after; the stream's flows (client port {}, masquerade port {masq_port}):\n  {}",
        report.port,
        stream_flows.join("\n  ")
    );

    // Cleanup, checked: stop the agent, detach every pinned link, remove the pins.
    let status = agent2.stop();
    if !status.success() {
        failures.push(format!("agent 2 did not stop cleanly on SIGTERM: {status}\n{}", agent2.log_tail()));
    }
    // One pin per hook that had a program: the agent's on the uplink, the test's on the pods.
    let detached = links.detach_all();
    let mut want: Vec<String> = hooks2
        .iter()
        .filter(|(_, ids)| !ids.is_empty())
        .map(|(hook, _)| {
            let (dev, direction) = hook.split_once(' ').unwrap();
            let owner = if dev == UPLINK || dev == "lo" { "uplink" } else { "endpoint" };
            format!("{owner}-{dev}-{direction}")
        })
        .collect();
    want.sort();
    if detached != want {
        failures.push(format!("pinned links detached: {detached:?}, want {want:?} (one per hook in use)"));
    }
    for (hook, ids) in hook_programs(&topo.node) {
        if !ids.is_empty() {
            failures.push(format!("{hook}: programs {ids:?} still attached after the pinned links were detached"));
        }
    }
    let mut pins = 0;
    for entry in std::fs::read_dir(&maps_dir).into_iter().flatten().flatten() {
        std::fs::remove_file(entry.path()).unwrap();
        pins += 1;
    }
    drop(servers);
    drop(evidence);
    drop(config);
    drop(endpoint_obj);
    drop(agent1);
    drop(agent2);
    drop(links);
    drop(bpffs);
    drop(dirs);
    drop(topo);
    eprintln!("cleanup: {pins} map pins removed, bpffs unmounted, namespaces deleted");
    eprintln!("total: {:?}", started.elapsed());
    assert!(
        failures.is_empty(),
        "{} failures:\n{}\n\nthe stream's flows (client port {}):\n  {}\n\n{kernel}",
        failures.len(),
        failures.join("\n"),
        report.port,
        stream_flows.join("\n  ")
    );
}
