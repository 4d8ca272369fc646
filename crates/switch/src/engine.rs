//! The stateful switch: the first packet of a connection walks the layers; the resulting header
//! transposition is cached for both directions, so later packets and replies only hit the flow
//! table. A policy change bumps the generation; entries of an older generation are re-checked
//! against the new policy before use.

use std::hash::BuildHasher;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use rustc_hash::{FxBuildHasher, FxHashMap};

use crate::flow::{FlowEntry, FlowTable, Transposition};
use crate::packet::FlowKey;
use crate::policy::{BackendSetId, Selection, SwitchPolicy};
use crate::port::PortId;
use crate::rule::DropReason;
use crate::walk::{self, Head, NoSteps, Path, Verdict};

/// What the switch did with one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The verdict.
    pub verdict: Verdict,
    /// Why it was dropped or rejected.
    pub reason: Option<DropReason>,
    /// The packet's 5-tuple after rewriting.
    pub packet: FlowKey,
    /// The port it leaves through, when allowed.
    pub egress: Option<PortId>,
    /// Whether the flow table decided (no layer was walked).
    pub cached: bool,
}

#[derive(Clone, Copy, Debug)]
struct Affinity {
    backend: SocketAddr,
    last_used: u64,
}

/// A switch instance: a policy plus its flow table and session-affinity state.
#[derive(Debug)]
pub struct Switch {
    policy: Arc<SwitchPolicy>,
    generation: u64,
    flows: FlowTable,
    affinity: FxHashMap<(IpAddr, BackendSetId), Affinity>,
}

/// Source ports tried for masqueraded connections whose own source port is taken.
const NAT_PORTS: std::ops::RangeInclusive<u16> = 1024..=65535;

impl Switch {
    /// A switch running `policy`, with an empty flow table.
    pub fn new(policy: Arc<SwitchPolicy>) -> Switch {
        Switch { policy, generation: 1, flows: FlowTable::new(), affinity: FxHashMap::default() }
    }

    /// The policy in force.
    pub fn policy(&self) -> &Arc<SwitchPolicy> {
        &self.policy
    }

    /// The current policy generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The flow table.
    pub fn flows(&self) -> &FlowTable {
        &self.flows
    }

    /// Forgets one flow-table entry, as the kernel's LRU table does under pressure.
    pub fn evict(&mut self, key: &FlowKey) {
        self.flows.remove(key);
    }

    /// Forgets every cached flow (as flushing conntrack does); affinity state is kept.
    pub fn clear_flows(&mut self) {
        self.flows = FlowTable::new();
    }

    /// Replaces the policy. Cached flows are kept and re-checked on their next packet.
    pub fn set_policy(&mut self, policy: Arc<SwitchPolicy>) {
        self.policy = policy;
        self.generation += 1;
    }

    /// Processes one packet entering on `ingress` at time `now` (seconds, any epoch).
    pub fn process(&mut self, ingress: PortId, key: FlowKey, now: u64) -> Outcome {
        // From the network with a source only this node may use: dropped before the flow table
        // (as in the kernel), whatever connection its 5-tuple names.
        if let Some(port) = self.policy.port(ingress) {
            if let Some(p) = walk::forged_from_network(&self.policy, port, &key, &mut NoSteps) {
                return Outcome { verdict: p.verdict, reason: p.reason, packet: key, egress: None, cached: false };
            }
        }
        if !key.proto.has_ports() {
            // An ICMP echo request: judged by the ACLs only, nothing cached (as in the kernel).
            let path = walk::echo(&self.policy, ingress, &key, &mut NoSteps);
            return Outcome {
                verdict: path.verdict,
                reason: path.reason,
                packet: key,
                egress: (path.verdict == Verdict::Allow).then_some(path.egress),
                cached: false,
            };
        }
        if let Some(entry) = self.flows.get(&key) {
            // Replies follow their connection's forward entry, which is the one re-checked; a
            // reply whose forward entry is gone goes too, and the packet is a new connection.
            let orphan = entry.reply && entry.generation != self.generation && !self.flows.contains(&entry.origin);
            if orphan {
                self.flows.remove(&key);
                return self.first_packet(ingress, key, now);
            }
            if entry.generation == self.generation || entry.reply {
                return apply(&key, entry.transposition, true);
            }
            let entry = *entry;
            if self.revalidate(&entry, now) {
                if let Some(e) = self.flows.get(&key) {
                    return apply(&key, e.transposition, true);
                }
            }
        }
        self.first_packet(ingress, key, now)
    }

