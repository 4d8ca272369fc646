//! A restarted agent adopts the ACL tables a previous one left pinned: the first (full) apply of the
//! same policy keeps them, and of another policy leaves exactly what programming that policy into
//! empty maps leaves — no table, class, verdict or endpoint entry of the old one behind — while the
//! kernel keeps deciding as the model does (BPF_PROG_TEST_RUN on the x/y/z truth tables).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod scenario;

use flowgate_dataplane::Dataplane;
use flowgate_ebpf::backend::{EbpfDataplane, KernelMaps};
use flowgate_ebpf::bpffs::TempBpffs;
use flowgate_ebpf::{maps, objects, test_run};
use flowgate_switch::{trace, FlowKey, PolicyDelta, Proto, SwitchPolicy, Verdict};
use flowgate_wire::{build_frame, tcp, FrameSpec, IpPair, L4Spec};

fn policy_of(file: &str) -> SwitchPolicy {
    flowgate_compiler::compile(&scenario::state(file), Some("node-a")).unwrap().policy
}

const PODS: [&str; 9] = [
    "10.0.1.11",
    "10.0.1.12",
    "10.0.1.13",
    "10.0.1.21",
    "10.0.1.22",
    "10.0.1.23",
    "10.0.1.31",
    "10.0.1.32",
    "10.0.1.33",
];

/// Every pod to every other on TCP 80 and 81, from outside the node (uplink ingress: only the
/// destination's ingress ACL applies); the number of disagreements with the model.
fn disagreements(loaded: &mut flowgate_ebpf::Loaded, policy: &SwitchPolicy, sport: u16) -> Vec<String> {
    let prog = loaded.classifier("fg_uplink_ingress").unwrap();
    let mut out = Vec::new();
    for (i, src) in PODS.iter().enumerate() {
        for dst in PODS.iter().filter(|d| *d != src) {
            for port in [80u16, 81] {
                // As if the source pod were on another node: it arrives on the uplink.
                let remote_src = src.replace("10.0.1.", "10.0.9.");
                let key = FlowKey::new(
                    format!("{remote_src}:{}", sport + i as u16).parse().unwrap(),
                    format!("{dst}:{port}").parse().unwrap(),
                    Proto::TCP,
                );
                let want = trace(policy, &key).verdict;
                let frame = build_frame(&FrameSpec::new(
                    IpPair::new(key.src, key.dst).unwrap(),
                    L4Spec::tcp(key.sport, key.dport, tcp::Flags::SYN),
                ));
                let got = if test_run(prog, &frame).unwrap().retval == 0 { Verdict::Allow } else { Verdict::Drop };
                if got != want {
                    out.push(format!("{key}: model {want:?}, kernel {got:?}"));
                }
            }
        }
    }
    out
}

