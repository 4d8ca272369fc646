//! NetworkPolicy costs, in two parts (run as root: `cargo bench -p flowgate-ebpf --bench policy`).
//!
//! 1. **Compiling and programming.** 1,000 pods on the node in 10 namespaces and 1,000 policies
//!    (each selects a fifth of its namespace's pods by `tier` and allows, on its own port, the pods
//!    of one `app` from namespaces labelled `team`, plus an ipBlock): the full compile (policy
//!    compiler included), programming the kernel maps from empty, and then one label change on a
//!    pod that many policies select and name as a peer — the incremental compile and the kernel
//!    update, with the number of map entries written. Times are the median of several runs.
//! 2. **Per packet.** BPF_PROG_TEST_RUN of the uplink program for a client outside reaching a pod
//!    whose ingress ACL has 0 (no policy), 100 and 10,000 rules (one policy, each rule an ipBlock
//!    /32 on port 80, and a last rule allowing the clients' /16): a connection's first packet (the
//!    flow-table miss, the walk, the two ACL lookups, two flow inserts) and a packet of an
//!    established connection (flow hit). Averages over 20,000 distinct packets; ratios against 0
//!    rules, measured in the same run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use flowgate_cluster::ObjectKey;
use flowgate_compiler::{Changes, Compiler};
use flowgate_dataplane::Dataplane;
use flowgate_ebpf::backend::{EbpfDataplane, KernelMaps};
use flowgate_ebpf::{objects, test_run};
use flowgate_wire::{build_frame, tcp, FrameSpec, IpPair, L4Spec};
use serde_json::{json, Value};

const PACKETS: u32 = 20_000;
const PODS: usize = 1_000;
const POLICIES: usize = 1_000;
const NAMESPACES: usize = 10;
const RUNS: usize = 5;

fn node() -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.2"}]}})
}

fn pod(i: usize, app: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("pod-{i}"), "namespace": format!("ns-{}", i % NAMESPACES),
                     "labels": {"app": app, "tier": format!("t{}", (i / NAMESPACES) % 5)}},
        "spec": {"nodeName": "node-a", "containers": [{"name": "c", "image": "i"}]},
        "status": {"podIP": format!("10.0.{}.{}", 1 + i / 250, 1 + i % 250)}})
}

fn load(items: Vec<Value>) -> flowgate_cluster::ClusterState {
    let text = json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string();
    flowgate_cluster::load_str(std::path::Path::new("bench.json"), &text).unwrap().state
}

/// Part 1's cluster; `relabel` gives pod 0 another app label.
fn big_cluster(relabel: bool) -> flowgate_cluster::ClusterState {
    let mut items = vec![node()];
    for n in 0..NAMESPACES {
        items.push(json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": format!("ns-{n}"), "labels": {"team": format!("team-{}", n % 3)}}}));
    }
    for i in 0..PODS {
        let app = if i == 0 && relabel { "app-relabeled".to_string() } else { format!("app-{}", i % 50) };
        items.push(pod(i, &app));
    }
    for k in 0..POLICIES {
        items.push(json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": format!("np-{k}"), "namespace": format!("ns-{}", k % NAMESPACES)},
            "spec": {"podSelector": {"matchLabels": {"tier": format!("t{}", (k / NAMESPACES) % 5)}},
                "ingress": [{"from": [
                    {"namespaceSelector": {"matchLabels": {"team": format!("team-{}", k % 3)}},
                     "podSelector": {"matchLabels": {"app": format!("app-{}", (k / 10) % 50)}}},
                    {"ipBlock": {"cidr": format!("172.16.{}.0/24", k % 256)}}],
                    "ports": [{"port": 8000 + (k % 100), "protocol": "TCP"}]}]}}));
    }
    load(items)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn part1() {
    let state = big_cluster(false);
    let relabeled = big_cluster(true);
    let key = ObjectKey::new("ns-0", "pod-0");
    let selecting = relabeled
        .network_policies
        .values()
        .filter(|np| {
            let sel = np.spec.as_ref().and_then(|s| s.pod_selector.as_ref()).unwrap();
            np.metadata.namespace.as_deref() == Some("ns-0")
                && flowgate_compiler::policy::selects(sel, relabeled.pods[&key].metadata.labels.as_ref().unwrap())
        })
        .count();
    let (mut compile, mut program, mut update, mut apply) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut full_entries, mut change_entries, mut acls, mut rules) = (0, 0, 0, 0);
    for _ in 0..RUNS {
        let mut compiler = Compiler::new(Some("node-a".to_owned()));
        let t = Instant::now();
        let delta = compiler.compile_full(&state).unwrap();
        compile.push(t.elapsed());
        let policy = compiler.policy().unwrap();
        acls = policy.acls.len();
        rules = policy.acls.values().map(|(e, i)| e.rule_count() + i.rule_count()).sum::<usize>();
        let mut loaded = flowgate_ebpf::load(objects::UPLINK, None, &[]).unwrap();
        let dp = EbpfDataplane::new(KernelMaps::take(&mut loaded.ebpf).unwrap());
        let t = Instant::now();
        full_entries = dp.apply(policy, &delta).unwrap().entries;
        program.push(t.elapsed());
        // One label change, there and back.
        for (from, to) in [(&state, &relabeled), (&relabeled, &state)] {
            let _ = from;
            let changes = Changes { pods: [key.clone()].into_iter().collect(), ..Changes::default() };
            let t = Instant::now();
            let delta = compiler.update(to, &changes).unwrap();
            update.push(t.elapsed());
            let t = Instant::now();
            change_entries = dp.apply(compiler.policy().unwrap(), &delta).unwrap().entries;
            apply.push(t.elapsed());
        }
    }
    println!(
        "{PODS} pods, {POLICIES} policies: {acls} endpoints with ACLs, {rules} ACL rules in the model; pod-0 is selected by {selecting} policies"
    );
    println!("  full compile (policy compiler included)   {:?}", median(compile));
    println!("  program the kernel from empty             {:?} ({full_entries} map entries)", median(program));
    println!(
        "  one label change: incremental compile     {:?}; kernel update {:?} ({change_entries} map entries)",
        median(update),
        median(apply)
    );
}

