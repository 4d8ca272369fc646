//! The eBPF backend of the data plane: the switch policy programmed into kernel maps. It applies
//! the *difference* named by a [`PolicyDelta`] as map updates (no reloads), remembers what it
//! programmed so that removals are exact, and bumps the policy generation last, so that flows
//! cached under the old policy are re-checked only once the new one is complete.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;

use aya::maps::lpm_trie::{Key as LpmKey, LpmTrie};
use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData};
use flowgate_dataplane::{ApplyStats, Dataplane, DataplaneError};
use flowgate_switch::{BackendSetId, PolicyDelta, PortId, RuleKey, RuleRef, SetId, SwitchPolicy};

use crate::acl_tables::Acls;
use crate::compile::{self, IpNetOrd, KernelRuleKey};
use crate::maps;

/// The maps the backend writes, taken from a loaded object.
pub struct KernelMaps {
    lb_dest: BpfHashMap<MapData, maps::LbKey, maps::RuleList>,
    lb_nodeport: BpfHashMap<MapData, maps::PortKey, maps::RuleList>,
    groups: Array<MapData, maps::RuleList>,
    sets: LpmTrie<MapData, maps::SetData, u8>,
    set_hosts: BpfHashMap<MapData, maps::SetData, u8>,
    set_info: BpfHashMap<MapData, u32, u8>,
    backend_sets: BpfHashMap<MapData, u32, maps::BackendSet>,
    backends: BpfHashMap<MapData, maps::BackendKey, maps::Backend>,
    members: BpfHashMap<MapData, maps::MemberKey, u8>,
    config: Array<MapData, maps::Config>,
    ports: BpfHashMap<MapData, u32, maps::Port>,
    endpoint_addrs: BpfHashMap<MapData, maps::EndpointKey, u8>,
    pub(crate) acl_endpoints: BpfHashMap<MapData, maps::Addr, maps::AclEndpoint>,
    pub(crate) acl_classes: LpmTrie<MapData, maps::SetData, u32>,
    pub(crate) acl_verdicts: LpmTrie<MapData, maps::AclPortData, maps::AclVerdict>,
    counters: aya::maps::PerCpuArray<MapData, u64>,
    rule_hits: aya::maps::PerCpuHashMap<MapData, maps::RuleHitKey, u64>,
    flow_counters: aya::maps::PerCpuArray<MapData, u64>,
    flow_gauges: Array<MapData, maps::FlowGauges>,
}

pub(crate) fn err(op: impl Into<String>, message: impl std::fmt::Display) -> DataplaneError {
    DataplaneError::Apply { backend: "ebpf", op: op.into(), message: message.to_string() }
}

impl std::fmt::Debug for KernelMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelMaps").finish_non_exhaustive()
    }
}

impl KernelMaps {
    /// Takes the switch's maps out of a loaded object.
    pub fn take(ebpf: &mut aya::Ebpf) -> Result<KernelMaps, DataplaneError> {
        fn take(ebpf: &mut aya::Ebpf, name: &str) -> Result<Map, DataplaneError> {
            ebpf.take_map(name).ok_or_else(|| err(format!("take map {name}"), "not in the object"))
        }
        macro_rules! conv {
            ($name:literal) => {
                take(ebpf, $name)?.try_into().map_err(|e| err(concat!("open map ", $name), e))?
            };
        }
        Ok(KernelMaps {
            lb_dest: conv!("fg_lb_dest"),
            lb_nodeport: conv!("fg_lb_nodeport"),
            groups: conv!("fg_groups"),
            sets: conv!("fg_sets"),
            set_hosts: conv!("fg_set_hosts"),
            set_info: conv!("fg_set_info"),
            backend_sets: conv!("fg_backend_sets"),
            backends: conv!("fg_backends"),
            members: conv!("fg_backend_members"),
            config: conv!("fg_config"),
            ports: conv!("fg_ports"),
            endpoint_addrs: conv!("fg_endpoint_addrs"),
            acl_endpoints: conv!("fg_acl_endpoints"),
            acl_classes: conv!("fg_acl_classes"),
            acl_verdicts: conv!("fg_acl_verdicts"),
            counters: conv!("fg_counters"),
            rule_hits: conv!("fg_rule_hits"),
            flow_counters: conv!("fg_flow_counters"),
            flow_gauges: conv!("fg_flow_gauges"),
        })
    }
}