    /// Processes an ICMP or ICMPv6 message of type `icmp_type` (ports 0 in `key`) entering on
    /// `ingress`; `quoted` is the packet an error quotes. Nothing is cached (as in the kernel); an
    /// error belongs to a connection when the flow table allows the quoted packet's other
    /// direction (it is then translated back in the kernel; here only the verdict is modelled).
    pub fn process_icmp(&mut self, ingress: PortId, key: FlowKey, icmp_type: u8, quoted: Option<FlowKey>) -> Outcome {
        let belongs = quoted.is_some_and(|q| {
            matches!(self.flows.get(&q.reversed()).map(|e| e.transposition), Some(Transposition::Forward { .. }))
        });
        let path = walk::icmp(&self.policy, ingress, &key, icmp_type, belongs, &mut NoSteps);
        Outcome {
            verdict: path.verdict,
            reason: path.reason,
            packet: key,
            egress: (path.verdict == Verdict::Allow).then_some(path.egress),
            cached: false,
        }
    }

    /// Re-checks a flow cached under an older policy. Returns true when the flow's entries are
    /// valid again (possibly re-decided), false when they were removed.
    fn revalidate(&mut self, entry: &FlowEntry, now: u64) -> bool {
        let origin = entry.origin;
        let Some(forward) = self.flows.get(&origin).copied() else {
            return false;
        };
        let old_backend = match forward.stopped.unwrap_or(forward.transposition) {
            Transposition::Forward { dst, .. } => dst,
            _ => None,
        };
        let path = self.decide(forward.origin_port, &origin, old_backend, now);
        let still = match (forward.transposition, path.verdict) {
            (Transposition::Forward { dst, egress, .. }, Verdict::Allow) => dst == path.dnat && egress == path.egress,
            (Transposition::Drop(_), Verdict::Drop) | (Transposition::Reject(_), Verdict::Reject) => true,
            _ => false,
        };
        let generation = self.generation;
        if still {
            if let Some(e) = self.flows.get_mut(&origin) {
                e.generation = generation;
            }
            if let Some(reply) = reply_key(&origin, &forward.transposition) {
                if let Some(e) = self.flows.get_mut(&reply) {
                    e.generation = generation;
                }
            }
            true
        } else if let (Transposition::Forward { .. }, Verdict::Drop | Verdict::Reject) =
            (forward.transposition, path.verdict)
        {
            // A connection the new policy stops is closed in both directions: its reply entry
            // becomes a drop, so that a packet of the other side cannot open it again as a new
            // flow.
            let reason = path.reason.unwrap_or(DropReason::PolicyDenied);
            let stopped =
                if path.verdict == Verdict::Drop { Transposition::Drop(reason) } else { Transposition::Reject(reason) };
            if let Some(e) = self.flows.get_mut(&origin) {
                e.generation = generation;
                e.transposition = stopped;
                e.stopped = Some(forward.transposition);
            }
            if let Some(reply) = reply_key(&origin, &forward.transposition) {
                if let Some(e) = self.flows.get_mut(&reply) {
                    e.generation = generation;
                    e.transposition = Transposition::Drop(reason);
                }
            }
            true
        } else {
            self.flows.remove(&origin);
            for t in [Some(forward.transposition), forward.stopped].into_iter().flatten() {
                if let Some(reply) = reply_key(&origin, &t) {
                    self.flows.remove(&reply);
                }
            }
            false
        }
    }

