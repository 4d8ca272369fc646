//! The ACL tables in the kernel maps (`fg_acl_endpoints`, `fg_acl_classes`, `fg_acl_verdicts`):
//! each endpoint direction's layer compiled by [`crate::acl`], shared by content between
//! endpoints, written as differences — new tables first, then the endpoint's addresses pointed at
//! them, then the tables nobody uses any more removed — and adopted from a previous agent.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use aya::maps::lpm_trie::Key as LpmKey;
use flowgate_dataplane::DataplaneError;
use flowgate_switch::{PortId, SetId, SwitchPolicy};

use crate::acl::{self, AclTable, VerdictEntry};
use crate::backend::{err, KernelMaps};
use crate::compile;
use crate::maps;

/// The ACL tables in the kernel, shared by content, and which endpoint uses which.
#[derive(Debug, Default)]
pub(crate) struct Acls {
    /// Table content -> (id, number of endpoint directions using it).
    tables: HashMap<Arc<AclTable>, (u32, usize)>,
    free: Vec<u32>,
    next: u32,
    /// Per endpoint: the addresses written to `fg_acl_endpoints` and its (egress, ingress) tables.
    pub(crate) ports: HashMap<PortId, PortAcl>,
    /// Which endpoints' layers refer to which address set.
    pub(crate) set_users: HashMap<SetId, BTreeSet<PortId>>,
    /// `fg_acl_endpoints` entries found at adoption that belong to no endpoint.
    orphans: Vec<maps::Addr>,
    /// Which endpoint wrote each `fg_acl_endpoints` entry (an address can move to another
    /// endpoint in one sync; only its current owner removes it).
    owners: HashMap<maps::Addr, PortId>,
}

#[derive(Debug, Default, Clone)]
pub(crate) struct PortAcl {
    addrs: Vec<maps::Addr>,
    egress: Option<Arc<AclTable>>,
    ingress: Option<Arc<AclTable>>,
    sets: Vec<SetId>,
    /// Adopted with addresses that disagree (a previous agent stopped half way): every address
    /// is written again.
    dirty: bool,
}

/// The `fg_acl_verdicts` key of an entry of table `id`.
fn verdict_key(id: u32, v: &VerdictEntry) -> LpmKey<maps::AclPortData> {
    let (len, proto, port) = match (v.proto, v.ports) {
        (None, _) => (64, 0, 0),
        (Some(p), None) => (72, p, 0),
        (Some(p), Some((first, bits))) => (72 + u32::from(bits), p, first),
    };
    LpmKey::new(len, maps::AclPortData { table: id, class: v.class, proto, port: port.to_be_bytes(), pad: 0 })
}

fn class_key(id: u32, net: ipnet::IpNet) -> LpmKey<maps::SetData> {
    let k = compile::set_key(id, net);
    LpmKey::new(k.prefixlen, maps::SetData { set: k.set, addr: k.addr })
}

impl Acls {
    /// A table's id, writing it into the kernel when no endpoint had it yet.
    fn acquire(&mut self, m: &mut KernelMaps, t: &Arc<AclTable>, entries: &mut usize) -> Result<u32, DataplaneError> {
        if let Some((id, n)) = self.tables.get_mut(t) {
            *n += 1;
            return Ok(*id);
        }
        let id = self.free.pop().unwrap_or_else(|| {
            self.next += 1;
            self.next - 1
        });
        for (net, class) in &t.classes {
            m.acl_classes.insert(&class_key(id, *net), *class, 0).map_err(|e| err(format!("acl {id} class"), e))?;
        }
        for v in &t.verdicts {
            let value = maps::AclVerdict { rule: v.rule, action: maps::action::ALLOW, pad: [0; 3] };
            m.acl_verdicts.insert(&verdict_key(id, v), value, 0).map_err(|e| err(format!("acl {id} verdict"), e))?;
        }
        *entries += t.classes.len() + t.verdicts.len();
        self.tables.insert(t.clone(), (id, 1));
        Ok(id)
    }

    /// Drops one use of a table; the last removes it from the kernel.
    fn release(&mut self, m: &mut KernelMaps, t: &Arc<AclTable>, entries: &mut usize) {
        let Some((id, n)) = self.tables.get_mut(t) else { return };
        *n -= 1;
        if *n > 0 {
            return;
        }
        let id = *id;
        self.tables.remove(t);
        for (net, _) in &t.classes {
            let _ = m.acl_classes.remove(&class_key(id, *net));
        }
        for v in &t.verdicts {
            let _ = m.acl_verdicts.remove(&verdict_key(id, v));
        }
        *entries += t.classes.len() + t.verdicts.len();
        self.free.push(id);
    }

