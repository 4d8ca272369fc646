//! Per-packet cost of the kernel switch with BPF_PROG_TEST_RUN at 100, 1,000, 10,000 and 100,000
//! Services (4 endpoints each, every fourth a NodePort), programmed by the eBPF backend from the
//! compiled policy: a connection's first packet (flow-table miss, the layer walk, backend choice,
//! two flow inserts, DNAT and masquerade with checksum updates) and a packet of an established
//! connection (flow-table hit and rewrite). Each figure is the kernel's own run time per packet:
//! the median over ROUNDS rounds, each an average over PACKETS distinct packets, the sizes
//! interleaved within every round (all four programmed side by side), so that the machine's drift
//! over the run spreads over every size; ratios are against 100 Services, in the same run. Before
//! the rounds, every Service gets one connection (unmeasured): its rule's hit counter is created
//! once in the rule's life, and a measured first packet is a new connection to a Service in use.
//! Programming: the whole policy into empty maps, and one endpoint change (a Service's last
//! endpoint goes, then comes back: 200 deltas) into the full maps, as the agent syncs it.
//!
//! Run as root: `cargo bench -p flowgate-ebpf --bench testrun`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use flowgate_cluster::synthetic;
use flowgate_cluster::ObjectKey;
use flowgate_compiler::{Changes, Compiler};
use flowgate_dataplane::Dataplane;
use flowgate_ebpf::backend::{EbpfDataplane, KernelMaps};
use flowgate_ebpf::{objects, test_run};
use flowgate_wire::{build_frame, tcp, FrameSpec, IpPair, L4Spec};

/// Packets per column per round.
const PACKETS: u32 = 2_000;
/// Rounds; each column reports the median.
const ROUNDS: u32 = 5;
/// Endpoints per synthetic Service.
const ENDPOINTS: usize = 4;
/// Endpoint changes measured per size.
const CHANGES: usize = 200;

fn frame(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    build_frame(&FrameSpec::new(
        IpPair::new(src.ip(), dst.ip()).unwrap(),
        L4Spec::tcp(src.port(), dst.port(), tcp::Flags::SYN),
    ))
}

