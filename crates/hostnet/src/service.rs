//! The host networking service: networks and endpoints as the agent serves them. Adding an
//! endpoint reserves its addresses and records it (one transaction), makes its links, puts it under
//! the switch ([`Switch::attach`]) and only then marks it ready; any failure on the way undoes what
//! was done. At start, [`HostNetworking::reconcile`] makes the kernel match the record: endpoints
//! whose ADD never returned and endpoints whose namespace is gone are removed, missing links are
//! made again, host interfaces nobody recorded are deleted, and what already works is left alone.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use crate::links::{self, LinkError, LinkSpec, Made, Netlink};
use crate::objects::{Endpoint, EndpointRequest, EndpointState, FieldError, Network, Policy};
use crate::store::{Store, StoreError};

/// The data plane side of an endpoint, implemented by the agent.
pub trait Switch: Send + Sync + std::fmt::Debug {
    /// Puts `ep` under the switch: its port is programmed and its host interface bound to it (only
    /// its own addresses and MAC may send).
    fn attach(&self, ep: &Endpoint, made: Made) -> Result<(), SwitchError>;
    /// Attaches (or, after a restart, switches to this run's) endpoint program on `ep`'s host
    /// interface, after [`Switch::attach`]. Returns once the pod's first packet would be switched.
    fn attach_program(&self, ep: &Endpoint) -> Result<(), SwitchError>;
    /// Removes the endpoint program attachments that `stray` says are strays (given an interface
    /// name); what was removed.
    fn sweep(&self, stray: &dyn Fn(&str) -> bool) -> Vec<String>;
    /// The node's pod CIDRs (`spec.podCIDRs`), for networks with `usePodCIDR`; empty when the node
    /// is not known yet.
    fn pod_cidrs(&self) -> Vec<ipnet::IpNet>;
    /// The node's addresses (a host port's `hostIP` must be one of them); empty when the node is
    /// not known yet.
    fn node_addresses(&self) -> Vec<std::net::IpAddr>;
    /// Serves (`Some`) or stops serving (`None`) a load balancer. Returns once it is programmed
    /// (or, before the switch is compiled, recorded for the first compile).
    fn load_balancer(&self, name: &str, lb: Option<&crate::objects::LoadBalancer>) -> Result<(), SwitchError>;
    /// Takes `ep` out of the switch (its port, binding and program). Idempotent.
    fn detach(&self, ep: &Endpoint, host_ifindex: Option<u32>) -> Result<(), SwitchError>;
    /// What is wrong with `ep`'s place in the switch (CHECK); empty when nothing.
    fn check(&self, ep: &Endpoint, host_ifindex: u32) -> Vec<String>;
}

/// Why the switch could not take an endpoint.
#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    /// Not yet: the agent has not compiled the node's switch (no cluster state yet, or it does not
    /// compile); the runtime should try again later.
    #[error("the agent's switch is not ready yet: {0}")]
    NotReady(String),
    /// It failed.
    #[error("{0}")]
    Failed(String),
}

/// What went wrong, with what a person can do about it. [`HnsError::cni_code`] maps it to the CNI
/// spec's error codes, [`HnsError::http_status`] to the API's.
#[derive(Debug, thiserror::Error)]
pub enum HnsError {
    /// A field of the request is invalid.
    #[error("invalid {0}")]
    Invalid(#[from] FieldError),
    /// The named network or endpoint does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with what exists.
    #[error("{0}")]
    Conflict(String),
    /// ADD for an attachment (network, container, interface) that is already live.
    #[error("{0}")]
    AttachmentExists(String),
    /// No address left.
    #[error("{0}")]
    Exhausted(StoreError),
    /// The store failed.
    #[error("{0}")]
    Store(StoreError),
    /// Making or removing links failed.
    #[error("{0}")]
    Link(#[from] LinkError),
    /// The switch did not take the endpoint.
    #[error("{0}")]
    Switch(#[from] SwitchError),
}

impl From<StoreError> for HnsError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Exhausted { .. } => HnsError::Exhausted(e),
            e => HnsError::Store(e),
        }
    }
}

