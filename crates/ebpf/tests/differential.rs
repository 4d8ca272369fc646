//! The kernel programs against the model: every probe of every scenario file becomes a real frame
//! run through the loaded eBPF program of the port it enters (BPF_PROG_TEST_RUN) — its first
//! packet, the same packet again (now a flow-table hit), and the reply — and the verdict, every
//! rewritten address and port, and the checksums must be what the model says. The policy is
//! programmed by the eBPF data plane backend, scenario after scenario into the same maps, so
//! removals and the re-checking of flows cached under an older policy are exercised too.
//!
//! A reject must come back as the ICMP/ICMPv6 port-unreachable error quoting the packet, sent back
//! out of the interface it came in (TC_ACT_REDIRECT).
//!
//! Packets from the node's own stack go through the uplink's egress program (where the node's
//! traffic to Services is translated and routed again).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use aya::maps::PerCpuArray;
use flowgate_dataplane::Dataplane;
use flowgate_ebpf::backend::{EbpfDataplane, KernelMaps};
use flowgate_ebpf::{maps, objects, test_run};
use flowgate_switch::{
    frame, trace, trace_choice, Action, DropReason, FlowKey, IngressKind, LayerKind, PolicyDelta, PortId, Proto,
    SwitchPolicy, Verdict,
};
use flowgate_wire::{build_frame, tcp, FrameSpec, IpPair, L4Spec, Protocol};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

/// Checks that `out` is the ICMP/ICMPv6 port-unreachable error answering `input` (from its
/// destination to its source, quoting its IP header), with valid checksums.
fn is_port_unreachable(input: &[u8], out: &[u8], key: &FlowKey) -> Result<(), String> {
    let l3 = out.get(14..).ok_or("truncated")?;
    let quoted_ok = |quote: &[u8], n: usize| input.get(14..14 + n) == quote.get(..n);
    match key.src {
        std::net::IpAddr::V4(_) => {
            let ip = flowgate_wire::ipv4::Packet::new_checked(l3).map_err(|e| e.to_string())?;
            if !ip.verify_checksum() || ip.protocol() != Protocol::Icmp {
                return Err("not a valid IPv4 ICMP packet".into());
            }
            if std::net::IpAddr::V4(ip.src_addr()) != key.dst || std::net::IpAddr::V4(ip.dst_addr()) != key.src {
                return Err(format!("addressed {} -> {}", ip.src_addr(), ip.dst_addr()));
            }
            let icmp = flowgate_wire::icmpv4::Packet::new_checked(&l3[20..usize::from(ip.total_len())])
                .map_err(|e| e.to_string())?;
            if !icmp.verify_checksum() || icmp.checksum() == 0 {
                return Err("bad ICMP checksum".into());
            }
            let body = &l3[28..usize::from(ip.total_len())];
            if l3[20] != 3 || l3[21] != 3 || !quoted_ok(body, 28) {
                return Err(format!("ICMP type {} code {}, or the quote is wrong", l3[20], l3[21]));
            }
        }
        std::net::IpAddr::V6(_) => {
            let ip = flowgate_wire::ipv6::Packet::new_checked(l3).map_err(|e| e.to_string())?;
            if std::net::IpAddr::V6(ip.src_addr()) != key.dst || std::net::IpAddr::V6(ip.dst_addr()) != key.src {
                return Err(format!("addressed {} -> {}", ip.src_addr(), ip.dst_addr()));
            }
            let icmp = flowgate_wire::icmpv6::Packet::new_checked(&l3[40..40 + usize::from(ip.payload_len())])
                .map_err(|e| e.to_string())?;
            if !icmp.verify_checksum(ip.src_addr(), ip.dst_addr()) {
                return Err("bad ICMPv6 checksum".into());
            }
            if l3[40] != 1 || l3[41] != 4 || !quoted_ok(&l3[48..], 48) {
                return Err(format!("ICMPv6 type {} code {}, or the quote is wrong", l3[40], l3[41]));
            }
        }
    }
    Ok(())
}

