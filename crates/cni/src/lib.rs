//! The flowgate CNI plugin's logic, apart from process I/O: reading the runtime's environment and
//! network configuration, checking them, turning them into the host networking service's requests
//! and its answers into CNI results. The plugin is thin: the agent makes the endpoint.
//!
//! Spec 1.1 (ADD, DEL, CHECK, GC, STATUS, VERSION); a configuration that says `cniVersion` 1.0.0
//! gets 1.0.0 results (libcni in Debian, podman and containerd stop there).

#![forbid(unsafe_code)]

pub mod plugin;

use std::net::IpAddr;

use flowgate_hostnet::{Dns, Endpoint, EndpointRequest, FieldError, IpRange, Network, PodRef, Policy, Protocol};
use ipnet::IpNet;
use serde::Deserialize;
use serde_json::{json, Value};

/// The versions this plugin speaks.
pub const SUPPORTED_VERSIONS: [&str; 2] = ["1.0.0", "1.1.0"];
/// The version it prefers.
pub const LATEST: &str = "1.1.0";
/// Where the agent listens unless the configuration or `FLOWGATE_SOCKET` says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/flowgate/flowgate.sock";

/// CNI error codes (spec 1.1, "Error").
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables.
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure.
    pub const IO: u32 = 5;
    /// Failed to decode content.
    pub const DECODE: u32 = 6;
    /// Invalid network config.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later.
    pub const TRY_AGAIN: u32 = 11;
    /// The plugin is not available (STATUS).
    pub const NOT_AVAILABLE: u32 = 50;
    /// The endpoint differs from what CHECK expects (plugin-specific).
    pub const CHECK_FAILED: u32 = 111;
}

/// A CNI error object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CniError {
    /// The code.
    pub code: u32,
    /// A short message.
    pub msg: String,
    /// What a person can do, or more detail.
    pub details: String,
}

impl CniError {
    /// An error.
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError { code, msg: msg.into(), details: details.into() }
    }

    /// The JSON the runtime reads on stdout.
    pub fn to_json(&self, version: &str) -> Value {
        json!({"cniVersion": version, "code": self.code, "msg": self.msg, "details": self.details})
    }
}

/// The command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// ADD.
    Add,
    /// DEL.
    Del,
    /// CHECK.
    Check,
    /// GC.
    Gc,
    /// STATUS.
    Status,
    /// VERSION.
    Version,
}

/// The runtime's environment (`CNI_*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Env {
    /// CNI_COMMAND.
    pub command: Command,
    /// CNI_CONTAINERID (ADD, DEL, CHECK).
    pub container_id: String,
    /// CNI_NETNS (ADD, CHECK; optional for DEL).
    pub netns: String,
    /// CNI_IFNAME (ADD, DEL, CHECK).
    pub ifname: String,
    /// The pod from CNI_ARGS (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`).
    pub pod: Option<PodRef>,
}

impl Env {
    /// Reads and checks the environment through `get`; code 4 names the variable at fault.
    pub fn read(get: impl Fn(&str) -> Option<String>) -> Result<Env, CniError> {
        let bad = |var: &str, why: &str| {
            CniError::new(code::INVALID_ENV, format!("{var} {why}"), "the container runtime sets CNI_* for the plugin")
        };
        let command = match get("CNI_COMMAND").as_deref() {
            Some("ADD") => Command::Add,
            Some("DEL") => Command::Del,
            Some("CHECK") => Command::Check,
            Some("GC") => Command::Gc,
            Some("STATUS") => Command::Status,
            Some("VERSION") => Command::Version,
            Some(other) => {
                return Err(bad("CNI_COMMAND", &format!("is {other:?}, not ADD, DEL, CHECK, GC, STATUS or VERSION")))
            }
            None => return Err(bad("CNI_COMMAND", "is not set")),
        };
        let per_container = matches!(command, Command::Add | Command::Del | Command::Check);
        let var = |name: &str, needed: bool| -> Result<String, CniError> {
            match get(name).filter(|v| !v.is_empty()) {
                Some(v) => Ok(v),
                None if needed => Err(bad(name, "is not set")),
                None => Ok(String::new()),
            }
        };
        let container_id = var("CNI_CONTAINERID", per_container)?;
        if per_container && !container_id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(bad("CNI_CONTAINERID", "may hold only letters, digits, '-', '_' and '.'"));
        }
        let netns = var("CNI_NETNS", matches!(command, Command::Add | Command::Check))?;
        let ifname = var("CNI_IFNAME", per_container)?;
        if per_container
            && (ifname.len() > 15
                || ifname == "."
                || ifname == ".."
                || ifname.contains(|c: char| c == '/' || c == ':' || c.is_whitespace()))
        {
            return Err(bad("CNI_IFNAME", "is not a valid interface name (1 to 15 bytes, no '/', ':' or spaces)"));
        }
        let mut namespace = None;
        let mut name = None;
        for pair in get("CNI_ARGS").unwrap_or_default().split(';').filter(|p| !p.is_empty()) {
            let (k, v) =
                pair.split_once('=').ok_or_else(|| bad("CNI_ARGS", &format!("has {pair:?}, not KEY=VALUE")))?;
            match k {
                "K8S_POD_NAMESPACE" => namespace = Some(v.to_owned()),
                "K8S_POD_NAME" => name = Some(v.to_owned()),
                _ => {} // IgnoreUnknown and the runtime's other keys
            }
        }
        let pod = match (namespace, name) {
            (Some(namespace), Some(name)) if !namespace.is_empty() && !name.is_empty() => {
                Some(PodRef { namespace, name })
            }
            _ => None,
        };
        Ok(Env { command, container_id, netns, ifname, pod })
    }
}

