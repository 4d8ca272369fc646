//! Issue 12, item 4: what an isolated pod gets besides TCP, UDP and SCTP connections. ICMP
//! messages other than echo requests, and IP protocols other than TCP/UDP/SCTP, are judged by the
//! pod's policies too (as upstream implementations do): only a rule naming no port lets them
//! through, except an ICMP error about a connection the flow table allows (it belongs to that
//! connection) and an echo reply where the echo request it answers would have passed. The uplink
//! and endpoint programs (BPF_PROG_TEST_RUN) must give the model's verdict for every case.
//!
//! Before this, the kernel let every such packet through: GRE, ICMP redirects and timestamps, echo
//! replies and stray errors reached (and left) isolated pods.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::RefCell;
use std::path::Path;
use std::sync::Arc;

use aya::maps::{PerCpuArray, PerCpuValues};
use flowgate_dataplane::Dataplane;
use flowgate_ebpf::backend::{EbpfDataplane, KernelMaps};
use flowgate_ebpf::netns::Netns;
use flowgate_ebpf::{maps, objects, test_run_with};
use flowgate_switch::{DropReason, FlowKey, PolicyDelta, PortId, Proto, Switch, Verdict};
use flowgate_wire::{build_frame, tcp, FrameSpec, IpPair, L4Spec, Protocol};

/// Pod `b` isolated both ways: in, TCP 80 from 203.0.113.0/24 and everything from
/// 198.51.100.0/24 (a rule without ports); out, TCP 80 to 203.0.113.0/24 only. Pod `c` is open.
const MANIFESTS: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node-a}
status: {addresses: [{type: InternalIP, address: 192.168.0.2}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: default, labels: {app: db}}
spec: {nodeName: node-a, containers: [{name: c, image: i}]}
status: {podIP: 10.0.1.5}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: default, labels: {app: web}}
spec: {nodeName: node-a, containers: [{name: c, image: i}]}
status: {podIP: 10.0.1.6}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db, namespace: default}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{ipBlock: {cidr: 203.0.113.0/24}}]
    ports: [{port: 80, protocol: TCP}]
  - from: [{ipBlock: {cidr: 198.51.100.0/24}}]
  egress:
  - to: [{ipBlock: {cidr: 203.0.113.0/24}}]
    ports: [{port: 80, protocol: TCP}]
"#;

const B: &str = "10.0.1.5";
const C: &str = "10.0.1.6";
const CLIENT: &str = "203.0.113.7";
const FRIEND: &str = "198.51.100.7";

/// What a case sends.
#[derive(Clone, Copy)]
enum Sent {
    /// A TCP SYN, sport 40000, dport 80.
    Syn,
    /// Another IP protocol, no header of its own.
    Proto(u8),
    /// An ICMP message of this type, code 0, with no quote.
    Icmp(u8),
    /// An ICMP port unreachable quoting a TCP packet (src, sport, dst, dport).
    Error(&'static str, u16, &'static str, u16),
}

fn key(src: &str, dst: &str, proto: Proto, sport: u16, dport: u16) -> FlowKey {
    FlowKey { src: src.parse().unwrap(), dst: dst.parse().unwrap(), proto, sport, dport }
}

fn frame(src: &str, dst: &str, sent: Sent) -> Vec<u8> {
    let ips = IpPair::new(src.parse().unwrap(), dst.parse().unwrap()).unwrap();
    let raw = |protocol: u8, payload: Vec<u8>| {
        build_frame(&FrameSpec::new(ips, L4Spec::Raw { protocol: Protocol::from(protocol) }).with_payload(payload))
    };
    match sent {
        Sent::Syn => build_frame(&FrameSpec::new(ips, L4Spec::tcp(40000, 80, tcp::Flags::SYN))),
        Sent::Proto(p) => raw(p, vec![0u8; 24]),
        Sent::Icmp(t) => {
            let mut body = vec![t, 0, 0, 0];
            body.extend_from_slice(&[0u8; 16]);
            raw(1, body)
        }
        Sent::Error(qs, qsp, qd, qdp) => {
            let quoted = build_frame(&FrameSpec::new(
                IpPair::new(qs.parse().unwrap(), qd.parse().unwrap()).unwrap(),
                L4Spec::tcp(qsp, qdp, tcp::Flags::ACK),
            ));
            let mut body = vec![3, 3, 0, 0, 0, 0, 0, 0];
            body.extend_from_slice(&quoted[14..14 + 28]);
            let mut f = raw(1, body);
            flowgate_wire::icmpv4::Packet::new_checked(&mut f[34..]).unwrap().fill_checksum();
            f
        }
    }
}