fn pin_to_cpu0() {
    #[allow(unsafe_code)]
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it; sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// The program a packet entering on `ingress` runs through (see [`Kernel::run`]).
fn program_for(ingress: PortId) -> usize {
    match ingress {
        PortId::HOST => 2,
        PortId::UPLINK => 0,
        _ => 1,
    }
}

fn frame_of(key: &FlowKey) -> Vec<u8> {
    let ips = IpPair::new(key.src, key.dst).unwrap();
    let l4 = match key.proto {
        Proto::UDP => L4Spec::udp(key.sport, key.dport),
        Proto::SCTP => L4Spec::sctp(key.sport, key.dport),
        Proto::ICMP | Proto::ICMPV6 => L4Spec::icmp_echo(7, 1),
        _ => L4Spec::tcp(key.sport, key.dport, tcp::Flags::SYN),
    };
    build_frame(&FrameSpec::new(ips, l4).with_payload(b"flowgate".to_vec()))
}

fn checksums_ok(f: &[u8]) -> bool {
    let (_, w) = frame::key_of(f).unwrap();
    let ips = IpPair::new(w.src, w.dst).unwrap();
    let end = match w.src {
        std::net::IpAddr::V4(_) => {
            let ip = flowgate_wire::ipv4::Packet::new_checked(&f[w.l3_offset..]).unwrap();
            if !ip.verify_checksum() {
                return false;
            }
            w.l3_offset + usize::from(ip.total_len())
        }
        std::net::IpAddr::V6(_) => {
            w.l3_offset
                + 40
                + usize::from(flowgate_wire::ipv6::Packet::new_checked(&f[w.l3_offset..]).unwrap().payload_len())
        }
    };
    let l4 = &f[w.l4_offset..end];
    match w.protocol {
        Protocol::Tcp => tcp::Packet::new_checked(l4).unwrap().verify_checksum(&ips),
        Protocol::Udp => flowgate_wire::udp::Packet::new_checked(l4).unwrap().verify_checksum(&ips),
        Protocol::Sctp => flowgate_wire::sctp::Packet::new_checked(l4).unwrap().verify_checksum(),
        _ => true,
    }
}

fn parse_probe(from: &str, to: &str) -> FlowKey {
    fn hp(s: &str, default: u16) -> (std::net::IpAddr, u16) {
        if let Ok(sa) = s.parse::<SocketAddr>() {
            return (sa.ip(), sa.port());
        }
        if let Some((a, p)) = s.rsplit_once(':').filter(|(a, _)| !a.contains(':')) {
            return (flowgate_cluster::parse_ip_sloppy(a).unwrap(), p.parse().unwrap());
        }
        (flowgate_cluster::parse_ip_sloppy(s.trim_start_matches('[').trim_end_matches(']')).unwrap(), default)
    }
    let (to, proto) = match to.rsplit_once('/') {
        Some((t, p)) => (t, Proto::from_name(p).unwrap()),
        None => (to, Proto::TCP),
    };
    let (src, sport) = hp(from, 40000);
    let (dst, dport) = hp(to, 0);
    FlowKey { src, dst, proto, sport, dport }
}

/// Both programs loaded with shared private maps, programmed by the eBPF backend.
struct Kernel {
    loaded: Vec<flowgate_ebpf::Loaded>,
    dataplane: EbpfDataplane,
    lasts: Vec<PerCpuArray<aya::maps::MapData, maps::Last>>,
    /// `fg_flow_counters` (shared by both objects).
    flow_counters: PerCpuArray<aya::maps::MapData, u64>,
    /// Probes whose connection got another source port, by rebinding or masquerade to its own
    /// address (it keeps it when re-checked later).
    rebound_keys: std::collections::HashSet<FlowKey>,
}

/// The outcome of checking one probe.
enum Checked {
    Compared,
    Failed(String),
}

impl Kernel {
    fn new() -> Kernel {
        pin_to_cpu0();
        let mut loaded = flowgate_ebpf::load_all(&[objects::UPLINK, objects::ENDPOINT], None, &[]).unwrap();
        let maps = KernelMaps::take(&mut loaded[0].ebpf).unwrap();
        let dataplane = EbpfDataplane::new(maps);
        let lasts =
            loaded.iter_mut().map(|l| PerCpuArray::try_from(l.ebpf.take_map("fg_last").unwrap()).unwrap()).collect();
        for (l, name) in loaded.iter_mut().zip(["fg_uplink_ingress", "fg_from_endpoint"]) {
            l.classifier(name).unwrap();
        }
        loaded[0].classifier("fg_uplink_egress").unwrap();
        let flow_counters = PerCpuArray::try_from(loaded[1].ebpf.take_map("fg_flow_counters").unwrap()).unwrap();
        Kernel { loaded, dataplane, lasts, flow_counters, rebound_keys: Default::default() }
    }

    /// First packets given another source port so far (`flows_rebound`).
    fn rebound(&self) -> u64 {
        self.flow_counters.get(&4, 0).map(|v| v.iter().sum()).unwrap_or(0)
    }

    fn program(&self, policy: &SwitchPolicy) {
        self.dataplane.apply(policy, &PolicyDelta::full()).unwrap();
    }

    /// Runs a frame through program `prog`: 0 uplink ingress, 1 from-endpoint, 2 uplink egress
    /// (traffic of the node's own stack).
    fn run(&mut self, prog: usize, frame: &[u8]) -> (flowgate_ebpf::TestRunResult, maps::Last) {
        let (object, name) = [(0, "fg_uplink_ingress"), (1, "fg_from_endpoint"), (0, "fg_uplink_egress")][prog];
        let r = test_run(self.loaded[object].classifier(name).unwrap(), frame).unwrap();
        let last = self.lasts[object].get(&0, 0).unwrap()[0];
        (r, last)
    }

    /// Runs `key`'s first packet, the same packet again and the reply through the kernel and
    /// compares everything with the model.
    fn check(&mut self, policy: &SwitchPolicy, key: FlowKey, what: &str) -> Checked {
        let ingress = policy.ingress_port_for(key.src);
        let prog = program_for(ingress);
        let want = trace(policy, &key);
        let what = format!("{what} ({key})");
        let input = frame_of(&key);
        let rebound_before = self.rebound();
        let (r, last) = self.run(prog, &input);
        // A first packet whose reply key a live connection holds (one of an earlier probe, still
        // in the table) gets another source port, as conntrack's NAT gives a clashing tuple.
        let rebound = self.rebound() > rebound_before || self.rebound_keys.contains(&key);
        if rebound {
            self.rebound_keys.insert(key);
        }
        if !key.proto.has_ports() {
            // An echo request: only the ACLs decide, nothing is rewritten or cached.
            let got = match (r.retval, last.verdict) {
                (TC_ACT_OK, maps::verdict::ALLOW) if r.output == input => Verdict::Allow,
                // The node's own ICMP is not the switch's business (its pods always accept it).
                (TC_ACT_OK, _) if prog == 2 && r.output == input => Verdict::Allow,
                (TC_ACT_SHOT, maps::verdict::DROP) => Verdict::Drop,
                _ => return Checked::Failed(format!("{what}: kernel retval {} verdict {}", r.retval, last.verdict)),
            };
            if got != want.verdict || (got == Verdict::Drop && Some(last.reason) != want.reason.map(|r| r as u8)) {
                return Checked::Failed(format!(
                    "{what}: model {:?} ({:?}), kernel {got:?} (reason {})",
                    want.verdict, want.reason, last.reason
                ));
            }
            return Checked::Compared;
        }
        match want.verdict {
            Verdict::Allow => {
                // The node's own packets are routed again (a redirect) when their destination changed.
                let rerouted = prog == 2 && r.retval == TC_ACT_REDIRECT;
                // Load-balanced to a backend that a NetworkPolicy denies (the model allows because
                // another candidate is allowed): the kernel's choice must be one the model denies.
                if r.retval == TC_ACT_SHOT && last.reason == DropReason::PolicyDenied as u8 && !want.dnat.is_empty() {
                    // The candidates of the rule the probe's destination load-balances by.
                    let kind = policy.port(ingress).map(|p| IngressKind::from(&p.kind)).unwrap_or(IngressKind::Uplink);
                    let candidates = match policy.layer(LayerKind::Lb).map(|l| l.evaluate(policy, &key, kind).action) {
                        Some(Action::Dnat(d)) => policy.backend_set(d.backends).map(|s| s.backends.clone()),
                        _ => None,
                    };
                    let denied_candidates = candidates
                        .into_iter()
                        .flatten()
                        .filter_map(|b| trace_choice(policy, ingress, &key, b))
                        .any(|t| t.reason == Some(DropReason::PolicyDenied));
                    if denied_candidates {
                        return Checked::Compared;
                    }
                }
                if r.retval != TC_ACT_OK && !rerouted {
                    return Checked::Failed(format!(
                        "{what}: model allows, kernel returned {} (reason {})",
                        r.retval, last.reason
                    ));
                }
            }
            Verdict::Drop => {
                if r.retval != TC_ACT_SHOT || last.verdict != maps::verdict::DROP {
                    return Checked::Failed(format!(
                        "{what}: model drops, kernel retval {} verdict {}",
                        r.retval, last.verdict
                    ));
                }
                return Checked::Compared;
            }
            Verdict::Reject => {
                if r.retval != TC_ACT_REDIRECT || last.verdict != maps::verdict::REJECT {
                    return Checked::Failed(format!(
                        "{what}: model rejects, kernel retval {} verdict {}",
                        r.retval, last.verdict
                    ));
                } else if let Err(e) = is_port_unreachable(&input, &r.output, &key) {
                    return Checked::Failed(format!("{what}: reject answer: {e}"));
                }
                return Checked::Compared;
            }
        }
        let (out, _) = frame::key_of(&r.output).unwrap();
        // Destination: one of the model's candidates, or untouched.
        let expect = if want.dnat.is_empty() {
            if out.dst_socket() != key.dst_socket() {
                return Checked::Failed(format!("{what}: kernel rewrote the destination to {}", out.dst_socket()));
            }
            want.clone()
        } else {
            match trace_choice(policy, ingress, &key, out.dst_socket()) {
                Some(t) => t,
                None => {
                    return Checked::Failed(format!(
                        "{what}: kernel chose {}, not among {:?}",
                        out.dst_socket(),
                        want.dnat
                    ));
                }
            }
        };
        let snat = policy.snat_address(out.dst).unwrap();
        let masqueraded = out.src == snat && key.src != snat;
        // A packet from the node's primary address keeps its address when masqueraded.
        if masqueraded != expect.masquerade && key.src != snat {
            return Checked::Failed(format!(
                "{what}: masquerade: model {}, kernel source {}",
                expect.masquerade,
                out.src_socket()
            ));
        }
        // (A packet from the node's primary address that is masqueraded may get another source
        // port, when its own is taken by an earlier connection to the same backend.)
        let from_snat_masqueraded = key.src == snat && expect.masquerade && out.src == snat;
        // (A connection keeps the source port it got when it is re-checked under a later policy,
        // masqueraded or not.)
        let port_rebound = rebound && out.src == key.src;
        if out.src == key.src && out.sport != key.sport {
            self.rebound_keys.insert(key);
        }
        if !masqueraded && !from_snat_masqueraded && !port_rebound && out.src_socket() != key.src_socket() {
            return Checked::Failed(format!("{what}: kernel rewrote the source to {}", out.src_socket()));
        }
        if !checksums_ok(&r.output) {
            return Checked::Failed(format!("{what}: bad checksums after the rewrite"));
        }
        // The same packet again: a flow-table hit with the same rewrite.
        let (again, last) = self.run(prog, &input);
        if again.output != r.output || last.cached != 1 || again.retval != r.retval {
            return Checked::Failed(format!(
                "{what}: second packet differs or was not a flow hit (cached {})",
                last.cached
            ));
        }
        // The reply, from where the packet went, comes back as if from the original destination.
        let reply = FlowKey { src: out.dst, dst: out.src, proto: key.proto, sport: out.dport, dport: out.sport };
        // (From a pod: its endpoint's program; from the node itself: the node's own stack sends it,
        // through the uplink's egress program — nothing from the network may carry a node address.)
        let back_prog = if policy.endpoint_for(reply.src).is_some() {
            1
        } else if policy.is_host_address(reply.src) {
            2
        } else {
            0
        };
        let (rr, _) = self.run(back_prog, &frame_of(&reply));
        let (back, _) = frame::key_of(&rr.output).unwrap();
        let passed = rr.retval == TC_ACT_OK || (back_prog == 2 && rr.retval == TC_ACT_REDIRECT);
        if !passed || back.src_socket() != key.dst_socket() || back.dst_socket() != key.src_socket() {
            return Checked::Failed(format!("{what}: reply came back as {back} (retval {})", rr.retval));
        }
        if !checksums_ok(&rr.output) {
            return Checked::Failed(format!("{what}: bad checksums on the reply"));
        }
        // An ICMP error from the destination about the translated packet comes back translated:
        // to the original source, from the original destination, quoting the original packet.
        // (The node's own ICMP errors leave by its stack, untranslated: not the switch's.)
        if let (std::net::IpAddr::V4(backend), true, false) = (out.dst, key.src.is_ipv4(), back_prog == 2) {
            let mut err = icmp_unreachable(backend, &r.output);
            let (er, _) = self.run(back_prog, &err);
            err = er.output;
            let ip = flowgate_wire::ipv4::Packet::new_checked(&err[14..]).unwrap();
            let quoted = flowgate_wire::parse_embedded_flow_key(&err[42..]).unwrap();
            let ok = er.retval == TC_ACT_OK
                && std::net::IpAddr::V4(ip.src_addr()) == key.dst
                && std::net::IpAddr::V4(ip.dst_addr()) == key.src
                && ip.verify_checksum()
                && flowgate_wire::icmpv4::Packet::new_checked(&err[34..]).unwrap().verify_checksum()
                && flowgate_wire::ipv4::Packet::new_checked_header(&err[42..]).unwrap().verify_checksum()
                && (quoted.src, quoted.src_port, quoted.dst, quoted.dst_port)
                    == (key.src, key.sport, key.dst, key.dport);
            if !ok {
                return Checked::Failed(format!(
                    "{what}: ICMP error came back as {} -> {} quoting {}:{} -> {}:{} (retval {})",
                    ip.src_addr(),
                    ip.dst_addr(),
                    quoted.src,
                    quoted.src_port,
                    quoted.dst,
                    quoted.dst_port,
                    er.retval
                ));
            }
        }
        Checked::Compared
    }
}

/// `frame` (IPv6) with an extension header between the IPv6 and the transport header: a
/// Destination Options header (`60`, padding only) or an atomic Fragment header (`44`).
fn with_extension_header(frame: &[u8], kind: u8) -> Vec<u8> {
    let (l3, l4) = (14, 14 + 40);
    let next = frame[l3 + 6];
    let ext: [u8; 8] = match kind {
        60 => [next, 0, 1, 4, 0, 0, 0, 0],
        _ => [next, 0, 0, 0, 0x12, 0x34, 0x56, 0x78],
    };
    let mut f = frame[..l4].to_vec();
    f.extend_from_slice(&ext);
    f.extend_from_slice(&frame[l4..]);
    f[l3 + 6] = kind;
    let len = u16::from_be_bytes([f[l3 + 4], f[l3 + 5]]) + 8;
    f[l3 + 4..l3 + 6].copy_from_slice(&len.to_be_bytes());
    f
}

impl Kernel {
    /// An IPv6 probe again with each kind of extension header (and a source port of its own, so no
    /// cached flow decides): the kernel's verdict must still be the model's.
    fn check_extension_headers(&mut self, policy: &SwitchPolicy, key: FlowKey, what: &str) -> Vec<String> {
        let mut failures = Vec::new();
        let prog = program_for(policy.ingress_port_for(key.src));
        for (n, kind) in [60u8, 44].into_iter().enumerate() {
            let mut key = key;
            key.sport = key.sport.wrapping_add(7000 + n as u16);
            let want = trace(policy, &key).verdict;
            let (r, last) = self.run(prog, &with_extension_header(&frame_of(&key), kind));
            let got = match (r.retval, last.verdict) {
                (TC_ACT_SHOT, _) => Verdict::Drop,
                (TC_ACT_REDIRECT, maps::verdict::REJECT) => Verdict::Reject,
                (TC_ACT_OK | TC_ACT_REDIRECT, _) => Verdict::Allow,
                _ => Verdict::Drop,
            };
            if got != want {
                failures.push(format!("{what} ({key}) with extension header {kind}: model {want:?}, kernel {got:?}"));
            }
        }
        failures
    }
}

#[test]
fn kernel_programs_agree_with_the_model_on_every_scenario() {
    if !flowgate_ebpf::privileged_test("kernel_programs_agree_with_the_model_on_every_scenario") {
        return;
    }
    let mut kernel = Kernel::new();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.retain(|p| p.extension().and_then(|e| e.to_str()) == Some("yaml"));
    files.sort();
    let mut compared = 0;
    let mut extension_probes = 0;
    let mut failures = Vec::new();
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        let doc: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        if doc.get("error").and_then(|e| e.as_bool()) == Some(true) {
            continue;
        }
        let mut text = String::new();
        for m in doc.get("manifests").and_then(|m| m.as_sequence()).unwrap() {
            text.push_str("---\n");
            text.push_str(&serde_yaml::to_string(m).unwrap());
        }
        let state = flowgate_cluster::load_str(Path::new(&name), &text).unwrap().state;
        let node = doc.get("node").and_then(|n| n.as_str());
        let policy = flowgate_compiler::compile(&state, node).unwrap().policy;
        kernel.program(&policy);
        for p in doc.get("probes").and_then(|p| p.as_sequence()).into_iter().flatten() {
            let key = parse_probe(p["from"].as_str().unwrap(), p["to"].as_str().unwrap());
            if key.src == key.dst && policy.endpoint_for(key.src).is_some() {
                // A pod's packet to its own address never leaves the pod: no program sees it.
                continue;
            }
            let what = format!("{name}: {}", p["name"].as_str().unwrap_or(""));
            match kernel.check(&policy, key, &what) {
                Checked::Compared => compared += 1,
                Checked::Failed(f) => failures.push(f),
            }
            if key.src.is_ipv6() && key.proto.has_ports() {
                failures.extend(kernel.check_extension_headers(&policy, key, &what));
                extension_probes += 2;
            }
        }
    }
    eprintln!(
        "{compared} probes compared with the kernel (and {extension_probes} IPv6 ones with extension headers), {} failures",
        failures.len()
    );
    assert!(extension_probes >= 40, "only {extension_probes} probes with extension headers");
    assert!(failures.is_empty(), "{} disagreements:\n{}", failures.len(), failures.join("\n"));
    assert!(compared >= 250, "only {compared} probes compared");
}

