//! Anti-spoofing on endpoints: once a pod's host-side interface is bound to its port, packets
//! entering through it must carry the pod's MAC and one of its addresses, whatever their protocol
//! (ARP, and IPv6 neighbour discovery from link-local sources, excepted); anything else is dropped (reason "spoofed") before
//! any translation. Run on a real veth's ifindex (the program reads
//! `skb->ifindex`), inside a throw-away network namespace.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use aya::maps::PerCpuArray;
use flowgate_dataplane::Dataplane;
use flowgate_ebpf::backend::{EbpfDataplane, KernelMaps};
use flowgate_ebpf::netns::Netns;
use flowgate_ebpf::{maps, objects, test_run_with, SkbContext};
use flowgate_switch::PolicyDelta;
use flowgate_wire::{build_frame, tcp, FrameSpec, IpPair, L4Spec};

const MANIFESTS: &str = "apiVersion: v1\nkind: Node\nmetadata: {name: node-a}\nstatus: {addresses: [{type: InternalIP, address: 192.168.0.2}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {nodeName: node-a, containers: [{name: c, image: i}]}\nstatus: {podIP: 10.0.1.5}\n";

fn frame(src: &str, mac: [u8; 6]) -> Vec<u8> {
    let ips = IpPair::new(src.parse().unwrap(), "10.0.2.7".parse().unwrap()).unwrap();
    let mut f = build_frame(&FrameSpec::new(ips, L4Spec::tcp(40000, 8080, tcp::Flags::SYN)));
    f[6..12].copy_from_slice(&mac);
    f
}

