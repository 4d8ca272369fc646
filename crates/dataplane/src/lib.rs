//! Data plane backends behind one small trait. The agent computes the desired switch policy and
//! hands each backend the policy plus the [`PolicyDelta`] of what changed; the backend programs
//! exactly that. Backends are chosen in one place (the agent's settings); callers never branch on
//! which one is live.
//!
//! - [`ModelDataplane`]: the in-process switch model — the policy as the model engine walks it
//!   (what `flowgate trace --live` reads). Always available.
//! - `flowgate_ebpf::backend::EbpfDataplane`: the kernel (the maps of the programs under `bpf/`),
//!   written object by object, with what the kernel did not take handed back for a retry.
//! - [`Tee`]: the kernel first, then the model, kept in step.

#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod model;

pub use model::ModelDataplane;

use flowgate_switch::{PolicyDelta, SwitchPolicy};

/// Why a backend could not apply a change at all (it could not even start: a lock, a closed
/// handle). Nothing of the change is in force when this is returned; the caller retries.
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
#[derive(Clone, Debug, Default)]
pub struct ApplyStats {
    /// Entries written or removed (ports, sets, backend sets, rule lists).
    pub entries: usize,
    /// Whether everything was reprogrammed.
    pub full: bool,
    /// The parts of the change the backend could not program (the kernel refused a write, a map
    /// was full, a rule list too long). Each is left as the data plane holds it, recorded
    /// exactly, so applying them again converges; everything else of the change is in force.
    pub failed: PolicyDelta,
    /// What failed, one line per object, naming it (`lb rules for 10.0.0.1:80/TCP (svc ns/a ...)`).
    pub problems: Vec<String>,
}

/// A data plane: somewhere the switch policy is programmed.
pub trait Dataplane: Send + Sync {
    /// Short name for logs and metrics (`model`, `ebpf`).
    fn name(&self) -> &'static str;

    /// Programs the parts of `desired` that `delta` marks (everything when `delta.full`).
    ///
    /// Object by object: afterwards every object of the change is in force except those named in
    /// [`ApplyStats::failed`], which the backend left consistent with its record (so passing them
    /// to `apply` again converges); one object the data plane cannot take never holds back the
    /// others. An `Err` means nothing of the change was applied.
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
/// `trace --live` reads). If the primary fails nothing is applied to the mirror; objects the
/// primary could not program are reported by it (and retried), while the mirror shows the
/// desired policy.
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