fn frame(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    build_frame(&FrameSpec::new(
        IpPair::new(src.ip(), dst.ip()).unwrap(),
        L4Spec::tcp(src.port(), dst.port(), tcp::Flags::SYN),
    ))
}

/// Part 2's cluster: pod `web` (10.0.1.10) with an ingress ACL of `rules` rules (none: no policy).
fn acl_cluster(rules: usize) -> flowgate_cluster::ClusterState {
    let mut items = vec![node(), pod(9, "web")];
    items[1]["status"]["podIP"] = json!("10.0.1.10");
    if rules > 0 {
        let mut ingress: Vec<Value> = (0..rules - 1)
            .map(|i| {
                json!({"from": [{"ipBlock": {"cidr": format!("172.16.{}.{}/32", i / 250, 1 + i % 250)}}],
                       "ports": [{"port": 80 + (i % 7) as u16}]})
            })
            .collect();
        ingress.push(json!({"from": [{"ipBlock": {"cidr": "203.0.0.0/16"}}], "ports": [{"port": 80}]}));
        items.push(json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "web", "namespace": "ns-9"},
            "spec": {"podSelector": {}, "ingress": ingress}}));
    }
    load(items)
}

fn part2() {
    let mut rows = Vec::new();
    for rules in [0usize, 100, 10_000] {
        let state = acl_cluster(rules);
        let mut compiler = Compiler::new(Some("node-a".to_owned()));
        let delta = compiler.compile_full(&state).unwrap();
        let policy = compiler.policy().unwrap();
        let model_rules: usize = policy.acls.values().map(|(_, i)| i.rule_count()).sum();
        let mut loaded = flowgate_ebpf::load(objects::UPLINK, None, &[]).unwrap();
        let dp = EbpfDataplane::new(KernelMaps::take(&mut loaded.ebpf).unwrap());
        let entries = dp.apply(policy, &delta).unwrap().entries;
        let prog = loaded.classifier("fg_uplink_ingress").unwrap();
        let frames: Vec<Vec<u8>> = (0..PACKETS)
            .map(|n| {
                let client =
                    SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0xcb00_0000 + (n >> 8))), 1024 + (n & 0xff) as u16);
                frame(client, "10.0.1.10:80".parse().unwrap())
            })
            .collect();
        let mut first = 0u64;
        for f in &frames {
            let r = test_run(prog, f).unwrap();
            assert_eq!(r.retval, 0, "{rules} rules: the client must be allowed");
            first += u64::from(r.duration_ns);
        }
        let mut cached = 0u64;
        for f in &frames {
            cached += u64::from(test_run(prog, f).unwrap().duration_ns);
        }
        // A client the ACL denies (no rule names it): its first packets.
        let mut denied = 0u64;
        if rules > 0 {
            for n in 0..PACKETS {
                let f = frame(
                    SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0xc633_6400 + (n >> 8))), 1024 + (n & 0xff) as u16),
                    "10.0.1.10:80".parse().unwrap(),
                );
                let r = test_run(prog, &f).unwrap();
                assert_eq!(r.retval, 2, "{rules} rules: the client must be dropped");
                denied += u64::from(r.duration_ns);
            }
        }
        let per = |total: u64| total as f64 / f64::from(PACKETS);
        rows.push((rules, model_rules, entries, per(first), per(cached), per(denied)));
    }
    let (_, _, _, f0, c0, _) = rows[0];
    println!("ACL rules (model rules)  map entries   first packet, allowed   established        first packet, denied");
    for (rules, model, entries, f, c, d) in rows {
        println!(
            "{rules:>9} ({model:>6})    {entries:>9}    {f:>7.0} ns ({:.2}x)      {c:>6.0} ns ({:.2}x)   {}",
            f / f0,
            c / c0,
            if d > 0.0 { format!("{d:>6.0} ns") } else { "-".into() }
        );
    }
}

fn main() {
    if !flowgate_ebpf::privileged_test("policy benchmark") {
        return;
    }
    part1();
    part2();
}
