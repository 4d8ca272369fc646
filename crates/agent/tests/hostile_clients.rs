//! The agent's TCP listeners under hostile clients (issue 12, 3): thousands of idle connections
//! neither exhaust the agent's descriptors nor stall it (the unix API and a fresh healthz request
//! answer at once, and the idle connections are closed at the header timeout); connections above
//! a listener's limit are closed at once; a client sending half a header is cut off.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use flowgate_agent::listeners::ListenerLimits;
use flowgate_agent::AgentSettings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CLUSTER: &str = "apiVersion: v1\nkind: Node\nmetadata: {name: node-a}\nstatus: {addresses: [{type: InternalIP, address: 192.168.0.2}]}\n";

async fn agent(dir: &Path, limits: ListenerLimits) -> flowgate_agent::RunningAgent {
    let manifests = dir.join("m");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(manifests.join("cluster.yaml"), CLUSTER).unwrap();
    let mut settings = AgentSettings::for_manifests(&manifests, dir.join("api.sock"));
    settings.healthz_bind = Some("127.0.0.1:0".parse().unwrap());
    settings.timing.min_interval = Duration::from_millis(10);
    settings.listener_limits = limits;
    let agent = flowgate_agent::start(settings).await.unwrap();
    support::synced(&agent.socket).await;
    agent
}

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let code = buf.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, buf)
}

/// Whether the server closed the connection (EOF or reset) within `wait`.
async fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    let mut b = [0u8; 64];
    match tokio::time::timeout(wait, s.read(&mut b)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) => panic!("the agent sent something to a client that asked nothing"),
        Err(_) => false,
    }
}

/// The tests of this file one at a time: one counts the process's descriptors.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// The agent and its clients share this process: room for both sides of every connection.
fn raise_fd_limit(want: u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let soft: u64 = line.split_whitespace().nth(3).unwrap().parse().unwrap_or(u64::MAX);
    if soft < want {
        let pid = std::process::id().to_string();
        let status =
            std::process::Command::new("prlimit").args(["--pid", &pid, &format!("--nofile={want}:")]).status().unwrap();
        assert!(status.success(), "cannot raise RLIMIT_NOFILE to {want}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_neither_exhaust_descriptors_nor_stall_the_agent() {
    let _serial = serial().await;
    raise_fd_limit(16384);
    let dir = tempfile::tempdir().unwrap();
    let limits = ListenerLimits { header_read_timeout: Duration::from_secs(2), ..ListenerLimits::default() };
    let agent = agent(dir.path(), limits).await;
    let healthz = agent.healthz.unwrap();
    let baseline = open_fds();

    let mut idle = Vec::new();
    for _ in 0..2000 {
        idle.push(TcpStream::connect(healthz).await.unwrap());
    }
    let opened = Instant::now();
    // The unix API and a fresh healthz request answer at once, 2,000 idle connections or not.
    let t = Instant::now();
    let status = support::status(&agent.socket).await;
    assert_eq!(status["ready"], true, "{status}");
    assert!(t.elapsed() < Duration::from_secs(1), "unix API took {:?}", t.elapsed());
    let t = Instant::now();
    let (code, text) = get(healthz, "/healthz").await;
    assert_eq!(code, 200, "{text}");
    assert!(t.elapsed() < Duration::from_secs(1), "healthz took {:?}", t.elapsed());
    assert!(opened.elapsed() < limits.header_read_timeout, "the checks ran before the header timeout");

    // Every idle connection is closed at the header timeout.
    let deadline = limits.header_read_timeout + Duration::from_secs(5);
    let results = futures::future::join_all(idle.iter_mut().map(|s| closed_within(s, deadline))).await;
    let open = results.iter().filter(|c| !**c).count();
    assert_eq!(open, 0, "{open} of 2000 idle connections still open {deadline:?} after they were made");
    drop(idle);
    // And the agent's descriptors are back where they were.
    let settle = Instant::now() + Duration::from_secs(2);
    while open_fds() > baseline + 8 && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(open_fds() <= baseline + 8, "descriptors: {} before, {} after", baseline, open_fds());
    agent.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_above_the_limit_are_closed_at_once() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let limits = ListenerLimits { max_connections: 100, ..ListenerLimits::default() };
    let agent = agent(dir.path(), limits).await;
    let healthz = agent.healthz.unwrap();
    let mut held = Vec::new();
    for _ in 0..100 {
        held.push(TcpStream::connect(healthz).await.unwrap());
    }
    // Let the agent accept them all before the excess arrives.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut excess = Vec::new();
    for _ in 0..50 {
        excess.push(TcpStream::connect(healthz).await.unwrap());
    }
    let closed = futures::future::join_all(excess.iter_mut().map(|s| closed_within(s, Duration::from_secs(1)))).await;
    assert!(closed.iter().all(|c| *c), "connections above the limit are closed at once: {closed:?}");
    let still = futures::future::join_all(held.iter_mut().map(|s| closed_within(s, Duration::from_millis(300)))).await;
    assert!(still.iter().all(|c| !*c), "the first 100 are held");
    // The unix API is not a TCP listener: unaffected.
    assert_eq!(support::status(&agent.socket).await["ready"], true);
    // Room again once clients leave.
    held.truncate(10);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(get(healthz, "/healthz").await.0, 200);
    agent.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_header_is_cut_off_at_the_header_timeout() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let limits = ListenerLimits { header_read_timeout: Duration::from_secs(1), ..ListenerLimits::default() };
    let agent = agent(dir.path(), limits).await;
    let healthz = agent.healthz.unwrap();
    let mut s = TcpStream::connect(healthz).await.unwrap();
    let started = Instant::now();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    // Slowloris: a header byte now and then, never the end of the headers.
    let mut cut = false;
    while started.elapsed() < Duration::from_secs(6) {
        if s.write_all(b"X").await.is_err() {
            cut = true;
            break;
        }
        let mut b = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(200), s.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                cut = true;
                break;
            }
            // hyper may answer 408 before closing.
            Ok(Ok(_)) => {}
            Err(_) => {}
        }
    }
    let after = started.elapsed();
    assert!(cut, "a client trickling a header was never cut off");
    assert!(after >= Duration::from_millis(900) && after < Duration::from_secs(3), "cut off after {after:?}");
    assert_eq!(get(healthz, "/healthz").await.0, 200);
    agent.stop();
}