/// The `fg_backend_members` key of backend `b` of set `set`.
fn member_key(set: BackendSetId, b: &maps::Backend) -> maps::MemberKey {
    maps::MemberKey { set: set.0, addr: b.addr, port: b.port, pad: 0 }
}

/// What the backend has programmed, to compute exact removals.
#[derive(Debug, Default)]
struct Programmed {
    sets: HashMap<SetId, BTreeSet<IpNetOrd>>,
    backend_sets: HashMap<BackendSetId, Vec<maps::Backend>>,
    rules: BTreeSet<KernelRuleKey>,
    endpoints: HashMap<flowgate_switch::PortId, Vec<maps::Addr>>,
    /// The addresses written under `maps::ANY_ENDPOINT_PORT`: every local endpoint's.
    any_endpoint: HashSet<maps::Addr>,
    acls: Acls,
    generation: u64,
    /// Backend sets whose last write failed part-way: their next write is a whole one.
    dirty_backend_sets: HashSet<BackendSetId>,
}

/// The kernel data plane.
#[derive(Debug)]
pub struct EbpfDataplane {
    inner: Mutex<(KernelMaps, Programmed)>,
}

impl EbpfDataplane {
    /// Binds an endpoint's host-side interface to its port: from now on packets entering through
    /// `ifindex` must carry the endpoint's addresses (and `mac`, when given) or are dropped as
    /// spoofed.
    pub fn bind_endpoint(
        &self,
        ifindex: u32,
        port: flowgate_switch::PortId,
        mac: Option<[u8; 6]>,
    ) -> Result<(), DataplaneError> {
        let mut guard = self.inner.lock().map_err(|_| err("lock", "poisoned"))?;
        let value = maps::Port {
            port_id: port.0,
            ingress: maps::ingress::ENDPOINT,
            has_mac: u8::from(mac.is_some()),
            mac: mac.unwrap_or_default(),
        };
        guard.0.ports.insert(ifindex, value, 0).map_err(|e| err(format!("bind interface {ifindex}"), e))
    }

    /// The port an interface is bound to, if any.
    pub fn bound_port(&self, ifindex: u32) -> Option<flowgate_switch::PortId> {
        let guard = self.inner.lock().ok()?;
        guard.0.ports.get(&ifindex, 0).ok().map(|p| flowgate_switch::PortId(p.port_id))
    }

    /// How many entries the ACL maps hold: (endpoint addresses, address classes, verdicts) — what
    /// tests compare to prove that nothing is left behind.
    pub fn acl_entry_counts(&self) -> (usize, usize, usize) {
        let Ok(guard) = self.inner.lock() else { return (0, 0, 0) };
        let m = &guard.0;
        (m.acl_endpoints.keys().count(), m.acl_classes.keys().count(), m.acl_verdicts.keys().count())
    }

    /// Forgets an interface's binding.
    pub fn unbind_endpoint(&self, ifindex: u32) -> Result<(), DataplaneError> {
        let mut guard = self.inner.lock().map_err(|_| err("lock", "poisoned"))?;
        let _ = guard.0.ports.remove(&ifindex);
        Ok(())
    }

    /// A backend writing into `maps`, which are assumed empty (freshly created).
    pub fn new(maps: KernelMaps) -> EbpfDataplane {
        EbpfDataplane { inner: Mutex::new((maps, Programmed::default())) }
    }