/// The CNI plugin's own error code for address exhaustion (the spec leaves 100 and up to plugins).
pub const CNI_CODE_NO_ADDRESSES: u32 = 110;
/// The CNI plugin's own error code for an ADD of an attachment that is already live (no spec code
/// says "exists").
pub const CNI_CODE_ATTACHMENT_EXISTS: u32 = 112;

impl HnsError {
    /// The CNI error code: 7 invalid network configuration, 3 unknown container, 11 try again
    /// later, 5 I/O, [`CNI_CODE_NO_ADDRESSES`] for exhaustion, [`CNI_CODE_ATTACHMENT_EXISTS`] for a
    /// second ADD.
    pub fn cni_code(&self) -> u32 {
        match self {
            HnsError::Invalid(_) => 7,
            HnsError::NotFound(_) => 3,
            HnsError::Conflict(_) => 7,
            HnsError::AttachmentExists(_) => CNI_CODE_ATTACHMENT_EXISTS,
            HnsError::Exhausted(_) => CNI_CODE_NO_ADDRESSES,
            HnsError::Store(_) | HnsError::Link(_) | HnsError::Switch(SwitchError::Failed(_)) => 5,
            HnsError::Switch(SwitchError::NotReady(_)) => 11,
        }
    }

    /// The HTTP status of the API's answer.
    pub fn http_status(&self) -> u16 {
        match self {
            HnsError::Invalid(_) => 400,
            HnsError::NotFound(_) => 404,
            HnsError::Conflict(_) | HnsError::AttachmentExists(_) | HnsError::Exhausted(_) => 409,
            HnsError::Switch(SwitchError::NotReady(_)) => 503,
            _ => 500,
        }
    }

    /// The field at fault, when one is.
    pub fn field(&self) -> Option<&str> {
        match self {
            HnsError::Invalid(f) => Some(&f.field),
            _ => None,
        }
    }
}

/// What [`HostNetworking::reconcile`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Reconciled {
    /// Endpoints left alone (already working).
    pub kept: Vec<String>,
    /// Endpoints whose links were made again.
    pub repaired: Vec<String>,
    /// Endpoints removed (ADD never returned, or the pod's namespace is gone).
    pub removed: Vec<String>,
    /// Endpoints kept with their links and addresses although the switch could not program them
    /// yet (a data-plane error): retried by the sync loop, never torn down for it.
    pub degraded: Vec<String>,
    /// Host interfaces deleted that no endpoint owned.
    pub stray_interfaces: Vec<String>,
    /// Program attachments removed whose interface no endpoint owned.
    pub stray_attachments: Vec<String>,
    /// Reserved addresses released that no endpoint owned.
    pub orphan_addresses: usize,
}

/// The service.
#[derive(Debug)]
pub struct HostNetworking {
    store: Store,
    netlink: Netlink,
    switch: Arc<dyn Switch>,
    /// One change at a time (ADDs and DELs of one node are few; ordering them keeps the store,
    /// the links and the switch in step).
    lock: tokio::sync::Mutex<()>,
}

fn spec(ep: &Endpoint) -> LinkSpec<'_> {
    LinkSpec {
        host: &ep.host_interface,
        ifname: &ep.ifname,
        netns: Path::new(&ep.netns),
        ips: &ep.ips,
        mtu: ep.mtu,
        mac: ep.mac.as_deref().and_then(links::parse_mac).unwrap_or_else(|| links::pod_mac(&ep.id)),
    }
}

impl HostNetworking {
    /// The service over `store`, making links through `netlink` and attaching to `switch`.
    pub fn new(store: Store, netlink: Netlink, switch: Arc<dyn Switch>) -> HostNetworking {
        HostNetworking { store, netlink, switch, lock: tokio::sync::Mutex::new(()) }
    }

    /// Every network.
    pub fn networks(&self) -> Result<Vec<Network>, HnsError> {
        Ok(self.store.networks()?)
    }

