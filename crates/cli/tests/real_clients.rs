//! flowgate-cni driven by CNI clients nobody here wrote, from Debian's packages (root; CI installs
//! them): a program over Debian's libcni (`golang-github-appc-cni-dev`, the library of cnitool and
//! podman's CNI backend) for ADD, CHECK and DEL, and podman 4 with its CNI backend starting a
//! container from a local busybox image. Pods made by them reach each other, a Service VIP, the
//! "internet" through outbound NAT and a host port from outside; the container's resolv.conf shows
//! the result's DNS; podman publishes a host port on the node's loopback (`-p 127.0.0.1:...`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cni;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cni::*;
use flowgate_ebpf::netns::Netns;
use serde_json::{json, Value};

/// A Debian package's program, or a clear failure (a skip only with `FLOWGATE_ALLOW_SKIP=1`).
fn need(program: &str, package: &str) -> bool {
    if Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success()
    {
        return true;
    }
    if std::env::var("FLOWGATE_ALLOW_SKIP").as_deref() == Ok("1") {
        eprintln!("skipping: {program} is missing (Debian package {package}); scripts/test installs it");
        return false;
    }
    panic!("{program} is missing: install the Debian package {package} (scripts/test does)");
}

/// A directory holding `flowgate-cni` as a plugin directory does.
fn plugin_dir(dir: &Path) -> PathBuf {
    let d = dir.join("plugins");
    std::fs::create_dir_all(&d).unwrap();
    let _ = std::fs::remove_file(d.join("flowgate-cni"));
    std::os::unix::fs::symlink(plugin(), d.join("flowgate-cni")).unwrap();
    d
}

/// The plugin's entry of a conflist (what `Node::conf` gives, minus what the list carries).
fn conflist(node: &Node, name: &str) -> Value {
    let mut entry = node.conf(name, "10.244.1.0/24");
    entry.as_object_mut().unwrap().remove("name");
    entry.as_object_mut().unwrap().remove("cniVersion");
    entry["capabilities"] = json!({"portMappings": true, "dns": true});
    json!({"cniVersion": "1.0.0", "name": name, "plugins": [entry]})
}

/// Builds tests/clients/cnitool.go against Debian's libcni sources (offline, GOPATH mode).
fn build_cnitool(dir: &Path) -> PathBuf {
    let src = dir.join("go/src/cnitool");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/cnitool.go"), src.join("main.go")).unwrap();
    let out = dir.join("cnitool");
    let status = Command::new("go")
        .args(["build", "-o"])
        .arg(&out)
        .arg(".")
        .current_dir(&src)
        .env("GO111MODULE", "off")
        .env("GOPATH", format!("{}:/usr/share/gocode", dir.join("go").display()))
        .env("GOFLAGS", "-mod=mod")
        .env("GOCACHE", dir.join("gocache"))
        .status()
        .unwrap();
    assert!(status.success(), "building cnitool.go over libcni failed");
    out
}

/// The libcni program with its conflist, plugin directory and result cache.
struct Cnitool {
    tool: PathBuf,
    list: PathBuf,
    plugins: PathBuf,
    cache: PathBuf,
}

impl Cnitool {
    /// `cnitool CMD ...`: whether it succeeded, and what it printed (the result, or the error).
    fn run(&self, cmd: &str, netns: &Path, id: &str, pod: &str, hostport: Option<&str>) -> (bool, Value) {
        let mut c = Command::new(&self.tool);
        c.arg(cmd).arg(&self.list).arg(netns).args([id, pod]).arg(&self.plugins).arg(&self.cache);
        if let Some(hp) = hostport {
            c.env("CNITOOL_HOSTPORT", hp);
        }
        let out = c.stderr(Stdio::inherit()).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let v = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(text.trim()).unwrap_or(json!({"raw": text}))
        };
        (out.status.success(), v)
    }
}

