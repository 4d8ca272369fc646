//! Operations: healthz behaves like kube-proxy's (unhealthy while changes wait too long for a sync,
//! healthy once synced), metrics carry kube-proxy's names, and the API socket is root-only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use flowgate_agent::AgentSettings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let code = buf.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (code, body)
}

async fn wait_for(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const CLUSTER: &str = "apiVersion: v1\nkind: Node\nmetadata: {name: node-a}\nstatus: {addresses: [{type: InternalIP, address: 192.168.0.2}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  clusterIP: 172.30.0.10\n  ports: [{port: 80}]\n";

fn slice(trigger: &str) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  labels: {{kubernetes.io/service-name: web}}\n  annotations: {{endpoints.kubernetes.io/last-change-trigger-time: \"{trigger}\"}}\naddressType: IPv4\nports: [{{port: 8080}}]\nendpoints: [{{addresses: [10.0.2.1]}}]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_metrics_and_socket() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("m");
    std::fs::create_dir_all(&manifests).unwrap();
    // Start with a broken file: the source cannot list, so nothing syncs.
    std::fs::write(
        manifests.join("cluster.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: [{port: 0}]}\n",
    )
    .unwrap();
    let mut settings = AgentSettings::for_manifests(&manifests, dir.path().join("run/api.sock"));
    settings.healthz_bind = Some("127.0.0.1:0".parse().unwrap());
    settings.metrics_bind = Some("127.0.0.1:0".parse().unwrap());
    settings.timing.min_interval = Duration::from_millis(10);
    settings.timing.full_resync = Duration::from_millis(150); // health timeout: 300 ms
    let agent = flowgate_agent::start(settings).await.unwrap();
    let healthz = agent.healthz.unwrap();
    let metrics = agent.metrics.unwrap();

    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&agent.socket), 0o600, "socket is root-only");
    assert_eq!(mode(agent.socket.parent().unwrap()), 0o700, "socket directory is root-only");

    // Never synced, for longer than the timeout: unhealthy, as kube-proxy before its first sync.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (code, body) = get(healthz, "/healthz").await;
    assert_eq!(code, 503, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v.get("lastUpdated").is_some() && v.get("currentTime").is_some() && v["nodeEligible"] == true, "{v}");

    // Fix the file (with an EndpointSlice whose change was triggered a moment ago): healthy.
    let trigger = jiff::Timestamp::now().to_string();
    std::fs::write(manifests.join("cluster.yaml"), format!("{CLUSTER}---\n{}", slice(&trigger))).unwrap();
    wait_for("healthz 200", async || get(healthz, "/healthz").await.0 == 200).await;
    let (code, _) = get(healthz, "/livez").await;
    assert_eq!(code, 200);

    let (code, text) = get(metrics, "/metrics").await;
    assert_eq!(code, 200);
    for name in [
        "sync_proxy_rules_duration_seconds_count",
        "network_programming_duration_seconds_count",
        "sync_proxy_rules_last_timestamp_seconds",
        "flowgate_sync_failures_total",
        "flowgate_source_errors_total",
    ] {
        assert!(text.contains(name), "metrics lack {name}:\n{text}");
    }
    let count = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    assert!(count("sync_proxy_rules_duration_seconds_count") >= 1.0);
    assert!(count("network_programming_duration_seconds_count") >= 1.0, "the slice's trigger time was observed");
    assert!(count("flowgate_source_errors_total") >= 1.0, "the broken file was counted");
    agent.stop();
}
