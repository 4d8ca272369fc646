//! The sync loop: one rate-limited, level-triggered sync that compiles what changed and applies the
//! difference to the data plane (kube-proxy's BoundedFrequencyRunner, as a pure scheduler plus a
//! driver). Bursts of changes coalesce; a failed apply keeps its delta and is retried with
//! exponential backoff; a periodic full resync reprograms everything.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use flowgate_compiler::{Changes, Compiler};
use flowgate_dataplane::Dataplane;
use flowgate_switch::PolicyDelta;

use crate::metrics::Metrics;
use crate::tracker::Tracker;

/// When syncs may and must run.
#[derive(Clone, Copy, Debug)]
pub struct SyncTiming {
    /// At most one sync per this interval (kube-proxy's `minSyncPeriod`).
    pub min_interval: Duration,
    /// A full resync at least this often (kube-proxy's `syncPeriod`).
    pub full_resync: Duration,
    /// First retry delay after a failed sync; doubles up to `max_backoff`.
    pub initial_backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
}

impl Default for SyncTiming {
    fn default() -> Self {
        SyncTiming {
            min_interval: Duration::from_secs(1),
            full_resync: Duration::from_secs(3600),
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// The scheduling decisions of the sync loop, with time passed in (the clock is injected, so tests
/// step through it without sleeping).
#[derive(Clone, Debug)]
pub struct Scheduler {
    timing: SyncTiming,
    last_sync: Option<Instant>,
    last_full: Option<Instant>,
    dirty: bool,
    retry_at: Option<Instant>,
    backoff: Duration,
}

/// What the loop should do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Run a sync; `full` when the periodic full resync is due.
    Sync {
        /// Reprogram everything.
        full: bool,
    },
    /// Nothing to do before this instant (or until a change arrives, when `None`).
    Wait(Option<Instant>),
}

impl Scheduler {
    /// A scheduler; the first sync may run at once.
    pub fn new(timing: SyncTiming) -> Scheduler {
        Scheduler {
            timing,
            last_sync: None,
            last_full: None,
            dirty: false,
            retry_at: None,
            backoff: timing.initial_backoff,
        }
    }

    /// Something changed.
    pub fn changed(&mut self) {
        self.dirty = true;
    }

    /// What to do at `now`.
    pub fn decide(&self, now: Instant) -> Decision {
        let full_due = self.last_full.map(|t| now >= t + self.timing.full_resync);
        if let Some(r) = self.retry_at {
            return if now >= r { Decision::Sync { full: full_due.unwrap_or(false) } } else { Decision::Wait(Some(r)) };
        }
        let earliest = self.last_sync.map(|t| t + self.timing.min_interval);
        if self.dirty || full_due == Some(true) {
            match earliest {
                Some(e) if now < e => Decision::Wait(Some(e)),
                _ => Decision::Sync { full: full_due.unwrap_or(false) },
            }
        } else {
            Decision::Wait(self.last_full.map(|t| t + self.timing.full_resync))
        }
    }

    /// A sync ran at `now`.
    pub fn synced(&mut self, now: Instant, ok: bool, full: bool) {
        self.last_sync = Some(now);
        if ok {
            self.dirty = false;
            self.retry_at = None;
            self.backoff = self.timing.initial_backoff;
            if full || self.last_full.is_none() {
                self.last_full = Some(now);
            }
        } else {
            self.retry_at = Some(now + self.backoff);
            self.backoff = (self.backoff * 2).min(self.timing.max_backoff);
        }
    }
}

/// Everything a sync touches, shared with the API (which reads the state and status).
pub struct Core {
    /// The change tracker.
    pub tracker: Tracker,
    /// The incremental compiler.
    pub compiler: Compiler,
    /// The data plane.
    pub dataplane: Arc<dyn Dataplane>,
    /// Changes compiled but not yet applied (a failed apply): applied with the next sync.
    pub unapplied: PolicyDelta,
    /// Status for health and the API.
    pub status: SyncStatus,
    /// Health and health check node ports, published for readers that must not take this core's
    /// lock (it is held for a whole sync).
    pub published: crate::health::Published,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core").field("dataplane", &self.dataplane.name()).field("status", &self.status).finish()
    }
}

/// What the last syncs did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SyncStatus {
    /// Successful syncs so far.
    pub syncs: u64,
    /// Failed syncs so far.
    pub failures: u64,
    /// The last error, until a sync succeeds.
    pub last_error: Option<String>,
    /// When the last successful sync finished.
    #[serde(skip)]
    pub last_success: Option<SystemTime>,
    /// When a change was first queued and not yet programmed.
    #[serde(skip)]
    pub queued_since: Option<SystemTime>,
    /// Entries the last successful sync wrote.
    pub last_entries: usize,
    /// When the last sync was attempted (liveness: the loop makes progress).
    #[serde(skip)]
    pub last_attempt: Option<SystemTime>,
    /// Objects the data plane did not take at the last apply, one line each, naming the object;
    /// retried with backoff while everything else stays programmed.
    pub degraded: Vec<String>,
    /// Claims the compiler left out: Services conflicting over one address and port (with the
    /// owner named), external addresses refused.
    pub conflicts: Vec<flowgate_compiler::proxy::Problem>,
    /// Pods' endpoints kept at start although the switch could not take them (binding, program,
    /// entries): reconciled again until it does.
    pub degraded_endpoints: Vec<String>,
}

