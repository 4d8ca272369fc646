//! Rules: conditions on the 5-tuple and the port a packet entered on, and the action taken when
//! they all hold.

use std::net::IpAddr;
use std::sync::Arc;

use serde::Serialize;

use crate::packet::{FlowKey, Proto};
use crate::policy::{BackendSetId, SetId, SwitchPolicy};
use crate::port::PortKind;

/// A condition on one address of the packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AddrMatch {
    /// The address is in the named address set.
    In(SetId),
    /// The address is not in the named address set.
    NotIn(SetId),
    /// The address equals this one.
    Is(IpAddr),
}

/// An inclusive range of L4 ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    /// First port of the range.
    pub first: u16,
    /// Last port of the range (inclusive).
    pub last: u16,
}

impl PortRange {
    /// A range holding exactly one port.
    pub fn single(port: u16) -> PortRange {
        PortRange { first: port, last: port }
    }

    /// Whether `port` is in the range.
    pub fn contains(&self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }
}

/// Which kind of port a packet entered the switch on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IngressKind {
    /// A pod's endpoint.
    Endpoint,
    /// The node's own network stack.
    Host,
    /// The node's interface to the network.
    Uplink,
}

impl From<&PortKind> for IngressKind {
    fn from(kind: &PortKind) -> IngressKind {
        match kind {
            PortKind::Endpoint { .. } => IngressKind::Endpoint,
            PortKind::Host => IngressKind::Host,
            PortKind::Uplink => IngressKind::Uplink,
        }
    }
}

/// Every condition a rule places on a packet; `None` means "any".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Conditions {
    /// Condition on the source address.
    pub src: Option<AddrMatch>,
    /// Condition on the destination address.
    pub dst: Option<AddrMatch>,
    /// The IP protocol.
    pub proto: Option<Proto>,
    /// Source ports.
    pub sport: Option<PortRange>,
    /// Destination ports.
    pub dport: Option<PortRange>,
    /// The kind of port the packet entered on.
    pub ingress: Option<IngressKind>,
}

impl Conditions {
    /// Conditions that every packet meets.
    pub fn any() -> Conditions {
        Conditions::default()
    }

    /// Only packets whose source matches.
    pub fn src(m: AddrMatch) -> Conditions {
        Conditions { src: Some(m), ..Conditions::default() }
    }

    /// Whether `key`, entering on a port of kind `ingress`, meets every condition.
    pub fn matches(&self, policy: &SwitchPolicy, key: &FlowKey, ingress: IngressKind) -> bool {
        if let Some(m) = &self.src {
            if !policy.addr_matches(m, key.src) {
                return false;
            }
        }
        if let Some(m) = &self.dst {
            if !policy.addr_matches(m, key.dst) {
                return false;
            }
        }
        if let Some(p) = self.proto {
            if p != key.proto {
                return false;
            }
        }
        if let Some(r) = self.sport {
            if !r.contains(key.sport) {
                return false;
            }
        }
        if let Some(r) = self.dport {
            if !r.contains(key.dport) {
                return false;
            }
        }
        if let Some(k) = self.ingress {
            if k != ingress {
                return false;
            }
        }
        true
    }
}

/// Why a packet was dropped or rejected. One list, mirrored by the kernel programs' counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
#[repr(u8)]
pub enum DropReason {
    /// The Service port has no usable endpoint anywhere.
    NoEndpoints = 1,
    /// The traffic policy is Local and this node has no usable endpoint.
    NoLocalEndpoints = 2,
    /// The source is outside the Service's loadBalancerSourceRanges.
    SourceRangeDenied = 3,
    /// The destination is a ClusterIP, but not on a port and protocol the Service defines.
    UndefinedServicePort = 4,
    /// The destination is in a service CIDR but no Service holds it.
    UnallocatedServiceIp = 5,
    /// An endpoint sent a packet with a source address that is not its own.
    Spoofed = 6,
    /// A policy rule denied the packet.
    PolicyDenied = 7,
    /// The packet's headers could not be read (truncated, or lengths that do not add up).
    Malformed = 8,
    /// No masquerade port was free for a new connection.
    NatExhausted = 9,
    /// A later fragment whose first fragment the switch has not seen.
    Fragment = 10,
}

impl DropReason {
    /// Every reason, in the order of their numbers (1, 2, ...); the kernel's counters and
    /// `enum fg_drop_reason` in `bpf/lib/maps.h` use the same numbers (a test reads the header).
    pub const ALL: [DropReason; 10] = [
        DropReason::NoEndpoints,
        DropReason::NoLocalEndpoints,
        DropReason::SourceRangeDenied,
        DropReason::UndefinedServicePort,
        DropReason::UnallocatedServiceIp,
        DropReason::Spoofed,
        DropReason::PolicyDenied,
        DropReason::Malformed,
        DropReason::NatExhausted,
        DropReason::Fragment,
    ];

    /// The reason's name, as trace's JSON and the counters (with `_` for `-`) spell it.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::NoEndpoints => "no-endpoints",
            DropReason::NoLocalEndpoints => "no-local-endpoints",
            DropReason::SourceRangeDenied => "source-range-denied",
            DropReason::UndefinedServicePort => "undefined-service-port",
            DropReason::UnallocatedServiceIp => "unallocated-service-ip",
            DropReason::Spoofed => "spoofed",
            DropReason::PolicyDenied => "policy-denied",
            DropReason::Malformed => "malformed",
            DropReason::NatExhausted => "nat-exhausted",
            DropReason::Fragment => "fragment",
        }
    }
}

/// Load balancing to a backend set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dnat {
    /// The backends to choose from.
    pub backends: BackendSetId,
    /// Rewrite the source to a node address whatever backend is chosen.
    pub masquerade: bool,
    /// Rewrite the source to a node address when the chosen backend is the source itself.
    pub hairpin: bool,
}

/// What a matching rule does with the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Let the packet through this layer unchanged.
    Allow,
    /// Discard the packet silently.
    Drop(DropReason),
    /// Discard the packet and answer with a TCP reset or an ICMP unreachable.
    Reject(DropReason),
    /// Rewrite the destination to a backend.
    Dnat(Dnat),
    /// Rewrite the source to a node address.
    Snat,
}

/// A rule: conditions, an action, and a name that `trace` shows.
#[derive(Clone, Debug)]
pub struct Rule {
    /// What the rule is for, in words (for example `svc ns1/web:http -> 3 endpoints`).
    pub name: Arc<str>,
    /// The conditions the packet must meet.
    pub conditions: Conditions,
    /// The action taken when it does.
    pub action: Action,
}

impl Rule {
    /// A rule.
    pub fn new(name: impl Into<Arc<str>>, conditions: Conditions, action: Action) -> Rule {
        Rule { name: name.into(), conditions, action }
    }
}
