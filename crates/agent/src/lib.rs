//! `flowgated`, the node agent: takes cluster state from the Kubernetes API or a manifest
//! directory ([`sources`]), records changes ([`tracker`]), and keeps the data plane in step with
//! one rate-limited, incremental sync ([`sync`]); serves its API on a root-only unix socket and
//! kube-proxy-style healthz and metrics ([`api`], [`metrics`]).

#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod api;
pub mod health;
pub mod healthcheck;
pub mod hostnet;
pub mod listeners;
pub mod metrics;
pub mod settings;
pub mod sources;
pub mod sync;
pub mod tracker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use flowgate_cluster::ClusterState;
use flowgate_compiler::Compiler;
use flowgate_dataplane::{Dataplane, ModelDataplane};
use flowgate_switch::PolicyDelta;
use tokio::sync::{mpsc, Notify};

pub use settings::{AgentSettings, DataplaneSettings, SourceSettings};

use crate::api::AppState;
use crate::metrics::Metrics;
use crate::sources::{kube::KubeSource, manifests::ManifestSource, Kind, Source, SourceEvent};
use crate::sync::{Core, SyncStatus};
use crate::tracker::Tracker;

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The API socket could not be served.
    #[error(transparent)]
    Api(#[from] api::ApiError),
    /// A TCP endpoint (healthz, metrics) could not be bound.
    #[error("cannot serve {what} on {addr}: {source}")]
    Bind {
        /// healthz or metrics.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The Kubernetes client could not be configured.
    #[error("kubernetes source: {0}")]
    Kube(String),
    /// The host networking service could not start.
    #[error("host networking: {0}")]
    HostNetworking(String),
    /// Metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The kernel data plane could not be set up.
    #[error("kernel data plane: {0}")]
    Ebpf(String),
}

/// A running agent, for callers that embed it (tests, benchmarks).
#[derive(Debug)]
pub struct RunningAgent {
    /// The API socket.
    pub socket: PathBuf,
    /// Where healthz is served, if enabled.
    pub healthz: Option<SocketAddr>,
    /// Where metrics are served, if enabled.
    pub metrics: Option<SocketAddr>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The loaded eBPF objects (their programs stay loaded while the agent runs; pinned links and
    /// maps outlive it), shared with the flow-table sweeper.
    _kernel: Arc<Mutex<Vec<flowgate_ebpf::Loaded>>>,
}

impl RunningAgent {
    /// Stops every task of the agent and removes its socket.
    pub fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Starts the agent's tasks on the current tokio runtime.
pub async fn start(settings: AgentSettings) -> Result<RunningAgent, AgentError> {
    let metrics = Arc::new(Metrics::new()?);
    let model = ModelDataplane::new();
    let programmed = model.programmed();
    let (dataplane, kernel, hooks): (Arc<dyn Dataplane>, Vec<flowgate_ebpf::Loaded>, _) = match &settings.dataplane {
        DataplaneSettings::Model => (Arc::new(model), Vec::new(), None),
        DataplaneSettings::Ebpf { uplink } => {
            // A load-time choice of the programs: read once, when the agent starts.
            let direct = settings.flowgate.as_ref().is_none_or(|f| !f.routed_delivery());
            let timeouts = settings.flowgate.as_ref().map(|f| f.flow_timeouts.resolved()).unwrap_or_default();
            let (ebpf, mut loaded) = kernel_dataplane(&settings.bpffs, uplink.as_deref(), direct, timeouts)?;
            let ebpf = Arc::new(ebpf);
            let endpoint = loaded.pop().ok_or_else(|| AgentError::Ebpf("the endpoint object is missing".into()))?;
            let hooks = Arc::new(hostnet::KernelHooks {
                dataplane: Arc::clone(&ebpf),
                endpoint: Mutex::new(endpoint),
                links_dir: settings.bpffs.join("links"),
            });
            let tee = flowgate_dataplane::Tee { primary: ebpf, mirror: Arc::new(model) };
            (Arc::new(tee), loaded, Some(hooks))
        }
    };
    let (source, needed): (Box<dyn Source>, Vec<Kind>) = match &settings.source {
        SourceSettings::Manifests(dir) => (Box::new(ManifestSource::new(dir.clone())), Kind::ALL.to_vec()),
        SourceSettings::Kubernetes { kubeconfig } => {
            let s = KubeSource::from_kubeconfig(kubeconfig.as_deref())
                .await
                .map_err(|e| AgentError::Kube(e.to_string()))?;
            (Box::new(s), Kind::ALL.to_vec())
        }
    };
    let base = ClusterState {
        kube_proxy: settings.kube_proxy.clone(),
        flowgate: settings.flowgate.clone(),
        ..ClusterState::default()
    };
    let core = Arc::new(Mutex::new(Core {
        tracker: Tracker::new(needed, base),
        compiler: Compiler::new(settings.node.clone()),
        dataplane,
        unapplied: PolicyDelta::default(),
        status: SyncStatus::default(),
        published: health::Published::default(),
    }));
    let (health_rx, checks_rx) = {
        let c = core.lock().unwrap_or_else(|p| p.into_inner());
        (c.published.health.subscribe(), c.published.health_checks.subscribe())
    };
    let state = AppState {
        core: Arc::clone(&core),
        programmed,
        metrics: Arc::clone(&metrics),
        health_timeout: settings.timing.full_resync.min(std::time::Duration::from_secs(30)) * 2,
        started: SystemTime::now(),
        health: health_rx.clone(),
        limits: settings.listener_limits,
        budget: listeners::ConnectionBudget::for_this_process(),
    };
    let mut tasks = Vec::new();
    let mut app = api::router(state.clone());
    let hns = if settings.host_networking {
        let hns = host_networking(&settings, Arc::clone(&core), Arc::clone(&metrics), hooks.clone()).await?;
        app = app.merge(hostnet::router(Arc::clone(&hns)));
        Some(hns)
    } else {
        None
    };
    tasks.push(api::serve_unix(&settings.socket, app).await?);
    let healthz = match settings.healthz_bind {
        Some(addr) => Some(api::serve_healthz(addr, state.clone()).await.map_err(|source| AgentError::Bind {
            what: "healthz",
            addr,
            source,
        })?),
        None => None,
    };
    let metrics_addr = match settings.metrics_bind {
        Some(addr) => Some(api::serve_metrics(addr, state.clone()).await.map_err(|source| AgentError::Bind {
            what: "metrics",
            addr,
            source,
        })?),
        None => None,
    };
    tasks.push(tokio::spawn(healthcheck::run(healthcheck::HealthCheckContext {
        checks: checks_rx,
        health: health_rx,
        started: state.started,
        health_timeout: state.health_timeout,
        limits: state.limits,
        budget: state.budget.clone(),
    })));

    let wake = Arc::new(Notify::new());
    let (tx, mut rx) = mpsc::channel::<SourceEvent>(1024);
    tracing::info!(source = source.name(), socket = %settings.socket.display(), "flowgated starting");
    tasks.push(tokio::spawn(source.run(tx)));
    {
        let core = Arc::clone(&core);
        let wake = Arc::clone(&wake);
        let metrics = Arc::clone(&metrics);
        tasks.push(tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                metrics.source_events.inc();
                if let SourceEvent::Error(e) = &event {
                    metrics.source_errors.inc();
                    tracing::warn!(error = %e, "source error");
                }
                let mut c = core.lock().unwrap_or_else(|p| p.into_inner());
                if c.tracker.handle(event) {
                    // Only a change the sync will take waits for it: an event that changed
                    // nothing (a relist, a rewritten file) must not leave healthz waiting for a
                    // sync that never comes (until the next full resync, an hour by default).
                    if c.status.queued_since.is_none() && (c.tracker.pending() || !c.unapplied.is_empty()) {
                        c.status.queued_since = Some(SystemTime::now());
                    }
                    wake.notify_one();
                }
                c.publish_health();
            }
        }));
    }
    tasks.push(tokio::spawn(sync::run(Arc::clone(&core), settings.timing, Arc::clone(&metrics), wake)));
    if let Some(hns) = hns {
        tasks.push(tokio::spawn(reconcile_when_compiled(hns, Arc::clone(&core))));
    }
    let kernel = Arc::new(Mutex::new(kernel));
    if !kernel.lock().map(|k| k.is_empty()).unwrap_or(true) {
        tasks.push(tokio::spawn(sweep_flows(Arc::clone(&kernel))));
    }
    Ok(RunningAgent { socket: settings.socket.clone(), healthz, metrics: metrics_addr, tasks, _kernel: kernel })
}

