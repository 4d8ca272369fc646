//! Sources of cluster state, behind one trait: the Kubernetes API ([`kube`]) or a directory of
//! manifests ([`manifests`]). A source only reports what it sees, as [`SourceEvent`]s on a channel;
//! the change tracker turns them into state and changes.

pub mod kube;
pub mod manifests;

use std::fmt;

use flowgate_cluster::k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use flowgate_cluster::k8s_openapi::api::discovery::v1::EndpointSlice;
use flowgate_cluster::k8s_openapi::api::networking::v1::{NetworkPolicy, ServiceCIDR};
use flowgate_cluster::ClusterState;
use futures::future::BoxFuture;
use tokio::sync::mpsc;

/// The kinds of object flowgate watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// v1 Node.
    Node,
    /// v1 Namespace.
    Namespace,
    /// v1 Pod.
    Pod,
    /// v1 Service.
    Service,
    /// discovery.k8s.io/v1 EndpointSlice.
    EndpointSlice,
    /// networking.k8s.io/v1 NetworkPolicy.
    NetworkPolicy,
    /// networking.k8s.io/v1 ServiceCIDR.
    ServiceCidr,
}

impl Kind {
    /// Every kind, in the order they are listed.
    pub const ALL: [Kind; 7] = [
        Kind::Node,
        Kind::Namespace,
        Kind::ServiceCidr,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Pod,
        Kind::NetworkPolicy,
    ];

    /// The API group, resource (plural) and whether it is namespaced, as RBAC names them.
    pub fn resource(self) -> (&'static str, &'static str, bool) {
        match self {
            Kind::Node => ("", "nodes", false),
            Kind::Namespace => ("", "namespaces", false),
            Kind::Pod => ("", "pods", true),
            Kind::Service => ("", "services", true),
            Kind::EndpointSlice => ("discovery.k8s.io", "endpointslices", true),
            Kind::NetworkPolicy => ("networking.k8s.io", "networkpolicies", true),
            Kind::ServiceCidr => ("networking.k8s.io", "servicecidrs", false),
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.resource().1)
    }
}

/// One object of a watched kind.
#[derive(Clone, Debug)]
pub enum Object {
    /// A Node.
    Node(Box<Node>),
    /// A Namespace.
    Namespace(Box<Namespace>),
    /// A Pod.
    Pod(Box<Pod>),
    /// A Service.
    Service(Box<Service>),
    /// An EndpointSlice.
    EndpointSlice(Box<EndpointSlice>),
    /// A NetworkPolicy.
    NetworkPolicy(Box<NetworkPolicy>),
    /// A ServiceCIDR.
    ServiceCidr(Box<ServiceCIDR>),
}

impl Object {
    /// The object's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Object::Node(_) => Kind::Node,
            Object::Namespace(_) => Kind::Namespace,
            Object::Pod(_) => Kind::Pod,
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::NetworkPolicy(_) => Kind::NetworkPolicy,
            Object::ServiceCidr(_) => Kind::ServiceCidr,
        }
    }

    /// The object's metadata.
    pub fn meta(&self) -> &flowgate_cluster::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        match self {
            Object::Node(o) => &o.metadata,
            Object::Namespace(o) => &o.metadata,
            Object::Pod(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::NetworkPolicy(o) => &o.metadata,
            Object::ServiceCidr(o) => &o.metadata,
        }
    }

    /// Namespace (empty for cluster-scoped kinds) and name.
    pub fn name(&self) -> ObjectName {
        let m = self.meta();
        let namespaced = self.kind().resource().2;
        ObjectName {
            namespace: if namespaced {
                m.namespace.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| "default".into())
            } else {
                String::new()
            },
            name: m.name.clone().unwrap_or_default(),
        }
    }
}

/// Namespace and name of an object; the namespace is empty for cluster-scoped kinds.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectName {
    /// Namespace, or empty.
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// What a source reports.
#[derive(Debug)]
pub enum SourceEvent {
    /// The complete set of objects of one kind (an initial list, or a relist after the watch was
    /// lost): whatever of this kind is not in it is gone. The first `Replace` of every kind a
    /// source serves makes that kind ready.
    Replace(Kind, Vec<Object>),
    /// An object was added or changed.
    Apply(Object),
    /// An object was deleted.
    Delete(Kind, ObjectName),
    /// The whole state at once (the manifest directory): every kind and the configuration
    /// documents, replacing everything.
    Snapshot(Box<ClusterState>),
    /// The source hit a problem it will retry by itself (watch error, malformed manifest); the
    /// last good state stays in force.
    Error(String),
}

/// A source of cluster state.
pub trait Source: Send + 'static {
    /// A short name for logs and metrics (`kubernetes`, `manifests`).
    fn name(&self) -> &'static str;

    /// Runs the source, sending events until the receiver is dropped.
    fn run(self: Box<Self>, tx: mpsc::Sender<SourceEvent>) -> BoxFuture<'static, ()>;
}
