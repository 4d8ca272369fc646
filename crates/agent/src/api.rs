//! The agent's HTTP endpoints: the API on a root-only unix socket (health, status, compiled state,
//! trace against the live data plane), and kube-proxy-style healthz and metrics on TCP.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use flowgate_switch::{FlowKey, PortKind, SwitchPolicy};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::metrics::Metrics;
use crate::sync::Core;

/// What the handlers share.
#[derive(Clone, Debug)]
pub struct AppState {
    /// Tracker, compiler, data plane and status.
    pub core: Arc<Mutex<Core>>,
    /// The policy as the model data plane holds it.
    pub programmed: Arc<RwLock<SwitchPolicy>>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// How long a queued change may wait for a sync before healthz fails (kube-proxy: 2 × syncPeriod).
    pub health_timeout: Duration,
    /// When the agent started.
    pub started: SystemTime,
    /// Health as last published (read without the core's lock, which a sync holds).
    pub health: tokio::sync::watch::Receiver<crate::health::HealthFacts>,
    /// Limits of the TCP listeners.
    pub limits: crate::listeners::ListenerLimits,
    /// Descriptors all TCP listeners share.
    pub budget: crate::listeners::ConnectionBudget,
}

/// Errors starting the API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The socket could not be created.
    #[error("{path}: cannot {op}: {source}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// A trace request: probes already parsed into 5-tuples by the client.
#[derive(Debug, Deserialize, Serialize)]
pub struct TraceRequest {
    /// The probes.
    pub probes: Vec<Probe>,
}

/// One probe.
#[derive(Debug, Deserialize, Serialize)]
pub struct Probe {
    /// Echoed in the result.
    #[serde(default)]
    pub id: Value,
    /// The packet.
    pub key: FlowKey,
}

/// Builds the unix-socket API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/status", get(status))
        .route("/v1/state", get(compiled_state))
        .route("/v1/trace", post(trace))
        .with_state(state)
}

/// Serves the API on a unix socket only root can reach: its directory is created 0700 and the
/// socket is 0600. A stale socket file from an earlier run is replaced.
pub async fn serve_unix(path: &Path, app: Router) -> Result<tokio::task::JoinHandle<()>, ApiError> {
    let err = |op: &'static str| {
        let path = path.to_path_buf();
        move |source| ApiError::Socket { path, op, source }
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err("create its directory"))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err("restrict its directory"))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err("remove the stale socket")(e)),
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(err("bind"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err("restrict"))?;
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "API server stopped");
        }
    }))
}

/// Serves kube-proxy-style `/healthz` and `/livez` on TCP; returns the bound address.
pub async fn serve_healthz(addr: SocketAddr, state: AppState) -> std::io::Result<SocketAddr> {
    let app = Router::new().route("/healthz", get(healthz)).route("/livez", get(livez)).with_state(state.clone());
    serve_tcp(addr, app, &state, "healthz").await
}

/// Serves `/metrics` on TCP; returns the bound address.
pub async fn serve_metrics(addr: SocketAddr, state: AppState) -> std::io::Result<SocketAddr> {
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(s): State<AppState>| async move {
                // The core's lock is held for a whole sync: taken off the runtime's workers.
                let core = Arc::clone(&s.core);
                let counters =
                    off_runtime(move || core.lock().map(|c| c.dataplane.counters()).unwrap_or_default()).await?;
                let mut text = s.metrics.render();
                text.push_str(&crate::metrics::Metrics::render_dataplane(&counters));
                Ok::<_, StatusCode>(text)
            }),
        )
        .with_state(state.clone());
    serve_tcp(addr, app, &state, "metrics").await
}

/// Serves `app` on TCP under the listener limits and the shared descriptor budget.
async fn serve_tcp(addr: SocketAddr, app: Router, state: &AppState, what: &str) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    // Runs as long as the process: healthz and metrics are never closed.
    drop(crate::listeners::serve(listener, app, state.limits, &state.budget, format!("{what} {bound}")));
    Ok(bound)
}

/// Runs `f` on tokio's blocking pool. Handlers that take the core's lock (held for a whole sync) or
/// the programmed policy's (written by the sync's apply) do it there, not on the runtime's
/// workers, which keep serving healthz and the other requests meanwhile.
async fn off_runtime<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, StatusCode> {
    tokio::task::spawn_blocking(f).await.map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)
}

/// Health: `/healthz` as kube-proxy reports it (unhealthy when a change has waited longer than the
/// timeout for a sync — objects the data plane did not take are reported, not waited for — or
/// when the node is being deleted); `/livez` is whether the process makes progress. Judged on the
/// facts the core last published ([`crate::health`]), so a long sync does not hold the answer up.
fn health(s: &AppState, check_node: bool) -> (StatusCode, Value) {
    let facts = s.health.borrow().clone();
    facts.judge(s.started, s.health_timeout, check_node, SystemTime::now())
}

async fn healthz(State(s): State<AppState>) -> Response {
    let (code, body) = health(&s, true);
    (code, Json(body)).into_response()
}

async fn livez(State(s): State<AppState>) -> Response {
    let (code, body) = health(&s, false);
    (code, Json(body)).into_response()
}

async fn status(State(s): State<AppState>) -> Result<Json<Value>, StatusCode> {
    off_runtime(move || status_now(&s)).await.map(Json)
}

