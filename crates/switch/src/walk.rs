//! The layer walk of a connection's first packet — the single implementation of "what does the
//! switch do", shared by the stateful engine ([`crate::Switch`]) and by [`crate::trace`].

use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

use crate::layer::{Layer, LayerKind};
use crate::packet::FlowKey;
use crate::policy::SwitchPolicy;
use crate::port::{Port, PortId, PortKind};
use crate::rule::{Action, Dnat, DropReason, IngressKind};

/// What the switch does with a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Forwarded or delivered.
    Allow,
    /// Discarded silently.
    Drop,
    /// Discarded, answered with a TCP reset or an ICMP unreachable.
    Reject,
}

/// Where an allowed packet goes after the switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Deliver {
    /// An endpoint on this node.
    Pod,
    /// The node's own network stack.
    Host,
    /// Out of the node.
    External,
}

impl Deliver {
    /// Where packets leaving through `port` are delivered.
    pub fn of_port(policy: &SwitchPolicy, port: PortId) -> Deliver {
        match policy.port(port).map(|p| &p.kind) {
            Some(PortKind::Endpoint { .. }) => Deliver::Pod,
            Some(PortKind::Host) => Deliver::Host,
            _ => Deliver::External,
        }
    }
}

/// Receives the human-readable steps of a walk; the engine's fast path passes [`NoSteps`].
pub(crate) trait Steps {
    fn push(&mut self, step: impl FnOnce() -> String);
}

/// Discards steps.
pub(crate) struct NoSteps;

impl Steps for NoSteps {
    #[inline]
    fn push(&mut self, _step: impl FnOnce() -> String) {}
}

impl Steps for Vec<String> {
    fn push(&mut self, step: impl FnOnce() -> String) {
        Vec::push(self, step());
    }
}

/// The outcome of the part of the walk that does not depend on which backend is chosen.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Head {
    /// Decided before load balancing finished.
    Done(Path),
    /// Continue with the destination unchanged.
    Pass,
    /// Continue with one of the backends.
    Dnat(Dnat),
}

/// The complete outcome of the walk for one choice of backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Path {
    pub verdict: Verdict,
    pub reason: Option<DropReason>,
    /// The destination after DNAT, when it was rewritten.
    pub dnat: Option<SocketAddr>,
    pub masquerade: bool,
    /// The port the packet leaves through (meaningful when allowed).
    pub egress: PortId,
}

impl Path {
    fn stop(verdict: Verdict, reason: DropReason) -> Path {
        Path { verdict, reason: Some(reason), dnat: None, masquerade: false, egress: PortId::UPLINK }
    }
}

fn terminal(action: Action) -> Option<Path> {
    match action {
        Action::Drop(r) => Some(Path::stop(Verdict::Drop, r)),
        Action::Reject(r) => Some(Path::stop(Verdict::Reject, r)),
        _ => None,
    }
}

/// Walks what comes before backend selection: the pod-to-itself shortcut, anti-spoofing and the
/// load-balancing layer.
pub(crate) fn head(policy: &SwitchPolicy, ingress: PortId, key: &FlowKey, steps: &mut impl Steps) -> Head {
    let Some(port) = policy.port(ingress) else {
        steps.push(|| format!("unknown ingress port {}", ingress.0));
        return Head::Done(Path::stop(Verdict::Drop, DropReason::Spoofed));
    };
    let ingress_kind = IngressKind::from(&port.kind);
    steps.push(|| format!("from {}", port.label()));
    if let Some(p) =
        leaving_endpoint(port, ingress, key, steps).or_else(|| forged_from_network(policy, port, key, steps))
    {
        return Head::Done(p);
    }
    let Some(lb) = policy.layer(LayerKind::Lb) else {
        return Head::Pass;
    };
    let v = lb.evaluate(policy, key, ingress_kind);
    match v.rule {
        Some(rule) => steps.push(|| format!("{}: {}", LayerKind::Lb.name(), rule.name)),
        None => steps.push(|| format!("{}: no service matches {}", LayerKind::Lb.name(), key.dst_socket())),
    }
    match v.action {
        Action::Dnat(d) => Head::Dnat(d),
        action => match terminal(action) {
            Some(p) => Head::Done(p),
            None => Head::Pass,
        },
    }
}

