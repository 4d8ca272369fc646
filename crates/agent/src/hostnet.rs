//! The host networking service inside the agent: how an endpoint joins the switch
//! ([`AgentSwitch`]: its addresses become a port of the compiled policy, its host interface is bound
//! to that port and the endpoint program attached, before the ADD returns), and the service's
//! HTTP API on the root-only socket (networks, endpoints, CHECK, GC, STATUS), with errors that
//! carry the CNI code, the message and the field at fault.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use flowgate_cluster::{HostPort, LoadBalancerPort, LocalAcl, LocalEndpoint, LocalLoadBalancer, ObjectKey};
use flowgate_hostnet::links::Made;
use flowgate_hostnet::objects::{acl_port_range, AclAction, AclDirection};
use flowgate_hostnet::{
    Endpoint, EndpointRequest, HnsError, HostNetworking, LoadBalancer, Network, Policy, Protocol, Switch, SwitchError,
};
use serde_json::{json, Value};

use crate::metrics::Metrics;
use crate::sync::Core;

/// The TC filter slot of the endpoint program on every pod's host-side interface (a legacy
/// `cls_bpf` filter: attaching one takes ~0.15 ms, a TCX link an RCU grace period; see
/// [`flowgate_ebpf::Loaded::attach_tc`]).
pub const ENDPOINT_SLOT: flowgate_ebpf::TcSlot = flowgate_ebpf::TcSlot { priority: 1, handle: 0xf1a7 };

/// The kernel side of endpoints: the backend (ports map) and the loaded endpoint program, with the
/// directory where earlier versions pinned the endpoints' TCX links (removed as they are met).
#[derive(Debug)]
pub struct KernelHooks {
    /// The eBPF backend.
    pub dataplane: Arc<flowgate_ebpf::backend::EbpfDataplane>,
    /// The object holding `fg_from_endpoint`.
    pub endpoint: Mutex<flowgate_ebpf::Loaded>,
    /// Where links are pinned (earlier versions pinned the endpoints' TCX links there).
    pub links_dir: PathBuf,
}

impl KernelHooks {
    fn pin(&self, host_if: &str) -> PathBuf {
        self.links_dir.join(format!("endpoint-{host_if}-ingress"))
    }

    /// The interfaces of the endpoint link pins, with the pins' paths.
    fn pins(&self) -> Vec<(String, PathBuf)> {
        let Ok(dir) = std::fs::read_dir(&self.links_dir) else { return Vec::new() };
        dir.flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let iface = name.strip_prefix("endpoint-")?.strip_suffix("-ingress")?.to_owned();
                Some((iface, e.path()))
            })
            .collect()
    }
}

/// The agent's [`Switch`]: local endpoints become ports through the tracker and an immediate sync.
#[derive(Debug)]
pub struct AgentSwitch {
    /// The sync core.
    pub core: Arc<Mutex<Core>>,
    /// Metrics (for the sync).
    pub metrics: Arc<Metrics>,
    /// The kernel, when the eBPF data plane runs.
    pub kernel: Option<Arc<KernelHooks>>,
    /// The attachments of each pod (a pod on several networks has several): its port holds the
    /// addresses of all of them.
    pub attachments: Mutex<BTreeMap<ObjectKey, BTreeMap<String, LocalEndpoint>>>,
}

impl AgentSwitch {
    /// A switch over the agent's core.
    pub fn new(core: Arc<Mutex<Core>>, metrics: Arc<Metrics>, kernel: Option<Arc<KernelHooks>>) -> AgentSwitch {
        AgentSwitch { core, metrics, kernel, attachments: Mutex::new(BTreeMap::new()) }
    }

    /// Puts a recorded endpoint in the state before the agent's first compile (at start), so that
    /// the first program written keeps its port, host ports and outbound NAT; reconcile binds it.
    pub fn preload(&self, ep: &Endpoint) {
        let key = endpoint_key(ep);
        let merged = self.pod_endpoint(&key, &ep.id, Some(local(ep)));
        let mut core = self.core.lock().unwrap_or_else(|p| p.into_inner());
        core.tracker.set_local_endpoint(key, merged);
    }