impl Core {
    /// Runs one sync: takes the tracker's changes, compiles them, applies the delta, and publishes
    /// health and the health check node ports. Returns whether the data plane now holds
    /// everything compiled.
    pub fn sync(&mut self, full: bool, metrics: &Metrics) -> bool {
        let complete = self.sync_once(full, metrics);
        self.publish();
        complete
    }

    fn sync_once(&mut self, full: bool, metrics: &Metrics) -> bool {
        if !self.tracker.ready() {
            return true;
        }
        let started = Instant::now();
        self.status.last_attempt = Some(SystemTime::now());
        let (changes, triggers) = self.tracker.take_changes();
        let compiled = if full { self.compiler.compile_full(self.tracker.state()) } else { self.compile(&changes) };
        let delta = match compiled {
            Ok(d) => d,
            Err(e) => {
                // Nothing was applied; the compiler keeps its last good policy.
                self.status.failures += 1;
                self.status.last_error = Some(e.to_string());
                metrics.sync_failures.inc();
                tracing::warn!(error = %e, "cannot compile the cluster state");
                return false;
            }
        };
        self.unapplied.merge(delta);
        self.report_conflicts(metrics);
        let Some(desired) = self.compiler.policy() else {
            return false;
        };
        match self.dataplane.apply(desired, &self.unapplied) {
            Ok(stats) => {
                let complete = stats.failed.is_empty();
                self.report_degraded(&stats.problems, metrics);
                let elapsed = started.elapsed();
                metrics.sync_duration.observe(elapsed.as_secs_f64());
                metrics.sync_entries.set(stats.entries as i64);
                metrics.last_sync.set(unix_seconds(SystemTime::now()));
                let now = SystemTime::now();
                for t in triggers {
                    if let Ok(d) = now.duration_since(t) {
                        metrics.network_programming.observe(d.as_secs_f64());
                    }
                }
                // What the data plane could not take is retried (with backoff); the node counts
                // as programmed as far as it can be.
                self.unapplied = stats.failed;
                self.status.syncs += 1;
                self.status.last_error = None;
                self.status.last_success = Some(now);
                self.status.queued_since = None;
                self.status.last_entries = stats.entries;
                tracing::debug!(?elapsed, entries = stats.entries, full = stats.full, complete, "synced");
                complete
            }
            Err(e) => {
                self.status.failures += 1;
                self.status.last_error = Some(e.to_string());
                metrics.sync_failures.inc();
                tracing::warn!(error = %e, "data plane apply failed; will retry");
                false
            }
        }
    }

    /// Records the compiler's conflicting and refused claims, logging those that came or went.
    fn report_conflicts(&mut self, metrics: &Metrics) {
        let now = self.compiler.problems();
        if now == self.status.conflicts {
            return;
        }
        for p in now.iter().filter(|p| !self.status.conflicts.contains(p)) {
            tracing::warn!(object = %p.object, problem = %p.message, "not programmed");
        }
        for p in self.status.conflicts.iter().filter(|p| !now.contains(p)) {
            tracing::info!(object = %p.object, problem = %p.message, "resolved");
        }
        metrics.set_problems("conflict", now.iter().map(|p| (p.object.as_str(), p.message.as_str())));
        self.status.conflicts = now;
    }