/// An ICMPv4 port-unreachable from `from` about `about` (a frame), quoting its IP header and the
/// first 8 bytes after it.
fn icmp_unreachable(from: std::net::Ipv4Addr, about: &[u8]) -> Vec<u8> {
    let (_, w) = frame::key_of(about).unwrap();
    let quote = &about[w.l3_offset..w.l4_offset + 8];
    let total = 20 + 8 + quote.len();
    let mut f = vec![0u8; 14 + total];
    f[..6].copy_from_slice(&about[6..12]);
    f[6..12].copy_from_slice(&about[..6]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let std::net::IpAddr::V4(to) = w.src else { unreachable!("IPv4 only") };
    f[14] = 0x45;
    f[16..18].copy_from_slice(&(total as u16).to_be_bytes());
    f[22] = 64;
    f[23] = 1;
    f[26..30].copy_from_slice(&from.octets());
    f[30..34].copy_from_slice(&to.octets());
    flowgate_wire::ipv4::Packet::new_checked(&mut f[14..]).unwrap().fill_checksum();
    f[34] = 3;
    f[35] = 3;
    f[42..].copy_from_slice(quote);
    flowgate_wire::icmpv4::Packet::new_checked(&mut f[34..]).unwrap().fill_checksum();
    f
}

/// A small deterministic generator (xorshift64*), so that a failing state can be reproduced from
/// its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// A random but valid cluster: Services of every type with random policies, endpoints in every
/// state, here and elsewhere; and probes aimed at every address and port they expose.
fn random_state(seed: u64) -> (String, Vec<FlowKey>) {
    use serde_json::json;
    let mut r = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut items = vec![
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a", "labels": {"topology.kubernetes.io/zone": "z1"}},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.2"}, {"type": "InternalIP", "address": "192.168.1.2"}]}}),
    ];
    let mut kp =
        json!({"apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration", "mode": "nftables"});
    if r.chance(80) {
        kp["clusterCIDR"] = json!("10.0.0.0/8");
    }
    if r.chance(15) {
        kp["nftables"] = json!({"masqueradeAll": true});
    }
    match r.below(3) {
        0 => kp["nodePortAddresses"] = json!(["0.0.0.0/0"]),
        1 => kp["nodePortAddresses"] = json!(["192.168.1.0/24"]),
        _ => {}
    }
    items.push(kp);
    if r.chance(80) {
        items.push(json!({"apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR", "metadata": {"name": "k"}, "spec": {"cidrs": ["172.30.0.0/16"]}}));
    }
    for i in 2..5 {
        items.push(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("p{i}")},
            "spec": {"nodeName": "node-a", "containers": [{"name": "c", "image": "i"}]}, "status": {"podIP": format!("10.0.1.{i}")}}));
    }
    let mut probes = Vec::new();
    let sources = ["10.0.1.2", "10.0.1.3", "203.0.113.7", "203.0.113.200", "10.0.2.9", "192.168.0.2", "192.168.1.2"];
    let services = 1 + r.below(5);
    for s in 0..services {
        let ty = ["ClusterIP", "NodePort", "LoadBalancer"][r.below(3) as usize];
        let cip = format!("172.30.0.{}", 10 + s);
        let protos: Vec<&str> =
            if r.chance(30) { vec!["TCP", "UDP"] } else { vec![["TCP", "UDP", "TCP"][r.below(3) as usize]] };
        let mut ports = Vec::new();
        for (j, proto) in protos.iter().enumerate() {
            let mut p = json!({"name": format!("p{j}"), "port": 80 + j as u16, "targetPort": 8080 + j as u16, "protocol": proto});
            if ty != "ClusterIP" {
                p["nodePort"] = json!(30000 + s * 10 + j as u64);
            }
            ports.push(p);
        }
        let mut spec = json!({"type": ty, "clusterIP": cip, "ports": ports});
        let mut external = Vec::new();
        if r.chance(30) {
            let e = format!("192.168.99.{}", s + 1);
            spec["externalIPs"] = json!([e]);
            external.push(e);
        }
        let accessible = ty != "ClusterIP" || !external.is_empty();
        if accessible && r.chance(50) {
            spec["externalTrafficPolicy"] = json!("Local");
        }
        if r.chance(25) {
            spec["internalTrafficPolicy"] = json!("Local");
        }
        if r.chance(25) {
            spec["sessionAffinity"] = json!("ClientIP");
        }
        let mut status = json!({});
        if ty == "LoadBalancer" {
            let lb = format!("198.51.100.{}", s + 1);
            let mode = if r.chance(20) { "Proxy" } else { "VIP" };
            status = json!({"loadBalancer": {"ingress": [{"ip": lb, "ipMode": mode}]}});
            if r.chance(40) {
                spec["loadBalancerSourceRanges"] = json!(["203.0.113.0/25"]);
            }
            external.push(lb);
        }
        let name = format!("s{s}");
        items.push(
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec, "status": status}),
        );
        let mut eps = Vec::new();
        for _ in 0..r.below(5) {
            let local = r.chance(50);
            let addr = if local { format!("10.0.1.{}", 2 + r.below(3)) } else { format!("10.0.2.{}", 1 + r.below(4)) };
            let (ready, serving, terminating) = match r.below(4) {
                0 => (false, false, false),
                1 => (false, true, true),
                _ => (true, true, false),
            };
            eps.push(json!({"addresses": [addr], "nodeName": if local { "node-a" } else { "node-b" },
                "conditions": {"ready": ready, "serving": serving, "terminating": terminating}}));
        }
        eps.dedup_by(|a, b| a["addresses"] == b["addresses"]);
        let slice_ports: Vec<_> = protos
            .iter()
            .enumerate()
            .map(|(j, proto)| json!({"name": format!("p{j}"), "port": 8080 + j as u16, "protocol": proto}))
            .collect();
        items.push(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{name}-x"), "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4", "ports": slice_ports, "endpoints": eps}));
        for (j, proto) in protos.iter().enumerate() {
            let p = if *proto == "UDP" { Proto::UDP } else { Proto::TCP };
            let mut dsts = vec![(cip.clone(), 80 + j as u16), (cip.clone(), 443)];
            dsts.extend(external.iter().map(|e| (e.clone(), 80 + j as u16)));
            if ty != "ClusterIP" {
                for node_ip in ["192.168.0.2", "192.168.1.2"] {
                    dsts.push((node_ip.to_string(), 30000 + s as u16 * 10 + j as u16));
                }
            }
            for (dst, port) in dsts {
                let src = sources[r.below(sources.len() as u64) as usize];
                let sport = 40000 + r.below(1000) as u16;
                probes.push(FlowKey {
                    src: src.parse().unwrap(),
                    dst: dst.parse().unwrap(),
                    proto: p,
                    sport,
                    dport: port,
                });
            }
        }
    }
    probes.push(FlowKey {
        src: "10.0.1.2".parse().unwrap(),
        dst: "172.30.0.99".parse().unwrap(),
        proto: Proto::TCP,
        sport: 40001,
        dport: 80,
    });
    (json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string(), probes)
}