    /// Records (`Some`) or forgets (`None`) one attachment of a pod; what the pod's port should
    /// now be (every attachment's addresses, host ports and outbound NAT), `None` when it has none.
    fn pod_endpoint(&self, key: &ObjectKey, id: &str, attachment: Option<LocalEndpoint>) -> Option<LocalEndpoint> {
        let mut all = self.attachments.lock().unwrap_or_else(|p| p.into_inner());
        let of_pod = all.entry(key.clone()).or_default();
        match attachment {
            Some(a) => of_pod.insert(id.to_owned(), a),
            None => of_pod.remove(id),
        };
        if of_pod.is_empty() {
            all.remove(key);
            return None;
        }
        let mut merged = LocalEndpoint::default();
        for a in of_pod.values() {
            for ip in &a.ips {
                if !merged.ips.contains(ip) {
                    merged.ips.push(*ip);
                }
            }
            if let Some(ex) = &a.outbound_nat {
                merged.outbound_nat.get_or_insert_with(Vec::new).extend(ex.iter().copied());
            }
            merged.host_ports.extend(a.host_ports.iter().cloned());
            for acl in &a.acls {
                if !merged.acls.contains(acl) {
                    merged.acls.push(acl.clone());
                }
            }
            for g in &a.gateways {
                if !merged.gateways.contains(g) {
                    merged.gateways.push(*g);
                }
            }
        }
        Some(merged)
    }
}

/// The key of an endpoint's port: its pod, or (no pod given) `""` and the attachment id.
pub fn endpoint_key(ep: &Endpoint) -> ObjectKey {
    match &ep.pod {
        Some(p) => ObjectKey::new(p.namespace.clone(), p.name.clone()),
        None => ObjectKey::new("", ep.id.clone()),
    }
}

fn local(ep: &Endpoint) -> LocalEndpoint {
    let outbound_nat = ep.policies.iter().find_map(|p| match p {
        Policy::OutboundNat { exceptions } => Some(exceptions.clone()),
        _ => None,
    });
    let host_ports = ep
        .policies
        .iter()
        .filter_map(|p| match p {
            Policy::PortMapping { host_port, container_port, protocol, host_ip } => Some(HostPort {
                host_port: *host_port,
                container_port: *container_port,
                protocol: protocol_name(*protocol).to_owned(),
                host_ip: *host_ip,
            }),
            _ => None,
        })
        .collect();
    let acls = ep
        .policies
        .iter()
        .filter_map(|p| match p {
            Policy::Acl { action, direction, priority, protocol, remote_addresses, ports } => Some(LocalAcl {
                allow: *action == AclAction::Allow,
                inbound: *direction == AclDirection::In,
                priority: *priority,
                protocol: protocol.map(|p| protocol_name(p).to_owned()),
                remote: remote_addresses.clone(),
                ports: ports.iter().filter_map(|p| acl_port_range(p)).collect(),
            }),
            _ => None,
        })
        .collect();
    let mut gateways: Vec<std::net::IpAddr> = Vec::new();
    for ip in &ep.ips {
        if !gateways.contains(&ip.gateway) {
            gateways.push(ip.gateway);
        }
    }
    LocalEndpoint { ips: ep.addresses(), outbound_nat, host_ports, acls, gateways }
}

/// The compiler's view of a load balancer.
pub fn local_load_balancer(lb: &LoadBalancer) -> LocalLoadBalancer {
    LocalLoadBalancer {
        frontend_vips: lb.frontend_vips.clone(),
        ports: lb
            .port_mappings
            .iter()
            .map(|p| LoadBalancerPort {
                protocol: protocol_name(p.protocol).to_owned(),
                frontend_port: p.frontend_port,
                backend_port: p.backend_port,
            })
            .collect(),
        backends: lb.backends.clone(),
        source_nat: lb.source_nat,
    }
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
        Protocol::Sctp => "SCTP",
    }
}

impl AgentSwitch {
    /// Records the endpoint (or its removal) and syncs now, not at the next scheduled sync: the
    /// runtime waits for the answer.
    fn sync_now(
        &self,
        key: ObjectKey,
        value: Option<LocalEndpoint>,
    ) -> Result<Option<flowgate_switch::PortId>, SwitchError> {
        let mut core = self.core.lock().unwrap_or_else(|p| p.into_inner());
        let adding = value.is_some();
        core.tracker.set_local_endpoint(key.clone(), value);
        if !core.tracker.ready() {
            return Err(SwitchError::NotReady("the cluster state has not been listed yet".into()));
        }
        if !core.sync(false, &self.metrics) {
            if let Some(why) = core.status.last_error.clone() {
                return Err(if core.compiler.policy().is_none() {
                    SwitchError::NotReady(why)
                } else {
                    SwitchError::Failed(why)
                });
            }
            // Some objects were not taken (they are retried); only this endpoint's own matter
            // here. Other Services', policies' or pods' never block this pod.
        }
        let port = core.compiler.endpoint_port(&key);
        if adding && port.is_none() {
            return Err(SwitchError::Failed(format!("the compiler made no port for {key}")));
        }
        if let Some(id) = port.filter(|id| core.unapplied.ports.contains(id) || core.unapplied.acls.contains(id)) {
            // Its addresses or its NetworkPolicy tables are not in the kernel: a pod started now
            // could not send, or would run unprotected.
            let why = core.status.degraded.iter().find(|p| p.contains(&key.to_string())).cloned();
            return Err(SwitchError::Failed(
                why.unwrap_or_else(|| format!("the data plane did not take port {}", id.0)),
            ));
        }
        Ok(port)
    }
}

