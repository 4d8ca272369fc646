//! Issue 12, item 2: later fragments are no way around NAT, policy or anti-spoofing. A later
//! fragment (offset > 0) carries no ports; the switch records each first fragment's flow key under
//! (source, destination, protocol, IP identification) and a later fragment follows it — the
//! verdict of that flow and its address rewrite — or, without a first fragment seen, is dropped
//! (reason `fragment`). Run through the uplink and endpoint programs (BPF_PROG_TEST_RUN); the first
//! fragment's outcome is the model's for its 5-tuple, and every later fragment must get the same.
//!
//! Before this, later fragments passed the switch untouched: to a NodePort they kept the node's
//! address (the backend never got them), out of outbound NAT they kept the pod's, and to an
//! isolated pod they were not judged at all.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::RefCell;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use aya::maps::{PerCpuArray, PerCpuValues};
use flowgate_dataplane::Dataplane;
use flowgate_ebpf::backend::{EbpfDataplane, KernelMaps};
use flowgate_ebpf::netns::Netns;
use flowgate_ebpf::{maps, objects, test_run_with};
use flowgate_switch::{FlowKey, PolicyDelta, PortId, Proto, Switch, Verdict};
use flowgate_wire::{build_frame, FrameSpec, IpPair, L4Spec, Protocol};

/// Pod `b` behind Service `dns` (ClusterIP 10.96.0.10, NodePort 30053, UDP 53 -> 5353), pod `d`
/// isolated for ingress with no rule, outbound NAT for every pod.
const MANIFESTS: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node-a}
status: {addresses: [{type: InternalIP, address: 192.168.0.2}]}
---
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
clusterCIDR: 10.0.0.0/16
---
apiVersion: flowgate.io/v1alpha1
kind: FlowgateConfiguration
outboundNAT: {enabled: true}
---
apiVersion: networking.k8s.io/v1
kind: ServiceCIDR
metadata: {name: kubernetes}
spec: {cidrs: [10.96.0.0/16]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: default, labels: {app: dns}}
spec: {nodeName: node-a, containers: [{name: c, image: i}]}
status: {podIP: 10.0.1.5}
---
apiVersion: v1
kind: Pod
metadata: {name: d, namespace: default, labels: {app: db}}
spec: {nodeName: node-a, containers: [{name: c, image: i}]}
status: {podIP: 10.0.1.6}
---
apiVersion: v1
kind: Service
metadata: {name: dns, namespace: default}
spec:
  type: NodePort
  selector: {app: dns}
  clusterIP: 10.96.0.10
  ports: [{name: dns, protocol: UDP, port: 53, targetPort: 5353, nodePort: 30053}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: dns-1, namespace: default, labels: {kubernetes.io/service-name: dns}}
addressType: IPv4
endpoints: [{addresses: [10.0.1.5], conditions: {ready: true}, nodeName: node-a}]
ports: [{name: dns, port: 5353, protocol: UDP}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: default}
spec: {podSelector: {matchLabels: {app: db}}, policyTypes: [Ingress]}
"#;

/// The first fragment of a UDP datagram (sport 40000, 64 bytes of payload, More Fragments) with
/// identification `id`.
fn first_fragment(src: &str, dst: &str, dport: u16, id: u16) -> Vec<u8> {
    let ips = IpPair::new(src.parse().unwrap(), dst.parse().unwrap()).unwrap();
    let mut f = build_frame(&FrameSpec::new(ips, L4Spec::udp(40000, dport)).with_payload(vec![7u8; 64]));
    f[18..20].copy_from_slice(&id.to_be_bytes());
    f[20..22].copy_from_slice(&0x2000u16.to_be_bytes());
    flowgate_wire::ipv4::Packet::new_checked(&mut f[14..]).unwrap().fill_checksum();
    f
}

/// A later fragment (offset 72 bytes, the last) of UDP datagram `id`.
fn later_fragment(src: &str, dst: &str, id: u16) -> Vec<u8> {
    let ips = IpPair::new(src.parse().unwrap(), dst.parse().unwrap()).unwrap();
    let mut f = build_frame(&FrameSpec::new(ips, L4Spec::Raw { protocol: Protocol::Udp }).with_payload(vec![8u8; 40]));
    f[18..20].copy_from_slice(&id.to_be_bytes());
    f[20..22].copy_from_slice(&9u16.to_be_bytes());
    flowgate_wire::ipv4::Packet::new_checked(&mut f[14..]).unwrap().fill_checksum();
    f
}

/// A later IPv6 fragment (offset 72 bytes) of datagram `id`: a Fragment header, then bytes.
fn later_fragment6(src: &str, dst: &str, id: u32) -> Vec<u8> {
    let ips = IpPair::new(src.parse().unwrap(), dst.parse().unwrap()).unwrap();
    let mut body = vec![17u8, 0, 0, 9 << 3];
    body.extend_from_slice(&id.to_be_bytes());
    body.extend_from_slice(&[8u8; 40]);
    build_frame(&FrameSpec::new(ips, L4Spec::Raw { protocol: Protocol::from(44) }).with_payload(body))
}