    /// Programs one endpoint's ACLs: new tables first, then its addresses point at them, then the
    /// tables nobody uses any more go.
    pub(crate) fn sync_port(
        &mut self,
        m: &mut KernelMaps,
        desired: &SwitchPolicy,
        id: PortId,
        entries: &mut usize,
    ) -> Result<(), DataplaneError> {
        let layers = desired.acls.get(&id);
        let compile = |l: Option<&flowgate_switch::Layer>| -> Result<Option<Arc<AclTable>>, DataplaneError> {
            match l {
                None => Ok(None),
                Some(l) => {
                    Ok(acl::compile(desired, l).map_err(|e| err(format!("acl of port {}", id.0), e))?.map(Arc::new))
                }
            }
        };
        let egress = compile(layers.map(|l| &l.0))?;
        let ingress = compile(layers.map(|l| &l.1))?;
        let addrs: Vec<maps::Addr> = match desired.port(id) {
            Some(p)
                if matches!(p.kind, flowgate_switch::PortKind::Endpoint { .. })
                    && (egress.is_some() || ingress.is_some()) =>
            {
                p.addresses.iter().map(|a| maps::Addr::from_ip(*a)).collect()
            }
            _ => Vec::new(),
        };
        // (The old state stays recorded until the new one is written: an error leaves it as it was.)
        let old = self.ports.get(&id).cloned().unwrap_or_default();
        if addrs.is_empty() && old.addrs.is_empty() {
            return Ok(());
        }
        let same_addrs = old.addrs.len() == addrs.len() && addrs.iter().all(|a| old.addrs.contains(a));
        if !old.dirty && same_addrs && old.egress == egress && old.ingress == ingress {
            return Ok(());
        }
        let mut value = maps::AclEndpoint { egress: maps::NO_ACL, ingress: maps::NO_ACL };
        if !addrs.is_empty() {
            if let Some(t) = &egress {
                value.egress = self.acquire(m, t, entries)?;
            }
            if let Some(t) = &ingress {
                value.ingress = self.acquire(m, t, entries)?;
            }
        }
        for a in &addrs {
            m.acl_endpoints.insert(*a, value, 0).map_err(|e| err(format!("acl endpoint {}", id.0), e))?;
            self.owners.insert(*a, id);
            *entries += 1;
        }
        for a in old.addrs.iter().filter(|a| !addrs.contains(a)) {
            if self.owners.get(a) == Some(&id) {
                self.owners.remove(a);
                let _ = m.acl_endpoints.remove(a);
                *entries += 1;
            }
        }
        for t in old.egress.iter().chain(old.ingress.iter()) {
            if !old.addrs.is_empty() {
                self.release(m, t, entries);
            }
        }
        for s in &old.sets {
            if let Some(users) = self.set_users.get_mut(s) {
                users.remove(&id);
                if users.is_empty() {
                    self.set_users.remove(s);
                }
            }
        }
        if addrs.is_empty() {
            self.ports.remove(&id);
        } else {
            let sets: Vec<SetId> =
                layers.map(|(e, i)| acl::sets_of(e).into_iter().chain(acl::sets_of(i)).collect()).unwrap_or_default();
            for s in &sets {
                self.set_users.entry(*s).or_default().insert(id);
            }
            self.ports.insert(id, PortAcl { addrs, egress, ingress, sets, dirty: false });
        }
        Ok(())
    }

    /// Marks a port's tables as not known exactly (a write failed part-way): its next sync
    /// rewrites them whole.
    pub(crate) fn mark_dirty(&mut self, id: PortId) {
        if let Some(port) = self.ports.get_mut(&id) {
            port.dirty = true;
        }
    }

