//! What the agent's kernel tests share: the API status over the socket, waiting for a sync, an
//! agent with the eBPF data plane over a private bpffs, and a probe through the uplink program
//! loaded against the agent's pinned maps (BPF_PROG_TEST_RUN).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use flowgate_agent::{AgentSettings, DataplaneSettings};
use flowgate_ebpf::{objects, test_run};
use flowgate_switch::frame;
use flowgate_wire::{build_frame, tcp, FrameSpec, IpPair, L4Spec};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// `GET /v1/status` on the agent's socket.
pub async fn status(socket: &Path) -> Value {
    let stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::builder().uri("/v1/status").header("host", "x").body(Full::new(Bytes::new())).unwrap();
    let resp = tx.send_request(req).await.unwrap();
    serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap()
}

/// Waits (10 s at most) until the status satisfies `f`; returns it.
pub async fn status_until(socket: &Path, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = status(socket).await;
        if f(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the agent has synced and holds every change.
pub async fn synced(socket: &Path) {
    status_until(socket, "a complete sync", |s| {
        s["sync"]["syncs"].as_u64().unwrap_or(0) >= 1 && s["pending"] == Value::Bool(false)
    })
    .await;
}

/// Starts an agent on the manifests in `dir/m` with the kernel data plane pinned under `bpffs`,
/// its socket at `dir/api.sock`; returns once it has synced.
pub async fn run_agent(dir: &Path, bpffs: &Path) -> flowgate_agent::RunningAgent {
    let mut settings = AgentSettings::for_manifests(dir.join("m"), dir.join("api.sock"));
    settings.bpffs = bpffs.to_path_buf();
    settings.dataplane = DataplaneSettings::Ebpf { uplink: None };
    settings.timing.min_interval = Duration::from_millis(10);
    settings.timing.max_backoff = Duration::from_millis(200);
    let agent = flowgate_agent::start(settings).await.unwrap();
    synced(&dir.join("api.sock")).await;
    agent
}

/// Runs a SYN from `client` to `dst` through the uplink program over the pinned maps; returns
/// (retval, destination after the switch).
pub fn probe(maps: &Path, client: &str, dst: &str) -> (u32, String) {
    let mut loaded = flowgate_ebpf::load(objects::UPLINK, Some(maps), &[]).unwrap();
    let prog = loaded.classifier("fg_uplink_ingress").unwrap();
    let (c, d): (std::net::SocketAddr, std::net::SocketAddr) = (client.parse().unwrap(), dst.parse().unwrap());
    let f = build_frame(&FrameSpec::new(
        IpPair::new(c.ip(), d.ip()).unwrap(),
        L4Spec::tcp(c.port(), d.port(), tcp::Flags::SYN),
    ));
    let r = test_run(prog, &f).unwrap();
    let out = frame::key_of(&r.output).map(|(k, _)| k.dst_socket().to_string()).unwrap_or_default();
    (r.retval, out)
}