impl Switch for AgentSwitch {
    fn attach_program(&self, ep: &Endpoint) -> Result<(), SwitchError> {
        let Some(k) = &self.kernel else { return Ok(()) };
        let mut obj = k.endpoint.lock().unwrap_or_else(|p| p.into_inner());
        obj.attach_tc("fg_from_endpoint", &ep.host_interface, flowgate_ebpf::Direction::Ingress, ENDPOINT_SLOT)
            .map_err(|e| SwitchError::Failed(format!("attach fg_from_endpoint to {}: {e}", ep.host_interface)))?;
        // A TCX link an earlier version pinned would run first (and end the chain): it goes.
        let _ = flowgate_ebpf::detach_pinned(&k.pin(&ep.host_interface));
        Ok(())
    }

    fn attach(&self, ep: &Endpoint, made: Made) -> Result<(), SwitchError> {
        let key = endpoint_key(ep);
        let merged = self.pod_endpoint(&key, &ep.id, Some(local(ep)));
        let synced = self.sync_now(key.clone(), merged);
        // Bound even when the data plane did not take the port's entries yet: the interface is
        // the port's from now on (until they are in, the pod's packets are dropped as spoofed),
        // and the sync loop's retry completes it.
        let port = match &synced {
            Ok(port) => *port,
            Err(_) => self.core.lock().unwrap_or_else(|p| p.into_inner()).compiler.endpoint_port(&key),
        };
        if let (Some(k), Some(port)) = (&self.kernel, port) {
            k.dataplane
                .bind_endpoint(made.host_ifindex, port, Some(made.mac))
                .map_err(|e| SwitchError::Failed(format!("bind {}: {e}", ep.host_interface)))?;
        }
        synced.map(|_| ())
    }

    fn load_balancer(&self, name: &str, lb: Option<&LoadBalancer>) -> Result<(), SwitchError> {
        let mut core = self.core.lock().unwrap_or_else(|p| p.into_inner());
        if !core.tracker.set_local_load_balancer(name, lb.map(local_load_balancer)) {
            return Ok(());
        }
        // Before the first compile it is in the state that compile reads; after, program it now.
        if core.tracker.ready() && core.compiler.policy().is_some() && !core.sync(false, &self.metrics) {
            if let Some(why) = core.status.last_error.clone() {
                return Err(SwitchError::Failed(why));
            }
        }
        Ok(())
    }

    fn node_addresses(&self) -> Vec<std::net::IpAddr> {
        let core = self.core.lock().unwrap_or_else(|p| p.into_inner());
        core.compiler.node().map(|n| n.addresses.clone()).unwrap_or_default()
    }

    fn pod_cidrs(&self) -> Vec<ipnet::IpNet> {
        let core = self.core.lock().unwrap_or_else(|p| p.into_inner());
        core.compiler.node().map(|n| n.pod_cidrs.iter().map(|c| c.trunc()).collect()).unwrap_or_default()
    }

    /// (The endpoint programs are TC filters that go with their interfaces; what is left to sweep
    /// are TCX links earlier versions pinned.)
    fn sweep(&self, stray: &dyn Fn(&str) -> bool) -> Vec<String> {
        let Some(k) = &self.kernel else { return Vec::new() };
        let mut removed = Vec::new();
        for (iface, pin) in k.pins() {
            if stray(&iface) && flowgate_ebpf::detach_pinned(&pin).is_ok() {
                removed.push(iface);
            }
        }
        removed
    }

    fn detach(&self, ep: &Endpoint, host_ifindex: Option<u32>) -> Result<(), SwitchError> {
        if let Some(k) = &self.kernel {
            if let Some(ifindex) = host_ifindex {
                k.dataplane.unbind_endpoint(ifindex).map_err(|e| SwitchError::Failed(e.to_string()))?;
            }
            // (Gone with the interface when it is; an earlier version's pinned link too.)
            flowgate_ebpf::detach_tc(&ep.host_interface, flowgate_ebpf::Direction::Ingress, ENDPOINT_SLOT);
            flowgate_ebpf::detach_pinned(&k.pin(&ep.host_interface))
                .map_err(|e| SwitchError::Failed(format!("detach from {}: {e}", ep.host_interface)))?;
        }
        let key = endpoint_key(ep);
        let merged = self.pod_endpoint(&key, &ep.id, None);
        if let Err(e) = self.sync_now(key, merged) {
            // Removed from the tracker either way: the next successful sync programs it.
            tracing::warn!(endpoint = %ep.id, error = %e, "endpoint removed; its port goes with the next sync");
        }
        Ok(())
    }