#[test]
fn endpoints_cannot_send_as_someone_else() {
    if !flowgate_ebpf::privileged_test("endpoints_cannot_send_as_someone_else") {
        return;
    }
    let state = flowgate_cluster::load_str(Path::new("m.yaml"), MANIFESTS).unwrap().state;
    let policy = flowgate_compiler::compile(&state, Some("node-a")).unwrap().policy;
    let pod_port = policy.endpoint_for("10.0.1.5".parse().unwrap()).unwrap();

    let ns = Netns::new().unwrap();
    ns.add_veth_pair("fgh0", "fgp0").unwrap();
    let host_ifindex = ns.ifindex("fgh0").unwrap();
    let pod_mac = ns.mac("fgp0").unwrap();
    ns.run(|| {
        let mut loaded = flowgate_ebpf::load(objects::ENDPOINT, None, &[]).unwrap();
        let dp = EbpfDataplane::new(KernelMaps::take(&mut loaded.ebpf).unwrap());
        dp.apply(&policy, &PolicyDelta::full()).unwrap();
        let last: PerCpuArray<_, maps::Last> = PerCpuArray::try_from(loaded.ebpf.take_map("fg_last").unwrap()).unwrap();
        let prog = loaded.classifier("fg_from_endpoint").unwrap();
        let ctx = SkbContext { ifindex: host_ifindex, ..SkbContext::default() };
        let run = |f: &[u8]| {
            let r = test_run_with(prog, f, Some(&ctx), 1).unwrap();
            let l =
                last.get(&0, 0).unwrap().iter().find(|l| l.verdict != 0 || l.reason != 0).copied().unwrap_or_default();
            (r.retval, l.reason)
        };

        // Not bound yet: the program does not know whose interface this is.
        assert_eq!(run(&frame("10.0.1.99", pod_mac)).0, 0);

        dp.bind_endpoint(host_ifindex, pod_port, Some(pod_mac)).unwrap();
        assert_eq!(run(&frame("10.0.1.5", pod_mac)).0, 0, "the pod itself passes");
        assert_eq!(run(&frame("10.0.1.99", pod_mac)), (2, 6), "another address: dropped as spoofed");
        assert_eq!(run(&frame("10.0.1.5", [2, 0, 0, 0, 0, 1])), (2, 6), "another MAC: dropped as spoofed");
        // Whatever the protocol: ICMP, a protocol the switch does not walk (GRE), a fragment.
        let echo = |src: &str, dst: &str| {
            let ips = IpPair::new(src.parse().unwrap(), dst.parse().unwrap()).unwrap();
            let mut f = build_frame(&FrameSpec::new(ips, L4Spec::icmp_echo(1, 1)));
            f[6..12].copy_from_slice(&pod_mac);
            f
        };
        assert_eq!(run(&echo("10.0.1.5", "10.0.2.7")).0, 0, "the pod's own ping passes");
        assert_eq!(run(&echo("10.0.1.99", "10.0.2.7")), (2, 6), "a ping from another address: spoofed");
        let mut gre = frame("10.0.1.99", pod_mac);
        gre[14 + 9] = 47;
        assert_eq!(run(&gre), (2, 6), "GRE from another address: spoofed");
        gre[14 + 12..14 + 16].copy_from_slice(&[10, 0, 1, 5]);
        assert_eq!(run(&gre).0, 0, "GRE from the pod's address passes (not the switch's protocol)");
        let mut fragment = frame("10.0.1.99", pod_mac);
        fragment[14 + 6..14 + 8].copy_from_slice(&0x0010u16.to_be_bytes());
        assert_eq!(run(&fragment), (2, 6), "a later fragment from another address: spoofed");
        // IPv6 neighbor discovery comes from link-local addresses; ARP passes; VLAN tags do not.
        assert_eq!(run(&echo("fe80::1", "fe80::2")), (2, 6), "a link-local source is for neighbour discovery only");
        assert_eq!(run(&echo("::ffff:10.0.1.5", "fd00::7")), (2, 6), "the pod's IPv4 address, IPv4-mapped in IPv6");
        let mut arp = vec![0xffu8; 6];
        arp.extend_from_slice(&pod_mac);
        arp.extend_from_slice(&[0x08, 0x06]);
        arp.extend_from_slice(&[0u8; 28]);
        assert_eq!(run(&arp).0, 0, "ARP passes");
        let mut tagged = frame("10.0.1.5", pod_mac);
        tagged[12..14].copy_from_slice(&[0x81, 0x00]);
        assert_eq!(run(&tagged), (2, 6), "a VLAN-tagged frame: dropped");

        // The pod goes away: its address is no longer accepted on that interface either.
        let empty = flowgate_compiler::compile(
            &flowgate_cluster::load_str(Path::new("m.yaml"), MANIFESTS.split("---").next().unwrap()).unwrap().state,
            Some("node-a"),
        )
        .unwrap()
        .policy;
        dp.apply(&empty, &PolicyDelta::full()).unwrap();
        assert_eq!(run(&frame("10.0.1.5", pod_mac)), (2, 6));
        dp.unbind_endpoint(host_ifindex).unwrap();
        assert_eq!(run(&frame("10.0.1.5", pod_mac)).0, 0);
    })
    .unwrap();
}

