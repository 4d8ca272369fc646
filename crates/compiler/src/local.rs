//! What the node's host networking service adds to the switch besides endpoints, compiled as exact
//! destinations in the load-balancing layer beside the Services' (claimed before a Service on the
//! same address and port):
//!
//! - host ports (a pod's `hostPort`, the CNI `portMappings` capability): a port of the node forwarded
//!   to one local endpoint, as the reference `portmap` plugin does it — on every local address of
//!   the node the switch knows (or the one `hostIP` names), destination rewritten to the pod, source
//!   kept (masqueraded only when the pod reaches itself). The node's local addresses are its
//!   addresses, the gateway addresses on its pods' host sides (a pod reaches a host port at its
//!   gateway, as with `portmap`), and loopback (`127.0.0.1`, `::1`): on loopback only for the node's
//!   own clients (the host ingress: never a packet from the network or a pod, CVE-2020-8558), and
//!   masqueraded, since the pod cannot answer a loopback address;
//! - load balancers (HNS LoadBalancer objects): frontend VIPs and ports spread over backend
//!   addresses, with or without source NAT; none left is a reject, as for a Service.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use flowgate_cluster::{ClusterState, ObjectKey};
use flowgate_switch::{
    Action, BackendSet, BackendSetId, Conditions, DestinationKey, Dnat, DropReason, IngressKind, PolicyDelta, Proto,
    Rule, Selection, SwitchPolicy,
};
use rustc_hash::FxHashMap;

use crate::node::NodeView;
use crate::proxy::{fmt_ip, ServiceProxy};

/// What one owner (an endpoint's host ports, a load balancer) holds in the policy.
#[derive(Debug, Default)]
struct Claimed {
    destinations: Vec<DestinationKey>,
    backend_sets: Vec<BackendSetId>,
}

/// Destinations and backend sets by owner. Owners sort before every Service (their namespace
/// starts with a space, which no Kubernetes namespace can).
#[derive(Debug, Default)]
pub struct LocalClaims {
    claimed: FxHashMap<ObjectKey, Claimed>,
    /// The gateway addresses host ports were last compiled with (every local endpoint's).
    gateways: BTreeSet<IpAddr>,
}

/// The gateway addresses on the host sides of the node's local endpoints: addresses of the node.
fn gateways(state: &ClusterState) -> BTreeSet<IpAddr> {
    state.local_endpoints.values().flat_map(|e| e.gateways.iter().copied()).collect()
}

/// The loopback address a host port without `hostIP` is served on, for a family.
fn loopback(v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        IpAddr::V6(Ipv6Addr::LOCALHOST)
    }
}

fn proto(name: &str) -> Option<Proto> {
    match name.to_ascii_uppercase().as_str() {
        "TCP" => Some(Proto::TCP),
        "UDP" => Some(Proto::UDP),
        "SCTP" => Some(Proto::SCTP),
        _ => None,
    }
}

impl LocalClaims {
    fn release(
        &mut self,
        owner: &ObjectKey,
        proxy: &mut ServiceProxy,
        policy: &mut SwitchPolicy,
        delta: &mut PolicyDelta,
    ) {
        if let Some(old) = self.claimed.remove(owner) {
            for d in old.destinations {
                proxy.claim_destination(d, owner, None, policy, delta);
            }
            for id in old.backend_sets {
                policy.remove_backend_set(id);
                delta.backend_sets.insert(id);
            }
        }
    }

    fn backend_set(
        &mut self,
        owner: &ObjectKey,
        set: BackendSet,
        policy: &mut SwitchPolicy,
        delta: &mut PolicyDelta,
    ) -> BackendSetId {
        let id = policy.add_backend_set(set);
        delta.backend_sets.insert(id);
        self.claimed.entry(owner.clone()).or_default().backend_sets.push(id);
        id
    }

    #[allow(clippy::too_many_arguments)]
    fn claim(
        &mut self,
        owner: &ObjectKey,
        d: DestinationKey,
        rule: Rule,
        proxy: &mut ServiceProxy,
        policy: &mut SwitchPolicy,
        delta: &mut PolicyDelta,
    ) {
        proxy.claim_destination(d, owner, Some(vec![rule]), policy, delta);
        self.claimed.entry(owner.clone()).or_default().destinations.push(d);
    }

    /// Recompiles the host ports of the local endpoint `key` (none when it is gone). When the
    /// node's gateway addresses changed (an endpoint with a gateway of its own came or went), every
    /// endpoint's host ports are recompiled: those without `hostIP` are served on them.
    pub fn sync_host_ports(
        &mut self,
        key: &ObjectKey,
        state: &ClusterState,
        node: &NodeView,
        proxy: &mut ServiceProxy,
        policy: &mut SwitchPolicy,
        delta: &mut PolicyDelta,
    ) {
        let now = gateways(state);
        if now != self.gateways {
            self.gateways = now;
            let others: Vec<ObjectKey> = state
                .local_endpoints
                .iter()
                .filter(|(k, e)| *k != key && !e.host_ports.is_empty())
                .map(|(k, _)| k.clone())
                .collect();
            for k in &others {
                self.compile_host_ports(k, state, node, proxy, policy, delta);
            }
        }
        self.compile_host_ports(key, state, node, proxy, policy, delta);
    }

