//! The change tracker: applies source events to the current cluster state and records, per object,
//! its state at the last sync (`previous`) so that the sync sees only real changes — an object
//! changed and changed back is no change at all (kube-proxy's `{previous, current}` tracking).
//! Handlers only record; the sync loop takes the changes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use flowgate_cluster::{ClusterState, LocalEndpoint, LocalLoadBalancer, ObjectKey};
use flowgate_compiler::Changes;

use crate::sources::{Kind, Object, ObjectName, SourceEvent};

/// The annotation the EndpointSlice controller sets to the time of the change that triggered it.
pub const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// Current state plus what changed since the last sync.
#[derive(Debug)]
pub struct Tracker {
    state: ClusterState,
    /// Kinds that must have been listed once before the first sync.
    needed: BTreeSet<Kind>,
    listed: BTreeSet<Kind>,
    /// Objects changed since the last sync, with their value at that sync.
    previous: BTreeMap<(Kind, ObjectName), Option<Object>>,
    /// The configuration documents changed since the last sync.
    config_changed: bool,
    /// Local endpoints (host networking service) changed since the last sync.
    local_changed: BTreeSet<ObjectKey>,
    /// Local load balancers changed since the last sync.
    local_lb_changed: BTreeSet<String>,
    /// Trigger times of EndpointSlice changes not yet programmed.
    trigger_times: Vec<SystemTime>,
    /// The last source error, if the source has not recovered since.
    pub last_error: Option<String>,
    /// The configuration the agent was started with (`--config`): in force unless a snapshot
    /// (a manifest directory) brings its own document of the same kind.
    base_config: (Option<flowgate_cluster::KubeProxyConfiguration>, Option<flowgate_cluster::FlowgateConfiguration>),
}

impl Tracker {
    /// A tracker that waits for `needed` kinds to be listed before it is ready.
    pub fn new(needed: impl IntoIterator<Item = Kind>, base: ClusterState) -> Tracker {
        Tracker {
            base_config: (base.kube_proxy.clone(), base.flowgate.clone()),
            state: base,
            needed: needed.into_iter().collect(),
            listed: BTreeSet::new(),
            previous: BTreeMap::new(),
            config_changed: false,
            local_changed: BTreeSet::new(),
            local_lb_changed: BTreeSet::new(),
            trigger_times: Vec::new(),
            last_error: None,
        }
    }

    /// The current cluster state.
    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    /// Whether every needed kind has been listed once.
    pub fn ready(&self) -> bool {
        self.needed.is_subset(&self.listed)
    }

    /// Whether anything changed since the last [`Tracker::take_changes`] (before no-op filtering).
    pub fn pending(&self) -> bool {
        !self.previous.is_empty()
            || self.config_changed
            || !self.local_changed.is_empty()
            || !self.local_lb_changed.is_empty()
    }

    /// Records an endpoint the host networking service made (`Some`) or removed (`None`).
    /// Returns whether it changed anything.
    pub fn set_local_endpoint(&mut self, key: ObjectKey, endpoint: Option<LocalEndpoint>) -> bool {
        let changed = match endpoint {
            Some(e) => self.state.local_endpoints.insert(key.clone(), e.clone()).as_ref() != Some(&e),
            None => self.state.local_endpoints.remove(&key).is_some(),
        };
        if changed {
            self.local_changed.insert(key);
        }
        changed
    }

    /// Applies one event. Returns whether it may have changed anything.
    pub fn handle(&mut self, event: SourceEvent) -> bool {
        match event {
            SourceEvent::Apply(o) => {
                self.last_error = None;
                self.put(o.kind(), o.name(), Some(o))
            }
            SourceEvent::Delete(kind, name) => {
                self.last_error = None;
                self.put(kind, name, None)
            }
            SourceEvent::Replace(kind, objects) => {
                self.last_error = None;
                let changed = self.replace_kind(kind, objects);
                // The first list makes a kind ready: that alone is worth a sync.
                changed || self.ready()
            }
            SourceEvent::Snapshot(new) => {
                self.last_error = None;
                let mut new = *new;
                let mut changed = false;
                for kind in Kind::ALL {
                    changed |= self.replace_kind(kind, take_objects(&mut new, kind));
                }
                let kube_proxy = new.kube_proxy.or_else(|| self.base_config.0.clone());
                let flowgate = new.flowgate.or_else(|| self.base_config.1.clone());
                if kube_proxy != self.state.kube_proxy || flowgate != self.state.flowgate {
                    self.state.kube_proxy = kube_proxy;
                    self.state.flowgate = flowgate;
                    self.config_changed = true;
                    changed = true;
                }
                changed || self.ready()
            }
            SourceEvent::Error(e) => {
                self.last_error = Some(e);
                false
            }
        }
    }