    /// A backend that adopts maps a previous agent left pinned: it reads what they hold, so that
    /// the first (full) apply removes exactly what should no longer be there and rewrites nothing
    /// that established flows depend on; the generation continues from the pinned configuration.
    pub fn adopt(maps: KernelMaps) -> EbpfDataplane {
        let mut p = Programmed::default();
        for key in maps.lb_dest.keys().flatten() {
            p.rules.insert(KernelRuleKey::Dest(key.ord()));
        }
        for key in maps.lb_nodeport.keys().flatten() {
            p.rules.insert(KernelRuleKey::NodePort(key.port, key.proto));
        }
        let prefix = |set: u32, addr: maps::Addr, len: u32| -> Option<(SetId, IpNetOrd)> {
            let v4 = set & maps::SET_V4 != 0;
            let ip = addr.to_ip();
            let net = match (v4, ip) {
                (true, std::net::IpAddr::V4(a)) => {
                    ipnet::IpNet::V4(ipnet::Ipv4Net::new(a, len.checked_sub(96)? as u8).ok()?)
                }
                (false, std::net::IpAddr::V6(a)) => ipnet::IpNet::V6(ipnet::Ipv6Net::new(a, len as u8).ok()?),
                _ => return None,
            };
            Some((SetId(set & !maps::SET_V4), IpNetOrd(net)))
        };
        for data in maps.set_hosts.keys().flatten() {
            if let Some((id, net)) = prefix(data.set, data.addr, 128) {
                p.sets.entry(id).or_default().insert(net);
            }
        }
        for key in maps.sets.keys().flatten() {
            let data = key.data();
            if let Some((id, net)) = prefix(data.set, data.addr, key.prefix_len().saturating_sub(32)) {
                p.sets.entry(id).or_default().insert(net);
            }
        }
        let mut backends: HashMap<u32, Vec<(u32, maps::Backend)>> = HashMap::new();
        for (key, b) in maps.backends.iter().flatten() {
            backends.entry(key.set).or_default().push((key.index, b));
        }
        for id in maps.backend_sets.keys().flatten() {
            let mut list = backends.remove(&id).unwrap_or_default();
            list.sort_by_key(|(i, _)| *i);
            p.backend_sets.insert(BackendSetId(id), list.into_iter().map(|(_, b)| b).collect());
        }
        for key in maps.endpoint_addrs.keys().flatten() {
            if key.port_id == maps::ANY_ENDPOINT_PORT {
                p.any_endpoint.insert(key.addr);
            } else {
                p.endpoints.entry(flowgate_switch::PortId(key.port_id)).or_default().push(key.addr);
            }
        }
        p.acls = Acls::adopt(&maps, &p.endpoints);
        p.generation = maps.config.get(&0, 0).map(|c| c.generation).unwrap_or(0);
        EbpfDataplane { inner: Mutex::new((maps, p)) }
    }
}

