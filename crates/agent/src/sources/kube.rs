//! The Kubernetes API source: one `kube` watcher per [`Kind`], cluster-wide.
//!
//! Each watcher lists its kind (paginated) and then watches from the list's resource version. Its
//! events map one to one onto [`SourceEvent`]s: a completed list or relist becomes
//! [`SourceEvent::Replace`] (so nothing of a kind is reported before its first full list), each
//! watch event becomes [`SourceEvent::Apply`] or [`SourceEvent::Delete`], and every failure
//! becomes [`SourceEvent::Error`]. Recovery is the watcher's own: a dropped watch resumes from the
//! last resource version seen (bookmarks included), while `410 Gone` or a failed list starts over
//! with a relist; every error waits out an exponential backoff (client-go's parameters) first.
//!
//! The source needs `list` and `watch` on each kind and nothing else; [`RBAC_RULES`] says so in
//! one place for the manifests under `deploy/`.

use std::fmt;
use std::path::{Path, PathBuf};

use flowgate_cluster::k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use flowgate_cluster::k8s_openapi::api::discovery::v1::EndpointSlice;
use flowgate_cluster::k8s_openapi::api::networking::v1::{NetworkPolicy, ServiceCIDR};
use futures::future::BoxFuture;
use futures::StreamExt;
use kube::config::{InferConfigError, KubeConfigOptions, Kubeconfig, KubeconfigError};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Config, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::{Kind, Object, Source, SourceEvent};

/// The RBAC rules the source needs, as `(apiGroup, resource, verbs)`, one per kind in
/// [`Kind::ALL`] order: `list` for the initial list and relists, `watch` for the watches.
///
/// Written out because [`Kind::resource`] is not a `const fn`; a unit test keeps the two equal.
pub const RBAC_RULES: &[(&str, &str, &[&str])] = &[
    ("", "nodes", &["list", "watch"]),
    ("", "namespaces", &["list", "watch"]),
    ("networking.k8s.io", "servicecidrs", &["list", "watch"]),
    ("", "services", &["list", "watch"]),
    ("discovery.k8s.io", "endpointslices", &["list", "watch"]),
    ("", "pods", &["list", "watch"]),
    ("networking.k8s.io", "networkpolicies", &["list", "watch"]),
];

/// Why a [`KubeSource`] could not be created.
#[derive(Debug, thiserror::Error)]
pub enum KubeSourceError {
    /// No kubeconfig was named, and neither `$KUBECONFIG`, `~/.kube/config` nor an in-cluster
    /// service account could be used.
    #[error(
        "cannot find Kubernetes credentials: {source}; name a kubeconfig file, or run in a pod whose \
         ServiceAccount token is mounted"
    )]
    Infer {
        /// What went wrong with each place tried.
        #[source]
        source: InferConfigError,
    },
    /// The named kubeconfig could not be read or parsed.
    #[error("{path}: cannot read kubeconfig: {source}")]
    ReadKubeconfig {
        /// The kubeconfig file.
        path: PathBuf,
        /// What `kube` said.
        #[source]
        source: KubeconfigError,
    },
    /// The named kubeconfig was read but its current context cannot be used (no current context,
    /// a missing cluster or user, a bad server URL or certificate).
    #[error("{path}: cannot use kubeconfig: {source}; check its current-context, cluster and user")]
    LoadKubeconfig {
        /// The kubeconfig file.
        path: PathBuf,
        /// What `kube` said.
        #[source]
        source: KubeconfigError,
    },
    /// A client could not be built from the configuration (for example a TLS setting it
    /// cannot honour).
    #[error("cannot build a Kubernetes client for {cluster_url}: {source}")]
    Client {
        /// The API server the configuration points at.
        cluster_url: String,
        /// What `kube` said.
        #[source]
        source: kube::Error,
    },
}

/// Cluster state from a Kubernetes API server, through one watcher per kind.
pub struct KubeSource {
    client: Client,
    kinds: Vec<Kind>,
}

impl fmt::Debug for KubeSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `kube::Client` has no `Debug`; the kinds are what tells sources apart.
        f.debug_struct("KubeSource").field("kinds", &self.kinds).finish_non_exhaustive()
    }
}

impl KubeSource {
    /// A source watching every kind in [`Kind::ALL`] through `client`.
    pub fn new(client: Client) -> Self {
        KubeSource { client, kinds: Kind::ALL.to_vec() }
    }

    /// A source for the cluster a kubeconfig names, or when `path` is `None`, the one the
    /// environment names: `$KUBECONFIG` or `~/.kube/config` if present, else the in-cluster
    /// configuration of the pod's ServiceAccount (as a DaemonSet runs it).
    ///
    /// Nothing is contacted yet: a server that is down shows up later as
    /// [`SourceEvent::Error`]s from [`Source::run`].
    ///
    /// # Errors
    ///
    /// [`KubeSourceError`] when no configuration is found, the named file cannot be read or
    /// used, or the client cannot be built from it.
    pub async fn from_kubeconfig(path: Option<&Path>) -> Result<Self, KubeSourceError> {
        let config = match path {
            None => Config::infer().await.map_err(|source| KubeSourceError::Infer { source })?,
            Some(path) => {
                let kubeconfig = Kubeconfig::read_from(path)
                    .map_err(|source| KubeSourceError::ReadKubeconfig { path: path.to_owned(), source })?;
                Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                    .await
                    .map_err(|source| KubeSourceError::LoadKubeconfig { path: path.to_owned(), source })?
            }
        };
        let cluster_url = config.cluster_url.to_string();
        let client = Client::try_from(config).map_err(|source| KubeSourceError::Client { cluster_url, source })?;
        Ok(KubeSource::new(client))
    }
}