    fn check(&self, ep: &Endpoint, host_ifindex: u32) -> Vec<String> {
        let mut problems = Vec::new();
        let key = endpoint_key(ep);
        let port = {
            let core = self.core.lock().unwrap_or_else(|p| p.into_inner());
            let port = core.compiler.endpoint_port(&key);
            let programmed =
                port.and_then(|id| core.compiler.policy().and_then(|p| p.port(id)).map(|p| p.addresses.clone()));
            match programmed {
                None => problems.push(format!("the switch has no port for {key}")),
                Some(addrs) if !ep.addresses().iter().all(|a| addrs.contains(a)) => problems
                    .push(format!("the switch's port for {key} has addresses {addrs:?}, not {:?}", ep.addresses())),
                Some(_) => {}
            }
            port
        };
        if let Some(k) = &self.kernel {
            match (k.dataplane.bound_port(host_ifindex), port) {
                (Some(b), Some(p)) if b == p => {}
                (b, _) => {
                    problems.push(format!("{} is bound to port {b:?} in the kernel, not {port:?}", ep.host_interface))
                }
            }
            // The filter is there when it can be switched to the program (the same one: no change).
            let mut obj = k.endpoint.lock().unwrap_or_else(|p| p.into_inner());
            let attached = obj.replace_tc(
                "fg_from_endpoint",
                &ep.host_interface,
                flowgate_ebpf::Direction::Ingress,
                ENDPOINT_SLOT,
            );
            if !matches!(attached, Ok(true)) {
                problems.push(format!("no endpoint program is attached to {}", ep.host_interface));
            }
        }
        problems
    }
}

/// An API error: the HTTP status, and `{"error": {"code", "message", "field"}}` with the CNI code.
fn error(e: &HnsError) -> Response {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(json!({"error": {"code": e.cni_code(), "message": e.to_string(), "field": e.field()}})))
        .into_response()
}

fn bad_body(e: &serde_json::Error) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": {"code": 7, "message": format!("invalid request body: {e}")}})))
        .into_response()
}

fn answer<T: serde::Serialize>(r: Result<T, HnsError>) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => error(&e),
    }
}

/// Runs a change to completion in a task of its own: a client that goes away (a runtime that
/// kills the plugin) does not cut it short half way.
async fn to_completion<T: Send + 'static>(
    change: impl std::future::Future<Output = Result<T, HnsError>> + Send + 'static,
) -> Result<T, HnsError> {
    tokio::spawn(change)
        .await
        .unwrap_or_else(|e| Err(HnsError::Switch(SwitchError::Failed(format!("the change did not finish: {e}")))))
}

/// The service's routes (merged into the API on the unix socket).
pub fn router(hns: Arc<HostNetworking>) -> Router {
    Router::new()
        .route("/v1/networks", get(networks))
        .route("/v1/networks/{name}", get(network).put(put_network).delete(delete_network))
        .route("/v1/networks/{name}/status", get(status))
        .route("/v1/networks/{name}/gc", post(gc))
        .route("/v1/loadbalancers", get(load_balancers))
        .route("/v1/loadbalancers/{name}", get(load_balancer).put(put_load_balancer).delete(delete_load_balancer))
        .route("/v1/endpoints", get(endpoints).post(add_endpoint))
        .route("/v1/endpoints/{network}/{container}/{ifname}", get(endpoint).delete(delete_endpoint))
        .route("/v1/endpoints/{network}/{container}/{ifname}/check", get(check_endpoint))
        .with_state(hns)
}

type Hns = State<Arc<HostNetworking>>;

async fn networks(State(h): Hns) -> Response {
    answer(h.networks())
}

async fn network(State(h): Hns, Path(name): Path<String>) -> Response {
    answer(h.network(&name))
}

/// A named object from a PUT body whose name must be the path's; the error answer otherwise.
fn named_body<T: serde::de::DeserializeOwned>(
    body: &[u8],
    path_name: &str,
    name: impl Fn(&T) -> &str,
) -> Result<T, Box<Response>> {
    let v: T = serde_json::from_slice(body).map_err(|e| Box::new(bad_body(&e)))?;
    if name(&v) != path_name {
        return Err(Box::new(error(&HnsError::Invalid(flowgate_hostnet::FieldError::new(
            "name",
            format!("{:?} differs from the path's {path_name:?}", name(&v)),
        )))));
    }
    Ok(v)
}