#[test]
fn isolated_pods_get_only_the_icmp_and_protocols_their_policies_allow() {
    if !flowgate_ebpf::privileged_test("isolated_pods_get_only_the_icmp_and_protocols_their_policies_allow") {
        return;
    }
    let state = flowgate_cluster::load_str(Path::new("m.yaml"), MANIFESTS).unwrap().state;
    let policy = flowgate_compiler::compile(&state, Some("node-a")).unwrap().policy;
    let b_port = policy.endpoint_for(B.parse().unwrap()).unwrap();

    let ns = Netns::new().unwrap();
    ns.run(|| {
        let mut loaded = flowgate_ebpf::load_all(&[objects::UPLINK, objects::ENDPOINT], None, &[]).unwrap();
        let dp = EbpfDataplane::new(KernelMaps::take(&mut loaded[0].ebpf).unwrap());
        dp.apply(&policy, &PolicyDelta::full()).unwrap();
        // (Each object has its own fg_last.)
        let lasts: Vec<RefCell<PerCpuArray<_, maps::Last>>> = loaded
            .iter_mut()
            .map(|l| RefCell::new(PerCpuArray::try_from(l.ebpf.take_map("fg_last").unwrap()).unwrap()))
            .collect();
        let cpus = aya::util::nr_cpus().unwrap();
        let (up, ep) = loaded.split_at_mut(1);
        let progs = [up[0].classifier("fg_uplink_ingress").unwrap(), ep[0].classifier("fg_from_endpoint").unwrap()];
        let run = |from_pod: bool, f: &[u8]| {
            let last = &lasts[usize::from(from_pod)];
            let clear = PerCpuValues::try_from(vec![maps::Last::default(); cpus]).unwrap();
            last.borrow_mut().set(0, clear, 0).unwrap();
            let r = test_run_with(progs[usize::from(from_pod)], f, None, 1).unwrap();
            let l = last.borrow().get(&0, 0).unwrap().iter().find(|l| l.verdict != 0).copied().unwrap_or_default();
            (r.retval, l.reason)
        };
        let mut sw = Switch::new(Arc::new(policy.clone()));
        let mut failures = Vec::new();
        // (from, to, what, allowed, why), in order: the flows the first cases make are what later
        // errors belong to.
        let cases: [(&str, &str, Sent, bool, &str); 17] = [
            (CLIENT, B, Sent::Syn, true, "the client's allowed connection"),
            (CLIENT, B, Sent::Proto(47), false, "GRE from the client (its rule names a port)"),
            (FRIEND, B, Sent::Proto(47), true, "GRE from a peer whose rule names no port"),
            (CLIENT, C, Sent::Proto(47), true, "GRE to a pod no policy isolates"),
            (CLIENT, B, Sent::Icmp(13), false, "an ICMP timestamp request"),
            (CLIENT, B, Sent::Icmp(5), false, "an ICMP redirect"),
            (FRIEND, B, Sent::Icmp(13), true, "an ICMP timestamp request from the rule without ports"),
            (CLIENT, B, Sent::Error(B, 80, CLIENT, 40000), true, "an error about the allowed connection"),
            (CLIENT, B, Sent::Error(B, 80, CLIENT, 40001), false, "an error about no connection"),
            ("203.0.113.9", B, Sent::Error(B, 80, "203.0.113.9", 40000), false, "an error from elsewhere"),
            (CLIENT, B, Sent::Icmp(0), false, "an echo reply to a ping the pod's egress policy denies"),
            (CLIENT, C, Sent::Icmp(0), true, "an echo reply to a pod no policy isolates"),
            (B, CLIENT, Sent::Proto(47), false, "GRE out of a pod isolated for egress"),
            (B, CLIENT, Sent::Icmp(13), false, "an ICMP timestamp request out of it"),
            (B, CLIENT, Sent::Error(CLIENT, 40000, B, 80), true, "its error about the allowed connection"),
            (B, FRIEND, Sent::Icmp(0), true, "its echo reply to a ping its ingress rules allow"),
            (B, CLIENT, Sent::Icmp(0), false, "its echo reply to a ping its ingress rules deny"),
        ];
        for (from, to, sent, allowed, why) in cases {
            let from_pod = from == B;
            let ingress = if from_pod { b_port } else { PortId::UPLINK };
            let got = run(from_pod, &frame(from, to, sent));
            let model = match sent {
                Sent::Syn => sw.process(ingress, key(from, to, Proto::TCP, 40000, 80), 0),
                Sent::Proto(p) => sw.process(ingress, key(from, to, Proto(p), 0, 0), 0),
                Sent::Icmp(t) => sw.process_icmp(ingress, key(from, to, Proto::ICMP, 0, 0), t, None),
                Sent::Error(qs, qsp, qd, qdp) => {
                    let quoted = key(qs, qd, Proto::TCP, qsp, qdp);
                    sw.process_icmp(ingress, key(from, to, Proto::ICMP, 0, 0), 3, Some(quoted))
                }
            };
            let want = if allowed { (0, 0) } else { (2, DropReason::PolicyDenied as u8) };
            let model_ok = if allowed {
                model.verdict == Verdict::Allow
            } else {
                model.verdict == Verdict::Drop && model.reason == Some(DropReason::PolicyDenied)
            };
            if got != want || !model_ok {
                failures.push(format!(
                    "{why} ({from} -> {to}): kernel {got:?}, model {:?} {:?}, want allowed = {allowed}",
                    model.verdict, model.reason
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        let denied = dp.counters().into_iter().find(|(n, _)| n == "dropped_policy_denied").map(|(_, v)| v);
        assert_eq!(denied, Some(9), "every denied case counted once");
    })
    .unwrap();
}