    /// One network.
    pub fn network(&self, name: &str) -> Result<Network, HnsError> {
        self.networks()?
            .into_iter()
            .find(|n| n.name == name)
            .ok_or_else(|| HnsError::NotFound(format!("network {name:?} does not exist")))
    }

    /// Creates or replaces a network. Endpoints already made keep their addresses.
    pub async fn put_network(&self, n: Network) -> Result<Network, HnsError> {
        n.validate()?;
        let _g = self.lock.lock().await;
        if self.store.networks()?.iter().any(|o| o == &n) {
            return Ok(n);
        }
        let v6 = n.ranges.iter().flatten().any(|r| r.subnet.addr().is_ipv6());
        self.netlink.enable_forwarding(v6)?;
        self.store.put_network(&n)?;
        Ok(n)
    }

    /// Removes a network without endpoints.
    pub async fn delete_network(&self, name: &str) -> Result<(), HnsError> {
        let _g = self.lock.lock().await;
        let n = self.store.endpoints()?.iter().filter(|e| e.network == name).count();
        if n > 0 {
            return Err(HnsError::Conflict(format!("network {name:?} still has {n} endpoints")));
        }
        self.store.delete_network(name)?;
        Ok(())
    }

    /// Every load balancer.
    pub fn load_balancers(&self) -> Result<Vec<crate::objects::LoadBalancer>, HnsError> {
        Ok(self.store.load_balancers()?)
    }

    /// One load balancer.
    pub fn load_balancer(&self, name: &str) -> Result<crate::objects::LoadBalancer, HnsError> {
        self.load_balancers()?
            .into_iter()
            .find(|l| l.name == name)
            .ok_or_else(|| HnsError::NotFound(format!("load balancer {name:?} does not exist")))
    }

    /// Creates or replaces a load balancer, recorded first, then programmed.
    pub async fn put_load_balancer(
        &self,
        lb: crate::objects::LoadBalancer,
    ) -> Result<crate::objects::LoadBalancer, HnsError> {
        lb.validate()?;
        let _g = self.lock.lock().await;
        self.store.put_load_balancer(&lb)?;
        self.switch.load_balancer(&lb.name, Some(&lb))?;
        Ok(lb)
    }

    /// Removes a load balancer; `false` when there was none.
    pub async fn delete_load_balancer(&self, name: &str) -> Result<bool, HnsError> {
        let _g = self.lock.lock().await;
        let existed = self.store.delete_load_balancer(name)?;
        self.switch.load_balancer(name, None)?;
        Ok(existed)
    }

    /// Every endpoint.
    pub fn endpoints(&self) -> Result<Vec<Endpoint>, HnsError> {
        Ok(self.store.endpoints()?)
    }

    /// One endpoint.
    pub fn endpoint(&self, id: &str) -> Result<Endpoint, HnsError> {
        self.endpoints()?
            .into_iter()
            .find(|e| e.id == id)
            .ok_or_else(|| HnsError::NotFound(format!("endpoint {id:?} does not exist")))
    }

