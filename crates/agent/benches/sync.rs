//! The agent's sync at scale: 10,000 Services with 100,000 endpoints (10 per EndpointSlice).
//!
//! 1. From scratch: the whole state arrives (as one manifest snapshot), is compiled and applied to
//!    the model data plane — the agent's first sync.
//! 2. 1,000 single EndpointSlice changes (an endpoint removed or added back), each timed from the
//!    moment the change reaches the tracker to the data plane holding it; p50/p99/max.
//! 3. This process's resident memory once the state is loaded.
//!
//! Run: `cargo bench -p flowgate-agent --bench sync` (FLOWGATE_BENCH_SERVICES overrides 10000).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use flowgate_agent::metrics::Metrics;
use flowgate_agent::sources::{Kind, Object, SourceEvent};
use flowgate_agent::sync::{Core, SyncStatus};
use flowgate_agent::tracker::Tracker;
use flowgate_cluster::{synthetic, ClusterState};
use flowgate_compiler::Compiler;
use flowgate_dataplane::{Dataplane, ModelDataplane};
use flowgate_switch::PolicyDelta;

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let services: usize = std::env::var("FLOWGATE_BENCH_SERVICES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let per = 10;
    let rss_before = rss_mib();
    let state = synthetic::cluster(services, per);
    let metrics = Metrics::new().unwrap();
    let model = ModelDataplane::new();
    let programmed = model.programmed();
    let dataplane: Arc<dyn Dataplane> = Arc::new(model);
    let mut core = Core {
        tracker: Tracker::new(Kind::ALL, ClusterState::default()),
        compiler: Compiler::new(Some("node-a".into())),
        dataplane,
        unapplied: PolicyDelta::default(),
        status: SyncStatus::default(),
        published: Default::default(),
    };

    let start = Instant::now();
    core.tracker.handle(SourceEvent::Snapshot(Box::new(state)));
    let tracked = start.elapsed();
    assert!(core.sync(false, &metrics), "first sync failed: {:?}", core.status.last_error);
    let full = start.elapsed();
    let rss_loaded = rss_mib();
    let backend_sets = programmed.read().unwrap().backend_sets().count();
    println!(
        "state: {services} Services x {per} endpoints ({} endpoints), {backend_sets} backend sets programmed",
        services * per
    );
    println!("from scratch: tracker {tracked:?}, compile + apply {:?}, total {full:?}", full - tracked);

    let mut times = Vec::with_capacity(1000);
    let mut entries = 0;
    for j in 0..1000usize {
        let i = (j * 7919) % services;
        let count = if (j / services).is_multiple_of(2) { per - 1 } else { per };
        let slice = synthetic::endpoint_slice(i, count, per);
        let t = Instant::now();
        core.tracker.handle(SourceEvent::Apply(Object::EndpointSlice(Box::new(slice))));
        assert!(core.sync(false, &metrics));
        times.push(t.elapsed());
        entries += core.status.last_entries;
    }
    times.sort();
    println!(
        "1000 EndpointSlice changes, change -> data plane: p50 {:?}, p99 {:?}, max {:?} ({:.1} entries written per change)",
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        times[times.len() - 1],
        entries as f64 / 1000.0
    );
    // Check the last change is really in the data plane.
    let p = programmed.read().unwrap();
    let probe = flowgate_switch::FlowKey::new(
        "203.0.113.7:40000".parse().unwrap(),
        std::net::SocketAddr::new(std::net::IpAddr::V4(synthetic::cluster_ip((999 * 7919) % services)), 80),
        flowgate_switch::Proto::TCP,
    );
    println!(
        "last changed service now has {} backends in the data plane",
        flowgate_switch::trace(&p, &probe).dnat.len()
    );
    println!("resident memory: {rss_loaded:.0} MiB with the state loaded ({rss_before:.0} MiB before)");
}
