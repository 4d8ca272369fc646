//! The switch model at 10, 1,000 and 10,000 Services × 10 endpoints, compiled from real
//! Kubernetes objects: the first packet of a connection (layer walk, backend choice, flow insert)
//! and a packet of an established connection (flow-table hit). The baseline each size is compared
//! with is the 10-Service state, measured in the same run; the ratios are printed at the end.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use flowgate_cluster::{load_str, ClusterState};
use flowgate_switch::{FlowKey, PortId, Proto, Switch};

/// A state with `services` ClusterIP Services (172.30.0.0/16 upward) of 10 endpoints each.
pub fn synthetic_state(services: usize) -> ClusterState {
    let mut docs = vec![
        serde_json::json!({
            "apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.2"}]}
        }),
        serde_json::json!({
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
            "clusterCIDR": "10.0.0.0/8"
        }),
    ];
    for i in 0..services {
        let vip = Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 30, 0, 0)) + i as u32 + 1);
        docs.push(serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": format!("svc-{i}"), "namespace": "bench"},
            "spec": {"clusterIP": vip.to_string(), "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
        }));
        let endpoints: Vec<_> = (0..10)
            .map(|e| {
                let a = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 64, 0, 0)) + (i * 10 + e) as u32);
                serde_json::json!({"addresses": [a.to_string()], "nodeName": "node-b", "conditions": {"ready": true}})
            })
            .collect();
        docs.push(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("svc-{i}-abc"), "namespace": "bench", "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": endpoints
        }));
    }
    let text = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": docs}).to_string();
    load_str(std::path::Path::new("synthetic.json"), &text).expect("synthetic state loads").state
}

fn vip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 30, 0, 0)) + i as u32 + 1))
}

fn bench(c: &mut Criterion) {
    let mut first_ns = Vec::new();
    let mut cached_ns = Vec::new();
    let mut group = c.benchmark_group("switch");
    group.measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    for services in [10usize, 1_000, 10_000] {
        let state = synthetic_state(services);
        let compiled = flowgate_compiler::compile(&state, Some("node-a")).expect("compiles");
        let policy = Arc::new(compiled.policy);

        // First packet: a new connection each iteration, to a Service spread over the whole state.
        let mut sw = Switch::new(Arc::clone(&policy));
        let mut n: u64 = 0;
        let mut first = |iters: u64| {
            let mut total = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                let batch = (iters - done).min(100_000);
                sw.clear_flows();
                let start = Instant::now();
                for _ in 0..batch {
                    n += 1;
                    let svc = (n.wrapping_mul(2654435761) % services as u64) as usize;
                    let src = SocketAddr::new(
                        IpAddr::V4(Ipv4Addr::from(0xcb00_7100 + (n >> 16) as u32)),
                        (n & 0xffff) as u16,
                    );
                    let key = FlowKey::new(src, SocketAddr::new(vip(svc), 80), Proto::TCP);
                    black_box(sw.process(PortId::UPLINK, black_box(key), 0));
                }
                total += start.elapsed();
                done += batch;
            }
            total
        };
        group.bench_function(BenchmarkId::new("first_packet", services), |b| b.iter_custom(&mut first));
        let est = measure(&mut first);
        first_ns.push((services, est));

        // Established: the same connection's packets hit the flow table.
        let mut sw = Switch::new(Arc::clone(&policy));
        let key =
            FlowKey::new("203.0.113.7:40000".parse().unwrap(), SocketAddr::new(vip(services / 2), 80), Proto::TCP);
        sw.process(PortId::UPLINK, key, 0);
        let mut cached = |iters: u64| {
            let start = Instant::now();
            for _ in 0..iters {
                black_box(sw.process(PortId::UPLINK, black_box(key), 0));
            }
            start.elapsed()
        };
        group.bench_function(BenchmarkId::new("cached_packet", services), |b| b.iter_custom(&mut cached));
        cached_ns.push((services, measure(&mut cached)));
    }
    group.finish();
    println!("\nsummary (median of 5 runs of 200k packets, same process):");
    let (_, base_first) = first_ns[0];
    let (_, base_cached) = cached_ns[0];
    for ((s, f), (_, c)) in first_ns.iter().zip(&cached_ns) {
        println!(
            "  {s:>6} services x 10 endpoints: first packet {f:>7.1} ns ({:.2}x of 10 services), cached {c:>5.1} ns = {:.1} Mpps ({:.2}x)",
            f / base_first,
            1000.0 / c,
            c / base_cached
        );
    }
}

/// Median ns/packet over 5 runs of 200k packets.
fn measure(f: &mut impl FnMut(u64) -> Duration) -> f64 {
    let mut runs: Vec<f64> = (0..5).map(|_| f(200_000).as_nanos() as f64 / 200_000.0).collect();
    runs.sort_by(|a, b| a.total_cmp(b));
    runs[2]
}

criterion_group!(benches, bench);
criterion_main!(benches);