/// Walks the rest for one destination: the service filter, the source endpoint's egress ACL,
/// masquerade, the route, outbound NAT and the destination endpoint's ingress ACL. `dnat` is the
/// chosen backend, if the head chose DNAT.
pub(crate) fn tail(
    policy: &SwitchPolicy,
    ingress: PortId,
    key: &FlowKey,
    dnat: Option<(Dnat, SocketAddr)>,
    steps: &mut impl Steps,
) -> Path {
    let ingress_kind = policy.port(ingress).map(|p| IngressKind::from(&p.kind)).unwrap_or(IngressKind::Uplink);
    let mut current = *key;
    let mut masquerade = false;
    if let Some((d, backend)) = dnat {
        current.dst = backend.ip();
        current.dport = backend.port();
        masquerade = d.masquerade;
        if d.hairpin && backend.ip() == key.src {
            masquerade = true;
            steps.push(|| format!("hairpin: {} reaches itself through the service, masquerade", key.src));
        }
    }
    if let Some(filter) = policy.layer(LayerKind::ServiceFilter) {
        let v = filter.evaluate(policy, &current, ingress_kind);
        if let Some(rule) = v.rule {
            steps.push(|| format!("{}: {}", LayerKind::ServiceFilter.name(), rule.name));
        }
        if let Some(p) = terminal(v.action) {
            return p;
        }
    }
    // The source endpoint's egress ACL judges the translated destination (a Service's backend).
    if ingress_kind == IngressKind::Endpoint {
        if let Some((egress_acl, _)) = policy.acls.get(&ingress) {
            if let Some(p) = acl(egress_acl, policy, &current, ingress_kind, steps) {
                return p;
            }
        }
    }
    let egress = policy.port_of(current.dst);
    if ingress_kind == IngressKind::Endpoint && !masquerade {
        if let Some(onat) = policy.layer(LayerKind::OutboundNat) {
            let v = onat.evaluate(policy, &current, ingress_kind);
            if let (Action::Snat, Some(rule)) = (v.action, v.rule) {
                masquerade = true;
                steps.push(|| format!("{}: {}", LayerKind::OutboundNat.name(), rule.name));
            }
        }
    }
    if masquerade {
        steps.push(|| "masquerade: source rewritten to a node address".to_string());
    }
    // The destination endpoint's ingress ACL judges the client's own address (before masquerade).
    if let Some((_, ingress_acl)) = policy.acls.get(&egress) {
        if let Some(p) = acl(ingress_acl, policy, &current, ingress_kind, steps) {
            return p;
        }
    }
    let label = policy.port(egress).map(|p| p.label()).unwrap_or_default();
    steps.push(|| format!("to {label} ({})", current.dst_socket()));
    Path { verdict: Verdict::Allow, reason: None, dnat: dnat.map(|(_, b)| b), masquerade, egress }
}

/// Evaluates an endpoint's ACL layer; the path when it stops the packet.
fn acl(
    layer: &Layer,
    policy: &SwitchPolicy,
    key: &FlowKey,
    ingress: IngressKind,
    steps: &mut impl Steps,
) -> Option<Path> {
    if layer.groups.is_empty() {
        return None;
    }
    let v = layer.evaluate(policy, key, ingress);
    match v.rule {
        Some(rule) => steps.push(|| format!("{}: {} -> {}", layer.kind.name(), rule.name, action_word(v.action))),
        None => steps.push(|| format!("{}: no rule matches -> allow", layer.kind.name())),
    }
    terminal(v.action)
}