/// A port mapping as runtimes send it: libcni and podman in camelCase, go-cni (containerd) with
/// Go field names.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortMapping {
    /// The port on the node.
    #[serde(alias = "HostPort")]
    #[serde(rename = "hostPort")]
    pub host_port: u16,
    /// The port in the pod.
    #[serde(alias = "ContainerPort")]
    #[serde(rename = "containerPort")]
    pub container_port: u16,
    /// tcp, udp or sctp (any case).
    #[serde(alias = "Protocol", default)]
    pub protocol: Option<String>,
    /// Only on this node address.
    #[serde(alias = "HostIP", alias = "hostIp", rename = "hostIP", default)]
    pub host_ip: Option<String>,
}

/// DNS as runtimes send it in `runtimeConfig.dns` (`servers`/`Servers`, `searches`/`Searches`...).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeDns {
    /// Name servers.
    #[serde(alias = "Servers", alias = "nameservers", default)]
    pub servers: Vec<String>,
    /// Search suffixes.
    #[serde(alias = "Searches", alias = "search", default)]
    pub searches: Vec<String>,
    /// Options.
    #[serde(alias = "Options", default)]
    pub options: Vec<String>,
    /// Domain.
    #[serde(alias = "Domain", default)]
    pub domain: Option<String>,
}

/// `runtimeConfig`: the capability arguments.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RuntimeConfig {
    /// `portMappings`.
    #[serde(rename = "portMappings", default)]
    pub port_mappings: Option<Vec<PortMapping>>,
    /// `dns`.
    #[serde(default)]
    pub dns: Option<RuntimeDns>,
    /// `ipRanges`.
    #[serde(rename = "ipRanges", default)]
    pub ip_ranges: Option<Vec<Vec<IpRange>>>,
}

/// `ipam`: host-local's shape.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ipam {
    /// Must be absent or `flowgate` (addresses are managed by the agent).
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// Range sets, one per address an endpoint gets.
    #[serde(default)]
    pub ranges: Vec<Vec<IpRange>>,
    /// Take the ranges from the node's podCIDRs instead (one configuration for every node).
    #[serde(rename = "usePodCIDR", default)]
    pub use_pod_cidr: bool,
}

/// `outboundNAT`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundNat {
    /// On or off (default on when the object is given).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Destinations reached without translation (the cluster, service and node ranges always are).
    #[serde(default)]
    pub exceptions: Vec<IpNet>,
}

fn yes() -> bool {
    true
}

