//! The switch policy: everything a compiler produces and a data plane programs — ports, address
//! sets, backend sets and layers. Plain data; the engine walks it, the kernel backend compiles it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::addr::PrefixSet;
use crate::layer::{Layer, LayerKind};
use crate::port::{Port, PortId, PortKind};
use crate::rule::AddrMatch;

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

/// The whole compiled policy of one node's switch.
#[derive(Clone, Debug)]
pub struct SwitchPolicy {
    /// Ports by [`PortId`]: host at 0, uplink at 1, endpoints after.
    pub ports: Vec<Port>,
    /// The node's own addresses (packets to them go to the host port; from them, come from it).
    pub host_addresses: PrefixSet,
    /// Addresses used as the new source when a packet is masqueraded, one per family.
    pub snat_v4: Option<IpAddr>,
    /// IPv6 counterpart of `snat_v4`.
    pub snat_v6: Option<IpAddr>,
    /// Address sets, by [`SetId`].
    pub sets: Vec<AddressSet>,
    /// Backend sets, by [`BackendSetId`].
    pub backend_sets: Vec<BackendSet>,
    /// Node-wide layers, in walking order (load balancing, service filter, outbound NAT).
    pub layers: Vec<Layer>,
    /// Per-endpoint ACL layers, keyed by port: (egress, ingress).
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
        SwitchPolicy {
            ports: vec![
                Port { kind: PortKind::Host, addresses: Vec::new() },
                Port { kind: PortKind::Uplink, addresses: Vec::new() },
            ],
            host_addresses: PrefixSet::new(),
            snat_v4: None,
            snat_v6: None,
            sets: Vec::new(),
            backend_sets: Vec::new(),
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
        let id = PortId(self.ports.len() as u32);
        for a in &addresses {
            self.endpoint_by_addr.insert(*a, id);
        }
        self.ports.push(Port { kind: PortKind::Endpoint { pod: pod.into() }, addresses });
        id
    }

    /// Adds an address set and returns its id.
    pub fn add_set(&mut self, name: impl Into<String>, prefixes: PrefixSet) -> SetId {
        self.sets.push(AddressSet { name: name.into(), prefixes });
        SetId(self.sets.len() as u32 - 1)
    }

    /// Adds a backend set and returns its id.
    pub fn add_backend_set(&mut self, set: BackendSet) -> BackendSetId {
        self.backend_sets.push(set);
        BackendSetId(self.backend_sets.len() as u32 - 1)
    }

    /// The prefixes of an address set (empty for an unknown id).
    pub fn set(&self, id: SetId) -> &PrefixSet {
        self.sets.get(id.0 as usize).map(|s| &s.prefixes).unwrap_or(&self.empty)
    }

    /// A backend set, if the id is known.
    pub fn backend_set(&self, id: crate::policy::BackendSetId) -> Option<&BackendSet> {
        self.backend_sets.get(id.0 as usize)
    }

    /// A port, if the id is known.
    pub fn port(&self, id: PortId) -> Option<&Port> {
        self.ports.get(id.0 as usize)
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

    /// The port a packet with source `src` enters on, as a node sees it: the endpoint that owns the
    /// address, else the host for the node's own addresses, else the uplink.
    pub fn ingress_port_for(&self, src: IpAddr) -> PortId {
        if let Some(p) = self.endpoint_for(src) {
            p
        } else if self.is_host_address(src) {
            PortId::HOST
        } else {
            PortId::UPLINK
        }
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
