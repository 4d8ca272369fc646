//! Shared setup of the CNI tests: a node namespace running the real `flowgated` (eBPF data plane,
//! maps and links pinned in a bpffs of the test's own), an "internet" namespace behind the node's
//! uplink (reachable from pods only through outbound NAT: it has no route to the pod range), and
//! the real `flowgate-cni` binary called as a runtime calls it: environment, configuration on
//! stdin, result or error object on stdout, exit code.
//!
//! Addresses: node uplink 192.168.77.1/24, internet 192.168.77.2/24, pods 10.244.1.0/24 (gateway
//! 10.244.1.1), Services 10.96.0.0/16. Everything is made in namespaces named by the test run and
//! removed on drop, also on failure.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowgate_ebpf::bpffs::TempBpffs;
use flowgate_ebpf::netns::Netns;
use serde_json::{json, Value};

pub const NODE_IP: &str = "192.168.77.1";
pub const INTERNET_IP: &str = "192.168.77.2";
pub const UPLINK: &str = "up0";
pub const SERVICE_IP: &str = "10.96.0.10";

pub const MANIFESTS: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node}
spec: {podCIDR: 10.244.1.0/24}
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
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  ports:
  - {name: http, protocol: TCP, port: 80, targetPort: 8080}
"#;

/// The Service's endpoints, once the backend's address is known.
pub fn endpoint_slice(ip: &str) -> String {
    format!(
        r#"apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: shop
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
endpoints:
- addresses: [{ip}]
  conditions: {{ready: true}}
  nodeName: node
ports:
- {{name: http, port: 8080, protocol: TCP}}
"#
    )
}

/// A temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let d = std::env::temp_dir().join(format!(
            "flowgate-cni-test-{}-{tag}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The node: namespaces, the agent, its files. Dropped in reverse order of declaration.
pub struct Node {
    pub agent: Option<Child>,
    pub bpffs: TempBpffs,
    pub dir: TempDir,
    pub internet: Netns,
    pub ns: Netns,
}

pub fn flowgated() -> &'static str {
    env!("CARGO_BIN_EXE_flowgated")
}

pub fn plugin() -> &'static str {
    env!("CARGO_BIN_EXE_flowgate-cni")
}

impl Node {
    /// The namespaces and the agent, synced.
    pub fn start(tag: &str) -> Node {
        let ns = Netns::new().unwrap();
        let internet = Netns::new().unwrap();
        ns.ip(&["link", "set", "lo", "up"]).unwrap();
        ns.add_veth_to(UPLINK, &internet, "eth0").unwrap();
        ns.ip(&["addr", "add", &format!("{NODE_IP}/24"), "dev", UPLINK]).unwrap();
        internet.ip(&["link", "set", "lo", "up"]).unwrap();
        internet.ip(&["addr", "add", &format!("{INTERNET_IP}/24"), "dev", "eth0"]).unwrap();
        let dir = TempDir::new(tag);
        std::fs::create_dir_all(dir.0.join("m")).unwrap();
        std::fs::write(dir.0.join("m/cluster.yaml"), MANIFESTS).unwrap();
        let bpffs = TempBpffs::new().unwrap();
        let mut node = Node { agent: None, bpffs, dir, internet, ns };
        node.start_agent();
        node
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.0.join("run/flowgate.sock")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.0.join("state")
    }

    pub fn pins(&self) -> PathBuf {
        self.bpffs.path().join("flowgate")
    }