fn status_now(s: &AppState) -> Value {
    let core = s.core.lock().unwrap_or_else(|p| p.into_inner());
    let st = core.tracker.state();
    json!({
        "node": core.compiler.node().map(|n| n.name.clone()),
        "ready": core.tracker.ready(),
        "pending": core.tracker.pending() || !core.unapplied.is_empty(),
        "dataplane": core.dataplane.name(),
        "sync": core.status,
        "sourceError": core.tracker.last_error,
        "packets": core.dataplane.counters().into_iter().collect::<std::collections::BTreeMap<_, _>>(),
        // The connections each rule decided, busiest first (at most 100).
        "rules": core.compiler.policy().map(|p| core.dataplane.rule_hits(p)).unwrap_or_default().into_iter().take(100)
            .map(|(rule, connections)| json!({"rule": rule, "connections": connections})).collect::<Vec<_>>(),
        "objects": {
            "nodes": st.nodes.len(), "pods": st.pods.len(), "services": st.services.len(),
            "endpointSlices": st.endpoint_slices.len(), "networkPolicies": st.network_policies.len(),
            "serviceCIDRs": st.service_cidrs.len(),
        },
        "healthCheckNodePorts": core.compiler.health_checks().iter().map(|c| json!({
            "service": c.service.to_string(), "port": c.port,
            "localEndpoints": {"ipv4": c.local_endpoints_v4, "ipv6": c.local_endpoints_v6},
        })).collect::<Vec<_>>(),
    })
}

async fn compiled_state(State(s): State<AppState>) -> Result<Json<Value>, StatusCode> {
    off_runtime(move || compiled_state_now(&s)).await
}

fn compiled_state_now(s: &AppState) -> Json<Value> {
    let p = s.programmed.read().unwrap_or_else(|e| e.into_inner());
    let ports: Vec<Value> = p
        .ports()
        .map(|(id, port)| {
            let (kind, pod) = match &port.kind {
                PortKind::Endpoint { pod } => ("endpoint", Some(pod.clone())),
                PortKind::Host => ("host", None),
                PortKind::Uplink => ("uplink", None),
            };
            json!({"id": id.0, "kind": kind, "pod": pod, "addresses": port.addresses})
        })
        .collect();
    let backend_sets: Vec<Value> = p
        .backend_sets()
        .map(|(id, b)| json!({"id": id.0, "name": &*b.name, "backends": b.backends, "selection": format!("{:?}", b.selection)}))
        .collect();
    let layers: Vec<Value> = p
        .layers
        .iter()
        .map(|l| json!({"layer": l.kind.name(), "groups": l.groups.iter().map(|g| g.id.name()).collect::<Vec<_>>(), "rules": l.rule_count()}))
        .collect();
    Json(json!({"ports": ports, "backendSets": backend_sets, "layers": layers}))
}

async fn trace(State(s): State<AppState>, Json(req): Json<TraceRequest>) -> Result<Json<Value>, StatusCode> {
    off_runtime(move || trace_now(&s, req)).await
}

fn trace_now(s: &AppState, req: TraceRequest) -> Json<Value> {
    let p = s.programmed.read().unwrap_or_else(|e| e.into_inner());
    let results: Vec<Value> = req
        .probes
        .into_iter()
        .map(|probe| {
            let t = flowgate_switch::trace(&p, &probe.key);
            let mut v = serde_json::to_value(&t).unwrap_or(Value::Null);
            v["id"] = probe.id;
            v
        })
        .collect();
    Json(json!({"results": results}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> AppState {
        let model = flowgate_dataplane::ModelDataplane::new();
        let programmed = model.programmed();
        let core = Core {
            tracker: crate::tracker::Tracker::new(crate::sources::Kind::ALL, flowgate_cluster::ClusterState::default()),
            compiler: flowgate_compiler::Compiler::new(None),
            dataplane: Arc::new(model),
            unapplied: flowgate_switch::PolicyDelta::default(),
            status: crate::sync::SyncStatus::default(),
            published: crate::health::Published::default(),
        };
        let health = core.published.health.subscribe();
        AppState {
            core: Arc::new(Mutex::new(core)),
            programmed,
            metrics: Arc::new(Metrics::new().unwrap()),
            health_timeout: Duration::from_secs(60),
            started: SystemTime::now(),
            health,
            limits: crate::listeners::ListenerLimits::default(),
            budget: crate::listeners::ConnectionBudget::new(64),
        }
    }

    /// A sync holds the core's lock for as long as it compiles and applies: healthz and livez
    /// answer meanwhile (from the published facts), and on a current-thread runtime the status
    /// handler waits off the runtime, so a health request behind it is not held up either.
    #[tokio::test(flavor = "current_thread")]
    async fn health_answers_while_a_sync_holds_the_core() {
        let s = state();
        let core = Arc::clone(&s.core);
        let (locked_tx, locked_rx) = std::sync::mpsc::channel();
        let holder = std::thread::spawn(move || {
            let _c = core.lock().unwrap();
            locked_tx.send(()).unwrap();
            std::thread::sleep(Duration::from_millis(1500));
        });
        locked_rx.recv().unwrap();
        let started = std::time::Instant::now();
        let status = tokio::spawn(status(State(s.clone())));
        let r = tokio::time::timeout(Duration::from_millis(500), healthz(State(s.clone()))).await;
        assert!(r.is_ok(), "healthz waited for the sync");
        assert!(tokio::time::timeout(Duration::from_millis(500), livez(State(s.clone()))).await.is_ok());
        assert!(started.elapsed() < Duration::from_millis(1000));
        assert!(status.await.unwrap().is_ok(), "status answers once the sync is done");
        holder.join().unwrap();
    }
}