fn main() {
    if !flowgate_ebpf::privileged_test("testrun benchmark") {
        return;
    }
    // Programming, and the sizes side by side.
    struct Size {
        services: usize,
        loaded: flowgate_ebpf::Loaded,
        _dp: EbpfDataplane,
        program_time: std::time::Duration,
        change: (std::time::Duration, std::time::Duration, f64),
        /// Per round: first packet spread, first packet one Service, established, not for a Service.
        rounds: Vec<[f64; 4]>,
    }
    let mut sizes = Vec::new();
    for services in [100usize, 1_000, 10_000, 100_000] {
        let mut state = synthetic::cluster(services, ENDPOINTS);
        let mut compiler = Compiler::new(Some("node-a".to_owned()));
        let full = compiler.compile_full(&state).unwrap();
        let mut loaded = flowgate_ebpf::load(objects::UPLINK, None, &[]).unwrap();
        let dp = EbpfDataplane::new(KernelMaps::take(&mut loaded.ebpf).unwrap());
        let t = std::time::Instant::now();
        dp.apply(compiler.policy().unwrap(), &full).unwrap();
        let program_time = t.elapsed();
        // One endpoint change into the full maps: the data plane's part of a sync.
        let changed = services / 2;
        let key = ObjectKey::new(synthetic::NAMESPACE, format!("svc-{changed}-abcde"));
        let changes = Changes { endpoint_slices: [key.clone()].into_iter().collect(), ..Changes::default() };
        let mut change_times = Vec::with_capacity(CHANGES);
        let mut change_entries = 0;
        for n in 0..CHANGES {
            let count = if n % 2 == 0 { ENDPOINTS - 1 } else { ENDPOINTS };
            state.endpoint_slices.insert(key.clone(), synthetic::endpoint_slice(changed, count, ENDPOINTS));
            let delta = compiler.update(&state, &changes).unwrap();
            let t = std::time::Instant::now();
            change_entries += dp.apply(compiler.policy().unwrap(), &delta).unwrap().entries;
            change_times.push(t.elapsed());
        }
        change_times.sort();
        let change =
            (change_times[CHANGES / 2], change_times[CHANGES * 99 / 100], change_entries as f64 / CHANGES as f64);
        // Every Service's first connection ever creates its rule's hit counter (an LRU map
        // insert, once per rule for the rule's lifetime): made here, unmeasured, so that the
        // measured first packets cost what a new connection to a Service in use costs, at every
        // size (otherwise most of them would be a Service's very first at 10,000 Services and
        // beyond, and none at 100).
        {
            let prog = loaded.classifier("fg_uplink_ingress").unwrap();
            for svc in 0..services {
                let client = SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0xc633_6400 + svc as u32)), 1024);
                let f = frame(client, SocketAddr::new(IpAddr::V4(flowgate_cluster::synthetic::cluster_ip(svc)), 80));
                assert_eq!(test_run(prog, &f).unwrap().retval, 0);
            }
        }
        sizes.push(Size { services, loaded, _dp: dp, program_time, change, rounds: Vec::new() });
    }
    for round in 0..ROUNDS {
        for size in &mut sizes {
            let services = size.services;
            let prog = size.loaded.classifier("fg_uplink_ingress").unwrap();
            // Clients no other round or column uses: 203.0.(100 + 2 round).x for the spread
            // packets, 203.0.(101 + 2 round).x for the one-Service packets.
            let client = |base: u32, n: u32| {
                SocketAddr::new(IpAddr::V4(Ipv4Addr::from(base + (n >> 14))), 1024 + (n & 0x3fff) as u16)
            };
            let spread_base = 0xcb00_6400 + ((2 * round) << 8);
            let one_base = 0xcb00_6500 + ((2 * round) << 8);
            let frames: Vec<Vec<u8>> = (0..PACKETS)
                .map(|n| {
                    let svc = (n as usize * 7919) % services;
                    frame(client(spread_base, n), SocketAddr::new(IpAddr::V4(synthetic::cluster_ip(svc)), 80))
                })
                .collect();
            let mut first = 0u64;
            for f in &frames {
                let r = test_run(prog, f).unwrap();
                assert_eq!(r.retval, 0);
                first += u64::from(r.duration_ns);
            }
            // The same, all to one Service: the lookups' own cost, without the cache misses of
            // touching a different Service (and its rule list, backends and sets) every packet.
            let mut one = 0u64;
            for n in 0..PACKETS {
                let f =
                    frame(client(one_base, n), SocketAddr::new(IpAddr::V4(synthetic::cluster_ip(services / 2)), 80));
                one += u64::from(test_run(prog, &f).unwrap().duration_ns);
            }
            let mut cached = 0u64;
            for f in &frames {
                cached += u64::from(test_run(prog, f).unwrap().duration_ns);
            }
            let miss = frame("203.0.113.9:1000".parse().unwrap(), "198.18.0.1:80".parse().unwrap());
            let mut other = 0u64;
            for _ in 0..PACKETS {
                other += u64::from(test_run(prog, &miss).unwrap().duration_ns);
            }
            let per = |total: u64| total as f64 / f64::from(PACKETS);
            size.rounds.push([per(first), per(one), per(cached), per(other)]);
        }
    }
    let median = |size: &Size, column: usize| {
        let mut v: Vec<f64> = size.rounds.iter().map(|r| r[column]).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (f0, o0, c0) = (median(&sizes[0], 0), median(&sizes[0], 1), median(&sizes[0], 2));
    println!(
        "services  first packet, spread   first packet, one svc   established        not for a service  programming (full)   one endpoint change: p50, p99, entries written"
    );
    for size in &sizes {
        let (f, one, c, o) = (median(size, 0), median(size, 1), median(size, 2), median(size, 3));
        let (p50, p99, entries) = size.change;
        println!(
            "{:>8}  {f:>7.0} ns ({:.2}x)      {one:>7.0} ns ({:.2}x)      {c:>6.0} ns ({:.2}x)   {o:>6.0} ns          {:<18?}   {p50:?}, {p99:?}, {entries:.1}",
            size.services,
            f / f0,
            one / o0,
            c / c0,
            size.program_time
        );
    }
}