impl Dataplane for EbpfDataplane {
    fn name(&self) -> &'static str {
        "ebpf"
    }

    fn counters(&self) -> Vec<(String, u64)> {
        let Ok(guard) = self.inner.lock() else { return Vec::new() };
        let read = |i: u32| guard.0.counters.get(&i, 0).map(|v| v.iter().sum::<u64>()).unwrap_or(0);
        let mut out = vec![
            ("allowed".to_string(), read(0)),
            ("flow_hits".to_string(), read(maps::COUNTER_FLOW_HIT)),
            ("first_packets".to_string(), read(maps::COUNTER_FIRST_PACKET)),
            ("delivered_direct".to_string(), read(maps::COUNTER_DELIVERED)),
        ];
        for r in flowgate_switch::DropReason::ALL {
            out.push((format!("dropped_{}", r.name().replace('-', "_")), read(r as u32)));
        }
        // The flow tables under pressure: connections moved, expired, evicted, and the entries the
        // last sweep (`fg_flow_gc`) counted.
        for (i, name) in maps::FLOW_COUNTERS {
            let v = guard.0.flow_counters.get(&i, 0).map(|v| v.iter().sum::<u64>()).unwrap_or(0);
            out.push((name.to_string(), v));
        }
        let g = guard.0.flow_gauges.get(&0, 0).unwrap_or_default();
        out.push(("flow_entries_established".to_string(), g.established));
        out.push(("flow_entries_embryonic".to_string(), g.embryonic));
        out
    }

    fn rule_hits(&self, policy: &SwitchPolicy) -> Vec<(String, u64)> {
        let Ok(guard) = self.inner.lock() else { return Vec::new() };
        let (m, p) = &*guard;
        let mut out: HashMap<String, u64> = HashMap::new();
        for (key, values) in m.rule_hits.iter().flatten() {
            let hits: u64 = values.iter().sum();
            if let Some(name) = rule_name(policy, &p.acls, &key) {
                *out.entry(name).or_default() += hits;
            }
        }
        let mut out: Vec<(String, u64)> = out.into_iter().collect();
        out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        out
    }

    fn apply(&self, desired: &SwitchPolicy, delta: &PolicyDelta) -> Result<ApplyStats, DataplaneError> {
        let mut guard = self.inner.lock().map_err(|_| err("lock", "poisoned"))?;
        let (m, p) = &mut *guard;
        let mut w =
            Writer { m, p, desired, full: delta.full, out: ApplyStats { full: delta.full, ..Default::default() } };
        // What to look at: everything (full) or what the delta names.
        let (sets, backend_sets, rules): (Vec<SetId>, Vec<BackendSetId>, Vec<RuleRef>) = if delta.full {
            let mut s: BTreeSet<u32> = desired.sets().map(|(id, _)| id.0).collect();
            s.extend(w.p.sets.keys().map(|id| id.0));
            let mut b: BTreeSet<u32> = desired.backend_sets().map(|(id, _)| id.0).collect();
            b.extend(w.p.backend_sets.keys().map(|id| id.0));
            (
                s.into_iter().map(SetId).collect(),
                b.into_iter().map(BackendSetId).collect(),
                compile::all_rule_refs(desired),
            )
        } else {
            (
                delta.sets.iter().copied().collect(),
                delta.backend_sets.iter().copied().collect(),
                delta.rules.iter().cloned().collect(),
            )
        };
        // Address and backend sets first: rules written next may refer to them. Each phase
        // writes object by object; an object the kernel refuses is recorded as it stands in the
        // kernel, reported, and handed back for a retry, and the others go on.
        for id in &sets {
            w.set(*id);
        }
        let mut removed_backend_sets = Vec::new();
        for id in &backend_sets {
            if let Some(old) = w.backend_set(*id) {
                removed_backend_sets.push((*id, old));
            }
        }
        for r in &rules {
            w.rule_list(r);
        }
        if delta.full {
            w.sweep_rules(&rules);
        }
        // Backend sets no rule refers to any more: while a rule list could not be rewritten, the
        // old one in the kernel may still name them, so they wait for its retry.
        if w.out.failed.rules.is_empty() {
            for (id, old) in removed_backend_sets {
                w.remove_backend_set(id, old);
            }
        } else {
            for (id, old) in removed_backend_sets {
                w.p.backend_sets.insert(id, old);
                w.out.failed.backend_sets.insert(id);
            }
        }
        let ports: Vec<PortId> = if delta.full {
            let mut all: BTreeSet<u32> = desired.ports().map(|(id, _)| id.0).collect();
            all.extend(w.p.endpoints.keys().map(|id| id.0));
            all.into_iter().map(PortId).collect()
        } else {
            delta.ports.iter().copied().collect()
        };
        w.endpoints(&ports, delta.host);
        // Endpoint ACLs (NetworkPolicy): the endpoints whose layers, addresses or sets changed.
        let mut acl_ports: BTreeSet<PortId> = if delta.full {
            let mut all: BTreeSet<PortId> = desired.acls.keys().copied().collect();
            all.extend(w.p.acls.ports.keys().copied());
            all
        } else {
            delta.acls.iter().chain(delta.ports.iter()).copied().collect()
        };
        for s in &sets {
            if let Some(users) = w.p.acls.set_users.get(s) {
                acl_ports.extend(users.iter().copied());
            }
        }
        for id in acl_ports {
            w.acl(id);
        }
        if delta.full {
            w.p.acls.sweep(w.m, &mut w.out.entries);
        }
        w.config();
        Ok(w.out)
    }
}

/// One apply in progress: the maps, the record of what they hold, and what was done and what
/// failed. The record changes only after the kernel accepted a write.
struct Writer<'a> {
    m: &'a mut KernelMaps,
    p: &'a mut Programmed,
    desired: &'a SwitchPolicy,
    full: bool,
    out: ApplyStats,
}