    /// Reads the ACL state a previous agent left (`endpoints`: each port's addresses).
    pub(crate) fn adopt(m: &KernelMaps, endpoints: &HashMap<PortId, Vec<maps::Addr>>) -> Acls {
        let mut a = Acls::default();
        let mut tables: BTreeMap<u32, AclTable> = BTreeMap::new();
        for (key, class) in m.acl_classes.iter().flatten() {
            let data = key.data();
            let id = data.set & !maps::SET_V4;
            let len = key.prefix_len().saturating_sub(32);
            let net = match (data.set & maps::SET_V4 != 0, data.addr.to_ip()) {
                (true, std::net::IpAddr::V4(ip)) => {
                    ipnet::Ipv4Net::new(ip, len.saturating_sub(96) as u8).ok().map(ipnet::IpNet::V4)
                }
                (false, std::net::IpAddr::V6(ip)) => ipnet::Ipv6Net::new(ip, len as u8).ok().map(ipnet::IpNet::V6),
                _ => None,
            };
            if let Some(net) = net {
                tables.entry(id).or_default().classes.push((net, class));
            }
        }
        for (key, v) in m.acl_verdicts.iter().flatten() {
            let d = key.data();
            let len = key.prefix_len();
            let entry = VerdictEntry {
                class: d.class,
                proto: (len >= 72).then_some(d.proto),
                ports: (len > 72).then(|| (u16::from_be_bytes(d.port), (len - 72) as u8)),
                rule: v.rule,
            };
            tables.entry(d.table).or_default().verdicts.push(entry);
        }
        let mut by_id: HashMap<u32, Arc<AclTable>> = HashMap::new();
        for (id, mut t) in tables {
            t.classes.sort();
            t.verdicts.sort();
            let t = Arc::new(t);
            a.tables.insert(t.clone(), (id, 0));
            by_id.insert(id, t);
            a.next = a.next.max(id + 1);
        }
        let mut referenced: BTreeSet<u32> = BTreeSet::new();
        let mut first: HashMap<PortId, maps::AclEndpoint> = HashMap::new();
        let owner: HashMap<maps::Addr, PortId> =
            endpoints.iter().flat_map(|(p, addrs)| addrs.iter().map(move |a| (*a, *p))).collect();
        for (addr, v) in m.acl_endpoints.iter().flatten() {
            let Some(port) = owner.get(&addr) else {
                a.orphans.push(addr);
                continue;
            };
            a.owners.insert(addr, *port);
            for id in [v.egress, v.ingress].into_iter().filter(|id| *id != maps::NO_ACL) {
                referenced.insert(id);
            }
            let known = |id: u32| id == maps::NO_ACL || by_id.contains_key(&id);
            let entry = a.ports.entry(*port).or_default();
            if entry.addrs.is_empty() {
                entry.egress = by_id.get(&v.egress).cloned();
                entry.ingress = by_id.get(&v.ingress).cloned();
                first.insert(*port, v);
                for t in entry.egress.iter().chain(entry.ingress.iter()) {
                    if let Some((_, n)) = a.tables.get_mut(t) {
                        *n += 1;
                    }
                }
            }
            if first.get(port) != Some(&v) || !known(v.egress) || !known(v.ingress) {
                entry.dirty = true;
            }
            entry.addrs.push(addr);
        }
        // Ids an address still points at are never handed out again while it might.
        a.next = referenced.iter().map(|id| id + 1).fold(a.next, u32::max);
        let used: HashSet<u32> = a.tables.values().map(|(id, _)| *id).chain(referenced).collect();
        a.free = (0..a.next).filter(|i| !used.contains(i)).collect();
        a
    }

    /// The name of rule `index` of table `id` (from the first endpoint using it), as trace names
    /// it, with the endpoint (and how many share the table).
    pub(crate) fn rule_name(&self, policy: &SwitchPolicy, id: u32, index: u32) -> Option<String> {
        let mut users = self.ports.iter().flat_map(|(port, acl)| {
            let named =
                |t: &Option<Arc<AclTable>>| t.as_ref().and_then(|t| self.tables.get(t)).map(|(i, _)| *i) == Some(id);
            [(named(&acl.egress), false), (named(&acl.ingress), true)]
                .into_iter()
                .filter(|(n, _)| *n)
                .map(move |(_, ingress)| (*port, ingress))
        });
        let (port, ingress) = users.next()?;
        let others = users.count();
        let layers = policy.acls.get(&port)?;
        let layer = if ingress { &layers.1 } else { &layers.0 };
        let rule = acl::rules_of(layer).nth(index as usize);
        let endpoint = policy.port(port).map(|p| p.label()).unwrap_or_default();
        let shared = if others > 0 { format!(", and {others} more sharing its rules") } else { String::new() };
        let rule = match rule {
            Some(r) => r.name.to_string(),
            None => "no rule matched (allowed)".to_string(),
        };
        Some(format!("{}: {rule} [{endpoint}{shared}]", layer.kind.name()))
    }

    /// Tables no endpoint uses (left by a previous agent) and orphan entries go.
    pub(crate) fn sweep(&mut self, m: &mut KernelMaps, entries: &mut usize) {
        for a in std::mem::take(&mut self.orphans) {
            let _ = m.acl_endpoints.remove(&a);
            *entries += 1;
        }
        let unused: Vec<Arc<AclTable>> =
            self.tables.iter().filter(|(_, (_, n))| *n == 0).map(|(t, _)| t.clone()).collect();
        for t in unused {
            if let Some((_, n)) = self.tables.get_mut(&t) {
                *n = 1;
            }
            self.release(m, &t, entries);
        }
    }
}
