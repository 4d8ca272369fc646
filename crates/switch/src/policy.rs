//! The switch policy: everything a compiler produces and a data plane programs — ports, address
//! sets, backend sets and layers. Plain data; the engine walks it, the kernel backend compiles it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};

use crate::addr::PrefixSet;
use crate::layer::{DestinationKey, Layer, LayerKind, RuleIndex};
use crate::packet::Proto;
use crate::port::{Port, PortId, PortKind};
use crate::rule::AddrMatch;
use crate::rule::Rule;

/// Index of an address set in a policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SetId(pub u32);

/// Index of a backend set in a policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BackendSetId(pub u32);

/// A named set of prefixes that rules refer to.
#[derive(Clone, Debug)]
pub struct AddressSet {
    /// Name for trace and debugging (`cluster-cidr`, `nodeport-addresses`, ...).
    pub name: String,
    /// The prefixes.
    pub prefixes: PrefixSet,
}

/// How a backend is chosen for a new connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selection {
    /// Uniformly, per connection.
    Random,
    /// The backend last chosen for the same client address, while it is younger than the timeout;
    /// otherwise as `Random`.
    ClientIp {
        /// Seconds an affinity entry lives after its last use.
        timeout_seconds: u32,
    },
}

/// The backends a load-balancing rule chooses from.
#[derive(Clone, Debug)]
pub struct BackendSet {
    /// The service port, as `namespace/name:port`.
    pub name: Arc<str>,
    /// The backends, each an address and port.
    pub backends: Vec<SocketAddr>,
    /// How a backend is chosen.
    pub selection: Selection,
}

/// Where rules live in a policy: a layer, a group, and the key within the group's index.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RuleRef {
    /// The layer.
    pub layer: LayerKind,
    /// The group.
    pub group: crate::GroupId,
    /// The key within the group.
    pub key: RuleKey,
}

/// A key within a rule group's index.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RuleKey {
    /// An exact destination, in a `Destination` group.
    Destination(DestinationKey),
    /// A protocol and port, in a `PortOnAddresses` group.
    Port(Proto, u16),
    /// The whole rule list of an `Ordered` group.
    Group,
}

/// The parts of a policy that changed: every key whose current value — or absence — must be copied
/// to a data plane. Level-triggered: a backend reads the values from the policy itself, so a
/// delta never carries stale copies.
#[derive(Clone, Debug, Default)]
pub struct PolicyDelta {
    /// Everything may have changed: program the policy from scratch.
    pub full: bool,
    /// Host addresses and SNAT addresses.
    pub host: bool,
    /// Ports added, changed or removed.
    pub ports: FxHashSet<PortId>,
    /// Address sets added, changed or removed.
    pub sets: FxHashSet<SetId>,
    /// Backend sets added, changed or removed.
    pub backend_sets: FxHashSet<BackendSetId>,
    /// Rule lists added, changed or removed.
    pub rules: FxHashSet<RuleRef>,
    /// Endpoints whose ACL layers were added, changed or removed.
    pub acls: FxHashSet<PortId>,
}

impl PolicyDelta {
    /// A delta that reprograms everything.
    pub fn full() -> PolicyDelta {
        PolicyDelta { full: true, ..PolicyDelta::default() }
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        !self.full
            && !self.host
            && self.ports.is_empty()
            && self.sets.is_empty()
            && self.backend_sets.is_empty()
            && self.rules.is_empty()
            && self.acls.is_empty()
    }

    /// Adds everything another delta marks.
    pub fn merge(&mut self, other: PolicyDelta) {
        self.full |= other.full;
        self.host |= other.host;
        self.ports.extend(other.ports);
        self.sets.extend(other.sets);
        self.backend_sets.extend(other.backend_sets);
        self.rules.extend(other.rules);
        self.acls.extend(other.acls);
    }

    /// Number of marked keys (a measure of the sync's size).
    pub fn len(&self) -> usize {
        self.ports.len()
            + self.sets.len()
            + self.backend_sets.len()
            + self.rules.len()
            + self.acls.len()
            + usize::from(self.host)
    }
}

/// A vector of optional slots with a free list: stable ids that are reused after removal, as
/// kernel map keys are.
#[derive(Clone, Debug)]
pub struct Slots<T> {
    items: Vec<Option<T>>,
    free: Vec<u32>,
}

