//! `flowgated`, the node agent: watches the Kubernetes API (or a manifest directory) and keeps the
//! node's switch in step. See `flowgated --help`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use flowgate_agent::settings::{parse_bind, parse_duration, DEFAULT_BPFFS, DEFAULT_SOCKET, DEFAULT_STATE_DIR};
use flowgate_agent::{AgentSettings, DataplaneSettings, SourceSettings};

#[derive(Parser, Debug)]
#[command(name = "flowgated", version, about = "flowgate node agent: cluster state in, switch policy out")]
struct Args {
    /// Configuration file: a KubeProxyConfiguration and/or a FlowgateConfiguration (YAML or JSON).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Read cluster state from this directory of manifests (watched) instead of the Kubernetes API.
    #[arg(long, conflicts_with = "kubeconfig")]
    manifests: Option<PathBuf>,
    /// kubeconfig for the Kubernetes API (default: in-cluster, else $KUBECONFIG / ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The node this agent programs (default: $NODE_NAME, else the configuration's
    /// hostnameOverride, else the only Node).
    #[arg(long, env = "NODE_NAME")]
    node: Option<String>,
    /// The API socket (root-only).
    #[arg(long, default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// State directory.
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// bpffs directory for pinned kernel objects.
    #[arg(long, default_value = DEFAULT_BPFFS)]
    bpffs: PathBuf,
    /// healthz address ("" disables); overrides the configuration's healthzBindAddress.
    #[arg(long)]
    healthz_bind_address: Option<String>,
    /// metrics address ("" disables); overrides the configuration's metricsBindAddress.
    #[arg(long)]
    metrics_bind_address: Option<String>,
    /// Minimum interval between syncs (e.g. 1s, 100ms).
    #[arg(long)]
    min_sync_period: Option<String>,
    /// Full resync interval (e.g. 1h).
    #[arg(long)]
    sync_period: Option<String>,
    /// Data plane: `model` (in-process only, nothing touches the kernel) or `ebpf` (the kernel
    /// programs, maps and links pinned under --bpffs).
    #[arg(long, default_value = "model", value_parser = ["model", "ebpf"])]
    dataplane: String,
    /// The node's uplink interface (with --dataplane ebpf): NodePort, externalIP and LB traffic.
    #[arg(long)]
    uplink: Option<String>,
    /// Log format.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    if args.log_format == "json" {
        tracing_subscriber::fmt().json().with_env_filter(filter).init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let source = match &args.manifests {
        Some(dir) => SourceSettings::Manifests(dir.clone()),
        None => SourceSettings::Kubernetes { kubeconfig: args.kubeconfig.clone() },
    };
    let mut settings = AgentSettings::for_manifests(PathBuf::new(), args.socket.clone());
    settings.source = source;
    settings.state_dir = args.state_dir.clone();
    settings.host_networking = true;
    settings.bpffs = args.bpffs.clone();
    settings.dataplane = match args.dataplane.as_str() {
        "ebpf" => DataplaneSettings::Ebpf { uplink: args.uplink.clone() },
        _ => DataplaneSettings::Model,
    };
    settings.healthz_bind = Some(SocketAddr::from(([0, 0, 0, 0], 10256)));
    settings.metrics_bind = Some(SocketAddr::from(([127, 0, 0, 1], 10249)));
    if let Some(path) = &args.config {
        if let Err(e) = settings.read_config(path) {
            eprintln!("flowgated: --config: {e}");
            return ExitCode::from(2);
        }
    }
    if args.node.is_some() {
        settings.node = args.node.clone();
    }
    for (flag, value, default_port, slot) in [
        ("--healthz-bind-address", &args.healthz_bind_address, 10256, &mut settings.healthz_bind),
        ("--metrics-bind-address", &args.metrics_bind_address, 10249, &mut settings.metrics_bind),
    ] {
        if let Some(v) = value {
            *slot = parse_bind(v, default_port);
            if slot.is_none() && !v.trim().is_empty() {
                eprintln!("flowgated: {flag}: {v:?} is not an address (HOST:PORT, :PORT or IP)");
                return ExitCode::from(2);
            }
        }
    }
    for (flag, value, slot) in [
        ("--min-sync-period", &args.min_sync_period, &mut settings.timing.min_interval),
        ("--sync-period", &args.sync_period, &mut settings.timing.full_resync),
    ] {
        if let Some(v) = value {
            match parse_duration(v) {
                Some(d) => *slot = d,
                None => {
                    eprintln!("flowgated: {flag}: {v:?} is not a duration (e.g. 1s, 500ms, 1h)");
                    return ExitCode::from(2);
                }
            }
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("flowgated: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(flowgate_agent::run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flowgated: {e}");
            ExitCode::from(1)
        }
    }
}