/// Opens the host networking service's store and its netlink connection (in the agent's
/// namespace).
async fn host_networking(
    settings: &AgentSettings,
    core: Arc<Mutex<Core>>,
    metrics: Arc<Metrics>,
    kernel: Option<Arc<hostnet::KernelHooks>>,
) -> Result<Arc<flowgate_hostnet::HostNetworking>, AgentError> {
    let e = |err: &dyn std::fmt::Display| AgentError::HostNetworking(err.to_string());
    std::fs::create_dir_all(&settings.state_dir).map_err(|err| e(&err))?;
    let store =
        flowgate_hostnet::store::Store::open(&settings.state_dir.join("hostnet.redb")).map_err(|err| e(&err))?;
    let netlink = flowgate_hostnet::links::Netlink::connect().map_err(|err| e(&err))?;
    // Recorded load balancers are in the state before the first compile, so that a restarted
    // agent's first apply keeps their rules in the kernel.
    {
        let mut c = core.lock().unwrap_or_else(|p| p.into_inner());
        for lb in store.load_balancers().map_err(|err| e(&err))? {
            c.tracker.set_local_load_balancer(&lb.name, Some(hostnet::local_load_balancer(&lb)));
        }
    }
    // So are the recorded endpoints: their ports, host ports and outbound NAT stay programmed,
    // under the port numbers the kernel's interface bindings still name.
    let endpoints: Vec<flowgate_hostnet::Endpoint> = store
        .endpoints()
        .map_err(|err| e(&err))?
        .into_iter()
        .filter(|ep| ep.state == flowgate_hostnet::EndpointState::Ready)
        .collect();
    if let Some(k) = &kernel {
        let mut hints = Vec::new();
        for ep in &endpoints {
            if let Ok(Some(ifindex)) = netlink.host_ifindex(&ep.host_interface).await {
                if let Some(port) = k.dataplane.bound_port(ifindex) {
                    hints.push((hostnet::endpoint_key(ep), port));
                }
            }
        }
        core.lock().unwrap_or_else(|p| p.into_inner()).compiler.prefer_ports(hints);
    }
    let switch = Arc::new(hostnet::AgentSwitch::new(core, metrics, kernel));
    for ep in &endpoints {
        switch.preload(ep);
    }
    Ok(Arc::new(flowgate_hostnet::HostNetworking::new(store, netlink, switch)))
}