/// The network configuration the plugin reads (one plugin entry of a conflist, as the runtime
/// passes it, with `name` and `cniVersion` filled in).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    /// The spec version of the configuration (and of the result).
    pub cni_version: String,
    /// The network name.
    pub name: String,
    /// `flowgate-cni`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The agent's socket.
    #[serde(default)]
    pub socket: Option<String>,
    /// Addresses.
    #[serde(default)]
    pub ipam: Option<Ipam>,
    /// MTU of the pods' interfaces.
    #[serde(default)]
    pub mtu: Option<u32>,
    /// DNS every pod gets.
    #[serde(default)]
    pub dns: Option<Dns>,
    /// The cluster's DNS domain, for the pods' search suffixes.
    #[serde(default)]
    pub cluster_domain: Option<String>,
    /// Outbound NAT.
    #[serde(rename = "outboundNAT", default)]
    pub outbound_nat: Option<OutboundNat>,
    /// ACL rules every pod of the network gets (the host networking service's `ACL` policy),
    /// tried by ascending priority before the pod's NetworkPolicy rules.
    #[serde(default)]
    pub acls: Vec<AclConf>,
    /// Capability arguments.
    #[serde(default)]
    pub runtime_config: RuntimeConfig,
    /// CHECK's (and a chained ADD's) previous result.
    #[serde(default)]
    pub prev_result: Option<Value>,
    /// GC's valid attachments.
    #[serde(rename = "cni.dev/valid-attachments", default)]
    pub valid_attachments: Option<Vec<Value>>,
}

/// One entry of `acls` in the network configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AclConf {
    /// `Allow` or `Block`.
    pub action: flowgate_hostnet::objects::AclAction,
    /// `In` (connections to the pod) or `Out` (from it).
    pub direction: flowgate_hostnet::objects::AclDirection,
    /// Lower first.
    #[serde(default)]
    pub priority: u16,
    /// `tcp`, `udp` or `sctp`; any when absent.
    #[serde(default)]
    pub protocol: Option<Protocol>,
    /// Remote prefixes; any when empty.
    #[serde(default)]
    pub remote_addresses: Vec<IpNet>,
    /// Destination ports, `"80"` or `"8000-8100"`; any when empty.
    #[serde(default)]
    pub ports: Vec<String>,
}

fn invalid(e: impl std::fmt::Display) -> CniError {
    CniError::new(code::INVALID_CONFIG, format!("invalid network configuration: {e}"), "fix the .conflist")
}

