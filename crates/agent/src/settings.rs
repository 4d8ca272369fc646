//! The agent's settings: where state comes from, where it serves, how often it syncs. Built from
//! the command line plus a configuration file holding a `KubeProxyConfiguration` (so a kube-proxy
//! user's configuration carries over) and/or a `FlowgateConfiguration`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flowgate_cluster::{FlowgateConfiguration, KubeProxyConfiguration, ManifestError};

use crate::sync::SyncTiming;

/// Default path of the API socket.
pub const DEFAULT_SOCKET: &str = "/run/flowgate/flowgate.sock";
/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/flowgate";
/// Default bpffs directory for pinned objects.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/flowgate";

/// Where cluster state comes from.
#[derive(Clone, Debug)]
pub enum SourceSettings {
    /// The Kubernetes API (in-cluster configuration, or this kubeconfig).
    Kubernetes {
        /// A kubeconfig file; `None` for in-cluster or the default kubeconfig.
        kubeconfig: Option<PathBuf>,
    },
    /// A directory of manifests, watched.
    Manifests(PathBuf),
}

/// Which data plane the agent programs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataplaneSettings {
    /// The in-process model only (what `trace --live` reads); nothing touches the kernel.
    Model,
    /// The kernel: eBPF programs and maps pinned under the bpffs directory (the model is kept in
    /// step for `trace --live`).
    Ebpf {
        /// The node's uplink interface, where NodePort, externalIP and LB traffic arrives.
        uplink: Option<String>,
    },
}

/// Everything the agent needs to start.
#[derive(Clone, Debug)]
pub struct AgentSettings {
    /// The node this agent programs (default: the configuration's hostnameOverride, else the only
    /// Node; see `flowgate_compiler::select_node`).
    pub node: Option<String>,
    /// The source.
    pub source: SourceSettings,
    /// kube-proxy's configuration (when the source does not provide one).
    pub kube_proxy: Option<KubeProxyConfiguration>,
    /// flowgate's configuration.
    pub flowgate: Option<FlowgateConfiguration>,
    /// The API socket.
    pub socket: PathBuf,
    /// State directory: the host networking service's store (`hostnet.redb`).
    pub state_dir: PathBuf,
    /// Whether to run the host networking service (networks, endpoints; what the CNI plugin asks
    /// for). It owns the `fgv*` interfaces of the agent's namespace.
    pub host_networking: bool,
    /// bpffs directory for pinned maps and links (kernel data plane, later).
    pub bpffs: PathBuf,
    /// healthz address (kube-proxy's `healthzBindAddress`), or none.
    pub healthz_bind: Option<SocketAddr>,
    /// metrics address (kube-proxy's `metricsBindAddress`), or none.
    pub metrics_bind: Option<SocketAddr>,
    /// Sync timing.
    pub timing: SyncTiming,
    /// The data plane.
    pub dataplane: DataplaneSettings,
    /// Limits of every TCP listener (healthz, metrics, health check node ports).
    pub listener_limits: crate::listeners::ListenerLimits,
}

impl AgentSettings {
    /// Settings for a manifest directory with defaults elsewhere.
    pub fn for_manifests(dir: impl Into<PathBuf>, socket: impl Into<PathBuf>) -> AgentSettings {
        AgentSettings {
            node: None,
            source: SourceSettings::Manifests(dir.into()),
            kube_proxy: None,
            flowgate: None,
            socket: socket.into(),
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            host_networking: false,
            bpffs: PathBuf::from(DEFAULT_BPFFS),
            healthz_bind: None,
            metrics_bind: None,
            timing: SyncTiming::default(),
            dataplane: DataplaneSettings::Model,
            listener_limits: crate::listeners::ListenerLimits::default(),
        }
    }

    /// Reads a configuration file (YAML or JSON, one or more documents) for its
    /// KubeProxyConfiguration and FlowgateConfiguration, and applies the kube-proxy settings the
    /// agent honours: hostnameOverride, healthzBindAddress, metricsBindAddress, syncPeriod and
    /// minSyncPeriod.
    pub fn read_config(&mut self, path: &Path) -> Result<(), ManifestError> {
        let loaded = flowgate_cluster::load_paths(&[path])?;
        for w in loaded.warnings {
            tracing::warn!("{w}");
        }
        if let Some(kp) = loaded.state.kube_proxy {
            // Its hostnameOverride names the node unless --node did: the compiler reads it there
            // (`flowgate_compiler::select_node`), like every other setting of it.
            self.kube_proxy = Some(kp);
        }
        if let Some(fg) = loaded.state.flowgate {
            self.flowgate = Some(fg);
        }
        let raw: Vec<serde_json::Value> = read_documents(path);
        for doc in raw.iter().filter(|d| d.get("kind").and_then(|k| k.as_str()) == Some("KubeProxyConfiguration")) {
            if let Some(a) = doc.get("healthzBindAddress").and_then(|v| v.as_str()) {
                self.healthz_bind = parse_bind(a, 10256);
            }
            if let Some(a) = doc.get("metricsBindAddress").and_then(|v| v.as_str()) {
                self.metrics_bind = parse_bind(a, 10249);
            }
            if let Some(d) = doc.get("syncPeriod").and_then(|v| v.as_str()).and_then(parse_duration) {
                self.timing.full_resync = d;
            }
            if let Some(d) = doc.get("minSyncPeriod").and_then(|v| v.as_str()).and_then(parse_duration) {
                self.timing.min_interval = d;
            }
        }
        Ok(())
    }
}

fn read_documents(path: &Path) -> Vec<serde_json::Value> {
    let Ok(text) = std::fs::read_to_string(path) else { return Vec::new() };
    serde_yaml::Deserializer::from_str(&text).filter_map(|d| serde::Deserialize::deserialize(d).ok()).collect()
}

/// Parses `HOST:PORT`, `:PORT` or a bare IP (with `default_port`); empty means disabled.
pub fn parse_bind(s: &str, default_port: u16) -> Option<SocketAddr> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Some(a);
    }
    if let Some(port) = s.strip_prefix(':') {
        return port.parse().ok().map(|p| SocketAddr::from(([0, 0, 0, 0], p)));
    }
    s.parse::<std::net::IpAddr>().ok().map(|ip| SocketAddr::new(ip, default_port))
}

/// Parses a Kubernetes duration such as `30s`, `1m`, `500ms`, `1h30m`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut num = String::new();
    let mut chars = s.trim().chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let mut unit = c.to_string();
        while let Some(&n) = chars.peek() {
            if n.is_ascii_alphabetic() {
                unit.push(n);
                chars.next();
            } else {
                break;
            }
        }
        let v: f64 = num.parse().ok()?;
        num.clear();
        let secs = match unit.as_str() {
            "ns" => v / 1e9,
            "us" | "µs" => v / 1e6,
            "ms" => v / 1e3,
            "s" => v,
            "m" => v * 60.0,
            "h" => v * 3600.0,
            _ => return None,
        };
        total += Duration::from_secs_f64(secs);
        any = true;
    }
    (any && num.is_empty()).then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_binds() {
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_bind("0.0.0.0:10256", 1), Some("0.0.0.0:10256".parse().unwrap()));
        assert_eq!(parse_bind("127.0.0.1", 10249), Some("127.0.0.1:10249".parse().unwrap()));
        assert_eq!(parse_bind(":9", 1), Some("0.0.0.0:9".parse().unwrap()));
        assert_eq!(parse_bind("", 1), None);
    }
}