    /// Records a load balancer of the host networking service (`Some`) or its removal (`None`).
    /// Returns whether it changed anything.
    pub fn set_local_load_balancer(&mut self, name: &str, lb: Option<LocalLoadBalancer>) -> bool {
        let changed = match lb {
            Some(l) => self.state.local_load_balancers.insert(name.to_owned(), l.clone()).as_ref() != Some(&l),
            None => self.state.local_load_balancers.remove(name).is_some(),
        };
        if changed {
            self.local_lb_changed.insert(name.to_owned());
        }
        changed
    }

    /// Takes what changed since the last call, dropping objects that are back to where they were,
    /// and the trigger times of the EndpointSlice changes among them.
    pub fn take_changes(&mut self) -> (Changes, Vec<SystemTime>) {
        let mut c = Changes {
            config: std::mem::take(&mut self.config_changed),
            local_endpoints: std::mem::take(&mut self.local_changed),
            local_load_balancers: std::mem::take(&mut self.local_lb_changed),
            ..Changes::default()
        };
        for ((kind, name), previous) in std::mem::take(&mut self.previous) {
            let current = self.get(kind, &name);
            if same(previous.as_ref(), current.as_ref()) {
                continue;
            }
            let key = ObjectKey::new(name.namespace.clone(), name.name.clone());
            match kind {
                Kind::Node => {
                    c.nodes.insert(name.name);
                }
                Kind::Namespace => {
                    c.namespaces.insert(name.name);
                }
                Kind::Pod => {
                    c.pods.insert(key);
                }
                Kind::Service => {
                    c.services.insert(key);
                }
                Kind::EndpointSlice => {
                    c.endpoint_slices.insert(key);
                }
                Kind::NetworkPolicy => {
                    c.network_policies.insert(key);
                }
                Kind::ServiceCidr => c.service_cidrs = true,
            }
        }
        (c, std::mem::take(&mut self.trigger_times))
    }

    /// Makes `objects` the whole of `kind` (a list): puts each, deletes the ones not among them, and
    /// marks the kind listed. Returns whether any object changed.
    fn replace_kind(&mut self, kind: Kind, objects: Vec<Object>) -> bool {
        self.listed.insert(kind);
        let mut changed = false;
        let mut keep: BTreeSet<ObjectName> = BTreeSet::new();
        for o in objects {
            keep.insert(o.name());
            changed |= self.put(kind, o.name(), Some(o));
        }
        for name in self.names(kind) {
            if !keep.contains(&name) {
                changed |= self.put(kind, name, None);
            }
        }
        changed
    }

    /// Records the value of one object; remembers its value at the last sync on its first change.
    fn put(&mut self, kind: Kind, name: ObjectName, value: Option<Object>) -> bool {
        let current = self.get(kind, &name);
        if same(current.as_ref(), value.as_ref()) {
            return false;
        }
        if let Some(Object::EndpointSlice(s)) = &value {
            if let Some(t) = s.metadata.annotations.as_ref().and_then(|a| a.get(TRIGGER_TIME_ANNOTATION)) {
                if let Ok(ts) = t.parse::<jiff::Timestamp>() {
                    self.trigger_times.push(SystemTime::from(ts));
                }
            }
        }
        self.previous.entry((kind, name.clone())).or_insert(current);
        let key = ObjectKey::new(name.namespace, name.name.clone());
        let s = &mut self.state;
        match value {
            Some(Object::Node(o)) => {
                s.nodes.insert(name.name, *o);
            }
            Some(Object::Namespace(o)) => {
                s.namespaces.insert(name.name, *o);
            }
            Some(Object::Pod(o)) => {
                s.pods.insert(key, *o);
            }
            Some(Object::Service(o)) => {
                s.services.insert(key, *o);
            }
            Some(Object::EndpointSlice(o)) => {
                s.endpoint_slices.insert(key, *o);
            }
            Some(Object::NetworkPolicy(o)) => {
                s.network_policies.insert(key, *o);
            }
            Some(Object::ServiceCidr(o)) => {
                s.service_cidrs.insert(name.name, *o);
            }
            None => match kind {
                Kind::Node => {
                    s.nodes.remove(&name.name);
                }
                Kind::Namespace => {
                    s.namespaces.remove(&name.name);
                }
                Kind::Pod => {
                    s.pods.remove(&key);
                }
                Kind::Service => {
                    s.services.remove(&key);
                }
                Kind::EndpointSlice => {
                    s.endpoint_slices.remove(&key);
                }
                Kind::NetworkPolicy => {
                    s.network_policies.remove(&key);
                }
                Kind::ServiceCidr => {
                    s.service_cidrs.remove(&name.name);
                }
            },
        }
        true
    }

