//! `trace`: what the switch does with the first packet of a new connection, and why — every
//! backend the load balancer may choose, without touching any state.

use std::net::SocketAddr;

use serde::Serialize;

use crate::packet::FlowKey;
use crate::policy::SwitchPolicy;
use crate::port::PortId;
use crate::rule::DropReason;
use crate::walk::{self, Deliver, Head, Verdict};

/// The explanation of one packet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Trace {
    /// What happens to the packet.
    pub verdict: Verdict,
    /// Why it was dropped or rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<DropReason>,
    /// Every backend the packet may be sent to, sorted as strings; empty when not rewritten.
    pub dnat: Vec<String>,
    /// Whether the source may be rewritten to a node address.
    pub masquerade: bool,
    /// Where an allowed packet goes; `None` unless allowed. With several candidate backends of
    /// different kinds, `External`.
    pub deliver: Option<Deliver>,
    /// The path through ports, layers and rules, for people.
    pub steps: Vec<String>,
}

/// Traces `key` entering on the port its source address implies.
pub fn trace(policy: &SwitchPolicy, key: &FlowKey) -> Trace {
    trace_from(policy, policy.ingress_port_for(key.src), key)
}

/// Traces `key` entering on `ingress`. A key whose protocol has no ports (ICMP, ICMPv6) stands for
/// an echo request.
pub fn trace_from(policy: &SwitchPolicy, ingress: PortId, key: &FlowKey) -> Trace {
    let mut steps: Vec<String> = Vec::new();
    if !key.proto.has_ports() {
        let path = walk::echo(policy, ingress, key, &mut steps);
        return aggregate(policy, vec![path], steps);
    }
    let paths: Vec<walk::Path> = match walk::head(policy, ingress, key, &mut steps) {
        Head::Done(p) => vec![p],
        Head::Pass => vec![walk::tail(policy, ingress, key, None, &mut steps)],
        Head::Dnat(d) => {
            let backends = policy.backend_set(d.backends).map(|s| s.backends.as_slice()).unwrap_or(&[]);
            if let Some(set) = policy.backend_set(d.backends) {
                steps.push(format!("{}: {} candidate backends ({:?})", set.name, backends.len(), set.selection));
            }
            if backends.is_empty() {
                vec![walk::tail(policy, ingress, key, None, &mut steps)]
            } else {
                backends
                    .iter()
                    .map(|b| {
                        let mut s: Vec<String> = Vec::new();
                        let p = walk::tail(policy, ingress, key, Some((d, *b)), &mut s);
                        steps.extend(s.into_iter().map(|x| format!("[{b}] {x}")));
                        p
                    })
                    .collect()
            }
        }
    };
    aggregate(policy, paths, steps)
}

fn aggregate(policy: &SwitchPolicy, paths: Vec<walk::Path>, steps: Vec<String>) -> Trace {
    let allowed: Vec<&walk::Path> = paths.iter().filter(|p| p.verdict == Verdict::Allow).collect();
    if allowed.is_empty() {
        let first = paths.first().copied();
        return Trace {
            verdict: first.map(|p| p.verdict).unwrap_or(Verdict::Drop),
            reason: first.and_then(|p| p.reason),
            dnat: Vec::new(),
            masquerade: false,
            deliver: None,
            steps,
        };
    }
    let mut dnat: Vec<String> = allowed.iter().filter_map(|p| p.dnat).map(|b: SocketAddr| b.to_string()).collect();
    dnat.sort();
    dnat.dedup();
    let masquerade = allowed.iter().any(|p| p.masquerade);
    let kinds: Vec<Deliver> = allowed.iter().map(|p| Deliver::of_port(policy, p.egress)).collect();
    let deliver = if kinds.iter().all(|k| *k == kinds[0]) { kinds[0] } else { Deliver::External };
    Trace { verdict: Verdict::Allow, reason: None, dnat, masquerade, deliver: Some(deliver), steps }
}

/// Traces `key` entering on `ingress` as if the load balancer chose `backend` — what the model
/// says for that one choice (tests compare a data plane's actual choice with it). `None` when the
/// packet is not load-balanced or `backend` is not a candidate.
pub fn trace_choice(policy: &SwitchPolicy, ingress: PortId, key: &FlowKey, backend: SocketAddr) -> Option<Trace> {
    let mut steps: Vec<String> = Vec::new();
    let Head::Dnat(d) = walk::head(policy, ingress, key, &mut steps) else {
        return None;
    };
    if !policy.backend_set(d.backends)?.backends.contains(&backend) {
        return None;
    }
    let path = walk::tail(policy, ingress, key, Some((d, backend)), &mut steps);
    Some(aggregate(policy, vec![path], steps))
}