    /// Adds a pod's endpoint (CNI ADD). A second ADD of a live attachment fails with
    /// [`HnsError::AttachmentExists`] and changes nothing; an endpoint of the same attachment that
    /// is not live (its ADD never finished, or its namespace or interface is gone) is replaced.
    pub async fn add_endpoint(&self, req: EndpointRequest) -> Result<Endpoint, HnsError> {
        req.validate()?;
        if !Path::new(&req.netns).exists() {
            return Err(HnsError::Invalid(FieldError::new(
                "netns",
                format!("{} does not exist (has the container stopped?)", req.netns),
            )));
        }
        let node_addresses = self.switch.node_addresses();
        for (i, p) in req.policies.iter().enumerate() {
            if let Policy::PortMapping { host_ip: Some(ip), .. } = p {
                // Loopback is the node's own too (`podman run -p 127.0.0.1:8081:80`): served to
                // the node's own clients only.
                if !ip.is_loopback() && !node_addresses.contains(ip) {
                    return Err(HnsError::Invalid(FieldError::new(
                        format!("policies[{i}].hostIP"),
                        format!("{ip} is not an address of this node ({node_addresses:?}, or loopback)"),
                    )));
                }
            }
        }
        let _g = self.lock.lock().await;
        let network = self.network(&req.network)?;
        let id = Endpoint::id_of(&req.network, &req.container_id, &req.ifname);
        if let Some(old) = self.store.endpoints()?.into_iter().find(|e| e.id == id) {
            // The spec forbids a runtime to ADD an attachment twice without a DEL between, and the
            // reference plugins fail such an ADD (bridge: the interface already exists; host-local:
            // "duplicate allocation is not allowed"): so does this one, touching nothing. Replacing
            // it would give a running pod a new address under its feet; answering the old result
            // again would hide the runtime's mistake, and could not honour a request that differs
            // (another namespace, other port mappings). What is not live is a leftover, replaced.
            if self.is_live(&old).await? {
                return Err(HnsError::AttachmentExists(format!(
                    "container {:?} already has interface {:?} on network {:?} (endpoint {id}, addresses {}, \
                     in {}): a second ADD without a DEL between is refused, the pod keeps its network",
                    req.container_id,
                    req.ifname,
                    req.network,
                    old.ips.iter().map(|i| i.address.addr().to_string()).collect::<Vec<_>>().join(", "),
                    old.netns,
                )));
            }
            tracing::info!(endpoint = %id, state = ?old.state, "ADD for an attachment left half made: replacing it");
            self.teardown(&old).await?;
        }
        let sets = match &req.ip_ranges {
            Some(r) => r.clone(),
            None => self.ranges_of(&network)?,
        };
        let dns = network.dns.for_pod(
            req.dns.as_ref(),
            req.pod.as_ref().map(|p| p.namespace.as_str()),
            network.cluster_domain(),
        );
        let mut policies: Vec<Policy> = network.policies.clone();
        policies.extend(req.policies.iter().cloned());
        let ep = Endpoint {
            host_interface: links::host_interface_name(&id),
            id,
            network: req.network.clone(),
            container_id: req.container_id.clone(),
            ifname: req.ifname.clone(),
            netns: req.netns.clone(),
            pod: req.pod.clone(),
            ips: Vec::new(),
            mac: None,
            mtu: network.mtu,
            dns,
            policies,
            state: EndpointState::Creating,
        };
        let t0 = std::time::Instant::now();
        let mut ep = self.store.reserve(ep, &sets)?;
        ep.mac = Some(links::mac_string(links::pod_mac(&ep.id)));
        let t_reserve = t0.elapsed();
        let made = match self.netlink.create_pair(&spec(&ep)).await {
            Ok(m) => m,
            Err(e) => {
                self.store.remove_endpoint(&ep.id)?;
                return Err(e.into());
            }
        };
        // Bound first, then the program attached, then the pod's side configured and set up: the
        // pod's first packet already meets the switch, as the endpoint and nothing else.
        let result = async {
            self.switch.attach(&ep, made)?;
            let t_switch = t0.elapsed();
            self.switch.attach_program(&ep)?;
            let t_program = t0.elapsed();
            self.netlink.configure(&spec(&ep), made.host_ifindex).await?;
            Ok::<_, HnsError>((t_switch, t_program))
        }
        .await;
        let (t_switch, t_program) = match result {
            Ok(t) => t,
            Err(e) => {
                let _ = self.switch.detach(&ep, Some(made.host_ifindex));
                let _ = self.netlink.delete(&ep.host_interface).await;
                self.store.remove_endpoint(&ep.id)?;
                return Err(e);
            }
        };
        let t_links = t0.elapsed();
        ep.state = EndpointState::Ready;
        if let Err(e) = self.store.put_endpoint(&ep) {
            let _ = self.teardown(&ep).await;
            return Err(e.into());
        }
        tracing::debug!(
            endpoint = %ep.id,
            reserve = ?t_reserve,
            switch = ?(t_switch - t_reserve),
            program = ?(t_program - t_switch),
            links = ?(t_links - t_program),
            record = ?(t0.elapsed() - t_links),
            "endpoint added"
        );
        Ok(ep)
    }

