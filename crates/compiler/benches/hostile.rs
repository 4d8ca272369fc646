//! Compile time of big or hostile objects, each against a plain object of the same kind compiled
//! in the same run: a NetworkPolicy ipBlock with 10,000 `except` entries (vs none), and a Service
//! with 3,000 externalIPs × 3,000 ports (vs one externalIP and one port; past the limit its
//! external addresses are refused, so it costs its ports).
//!
//! `cargo bench -p flowgate-compiler --bench hostile`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use flowgate_cluster::{load_str, ClusterState};

const HEAD: &str = "apiVersion: v1\nkind: Node\nmetadata: {name: node-a}\nstatus: {addresses: [{type: InternalIP, address: 192.168.0.2}]}\n---\napiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nclusterCIDR: 10.0.0.0/8\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: default, labels: {app: web}}\nspec: {nodeName: node-a, containers: [{name: c, image: i}]}\nstatus: {podIP: 10.1.0.5, podIPs: [{ip: 10.1.0.5}]}\n";

fn policy(excepts: usize) -> ClusterState {
    // A fixed spread of /32 exceptions over the block.
    let mut x: u32 = 0x9e37_79b9;
    let except: Vec<String> = (0..excepts)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            format!("{}/32", std::net::Ipv4Addr::from(0x0a00_0000 | (x & 0x00ff_ffff)))
        })
        .collect();
    let text = format!(
        "{HEAD}---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: big, namespace: default}}\nspec:\n  podSelector: {{}}\n  ingress:\n  - from:\n    - ipBlock:\n        cidr: 10.0.0.0/8\n        except: [{}]\n",
        except.join(", ")
    );
    load_str(Path::new("policy.yaml"), &text).unwrap().state
}

fn service(ips: usize, ports: usize) -> ClusterState {
    let ips: Vec<String> = (0..ips).map(|i| format!("203.0.{}.{}", i / 256, i % 256)).collect();
    let ports: Vec<String> = (0..ports).map(|i| format!("{{name: p{i}, port: {}}}", 1000 + i)).collect();
    let text = format!(
        "{HEAD}---\napiVersion: v1\nkind: Service\nmetadata: {{name: huge, namespace: default}}\nspec:\n  clusterIP: 172.30.0.10\n  externalIPs: [{}]\n  ports: [{}]\n",
        ips.join(", "),
        ports.join(", ")
    );
    load_str(Path::new("service.yaml"), &text).unwrap().state
}

/// Median of 5 compiles.
fn median(state: &ClusterState) -> Duration {
    let mut runs: Vec<Duration> = (0..5)
        .map(|_| {
            let t = Instant::now();
            black_box(flowgate_compiler::compile(state, None).unwrap());
            t.elapsed()
        })
        .collect();
    runs.sort();
    runs[2]
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("hostile");
    group.sample_size(10).measurement_time(Duration::from_secs(5));
    let cases = [
        ("ipBlock with 10,000 excepts", policy(10_000), policy(0)),
        ("Service with 3,000 externalIPs x 3,000 ports", service(3_000, 3_000), service(1, 1)),
    ];
    let mut summary = Vec::new();
    for (name, hostile, plain) in &cases {
        group.bench_function(*name, |b| b.iter(|| flowgate_compiler::compile(black_box(hostile), None).unwrap()));
        let (h, p) = (median(hostile), median(plain));
        summary.push(format!(
            "  {name}: {:.1} ms (plain object of the kind: {:.0} µs, {:.0}x)",
            h.as_secs_f64() * 1e3,
            p.as_secs_f64() * 1e6,
            h.as_secs_f64() / p.as_secs_f64()
        ));
    }
    group.finish();
    println!("\nsummary (median of 5 compiles, same process):");
    for line in summary {
        println!("{line}");
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