    fn get(&self, kind: Kind, name: &ObjectName) -> Option<Object> {
        let s = &self.state;
        let key = || ObjectKey::new(name.namespace.clone(), name.name.clone());
        match kind {
            Kind::Node => s.nodes.get(&name.name).map(|o| Object::Node(Box::new(o.clone()))),
            Kind::Namespace => s.namespaces.get(&name.name).map(|o| Object::Namespace(Box::new(o.clone()))),
            Kind::Pod => s.pods.get(&key()).map(|o| Object::Pod(Box::new(o.clone()))),
            Kind::Service => s.services.get(&key()).map(|o| Object::Service(Box::new(o.clone()))),
            Kind::EndpointSlice => s.endpoint_slices.get(&key()).map(|o| Object::EndpointSlice(Box::new(o.clone()))),
            Kind::NetworkPolicy => s.network_policies.get(&key()).map(|o| Object::NetworkPolicy(Box::new(o.clone()))),
            Kind::ServiceCidr => s.service_cidrs.get(&name.name).map(|o| Object::ServiceCidr(Box::new(o.clone()))),
        }
    }

    fn names(&self, kind: Kind) -> Vec<ObjectName> {
        let s = &self.state;
        let ns = |k: &ObjectKey| ObjectName { namespace: k.namespace.clone(), name: k.name.clone() };
        let cl = |n: &String| ObjectName { namespace: String::new(), name: n.clone() };
        match kind {
            Kind::Node => s.nodes.keys().map(cl).collect(),
            Kind::Namespace => s.namespaces.keys().map(cl).collect(),
            Kind::Pod => s.pods.keys().map(ns).collect(),
            Kind::Service => s.services.keys().map(ns).collect(),
            Kind::EndpointSlice => s.endpoint_slices.keys().map(ns).collect(),
            Kind::NetworkPolicy => s.network_policies.keys().map(ns).collect(),
            Kind::ServiceCidr => s.service_cidrs.keys().map(cl).collect(),
        }
    }
}

/// Whether two versions of an object are the same for flowgate. The resourceVersion and
/// managedFields change on every write, including ones that change nothing flowgate reads.
fn same(a: Option<&Object>, b: Option<&Object>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => normalized(a) == normalized(b),
        _ => false,
    }
}

fn normalized(o: &Object) -> serde_json::Value {
    let mut v = match o {
        Object::Node(x) => serde_json::to_value(x),
        Object::Namespace(x) => serde_json::to_value(x),
        Object::Pod(x) => serde_json::to_value(x),
        Object::Service(x) => serde_json::to_value(x),
        Object::EndpointSlice(x) => serde_json::to_value(x),
        Object::NetworkPolicy(x) => serde_json::to_value(x),
        Object::ServiceCidr(x) => serde_json::to_value(x),
    }
    .unwrap_or(serde_json::Value::Null);
    if let Some(m) = v.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        for f in ["resourceVersion", "managedFields", "generation", "uid", "creationTimestamp"] {
            m.remove(f);
        }
    }
    if let (Object::Node(_), Some(st)) = (o, v.get_mut("status").and_then(|s| s.as_object_mut())) {
        // Heartbeats rewrite node conditions every few seconds; flowgate reads none of them.
        for f in [
            "conditions",
            "images",
            "volumesInUse",
            "volumesAttached",
            "daemonEndpoints",
            "nodeInfo",
            "capacity",
            "allocatable",
        ] {
            st.remove(f);
        }
    }
    v
}