/// Nothing arriving from the network may send as a pod of this node (NetworkPolicy judges pods by
/// their source address): the uplink program drops it as spoofed, before the flow table — also
/// when its 5-tuple is that of the pod's own connection — and so does the model. Once the pod is
/// gone, its address is anyone's again.
#[test]
fn the_network_cannot_send_as_a_pod_of_the_node() {
    if !flowgate_ebpf::privileged_test("the_network_cannot_send_as_a_pod_of_the_node") {
        return;
    }
    let state = flowgate_cluster::load_str(Path::new("m.yaml"), MANIFESTS).unwrap().state;
    let policy = flowgate_compiler::compile(&state, Some("node-a")).unwrap().policy;
    let empty = flowgate_compiler::compile(
        &flowgate_cluster::load_str(Path::new("m.yaml"), MANIFESTS.split("---").next().unwrap()).unwrap().state,
        Some("node-a"),
    )
    .unwrap()
    .policy;
    let pod_mac = [2, 0, 0, 0, 0, 5];

    let ns = Netns::new().unwrap();
    ns.run(|| {
        let mut loaded = flowgate_ebpf::load_all(&[objects::UPLINK, objects::ENDPOINT], None, &[]).unwrap();
        let dp = EbpfDataplane::new(KernelMaps::take(&mut loaded[0].ebpf).unwrap());
        // The same maps through the endpoint object's handles: for the restarted agent below.
        let maps_again = KernelMaps::take(&mut loaded[1].ebpf).unwrap();
        dp.apply(&policy, &PolicyDelta::full()).unwrap();
        let last: PerCpuArray<_, maps::Last> =
            PerCpuArray::try_from(loaded[0].ebpf.take_map("fg_last").unwrap()).unwrap();
        let (up, ep) = loaded.split_at_mut(1);
        let uplink_prog = up[0].classifier("fg_uplink_ingress").unwrap();
        let endpoint_prog = ep[0].classifier("fg_from_endpoint").unwrap();
        let run_on = |prog: &aya::programs::SchedClassifier, f: &[u8]| {
            let r = test_run_with(prog, f, None, 1).unwrap();
            let l =
                last.get(&0, 0).unwrap().iter().find(|l| l.verdict != 0 || l.reason != 0).copied().unwrap_or_default();
            (r.retval, l.reason)
        };
        let run = |f: &[u8]| run_on(uplink_prog, f);
        let echo = |src: &str| {
            let ips = IpPair::new(src.parse().unwrap(), "10.0.2.7".parse().unwrap()).unwrap();
            build_frame(&FrameSpec::new(ips, L4Spec::icmp_echo(1, 1)))
        };

        // The pod's own connection first (through its endpoint, not bound: no MAC check), then the
        // same 5-tuple from the network.
        assert_eq!(run_on(endpoint_prog, &frame("10.0.1.5", pod_mac)).0, 0);
        assert_eq!(run(&frame("10.0.1.5", pod_mac)), (2, 6), "a pod's address from the network: spoofed");
        assert_eq!(run(&echo("10.0.1.5")), (2, 6), "a ping as the pod from the network: spoofed");
        assert_eq!(run(&frame("10.0.9.9", pod_mac)).0, 0, "any other source passes");
        assert_eq!(run_on(endpoint_prog, &frame("10.0.1.5", pod_mac)).0, 0, "the pod still sends");

        // The model says the same.
        let mut sw = flowgate_switch::Switch::new(std::sync::Arc::new(policy.clone()));
        let key = |src: &str| flowgate_switch::FlowKey {
            src: src.parse().unwrap(),
            dst: "10.0.2.7".parse().unwrap(),
            sport: 40000,
            dport: 8080,
            proto: flowgate_switch::Proto::TCP,
        };
        let pod_port = policy.endpoint_for("10.0.1.5".parse().unwrap()).unwrap();
        let ok = sw.process(pod_port, key("10.0.1.5"), 0);
        assert_eq!(ok.verdict, flowgate_switch::Verdict::Allow);
        let spoofed = sw.process(flowgate_switch::PortId::UPLINK, key("10.0.1.5"), 0);
        assert_eq!(
            (spoofed.verdict, spoofed.reason),
            (flowgate_switch::Verdict::Drop, Some(flowgate_switch::DropReason::Spoofed))
        );
        assert_eq!(sw.process(pod_port, key("10.0.1.5"), 0).verdict, flowgate_switch::Verdict::Allow);

        // The pod goes: its address passes from the network; it comes back: spoofed again (by
        // deltas, as the agent syncs).
        dp.apply(&empty, &PolicyDelta::full()).unwrap();
        assert_eq!(run(&frame("10.0.1.5", pod_mac)).0, 0, "a gone pod's address is anyone's");
        dp.apply(&policy, &PolicyDelta::full()).unwrap();
        assert_eq!(run(&frame("10.0.1.5", pod_mac)), (2, 6));
        // A restarted agent adopts the entries and keeps them.
        drop(dp);
        let adopted = EbpfDataplane::adopt(maps_again);
        adopted.apply(&policy, &PolicyDelta::full()).unwrap();
        assert_eq!(run(&frame("10.0.1.5", pod_mac)), (2, 6), "after adoption");
    })
    .unwrap();
}

