//! The flowgate switch model: a match-action switch in the style of Microsoft's Virtual Filtering
//! Platform, with no I/O.
//!
//! - [`Port`]s: one per pod endpoint, plus the host (the node's own stack) and the uplink.
//! - [`Layer`]s in a fixed order ([`LayerKind`]), each holding [`Rule`]s (conditions on the
//!   5-tuple and the ingress port, an [`Action`]) in groups indexed by destination, so that the
//!   first packet of a connection costs hash lookups, not a scan of every Service.
//! - Stateful flows: [`Switch::process`] walks the layers once per connection and caches a header
//!   [`Transposition`] for both directions in the unified [`FlowTable`]; a policy change bumps the
//!   generation and stale entries are re-checked before use.
//! - [`trace()`]: the same walk, enumerating every backend the load balancer may choose, with the
//!   steps explained — what `flowgate trace` prints and what the tests use as their oracle.
//!
//! The policy is plain data ([`SwitchPolicy`]); `flowgate-compiler` produces it from Kubernetes
//! objects, and the kernel data plane is a compiled form of the same tables.

#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod addr;
pub mod engine;
pub mod flow;
pub mod frame;
pub mod layer;
pub mod packet;
pub mod policy;
pub mod port;
pub mod rule;
pub mod trace;
mod walk;

pub use addr::PrefixSet;
pub use engine::{Outcome, Switch};
pub use flow::{FlowEntry, FlowTable, Transposition};
pub use layer::{DestinationKey, GroupId, Layer, LayerKind, RuleGroup, RuleIndex};
pub use packet::{FlowKey, Proto};
pub use policy::{
    AddressSet, BackendSet, BackendSetId, PolicyDelta, RuleKey, RuleRef, Selection, SetId, Slots, SwitchPolicy,
};
pub use port::{Port, PortId, PortKind};
pub use rule::{Action, AddrMatch, Conditions, Dnat, DropReason, IngressKind, PortRange, Rule};
pub use trace::{trace, trace_choice, trace_from, Trace};
pub use walk::{icmp6_onlink, icmp_is_error, Deliver, Verdict};