impl<T> Default for Slots<T> {
    fn default() -> Self {
        Slots { items: Vec::new(), free: Vec::new() }
    }
}

impl<T> Slots<T> {
    /// Stores `item` and returns its id.
    pub fn insert(&mut self, item: T) -> u32 {
        match self.free.pop() {
            Some(id) => {
                self.items[id as usize] = Some(item);
                id
            }
            None => {
                self.items.push(Some(item));
                self.items.len() as u32 - 1
            }
        }
    }

    /// Removes and returns the item with this id.
    pub fn remove(&mut self, id: u32) -> Option<T> {
        let item = self.items.get_mut(id as usize)?.take();
        if item.is_some() {
            self.free.push(id);
        }
        item
    }

    /// The item with this id.
    pub fn get(&self, id: u32) -> Option<&T> {
        self.items.get(id as usize).and_then(Option::as_ref)
    }

    /// Mutable access to the item with this id.
    pub fn get_mut(&mut self, id: u32) -> Option<&mut T> {
        self.items.get_mut(id as usize).and_then(Option::as_mut)
    }

    /// Stores `item` (or nothing) at exactly `id`, as a copy of another policy's slot.
    pub fn put(&mut self, id: u32, item: Option<T>) {
        let i = id as usize;
        if i >= self.items.len() {
            for extra in self.items.len()..i {
                self.free.push(extra as u32);
            }
            self.items.resize_with(i + 1, || None);
            if item.is_none() {
                self.free.push(id);
            }
        } else {
            let was = self.items[i].is_some();
            match (was, item.is_some()) {
                (true, false) => self.free.push(id),
                (false, true) => self.free.retain(|f| *f != id),
                _ => {}
            }
        }
        self.items[i] = item;
    }

