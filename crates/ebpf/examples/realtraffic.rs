//! The flowgate variant of `bench/real-traffic.sh`: compiles the synthetic cluster of
//! `flowgate_cluster::synthetic` (the same Services `bench/gen_nft.py` and `bench/gen_iptables.py`
//! write as rulesets), programs it with the eBPF backend, and attaches `fg_uplink_ingress` (TCX
//! ingress on the node's uplink) and `fg_from_endpoint` (TCX ingress on each backend pod's
//! host-side veth, bound to its endpoint as the agent does) inside an existing network namespace
//! that the script made. It then holds the links until the stop file appears (TCX links vanish
//! with the process that made them), prints the programs' counters to stderr, and exits.
//!
//! ```text
//! realtraffic --netns NODE_NS --uplink IF --node-ip IP --services N --per E --target T \
//!             --pod HOSTIF=PODNS [--pod HOSTIF=PODNS] --stop-file PATH [--local-delivery Routed]
//! ```
//!
//! `--local-delivery Routed` loads the programs with direct delivery to pods off (every packet
//! through the node's IP stack, as the agent's `localDelivery: Routed`); the default is `Direct`.
//!
//! Changes to the synthetic cluster, mirrored by the script's rulesets: the node's address is
//! `--node-ip`; Service `T`'s endpoints are all on this node (they are the real pods, one per
//! `--pod`, addressed `synthetic::endpoint_ip(T, e, per)`), and Service `T` has a second port,
//! `udp` 80/UDP -> 8080, for the packet-rate measurement.
//!
//! On stdout, one line once everything is attached:
//! `ready compile_s=… load_s=… program_s=… attach_s=…`.

#![allow(unsafe_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use aya::maps::{MapData, PerCpuArray};
use flowgate_dataplane::Dataplane;
use flowgate_ebpf::backend::{EbpfDataplane, KernelMaps};
use flowgate_ebpf::{maps, objects, Direction};
use flowgate_switch::PolicyDelta;

fn die(msg: &str) -> ! {
    eprintln!("realtraffic: {msg}");
    std::process::exit(2)
}

/// Moves the calling thread into the named namespace (`/run/netns/NAME`) until the guard drops.
struct InNetns {
    previous: File,
}

impl InNetns {
    fn enter(name: &str) -> InNetns {
        let previous = File::open("/proc/thread-self/ns/net").unwrap_or_else(|e| die(&format!("own netns: {e}")));
        let target = File::open(Path::new("/run/netns").join(name))
            .unwrap_or_else(|e| die(&format!("network namespace {name}: {e}")));
        // SAFETY: a valid fd of a network namespace; changes only this thread's namespace.
        if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            die(&format!("setns {name}: {}", std::io::Error::last_os_error()));
        }
        InNetns { previous }
    }
}