    /// Starts `flowgated` in the node namespace and waits for its first sync.
    pub fn start_agent(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.0.join("agent.log")).unwrap();
        let mut command = self.ns.command(flowgated());
        command
            .arg("--manifests")
            .arg(self.dir.0.join("m"))
            .args(["--node", "node", "--socket"])
            .arg(self.socket())
            .arg("--state-dir")
            .arg(self.state_dir())
            .args(["--healthz-bind-address", "", "--metrics-bind-address", ""])
            .args(["--dataplane", "ebpf", "--uplink", UPLINK, "--bpffs"])
            .arg(self.pins())
            .args(["--min-sync-period", "20ms"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.agent = Some(command.spawn().unwrap());
        let t = Instant::now();
        loop {
            if let Ok(s) = self.api("GET", "/v1/status", None) {
                if s["ready"] == json!(true) && s["sync"]["syncs"].as_u64().unwrap_or(0) > 0 {
                    break;
                }
            }
            if let Some(status) = self.agent.as_mut().unwrap().try_wait().unwrap() {
                panic!("flowgated exited ({status}):\n{}", self.log());
            }
            assert!(t.elapsed() < Duration::from_secs(20), "flowgated did not sync in 20 s:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL (no chance to clean anything) or SIGTERM.
    pub fn stop_agent(&mut self, kill: bool) {
        if let Some(mut child) = self.agent.take() {
            if kill {
                child.kill().unwrap();
            } else {
                let _ = Command::new("kill").arg(child.id().to_string()).status();
            }
            child.wait().unwrap();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("agent.log")).unwrap_or_default()
    }

    pub fn api(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        flowgate_hostnet::client::request(&self.socket(), method, path, body).map_err(|e| e.to_string())
    }

    /// The network configuration of the plugin (as a runtime passes one entry of a conflist).
    pub fn conf(&self, name: &str, subnet: &str) -> Value {
        json!({
            "cniVersion": "1.0.0",
            "name": name,
            "type": "flowgate-cni",
            "socket": self.socket(),
            "ipam": {"ranges": [[{"subnet": subnet}]]},
            "dns": {"nameservers": [SERVICE_IP], "options": ["ndots:5"]},
            "clusterDomain": "cluster.local",
            "outboundNAT": {"exceptions": []},
            "mtu": 1400,
        })
    }

    /// `fgv*` interfaces in the node namespace.
    pub fn host_interfaces(&self) -> Vec<String> {
        self.ns
            .ip(&["-o", "link", "show"])
            .unwrap()
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_owned())
            .filter(|n| n.starts_with("fgv"))
            .collect()
    }

    /// Endpoint link pins (earlier versions pinned the endpoints' TCX links; none may be made).
    pub fn endpoint_pins(&self) -> Vec<String> {
        std::fs::read_dir(self.pins().join("links"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("endpoint-"))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The host-side interfaces whose TC ingress hook runs the endpoint program (`tc filter
    /// show`, as an operator would look).
    pub fn endpoint_programs(&self) -> Vec<String> {
        self.host_interfaces()
            .into_iter()
            .filter(|dev| {
                let out = self.ns.command("tc").args(["filter", "show", "dev", dev, "ingress"]).output().unwrap();
                String::from_utf8_lossy(&out.stdout).contains("fg_from_endpoint")
            })
            .collect()
    }

    /// Packet counter by name from `GET /v1/status`.
    pub fn counter(&self, name: &str) -> u64 {
        self.api("GET", "/v1/status", None).unwrap()["packets"][name].as_u64().unwrap_or(0)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop_agent(true);
        // The pinned links hold programs on interfaces of the node namespace; it goes with them.
        for dir in ["links", "maps"] {
            if let Ok(d) = std::fs::read_dir(self.pins().join(dir)) {
                for e in d.flatten() {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

/// What the plugin printed and its exit code.
#[derive(Debug)]
pub struct Outcome {
    pub code: i32,
    pub out: Value,
    pub raw: String,
}

/// Runs `flowgate-cni` as a runtime does: a clean environment with `CNI_*` (interface `eth0`),
/// `conf` on stdin.
pub fn cni(command: &str, container: &str, netns: Option<&Path>, args: Option<&str>, conf: &Value) -> Outcome {
    cni_on("eth0", command, container, netns, args, conf)
}

/// [`cni`] for the interface `ifname`.
pub fn cni_on(
    ifname: &str,
    command: &str,
    container: &str,
    netns: Option<&Path>,
    args: Option<&str>,
    conf: &Value,
) -> Outcome {
    let mut c = Command::new(plugin());
    c.env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if !container.is_empty() {
        c.env("CNI_CONTAINERID", container).env("CNI_IFNAME", ifname);
    }
    if let Some(n) = netns {
        c.env("CNI_NETNS", n);
    }
    if let Some(a) = args {
        c.env("CNI_ARGS", a);
    }
    let mut child = c.spawn().unwrap();
    // A plugin may answer without reading all of it (and then the write fails): its answer counts.
    let _ = child.stdin.take().unwrap().write_all(conf.to_string().as_bytes());
    let out = child.wait_with_output().unwrap();
    let raw = String::from_utf8_lossy(&out.stdout).into_owned();
    let value = if raw.trim().is_empty() { Value::Null } else { serde_json::from_str(&raw).unwrap_or(Value::Null) };
    Outcome { code: out.status.code().unwrap_or(-1), out: value, raw }
}

/// Adds a pod: a namespace and an ADD; the namespace and the result.
pub fn add_pod(conf: &Value, id: &str, pod_ns: &str, pod: &str) -> (Netns, Value) {
    let ns = Netns::new().unwrap();
    let o = cni(
        "ADD",
        id,
        Some(ns.path()),
        Some(&format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={pod_ns};K8S_POD_NAME={pod}")),
        conf,
    );
    assert_eq!(o.code, 0, "ADD {id}: {}", o.raw);
    (ns, o.out)
}

/// The first address of a result, without its prefix length.
pub fn ip_of(result: &Value) -> String {
    result["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().to_owned()
}

/// A TCP server inside a namespace answering every connection with "<name> <peer address>".
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    pub fn tcp(ns: &Netns, name: &'static str, addr: &str) -> Server {
        let listener = ns.run(|| TcpListener::bind(addr)).unwrap().unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, peer)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.write_all(format!("{name} {}\n", peer.ip()).as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Server { stop, thread: Some(thread) }
    }

    /// A UDP server answering each datagram with "<name> <peer address>".
    pub fn udp(ns: &Netns, name: &'static str, addr: &str) -> Server {
        let sock = ns.run(|| UdpSocket::bind(addr)).unwrap().unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !flag.load(Ordering::Relaxed) {
                if let Ok((_, peer)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(format!("{name} {}", peer.ip()).as_bytes(), peer);
                }
            }
        });
        Server { stop, thread: Some(thread) }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects from inside `ns` and reads the server's line.
pub fn ask(ns: &Netns, to: &str) -> Result<String, String> {
    let to: SocketAddr = to.parse().unwrap();
    ns.run(|| {
        let mut s =
            TcpStream::connect_timeout(&to, Duration::from_secs(2)).map_err(|e| format!("connect {to}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut line = String::new();
        s.read_to_string(&mut line).map_err(|e| format!("read from {to}: {e}"))?;
        Ok(line.trim().to_owned())
    })
    .unwrap()
}

/// Connects from `from` (bound inside `ns`) and reads the server's line.
pub fn ask_from(ns: &Netns, from: &str, to: &str) -> Result<String, String> {
    let from: SocketAddr = from.parse().unwrap();
    let to: SocketAddr = to.parse().unwrap();
    ns.run(|| {
        let sock = socket2::Socket::new(socket2::Domain::for_address(to), socket2::Type::STREAM, None)
            .map_err(|e| format!("socket: {e}"))?;
        sock.bind(&from.into()).map_err(|e| format!("bind {from}: {e}"))?;
        sock.connect_timeout(&to.into(), Duration::from_secs(2))
            .map_err(|e| format!("connect {to} from {from}: {e}"))?;
        let mut s: TcpStream = sock.into();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut line = String::new();
        s.read_to_string(&mut line).map_err(|e| format!("read from {to}: {e}"))?;
        Ok(line.trim().to_owned())
    })
    .unwrap()
}

/// Sends one datagram from `from` (bound inside `ns`) and waits briefly for an answer.
pub fn udp_ask(ns: &Netns, from: &str, to: &str) -> Result<String, String> {
    ns.run(|| {
        let s = UdpSocket::bind(from).map_err(|e| format!("bind {from}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        s.send_to(b"?", to).map_err(|e| format!("send to {to}: {e}"))?;
        let mut buf = [0u8; 200];
        let (n, _) = s.recv_from(&mut buf).map_err(|e| format!("no answer from {to}: {e}"))?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
    .unwrap()
}