    /// Walks the layers for a connection's first packet and caches the result for both directions.
    fn first_packet(&mut self, ingress: PortId, key: FlowKey, now: u64) -> Outcome {
        let path = self.decide(ingress, &key, None, now);
        let transposition = match path.verdict {
            Verdict::Drop => Transposition::Drop(path.reason.unwrap_or(DropReason::PolicyDenied)),
            Verdict::Reject => Transposition::Reject(path.reason.unwrap_or(DropReason::PolicyDenied)),
            Verdict::Allow => {
                let dst = path.dnat;
                let src = if path.masquerade { self.allocate_snat(&key, dst) } else { self.rebind(&key, dst) };
                Transposition::Forward { src, dst, egress: path.egress }
            }
        };
        // A new connection that is dropped takes no entries (as in the kernel): each of its
        // packets is decided again.
        if !matches!(transposition, Transposition::Forward { .. }) {
            return apply(&key, transposition, false);
        }
        let generation = self.generation;
        self.flows.insert(
            key,
            FlowEntry { generation, origin: key, origin_port: ingress, reply: false, transposition, stopped: None },
        );
        if let Some(reply) = reply_key(&key, &transposition) {
            let back = Transposition::Forward {
                src: transposition_dst(&key, &transposition),
                dst: transposition_src(&key, &transposition),
                egress: ingress,
            };
            self.flows.insert(
                reply,
                FlowEntry {
                    generation,
                    origin: key,
                    origin_port: ingress,
                    reply: true,
                    transposition: back,
                    stopped: None,
                },
            );
        }
        apply(&key, transposition, false)
    }

    /// Runs the walk, choosing one backend when the load balancer DNATs. `prefer` keeps an
    /// existing flow on its backend while that backend is still a candidate.
    fn decide(&mut self, ingress: PortId, key: &FlowKey, prefer: Option<SocketAddr>, now: u64) -> Path {
        let policy = Arc::clone(&self.policy);
        match walk::head(&policy, ingress, key, &mut NoSteps) {
            Head::Done(p) => p,
            Head::Pass => walk::tail(&policy, ingress, key, None, &mut NoSteps),
            Head::Dnat(d) => {
                let Some(set) = policy.backend_set(d.backends) else {
                    return walk::tail(&policy, ingress, key, None, &mut NoSteps);
                };
                if set.backends.is_empty() {
                    return walk::tail(&policy, ingress, key, None, &mut NoSteps);
                }
                let backend = match prefer.filter(|b| set.backends.contains(b)) {
                    Some(b) => b,
                    None => self.choose(d.backends, &set.backends, set.selection, key, now),
                };
                walk::tail(&policy, ingress, key, Some((d, backend)), &mut NoSteps)
            }
        }
    }

    fn choose(
        &mut self,
        id: BackendSetId,
        backends: &[SocketAddr],
        selection: Selection,
        key: &FlowKey,
        now: u64,
    ) -> SocketAddr {
        if let Selection::ClientIp { timeout_seconds } = selection {
            if let Some(a) = self.affinity.get_mut(&(key.src, id)) {
                if now.saturating_sub(a.last_used) <= u64::from(timeout_seconds) && backends.contains(&a.backend) {
                    a.last_used = now;
                    return a.backend;
                }
            }
        }
        let pick = backends[(FxBuildHasher.hash_one(key) % backends.len() as u64) as usize];
        if let Selection::ClientIp { .. } = selection {
            self.affinity.insert((key.src, id), Affinity { backend: pick, last_used: now });
        }
        pick
    }

    /// Picks the masquerade source: a node address of the destination's family, keeping the source
    /// port unless the reply key it implies is taken.
    fn allocate_snat(&self, key: &FlowKey, dnat: Option<SocketAddr>) -> Option<SocketAddr> {
        let dst = dnat.unwrap_or_else(|| key.dst_socket());
        let addr = self.policy.snat_address(dst.ip())?;
        self.allocate_port(key, dst, addr)
    }