#[test]
fn libcni_adds_checks_and_deletes_working_pods() {
    if !flowgate_ebpf::privileged_test("libcni_adds_checks_and_deletes_working_pods") || !need("go", "golang-go") {
        return;
    }
    assert!(
        Path::new("/usr/share/gocode/src/github.com/containernetworking/cni/libcni").exists(),
        "install golang-github-appc-cni-dev"
    );
    let node = Node::start("libcni");
    let work = TempDir::new("libcni-work");
    let cnitool = Cnitool {
        tool: build_cnitool(&work.0),
        list: work.0.join("fgtest.conflist"),
        plugins: plugin_dir(&work.0),
        cache: work.0.join("cache"),
    };
    std::fs::write(&cnitool.list, conflist(&node, "fgtest").to_string()).unwrap();

    let a = Netns::new().unwrap();
    let b = Netns::new().unwrap();
    let (ok, ra) = cnitool.run("add", a.path(), "lib-a", "shop/client", None);
    assert!(ok, "libcni ADD a: {ra}");
    let (ok, rb) = cnitool.run("add", b.path(), "lib-b", "shop/web-1", Some("31080:8080"));
    assert!(ok, "libcni ADD b: {rb}\n{}", node.log());
    assert_eq!(ra["cniVersion"], "1.0.0");
    // libcni read the result as the pod holds it: a host route, the gateway on the link.
    assert_eq!(ra["ips"][0]["address"], "10.244.1.2/32", "{ra}");
    assert_eq!(ra["routes"], json!([{"dst": "10.244.1.1/32"}, {"dst": "0.0.0.0/0", "gw": "10.244.1.1"}]), "{ra}");
    assert_eq!(
        ra["dns"]["search"],
        json!(["shop.svc.cluster.local", "svc.cluster.local", "cluster.local", "example.internal"]),
        "the pod's suffixes first, then the runtime's (dns capability): {ra}"
    );
    let ip_b = ip_of(&rb);
    let _web = Server::tcp(&b, "web-1", "0.0.0.0:8080");
    let _far = Server::tcp(&node.internet, "internet", &format!("{INTERNET_IP}:9000"));
    let mut failures = Vec::new();
    match ask(&a, &format!("{ip_b}:8080")) {
        Ok(l) if l == "web-1 10.244.1.2" => {}
        other => failures.push(format!("pod a -> pod b: {other:?}")),
    }
    std::fs::write(node.dir.0.join("m/slice.yaml"), endpoint_slice(&ip_b)).unwrap();
    let t = Instant::now();
    let svc = loop {
        let r = ask(&a, &format!("{SERVICE_IP}:80"));
        if r.is_ok() || t.elapsed() > Duration::from_secs(10) {
            break r;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    match svc {
        Ok(l) if l == "web-1 10.244.1.2" => {}
        other => failures.push(format!("pod a -> Service VIP: {other:?}")),
    }
    match ask(&a, &format!("{INTERNET_IP}:9000")) {
        Ok(l) if l == format!("internet {NODE_IP}") => {}
        other => failures.push(format!("pod a -> internet through outbound NAT: {other:?}")),
    }
    match ask(&node.internet, &format!("{NODE_IP}:31080")) {
        Ok(l) if l == format!("web-1 {INTERNET_IP}") => {}
        other => failures.push(format!("internet -> host port 31080 of pod b: {other:?}")),
    }
    let (ok, v) = cnitool.run("check", a.path(), "lib-a", "shop/client", None);
    if !ok {
        failures.push(format!("libcni CHECK: {v}"));
    }
    for (ns, id, pod) in [(&a, "lib-a", "shop/client"), (&b, "lib-b", "shop/web-1")] {
        let (ok, v) = cnitool.run("del", ns.path(), id, pod, None);
        assert!(ok, "libcni DEL {id}: {v}");
    }
    let (ok, v) = cnitool.run("del", a.path(), "lib-a", "shop/client", None);
    assert!(ok, "a second libcni DEL: {v}");
    assert!(node.host_interfaces().is_empty(), "{:?}", node.host_interfaces());
    assert_eq!(node.api("GET", "/v1/endpoints", None).unwrap(), json!([]));
    assert!(failures.is_empty(), "{}\nagent log:\n{}", failures.join("\n"), node.log());
}

/// podman with the CNI backend, configured in a directory of the test's own:
/// cgroupfs (no systemd), runc, vfs storage, our conflist.
struct Podman {
    dir: TempDir,
}

impl Podman {
    fn new(plugins: &Path, node: &Node) -> Podman {
        let dir = TempDir::new("podman");
        let p = &dir.0;
        let net = p.join("net.d");
        std::fs::create_dir_all(&net).unwrap();
        // podman passes K8S_POD_NAME but no namespace: the network gives the search suffixes.
        let mut list = conflist(node, "fgpod");
        list["plugins"][0]["dns"]["search"] =
            json!(["default.svc.cluster.local", "svc.cluster.local", "cluster.local"]);
        std::fs::write(net.join("fgpod.conflist"), list.to_string()).unwrap();
        std::fs::write(
            p.join("containers.conf"),
            format!(
                "[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nruntime = \"runc\"\ntmp_dir = \"{0}/tmp\"\n\
                 [network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{1}\", \"/usr/lib/cni\"]\nnetwork_config_dir = \"{2}\"\n",
                p.display(),
                plugins.display(),
                net.display()
            ),
        )
        .unwrap();
        std::fs::write(
            p.join("storage.conf"),
            format!("[storage]\ndriver = \"vfs\"\nrunroot = \"{0}/runroot\"\ngraphroot = \"{0}/root\"\n", p.display()),
        )
        .unwrap();
        let podman = Podman { dir };
        // An image with no registry: a busybox-static root filesystem.
        let rootfs = podman.dir.0.join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).unwrap();
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        for a in ["sh", "ip", "cat", "nc", "timeout", "sleep", "wget"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(a)).unwrap();
        }
        for d in ["etc", "proc", "sys", "dev", "tmp"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        let tar = podman.dir.0.join("bb.tar");
        assert!(Command::new("tar").arg("-C").arg(&rootfs).arg("-cf").arg(&tar).arg(".").status().unwrap().success());
        let out =
            podman.run(&["import", "--change", "CMD [\"/bin/sh\"]", tar.to_str().unwrap(), "localhost/fgbb:latest"]);
        assert!(out.status.success(), "podman import: {}", String::from_utf8_lossy(&out.stderr));
        podman
    }

    /// `podman ARGS` under catatonit (a subreaper: conmon double-forks and PID 1 here reaps nobody).
    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new("catatonit")
            .arg("--")
            .arg("podman")
            .args(args)
            .env("CONTAINERS_CONF", self.dir.0.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.dir.0.join("storage.conf"))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.run(&["rm", "--all", "--force"]);
        let _ = self.run(&["system", "reset", "--force"]);
    }
}