/// (source, destination) of an IPv4 frame, and whether its header checksum holds.
fn addresses(f: &[u8]) -> (IpAddr, IpAddr, bool) {
    let ip = flowgate_wire::ipv4::Packet::new_checked(&f[14..]).unwrap();
    (IpAddr::V4(ip.src_addr()), IpAddr::V4(ip.dst_addr()), ip.verify_checksum())
}

#[test]
fn later_fragments_follow_their_first_fragment_or_are_dropped() {
    if !flowgate_ebpf::privileged_test("later_fragments_follow_their_first_fragment_or_are_dropped") {
        return;
    }
    let state = flowgate_cluster::load_str(Path::new("m.yaml"), MANIFESTS).unwrap().state;
    let policy = flowgate_compiler::compile(&state, Some("node-a")).unwrap().policy;
    let b_port = policy.endpoint_for("10.0.1.5".parse().unwrap()).unwrap();

    let ns = Netns::new().unwrap();
    ns.run(|| {
        let mut loaded = flowgate_ebpf::load_all(&[objects::UPLINK, objects::ENDPOINT], None, &[]).unwrap();
        let dp = EbpfDataplane::new(KernelMaps::take(&mut loaded[0].ebpf).unwrap());
        dp.apply(&policy, &PolicyDelta::full()).unwrap();
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
            (r, l.reason)
        };
        let mut sw = Switch::new(Arc::new(policy.clone()));
        let mut failures = Vec::new();
        // (from a pod?, source, destination, destination port, identification, what)
        let datagrams: [(bool, &str, &str, u16, u16, &str); 4] = [
            (false, "203.0.113.7", "192.168.0.2", 30053, 0x1111, "client to the NodePort (DNAT, masquerade)"),
            (false, "203.0.113.7", "10.96.0.10", 53, 0x2222, "client to the ClusterIP (DNAT)"),
            (true, "10.0.1.5", "203.0.113.7", 9999, 0x3333, "pod out through outbound NAT (SNAT)"),
            (false, "203.0.113.7", "10.0.1.6", 9999, 0x4444, "client to the isolated pod (denied)"),
        ];
        for (from_pod, src, dst, dport, id, what) in datagrams {
            let ingress = if from_pod { b_port } else { PortId::UPLINK };
            let key = FlowKey { src: src.parse().unwrap(), dst: dst.parse().unwrap(), proto: Proto::UDP, sport: 40000, dport };
            let model = sw.process(ingress, key, 0);
            let (first, _) = run(from_pod, &first_fragment(src, dst, dport, id));
            let (later, reason) = run(from_pod, &later_fragment(src, dst, id));
            match model.verdict {
                Verdict::Allow => {
                    let (fs, fd, _) = addresses(&first.output);
                    let (ls, ld, ok) = addresses(&later.output);
                    if first.retval != 0 || fs != model.packet.src || fd != model.packet.dst {
                        failures.push(format!("{what}: first fragment {fs} -> {fd} (retval {}), model {}", first.retval, model.packet));
                    }
                    if later.retval != 0 || (ls, ld) != (fs, fd) || !ok {
                        failures.push(format!(
                            "{what}: later fragment {ls} -> {ld} (retval {}, checksum ok {ok}), first went {fs} -> {fd}",
                            later.retval
                        ));
                    }
                }
                _ => {
                    if first.retval != 2 || later.retval != 2 || Some(reason) != model.reason.map(|r| r as u8) {
                        failures.push(format!(
                            "{what}: model {:?} {:?}, kernel first {} later {} (reason {reason})",
                            model.verdict, model.reason, first.retval, later.retval
                        ));
                    }
                }
            }
        }
        // A later fragment whose first fragment was never seen: dropped, whatever its destination.
        for (from_pod, src, dst) in
            [(false, "203.0.113.7", "192.168.0.2"), (false, "203.0.113.7", "10.0.1.5"), (true, "10.0.1.5", "203.0.113.7")]
        {
            let (r, reason) = run(from_pod, &later_fragment(src, dst, 0x5555));
            if (r.retval, reason) != (2, 10) {
                failures.push(format!("a stray later fragment {src} -> {dst}: retval {} reason {reason}", r.retval));
            }
        }
        let (r, reason) = run(false, &later_fragment6("2001:db8::7", "fd00::5", 0x6666_6666));
        if (r.retval, reason) != (2, 10) {
            failures.push(format!("a stray later IPv6 fragment: retval {} reason {reason}", r.retval));
        }
        // Anti-spoofing still comes first: a later fragment as the node is spoofed, not a stray.
        let (r, reason) = run(false, &later_fragment("192.168.0.2", "10.0.1.5", 0x1111));
        if (r.retval, reason) != (2, 6) {
            failures.push(format!("a later fragment as the node: retval {} reason {reason}", r.retval));
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        let counters = dp.counters();
        let stray = counters.iter().find(|(n, _)| n == "dropped_fragment").map(|(_, v)| *v);
        assert_eq!(stray, Some(4), "{counters:?}");
    })
    .unwrap();
}
