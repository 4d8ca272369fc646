//! The whole agent on the Kubernetes source, against the in-process fake API server: it waits for
//! every kind to be listed, syncs, follows watch events, and survives a compaction (410 Gone and a
//! relist) without losing what changed meanwhile. Answers come over the agent's unix socket.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fakeapi;

use std::path::Path;
use std::time::{Duration, Instant};

use fakeapi::FakeApi;
use flowgate_agent::{AgentSettings, SourceSettings};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

async fn call(socket: &Path, method: &str, path: &str, body: Value) -> Value {
    let stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "flowgate")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = tx.send_request(req).await.unwrap();
    serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap()
}

async fn trace(socket: &Path, dst: &str) -> Value {
    let key = json!({"src": "203.0.113.7", "dst": dst.split(':').next().unwrap(), "proto": 6, "sport": 40000,
                     "dport": dst.split(':').nth(1).unwrap().parse::<u16>().unwrap()});
    let r = call(socket, "POST", "/v1/trace", json!({"probes": [{"id": 1, "key": key}]})).await;
    let t = &r["results"][0];
    json!({"verdict": t["verdict"], "dnat": t["dnat"]})
}

async fn eventually(socket: &Path, dst: &str, want: Value) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = trace(socket, dst).await;
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{dst}: want {want}, still {got}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn service(name: &str, ip: &str, port: u16) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "shop"},
           "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": port, "protocol": "TCP"}]}})
}

fn slice(name: &str, svc: &str, ips: &[&str]) -> Value {
    let eps: Vec<Value> = ips.iter().map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}})).collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": name, "namespace": "shop", "labels": {"kubernetes.io/service-name": svc}},
           "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}], "endpoints": eps})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_follows_the_api_server() {
    let api = FakeApi::start().await;
    let dir = tempfile::tempdir().unwrap();
    api.apply(
        fakeapi::NODES,
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.2"}]}}),
    );
    api.apply(
        fakeapi::SERVICECIDRS,
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR",
        "metadata": {"name": "kubernetes"}, "spec": {"cidrs": ["172.30.0.0/16"]}}),
    );
    api.apply(fakeapi::SERVICES, service("web", "172.30.0.10", 80));
    api.apply(fakeapi::ENDPOINTSLICES, slice("web-1", "web", &["10.0.2.1"]));

    let mut settings = AgentSettings::for_manifests("/unused", dir.path().join("api.sock"));
    settings.source = SourceSettings::Kubernetes { kubeconfig: Some(api.write_kubeconfig(dir.path())) };
    settings.node = Some("node-a".into());
    settings.timing.min_interval = Duration::from_millis(10);
    let agent = flowgate_agent::start(settings).await.unwrap();
    let socket = agent.socket.clone();

    eventually(&socket, "172.30.0.10:80", json!({"verdict": "allow", "dnat": ["10.0.2.1:8080"]})).await;
    let status = call(&socket, "GET", "/v1/status", Value::Null).await;
    assert_eq!(status["ready"], json!(true), "{status}");

    // Watch events: scale the slice, add a Service, delete one.
    api.apply(fakeapi::ENDPOINTSLICES, slice("web-1", "web", &["10.0.2.1", "10.0.2.2"]));
    eventually(&socket, "172.30.0.10:80", json!({"verdict": "allow", "dnat": ["10.0.2.1:8080", "10.0.2.2:8080"]}))
        .await;
    api.apply(fakeapi::SERVICES, service("api", "172.30.0.11", 443));
    eventually(&socket, "172.30.0.11:443", json!({"verdict": "reject", "dnat": []})).await;
    api.delete(fakeapi::SERVICES, "shop", "api");
    eventually(&socket, "172.30.0.11:443", json!({"verdict": "drop", "dnat": []})).await;

    // The watch is lost and history compacted while things change: 410 Gone, relist, and the
    // agent ends up with the current state.
    api.close_watches();
    api.fail_next_watches(1);
    api.apply(fakeapi::ENDPOINTSLICES, slice("web-1", "web", &["10.0.2.3"]));
    api.compact();
    eventually(&socket, "172.30.0.10:80", json!({"verdict": "allow", "dnat": ["10.0.2.3:8080"]})).await;
    agent.stop();
}