impl Source for KubeSource {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    /// Runs one watcher task per kind until the receiver is dropped. Dropping the returned future
    /// stops the watchers too.
    fn run(self: Box<Self>, tx: mpsc::Sender<SourceEvent>) -> BoxFuture<'static, ()> {
        let KubeSource { client, kinds } = *self;
        Box::pin(async move {
            // A JoinSet aborts its tasks when dropped, so no watcher outlives this future.
            let mut watchers = JoinSet::new();
            for kind in kinds {
                let (client, tx) = (client.clone(), tx.clone());
                match kind {
                    Kind::Node => watchers.spawn(watch::<Node>(client, tx)),
                    Kind::Namespace => watchers.spawn(watch::<Namespace>(client, tx)),
                    Kind::Pod => watchers.spawn(watch::<Pod>(client, tx)),
                    Kind::Service => watchers.spawn(watch::<Service>(client, tx)),
                    Kind::EndpointSlice => watchers.spawn(watch::<EndpointSlice>(client, tx)),
                    Kind::NetworkPolicy => watchers.spawn(watch::<NetworkPolicy>(client, tx)),
                    Kind::ServiceCidr => watchers.spawn(watch::<ServiceCIDR>(client, tx)),
                };
            }
            drop(tx);
            while let Some(done) = watchers.join_next().await {
                if let Err(e) = done {
                    // A watcher only ends by itself when the receiver is gone; a panic is a bug,
                    // and the other kinds cannot stand in for the lost one.
                    tracing::error!(error = %e, "kubernetes watcher task failed");
                }
            }
        })
    }
}

/// A Kubernetes type flowgate watches, and how it becomes an [`Object`].
trait Watched: Resource<DynamicType = ()> + Clone + DeserializeOwned + fmt::Debug + Send + Sync + 'static {
    const KIND: Kind;
    fn into_object(self) -> Object;
}

macro_rules! watched {
    ($($ty:ty => $variant:ident),* $(,)?) => {$(
        impl Watched for $ty {
            const KIND: Kind = Kind::$variant;
            fn into_object(self) -> Object {
                Object::$variant(Box::new(self))
            }
        }
    )*};
}

watched! {
    Node => Node,
    Namespace => Namespace,
    Pod => Pod,
    Service => Service,
    EndpointSlice => EndpointSlice,
    NetworkPolicy => NetworkPolicy,
    ServiceCIDR => ServiceCidr,
}

/// Watches one kind cluster-wide and reports what it sees, until `tx`'s receiver is dropped.
async fn watch<K: Watched>(client: Client, tx: mpsc::Sender<SourceEvent>) {
    let kind = K::KIND;
    let mut stream = watcher(Api::<K>::all(client), watcher::Config::default()).default_backoff().boxed();
    // The objects of a list in progress; `None` between lists.
    let mut listing: Option<Vec<Object>> = None;
    loop {
        let next = tokio::select! {
            // Stop promptly even while the watch is quiet.
            () = tx.closed() => return,
            next = stream.next() => next,
        };
        let event = match next {
            // The watcher never ends by itself; if it did, there is nothing left to report.
            None => return,
            Some(Ok(watcher::Event::Init)) => {
                tracing::debug!(%kind, "listing");
                listing = Some(Vec::new());
                continue;
            }
            Some(Ok(watcher::Event::InitApply(o))) => {
                listing.get_or_insert_with(Vec::new).push(o.into_object());
                continue;
            }
            Some(Ok(watcher::Event::InitDone)) => {
                let objects = listing.take().unwrap_or_default();
                tracing::debug!(%kind, objects = objects.len(), "listed");
                SourceEvent::Replace(kind, objects)
            }
            Some(Ok(watcher::Event::Apply(o))) => SourceEvent::Apply(o.into_object()),
            Some(Ok(watcher::Event::Delete(o))) => SourceEvent::Delete(kind, o.into_object().name()),
            Some(Err(e)) => {
                tracing::debug!(%kind, error = %e, "watch error; retrying after backoff");
                SourceEvent::Error(format!("kubernetes: {kind}: {e}; retrying"))
            }
        };
        if tx.send(event).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rbac_rules_name_every_kind_with_list_and_watch() {
        let expected: Vec<(&str, &str)> = Kind::ALL.iter().map(|k| (k.resource().0, k.resource().1)).collect();
        let rules: Vec<(&str, &str)> = RBAC_RULES.iter().map(|&(g, r, _)| (g, r)).collect();
        assert_eq!(rules, expected);
        for (_, resource, verbs) in RBAC_RULES {
            assert_eq!(*verbs, ["list", "watch"], "{resource}");
        }
    }
}