fn action_word(a: Action) -> &'static str {
    match a {
        Action::Allow => "allow",
        Action::Drop(_) => "drop",
        Action::Reject(_) => "reject",
        Action::Dnat(_) => "dnat",
        Action::Snat => "snat",
    }
}

/// The walk of an ICMP echo request (ICMP or ICMPv6, ports 0): the switch neither balances nor
/// translates ICMP, so only anti-spoofing and the endpoints' ACLs apply — as protocol ICMP with
/// port 0, which only rules that name no port let through.
pub(crate) fn echo(policy: &SwitchPolicy, ingress: PortId, key: &FlowKey, steps: &mut impl Steps) -> Path {
    let Some(port) = policy.port(ingress) else {
        steps.push(|| format!("unknown ingress port {}", ingress.0));
        return Path::stop(Verdict::Drop, DropReason::Spoofed);
    };
    let ingress_kind = IngressKind::from(&port.kind);
    steps.push(|| format!("from {} (ICMP echo request)", port.label()));
    if let Some(p) =
        leaving_endpoint(port, ingress, key, steps).or_else(|| forged_from_network(policy, port, key, steps))
    {
        return p;
    }
    if ingress_kind == IngressKind::Endpoint {
        if let Some((egress_acl, _)) = policy.acls.get(&ingress) {
            if let Some(p) = acl(egress_acl, policy, key, ingress_kind, steps) {
                return p;
            }
        }
    }
    let egress = policy.port_of(key.dst);
    if let Some((_, ingress_acl)) = policy.acls.get(&egress) {
        if let Some(p) = acl(ingress_acl, policy, key, ingress_kind, steps) {
            return p;
        }
    }
    let label = policy.port(egress).map(|p| p.label()).unwrap_or_default();
    steps.push(|| format!("to {label} ({})", key.dst));
    Path { verdict: Verdict::Allow, reason: None, dnat: None, masquerade: false, egress }
}

/// Whether an ICMPv6 message of type `icmp_type` to `dst` is on-link housekeeping a pod needs
/// whatever its policies: neighbour discovery (router and neighbour solicitations and
/// advertisements) and multicast listener discovery, to a link-local or multicast destination
/// (never routed). The kernel's `fg_icmp6_onlink` (bpf/lib/switch.h).
pub fn icmp6_onlink(icmp_type: u8, dst: IpAddr) -> bool {
    let IpAddr::V6(d) = dst else { return false };
    ((130..=136).contains(&icmp_type) || icmp_type == 143) && (d.is_multicast() || d.is_unicast_link_local())
}

/// Whether an ICMP (`v6` false) or ICMPv6 type is an error quoting the packet it is about.
pub fn icmp_is_error(icmp_type: u8, v6: bool) -> bool {
    if v6 {
        (1..=4).contains(&icmp_type)
    } else {
        matches!(icmp_type, 3 | 11 | 12)
    }
}