    /// Whether a recorded endpoint is live: its ADD finished, its pod's namespace exists, and its
    /// veth does (the host side is enough: the pair lives and dies as one, and goes with the
    /// namespace).
    async fn is_live(&self, ep: &Endpoint) -> Result<bool, HnsError> {
        Ok(ep.state == EndpointState::Ready
            && Path::new(&ep.netns).exists()
            && self.netlink.host_ifindex(&ep.host_interface).await?.is_some())
    }

    /// Removes an endpoint (CNI DEL): idempotent; `None` when there was nothing to remove.
    pub async fn delete_endpoint(&self, id: &str) -> Result<Option<Endpoint>, HnsError> {
        let _g = self.lock.lock().await;
        match self.store.endpoints()?.into_iter().find(|e| e.id == id) {
            Some(ep) => {
                self.teardown(&ep).await?;
                Ok(Some(ep))
            }
            None => {
                // No record: an interface of this attachment can only be a leftover.
                self.netlink.delete(&links::host_interface_name(id)).await?;
                Ok(None)
            }
        }
    }

    /// Removes an endpoint: its links first (the pod cannot send any more, whatever fails after),
    /// then its place in the switch, then its record and addresses.
    async fn teardown(&self, ep: &Endpoint) -> Result<(), HnsError> {
        let ifindex = self.netlink.host_ifindex(&ep.host_interface).await?;
        self.netlink.delete(&ep.host_interface).await?;
        self.switch.detach(ep, ifindex)?;
        self.store.remove_endpoint(&ep.id)?;
        Ok(())
    }

    /// Checks an endpoint (CNI CHECK): the record, the links, the addresses and routes in the pod,
    /// and its place in the switch. Every problem found, or the endpoint when there is none.
    pub async fn check_endpoint(&self, id: &str) -> Result<Result<Endpoint, Vec<String>>, HnsError> {
        let ep = self.endpoint(id)?;
        let mut problems = Vec::new();
        if ep.state != EndpointState::Ready {
            problems.push(format!("endpoint {id} is still being created"));
        }
        let mac = ep.mac.as_deref().and_then(links::parse_mac);
        problems.extend(self.netlink.check(&spec(&ep), mac).await);
        if let Some(ifindex) = self.netlink.host_ifindex(&ep.host_interface).await? {
            problems.extend(self.switch.check(&ep, ifindex));
        }
        Ok(if problems.is_empty() { Ok(ep) } else { Err(problems) })
    }

    /// Garbage collection (CNI GC): removes the endpoints of `network` whose attachment
    /// (container id, interface) is not in `valid`, and releases addresses nobody holds. Returns
    /// the ids removed.
    pub async fn gc(&self, network: &str, valid: &BTreeSet<(String, String)>) -> Result<Vec<String>, HnsError> {
        let _g = self.lock.lock().await;
        let stale: Vec<Endpoint> = self
            .store
            .endpoints()?
            .into_iter()
            .filter(|e| e.network == network && !valid.contains(&(e.container_id.clone(), e.ifname.clone())))
            .collect();
        let mut removed = Vec::new();
        for ep in stale {
            self.teardown(&ep).await?;
            removed.push(ep.id);
        }
        self.store.release_orphans()?;
        Ok(removed)
    }

    /// The range sets a network hands addresses out of: its own, or (`usePodCIDR`) one per podCIDR
    /// of the node.
    fn ranges_of(&self, network: &Network) -> Result<Vec<Vec<crate::IpRange>>, HnsError> {
        if !network.use_pod_cidr {
            return Ok(network.ranges.clone());
        }
        let cidrs = self.switch.pod_cidrs();
        if cidrs.is_empty() {
            return Err(SwitchError::NotReady(format!(
                "network {:?} takes its ranges from the node's podCIDRs, and the node has none yet",
                network.name
            ))
            .into());
        }
        let sets: Vec<Vec<crate::IpRange>> = cidrs
            .into_iter()
            .map(|subnet| vec![crate::IpRange { subnet, range_start: None, range_end: None, gateway: None }])
            .collect();
        crate::objects::validate_ranges(&sets, "the node's podCIDRs")?;
        Ok(sets)
    }