#[test]
fn kernel_programs_agree_with_the_model_on_random_states() {
    if !flowgate_ebpf::privileged_test("kernel_programs_agree_with_the_model_on_random_states") {
        return;
    }
    let mut kernel = Kernel::new();
    let seeds: Vec<u64> = match std::env::var("FLOWGATE_SEED") {
        Ok(s) => vec![s.parse().unwrap()],
        Err(_) => (1..=60).collect(),
    };
    let (mut compared, mut failures) = (0, Vec::new());
    for seed in seeds {
        let (text, probes) = random_state(seed);
        let state = flowgate_cluster::load_str(Path::new("random.json"), &text)
            .unwrap_or_else(|e| panic!("seed {seed}: the generated state is invalid: {e}"))
            .state;
        let policy = flowgate_compiler::compile(&state, Some("node-a")).unwrap().policy;
        kernel.program(&policy);
        for key in probes {
            match kernel.check(&policy, key, &format!("seed {seed}")) {
                Checked::Compared => compared += 1,
                Checked::Failed(f) => failures.push(f),
            }
        }
    }
    eprintln!("{compared} random probes compared, {} failures", failures.len());
    assert!(
        failures.is_empty(),
        "{} disagreements (FLOWGATE_SEED=N reruns one):\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(compared >= 300, "only {compared} random probes compared");
}

/// Endpoint changes programmed as deltas (as the agent syncs them) leave the kernel agreeing with
/// the model: for each EndpointSlice of a random state, its first endpoint goes, its endpoints
/// come back in reverse order, then as they were; after each step every probe is compared.
#[test]
fn kernel_programs_agree_with_the_model_after_incremental_endpoint_changes() {
    if !flowgate_ebpf::privileged_test("kernel_programs_agree_with_the_model_after_incremental_endpoint_changes") {
        return;
    }
    let mut kernel = Kernel::new();
    let (mut compared, mut steps, mut failures) = (0, 0, Vec::new());
    for seed in 1..=12u64 {
        let (text, probes) = random_state(seed);
        let mut state = flowgate_cluster::load_str(Path::new("random.json"), &text).unwrap().state;
        let mut compiler = flowgate_compiler::Compiler::new(Some("node-a".to_owned()));
        let delta = compiler.compile_full(&state).unwrap();
        kernel.dataplane.apply(compiler.policy().unwrap(), &delta).unwrap();
        for key in state.endpoint_slices.keys().cloned().collect::<Vec<_>>() {
            let original = state.endpoint_slices[&key].clone();
            let mut without_first = original.clone();
            if !without_first.endpoints.is_empty() {
                without_first.endpoints.remove(0);
            }
            let mut reversed = original.clone();
            reversed.endpoints.reverse();
            for (step, slice) in
                [("first endpoint removed", without_first), ("reversed", reversed), ("restored", original)]
            {
                state.endpoint_slices.insert(key.clone(), slice);
                let changes = flowgate_compiler::Changes {
                    endpoint_slices: [key.clone()].into_iter().collect(),
                    ..flowgate_compiler::Changes::default()
                };
                let delta = compiler.update(&state, &changes).unwrap();
                let policy = compiler.policy().unwrap();
                kernel.dataplane.apply(policy, &delta).unwrap();
                steps += 1;
                for probe in &probes {
                    match kernel.check(policy, *probe, &format!("seed {seed}, slice {key:?} {step}")) {
                        Checked::Compared => compared += 1,
                        Checked::Failed(f) => failures.push(f),
                    }
                }
            }
        }
    }
    eprintln!("{steps} incremental steps, {compared} probes compared, {} failures", failures.len());
    assert!(failures.is_empty(), "{} disagreements:\n{}", failures.len(), failures.join("\n"));
    assert!(steps >= 30, "only {steps} incremental steps");
}

/// A random cluster for NetworkPolicy: namespaces with labels, pods here and on another node with
/// labels and named ports, a Service in front of some pods, and random policies (selectors with
/// every operator, ipBlocks with exceptions, numbered, ranged and named ports of every protocol,
/// inferred and explicit types). Returns the objects without the policies, the policies, and
/// probes between pods, from outside, from the node and through the Service.
fn random_policy_state(seed: u64) -> (Vec<serde_json::Value>, Vec<serde_json::Value>, Vec<FlowKey>) {
    use serde_json::json;
    let mut r = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut items = vec![
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.2"}]}}),
        json!({"apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration", "mode": "nftables", "clusterCIDR": "10.0.0.0/8"}),
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR", "metadata": {"name": "k"}, "spec": {"cidrs": ["172.30.0.0/16"]}}),
    ];
    let namespaces = ["ns1", "ns2", "ns3"];
    let tiers = ["web", "db", "cache"];
    for ns in namespaces {
        items.push(json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns, "labels": {"team": tiers[r.below(3) as usize]}}}));
    }
    let mut pods: Vec<(String, String)> = Vec::new(); // (namespace, ip)
    for i in 0..8u64 {
        let ns = namespaces[r.below(3) as usize];
        let local = i < 5;
        let ip = if local { format!("10.0.1.{}", 10 + i) } else { format!("10.0.2.{}", 10 + i) };
        let mut labels = serde_json::Map::new();
        if r.chance(80) {
            labels.insert("app".into(), json!(tiers[r.below(3) as usize]));
        }
        if r.chance(40) {
            labels.insert("env".into(), json!(["prod", "dev"][r.below(2) as usize]));
        }
        let http = [80u64, 81, 8080][r.below(3) as usize];
        let ports = json!([{"name": "http", "containerPort": http, "protocol": "TCP"},
            {"name": "dns", "containerPort": 53, "protocol": (["UDP", "TCP"][r.below(2) as usize])},
            {"name": "sig", "containerPort": 90, "protocol": "SCTP"}]);
        items.push(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("p{i}"), "namespace": ns, "labels": labels},
            "spec": {"nodeName": if local { "node-a" } else { "node-b" }, "containers": [{"name": "c", "image": "i", "ports": ports}]},
            "status": {"podIP": ip}}));
        pods.push((ns.to_string(), ip));
    }
    // A Service in ns1 whose backends are two local pods (egress rules judge the backend).
    items.push(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc", "namespace": "ns1"},
        "spec": {"clusterIP": "172.30.0.10", "ports": [{"name": "h", "port": 80, "targetPort": 80, "protocol": "TCP"}]}}));
    items.push(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "svc-x", "namespace": "ns1", "labels": {"kubernetes.io/service-name": "svc"}},
        "addressType": "IPv4", "ports": [{"name": "h", "port": 80, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["10.0.1.11"], "nodeName": "node-a", "conditions": {"ready": true}},
                      {"addresses": ["10.0.1.12"], "nodeName": "node-a", "conditions": {"ready": true}}]}));

    let selector = |r: &mut Rng, keys: &[&str], values: &[&str]| -> serde_json::Value {
        let key = keys[r.below(keys.len() as u64) as usize];
        let value = values[r.below(values.len() as u64) as usize];
        match r.below(6) {
            0 => json!({}),
            1 => json!({"matchLabels": {key: value}}),
            2 => json!({"matchExpressions": [{"key": key, "operator": "In", "values": [value, values[0]]}]}),
            3 => json!({"matchExpressions": [{"key": key, "operator": "NotIn", "values": [value]}]}),
            4 => json!({"matchExpressions": [{"key": key, "operator": "Exists"}]}),
            _ => json!({"matchExpressions": [{"key": key, "operator": "DoesNotExist"}]}),
        }
    };
    let mut policies = Vec::new();
    for n in 0..1 + r.below(4) {
        let ns = namespaces[r.below(3) as usize];
        let mut spec = json!({"podSelector": selector(&mut r, &["app", "env"], &["web", "db", "cache", "prod"])});
        for dir in ["ingress", "egress"] {
            if !r.chance(60) {
                continue;
            }
            let mut rules = Vec::new();
            for _ in 0..r.below(3) {
                let mut rule = serde_json::Map::new();
                let mut peers = Vec::new();
                for _ in 0..r.below(3) {
                    peers.push(match r.below(4) {
                        0 => json!({"podSelector": selector(&mut r, &["app", "env"], &["web", "db", "cache", "dev"])}),
                        1 => json!({"namespaceSelector": selector(&mut r, &["team", "kubernetes.io/metadata.name"], &["web", "db", "ns2"])}),
                        2 => json!({"podSelector": selector(&mut r, &["app"], &["web", "db"]),
                                    "namespaceSelector": selector(&mut r, &["team"], &["web", "db", "cache"])}),
                        _ => match r.below(3) {
                            0 => json!({"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.1.8/29"]}}),
                            1 => json!({"ipBlock": {"cidr": "203.0.113.0/24"}}),
                            _ => json!({"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.2.0/24", "203.0.113.128/25"]}}),
                        },
                    });
                }
                if !peers.is_empty() || r.chance(50) {
                    rule.insert(if dir == "ingress" { "from".into() } else { "to".into() }, json!(peers));
                }
                let mut ports = Vec::new();
                for _ in 0..r.below(3) {
                    ports.push(match r.below(6) {
                        0 => json!({"port": 80}),
                        1 => json!({"port": 80, "endPort": 90, "protocol": (["TCP", "UDP", "SCTP"][r.below(3) as usize])}),
                        2 => json!({"port": "http"}),
                        3 => json!({"port": "dns", "protocol": (["UDP", "TCP"][r.below(2) as usize])}),
                        4 => json!({"protocol": (["UDP", "SCTP"][r.below(2) as usize])}),
                        _ => json!({"port": "sig", "protocol": "SCTP"}),
                    });
                }
                if !ports.is_empty() || r.chance(50) {
                    rule.insert("ports".into(), json!(ports));
                }
                rules.push(serde_json::Value::Object(rule));
            }
            spec[dir] = json!(rules);
        }
        match r.below(4) {
            0 => spec["policyTypes"] = json!(["Ingress"]),
            1 => spec["policyTypes"] = json!(["Egress"]),
            2 => spec["policyTypes"] = json!(["Ingress", "Egress"]),
            _ => {}
        }
        policies.push(json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": format!("np{n}"), "namespace": ns}, "spec": spec}));
    }

    let mut probes = Vec::new();
    let mut sources: Vec<String> = pods.iter().map(|(_, ip)| ip.clone()).collect();
    sources.extend(["203.0.113.7", "203.0.113.200", "192.168.0.2", "10.0.3.3"].map(String::from));
    let ports = [
        (Proto::TCP, 80),
        (Proto::TCP, 81),
        (Proto::TCP, 8080),
        (Proto::UDP, 53),
        (Proto::TCP, 53),
        (Proto::UDP, 85),
        (Proto::SCTP, 90),
        (Proto::SCTP, 80),
    ];
    for _ in 0..40 {
        let src = &sources[r.below(sources.len() as u64) as usize];
        let dst =
            if r.chance(15) { "172.30.0.10".to_string() } else { pods[r.below(pods.len() as u64) as usize].1.clone() };
        if *src == dst {
            continue;
        }
        let (proto, dport) = if dst.starts_with("172.") {
            (Proto::TCP, 80)
        } else if r.chance(12) {
            (Proto::ICMP, 0)
        } else {
            ports[r.below(ports.len() as u64) as usize]
        };
        let sport = if proto.has_ports() { 40000 + r.below(1000) as u16 } else { 0 };
        probes.push(FlowKey { src: src.parse().unwrap(), dst: dst.parse().unwrap(), proto, sport, dport });
    }
    (items, policies, probes)
}