    /// An untranslated connection whose reply key another connection holds gets another source
    /// port, its address kept (as in the kernel, and as conntrack's NAT treats clashing tuples):
    /// it never takes over that connection's replies.
    fn rebind(&self, key: &FlowKey, dnat: Option<SocketAddr>) -> Option<SocketAddr> {
        let dst = dnat.unwrap_or_else(|| key.dst_socket());
        let reply = FlowKey { src: dst.ip(), dst: key.src, proto: key.proto, sport: dst.port(), dport: key.sport };
        let other = self.flows.get(&reply)?;
        // (A reply entry of this very connection, whose forward entry went: not a clash.)
        if other.reply && other.origin == *key {
            return None;
        }
        self.allocate_port(key, dst, key.src)
    }

    /// The source `addr` with the first port whose reply key from `dst` is free, the key's own first.
    fn allocate_port(&self, key: &FlowKey, dst: SocketAddr, addr: IpAddr) -> Option<SocketAddr> {
        let taken = |port: u16| {
            self.flows.contains(&FlowKey { src: dst.ip(), dst: addr, proto: key.proto, sport: dst.port(), dport: port })
        };
        if !taken(key.sport) {
            return Some(SocketAddr::new(addr, key.sport));
        }
        let span = u32::from(*NAT_PORTS.end() - *NAT_PORTS.start()) + 1;
        let start = u32::from(key.sport.max(*NAT_PORTS.start()) - *NAT_PORTS.start());
        (0..span)
            .map(|i| *NAT_PORTS.start() + ((start + i) % span) as u16)
            .find(|p| !taken(*p))
            .map(|p| SocketAddr::new(addr, p))
    }
}

/// For the reply direction's transposition: the original source, when the forward direction
/// rewrote it (replies are then readdressed to it).
fn transposition_src(key: &FlowKey, t: &Transposition) -> Option<SocketAddr> {
    match t {
        Transposition::Forward { src: Some(s), .. } => Some(key.src_socket()).filter(|o| o != s),
        _ => None,
    }
}

/// For the reply direction's transposition: the original destination, when the forward direction
/// rewrote it (replies then appear to come from it).
fn transposition_dst(key: &FlowKey, t: &Transposition) -> Option<SocketAddr> {
    match t {
        Transposition::Forward { dst: Some(d), .. } => Some(key.dst_socket()).filter(|o| o != d),
        _ => None,
    }
}

/// The key replies of an allowed flow arrive with: from the (new) destination to the (new) source.
fn reply_key(key: &FlowKey, t: &Transposition) -> Option<FlowKey> {
    match t {
        Transposition::Forward { src, dst, .. } => {
            let s = src.unwrap_or_else(|| key.src_socket());
            let d = dst.unwrap_or_else(|| key.dst_socket());
            Some(FlowKey { src: d.ip(), dst: s.ip(), proto: key.proto, sport: d.port(), dport: s.port() })
        }
        _ => None,
    }
}

#[inline]
fn apply(key: &FlowKey, t: Transposition, cached: bool) -> Outcome {
    match t {
        Transposition::Forward { src, dst, egress } => {
            let mut packet = *key;
            if let Some(s) = src {
                packet.src = s.ip();
                packet.sport = s.port();
            }
            if let Some(d) = dst {
                packet.dst = d.ip();
                packet.dport = d.port();
            }
            Outcome { verdict: Verdict::Allow, reason: None, packet, egress: Some(egress), cached }
        }
        Transposition::Drop(r) => {
            Outcome { verdict: Verdict::Drop, reason: Some(r), packet: *key, egress: None, cached }
        }
        Transposition::Reject(r) => {
            Outcome { verdict: Verdict::Reject, reason: Some(r), packet: *key, egress: None, cached }
        }
    }
}