/// Reconciles the recorded endpoints with the kernel once the switch is compiled (their ports
/// must exist before their interfaces are bound), retrying while it fails.
async fn reconcile_when_compiled(hns: Arc<flowgate_hostnet::HostNetworking>, core: Arc<Mutex<Core>>) {
    // The endpoints' bindings and programs are restored as soon as the first compile is done.
    // Endpoints the switch could not take are kept as they are and reconciled again (with
    // backoff) until it does: a running pod is never torn down for it.
    let mut delay = std::time::Duration::from_millis(2);
    loop {
        let compiled = core.lock().map(|c| c.compiler.policy().is_some()).unwrap_or(false);
        if compiled {
            match hns.reconcile().await {
                Ok(r) => {
                    tracing::info!(
                        kept = r.kept.len(),
                        repaired = r.repaired.len(),
                        removed = r.removed.len(),
                        degraded = r.degraded.len(),
                        stray_interfaces = r.stray_interfaces.len(),
                        stray_attachments = r.stray_attachments.len(),
                        orphan_addresses = r.orphan_addresses,
                        "host networking reconciled"
                    );
                    let done = r.degraded.is_empty();
                    if let Ok(mut c) = core.lock() {
                        c.status.degraded_endpoints = r.degraded;
                    }
                    if done {
                        return;
                    }
                    delay = delay.max(std::time::Duration::from_millis(500));
                }
                Err(err) => tracing::warn!(error = %err, "host networking reconcile failed; will retry"),
            }
            delay = (delay * 2).min(std::time::Duration::from_secs(5));
        }
        tokio::time::sleep(delay).await;
    }
}

/// How often the kernel flow tables are swept: connections past their idle timeout are removed
/// (their masquerade ports freed) and the tables' entries counted for `flowgate status`. A
/// connection that has just expired is also reclaimed at once by a new one that needs its port.
const FLOW_SWEEP_PERIOD: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs the sweep program (`fg_flow_gc`, bpf/lib/flow.h) of the uplink object every
/// [`FLOW_SWEEP_PERIOD`]; it walks both flow tables in the kernel (milliseconds for 100,000s of
/// entries).
async fn sweep_flows(kernel: Arc<Mutex<Vec<flowgate_ebpf::Loaded>>>) {
    let frame = [0u8; 64];
    let mut failing = false;
    loop {
        tokio::time::sleep(FLOW_SWEEP_PERIOD).await;
        let kernel = Arc::clone(&kernel);
        let run = tokio::task::spawn_blocking(move || -> Result<(), String> {
            let mut k = kernel.lock().map_err(|_| "poisoned".to_string())?;
            let uplink = k.first_mut().ok_or("no uplink object")?;
            let prog = uplink.classifier("fg_flow_gc").map_err(|e| e.to_string())?;
            flowgate_ebpf::test_run(prog, &frame).map(|_| ()).map_err(|e| e.to_string())
        })
        .await;
        match run {
            Ok(Ok(())) => failing = false,
            Ok(Err(e)) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "flow table sweep failed; will retry");
            }
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "flow table sweep failed; will retry");
            }
            _ => {}
        }
    }
}