async fn put_network(State(h): Hns, Path(name): Path<String>, body: Bytes) -> Response {
    match named_body(&body, &name, |n: &Network| &n.name) {
        Ok(n) => answer(h.put_network(n).await),
        Err(r) => *r,
    }
}

async fn delete_network(State(h): Hns, Path(name): Path<String>) -> Response {
    answer(h.delete_network(&name).await.map(|()| json!({"deleted": name})))
}

async fn status(State(h): Hns, Path(name): Path<String>) -> Response {
    match h.status(&name) {
        Ok(Ok(())) => Json(json!({"available": true})).into_response(),
        Ok(Err(why)) => {
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"error": {"code": 50, "message": why}}))).into_response()
        }
        Err(e) => error(&e),
    }
}

/// `{"validAttachments": [{"containerID": ..., "ifname": ...}]}` (CNI GC's `cni.dev/valid-attachments`).
async fn gc(State(h): Hns, Path(name): Path<String>, body: Bytes) -> Response {
    let v: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return bad_body(&e),
    };
    let Some(list) = v.get("validAttachments").and_then(|a| a.as_array()) else {
        return error(&HnsError::Invalid(flowgate_hostnet::FieldError::new(
            "validAttachments",
            "the attachments to keep are required (an empty list removes every endpoint of the network)",
        )));
    };
    let mut valid = BTreeSet::new();
    for (i, a) in list.iter().enumerate() {
        let id = a.get("containerID").or_else(|| a.get("containerId")).and_then(|s| s.as_str());
        let ifname = a.get("ifname").and_then(|s| s.as_str());
        match (id, ifname) {
            (Some(id), Some(ifname)) => {
                valid.insert((id.to_owned(), ifname.to_owned()));
            }
            _ => {
                return error(&HnsError::Invalid(flowgate_hostnet::FieldError::new(
                    format!("validAttachments[{i}]"),
                    "needs containerID and ifname",
                )))
            }
        }
    }
    answer(to_completion(async move { h.gc(&name, &valid).await }).await.map(|removed| json!({"removed": removed})))
}

async fn load_balancers(State(h): Hns) -> Response {
    answer(h.load_balancers())
}

async fn load_balancer(State(h): Hns, Path(name): Path<String>) -> Response {
    answer(h.load_balancer(&name))
}

async fn put_load_balancer(State(h): Hns, Path(name): Path<String>, body: Bytes) -> Response {
    match named_body(&body, &name, |l: &LoadBalancer| &l.name) {
        Ok(lb) => answer(h.put_load_balancer(lb).await),
        Err(r) => *r,
    }
}

async fn delete_load_balancer(State(h): Hns, Path(name): Path<String>) -> Response {
    match h.delete_load_balancer(&name).await {
        Ok(true) => Json(json!({"deleted": name})).into_response(),
        Ok(false) => error(&HnsError::NotFound(format!("load balancer {name:?} does not exist"))),
        Err(e) => error(&e),
    }
}

async fn endpoints(State(h): Hns) -> Response {
    answer(h.endpoints())
}

async fn add_endpoint(State(h): Hns, body: Bytes) -> Response {
    let req: EndpointRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad_body(&e),
    };
    answer(to_completion(async move { h.add_endpoint(req).await }).await)
}

async fn endpoint(State(h): Hns, Path((n, c, i)): Path<(String, String, String)>) -> Response {
    answer(h.endpoint(&Endpoint::id_of(&n, &c, &i)))
}

async fn delete_endpoint(State(h): Hns, Path((n, c, i)): Path<(String, String, String)>) -> Response {
    let id = Endpoint::id_of(&n, &c, &i);
    answer(
        to_completion(async move { h.delete_endpoint(&id).await }).await.map(|ep| json!({"deleted": ep.map(|e| e.id)})),
    )
}

async fn check_endpoint(State(h): Hns, Path((n, c, i)): Path<(String, String, String)>) -> Response {
    match h.check_endpoint(&Endpoint::id_of(&n, &c, &i)).await {
        Ok(Ok(ep)) => Json(ep).into_response(),
        Ok(Err(problems)) => (
            StatusCode::CONFLICT,
            Json(json!({"error": {"code": 5, "message": problems.join("; "), "problems": problems}})),
        )
            .into_response(),
        Err(e) => error(&e),
    }
}
