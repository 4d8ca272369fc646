//! The stateful engine: first packets walk the layers, later packets and replies hit the flow
//! table, policy changes are re-checked, affinity and NAT ports behave.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::{key, policy, sa, VIP};
use flowgate_switch::{
    trace, Action, AddrMatch, Conditions, Deliver, DropReason, LayerKind, PortId, PrefixSet, Rule, RuleGroup,
    RuleIndex, Selection, Verdict,
};

#[test]
fn first_packet_walks_then_flow_table_answers_both_directions() {
    let mut sw = flowgate_switch::Switch::new(Arc::new(policy(&["10.0.1.6:8080"], Selection::Random, false)));
    let k = key("10.0.1.5:40000", VIP);
    let first = sw.process(PortId(2), k, 0);
    assert_eq!(first.verdict, Verdict::Allow);
    assert!(!first.cached);
    assert_eq!(first.packet.dst_socket(), sa("10.0.1.6:8080"));
    assert_eq!(first.packet.src_socket(), sa("10.0.1.5:40000"), "no masquerade");
    assert_eq!(first.egress, Some(PortId(3)));
    assert_eq!(sw.flows().len(), 2, "one entry per direction");

    let again = sw.process(PortId(2), k, 1);
    assert!(again.cached);
    assert_eq!(again.packet, first.packet);

    let reply = sw.process(PortId(3), first.packet.reversed(), 1);
    assert!(reply.cached);
    assert_eq!(reply.packet.src_socket(), sa(VIP), "reply comes from the VIP");
    assert_eq!(reply.packet.dst_socket(), sa("10.0.1.5:40000"));
    assert_eq!(reply.egress, Some(PortId(2)));
}

#[test]
fn masquerade_rewrites_source_and_reply_is_restored() {
    let mut sw = flowgate_switch::Switch::new(Arc::new(policy(&["10.0.2.7:8080"], Selection::Random, true)));
    let k = key("203.0.113.7:5555", VIP);
    let out = sw.process(PortId::UPLINK, k, 0);
    assert_eq!(out.packet.src_socket(), sa("192.168.0.2:5555"));
    assert_eq!(out.packet.dst_socket(), sa("10.0.2.7:8080"));
    let reply = sw.process(PortId::UPLINK, out.packet.reversed(), 0);
    assert_eq!(reply.packet.src_socket(), sa(VIP));
    assert_eq!(reply.packet.dst_socket(), sa("203.0.113.7:5555"));
    assert_eq!(reply.egress, Some(PortId::UPLINK));
}

#[test]
fn nat_ports_never_collide() {
    let mut sw = flowgate_switch::Switch::new(Arc::new(policy(&["10.0.2.7:8080"], Selection::Random, true)));
    let a = sw.process(PortId::UPLINK, key("203.0.113.7:5555", VIP), 0);
    let b = sw.process(PortId::UPLINK, key("203.0.113.8:5555", VIP), 0);
    assert_eq!(a.packet.src_socket(), sa("192.168.0.2:5555"));
    assert_eq!(b.packet.src.to_string(), "192.168.0.2");
    assert_ne!(b.packet.sport, 5555, "second client with the same port gets another NAT port");
    let rb = sw.process(PortId::UPLINK, b.packet.reversed(), 0);
    assert_eq!(rb.packet.dst_socket(), sa("203.0.113.8:5555"));
}

#[test]
fn policy_change_rechecks_cached_flows() {
    let p1 = policy(&["10.0.1.6:8080", "10.0.2.7:8080"], Selection::Random, false);
    let mut sw = flowgate_switch::Switch::new(Arc::new(p1));
    // Find a connection that went to 10.0.2.7 and one that went to 10.0.1.6.
    let mut to_remote = None;
    let mut to_local = None;
    for port in 40000..40100 {
        let k = key(&format!("10.0.1.5:{port}"), VIP);
        let o = sw.process(PortId(2), k, 0);
        if o.packet.dst_socket() == sa("10.0.2.7:8080") {
            to_remote.get_or_insert(k);
        } else {
            to_local.get_or_insert(k);
        }
    }
    let (to_remote, to_local) = (to_remote.unwrap(), to_local.unwrap());
    // The remote backend goes away.
    sw.set_policy(Arc::new(policy(&["10.0.1.6:8080"], Selection::Random, false)));
    let kept = sw.process(PortId(2), to_local, 1);
    assert_eq!(kept.packet.dst_socket(), sa("10.0.1.6:8080"));
    assert!(kept.cached, "still valid: re-checked and kept");
    let moved = sw.process(PortId(2), to_remote, 1);
    assert_eq!(moved.packet.dst_socket(), sa("10.0.1.6:8080"), "re-decided onto a live backend");
    assert!(!moved.cached);
    // And if the service disappears entirely, the flow is no longer translated.
    let mut empty = policy(&[], Selection::Random, false);
    empty.layer_mut(LayerKind::Lb).groups.clear();
    sw.set_policy(Arc::new(empty));
    let gone = sw.process(PortId(2), to_local, 2);
    assert_eq!(gone.packet.dst_socket(), sa(VIP));
}

