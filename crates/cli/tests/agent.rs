//! The agent on a manifest directory, through the real binaries: `flowgated --manifests DIR` and
//! `flowgate trace --live` / `flowgate status`. The live answers must equal `flowgate trace -f` on
//! the same files, after every edit, within one sync.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// A running `flowgated`, killed on drop.
struct Agent {
    child: Child,
    socket: PathBuf,
    dir: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("flowgate-test-{tag}-{}-{:?}", std::process::id(), Instant::now()));
    let d = PathBuf::from(d.to_string_lossy().replace([' ', '{', '}', ':', ','], ""));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn start_agent(tag: &str, node: &str) -> Agent {
    let dir = tempdir(tag);
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    let socket = dir.join("run/flowgate.sock");
    let child = Command::new(env!("CARGO_BIN_EXE_flowgated"))
        .args(["--manifests", manifests.to_str().unwrap(), "--socket", socket.to_str().unwrap(), "--node", node])
        .args(["--state-dir", dir.join("state").to_str().unwrap()])
        .args(["--healthz-bind-address", "", "--metrics-bind-address", "", "--min-sync-period", "20ms"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let agent = Agent { child, socket, dir };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !agent.socket.exists() {
        assert!(Instant::now() < deadline, "agent socket never appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
    agent
}

impl Agent {
    fn manifests(&self) -> PathBuf {
        self.dir.join("manifests")
    }

    /// Replaces a manifest file atomically (write then rename, as editors and kubectl do).
    fn write(&self, name: &str, text: &str) {
        let tmp = self.dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.manifests().join(name)).unwrap();
    }

    fn status(&self) -> Value {
        let out = Command::new(env!("CARGO_BIN_EXE_flowgate"))
            .args(["status", "--socket"])
            .arg(&self.socket)
            .output()
            .unwrap();
        assert!(out.status.success(), "status: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Waits until the agent has synced everything it has seen and `check` holds.
    fn settle(&self, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = self.status();
            if s["ready"] == json!(true) && s["pending"] == json!(false) && check(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "agent never settled ({what}): {s}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn trace(&self, args: &[&str], batch: Option<&str>) -> String {
        run_trace(&["--live", "--socket", self.socket.to_str().unwrap()], args, batch)
    }
}

fn run_trace(source: &[&str], args: &[&str], batch: Option<&str>) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flowgate"));
    cmd.arg("trace").args(source).args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    if batch.is_some() {
        cmd.args(["--batch", "-"]).stdin(Stdio::piped());
    }
    let mut child = cmd.spawn().unwrap();
    if let Some(b) = batch {
        child.stdin.take().unwrap().write_all(b.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "trace {source:?} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn scenario_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.retain(|p| p.extension().and_then(|e| e.to_str()) == Some("yaml"));
    files.sort();
    files
}

#[test]
fn live_trace_matches_manifests_through_every_scenario() {
    let agent = start_agent("scenarios", "node-a");
    let mut compared = 0;
    for file in scenario_files() {
        let doc: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        if doc.get("error").and_then(|e| e.as_bool()) == Some(true)
            || doc.get("node").and_then(|n| n.as_str()).is_some_and(|n| n != "node-a")
        {
            continue;
        }
        let manifests = doc.get("manifests").and_then(|m| m.as_sequence()).unwrap();
        if !manifests.iter().any(|m| {
            m.get("kind").and_then(|k| k.as_str()) == Some("Node")
                && m.get("metadata").and_then(|md| md.get("name")).and_then(|n| n.as_str()) == Some("node-a")
        }) {
            continue;
        }
        let mut text = String::new();
        for m in manifests {
            text.push_str("---\n");
            text.push_str(&serde_yaml::to_string(m).unwrap());
        }
        let services = manifests.iter().filter(|m| m.get("kind").and_then(|k| k.as_str()) == Some("Service")).count();
        let before = agent.status()["sync"]["syncs"].as_u64().unwrap_or(0);
        agent.write("cluster.yaml", &text);
        agent.settle(&file.display().to_string(), |s| {
            s["sync"]["syncs"].as_u64().unwrap_or(0) > before && s["objects"]["services"] == json!(services)
        });
        let mut batch = String::new();
        for (i, p) in doc.get("probes").and_then(|p| p.as_sequence()).into_iter().flatten().enumerate() {
            let from = p.get("from").and_then(|v| v.as_str()).unwrap();
            let to = p.get("to").and_then(|v| v.as_str()).unwrap();
            batch.push_str(&format!("{}\n", json!({"id": i, "from": from, "to": to})));
        }
        let live = agent.trace(&[], Some(&batch));
        let direct = run_trace(&["-f", agent.manifests().to_str().unwrap(), "--node", "node-a"], &[], Some(&batch));
        assert_eq!(live, direct, "{}: trace --live differs from trace -f", file.display());
        compared += 1;
    }
    assert!(compared >= 40, "only {compared} scenarios compared");
}

const BASE: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node-a}
status: {addresses: [{type: InternalIP, address: 192.168.0.2}]}
---
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clusterCIDR: 10.0.0.0/8
---
apiVersion: networking.k8s.io/v1
kind: ServiceCIDR
metadata: {name: kubernetes}
spec: {cidrs: [172.30.0.0/16]}
"#;

fn service(port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: shop}}\nspec:\n  clusterIP: 172.30.0.10\n  ports: [{{name: http, port: {port}}}]\n"
    )
}

fn slice(endpoints: &[&str]) -> String {
    let eps: Vec<String> = endpoints.iter().map(|e| format!("  - addresses: [{e}]\n    nodeName: node-b\n")).collect();
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  namespace: shop\n  labels: {{kubernetes.io/service-name: web}}\naddressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:\n{}",
        eps.concat()
    )
}

fn verdict(agent: &Agent, to: &str) -> Value {
    let out = agent.trace(&["--from", "10.0.1.9", "--to", to, "-o", "json"], None);
    let v: Value = serde_json::from_str(&out).unwrap();
    json!({"verdict": v["verdict"], "dnat": v["dnat"]})
}

#[test]
fn edits_scaling_deletion_and_bad_files() {
    let agent = start_agent("edits", "node-a");
    agent.write("00-base.yaml", BASE);
    agent.write("10-web.yaml", &service(80));
    agent.write("20-web-slice.yaml", &slice(&["10.0.2.1"]));
    agent.settle("initial", |s| s["objects"]["endpointSlices"] == json!(1));
    assert_eq!(verdict(&agent, "172.30.0.10:80"), json!({"verdict": "allow", "dnat": ["10.0.2.1:8080"]}));

    // Edit the Service: port 80 becomes 81.
    let syncs = agent.status()["sync"]["syncs"].as_u64().unwrap();
    agent.write("10-web.yaml", &service(81));
    agent.settle("edit", |s| s["sync"]["syncs"].as_u64().unwrap() == syncs + 1);
    assert_eq!(verdict(&agent, "172.30.0.10:81"), json!({"verdict": "allow", "dnat": ["10.0.2.1:8080"]}));
    assert_eq!(verdict(&agent, "172.30.0.10:80"), json!({"verdict": "reject", "dnat": []}));

    // Scale the EndpointSlice to three endpoints.
    let syncs = agent.status()["sync"]["syncs"].as_u64().unwrap();
    agent.write("20-web-slice.yaml", &slice(&["10.0.2.1", "10.0.2.2", "10.0.2.3"]));
    agent.settle("scale", |s| s["sync"]["syncs"].as_u64().unwrap() == syncs + 1);
    assert_eq!(
        verdict(&agent, "172.30.0.10:81"),
        json!({"verdict": "allow", "dnat": ["10.0.2.1:8080", "10.0.2.2:8080", "10.0.2.3:8080"]})
    );

    // A malformed file: reported with file, document and field; the last good state stays.
    agent.write("30-bad.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: ok}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: bad}\nspec:\n  ports: [{port: 70000}]\n");
    let s = agent.settle("bad file", |s| s["sourceError"].is_string());
    let err = s["sourceError"].as_str().unwrap();
    assert!(err.contains("30-bad.yaml") && err.contains("document 1") && err.contains("spec.ports[0].port"), "{err}");
    assert_eq!(verdict(&agent, "172.30.0.10:81")["verdict"], json!("allow"));
    std::fs::remove_file(agent.manifests().join("30-bad.yaml")).unwrap();
    agent.settle("bad file removed", |s| s["sourceError"].is_null());

    // Delete the Service: its address is now an unallocated one in the ServiceCIDR.
    let syncs = agent.status()["sync"]["syncs"].as_u64().unwrap();
    std::fs::remove_file(agent.manifests().join("10-web.yaml")).unwrap();
    agent.settle("delete", |s| s["sync"]["syncs"].as_u64().unwrap() == syncs + 1);
    assert_eq!(verdict(&agent, "172.30.0.10:81"), json!({"verdict": "drop", "dnat": []}));
}