impl NetConf {
    /// Parses the configuration from stdin: code 6 when it is not JSON of the right shape, code 1
    /// for a version this plugin does not speak, code 7 naming the field otherwise.
    pub fn parse(bytes: &[u8]) -> Result<NetConf, CniError> {
        let v: Value = serde_json::from_slice(bytes).map_err(|e| {
            CniError::new(code::DECODE, format!("the network configuration is not JSON: {e}"), "stdin must hold it")
        })?;
        if let Some(version) = v.get("cniVersion").and_then(|x| x.as_str()) {
            if !SUPPORTED_VERSIONS.contains(&version) {
                return Err(CniError::new(
                    code::INCOMPATIBLE_VERSION,
                    format!("cniVersion {version} is not supported"),
                    format!("flowgate-cni speaks {}", SUPPORTED_VERSIONS.join(", ")),
                ));
            }
        }
        let conf: NetConf = serde_json::from_value(v).map_err(|e| {
            CniError::new(code::DECODE, format!("cannot decode the network configuration: {e}"), "fix the .conflist")
        })?;
        if conf.name.is_empty()
            || conf.name.len() > 253
            || !conf.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(invalid(FieldError::new(
                "name",
                format!("{:?} is not a valid network name (letters, digits, '-', '_', '.')", conf.name),
            )));
        }
        if let Some(ipam) = &conf.ipam {
            if ipam.kind.as_deref().is_some_and(|k| k != "flowgate") {
                return Err(CniError::new(
                    code::UNSUPPORTED_FIELD,
                    format!("ipam.type {:?} is not supported", ipam.kind.as_deref().unwrap_or_default()),
                    "flowgate's agent manages addresses itself: give ipam.ranges and leave ipam.type out",
                ));
            }
        }
        Ok(conf)
    }

    /// The network this configuration describes, checked.
    pub fn network(&self) -> Result<Network, CniError> {
        let ranges = self.ipam.as_ref().map(|i| i.ranges.clone()).unwrap_or_default();
        let use_pod_cidr = self.ipam.as_ref().is_some_and(|i| i.use_pod_cidr);
        if ranges.is_empty() && !use_pod_cidr && self.runtime_config.ip_ranges.is_none() {
            return Err(invalid("ipam.ranges: at least one range set is needed (or ipam.usePodCIDR)"));
        }
        let mut policies = Vec::new();
        if let Some(o) = self.outbound_nat.as_ref().filter(|o| o.enabled) {
            policies.push(Policy::OutboundNat { exceptions: o.exceptions.clone() });
        }
        let first_acl = policies.len();
        for a in &self.acls {
            policies.push(Policy::Acl {
                action: a.action,
                direction: a.direction,
                priority: a.priority,
                protocol: a.protocol,
                remote_addresses: a.remote_addresses.clone(),
                ports: a.ports.clone(),
            });
        }
        let n = Network {
            name: self.name.clone(),
            ranges,
            use_pod_cidr,
            mtu: self.mtu,
            dns: self.dns.clone().unwrap_or_default(),
            cluster_domain: self.cluster_domain.clone(),
            policies,
        };
        let with_field = |e: FieldError| {
            let field = match e.field.as_str() {
                f if f.starts_with("ranges") || f == "usePodCIDR" => format!("ipam.{f}"),
                "name" => "name".to_owned(),
                f => match f.strip_prefix("policies[").and_then(|r| r.split_once(']')) {
                    // The network's policies are outboundNAT, then the acls entries.
                    Some((i, rest)) => match i.parse::<usize>() {
                        Ok(i) if i >= first_acl => format!("acls[{}]{rest}", i - first_acl),
                        _ => f.to_owned(),
                    },
                    None => f.to_owned(),
                },
            };
            invalid(FieldError { field, message: e.message })
        };
        if n.ranges.is_empty() && !n.use_pod_cidr {
            // Only the runtime's ipRanges: the network itself carries none; checked at ADD.
            n.validate().or_else(|e| if e.field == "ranges" { Ok(()) } else { Err(e) }).map_err(with_field)?;
        } else {
            n.validate().map_err(with_field)?;
        }
        Ok(n)
    }

    /// The endpoint request for an ADD.
    pub fn endpoint_request(&self, env: &Env) -> Result<EndpointRequest, CniError> {
        let rc = &self.runtime_config;
        let mut policies = Vec::new();
        for (i, m) in rc.port_mappings.iter().flatten().enumerate() {
            let field = |f: &str| format!("runtimeConfig.portMappings[{i}].{f}");
            let protocol = match m.protocol.as_deref().map(str::to_ascii_lowercase).as_deref() {
                None | Some("") | Some("tcp") => Protocol::Tcp,
                Some("udp") => Protocol::Udp,
                Some("sctp") => Protocol::Sctp,
                Some(p) => {
                    return Err(invalid(FieldError::new(field("protocol"), format!("{p:?} is not tcp, udp or sctp"))))
                }
            };
            let host_ip =
                match m.host_ip.as_deref().filter(|s| !s.is_empty()) {
                    None => None,
                    Some(s) => Some(s.parse::<IpAddr>().map_err(|_| {
                        invalid(FieldError::new(field("hostIP"), format!("{s:?} is not an IP address")))
                    })?),
                };
            policies.push(Policy::PortMapping {
                host_port: m.host_port,
                container_port: m.container_port,
                protocol,
                host_ip,
            });
        }
        let dns = rc.dns.as_ref().map(|d| Dns {
            nameservers: d.servers.clone(),
            domain: d.domain.clone().filter(|s| !s.is_empty()),
            search: d.searches.clone(),
            options: d.options.clone(),
        });
        let req = EndpointRequest {
            network: self.name.clone(),
            container_id: env.container_id.clone(),
            ifname: env.ifname.clone(),
            netns: env.netns.clone(),
            pod: env.pod.clone(),
            ip_ranges: rc.ip_ranges.clone(),
            dns,
            policies,
        };
        req.validate().map_err(|e| {
            let field = match e.field.as_str() {
                "ipRanges" => "runtimeConfig.ipRanges".to_owned(),
                f if f.starts_with("ipRanges") => format!("runtimeConfig.{f}"),
                f if f.starts_with("dns") => format!("runtimeConfig.{f}"),
                f if f.starts_with("policies") => "runtimeConfig.portMappings".to_owned(),
                "containerId" => "CNI_CONTAINERID".to_owned(),
                "ifname" => "CNI_IFNAME".to_owned(),
                "netns" => "CNI_NETNS".to_owned(),
                f => f.to_owned(),
            };
            let code = if field.starts_with("CNI_") { code::INVALID_ENV } else { code::INVALID_CONFIG };
            CniError::new(code, format!("{field}: {}", e.message), "fix the .conflist or the runtime's arguments")
        })?;
        Ok(req)
    }

    /// The attachments GC must keep (required: without it GC would remove everything).
    pub fn valid_attachments(&self) -> Result<Vec<Value>, CniError> {
        let Some(list) = &self.valid_attachments else {
            return Err(invalid(FieldError::new(
                "cni.dev/valid-attachments",
                "GC needs the list of attachments to keep (an empty list keeps none)",
            )));
        };
        let mut out = Vec::new();
        for (i, a) in list.iter().enumerate() {
            let id = a.get("containerID").and_then(|s| s.as_str());
            let ifname = a.get("ifname").and_then(|s| s.as_str());
            match (id, ifname) {
                (Some(id), Some(ifname)) => out.push(json!({"containerID": id, "ifname": ifname})),
                _ => {
                    return Err(invalid(FieldError::new(
                        format!("cni.dev/valid-attachments[{i}]"),
                        "needs containerID and ifname",
                    )))
                }
            }
        }
        Ok(out)
    }
}

