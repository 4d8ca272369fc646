//! Cached flows and a policy change, in the kernel and in the model engine alike: replies follow
//! their connection's forward entry; when that entry is gone (evicted from the LRU flow table),
//! the reply entry goes too and the packet is decided as a new connection under the policy in
//! force — no reply entry outlives the policy that allowed its connection.
//!
//! Pods x/a (10.0.1.11) and y/a (10.0.1.21) of the x/y/z model; the policy changes from none to
//! `82-netpol-xyz-default-deny-all.yaml`'s. Packets run through the from-endpoint program with
//! BPF_PROG_TEST_RUN.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod scenario;

use std::sync::Arc;

use aya::maps::{HashMap as BpfHashMap, PerCpuArray};
use flowgate_dataplane::Dataplane;
use flowgate_ebpf::backend::{EbpfDataplane, KernelMaps};
use flowgate_ebpf::{maps, objects, test_run};
use flowgate_switch::{FlowKey, Proto, Switch, Verdict};
use flowgate_wire::{build_frame, tcp, FrameSpec, IpPair, L4Spec};

#[test]
fn replies_do_not_outlive_their_connection_under_a_new_policy() {
    if !flowgate_ebpf::privileged_test("replies_do_not_outlive_their_connection_under_a_new_policy") {
        return;
    }
    let deny_all = scenario::state("82-netpol-xyz-default-deny-all.yaml");
    assert!(!deny_all.network_policies.is_empty());
    let mut open = deny_all.clone();
    open.network_policies.clear();
    let mut compiler = flowgate_compiler::Compiler::new(Some("node-a".into()));

    let mut loaded = flowgate_ebpf::load(objects::ENDPOINT, None, &[]).unwrap();
    let dp = EbpfDataplane::new(KernelMaps::take(&mut loaded.ebpf).unwrap());
    let mut flows: BpfHashMap<_, maps::FlowKey, maps::Flow> =
        BpfHashMap::try_from(loaded.ebpf.take_map("fg_flows").unwrap()).unwrap();
    let last: PerCpuArray<_, maps::Last> = PerCpuArray::try_from(loaded.ebpf.take_map("fg_last").unwrap()).unwrap();
    let prog = loaded.classifier("fg_from_endpoint").unwrap();
    let kernel = |key: &FlowKey| -> (Verdict, u8) {
        let frame = build_frame(&FrameSpec::new(
            IpPair::new(key.src, key.dst).unwrap(),
            L4Spec::tcp(key.sport, key.dport, tcp::Flags::ACK),
        ));
        let r = test_run(prog, &frame).unwrap();
        let reason = last.get(&0, 0).unwrap().iter().map(|l| l.reason).max().unwrap_or(0);
        (if r.retval == 0 { Verdict::Allow } else { Verdict::Drop }, reason)
    };

    let forward = FlowKey::new("10.0.1.11:41000".parse().unwrap(), "10.0.1.21:80".parse().unwrap(), Proto::TCP);
    let reply = forward.reversed();
    let delta = compiler.compile_full(&open).unwrap();
    dp.apply(compiler.policy().unwrap(), &delta).unwrap();
    let mut model = Switch::new(Arc::new(compiler.policy().unwrap().clone()));
    let a = compiler.policy().unwrap().endpoint_for(forward.src).unwrap();
    let b = compiler.policy().unwrap().endpoint_for(forward.dst).unwrap();

    // The connection, allowed by no policy at all.
    assert_eq!(kernel(&forward).0, Verdict::Allow);
    assert_eq!(kernel(&reply).0, Verdict::Allow);
    assert_eq!(model.process(a, forward, 0).verdict, Verdict::Allow);
    assert_eq!(model.process(b, reply, 0).verdict, Verdict::Allow);

    // Deny-all: while the forward entry is there (not yet re-checked: the client is silent), the
    // server's replies still pass (the documented behaviour)...
    let mut changes = flowgate_compiler::Changes::default();
    changes.network_policies.extend(deny_all.network_policies.keys().cloned());
    let delta = compiler.update(&deny_all, &changes).unwrap();
    dp.apply(compiler.policy().unwrap(), &delta).unwrap();
    model.set_policy(Arc::new(compiler.policy().unwrap().clone()));
    assert_eq!(kernel(&reply).0, Verdict::Allow);
    assert_eq!(model.process(b, reply, 1).verdict, Verdict::Allow);

    // ...but once the forward entry is evicted, the reply entry goes and the server's packet is a
    // new connection, which the policy denies.
    flows.remove(&maps::FlowKey::of(&forward)).unwrap();
    model.evict(&forward);
    assert_eq!(kernel(&reply), (Verdict::Drop, 7), "kernel: a reply without its connection");
    assert_eq!(model.process(b, reply, 2).verdict, Verdict::Drop, "model: a reply without its connection");
    // The client's next packet is a new connection too: denied.
    assert_eq!(kernel(&forward), (Verdict::Drop, 7));
    assert_eq!(model.process(a, forward, 3).verdict, Verdict::Drop);
}