    fn compile_host_ports(
        &mut self,
        key: &ObjectKey,
        state: &ClusterState,
        node: &NodeView,
        proxy: &mut ServiceProxy,
        policy: &mut SwitchPolicy,
        delta: &mut PolicyDelta,
    ) {
        let owner = ObjectKey::new(" hostport", key.to_string());
        self.release(&owner, proxy, policy, delta);
        let Some(ep) = state.local_endpoints.get(key) else { return };
        for hp in &ep.host_ports {
            let Some(p) = proto(&hp.protocol) else { continue };
            let protocol = hp.protocol.to_ascii_lowercase();
            for pod_ip in &ep.ips {
                let v4 = pod_ip.is_ipv4();
                let on: Vec<IpAddr> = match hp.host_ip {
                    // Only one of the node's own addresses (loopback included): never a Service's or
                    // another's.
                    Some(ip) if ip.is_ipv4() == v4 && (ip.is_loopback() || node.addresses.contains(&ip)) => vec![ip],
                    Some(_) => continue,
                    None => {
                        let mut on: Vec<IpAddr> = Vec::new();
                        let local = node.addresses.iter().chain(&self.gateways).copied().chain([loopback(v4)]);
                        for a in local.filter(|a| a.is_ipv4() == v4) {
                            if !on.contains(&a) {
                                on.push(a);
                            }
                        }
                        on
                    }
                };
                let backend = SocketAddr::new(*pod_ip, hp.container_port);
                let set = BackendSet {
                    name: format!("hostport {key} {}/{protocol}", hp.host_port).into(),
                    backends: vec![backend],
                    selection: Selection::Random,
                };
                let id = self.backend_set(&owner, set, policy, delta);
                for ip in on {
                    let what = format!("hostPort {}:{}/{protocol} -> {key} {backend}", fmt_ip(ip), hp.host_port);
                    let rule = if ip.is_loopback() {
                        // Loopback is the node's own: only its own clients' packets (the host
                        // ingress) may be sent on, and from a node address, which the pod can
                        // answer (the kernel hands the readdressed replies to lo).
                        Rule::new(
                            format!("{what}, the node's own clients only, masquerade"),
                            Conditions { ingress: Some(IngressKind::Host), ..Conditions::any() },
                            Action::Dnat(Dnat { backends: id, masquerade: true, hairpin: true }),
                        )
                    } else {
                        Rule::new(
                            what,
                            Conditions::any(),
                            Action::Dnat(Dnat { backends: id, masquerade: false, hairpin: true }),
                        )
                    };
                    self.claim(&owner, (ip, p, hp.host_port), rule, proxy, policy, delta);
                }
            }
        }
    }

    /// Recompiles the load balancer `name` (none when it is gone).
    pub fn sync_load_balancer(
        &mut self,
        name: &str,
        state: &ClusterState,
        proxy: &mut ServiceProxy,
        policy: &mut SwitchPolicy,
        delta: &mut PolicyDelta,
    ) {
        let owner = ObjectKey::new(" loadbalancer", name);
        self.release(&owner, proxy, policy, delta);
        let Some(lb) = state.local_load_balancers.get(name) else { return };
        for pm in &lb.ports {
            let Some(p) = proto(&pm.protocol) else { continue };
            let protocol = pm.protocol.to_ascii_lowercase();
            for v4 in [true, false] {
                let vips: Vec<IpAddr> = lb.frontend_vips.iter().filter(|v| v.is_ipv4() == v4).copied().collect();
                if vips.is_empty() {
                    continue;
                }
                let backends: Vec<SocketAddr> = lb
                    .backends
                    .iter()
                    .filter(|b| b.is_ipv4() == v4)
                    .map(|b| SocketAddr::new(*b, pm.backend_port))
                    .collect();
                let action = if backends.is_empty() {
                    Action::Reject(DropReason::NoEndpoints)
                } else {
                    let set = BackendSet {
                        name: format!("loadbalancer {name} {}/{protocol}", pm.frontend_port).into(),
                        backends,
                        selection: Selection::Random,
                    };
                    let id = self.backend_set(&owner, set, policy, delta);
                    Action::Dnat(Dnat { backends: id, masquerade: lb.source_nat, hairpin: true })
                };
                for vip in vips {
                    let what = format!("loadBalancer {name} {}:{}/{protocol}", fmt_ip(vip), pm.frontend_port);
                    let rule = match action {
                        Action::Reject(_) => {
                            Rule::new(format!("{what} has no backends: reject"), Conditions::any(), action)
                        }
                        _ => Rule::new(
                            format!(
                                "{what} -> {} backends{}",
                                lb.backends.iter().filter(|b| b.is_ipv4() == v4).count(),
                                if lb.source_nat { ", source NAT" } else { "" }
                            ),
                            Conditions::any(),
                            action,
                        ),
                    };
                    self.claim(&owner, (vip, p, pm.frontend_port), rule, proxy, policy, delta);
                }
            }
        }
    }
}
