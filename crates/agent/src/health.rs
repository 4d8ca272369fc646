//! Health as published by the sync loop and the source loop, for readers that must not wait for
//! them: healthz, livez and the health check node ports answer from the last published facts
//! (a `tokio::sync::watch` cell), never from the `Mutex<Core>` a long sync holds.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::http::StatusCode;
use flowgate_compiler::proxy::HealthCheck;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::sync::Core;

/// What health is judged on, as the agent's core last had it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HealthFacts {
    /// Every kind of object has been listed once.
    pub ready: bool,
    /// When a change was first queued and not yet programmed.
    pub queued_since: Option<SystemTime>,
    /// When the last successful sync finished.
    pub last_success: Option<SystemTime>,
    /// When the last sync was attempted.
    pub last_attempt: Option<SystemTime>,
    /// The agent's Node is being deleted.
    pub deleting: bool,
}

impl HealthFacts {
    /// The facts of `core` now.
    pub fn of(core: &Core) -> HealthFacts {
        let deleting = core
            .compiler
            .node()
            .and_then(|n| core.tracker.state().nodes.get(&n.name))
            .is_some_and(|n| n.metadata.deletion_timestamp.is_some());
        HealthFacts {
            ready: core.tracker.ready(),
            queued_since: core.status.queued_since,
            last_success: core.status.last_success,
            last_attempt: core.status.last_attempt,
            deleting,
        }
    }

    /// Whether every change has been programmed in time (kube-proxy's proxier health, which the
    /// health check node ports report as `serviceProxyHealthy`): nothing has waited longer than
    /// `timeout` for a sync; before the first lists, the agent's start counts as the change.
    pub fn proxy_healthy(&self, started: SystemTime, timeout: Duration, now: SystemTime) -> bool {
        let waiting_since = if self.ready { self.queued_since } else { Some(started) };
        !waiting_since.is_some_and(|t| late(t, timeout, now))
    }

    /// `/healthz` (`check_node`: readiness, kube-proxy's healthz: also unhealthy while the node is
    /// being deleted) or `/livez` (the process makes progress): the status and kube-proxy's body.
    pub fn judge(
        &self,
        started: SystemTime,
        timeout: Duration,
        check_node: bool,
        now: SystemTime,
    ) -> (StatusCode, Value) {
        let healthy = if check_node {
            self.proxy_healthy(started, timeout, now) && !self.deleting
        } else {
            // Liveness: with work waiting, the sync loop keeps trying (a failing sync retries
            // within its backoff, well inside the timeout). Before the first lists arrive the
            // sources are what retries; a restart would not bring them sooner.
            !(self.ready
                && self.queued_since.is_some_and(|t| late(t, timeout, now))
                && self.last_attempt.is_none_or(|t| late(t, timeout, now)))
        };
        let body = json!({
            "lastUpdated": self.last_success.map(rfc3339).unwrap_or_default(),
            "currentTime": rfc3339(now),
            "nodeEligible": !self.deleting,
        });
        (if healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, body)
    }
}

fn late(t: SystemTime, timeout: Duration, now: SystemTime) -> bool {
    now.duration_since(t).unwrap_or_default() > timeout
}

fn rfc3339(t: SystemTime) -> String {
    jiff::Timestamp::try_from(t).map(|t| t.to_string()).unwrap_or_default()
}

/// The health check node ports of the last compile and where to serve them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HealthChecks {
    /// One per Service that has one.
    pub checks: Vec<HealthCheck>,
    /// The addresses to serve them on (an unspecified address: every address of its family).
    pub addresses: Vec<std::net::IpAddr>,
}

/// What the core publishes; readers hold receivers.
#[derive(Debug)]
pub struct Published {
    /// Health facts, after every change of them.
    pub health: watch::Sender<HealthFacts>,
    /// Health check node ports, after every sync that changed them.
    pub health_checks: watch::Sender<Arc<HealthChecks>>,
}

impl Default for Published {
    fn default() -> Self {
        Published { health: watch::Sender::new(HealthFacts::default()), health_checks: watch::Sender::default() }
    }
}

impl Core {
    /// Publishes the health facts if they changed (cheap: called after every source event).
    pub fn publish_health(&self) {
        let facts = HealthFacts::of(self);
        self.published.health.send_if_modified(|old| {
            let changed = *old != facts;
            if changed {
                *old = facts;
            }
            changed
        });
    }

    /// Publishes the health facts and the compiler's health check node ports, if they changed
    /// (after a sync).
    pub fn publish(&self) {
        self.publish_health();
        let checks =
            HealthChecks { checks: self.compiler.health_checks(), addresses: self.compiler.health_check_addresses() };
        self.published.health_checks.send_if_modified(|old| {
            let changed = **old != checks;
            if changed {
                *old = Arc::new(checks);
            }
            changed
        });
    }
}