#[test]
fn podman_starts_a_container_on_a_flowgate_network() {
    if !flowgate_ebpf::privileged_test("podman_starts_a_container_on_a_flowgate_network")
        || !need("podman", "podman")
        || !need("catatonit", "catatonit")
        || !need("runc", "runc")
    {
        return;
    }
    assert!(Path::new("/bin/busybox").exists(), "install busybox-static");
    let node = Node::start("podman");
    let work = TempDir::new("podman-plugins");
    let plugins = plugin_dir(&work.0);
    // A server pod made by the plugin directly, for the container to reach.
    let (server, r) = add_pod(&node.conf("fgpod", "10.244.1.0/24"), "srv", "shop", "web-1");
    let _web = Server::tcp(&server, "web-1", "0.0.0.0:8080");
    let ip_srv = ip_of(&r);

    let podman = Podman::new(&plugins, &node);
    let script =
        format!("ip -4 -o addr show eth0; cat /etc/resolv.conf; echo reply: $(timeout 5 nc {ip_srv} 8080 </dev/null)");
    let out = podman.run(&[
        "run",
        "--rm",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
        "--network",
        "fgpod",
        "localhost/fgbb",
        "sh",
        "-c",
        &script,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "podman run failed: {}\n{stdout}\nagent log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        node.log()
    );
    assert!(stdout.contains("inet 10.244.1.3/32"), "the container's address:\n{stdout}");
    assert!(stdout.contains(&format!("nameserver {SERVICE_IP}")), "resolv.conf from the result:\n{stdout}");
    let search = stdout.lines().find(|l| l.starts_with("search")).unwrap_or_default().to_owned();
    assert!(
        search.starts_with("search default.svc.cluster.local svc.cluster.local cluster.local"),
        "search suffixes: {search:?}\n{stdout}"
    );
    assert!(stdout.contains("reply: web-1 10.244.1.3"), "the container reached the pod:\n{stdout}");
    // podman removed the container: its DEL left only the server pod's endpoint.
    let t = Instant::now();
    while node.host_interfaces().len() != 1 && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(node.host_interfaces().len(), 1, "{:?}", node.host_interfaces());
    let eps = node.api("GET", "/v1/endpoints", None).unwrap();
    assert_eq!(eps.as_array().unwrap().len(), 1, "{eps}");

    // A host port on the node's loopback (`-p 127.0.0.1:...`, which the agent once refused as "not
    // an address of this node"), reached by the node's own client.
    let out = podman.run(&[
        "run",
        "-d",
        "--name",
        "fg-hostport",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
        "--network",
        "fgpod",
        "-p",
        "127.0.0.1:18081:8080",
        "localhost/fgbb",
        "nc",
        "-ll",
        "-p",
        "8080",
        "-e",
        "echo",
        "web",
    ]);
    assert!(
        out.status.success(),
        "podman run -p 127.0.0.1:18081:8080 failed: {}
agent log:
{}",
        String::from_utf8_lossy(&out.stderr),
        node.log()
    );
    let t = Instant::now();
    let answer = loop {
        let r = ask(&node.ns, "127.0.0.1:18081");
        if r.is_ok() || t.elapsed() > Duration::from_secs(10) {
            break r;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let rm = podman.run(&["rm", "--force", "fg-hostport"]);
    assert_eq!(answer, Ok("web".to_owned()), "the node -> 127.0.0.1:18081 (podman's host port)");
    assert!(rm.status.success(), "podman rm: {}", String::from_utf8_lossy(&rm.stderr));
    let t = Instant::now();
    while node.host_interfaces().len() != 1 && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(node.host_interfaces().len(), 1, "podman's DEL: {:?}", node.host_interfaces());
    drop(podman);
    assert_eq!(cni("DEL", "srv", None, None, &node.conf("fgpod", "10.244.1.0/24")).code, 0);
}