    /// Every stored item with its id.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &T)> {
        self.items.iter().enumerate().filter_map(|(i, x)| x.as_ref().map(|x| (i as u32, x)))
    }

    /// Number of stored items.
    pub fn len(&self) -> usize {
        self.items.len() - self.free.len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The whole compiled policy of one node's switch.
#[derive(Clone, Debug)]
pub struct SwitchPolicy {
    ports: Slots<Port>,
    /// The node's own addresses (packets to them go to the host port; from them, come from it).
    pub host_addresses: PrefixSet,
    /// Addresses used as the new source when a packet is masqueraded, one per family.
    pub snat_v4: Option<IpAddr>,
    /// IPv6 counterpart of `snat_v4`.
    pub snat_v6: Option<IpAddr>,
    sets: Slots<AddressSet>,
    backend_sets: Slots<BackendSet>,
    /// Node-wide layers, in walking order (load balancing, service filter, outbound NAT).
    pub layers: Vec<Layer>,
    /// Per-endpoint ACL layers, keyed by port: (egress, ingress). An endpoint without an entry,
    /// or a layer without groups, lets every packet through in that direction.
    pub acls: FxHashMap<PortId, (Layer, Layer)>,
    endpoint_by_addr: FxHashMap<IpAddr, PortId>,
    empty: PrefixSet,
}

impl Default for SwitchPolicy {
    fn default() -> Self {
        SwitchPolicy::new()
    }
}

impl SwitchPolicy {
    /// A policy with only the host and uplink ports and empty layers.
    pub fn new() -> SwitchPolicy {
        let mut ports = Slots::default();
        ports.insert(Port { kind: PortKind::Host, addresses: Vec::new() });
        ports.insert(Port { kind: PortKind::Uplink, addresses: Vec::new() });
        SwitchPolicy {
            ports,
            host_addresses: PrefixSet::new(),
            snat_v4: None,
            snat_v6: None,
            sets: Slots::default(),
            backend_sets: Slots::default(),
            layers: vec![
                Layer::new(LayerKind::Lb),
                Layer::new(LayerKind::ServiceFilter),
                Layer::new(LayerKind::OutboundNat),
            ],
            acls: FxHashMap::default(),
            endpoint_by_addr: FxHashMap::default(),
            empty: PrefixSet::new(),
        }
    }

    /// Adds an endpoint port for a pod with the given addresses.
    pub fn add_endpoint(&mut self, pod: impl Into<String>, addresses: Vec<IpAddr>) -> PortId {
        let id = PortId(
            self.ports.insert(Port { kind: PortKind::Endpoint { pod: pod.into() }, addresses: addresses.clone() }),
        );
        for a in addresses {
            self.endpoint_by_addr.insert(a, id);
        }
        id
    }

    /// Removes an endpoint port (the host and uplink ports cannot be removed).
    pub fn remove_endpoint(&mut self, id: PortId) -> Option<Port> {
        if id == PortId::HOST || id == PortId::UPLINK {
            return None;
        }
        let port = self.ports.remove(id.0)?;
        for a in &port.addresses {
            if self.endpoint_by_addr.get(a) == Some(&id) {
                self.endpoint_by_addr.remove(a);
            }
        }
        self.acls.remove(&id);
        Some(port)
    }

    /// Places a port (or nothing) at exactly `id`, keeping the address index in step: how a data
    /// plane copies a port from the desired policy.
    pub fn put_port(&mut self, id: PortId, port: Option<Port>) {
        if let Some(old) = self.ports.get(id.0) {
            for a in old.addresses.clone() {
                if self.endpoint_by_addr.get(&a) == Some(&id) {
                    self.endpoint_by_addr.remove(&a);
                }
            }
        }
        if let Some(p) = &port {
            if matches!(p.kind, PortKind::Endpoint { .. }) {
                for a in &p.addresses {
                    self.endpoint_by_addr.insert(*a, id);
                }
            }
        }
        self.ports.put(id.0, port);
    }

    /// Places an endpoint's ACL layers (egress, ingress), or removes them with `None`.
    pub fn put_acl(&mut self, id: PortId, acl: Option<(Layer, Layer)>) {
        match acl {
            Some(a) => {
                self.acls.insert(id, a);
            }
            None => {
                self.acls.remove(&id);
            }
        }
    }

    /// Places an address set (or nothing) at exactly `id`.
    pub fn put_set(&mut self, id: SetId, set: Option<AddressSet>) {
        self.sets.put(id.0, set);
    }

    /// Places a backend set (or nothing) at exactly `id`.
    pub fn put_backend_set(&mut self, id: BackendSetId, set: Option<BackendSet>) {
        self.backend_sets.put(id.0, set);
    }

    /// The rules stored under a reference, if any.
    pub fn rules_at(&self, r: &RuleRef) -> Option<&[Rule]> {
        let group = self.layer(r.layer)?.groups.iter().find(|g| g.id == r.group)?;
        match (&group.index, &r.key) {
            (RuleIndex::Destination(m), RuleKey::Destination(k)) => m.get(k).map(Vec::as_slice),
            (RuleIndex::PortOnAddresses { rules, .. }, RuleKey::Port(p, n)) => rules.get(&(*p, *n)).map(Vec::as_slice),
            (RuleIndex::Ordered(rules), RuleKey::Group) => Some(rules.as_slice()),
            _ => None,
        }
    }

    /// Stores (or, with `None`, removes) the rules under a reference. The group must exist with the
    /// matching index kind; otherwise nothing happens and `false` is returned.
    pub fn put_rules(&mut self, r: &RuleRef, rules: Option<Vec<Rule>>) -> bool {
        let Some(layer) = self.layers.iter_mut().find(|l| l.kind == r.layer) else { return false };
        let Some(group) = layer.groups.iter_mut().find(|g| g.id == r.group) else { return false };
        match (&mut group.index, &r.key) {
            (RuleIndex::Destination(m), RuleKey::Destination(k)) => {
                match rules {
                    Some(v) => m.insert(*k, v),
                    None => m.remove(k),
                };
                true
            }
            (RuleIndex::PortOnAddresses { rules: m, .. }, RuleKey::Port(p, n)) => {
                match rules {
                    Some(v) => m.insert((*p, *n), v),
                    None => m.remove(&(*p, *n)),
                };
                true
            }
            (RuleIndex::Ordered(v), RuleKey::Group) => {
                *v = rules.unwrap_or_default();
                true
            }
            _ => false,
        }
    }

    /// Every port with its id.
    pub fn ports(&self) -> impl Iterator<Item = (PortId, &Port)> {
        self.ports.iter().map(|(i, p)| (PortId(i), p))
    }

    /// Adds an address set and returns its id.
    pub fn add_set(&mut self, name: impl Into<String>, prefixes: PrefixSet) -> SetId {
        SetId(self.sets.insert(AddressSet { name: name.into(), prefixes }))
    }

    /// Removes an address set.
    pub fn remove_set(&mut self, id: SetId) -> Option<AddressSet> {
        self.sets.remove(id.0)
    }

    /// Mutable access to an address set.
    pub fn set_mut(&mut self, id: SetId) -> Option<&mut AddressSet> {
        self.sets.get_mut(id.0)
    }

    /// Every address set with its id.
    pub fn sets(&self) -> impl Iterator<Item = (SetId, &AddressSet)> {
        self.sets.iter().map(|(i, s)| (SetId(i), s))
    }

    /// Adds a backend set and returns its id.
    pub fn add_backend_set(&mut self, set: BackendSet) -> BackendSetId {
        BackendSetId(self.backend_sets.insert(set))
    }

    /// Removes a backend set.
    pub fn remove_backend_set(&mut self, id: BackendSetId) -> Option<BackendSet> {
        self.backend_sets.remove(id.0)
    }

    /// Every backend set with its id.
    pub fn backend_sets(&self) -> impl Iterator<Item = (BackendSetId, &BackendSet)> {
        self.backend_sets.iter().map(|(i, s)| (BackendSetId(i), s))
    }

    /// The prefixes of an address set (empty for an unknown id).
    pub fn set(&self, id: SetId) -> &PrefixSet {
        self.sets.get(id.0).map(|s| &s.prefixes).unwrap_or(&self.empty)
    }

    /// An address set, if the id is known.
    pub fn address_set(&self, id: SetId) -> Option<&AddressSet> {
        self.sets.get(id.0)
    }

    /// A backend set, if the id is known.
    pub fn backend_set(&self, id: BackendSetId) -> Option<&BackendSet> {
        self.backend_sets.get(id.0)
    }

    /// A port, if the id is known.
    pub fn port(&self, id: PortId) -> Option<&Port> {
        self.ports.get(id.0)
    }

    /// The node-wide layer of a kind.
    pub fn layer(&self, kind: LayerKind) -> Option<&Layer> {
        self.layers.iter().find(|l| l.kind == kind)
    }

    /// The node-wide layer of a kind, for the compiler to fill.
    pub fn layer_mut(&mut self, kind: LayerKind) -> &mut Layer {
        let pos = match self.layers.iter().position(|l| l.kind == kind) {
            Some(p) => p,
            None => {
                self.layers.push(Layer::new(kind));
                self.layers.len() - 1
            }
        };
        &mut self.layers[pos]
    }

    /// Whether `ip` meets an address condition.
    pub fn addr_matches(&self, m: &AddrMatch, ip: IpAddr) -> bool {
        match m {
            AddrMatch::In(s) => self.set(*s).contains(ip),
            AddrMatch::NotIn(s) => !self.set(*s).contains(ip),
            AddrMatch::Is(a) => *a == ip,
        }
    }

    /// The endpoint port that owns `ip`, if any.
    pub fn endpoint_for(&self, ip: IpAddr) -> Option<PortId> {
        self.endpoint_by_addr.get(&ip).copied()
    }

    /// Whether `ip` is one of the node's own addresses (loopback included).
    pub fn is_host_address(&self, ip: IpAddr) -> bool {
        ip.is_loopback() || self.host_addresses.contains(ip)
    }

    /// The port an address is behind, as a node sees it: the endpoint that owns it, else the host
    /// for the node's own addresses, else the uplink.
    pub fn port_of(&self, ip: IpAddr) -> PortId {
        if let Some(p) = self.endpoint_for(ip) {
            p
        } else if self.is_host_address(ip) {
            PortId::HOST
        } else {
            PortId::UPLINK
        }
    }

    /// The port a packet with source `src` enters on ([`SwitchPolicy::port_of`] its source).
    pub fn ingress_port_for(&self, src: IpAddr) -> PortId {
        self.port_of(src)
    }

    /// The address a masqueraded packet of `dst`'s family leaves with.
    pub fn snat_address(&self, dst: IpAddr) -> Option<IpAddr> {
        if dst.is_ipv4() {
            self.snat_v4
        } else {
            self.snat_v6
        }
    }
}
