//! Health check node ports as kube-proxy serves them: a LoadBalancer Service with
//! `externalTrafficPolicy: Local` and a `healthCheckNodePort` gets an HTTP server on that port
//! (on the nodePortAddresses; here loopback) answering any path with the Service, its local ready
//! endpoints and the proxy's health: 200 with a local endpoint, 503 without; the listener closes
//! when the Service goes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use flowgate_agent::AgentSettings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NODE: &str = "apiVersion: v1\nkind: Node\nmetadata: {name: node-a}\nstatus: {addresses: [{type: InternalIP, address: 192.168.0.2}]}\n";

fn service(hc: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: shop}}\nspec:\n  type: LoadBalancer\n  clusterIP: 172.30.0.10\n  externalTrafficPolicy: Local\n  healthCheckNodePort: {hc}\n  ports: [{{port: 80, nodePort: 30080}}]\n"
    )
}

fn slice(node: &str) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: web-1, namespace: shop, labels: {{kubernetes.io/service-name: web}}}}\naddressType: IPv4\nports: [{{port: 8080}}]\nendpoints: [{{addresses: [10.0.1.5], nodeName: {node}}}]\n"
    )
}

/// A port free on loopback now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// GET on `path`: status, headers (lowercase names), body; `None` when nothing listens.
async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String, serde_json::Value)> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, head.to_ascii_lowercase(), serde_json::from_str(body).ok()?))
}

async fn until<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn write(dir: &Path, text: &str) {
    // Written whole and renamed, so the watcher never reads half a file.
    let tmp = dir.join(".cluster.yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join("cluster.yaml")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_service_health_check_node_port_answers_as_kube_proxys() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("m");
    std::fs::create_dir_all(&manifests).unwrap();
    let hc = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], hc));
    write(&manifests, &format!("{NODE}---\n{}---\n{}", service(hc), slice("node-a")));
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nnodePortAddresses: ['127.0.0.0/8']\n",
    )
    .unwrap();
    let mut settings = AgentSettings::for_manifests(&manifests, dir.path().join("api.sock"));
    settings.read_config(&config).unwrap();
    settings.timing.min_interval = Duration::from_millis(10);
    let agent = flowgate_agent::start(settings).await.unwrap();
    support::synced(&agent.socket).await;

    // A local ready endpoint: 200, on any path.
    let (code, head, body) = until("the health check node port", async || get(addr, "/anything").await).await;
    assert_eq!(code, 200, "{body}");
    assert!(head.contains("\r\nx-content-type-options: nosniff"), "{head}");
    assert!(head.contains("\r\ncontent-type: application/json"), "{head}");
    assert_eq!(
        body,
        serde_json::json!({"service": {"namespace": "shop", "name": "web"}, "localEndpoints": 1, "serviceProxyHealthy": true})
    );
    assert_eq!(get(addr, "/").await.unwrap().0, 200);

    // The endpoint moves to another node: 503, no local endpoints.
    write(&manifests, &format!("{NODE}---\n{}---\n{}", service(hc), slice("node-b")));
    let body = until("503", async || get(addr, "/").await.filter(|r| r.0 == 503).map(|r| r.2)).await;
    assert_eq!(body["localEndpoints"], 0, "{body}");
    assert_eq!(body["serviceProxyHealthy"], true, "{body}");
    let status = support::status(&agent.socket).await;
    assert_eq!(status["healthCheckNodePorts"][0]["port"], hc, "{status}");

    // And back.
    write(&manifests, &format!("{NODE}---\n{}---\n{}", service(hc), slice("node-a")));
    until("200 again", async || get(addr, "/").await.filter(|r| r.0 == 200).map(|_| ())).await;

    // The Service goes: so does the listener.
    write(&manifests, NODE);
    until("the listener closed", async || tokio::net::TcpStream::connect(addr).await.is_err().then_some(())).await;
    agent.stop();
}