/// Moves every object of one kind out of a state.
fn take_objects(s: &mut ClusterState, kind: Kind) -> Vec<Object> {
    match kind {
        Kind::Node => std::mem::take(&mut s.nodes).into_values().map(|o| Object::Node(Box::new(o))).collect(),
        Kind::Namespace => {
            std::mem::take(&mut s.namespaces).into_values().map(|o| Object::Namespace(Box::new(o))).collect()
        }
        Kind::Pod => std::mem::take(&mut s.pods).into_values().map(|o| Object::Pod(Box::new(o))).collect(),
        Kind::Service => std::mem::take(&mut s.services).into_values().map(|o| Object::Service(Box::new(o))).collect(),
        Kind::EndpointSlice => {
            std::mem::take(&mut s.endpoint_slices).into_values().map(|o| Object::EndpointSlice(Box::new(o))).collect()
        }
        Kind::NetworkPolicy => {
            std::mem::take(&mut s.network_policies).into_values().map(|o| Object::NetworkPolicy(Box::new(o))).collect()
        }
        Kind::ServiceCidr => {
            std::mem::take(&mut s.service_cidrs).into_values().map(|o| Object::ServiceCidr(Box::new(o))).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowgate_cluster::k8s_openapi::api::core::v1::{Service, ServiceSpec};
    use flowgate_cluster::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn svc(name: &str, ip: &str, rv: &str) -> Object {
        Object::Service(Box::new(Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                resource_version: Some(rv.into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec { cluster_ip: Some(ip.into()), ..Default::default() }),
            status: None,
        }))
    }

    fn name(n: &str) -> ObjectName {
        ObjectName { namespace: "ns".into(), name: n.into() }
    }

    #[test]
    fn the_started_configuration_stays_unless_a_snapshot_brings_its_own() {
        let kp =
            |h: &str| flowgate_cluster::KubeProxyConfiguration { hostname_override: h.into(), ..Default::default() };
        let base = ClusterState { kube_proxy: Some(kp("from-config")), ..ClusterState::default() };
        let mut t = Tracker::new([Kind::Service], base);
        t.handle(SourceEvent::Snapshot(Box::default()));
        assert_eq!(t.state().kube_proxy.as_ref().map(|k| k.hostname_override.as_str()), Some("from-config"));
        let own = ClusterState { kube_proxy: Some(kp("from-manifests")), ..ClusterState::default() };
        t.handle(SourceEvent::Snapshot(Box::new(own)));
        assert_eq!(t.state().kube_proxy.as_ref().map(|k| k.hostname_override.as_str()), Some("from-manifests"));
        t.handle(SourceEvent::Snapshot(Box::default()));
        assert_eq!(t.state().kube_proxy.as_ref().map(|k| k.hostname_override.as_str()), Some("from-config"));
    }

    #[test]
    fn not_ready_until_every_kind_is_listed() {
        let mut t = Tracker::new([Kind::Service, Kind::Pod], ClusterState::default());
        assert!(!t.ready());
        t.handle(SourceEvent::Replace(Kind::Service, vec![svc("a", "172.30.0.1", "1")]));
        assert!(!t.ready());
        assert!(t.handle(SourceEvent::Replace(Kind::Pod, vec![])), "becoming ready is worth a sync");
        assert!(t.ready());
        let (c, _) = t.take_changes();
        assert_eq!(c.services.len(), 1);
    }

    #[test]
    fn changes_that_cancel_out_are_dropped() {
        let mut t = Tracker::new([Kind::Service], ClusterState::default());
        t.handle(SourceEvent::Replace(Kind::Service, vec![svc("a", "172.30.0.1", "1")]));
        t.take_changes();
        t.handle(SourceEvent::Apply(svc("a", "172.30.0.2", "2")));
        t.handle(SourceEvent::Apply(svc("a", "172.30.0.1", "3")));
        assert!(t.pending());
        let (c, _) = t.take_changes();
        assert!(c.is_empty(), "A -> B -> A is no change: {c:?}");
        // Only the resourceVersion changed: not even recorded.
        assert!(!t.handle(SourceEvent::Apply(svc("a", "172.30.0.1", "4"))));
        // Added then deleted before a sync: nothing.
        t.handle(SourceEvent::Apply(svc("b", "172.30.0.9", "5")));
        t.handle(SourceEvent::Delete(Kind::Service, name("b")));
        assert!(t.take_changes().0.is_empty());
    }

    #[test]
    fn a_relist_deletes_what_is_gone() {
        let mut t = Tracker::new([Kind::Service], ClusterState::default());
        t.handle(SourceEvent::Replace(Kind::Service, vec![svc("a", "172.30.0.1", "1"), svc("b", "172.30.0.2", "1")]));
        t.take_changes();
        t.handle(SourceEvent::Replace(Kind::Service, vec![svc("b", "172.30.0.2", "7")]));
        let (c, _) = t.take_changes();
        assert_eq!(c.services.into_iter().map(|k| k.name).collect::<Vec<_>>(), vec!["a"]);
        assert!(!t.state().services.contains_key(&ObjectKey::new("ns", "a")));
    }

    #[test]
    fn errors_keep_the_state_and_are_reported() {
        let mut t = Tracker::new([Kind::Service], ClusterState::default());
        t.handle(SourceEvent::Replace(Kind::Service, vec![svc("a", "172.30.0.1", "1")]));
        assert!(!t.handle(SourceEvent::Error("x.yaml: document 0: ...".into())));
        assert_eq!(t.last_error.as_deref(), Some("x.yaml: document 0: ..."));
        assert_eq!(t.state().services.len(), 1);
    }
}