impl Drop for InNetns {
    fn drop(&mut self) {
        // SAFETY: as in `enter`.
        if unsafe { libc::setns(self.previous.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            eprintln!("realtraffic: cannot return to the original network namespace");
            std::process::abort();
        }
    }
}

/// `ip -n NS -o link show dev IF` -> (ifindex, MAC).
fn link(ns: &str, dev: &str) -> (u32, [u8; 6]) {
    let out = Command::new("ip").args(["-n", ns, "-o", "link", "show", "dev", dev]).output().unwrap();
    if !out.status.success() {
        die(&format!("ip -n {ns} link show dev {dev}: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let index = text.split(':').next().and_then(|n| n.trim().parse().ok()).unwrap_or_else(|| die(&text));
    let mut words = text.split_whitespace();
    words.find(|w| *w == "link/ether").unwrap_or_else(|| die(&text));
    let mut mac = [0u8; 6];
    let mut parts = words.next().unwrap_or_else(|| die(&text)).split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next().unwrap_or_else(|| die(&text)), 16).unwrap_or_else(|_| die(&text));
    }
    (index, mac)
}

fn main() {
    let mut options: HashMap<String, Vec<String>> = HashMap::new();
    let mut raw = std::env::args().skip(1);
    while let Some(a) = raw.next() {
        let key = a.strip_prefix("--").unwrap_or_else(|| die(&format!("unexpected argument {a}")));
        let value = raw.next().unwrap_or_else(|| die(&format!("--{key} needs a value")));
        options.entry(key.to_owned()).or_default().push(value);
    }
    let one = |k: &str| -> String {
        options.get(k).and_then(|v| v.first()).cloned().unwrap_or_else(|| die(&format!("--{k} is required")))
    };
    let num = |k: &str| -> usize { one(k).parse().unwrap_or_else(|_| die(&format!("--{k}: not a number"))) };
    let netns = one("netns");
    let uplink = one("uplink");
    let node_ip = one("node-ip");
    let services = num("services");
    let per = num("per");
    let target = num("target");
    let stop_file = PathBuf::from(one("stop-file"));
    let direct = match options.get("local-delivery").and_then(|v| v.first()).map(String::as_str) {
        None | Some("Direct") => true,
        Some("Routed") => false,
        Some(other) => die(&format!("--local-delivery: {other:?} is not Direct or Routed")),
    };
    let pods: Vec<(String, String)> = options
        .get("pod")
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|p| {
            let (host_if, pod_ns) = p.split_once('=').unwrap_or_else(|| die("--pod HOSTIF=PODNS"));
            (host_if.to_owned(), pod_ns.to_owned())
        })
        .collect();
    if pods.is_empty() || pods.len() > per || target >= services {
        die("need 1..=per --pod, and --target below --services");
    }

    // The state: the synthetic cluster, adapted as the module doc says.
    let t = Instant::now();
    let mut state = flowgate_cluster::synthetic::cluster(services, per);
    let node = state.nodes.get_mut("node-a").unwrap();
    node.status.as_mut().unwrap().addresses.as_mut().unwrap()[0].address = node_ip.clone();
    let key = |name: String| flowgate_cluster::state::ObjectKey::new(flowgate_cluster::synthetic::NAMESPACE, name);
    let svc = state.services.get_mut(&key(format!("svc-{target}"))).unwrap();
    let ports = svc.spec.as_mut().unwrap().ports.as_mut().unwrap();
    if ports[0].node_port.is_some() {
        die("the target Service must be a ClusterIP Service (not a multiple of 4)");
    }
    let mut udp = ports[0].clone();
    udp.name = Some("udp".into());
    udp.protocol = Some("UDP".into());
    ports.push(udp);
    let slice = state.endpoint_slices.get_mut(&key(format!("svc-{target}-abcde"))).unwrap();
    slice.endpoints.truncate(pods.len());
    for ep in &mut slice.endpoints {
        ep.node_name = Some("node-a".into());
    }
    let slice_ports = slice.ports.as_mut().unwrap();
    let mut udp = slice_ports[0].clone();
    udp.name = Some("udp".into());
    udp.protocol = Some("UDP".into());
    slice_ports.push(udp);
    // The real pods, as the agent would see them (their Pod objects make them endpoints of this
    // node's switch).
    let pod_yaml: String = (0..pods.len())
        .map(|e| {
            let ip = flowgate_cluster::synthetic::endpoint_ip(target, e, per);
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: backend-{e}, namespace: {ns}}}\n\
                 spec:\n  nodeName: node-a\n  containers:\n  - {{name: main, image: trafficgen}}\n\
                 status:\n  podIP: {ip}\n  podIPs:\n  - {{ip: {ip}}}\n---\n",
                ns = flowgate_cluster::synthetic::NAMESPACE
            )
        })
        .collect();
    let extra = flowgate_cluster::load_str(Path::new("realtraffic-pods.yaml"), &pod_yaml)
        .unwrap_or_else(|e| die(&format!("pod manifests: {e}")));
    state.pods.extend(extra.state.pods);
    let policy = flowgate_compiler::compile(&state, Some("node-a")).unwrap_or_else(|e| die(&e.to_string())).policy;
    let compile_s = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let mut loaded = flowgate_ebpf::load_all(
        &[objects::UPLINK, objects::ENDPOINT],
        None,
        &[("FG_DIRECT_DELIVERY", flowgate_ebpf::GlobalValue::U8(u8::from(direct)))],
    )
    .unwrap_or_else(|e| die(&format!("loading the programs: {e:?}")));
    for (l, prog) in loaded.iter_mut().zip(["fg_uplink_ingress", "fg_from_endpoint"]) {
        l.classifier(prog).unwrap_or_else(|e| die(&format!("verifying {prog}: {e:?}")));
    }
    let load_s = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let dataplane = EbpfDataplane::new(KernelMaps::take(&mut loaded[0].ebpf).unwrap());
    dataplane.apply(&policy, &PolicyDelta::full()).unwrap_or_else(|e| die(&format!("programming: {e}")));
    for (e, (host_if, pod_ns)) in pods.iter().enumerate() {
        let ip = flowgate_cluster::synthetic::endpoint_ip(target, e, per);
        let port = policy.endpoint_for(ip.into()).unwrap_or_else(|| die(&format!("{ip} is not a local endpoint")));
        let (ifindex, _) = link(&netns, host_if);
        let (_, mac) = link(pod_ns, "eth0");
        dataplane.bind_endpoint(ifindex, port, Some(mac)).unwrap_or_else(|e| die(&e.to_string()));
    }
    let program_s = t.elapsed().as_secs_f64();
    let counters: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(loaded[1].ebpf.take_map("fg_counters").unwrap()).unwrap();

    let t = Instant::now();
    let mut links = Vec::new();
    {
        let _in = InNetns::enter(&netns);
        let (up, ep) = loaded.split_at_mut(1);
        links.push(
            up[0]
                .attach_tcx("fg_uplink_ingress", &uplink, Direction::Ingress)
                .unwrap_or_else(|e| die(&format!("attach {uplink}: {e:?}"))),
        );
        for (host_if, _) in &pods {
            links.push(
                ep[0]
                    .attach_tcx("fg_from_endpoint", host_if, Direction::Ingress)
                    .unwrap_or_else(|e| die(&format!("attach {host_if}: {e:?}"))),
            );
        }
    }
    let attach_s = t.elapsed().as_secs_f64();
    println!("ready compile_s={compile_s:.3} load_s={load_s:.3} program_s={program_s:.3} attach_s={attach_s:.3}");
    eprintln!(
        "realtraffic: {services} Services x {per} endpoints compiled in {compile_s:.3} s, programs loaded and \
         verified in {load_s:.3} s, maps programmed in {program_s:.3} s, attached in {attach_s:.3} s"
    );

    while !stop_file.exists() {
        std::thread::sleep(Duration::from_millis(50));
    }
    let names: [(u32, &str); 13] = [
        (0, "allowed"),
        (1, "no-endpoints"),
        (2, "no-local-endpoints"),
        (3, "source-range-denied"),
        (4, "undefined-service-port"),
        (5, "unallocated-service-ip"),
        (6, "spoofed"),
        (7, "policy-denied"),
        (8, "malformed"),
        (9, "nat-exhausted"),
        (maps::COUNTER_FLOW_HIT, "flow-hit"),
        (maps::COUNTER_FIRST_PACKET, "first-packet"),
        (maps::COUNTER_DELIVERED, "delivered-direct"),
    ];
    let summary: Vec<String> = names
        .iter()
        .filter_map(|(i, name)| {
            let v: u64 = counters.get(i, 0).map(|v| v.iter().sum()).unwrap_or(0);
            (v != 0).then(|| format!("{name}={v}"))
        })
        .collect();
    let delivery = if direct { "Direct" } else { "Routed" };
    eprintln!("realtraffic ({delivery}): program counters: {}", summary.join(" "));
    // The flow tables under pressure (flows promoted, expired, evicted, ...; the entry gauges are
    // the agent's sweep's, which this loader does not run).
    let flows: Vec<String> = dataplane
        .counters()
        .into_iter()
        .filter(|(name, v)| *v != 0 && name.starts_with("flows_"))
        .map(|(name, v)| format!("{name}={v}"))
        .collect();
    eprintln!("realtraffic ({delivery}): flow tables: {}", if flows.is_empty() { "-".into() } else { flows.join(" ") });
    for line in program_run_times() {
        eprintln!("realtraffic ({delivery}): {line}");
    }
    drop(links);
}

/// What the kernel counted for each program this process holds, from its file descriptors'
/// fdinfo: runs and nanoseconds spent in them (counted only while kernel.bpf_stats_enabled is 1).
fn program_run_times() -> Vec<String> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/fdinfo") else { return out };
    for entry in dir.flatten() {
        let Ok(info) = std::fs::read_to_string(entry.path()) else { continue };
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim_start_matches(':').trim().parse::<u64>().ok()))
        };
        if let (Some(id), Some(ns), Some(runs)) = (field("prog_id"), field("run_time_ns"), field("run_cnt")) {
            if runs > 0 {
                out.push(format!("program id {id}: {runs} runs, {:.0} ns per run", ns as f64 / runs as f64));
            }
        }
    }
    out
}
