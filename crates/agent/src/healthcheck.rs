//! Health check node ports, served as kube-proxy's service health server serves them
//! (pkg/proxy/healthcheck): for each Service of type LoadBalancer with
//! `externalTrafficPolicy: Local`, an HTTP server on its `healthCheckNodePort` that a load
//! balancer asks whether to send this node traffic. Any request, on any path, is answered with
//! `{"service": {"namespace", "name"}, "localEndpoints": N, "serviceProxyHealthy": bool}`
//! (`Content-Type: application/json`, `X-Content-Type-Options: nosniff`): 200 when the node has
//! ready endpoints of the Service and its programming is not late, 503 otherwise.
//!
//! The Services, their counts and the addresses come from the compiler (published after every
//! sync, [`crate::health::HealthChecks`]); listeners are opened and closed as Services come and
//! go, each with the agent's listener limits ([`crate::listeners`]). One listener per address and
//! family the Service has; a listener reached over IPv4 counts the Service's IPv4 endpoints, as
//! kube-proxy's per-family proxiers do. A port that cannot be bound (taken, or an address the host
//! does not have) is logged and tried again every few seconds and after every sync.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use flowgate_cluster::ObjectKey;
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::health::{HealthChecks, HealthFacts};
use crate::listeners::{ConnectionBudget, ListenerLimits};

/// How often ports that could not be bound are tried again (besides after every sync).
const RETRY: Duration = Duration::from_secs(5);

/// What a health check server needs to answer.
#[derive(Clone, Debug)]
pub struct HealthCheckContext {
    /// The health check node ports, as the last sync published them.
    pub checks: watch::Receiver<Arc<HealthChecks>>,
    /// The agent's health facts.
    pub health: watch::Receiver<HealthFacts>,
    /// When the agent started.
    pub started: SystemTime,
    /// How long a change may wait for a sync before the agent is unhealthy.
    pub health_timeout: Duration,
    /// Limits of every listener.
    pub limits: ListenerLimits,
    /// The descriptors all TCP listeners share.
    pub budget: ConnectionBudget,
}

/// A listener's task, aborted (listener and connections closed) when dropped.
#[derive(Debug)]
struct Serving(JoinHandle<()>);

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The listeners of one Service's health check node port.
#[derive(Debug)]
struct Open {
    port: u16,
    addresses: Vec<SocketAddr>,
    _serving: Vec<Serving>,
}

/// Opens and closes the health check node ports as the compiler's list changes; runs until
/// aborted (which closes them all).
pub async fn run(ctx: HealthCheckContext) {
    let mut rx = ctx.checks.clone();
    let mut open: BTreeMap<ObjectKey, Open> = BTreeMap::new();
    // The last bind error per Service, logged once until it changes.
    let mut failed: BTreeMap<ObjectKey, String> = BTreeMap::new();
    loop {
        let desired = Arc::clone(&rx.borrow_and_update());
        reconcile(&ctx, &desired, &mut open, &mut failed);
        let retry = async {
            if failed.is_empty() {
                std::future::pending::<()>().await
            } else {
                tokio::time::sleep(RETRY).await
            }
        };
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            _ = retry => {}
        }
    }
}

/// The addresses one Service's port is served on: each address of a family the Service has.
fn addresses_of(desired: &HealthChecks, check: &flowgate_compiler::proxy::HealthCheck) -> Vec<SocketAddr> {
    desired
        .addresses
        .iter()
        .filter(|ip| check.local_endpoints(ip.is_ipv4()).is_some())
        .map(|ip| SocketAddr::new(*ip, check.port))
        .collect()
}

fn reconcile(
    ctx: &HealthCheckContext,
    desired: &HealthChecks,
    open: &mut BTreeMap<ObjectKey, Open>,
    failed: &mut BTreeMap<ObjectKey, String>,
) {
    let wanted: BTreeMap<&ObjectKey, Vec<SocketAddr>> =
        desired.checks.iter().map(|c| (&c.service, addresses_of(desired, c))).collect();
    // Close first: a port that moved from one Service to another is free for the new one.
    open.retain(|service, o| {
        let keep = wanted.get(service).is_some_and(|addrs| *addrs == o.addresses);
        if !keep {
            tracing::info!(service = %service, port = o.port, "closing health check node port");
        }
        keep
    });
    failed.retain(|service, _| wanted.contains_key(service));
    for check in &desired.checks {
        if open.contains_key(&check.service) {
            continue;
        }
        let addresses = wanted.get(&check.service).cloned().unwrap_or_default();
        match listen(ctx, &check.service, &addresses) {
            Ok(serving) => {
                tracing::info!(service = %check.service, port = check.port, ?addresses, "serving health check node port");
                failed.remove(&check.service);
                open.insert(check.service.clone(), Open { port: check.port, addresses, _serving: serving });
            }
            Err(e) => {
                let message = e.to_string();
                if failed.get(&check.service) != Some(&message) {
                    tracing::warn!(service = %check.service, port = check.port, error = %message, "cannot serve health check node port; will retry");
                    failed.insert(check.service.clone(), message);
                }
            }
        }
    }
}

/// Binds every address (all or none: what was bound is closed again on an error).
fn listen(ctx: &HealthCheckContext, service: &ObjectKey, addresses: &[SocketAddr]) -> std::io::Result<Vec<Serving>> {
    let mut serving = Vec::new();
    for addr in addresses {
        let listener =
            crate::listeners::bind(*addr).map_err(|e| std::io::Error::new(e.kind(), format!("{addr}: {e}")))?;
        let state = Answer {
            service: service.clone(),
            v4: addr.is_ipv4(),
            checks: ctx.checks.clone(),
            health: ctx.health.clone(),
            started: ctx.started,
            health_timeout: ctx.health_timeout,
        };
        let app = Router::new().fallback(answer).with_state(state);
        let what = format!("health check {service} {addr}");
        serving.push(Serving(crate::listeners::serve(listener, app, ctx.limits, &ctx.budget, what)));
    }
    Ok(serving)
}

/// One listener's view: its Service and family.
#[derive(Clone, Debug)]
struct Answer {
    service: ObjectKey,
    v4: bool,
    checks: watch::Receiver<Arc<HealthChecks>>,
    health: watch::Receiver<HealthFacts>,
    started: SystemTime,
    health_timeout: Duration,
}

async fn answer(State(a): State<Answer>) -> Response {
    let count = {
        let checks = a.checks.borrow();
        checks.checks.iter().find(|c| c.service == a.service).and_then(|c| c.local_endpoints(a.v4)).unwrap_or(0)
    };
    let healthy = a.health.borrow().proxy_healthy(a.started, a.health_timeout, SystemTime::now());
    let body = json!({
        "service": {"namespace": a.service.namespace, "name": a.service.name},
        "localEndpoints": count,
        "serviceProxyHealthy": healthy,
    });
    let code = if count > 0 && healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let mut response = (code, body.to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}