/// A node with an IPv4 and an IPv6 address and pod `a`, made by the node's host networking service
/// (a local endpoint) with gateway 10.0.1.1 on its host side.
const NODE_V6: &str = "apiVersion: v1\nkind: Node\nmetadata: {name: node-a}\nstatus: {addresses: [{type: InternalIP, address: 192.168.0.2}, {type: InternalIP, address: 'fd00:1::2'}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: default}\nspec: {nodeName: node-a, containers: [{name: c, image: i}]}\nstatus: {podIP: 10.0.1.5, podIPs: [{ip: 10.0.1.5}, {ip: 'fd00:244::5'}]}\n";

/// A frame from `src` to `dst` of protocol `proto` (TCP, UDP, ICMP echo, or any other number as a
/// bare payload).
fn frame_to(src: &str, dst: &str, proto: u8) -> Vec<u8> {
    let ips = IpPair::new(src.parse().unwrap(), dst.parse().unwrap()).unwrap();
    let l4 = match proto {
        6 => L4Spec::tcp(40000, 8080, tcp::Flags::SYN),
        17 => L4Spec::udp(68, 67),
        1 | 58 => L4Spec::icmp_echo(1, 1),
        p => L4Spec::Raw { protocol: flowgate_wire::Protocol::from(p) },
    };
    build_frame(&FrameSpec::new(ips, l4).with_payload(vec![0u8; 16]))
}