/// NetworkPolicy in the kernel agrees with the model: random pods, namespaces and policies,
/// programmed as the agent does (a full compile, then the policies added one at a time and removed
/// again as incremental updates, then a pod's labels changed); after every step every probe — the
/// same 5-tuples each time, so flows cached under the previous policy are re-checked — gets the
/// model's verdict from the kernel.
#[test]
fn kernel_acls_agree_with_the_model_on_random_policies() {
    if !flowgate_ebpf::privileged_test("kernel_acls_agree_with_the_model_on_random_policies") {
        return;
    }
    let mut kernel = Kernel::new();
    let seeds: Vec<u64> = match std::env::var("FLOWGATE_SEED") {
        Ok(s) => vec![s.parse().unwrap()],
        Err(_) => (1..=40).collect(),
    };
    let (mut compared, mut steps, mut denied, mut failures) = (0, 0, 0, Vec::new());
    let load = |items: &[serde_json::Value], seed: u64| {
        let text = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string();
        flowgate_cluster::load_str(Path::new("random.json"), &text)
            .unwrap_or_else(|e| panic!("seed {seed}: the generated state is invalid: {e}"))
            .state
    };
    for seed in seeds {
        let (items, policies, probes) = random_policy_state(seed);
        let mut compiler = flowgate_compiler::Compiler::new(Some("node-a".to_owned()));
        let state = load(&items, seed);
        let delta = compiler.compile_full(&state).unwrap();
        kernel.dataplane.apply(compiler.policy().unwrap(), &delta).unwrap();
        // The policies one by one, then removed in the same order, then all again with a label change.
        let mut plan: Vec<(String, Vec<serde_json::Value>)> = Vec::new();
        for i in 1..=policies.len() {
            plan.push((format!("{i} policies"), policies[..i].to_vec()));
        }
        for i in 1..=policies.len() {
            plan.push((format!("first {i} removed"), policies[i..].to_vec()));
        }
        plan.push(("all again".into(), policies.clone()));
        let mut relabeled = items.clone();
        if let Some(pod) = relabeled.iter_mut().find(|o| o["kind"] == "Pod") {
            pod["metadata"]["labels"] = serde_json::json!({"app": "db", "env": "dev"});
        }
        let mut previous = state;
        for (i, (what, current)) in plan.iter().enumerate() {
            let base = if i + 1 == plan.len() { &relabeled } else { &items };
            let mut all = base.clone();
            all.extend(current.iter().cloned());
            let state = load(&all, seed);
            // Exactly what changed, as the agent's tracker reports it.
            let mut changes = flowgate_compiler::Changes::default();
            for k in previous.network_policies.keys().chain(state.network_policies.keys()) {
                if previous.network_policies.get(k) != state.network_policies.get(k) {
                    changes.network_policies.insert(k.clone());
                }
            }
            for k in previous.pods.keys().chain(state.pods.keys()) {
                if previous.pods.get(k) != state.pods.get(k) {
                    changes.pods.insert(k.clone());
                }
            }
            let delta = compiler.update(&state, &changes).unwrap();
            let policy = compiler.policy().unwrap();
            kernel.dataplane.apply(policy, &delta).unwrap();
            steps += 1;
            for key in &probes {
                if trace(policy, key).reason == Some(DropReason::PolicyDenied) {
                    denied += 1;
                }
                match kernel.check(policy, *key, &format!("seed {seed}, {what}")) {
                    Checked::Compared => compared += 1,
                    Checked::Failed(f) => failures.push(f),
                }
            }
            previous = state;
        }
    }
    eprintln!(
        "{steps} policy steps, {compared} probes compared ({denied} denied by policy), {} failures",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} disagreements (FLOWGATE_SEED=N reruns one):\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(compared >= 1000 && denied >= 100, "only {compared} probes compared, {denied} denied");
}