/// Loads the eBPF programs with their maps pinned under `bpffs/maps` (adopting maps a previous
/// agent left, so established flows survive a restart), and attaches the uplink programs (ingress:
/// traffic arriving; egress: the node's own traffic to Services) with links pinned under
/// `bpffs/links` (replacing the previous agent's programs atomically). `direct`: allowed packets
/// to the node's pods are handed to them by the programs (bpf/lib/deliver.h), else routed.
fn kernel_dataplane(
    bpffs: &std::path::Path,
    uplink: Option<&str>,
    direct: bool,
    timeouts: flowgate_cluster::ResolvedFlowTimeouts,
) -> Result<(flowgate_ebpf::backend::EbpfDataplane, Vec<flowgate_ebpf::Loaded>), AgentError> {
    // The whole error chain: the verifier's log is in a source, and it is what a person needs.
    let e = |what: &str, err: &dyn std::error::Error| {
        let mut msg = format!("{what}: {err}");
        let mut cause = err.source();
        while let Some(c) = cause {
            msg.push_str(&format!(": {c}"));
            cause = c.source();
        }
        AgentError::Ebpf(msg)
    };
    let root = bpffs.parent().unwrap_or(bpffs);
    flowgate_ebpf::bpffs::ensure_bpffs(root).map_err(|err| e("bpffs", &err))?;
    let maps_dir = bpffs.join("maps");
    let links_dir = bpffs.join("links");
    for d in [&maps_dir, &links_dir] {
        std::fs::create_dir_all(d).map_err(|err| e(&format!("create {}", d.display()), &err))?;
    }
    // Maps another version left are checked first: adopted, replaced, or (newer) refused.
    let objects = [flowgate_ebpf::objects::UPLINK, flowgate_ebpf::objects::ENDPOINT];
    let checked = flowgate_ebpf::pinned::check(bpffs, &objects, &[]).map_err(|err| e("pinned state", &err))?;
    for (map, why) in &checked.replaced {
        tracing::warn!(map, why, "pinned map replaced (its entries are not carried over)");
    }
    tracing::info!(
        version = ?checked.found,
        adopted = checked.adopted.len(),
        replaced = checked.replaced.len(),
        "pinned state checked"
    );
    // (Validated to 1 s .. 30 days: nanoseconds fit.)
    let ns = |d: std::time::Duration| flowgate_ebpf::GlobalValue::U64(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let mut loaded = flowgate_ebpf::load_all(
        &objects,
        Some(&maps_dir),
        &[
            ("FG_DIRECT_DELIVERY", flowgate_ebpf::GlobalValue::U8(u8::from(direct))),
            ("FG_TCP_TIMEOUT_NS", ns(timeouts.tcp_established)),
            ("FG_TCP_EMBRYONIC_TIMEOUT_NS", ns(timeouts.tcp_embryonic)),
            ("FG_CLOSED_TIMEOUT_NS", ns(timeouts.tcp_closing)),
            ("FG_UDP_TIMEOUT_NS", ns(timeouts.udp)),
            ("FG_UDP_EMBRYONIC_TIMEOUT_NS", ns(timeouts.udp_embryonic)),
        ],
    )
    .map_err(|err| e("load", &err))?;
    tracing::info!(local_delivery = if direct { "Direct" } else { "Routed" }, ?timeouts, "eBPF programs loaded");
    let maps = flowgate_ebpf::backend::KernelMaps::take(&mut loaded[0].ebpf).map_err(|err| e("maps", &err))?;
    let dataplane = flowgate_ebpf::backend::EbpfDataplane::adopt(maps);
    if let Some(iface) = uplink {
        // The switch masquerades arriving traffic before routing: the node must accept packets
        // whose source is one of its own addresses on the uplink.
        let key = std::path::Path::new("/proc/sys/net/ipv4/conf").join(iface).join("accept_local");
        std::fs::write(&key, "1").map_err(|err| e(&format!("write {}", key.display()), &err))?;
        // The uplink's ingress (traffic arriving) and egress (the node's own traffic to Services),
        // and lo's egress (the node's own traffic to its own NodePorts and other local addresses).
        for (program, dev, direction, hook) in [
            ("fg_uplink_ingress", iface, flowgate_ebpf::Direction::Ingress, "ingress"),
            ("fg_uplink_egress", iface, flowgate_ebpf::Direction::Egress, "egress"),
            ("fg_uplink_egress", "lo", flowgate_ebpf::Direction::Egress, "egress"),
        ] {
            let pin = links_dir.join(format!("uplink-{dev}-{hook}"));
            let how = loaded[0]
                .attach_pinned(program, dev, direction, &pin)
                .map_err(|err| e(&format!("attach {program} to {dev}"), &err))?;
            tracing::info!(interface = dev, hook, ?how, "uplink program attached");
        }
    }
    Ok((dataplane, loaded))
}

/// Runs the agent until SIGINT or SIGTERM.
pub async fn run(settings: AgentSettings) -> Result<(), AgentError> {
    let agent = start(settings).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
    }
    tracing::info!("flowgated stopping");
    agent.stop();
    Ok(())
}
