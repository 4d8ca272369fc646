//! Data plane backends behind one small trait. The agent computes the desired switch policy and
//! hands each backend the policy plus the [`PolicyDelta`] of what changed; the backend programs
//! exactly that. Backends are chosen in one place (the agent's settings); callers never branch on
//! which one is live.
//!
//! - [`ModelDataplane`]: the in-process switch model — the policy as the model engine walks it
//!   (what `flowgate trace --live` reads). Always available.
//! - The eBPF backend (the kernel) arrives with the kernel data plane.

#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod model;

pub use model::ModelDataplane;

use flowgate_switch::{PolicyDelta, SwitchPolicy};

/// Why a backend could not apply a change. Nothing of the change is in force when this is
/// returned; the caller retries.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// The backend refused or failed the operation.
    #[error("{backend}: {op} failed: {message}")]
    Apply {
        /// The backend's name.
        backend: &'static str,
        /// What it was doing.
        op: String,
        /// What went wrong.
        message: String,
    },
}

/// What one apply did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// Entries written or removed (ports, sets, backend sets, rule lists).
    pub entries: usize,
    /// Whether everything was reprogrammed.
    pub full: bool,
}

/// A data plane: somewhere the switch policy is programmed.
pub trait Dataplane: Send + Sync {
    /// Short name for logs and metrics (`model`, `ebpf`).
    fn name(&self) -> &'static str;

    /// Programs the parts of `desired` that `delta` marks (everything when `delta.full`). Either the
    /// whole change is in force afterwards, or (on error) none of it.
    fn apply(&self, desired: &SwitchPolicy, delta: &PolicyDelta) -> Result<ApplyStats, DataplaneError>;

    /// Packet counters, by name (`allowed`, `dropped_<reason>`, `flow_hits`, `first_packets`,
    /// `delivered_direct`); empty for a data plane that forwards no packets (the model).
    fn counters(&self) -> Vec<(String, u64)> {
        Vec::new()
    }

    /// The connections each rule of `policy` decided (a connection's first packet), named as trace
    /// names rules, busiest first; empty for a data plane that forwards no packets.
    fn rule_hits(&self, policy: &SwitchPolicy) -> Vec<(String, u64)> {
        let _ = policy;
        Vec::new()
    }
}

/// Two data planes kept in step: `primary` (the kernel) first, then `mirror` (the model that
/// `trace --live` reads). If the primary fails nothing is applied to the mirror, so the mirror
/// never shows what the kernel does not hold.
pub struct Tee {
    /// Applied first.
    pub primary: std::sync::Arc<dyn Dataplane>,
    /// Applied after the primary succeeded.
    pub mirror: std::sync::Arc<dyn Dataplane>,
}

impl std::fmt::Debug for Tee {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tee({} + {})", self.primary.name(), self.mirror.name())
    }
}

impl Dataplane for Tee {
    fn name(&self) -> &'static str {
        self.primary.name()
    }

    fn apply(&self, desired: &SwitchPolicy, delta: &PolicyDelta) -> Result<ApplyStats, DataplaneError> {
        let stats = self.primary.apply(desired, delta)?;
        self.mirror.apply(desired, delta)?;
        Ok(stats)
    }

    fn counters(&self) -> Vec<(String, u64)> {
        self.primary.counters()
    }

    fn rule_hits(&self, policy: &SwitchPolicy) -> Vec<(String, u64)> {
        self.primary.rule_hits(policy)
    }
}