#[test]
fn client_ip_affinity_pins_a_client_to_one_backend() {
    let backends = ["10.0.2.1:80", "10.0.2.2:80", "10.0.2.3:80", "10.0.2.4:80"];
    let mut sticky =
        flowgate_switch::Switch::new(Arc::new(policy(&backends, Selection::ClientIp { timeout_seconds: 10 }, false)));
    let mut random = flowgate_switch::Switch::new(Arc::new(policy(&backends, Selection::Random, false)));
    let mut seen_sticky = std::collections::BTreeSet::new();
    let mut seen_random = std::collections::BTreeSet::new();
    for port in 40000..40050 {
        let k = key(&format!("203.0.113.7:{port}"), VIP);
        seen_sticky.insert(sticky.process(PortId::UPLINK, k, 5).packet.dst_socket());
        seen_random.insert(random.process(PortId::UPLINK, k, 5).packet.dst_socket());
    }
    assert_eq!(seen_sticky.len(), 1, "affinity keeps the client on one backend");
    assert!(seen_random.len() > 1, "without affinity connections spread");
    // Past the timeout the client is balanced afresh (and pinned again).
    let mut after = std::collections::BTreeSet::new();
    for (i, port) in (41000..41050).enumerate() {
        let k = key(&format!("203.0.113.7:{port}"), VIP);
        after.insert(sticky.process(PortId::UPLINK, k, 100 + i as u64).packet.dst_socket());
    }
    assert_eq!(after.len(), 1);
}

#[test]
fn spoofed_sources_are_dropped_and_refused_connections_take_no_entries() {
    let mut sw = flowgate_switch::Switch::new(Arc::new(policy(&["10.0.1.6:8080"], Selection::Random, false)));
    let spoofed = sw.process(PortId(2), key("10.0.1.99:40000", VIP), 0);
    assert_eq!((spoofed.verdict, spoofed.reason), (Verdict::Drop, Some(DropReason::Spoofed)));
    let rej = sw.process(PortId(2), key("10.0.1.5:40000", "172.30.0.20:80"), 0);
    assert_eq!((rej.verdict, rej.reason), (Verdict::Reject, Some(DropReason::NoEndpoints)));
    // Refused again, decided again: a flood of refused packets cannot fill the flow table.
    let again = sw.process(PortId(2), key("10.0.1.5:40000", "172.30.0.20:80"), 0);
    assert_eq!((again.verdict, again.cached), (Verdict::Reject, false));
    assert!(sw.flows().is_empty());
}

#[test]
fn trace_lists_every_candidate_and_flags_hairpin() {
    let p = policy(&["10.0.1.5:8080", "10.0.1.6:8080"], Selection::Random, false);
    let t = trace(&p, &key("10.0.1.5:40000", VIP));
    assert_eq!(t.verdict, Verdict::Allow);
    assert_eq!(t.dnat, vec!["10.0.1.5:8080", "10.0.1.6:8080"]);
    assert!(t.masquerade, "one candidate is the source itself");
    assert_eq!(t.deliver, Some(Deliver::Pod));
    let own = trace(&p, &key("10.0.1.5:40000", "10.0.1.5:80"));
    assert_eq!((own.verdict, own.deliver, own.masquerade), (Verdict::Allow, Some(Deliver::Pod), false));
    assert!(own.dnat.is_empty());
    let host = trace(&p, &key("203.0.113.7:1", "192.168.0.2:22"));
    assert_eq!(host.deliver, Some(Deliver::Host));
    let out = trace(&p, &key("10.0.1.5:1", "8.8.8.8:53"));
    assert_eq!((out.deliver, out.masquerade), (Some(Deliver::External), false));
}

#[test]
fn outbound_nat_layer_masquerades_only_outside_exceptions() {
    let mut p = policy(&["10.0.1.6:8080"], Selection::Random, false);
    let exc = p.add_set("exceptions", PrefixSet::from_nets(["10.0.0.0/8".parse().unwrap()]));
    p.layer_mut(LayerKind::OutboundNat).add_group(RuleGroup {
        id: flowgate_switch::GroupId::OutboundNat,
        priority: 0,
        index: RuleIndex::Ordered(vec![Rule::new(
            "snat",
            Conditions {
                dst: Some(AddrMatch::NotIn(exc)),
                ingress: Some(flowgate_switch::IngressKind::Endpoint),
                ..Conditions::any()
            },
            Action::Snat,
        )]),
    });
    assert!(trace(&p, &key("10.0.1.5:1", "8.8.8.8:53")).masquerade);
    assert!(!trace(&p, &key("10.0.1.5:1", "10.0.2.7:53")).masquerade);
    assert!(!trace(&p, &key("203.0.113.7:1", "8.8.8.8:53")).masquerade, "only endpoint traffic");
    let mut sw = flowgate_switch::Switch::new(Arc::new(p));
    let o = sw.process(PortId(2), key("10.0.1.5:1234", "8.8.8.8:53"), 0);
    assert_eq!(o.packet.src_socket(), sa("192.168.0.2:1234"));
    assert_eq!(o.egress, Some(PortId::UPLINK));
}