#[test]
fn restarted_agents_adopt_acl_tables_and_leave_nothing_behind() {
    if !flowgate_ebpf::privileged_test("restarted_agents_adopt_acl_tables_and_leave_nothing_behind") {
        return;
    }
    let first = policy_of("86-netpol-xyz-ingress-ns-and-pod-one-peer.yaml");
    let second = policy_of("115-netpol-xyz-ipblock-except.yaml");
    assert!(!first.acls.is_empty() && !second.acls.is_empty());

    // What the second policy leaves in empty maps.
    let fresh = {
        let mut loaded = flowgate_ebpf::load(objects::UPLINK, None, &[]).unwrap();
        let dp = EbpfDataplane::new(KernelMaps::take(&mut loaded.ebpf).unwrap());
        dp.apply(&second, &PolicyDelta::full()).unwrap();
        dp.acl_entry_counts()
    };

    let bpffs = TempBpffs::new().unwrap();
    let pins = bpffs.path().join("flowgate");
    std::fs::create_dir_all(&pins).unwrap();
    // The first agent.
    let counts = {
        let mut loaded = flowgate_ebpf::load(objects::UPLINK, Some(&pins), &[]).unwrap();
        let dp = EbpfDataplane::new(KernelMaps::take(&mut loaded.ebpf).unwrap());
        dp.apply(&first, &PolicyDelta::full()).unwrap();
        assert_eq!(disagreements(&mut loaded, &first, 20000), Vec::<String>::new(), "first agent");
        dp.acl_entry_counts()
    };
    assert!(counts.1 > 0 && counts.2 > 0, "{counts:?}");
    // The first agent was stopped half way through repointing an endpoint: one address points at
    // a table that is not there. The next agent must write that endpoint again.
    let (tampered, good) = {
        let mut loaded = flowgate_ebpf::load(objects::UPLINK, Some(&pins), &[]).unwrap();
        let mut endpoints: aya::maps::HashMap<_, maps::Addr, maps::AclEndpoint> =
            aya::maps::HashMap::try_from(loaded.ebpf.take_map("fg_acl_endpoints").unwrap()).unwrap();
        let (tampered, good) = endpoints.iter().next().unwrap().unwrap();
        endpoints.insert(tampered, maps::AclEndpoint { egress: good.egress, ingress: 999 }, 0).unwrap();
        (tampered, good)
    };
    // A second agent adopts them: the same policy leaves them as they are (the tampered address
    // written again).
    {
        let mut loaded = flowgate_ebpf::load(objects::UPLINK, Some(&pins), &[]).unwrap();
        let dp = EbpfDataplane::adopt(KernelMaps::take(&mut loaded.ebpf).unwrap());
        assert_eq!(dp.acl_entry_counts(), counts, "adopted as pinned");
        dp.apply(&first, &PolicyDelta::full()).unwrap();
        assert_eq!(dp.acl_entry_counts(), counts, "the same policy: the same tables");
        let endpoints: aya::maps::HashMap<_, maps::Addr, maps::AclEndpoint> = aya::maps::HashMap::try_from(
            flowgate_ebpf::load(objects::UPLINK, Some(&pins), &[]).unwrap().ebpf.take_map("fg_acl_endpoints").unwrap(),
        )
        .unwrap();
        assert_eq!(endpoints.get(&tampered, 0).unwrap(), good, "the half-written endpoint is whole again");
        assert_eq!(disagreements(&mut loaded, &first, 21000), Vec::<String>::new(), "second agent");
    }
    // A third one with another policy: exactly what programming it from empty leaves.
    {
        let mut loaded = flowgate_ebpf::load(objects::UPLINK, Some(&pins), &[]).unwrap();
        let dp = EbpfDataplane::adopt(KernelMaps::take(&mut loaded.ebpf).unwrap());
        dp.apply(&second, &PolicyDelta::full()).unwrap();
        assert_eq!(dp.acl_entry_counts(), fresh, "another policy: nothing of the old one left");
        assert_eq!(disagreements(&mut loaded, &second, 22000), Vec::<String>::new(), "third agent");
        // And with no policy at all, nothing.
        let open = {
            let mut p = second.clone();
            let ports: Vec<_> = p.acls.keys().copied().collect();
            for id in ports {
                p.put_acl(id, None);
            }
            p
        };
        dp.apply(&open, &PolicyDelta::full()).unwrap();
        assert_eq!(dp.acl_entry_counts(), (0, 0, 0), "no policy: empty ACL maps");
    }
}

/// An endpoint with two addresses whose second one (in the order the agent reads them back) a
/// stopped agent left pointing at a table that is not there: the next agent writes it again,
/// though the first address looks right.
#[test]
fn a_half_repointed_dual_stack_endpoint_is_written_again() {
    if !flowgate_ebpf::privileged_test("a_half_repointed_dual_stack_endpoint_is_written_again") {
        return;
    }
    let policy = policy_of("136-netpol-dualstack.yaml");
    let bpffs = TempBpffs::new().unwrap();
    let pins = bpffs.path().join("flowgate");
    std::fs::create_dir_all(&pins).unwrap();
    let endpoints_map = || -> aya::maps::HashMap<_, maps::Addr, maps::AclEndpoint> {
        let mut loaded = flowgate_ebpf::load(objects::UPLINK, Some(&pins), &[]).unwrap();
        aya::maps::HashMap::try_from(loaded.ebpf.take_map("fg_acl_endpoints").unwrap()).unwrap()
    };
    {
        let mut loaded = flowgate_ebpf::load(objects::UPLINK, Some(&pins), &[]).unwrap();
        let dp = EbpfDataplane::new(KernelMaps::take(&mut loaded.ebpf).unwrap());
        dp.apply(&policy, &PolicyDelta::full()).unwrap();
    }
    // The server's two addresses, in the map's order: the second one is tampered with.
    let server =
        [maps::Addr::from_ip("10.0.1.10".parse().unwrap()), maps::Addr::from_ip("fd00:0:0:1::a".parse().unwrap())];
    let mut map = endpoints_map();
    let order: Vec<(maps::Addr, maps::AclEndpoint)> =
        map.iter().map(|e| e.unwrap()).filter(|(a, _)| server.contains(a)).collect();
    assert_eq!(order.len(), 2, "the server's two addresses have ACL entries");
    let (second, good) = order[1];
    map.insert(second, maps::AclEndpoint { egress: good.egress, ingress: 999 }, 0).unwrap();
    drop(map);
    {
        let mut loaded = flowgate_ebpf::load(objects::UPLINK, Some(&pins), &[]).unwrap();
        let dp = EbpfDataplane::adopt(KernelMaps::take(&mut loaded.ebpf).unwrap());
        dp.apply(&policy, &PolicyDelta::full()).unwrap();
    }
    assert_eq!(endpoints_map().get(&second, 0).unwrap(), good, "the second address is whole again");
}
