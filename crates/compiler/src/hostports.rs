//! Host ports (a pod's `hostPort`, the CNI `portMappings` capability): a port of the node forwarded
//! to one local endpoint, as the reference `portmap` plugin does it — on every node address (or the
//! one `hostIP` names), destination rewritten to the pod, source kept (masqueraded only when the
//! pod reaches itself). Compiled as exact destinations in the load-balancing layer, beside the
//! Services' (a host port is claimed before a Service on the same address and port).

use std::net::{IpAddr, SocketAddr};

use flowgate_cluster::{ClusterState, ObjectKey};
use flowgate_switch::{
    Action, BackendSet, BackendSetId, Conditions, DestinationKey, Dnat, PolicyDelta, Proto, Rule, Selection,
    SwitchPolicy,
};
use rustc_hash::FxHashMap;

use crate::node::NodeView;
use crate::proxy::ServiceProxy;

/// What one endpoint's host ports hold in the policy.
#[derive(Debug, Default)]
struct Claimed {
    destinations: Vec<DestinationKey>,
    backend_sets: Vec<BackendSetId>,
}

/// The host ports of every local endpoint.
#[derive(Debug, Default)]
pub struct HostPorts {
    claimed: FxHashMap<ObjectKey, Claimed>,
}

fn proto(name: &str) -> Option<Proto> {
    match name.to_ascii_uppercase().as_str() {
        "TCP" => Some(Proto::TCP),
        "UDP" => Some(Proto::UDP),
        "SCTP" => Some(Proto::SCTP),
        _ => None,
    }
}

/// Claims sort before every Service's (namespaces cannot start with a space).
fn owner(key: &ObjectKey) -> ObjectKey {
    ObjectKey::new(" hostport", key.to_string())
}

impl HostPorts {
    /// Recompiles the host ports of the local endpoint `key` (none when it is gone).
    pub fn sync(
        &mut self,
        key: &ObjectKey,
        state: &ClusterState,
        node: &NodeView,
        proxy: &mut ServiceProxy,
        policy: &mut SwitchPolicy,
        delta: &mut PolicyDelta,
    ) {
        let who = owner(key);
        if let Some(old) = self.claimed.remove(key) {
            for d in old.destinations {
                proxy.claim_destination(d, &who, None, policy, delta);
            }
            for id in old.backend_sets {
                policy.remove_backend_set(id);
                delta.backend_sets.insert(id);
            }
        }
        let Some(ep) = state.local_endpoints.get(key) else { return };
        let mut claimed = Claimed::default();
        for hp in &ep.host_ports {
            let Some(p) = proto(&hp.protocol) else { continue };
            for pod_ip in &ep.ips {
                let on: Vec<IpAddr> = match hp.host_ip {
                    Some(ip) if ip.is_ipv4() == pod_ip.is_ipv4() => vec![ip],
                    Some(_) => continue,
                    None => node
                        .addresses
                        .iter()
                        .filter(|a| a.is_ipv4() == pod_ip.is_ipv4() && !a.is_loopback())
                        .copied()
                        .collect(),
                };
                if on.is_empty() {
                    continue;
                }
                let backend = SocketAddr::new(*pod_ip, hp.container_port);
                let id = policy.add_backend_set(BackendSet {
                    name: format!("hostport {key} {}/{}", hp.host_port, hp.protocol.to_ascii_lowercase()).into(),
                    backends: vec![backend],
                    selection: Selection::Random,
                });
                delta.backend_sets.insert(id);
                claimed.backend_sets.push(id);
                for ip in on {
                    let d: DestinationKey = (ip, p, hp.host_port);
                    let rule = Rule::new(
                        format!(
                            "hostPort {}:{}/{} -> {key} {backend}",
                            crate::proxy::fmt_ip(ip),
                            hp.host_port,
                            hp.protocol.to_ascii_lowercase()
                        ),
                        Conditions::any(),
                        Action::Dnat(Dnat { backends: id, masquerade: false, hairpin: true }),
                    );
                    proxy.claim_destination(d, &who, Some(vec![rule]), policy, delta);
                    claimed.destinations.push(d);
                }
            }
        }
        if !claimed.destinations.is_empty() || !claimed.backend_sets.is_empty() {
            self.claimed.insert(key.clone(), claimed);
        }
    }
}