/// Issue 12, "trust no forged source": a packet from the network whose source only the node may
/// use — its own address, a pod gateway's, loopback, 0.0.0.0/8 or `::` to a unicast destination,
/// multicast, the limited broadcast, IPv4-mapped IPv6 — is dropped by the uplink program as
/// spoofed before anything else, whatever its protocol and fragment offset, and the model says the
/// same; what the kernel lets in (DHCP from 0.0.0.0 to the broadcast, duplicate address detection
/// from `::`, link-local sources, anyone else) passes. Before this, the node's and the gateway's
/// addresses passed the uplink, and NetworkPolicy (which lets the node's own traffic through)
/// opened isolated pods to them.
#[test]
fn the_network_cannot_send_as_the_node() {
    if !flowgate_ebpf::privileged_test("the_network_cannot_send_as_the_node") {
        return;
    }
    let mut state = flowgate_cluster::load_str(Path::new("m.yaml"), NODE_V6).unwrap().state;
    state.local_endpoints.insert(
        flowgate_cluster::ObjectKey::new("default".to_owned(), "a".to_owned()),
        flowgate_cluster::LocalEndpoint {
            ips: vec!["10.0.1.5".parse().unwrap(), "fd00:244::5".parse().unwrap()],
            gateways: vec!["10.0.1.1".parse().unwrap(), "fd00:244::1".parse().unwrap()],
            ..flowgate_cluster::LocalEndpoint::default()
        },
    );
    let policy = flowgate_compiler::compile(&state, Some("node-a")).unwrap().policy;

    let ns = Netns::new().unwrap();
    ns.run(|| {
        let mut loaded = flowgate_ebpf::load(objects::UPLINK, None, &[]).unwrap();
        let dp = EbpfDataplane::new(KernelMaps::take(&mut loaded.ebpf).unwrap());
        dp.apply(&policy, &PolicyDelta::full()).unwrap();
        let last: std::cell::RefCell<PerCpuArray<_, maps::Last>> =
            std::cell::RefCell::new(PerCpuArray::try_from(loaded.ebpf.take_map("fg_last").unwrap()).unwrap());
        let cpus = aya::util::nr_cpus().unwrap();
        let prog = loaded.classifier("fg_uplink_ingress").unwrap();
        let run = |f: &[u8]| {
            // (Cleared first: the outcome read is this run's, on whichever CPU ran it.)
            let clear = aya::maps::PerCpuValues::try_from(vec![maps::Last::default(); cpus]).unwrap();
            last.borrow_mut().set(0, clear, 0).unwrap();
            let r = test_run_with(prog, f, None, 1).unwrap();
            let l = last.borrow().get(&0, 0).unwrap().iter().find(|l| l.verdict != 0).copied().unwrap_or_default();
            (r.retval, l.reason)
        };
        let mut failures = Vec::new();
        let mut check = |src: &str, dst: &str, proto: u8, spoofed: bool, what: &str| {
            let got = run(&frame_to(src, dst, proto));
            let want = if spoofed { (2, 6) } else { (0, 0) };
            // The model, for the same packet from the uplink.
            let mut sw = flowgate_switch::Switch::new(std::sync::Arc::new(policy.clone()));
            let has_ports = matches!(proto, 6 | 17);
            let key = flowgate_switch::FlowKey {
                src: src.parse().unwrap(),
                dst: dst.parse().unwrap(),
                sport: if has_ports { 40000 } else { 0 },
                dport: if has_ports { 8080 } else { 0 },
                proto: flowgate_switch::Proto(proto),
            };
            let model = sw.process(flowgate_switch::PortId::UPLINK, key, 0);
            let model_spoofed = model.reason == Some(flowgate_switch::DropReason::Spoofed);
            if got != want || model_spoofed != spoofed {
                failures.push(format!(
                    "{what}: {src} -> {dst} proto {proto}: kernel {got:?}, model {:?} {:?}, want spoofed = {spoofed}",
                    model.verdict, model.reason
                ));
            }
        };
        check("192.168.0.2", "10.0.1.5", 17, true, "the node's address");
        check("192.168.0.2", "10.0.1.5", 6, true, "the node's address, TCP");
        check("10.0.1.1", "10.0.1.5", 17, true, "a pod gateway's address");
        check("fd00:1::2", "fd00:244::5", 17, true, "the node's IPv6 address");
        check("fd00:244::1", "fd00:244::5", 17, true, "a pod gateway's IPv6 address");
        check("10.0.1.1", "10.0.1.5", 47, true, "GRE from a gateway");
        check("192.168.0.2", "10.0.1.5", 1, true, "a ping from the node's address");
        check("127.0.0.1", "10.0.1.5", 17, true, "loopback");
        check("127.9.9.9", "192.168.0.2", 6, true, "loopback to the node");
        check("0.0.0.0", "10.0.1.5", 17, true, "0.0.0.0 to a pod");
        check("0.1.2.3", "10.0.1.5", 17, true, "0.0.0.0/8 to a pod");
        check("224.0.0.5", "10.0.1.5", 17, true, "a multicast source");
        check("255.255.255.255", "10.0.1.5", 17, true, "the limited broadcast as source");
        check("::1", "fd00:244::5", 17, true, "IPv6 loopback");
        check("::", "fd00:244::5", 17, true, "the unspecified address to a pod");
        check("ff02::1", "fd00:244::5", 17, true, "an IPv6 multicast source");
        check("::ffff:10.0.1.1", "fd00:244::5", 17, true, "an IPv4-mapped gateway");
        check("::ffff:203.0.113.7", "fd00:244::5", 17, true, "any IPv4-mapped source");
        check("0.0.0.0", "255.255.255.255", 17, false, "DHCP discover");
        check("0.0.0.0", "224.0.0.22", 2, false, "IGMP from 0.0.0.0");
        check("::", "ff02::1:ff00:5", 58, false, "duplicate address detection");
        check("fe80::1", "fd00:244::5", 17, false, "a link-local IPv6 source");
        check("169.254.169.254", "10.0.1.5", 17, false, "a link-local IPv4 source (metadata services)");
        check("203.0.113.7", "10.0.1.5", 17, false, "anyone else");
        check("240.0.0.1", "10.0.1.5", 17, false, "class E (not a martian for Linux)");
        // A later fragment carries no ports, and a forged one is as forged.
        let mut fragment = frame_to("192.168.0.2", "10.0.1.5", 17);
        fragment[14 + 6..14 + 8].copy_from_slice(&0x0010u16.to_be_bytes());
        if run(&fragment) != (2, 6) {
            failures.push("a later fragment from the node's address passed".into());
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));

        // The gateways and the node's addresses are counted as spoofed drops.
        let counters = dp.counters();
        let spoofed = counters.iter().find(|(name, _)| name.contains("spoofed")).map(|(_, v)| *v);
        assert_eq!(spoofed, Some(19), "{counters:?}");
    })
    .unwrap();
}