    /// Records the objects the data plane did not take, logging those that came or went.
    fn report_degraded(&mut self, problems: &[String], metrics: &Metrics) {
        if problems == self.status.degraded.as_slice() {
            return;
        }
        for p in problems.iter().filter(|p| !self.status.degraded.contains(p)) {
            tracing::warn!(problem = %p, "the data plane did not take an object; retrying");
        }
        for p in self.status.degraded.iter().filter(|p| !problems.contains(p)) {
            tracing::info!(problem = %p, "programmed after all");
        }
        metrics.set_problems("dataplane", problems.iter().map(|p| (p.as_str(), "")));
        self.status.degraded = problems.to_vec();
    }

    fn compile(&mut self, changes: &Changes) -> Result<PolicyDelta, flowgate_compiler::CompileError> {
        if self.compiler.policy().is_none() {
            return self.compiler.compile_full(self.tracker.state());
        }
        self.compiler.update(self.tracker.state(), changes)
    }
}

/// Seconds since the Unix epoch.
pub fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Drives the scheduler with tokio's clock: waits for changes or deadlines and runs syncs.
pub async fn run(core: Arc<Mutex<Core>>, timing: SyncTiming, metrics: Arc<Metrics>, wake: Arc<tokio::sync::Notify>) {
    let mut sched = Scheduler::new(timing);
    loop {
        {
            let core = core.lock().unwrap_or_else(|p| p.into_inner());
            if core.tracker.ready() && (core.tracker.pending() || !core.unapplied.is_empty()) {
                sched.changed();
            }
        }
        match sched.decide(Instant::now()) {
            Decision::Sync { full } => {
                // Compiling and programming block (CPU, syscalls): not on the runtime's workers,
                // which serve the API meanwhile.
                let (core2, metrics2) = (Arc::clone(&core), Arc::clone(&metrics));
                let ok = tokio::task::spawn_blocking(move || {
                    let mut core = core2.lock().unwrap_or_else(|p| p.into_inner());
                    core.sync(full, &metrics2)
                })
                .await
                .unwrap_or(false);
                sched.synced(Instant::now(), ok, full);
            }
            Decision::Wait(until) => {
                let sleep = async {
                    match until {
                        Some(t) => tokio::time::sleep_until(t.into()).await,
                        None => std::future::pending::<()>().await,
                    }
                };
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = sleep => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing() -> SyncTiming {
        SyncTiming {
            min_interval: Duration::from_secs(1),
            full_resync: Duration::from_secs(30),
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(4),
        }
    }

    #[test]
    fn first_sync_runs_at_once_then_rate_limited() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(timing());
        s.changed();
        assert_eq!(s.decide(t0), Decision::Sync { full: false });
        s.synced(t0, true, false);
        assert_eq!(s.decide(t0), Decision::Wait(Some(t0 + Duration::from_secs(30))), "idle until the resync");
        // A burst of changes right after a sync waits for the minimum interval, then syncs once.
        s.changed();
        s.changed();
        assert_eq!(s.decide(t0 + Duration::from_millis(100)), Decision::Wait(Some(t0 + Duration::from_secs(1))));
        assert_eq!(s.decide(t0 + Duration::from_secs(1)), Decision::Sync { full: false });
        s.synced(t0 + Duration::from_secs(1), true, false);
        assert!(matches!(s.decide(t0 + Duration::from_secs(2)), Decision::Wait(_)));
    }

    #[test]
    fn periodic_full_resync() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(timing());
        s.changed();
        s.synced(t0, true, false);
        assert_eq!(s.decide(t0 + Duration::from_secs(30)), Decision::Sync { full: true });
        s.synced(t0 + Duration::from_secs(30), true, true);
        assert_eq!(s.decide(t0 + Duration::from_secs(31)), Decision::Wait(Some(t0 + Duration::from_secs(60))));
    }

    #[test]
    fn failures_back_off_exponentially_and_reset() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(timing());
        s.changed();
        let mut now = t0;
        let mut waits = Vec::new();
        for _ in 0..5 {
            s.synced(now, false, false);
            let Decision::Wait(Some(at)) = s.decide(now) else { panic!("must wait for the retry") };
            waits.push(at - now);
            now = at;
            assert_eq!(s.decide(now), Decision::Sync { full: false });
        }
        let ms: Vec<u128> = waits.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, vec![500, 1000, 2000, 4000, 4000]);
        s.synced(now, true, false);
        s.changed();
        s.synced(now + Duration::from_secs(1), false, false);
        assert_eq!(
            s.decide(now + Duration::from_secs(1)),
            Decision::Wait(Some(now + Duration::from_millis(1500))),
            "backoff reset"
        );
    }
}