/// The route scope "link" (`RT_SCOPE_LINK`): a destination on the link, no gateway.
const SCOPE_LINK: u8 = 253;

/// The CNI result for an endpoint, in `version` (1.0.0 and 1.1.0 have the same shape for ADD):
/// what the pod's interface really holds, so that a runtime (or a chained plugin) reading it sees
/// the truth. Each address is a host route (`/32`, `/128`: the pod has no on-link subnet; every
/// packet goes to the gateway, and so through the switch), with its range's gateway; the routes
/// are those made in the pod, per family: the gateway on the link (`scope` 253 in 1.1.0 results;
/// 1.0.0 has no such field, and a route without `gw` is the on-link one), then the default route
/// through it. This is the shape Cilium's results have, for the same layout.
pub fn result(ep: &Endpoint, version: &str) -> Value {
    let mut routes = Vec::new();
    for v4 in [true, false] {
        if let Some(ip) = ep.ips.iter().find(|i| i.address.addr().is_ipv4() == v4) {
            let mut on_link = json!({"dst": IpNet::from(ip.gateway).to_string()});
            if version != "1.0.0" {
                on_link["scope"] = json!(SCOPE_LINK);
            }
            routes.push(on_link);
            routes.push(json!({"dst": if v4 { "0.0.0.0/0" } else { "::/0" }, "gw": ip.gateway.to_string()}));
        }
    }
    let mut pod_if = json!({"name": ep.ifname, "sandbox": ep.netns});
    if let Some(mac) = &ep.mac {
        pod_if["mac"] = json!(mac);
    }
    let mut dns = json!({});
    if !ep.dns.nameservers.is_empty() {
        dns["nameservers"] = json!(ep.dns.nameservers);
    }
    if let Some(d) = &ep.dns.domain {
        dns["domain"] = json!(d);
    }
    if !ep.dns.search.is_empty() {
        dns["search"] = json!(ep.dns.search);
    }
    if !ep.dns.options.is_empty() {
        dns["options"] = json!(ep.dns.options);
    }
    let ips: Vec<Value> = ep
        .ips
        .iter()
        .map(|i| {
            let configured = IpNet::from(i.address.addr());
            json!({"address": configured.to_string(), "gateway": i.gateway.to_string(), "interface": 1})
        })
        .collect();
    json!({
        "cniVersion": version,
        "interfaces": [{"name": ep.host_interface}, pod_if],
        "ips": ips,
        "routes": routes,
        "dns": dns,
    })
}

