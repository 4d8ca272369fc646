//! Shared test fixtures: a node with two pods and a VIP.
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, SocketAddr};

use flowgate_switch::{
    Action, BackendSet, Conditions, Dnat, DropReason, FlowKey, LayerKind, Proto, Rule, RuleGroup, RuleIndex, Selection,
    SwitchPolicy,
};
use rustc_hash::FxHashMap;

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}
pub fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}
pub fn key(src: &str, dst: &str) -> FlowKey {
    FlowKey::new(sa(src), sa(dst), Proto::TCP)
}

pub const VIP: &str = "172.30.0.10:80";

/// Node 192.168.0.2 with pods 10.0.1.5 and 10.0.1.6; a VIP load-balancing to `backends`.
pub fn policy(backends: &[&str], selection: Selection, masquerade: bool) -> SwitchPolicy {
    let mut p = SwitchPolicy::new();
    p.host_addresses.insert_addr(ip("192.168.0.2"));
    p.snat_v4 = Some(ip("192.168.0.2"));
    p.add_endpoint("ns/a", vec![ip("10.0.1.5")]);
    p.add_endpoint("ns/b", vec![ip("10.0.1.6")]);
    let set = p.add_backend_set(BackendSet {
        name: "ns/svc:http".into(),
        backends: backends.iter().map(|b| sa(b)).collect(),
        selection,
    });
    let mut map = FxHashMap::default();
    let v = sa(VIP);
    map.insert(
        (v.ip(), Proto::TCP, v.port()),
        vec![Rule::new("svc", Conditions::any(), Action::Dnat(Dnat { backends: set, masquerade, hairpin: true }))],
    );
    map.insert(
        (ip("172.30.0.20"), Proto::TCP, 80),
        vec![Rule::new("empty svc", Conditions::any(), Action::Reject(DropReason::NoEndpoints))],
    );
    p.layer_mut(LayerKind::Lb).add_group(RuleGroup {
        id: flowgate_switch::GroupId::ServiceIps,
        priority: 0,
        index: RuleIndex::Destination(map),
    });
    p
}

/// Makes the VIP also answer `proto` (same backends and flags as the TCP rule).
pub fn add_vip_for(p: &mut SwitchPolicy, proto: Proto) {
    let v = sa(VIP);
    let lb = p.layer_mut(LayerKind::Lb);
    if let RuleIndex::Destination(map) = &mut lb.groups[0].index {
        let rules = map.get(&(v.ip(), Proto::TCP, v.port())).cloned().unwrap_or_default();
        map.insert((v.ip(), proto, v.port()), rules);
    }
}