    /// Whether ADD can succeed on `network` (CNI STATUS): it exists and every range set has a free
    /// address. The problem when not.
    pub fn status(&self, network: &str) -> Result<Result<(), String>, HnsError> {
        let n = self.network(network)?;
        let used = self.store.addresses(network)?;
        let ranges = match self.ranges_of(&n) {
            Ok(r) => r,
            Err(HnsError::Switch(SwitchError::NotReady(why))) => return Ok(Err(why)),
            Err(e) => return Ok(Err(e.to_string())),
        };
        for (i, set) in ranges.iter().enumerate() {
            let in_set = used.iter().filter(|(ip, _)| set.iter().any(|r| r.subnet.contains(ip))).count() as u128;
            if in_set >= crate::ipam::capacity(set) {
                let ranges: Vec<String> = set.iter().map(|r| r.subnet.to_string()).collect();
                return Ok(Err(format!(
                    "network {network:?}: range set {i} ({}) has no free address",
                    ranges.join(", ")
                )));
            }
        }
        Ok(Ok(()))
    }

    /// Restores one recorded endpoint; its host interface when it stays.
    async fn reconcile_endpoint(&self, mut ep: Endpoint, done: &mut Reconciled) -> Result<Option<String>, HnsError> {
        if ep.state != EndpointState::Ready || !Path::new(&ep.netns).exists() {
            self.teardown(&ep).await?;
            done.removed.push(ep.id);
            return Ok(None);
        }
        let mac = ep.mac.as_deref().and_then(links::parse_mac);
        let problems = self.netlink.check(&spec(&ep), mac).await;
        match (problems.is_empty(), self.netlink.host_ifindex(&ep.host_interface).await?, mac) {
            (true, Some(host_ifindex), Some(mac)) => {
                // Bound, then its program (re)attached: a pinned link of the last run is
                // switched to this run's program without a gap. A switch that cannot program it
                // now costs the pod nothing it has: its links and address stay, and the sync
                // loop retries what the data plane did not take.
                let attached = self.switch.attach(&ep, Made { host_ifindex, mac });
                self.switch.attach_program(&ep)?;
                match attached {
                    Ok(()) => done.kept.push(ep.id.clone()),
                    Err(e) => {
                        tracing::warn!(endpoint = %ep.id, error = %e, "endpoint kept; the switch retries programming it");
                        done.degraded.push(ep.id.clone());
                    }
                }
            }
            (_, old, _) => {
                tracing::info!(endpoint = %ep.id, ?problems, "making the endpoint's links again");
                if let Some(old) = old {
                    self.switch.detach(&ep, Some(old))?;
                }
                // As ADD does: the pair (pod side down), bound, program attached, then up.
                let made = self.netlink.create_pair(&spec(&ep)).await?;
                self.switch.attach(&ep, made)?;
                self.switch.attach_program(&ep)?;
                self.netlink.configure(&spec(&ep), made.host_ifindex).await?;
                ep.mac = Some(links::mac_string(made.mac));
                self.store.put_endpoint(&ep)?;
                done.repaired.push(ep.id.clone());
            }
        }
        Ok(Some(ep.host_interface))
    }