/// Compares CHECK's `prevResult` with the agent's endpoint: the addresses must be the same. A
/// prefix length is either the host route the pod holds (what ADD reports) or the length of the
/// range the address came from (what agents before this one reported), so that pods added before
/// an upgrade still pass CHECK.
pub fn check_prev_result(prev: &Value, ep: &Endpoint) -> Result<(), CniError> {
    let listed: Vec<String> = prev
        .get("ips")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
        .filter_map(|i| i.get("address").and_then(|a| a.as_str()).map(str::to_owned))
        .collect();
    let mut have: Vec<String> = ep.ips.iter().map(|i| IpNet::from(i.address.addr()).to_string()).collect();
    let mut want: Vec<String> = listed
        .iter()
        .map(|a| match a.parse::<IpNet>() {
            // An older result's range prefix stands for the same address.
            Ok(n) if ep.ips.iter().any(|i| i.address == n) => IpNet::from(n.addr()).to_string(),
            _ => a.clone(),
        })
        .collect();
    want.sort();
    have.sort();
    if want != have {
        return Err(CniError::new(
            code::CHECK_FAILED,
            format!("prevResult has addresses {listed:?}, the endpoint has {have:?}"),
            "the pod's network is not what ADD returned; recreate the pod",
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Result<Env, CniError> {
        let map: std::collections::HashMap<String, String> =
            pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Env::read(|k| map.get(k).cloned())
    }

    #[test]
    fn environment_is_checked_and_the_pod_read_from_cni_args() {
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=web;K8S_POD_NAME=front-1;K8S_POD_INFRA_CONTAINER_ID=abc"),
        ])
        .unwrap();
        assert_eq!(e.pod, Some(PodRef { namespace: "web".into(), name: "front-1".into() }));
        let err = env(&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "abc"), ("CNI_IFNAME", "eth0")]).unwrap_err();
        assert_eq!((err.code, err.msg.as_str()), (4, "CNI_NETNS is not set"));
        assert_eq!(env(&[("CNI_COMMAND", "FOO")]).unwrap_err().code, 4);
        // DEL may come without a namespace (the runtime already removed it).
        env(&[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "abc"), ("CNI_IFNAME", "eth0")]).unwrap();
        env(&[("CNI_COMMAND", "VERSION")]).unwrap();
    }

    #[test]
    fn both_key_spellings_of_capabilities_are_accepted() {
        let base =
            r#"{"cniVersion":"1.0.0","name":"n","type":"flowgate-cni","ipam":{"ranges":[[{"subnet":"10.1.0.0/24"}]]},"#;
        let go_cni = format!(
            r#"{base}"runtimeConfig":{{"portMappings":[{{"HostPort":8080,"ContainerPort":80,"Protocol":"TCP","HostIP":""}}],"dns":{{"Servers":["10.96.0.10"],"Searches":["a.example"],"Options":["ndots:5"]}}}}}}"#
        );
        let libcni = format!(
            r#"{base}"runtimeConfig":{{"portMappings":[{{"hostPort":8080,"containerPort":80,"protocol":"tcp"}}],"dns":{{"servers":["10.96.0.10"],"searches":["a.example"],"options":["ndots:5"]}}}}}}"#
        );
        let e = env(&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c"), ("CNI_NETNS", "/n"), ("CNI_IFNAME", "eth0")])
            .unwrap();
        let a = NetConf::parse(go_cni.as_bytes()).unwrap().endpoint_request(&e).unwrap();
        let b = NetConf::parse(libcni.as_bytes()).unwrap().endpoint_request(&e).unwrap();
        assert_eq!(a, b);
        assert_eq!(
            a.policies,
            [Policy::PortMapping { host_port: 8080, container_port: 80, protocol: Protocol::Tcp, host_ip: None }]
        );
        assert_eq!(a.dns.unwrap().nameservers, ["10.96.0.10"]);
    }

    #[test]
    fn bad_configurations_name_their_field_and_code() {
        let parse = |s: &str| NetConf::parse(s.as_bytes());
        assert_eq!(parse("{").unwrap_err().code, 6);
        assert_eq!(parse(r#"{"cniVersion":"0.4.0","name":"n","type":"t"}"#).unwrap_err().code, 1);
        let c = parse(r#"{"cniVersion":"1.0.0","name":"n","type":"t","ipam":{"ranges":[[{"subnet":"10.1.0.0/24","gateway":"10.2.0.1"}]]}}"#)
            .unwrap();
        let e = c.network().unwrap_err();
        assert_eq!(e.code, 7);
        assert!(e.msg.contains("ipam.ranges[0][0].gateway"), "{}", e.msg);
        let c = parse(r#"{"cniVersion":"1.0.0","name":"n","type":"t","ipam":{"type":"host-local","ranges":[]}}"#);
        assert_eq!(c.unwrap_err().code, 2);
        let c = parse(r#"{"cniVersion":"1.0.0","name":"n","type":"t"}"#).unwrap();
        assert!(c.network().unwrap_err().msg.contains("ipam.ranges"));
        let c = parse(r#"{"cniVersion":"1.0.0","name":"n","type":"t","ipam":{"ranges":[[{"subnet":"10.1.0.0/24"}]]},"runtimeConfig":{"portMappings":[{"hostPort":1,"containerPort":2,"protocol":"icmp"}]}}"#).unwrap();
        let e = env(&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c"), ("CNI_NETNS", "/n"), ("CNI_IFNAME", "eth0")])
            .unwrap();
        assert!(c.endpoint_request(&e).unwrap_err().msg.contains("portMappings[0].protocol"));
        // ACL rules: checked, and the error names the entry of `acls`.
        let with_acls = |acls: &str| {
            parse(&format!(
                r#"{{"cniVersion":"1.0.0","name":"n","type":"t","ipam":{{"usePodCIDR":true}},"outboundNAT":{{}},"acls":{acls}}}"#
            ))
        };
        let ok = with_acls(r#"[{"action":"Block","direction":"Out","protocol":"tcp","remoteAddresses":["169.254.169.254/32"],"ports":["80"]}]"#).unwrap();
        assert!(matches!(ok.network().unwrap().policies.last(), Some(Policy::Acl { .. })));
        let bad =
            with_acls(r#"[{"action":"Allow","direction":"In"},{"action":"Block","direction":"In","ports":["1-2"]}]"#)
                .unwrap();
        let e = bad.network().unwrap_err();
        assert_eq!(e.code, 7);
        assert!(e.msg.contains("acls[1].protocol"), "{}", e.msg);
        assert_eq!(with_acls(r#"[{"action":"Deny","direction":"In"}]"#).unwrap_err().code, 6);
    }

    fn endpoint(ips: &[(&str, &str)]) -> Endpoint {
        Endpoint {
            id: "n/c/eth0".into(),
            network: "n".into(),
            container_id: "c".into(),
            ifname: "eth0".into(),
            netns: "/run/netns/p".into(),
            pod: None,
            ips: ips
                .iter()
                .map(|(a, g)| flowgate_hostnet::objects::EndpointIp {
                    address: a.parse().unwrap(),
                    gateway: g.parse().unwrap(),
                })
                .collect(),
            mac: Some("02:00:00:00:00:01".into()),
            host_interface: "fgv000000000001".into(),
            mtu: None,
            dns: Dns::default(),
            policies: vec![],
            state: flowgate_hostnet::EndpointState::Ready,
        }
    }

    /// The result says what the pod's interface holds: host routes, the gateway on the link, the
    /// default route through it (agents before reported the range's prefix, /24, which the pod
    /// never had).
    #[test]
    fn the_result_reports_the_addresses_and_routes_the_pod_holds() {
        let ep = endpoint(&[("10.244.1.5/24", "10.244.1.1"), ("fd00:10:244:1::5/64", "fd00:10:244:1::1")]);
        let r = result(&ep, "1.0.0");
        assert_eq!(
            r["ips"],
            json!([{"address": "10.244.1.5/32", "gateway": "10.244.1.1", "interface": 1},
                   {"address": "fd00:10:244:1::5/128", "gateway": "fd00:10:244:1::1", "interface": 1}])
        );
        assert_eq!(
            r["routes"],
            json!([{"dst": "10.244.1.1/32"}, {"dst": "0.0.0.0/0", "gw": "10.244.1.1"},
                   {"dst": "fd00:10:244:1::1/128"}, {"dst": "::/0", "gw": "fd00:10:244:1::1"}])
        );
        let r = result(&ep, "1.1.0");
        assert_eq!(r["routes"][0], json!({"dst": "10.244.1.1/32", "scope": 253}), "1.1.0 names the link scope");
        assert_eq!(r["routes"][2], json!({"dst": "fd00:10:244:1::1/128", "scope": 253}));
    }

    #[test]
    fn check_accepts_this_result_and_an_older_agents() {
        let ep = endpoint(&[("10.244.1.5/24", "10.244.1.1")]);
        check_prev_result(&result(&ep, "1.0.0"), &ep).unwrap();
        check_prev_result(&json!({"ips": [{"address": "10.244.1.5/24"}]}), &ep).unwrap();
        for other in ["10.244.1.5/25", "10.244.1.6/32"] {
            let e = check_prev_result(&json!({"ips": [{"address": other}]}), &ep).unwrap_err();
            assert_eq!(e.code, code::CHECK_FAILED, "{other}");
        }
    }
}