impl Writer<'_> {
    fn failed(&mut self, object: String, e: impl std::fmt::Display) {
        self.out.problems.push(format!("{object}: {e}"));
    }

    /// A kernel error with its cause (aya's message alone does not say which errno).
    fn kernel(e: &aya::maps::MapError) -> String {
        match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        }
    }

    fn set_name(&self, id: SetId) -> String {
        match self.desired.address_set(id) {
            Some(s) => format!("address set {:?} ({})", s.name, id.0),
            None => format!("address set {}", id.0),
        }
    }

    /// Writes the prefixes of one address set that changed.
    fn set(&mut self, id: SetId) {
        let want = compile::set_prefixes(self.desired, id);
        let before = self.p.sets.remove(&id).unwrap_or_default();
        let mut have = before.clone();
        let mut failure = None;
        // Single addresses go to the hash, real prefixes to the trie (see fg_in_set).
        for net in want.difference(&before) {
            let k = compile::set_key(id.0, net.0);
            let data = maps::SetData { set: k.set, addr: k.addr };
            let written = if compile::is_host(net.0) {
                self.m.set_hosts.insert(data, 1u8, 0)
            } else {
                self.m.sets.insert(&LpmKey::new(k.prefixlen, data), 1u8, 0)
            };
            match written {
                Ok(()) => {
                    have.insert(*net);
                    self.out.entries += 1;
                }
                Err(e) => {
                    failure = Some(format!("add {}: {}", net.0, Self::kernel(&e)));
                    break;
                }
            }
        }
        for net in before.difference(&want) {
            let k = compile::set_key(id.0, net.0);
            let data = maps::SetData { set: k.set, addr: k.addr };
            // (A key already gone is as good as removed.)
            if compile::is_host(net.0) {
                let _ = self.m.set_hosts.remove(&data);
            } else {
                let _ = self.m.sets.remove(&LpmKey::new(k.prefixlen, data));
            }
            have.remove(net);
            self.out.entries += 1;
        }
        let info = compile::prefix_families(&have);
        if info != compile::prefix_families(&before) || self.full {
            let written = if info == 0 {
                let _ = self.m.set_info.remove(&id.0);
                Ok(())
            } else {
                self.m.set_info.insert(id.0, info, 0)
            };
            if let Err(e) = written {
                // The trie is consulted by this flag: without it, the set's prefixes are not
                // looked up. Forget them, so that the retry writes them and the flag again.
                for net in have.iter().filter(|n| !compile::is_host(n.0)).copied().collect::<Vec<_>>() {
                    let k = compile::set_key(id.0, net.0);
                    let _ = self.m.sets.remove(&LpmKey::new(k.prefixlen, maps::SetData { set: k.set, addr: k.addr }));
                    have.remove(&net);
                }
                failure.get_or_insert(format!("flags: {}", Self::kernel(&e)));
            }
        }
        if !have.is_empty() {
            self.p.sets.insert(id, have);
        }
        if let Some(e) = failure {
            self.out.failed.sets.insert(id);
            let name = self.set_name(id);
            self.failed(name, e);
        }
    }

    /// Writes one backend set that changed; returns the old backends of a set that is gone (it is
    /// removed after the rules that named it).
    fn backend_set(&mut self, id: BackendSetId) -> Option<Vec<maps::Backend>> {
        // A set whose last write failed is rewritten whole: its members are not known exactly.
        let whole = self.full || self.p.dirty_backend_sets.remove(&id);
        let old = self.p.backend_sets.remove(&id).unwrap_or_default();
        let Some(set) = self.desired.backend_set(id) else { return Some(old) };
        let (header, backends) = compile::backend_set(set);
        match self.write_backend_set(id, &header, &backends, &old, whole) {
            Ok(()) => {
                self.p.backend_sets.insert(id, backends);
            }
            Err(e) => {
                // Re-read what the kernel holds under this set; its next write is a whole one.
                let mut held: Vec<(u32, maps::Backend)> = self
                    .m
                    .backends
                    .iter()
                    .flatten()
                    .filter(|(k, _)| k.set == id.0)
                    .map(|(k, b)| (k.index, b))
                    .collect();
                held.sort_by_key(|(i, _)| *i);
                self.p.backend_sets.insert(id, held.into_iter().map(|(_, b)| b).collect());
                self.p.dirty_backend_sets.insert(id);
                self.out.failed.backend_sets.insert(id);
                self.failed(format!("backend set {:?} ({})", set.name, id.0), Self::kernel(&e));
            }
        }
        None
    }

    fn write_backend_set(
        &mut self,
        id: BackendSetId,
        header: &maps::BackendSet,
        backends: &[maps::Backend],
        old: &[maps::Backend],
        whole: bool,
    ) -> Result<(), aya::maps::MapError> {
        // A change writes what changed: backends at the same index as before and members that
        // stay are already in the kernel.
        let kept: HashSet<&maps::Backend> = if whole { HashSet::new() } else { old.iter().collect() };
        let wanted: HashSet<&maps::Backend> = backends.iter().collect();
        for (i, b) in backends.iter().enumerate() {
            if whole || old.get(i) != Some(b) {
                self.m.backends.insert(maps::BackendKey { set: id.0, index: i as u32 }, b, 0)?;
                self.out.entries += 1;
            }
            if !kept.contains(b) {
                self.m.members.insert(member_key(id, b), 1u8, 0)?;
            }
        }
        self.m.backend_sets.insert(id.0, header, 0)?;
        self.out.entries += 1;
        for i in backends.len()..old.len() {
            let _ = self.m.backends.remove(&maps::BackendKey { set: id.0, index: i as u32 });
            self.out.entries += 1;
        }
        for b in old.iter().filter(|b| !wanted.contains(b)) {
            let _ = self.m.members.remove(&member_key(id, b));
        }
        Ok(())
    }

    fn remove_backend_set(&mut self, id: BackendSetId, old: Vec<maps::Backend>) {
        let _ = self.m.backend_sets.remove(&id.0);
        for (i, b) in old.iter().enumerate() {
            let _ = self.m.backends.remove(&maps::BackendKey { set: id.0, index: i as u32 });
            let _ = self.m.members.remove(&member_key(id, b));
        }
        self.out.entries += 1 + old.len();
    }

    /// Writes one rule list that changed. A list the kernel cannot express (too many rules under
    /// one destination) is removed from the kernel and reported: its traffic meets the layers
    /// after it (a ClusterIP's is rejected by the service filter), never another's rules.
    fn rule_list(&mut self, r: &RuleRef) {
        let Some(key) = compile::kernel_key(r) else { return };
        let rules = self.desired.rules_at(r);
        let what = || match &r.key {
            RuleKey::Destination((ip, proto, port)) => format!("{} rules for {ip}:{port}/{proto}", r.layer.name()),
            RuleKey::Port(proto, port) => format!("{} rules for port {port}/{proto}", r.layer.name()),
            RuleKey::Group => format!("{} rules of {}", r.layer.name(), r.group),
        };
        let named = |rs: &[flowgate_switch::Rule]| {
            let first = rs.first().map(|r| r.name.to_string()).unwrap_or_default();
            format!("{} ({first})", what())
        };
        // A list naming a set or backend set the kernel did not take waits for it.
        if let Some(rs) = rules {
            let waits = rs.iter().any(|rule| {
                let c = &rule.conditions;
                let set_failed = |m: &Option<flowgate_switch::AddrMatch>| match m {
                    Some(flowgate_switch::AddrMatch::In(s) | flowgate_switch::AddrMatch::NotIn(s)) => {
                        self.out.failed.sets.contains(s)
                    }
                    _ => false,
                };
                let backends_failed = match &rule.action {
                    flowgate_switch::Action::Dnat(d) => self.out.failed.backend_sets.contains(&d.backends),
                    _ => false,
                };
                set_failed(&c.src) || set_failed(&c.dst) || backends_failed
            });
            if waits {
                self.out.failed.rules.insert(r.clone());
                let name = named(rs);
                self.failed(name, "waits for an address or backend set the kernel did not take");
                return;
            }
        }
        let list = match rules.map(|rs| compile::rule_list(rs, r.layer.name())).transpose() {
            Ok(list) => list,
            Err(e) => {
                // Degraded: nothing under this key rather than a list the kernel would misread.
                let name = rules.map(named).unwrap_or_else(what);
                self.failed(name, e);
                self.out.failed.rules.insert(r.clone());
                None
            }
        };
        let written = match (key, list) {
            (KernelRuleKey::Dest(k), Some(l)) => self.m.lb_dest.insert(k.key(), l, 0),
            (KernelRuleKey::Dest(k), None) => {
                let _ = self.m.lb_dest.remove(&k.key());
                Ok(())
            }
            (KernelRuleKey::NodePort(port, proto), Some(l)) => {
                self.m.lb_nodeport.insert(maps::PortKey { port, proto, pad: 0 }, l, 0)
            }
            (KernelRuleKey::NodePort(port, proto), None) => {
                let _ = self.m.lb_nodeport.remove(&maps::PortKey { port, proto, pad: 0 });
                Ok(())
            }
            (KernelRuleKey::Group(slot), l) => self.m.groups.set(slot, l.unwrap_or_default(), 0),
        };
        match written {
            Ok(()) if list.is_some() => {
                self.p.rules.insert(key);
            }
            Ok(()) => {
                self.p.rules.remove(&key);
            }
            Err(e) => {
                // Nothing changed under this key: the record stays as it was.
                self.out.failed.rules.insert(r.clone());
                let name = rules.map(named).unwrap_or_else(what);
                self.failed(name, Self::kernel(&e));
                return;
            }
        }
        self.out.entries += 1;
    }

    /// Rules programmed earlier that the desired policy no longer has (a full apply).
    fn sweep_rules(&mut self, rules: &[RuleRef]) {
        let want: BTreeSet<KernelRuleKey> = rules.iter().filter_map(compile::kernel_key).collect();
        for key in self.p.rules.difference(&want).copied().collect::<Vec<_>>() {
            match key {
                KernelRuleKey::Dest(k) => {
                    let _ = self.m.lb_dest.remove(&k.key());
                }
                KernelRuleKey::NodePort(port, proto) => {
                    let _ = self.m.lb_nodeport.remove(&maps::PortKey { port, proto, pad: 0 });
                }
                KernelRuleKey::Group(slot) => {
                    let _ = self.m.groups.set(slot, maps::RuleList::default(), 0);
                }
            }
            self.p.rules.remove(&key);
            self.out.entries += 1;
        }
    }

    /// Endpoint addresses (anti-spoofing) of the ports that changed, then the addresses the
    /// uplink refuses as sources.
    fn endpoints(&mut self, ports: &[PortId], host: bool) {
        let mut touched = self.full;
        for &id in ports {
            let want: Vec<maps::Addr> = match self.desired.port(id) {
                Some(port) if matches!(port.kind, flowgate_switch::PortKind::Endpoint { .. }) => {
                    port.addresses.iter().map(|a| maps::Addr::from_ip(*a)).collect()
                }
                _ => Vec::new(),
            };
            let mut have = self.p.endpoints.remove(&id).unwrap_or_default();
            let mut failure = None;
            for a in want.clone() {
                if have.contains(&a) {
                    continue;
                }
                match self.m.endpoint_addrs.insert(maps::EndpointKey { port_id: id.0, addr: a }, 1u8, 0) {
                    Ok(()) => {
                        have.push(a);
                        self.out.entries += 1;
                        touched = true;
                    }
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            for a in have.clone().into_iter().filter(|a| !want.contains(a)) {
                let _ = self.m.endpoint_addrs.remove(&maps::EndpointKey { port_id: id.0, addr: a });
                have.retain(|h| *h != a);
                self.out.entries += 1;
                touched = true;
            }
            if !have.is_empty() {
                self.p.endpoints.insert(id, have);
            }
            if let Some(e) = failure {
                self.out.failed.ports.insert(id);
                let name = self.desired.port(id).map(|p| p.label()).unwrap_or_else(|| format!("port {}", id.0));
                self.failed(format!("endpoint {name} addresses"), Self::kernel(&e));
            }
        }
        // Every local endpoint's address once more, under ANY_ENDPOINT_PORT, and the node's own
        // addresses and pod gateways (its host addresses): what arrives from the network with one
        // of them as its source is dropped as spoofed.
        if !(touched || host) {
            return;
        }
        let mut owned: HashSet<maps::Addr> = self.p.endpoints.values().flatten().copied().collect();
        owned.extend(
            self.desired
                .host_addresses
                .nets()
                .into_iter()
                .filter(|n| n.prefix_len() == n.max_prefix_len())
                .map(|n| maps::Addr::from_ip(n.addr())),
        );
        for a in owned.difference(&self.p.any_endpoint.clone()) {
            match self.m.endpoint_addrs.insert(maps::EndpointKey { port_id: maps::ANY_ENDPOINT_PORT, addr: *a }, 1u8, 0)
            {
                Ok(()) => {
                    self.p.any_endpoint.insert(*a);
                    self.out.entries += 1;
                }
                Err(e) => {
                    self.out.failed.host = true;
                    self.failed(
                        format!("local address {} refused as a source from the network", a.to_ip()),
                        Self::kernel(&e),
                    );
                }
            }
        }
        for a in self.p.any_endpoint.difference(&owned).copied().collect::<Vec<_>>() {
            let _ = self.m.endpoint_addrs.remove(&maps::EndpointKey { port_id: maps::ANY_ENDPOINT_PORT, addr: a });
            self.p.any_endpoint.remove(&a);
            self.out.entries += 1;
        }
    }

    /// One endpoint's ACL tables.
    fn acl(&mut self, id: PortId) {
        if let Err(e) = self.p.acls.sync_port(self.m, self.desired, id, &mut self.out.entries) {
            // Part of it may be written: the retry rewrites it whole.
            self.p.acls.mark_dirty(id);
            self.out.failed.acls.insert(id);
            let name = self.desired.port(id).map(|p| p.label()).unwrap_or_else(|| format!("port {}", id.0));
            self.failed(format!("NetworkPolicy of endpoint {name}"), e);
        }
    }

    /// The configuration, with the new generation: cached flows are re-checked from now on.
    fn config(&mut self) {
        let generation = self.p.generation + 1;
        let cfg = maps::Config {
            generation,
            nodeport_set: compile::nodeport_set(self.desired),
            pad0: 0,
            snat_v4: self.desired.snat_v4.map(maps::Addr::from_ip).unwrap_or_default(),
            snat_v6: self.desired.snat_v6.map(maps::Addr::from_ip).unwrap_or_default(),
            has_snat_v4: u8::from(self.desired.snat_v4.is_some()),
            has_snat_v6: u8::from(self.desired.snat_v6.is_some()),
            pad: [0; 6],
        };
        match self.m.config.set(0, cfg, 0) {
            Ok(()) => self.p.generation = generation,
            Err(e) => {
                self.out.failed.host = true;
                self.failed("the node's configuration (generation, NodePort addresses, SNAT)".into(), Self::kernel(&e));
            }
        }
    }
}

/// The name trace gives the rule a counter is about (`lb: ...`, `acl-in: ...`), if `policy` has it.
fn rule_name(policy: &SwitchPolicy, acls: &Acls, key: &maps::RuleHitKey) -> Option<String> {
    use flowgate_switch::{GroupId, LayerKind, Proto, RuleKey};
    let list = match key.kind {
        maps::rule_list::LB_DEST => RuleRef {
            layer: LayerKind::Lb,
            group: GroupId::ServiceIps,
            key: RuleKey::Destination((key.addr.to_ip(), Proto(key.proto), u16::from_be(key.port))),
        },
        maps::rule_list::LB_NODEPORT => RuleRef {
            layer: LayerKind::Lb,
            group: GroupId::ServiceNodePorts,
            key: RuleKey::Port(Proto(key.proto), u16::from_be(key.port)),
        },
        maps::rule_list::GROUP if key.id == maps::group::SERVICE_FILTER => {
            RuleRef { layer: LayerKind::ServiceFilter, group: GroupId::ClusterIpsCheck, key: RuleKey::Group }
        }
        maps::rule_list::GROUP if key.id == maps::group::OUTBOUND_NAT => {
            RuleRef { layer: LayerKind::OutboundNat, group: GroupId::OutboundNat, key: RuleKey::Group }
        }
        maps::rule_list::ACL => return acls.rule_name(policy, key.id, key.index),
        _ => return None,
    };
    let rule = policy.rules_at(&list)?.get(key.index as usize)?;
    Some(format!("{}: {}", list.layer.name(), rule.name))
}
