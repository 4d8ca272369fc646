//! Ports: where packets enter and leave the switch.

use std::net::IpAddr;

/// Index of a port in a [`crate::SwitchPolicy`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortId(pub u32);

impl PortId {
    /// The node's own network stack.
    pub const HOST: PortId = PortId(0);
    /// The node's interface to the network.
    pub const UPLINK: PortId = PortId(1);
}

/// What a port connects to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortKind {
    /// A pod's endpoint: exactly one per pod.
    Endpoint {
        /// The pod, as `namespace/name`.
        pod: String,
    },
    /// The node's own network stack.
    Host,
    /// The node's interface to the network.
    Uplink,
}

/// A port of the switch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port {
    /// What the port connects to.
    pub kind: PortKind,
    /// The addresses that belong behind this port (an endpoint's IPs; empty for host and uplink,
    /// whose addresses are the policy's host addresses and "everything else").
    pub addresses: Vec<IpAddr>,
}

impl Port {
    /// Short label for trace steps: `endpoint ns/pod`, `host`, `uplink`.
    pub fn label(&self) -> String {
        match &self.kind {
            PortKind::Endpoint { pod } => format!("endpoint {pod}"),
            PortKind::Host => "host".to_string(),
            PortKind::Uplink => "uplink".to_string(),
        }
    }
}