/// An ICMPv6 message of type `icmp_type` (code 0, 20 bytes of body) from `src` to `dst`, after a
/// Hop-by-Hop Options header with a router alert when `hop_by_hop` (as MLD sends it).
fn icmp6(src: &str, dst: &str, icmp_type: u8, hop_by_hop: bool, mac: [u8; 6]) -> Vec<u8> {
    let ips = IpPair::new(src.parse().unwrap(), dst.parse().unwrap()).unwrap();
    let mut body = vec![icmp_type, 0, 0, 0];
    body.extend_from_slice(&[0u8; 20]);
    let mut f = if hop_by_hop {
        let mut hbh = vec![58u8, 0, 5, 2, 0, 0, 1, 0];
        hbh.extend_from_slice(&body);
        let mut f = build_frame(
            &FrameSpec::new(ips, L4Spec::Raw { protocol: flowgate_wire::Protocol::from(0) }).with_payload(hbh),
        );
        f[14 + 6] = 0;
        f
    } else {
        build_frame(
            &FrameSpec::new(ips, L4Spec::Raw { protocol: flowgate_wire::Protocol::from(58) }).with_payload(body),
        )
    };
    f[6..12].copy_from_slice(&mac);
    f
}

/// Issue 12, item 3: a pod's IPv6 link-local (and unspecified) source is for what the pod needs on
/// the link — neighbour discovery and multicast listener discovery, to a link-local or multicast
/// destination — and nothing else: not a ping, not UDP to the gateway, not neighbour discovery
/// aimed at a routed address; whatever the pod's egress policy, on-link discovery passes. The
/// endpoint program and the model agree. Before this, every packet with a link-local source passed
/// the endpoint's anti-spoofing check (and went on to the switch, unjudged as ICMP).
#[test]
fn a_pods_link_local_source_is_for_neighbour_discovery_only() {
    if !flowgate_ebpf::privileged_test("a_pods_link_local_source_is_for_neighbour_discovery_only") {
        return;
    }
    // The pod isolated for egress with no rule: on-link discovery must still pass.
    let manifests = format!(
        "{NODE_V6}---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: deny, namespace: default}}\nspec: {{podSelector: {{}}, policyTypes: [Egress]}}\n"
    );
    let state = flowgate_cluster::load_str(Path::new("m.yaml"), &manifests).unwrap().state;
    let policy = flowgate_compiler::compile(&state, Some("node-a")).unwrap().policy;
    let pod_port = policy.endpoint_for("fd00:244::5".parse().unwrap()).unwrap();

    let ns = Netns::new().unwrap();
    ns.add_veth_pair("fgh0", "fgp0").unwrap();
    let host_ifindex = ns.ifindex("fgh0").unwrap();
    let mac = ns.mac("fgp0").unwrap();
    ns.run(|| {
        let mut loaded = flowgate_ebpf::load(objects::ENDPOINT, None, &[]).unwrap();
        let dp = EbpfDataplane::new(KernelMaps::take(&mut loaded.ebpf).unwrap());
        dp.apply(&policy, &PolicyDelta::full()).unwrap();
        dp.bind_endpoint(host_ifindex, pod_port, Some(mac)).unwrap();
        let last: std::cell::RefCell<PerCpuArray<_, maps::Last>> =
            std::cell::RefCell::new(PerCpuArray::try_from(loaded.ebpf.take_map("fg_last").unwrap()).unwrap());
        let cpus = aya::util::nr_cpus().unwrap();
        let prog = loaded.classifier("fg_from_endpoint").unwrap();
        let ctx = SkbContext { ifindex: host_ifindex, ..SkbContext::default() };
        let run = |f: &[u8]| {
            let clear = aya::maps::PerCpuValues::try_from(vec![maps::Last::default(); cpus]).unwrap();
            last.borrow_mut().set(0, clear, 0).unwrap();
            let r = test_run_with(prog, f, Some(&ctx), 1).unwrap();
            let l = last.borrow().get(&0, 0).unwrap().iter().find(|l| l.verdict != 0).copied().unwrap_or_default();
            (r.retval, l.reason)
        };
        let mut sw = flowgate_switch::Switch::new(std::sync::Arc::new(policy.clone()));
        let mut failures = Vec::new();
        // (src, dst, what: ICMPv6 type or 17 for UDP, with a hop-by-hop header, passes, why)
        let cases: [(&str, &str, u8, bool, bool, &str); 11] = [
            ("fe80::5", "ff02::1:ff00:1", 135, false, true, "neighbour solicitation to a solicited-node group"),
            ("fe80::5", "fe80::1", 135, false, true, "neighbour solicitation to the gateway's link-local address"),
            ("fe80::5", "fe80::1", 136, false, true, "neighbour advertisement"),
            ("fe80::5", "ff02::2", 133, false, true, "router solicitation"),
            ("::", "ff02::1:ff00:5", 135, false, true, "duplicate address detection"),
            ("fe80::5", "ff02::16", 143, true, true, "an MLDv2 report after a router alert"),
            ("fe80::5", "fd00:1::2", 135, false, false, "neighbour solicitation to a routed address"),
            ("fe80::5", "fd00:1::2", 128, false, false, "a ping from the link-local address"),
            ("fe80::5", "fe80::1", 128, false, false, "a ping to the gateway's link-local address"),
            ("fe80::5", "fe80::1", 17, false, false, "UDP to the gateway's link-local address"),
            ("::", "fd00:1::2", 17, false, false, "UDP from the unspecified address"),
        ];
        for (src, dst, what, hbh, passes, why) in cases {
            let frame = if what == 17 {
                let ips = IpPair::new(src.parse().unwrap(), dst.parse().unwrap()).unwrap();
                let mut f = build_frame(&FrameSpec::new(ips, L4Spec::udp(546, 547)));
                f[6..12].copy_from_slice(&mac);
                f
            } else {
                icmp6(src, dst, what, hbh, mac)
            };
            let got = run(&frame);
            let want = if passes { (0, 0) } else { (2, 6) };
            let key = flowgate_switch::FlowKey {
                src: src.parse().unwrap(),
                dst: dst.parse().unwrap(),
                proto: if what == 17 { flowgate_switch::Proto::UDP } else { flowgate_switch::Proto::ICMPV6 },
                sport: if what == 17 { 546 } else { 0 },
                dport: if what == 17 { 547 } else { 0 },
            };
            let model =
                if what == 17 { sw.process(pod_port, key, 0) } else { sw.process_icmp(pod_port, key, what, None) };
            let model_passes = model.verdict == flowgate_switch::Verdict::Allow;
            if got != want || model_passes != passes {
                failures.push(format!(
                    "{why}: kernel {got:?}, model {:?} {:?}, want passes = {passes}",
                    model.verdict, model.reason
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    })
    .unwrap();
}