    /// Makes the kernel match the record (at start): see the module's documentation.
    pub async fn reconcile(&self) -> Result<Reconciled, HnsError> {
        let _g = self.lock.lock().await;
        let mut done = Reconciled::default();
        for lb in self.store.load_balancers()? {
            self.switch.load_balancer(&lb.name, Some(&lb))?;
        }
        let mut owned = BTreeSet::new();
        for ep in self.store.endpoints()? {
            let id = ep.id.clone();
            match self.reconcile_endpoint(ep, &mut done).await {
                Ok(Some(host)) => {
                    owned.insert(host);
                }
                Ok(None) => {}
                Err(e) => {
                    // One broken endpoint does not hold the others back, and is not torn down
                    // for it: a running pod loses its network only by DEL, GC or its namespace
                    // going. What stands is kept (its record, address and links); its pod's next
                    // CHECK names the problem, and the runtime decides.
                    tracing::warn!(endpoint = %id, error = %e, "cannot fully restore the endpoint; keeping it");
                    if let Some(ep) = self.store.endpoints()?.into_iter().find(|e| e.id == id) {
                        owned.insert(ep.host_interface);
                    }
                    done.degraded.push(id);
                }
            }
        }
        for (name, _) in self.netlink.host_interfaces().await? {
            if !owned.contains(&name) {
                self.netlink.delete(&name).await?;
                done.stray_interfaces.push(name);
            }
        }
        // Attachments of interfaces that are gone, or named as ours and not recorded; an
        // interface someone else named and attached is left alone.
        let present = self.netlink.interface_names().await?;
        done.stray_attachments = self.switch.sweep(&|iface: &str| {
            !owned.contains(iface) && (!present.contains(iface) || links::is_host_interface_name(iface))
        });
        done.orphan_addresses = self.store.release_orphans()?;
        Ok(done)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A switch that takes everything (only the service's own decisions are under test).
    #[derive(Debug)]
    struct NoSwitch;

    impl Switch for NoSwitch {
        fn attach(&self, _: &Endpoint, _: Made) -> Result<(), SwitchError> {
            Ok(())
        }
        fn attach_program(&self, _: &Endpoint) -> Result<(), SwitchError> {
            Ok(())
        }
        fn sweep(&self, _: &dyn Fn(&str) -> bool) -> Vec<String> {
            Vec::new()
        }
        fn pod_cidrs(&self) -> Vec<ipnet::IpNet> {
            Vec::new()
        }
        fn node_addresses(&self) -> Vec<std::net::IpAddr> {
            Vec::new()
        }
        fn load_balancer(&self, _: &str, _: Option<&crate::objects::LoadBalancer>) -> Result<(), SwitchError> {
            Ok(())
        }
        fn detach(&self, _: &Endpoint, _: Option<u32>) -> Result<(), SwitchError> {
            Ok(())
        }
        fn check(&self, _: &Endpoint, _: u32) -> Vec<String> {
            Vec::new()
        }
    }

    fn endpoint(state: EndpointState, netns: &str, host_interface: &str) -> Endpoint {
        Endpoint {
            id: "n/c/eth0".into(),
            network: "n".into(),
            container_id: "c".into(),
            ifname: "eth0".into(),
            netns: netns.into(),
            pod: None,
            ips: Vec::new(),
            mac: None,
            host_interface: host_interface.into(),
            mtu: None,
            dns: crate::Dns::default(),
            policies: Vec::new(),
            state,
        }
    }

    /// Only a finished endpoint whose namespace and veth exist counts as live (a second ADD of it
    /// is refused); an ADD that never finished, a namespace or an interface that is gone leaves a
    /// leftover a new ADD replaces. (Reads links of the test's own namespace; changes nothing.)
    #[test]
    fn only_a_finished_endpoint_with_its_namespace_and_veth_is_live() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(&dir.path().join("s.redb")).unwrap();
            let hns = HostNetworking::new(store, Netlink::connect().unwrap(), Arc::new(NoSwitch));
            let ns = "/proc/self/ns/net";
            // ("lo" stands for a host interface that exists.)
            assert!(hns.is_live(&endpoint(EndpointState::Ready, ns, "lo")).await.unwrap());
            assert!(!hns.is_live(&endpoint(EndpointState::Creating, ns, "lo")).await.unwrap(), "ADD never finished");
            let gone = endpoint(EndpointState::Ready, "/run/netns/flowgate-no-such-ns", "lo");
            assert!(!hns.is_live(&gone).await.unwrap(), "namespace gone");
            let no_veth = endpoint(EndpointState::Ready, ns, &links::host_interface_name("n/none/eth0"));
            assert!(!hns.is_live(&no_veth).await.unwrap(), "interface gone");
        });
    }
}