/// The walk of an ICMP or ICMPv6 message of type `icmp_type` (ports 0 in `key`), as the kernel's
/// `fg_icmp_entry` decides it: anti-spoofing (a pod's IPv6 link-local or unspecified source is
/// allowed only for on-link neighbour and multicast listener discovery, [`icmp6_onlink`], which
/// passes whatever the policies); an error that `belongs` to a connection the flow table allows
/// passes; an echo reply passes where the echo request it answers would have (the request's walk,
/// the other way round: echo is not tracked); everything else is judged by the endpoints' ACLs as
/// an echo request is (protocol ICMP, port 0: only rules naming no port let it through).
pub(crate) fn icmp(
    policy: &SwitchPolicy,
    ingress: PortId,
    key: &FlowKey,
    icmp_type: u8,
    belongs: bool,
    steps: &mut impl Steps,
) -> Path {
    let Some(port) = policy.port(ingress) else {
        steps.push(|| format!("unknown ingress port {}", ingress.0));
        return Path::stop(Verdict::Drop, DropReason::Spoofed);
    };
    let v6 = key.src.is_ipv6();
    let allow = |steps: &mut dyn FnMut(String), why: &str| {
        steps(why.to_string());
        Path { verdict: Verdict::Allow, reason: None, dnat: None, masquerade: false, egress: policy.port_of(key.dst) }
    };
    let mut push = |s: String| steps.push(|| s);
    if let Some(p) = forged_from_network(policy, port, key, &mut NoSteps) {
        push(format!("anti-spoofing: {} may not come from the network", key.src));
        return p;
    }
    let onlink = v6 && icmp6_onlink(icmp_type, key.dst);
    if let (PortKind::Endpoint { .. }, IpAddr::V6(s)) = (&port.kind, key.src) {
        if s.is_unicast_link_local() || s.is_unspecified() {
            if onlink {
                return allow(&mut push, "neighbour or multicast listener discovery on the link");
            }
            push(format!("anti-spoofing: a pod sends from {s} only for neighbour discovery on the link"));
            return Path::stop(Verdict::Drop, DropReason::Spoofed);
        }
    }
    if onlink {
        return allow(&mut push, "neighbour or multicast listener discovery on the link");
    }
    if belongs && icmp_is_error(icmp_type, v6) {
        return allow(&mut push, "an error about an allowed connection");
    }
    if icmp_type == if v6 { 129 } else { 0 } {
        if let Some(p) = leaving_endpoint(port, ingress, key, &mut NoSteps) {
            if p.verdict != Verdict::Allow {
                push(format!("anti-spoofing: {} is not an address of this endpoint", key.src));
            }
            return p;
        }
        push("echo reply: judged as the echo request it answers".to_string());
        let request = key.reversed();
        let p = echo(policy, policy.port_of(key.dst), &request, steps);
        return Path { egress: policy.port_of(key.dst), ..p };
    }
    echo(policy, ingress, key, steps)
}

/// For a packet arriving from the network (the uplink): a source only this node may use is forged —
/// the address of a pod on this node (the pods' policies judge sources), one of the node's own
/// addresses or a pod gateway's (its host addresses: policies let the node's traffic through), or a
/// martian ([`crate::addr::martian_source`]). `None` to go on.
pub(crate) fn forged_from_network(
    policy: &SwitchPolicy,
    port: &Port,
    key: &FlowKey,
    steps: &mut impl Steps,
) -> Option<Path> {
    if !matches!(port.kind, PortKind::Uplink) {
        return None;
    }
    let why = if crate::addr::martian_source(key.src, key.dst) {
        "a martian source (loopback, multicast, broadcast, unspecified or IPv4-mapped)"
    } else if policy.endpoint_for(key.src).is_some() {
        "a pod on this node"
    } else if policy.is_host_address(key.src) {
        "an address of this node (or a pod gateway's)"
    } else {
        return None;
    };
    steps.push(|| format!("anti-spoofing: {} is {why}; nothing from the network may send as it", key.src));
    Some(Path::stop(Verdict::Drop, DropReason::Spoofed))
}

/// For a packet leaving an endpoint: the pod-to-itself shortcut (it never leaves the pod) and
/// anti-spoofing. `None` to go on.
fn leaving_endpoint(port: &Port, ingress: PortId, key: &FlowKey, steps: &mut impl Steps) -> Option<Path> {
    if !matches!(port.kind, PortKind::Endpoint { .. }) {
        return None;
    }
    if port.addresses.contains(&key.dst) {
        steps.push(|| "destination is the pod's own address: never leaves the pod".to_string());
        return Some(Path { verdict: Verdict::Allow, reason: None, dnat: None, masquerade: false, egress: ingress });
    }
    if !port.addresses.contains(&key.src) {
        steps.push(|| format!("anti-spoofing: {} is not an address of this endpoint", key.src));
        return Some(Path::stop(Verdict::Drop, DropReason::Spoofed));
    }
    None
}
