//! An in-process fake of the Kubernetes API server's list/watch wire format, on plain HTTP at
//! `127.0.0.1:<ephemeral port>`, for the seven cluster-wide collections flowgate watches.
//!
//! # What it models
//!
//! - **Resource versions** like etcd's revision: one counter for the whole server, bumped by every
//!   change; each stored object carries the version of its last change in
//!   `metadata.resourceVersion`, and a `DELETED` event carries the version of the deletion.
//! - **History and compaction**: every change since the compaction point is kept, so a watch may
//!   start from any version at or after it. [`FakeApi::compact`] moves the point to now; older
//!   versions are then answered with `410 Gone` (reason `Expired`), as the API server does.
//! - **Lists** (`GET <collection>`): a consistent snapshot at one resource version, items sorted by
//!   namespace and name and without `kind`/`apiVersion` (as the real server sends them), with
//!   `limit` and `continue` pagination (the continue token pins the snapshot's version, and
//!   expires with compaction: `410 Expired`), `remainingItemCount`, and `resourceVersion` with
//!   `resourceVersionMatch` (`Exact`, `NotOlderThan`, unset; `0` means "any", i.e. the latest).
//! - **Watches** (`GET <collection>?watch=true`): newline-delimited JSON events
//!   (`ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK`, `ERROR`) on a chunked response, starting after
//!   `resourceVersion`, or, when it is `0` or empty, with synthetic `ADDED` events for the current
//!   objects (plus the `k8s.io/initial-events-end` bookmark with `sendInitialEvents=true`);
//!   `allowWatchBookmarks`, and `timeoutSeconds` (the server ends the response, as the real one
//!   does). A watch from before the compaction point gets HTTP 200 and a single `ERROR` event
//!   with a `410 Expired` `Status`, then the end of the stream.
//! - **Failures**: [`FakeApi::fail_next_watches`] answers watch requests with HTTP 500 and a
//!   `Status` body (500 because the client would retry 503/504/429 silently by itself);
//!   [`FakeApi::close_watches`] ends every open watch cleanly, as a restarted API server or a
//!   dropped connection would.
//!
//! These are the query parameters kube 5's `watcher` sends with `watcher::Config::default()`:
//! lists with `limit=500` (then `continue`), watches with
//! `watch=true&timeoutSeconds=290&allowWatchBookmarks=true&resourceVersion=N`.
//!
//! # What it does not model
//!
//! Authentication and authorization (every request is allowed; RBAC is checked elsewhere), TLS,
//! field and label selectors (ignored), namespaced collection paths (`/api/v1/namespaces/x/pods`)
//! and single-object `GET`, any write through HTTP (create, update, patch, server-side apply,
//! delete: the test changes objects through [`FakeApi`] instead), validation, defaulting,
//! admission, `generation`, `creationTimestamp`, finalizers and graceful deletion, discovery
//! (`/api`, `/apis`, OpenAPI), protobuf and table output, compression, HTTP/2, and the watch
//! cache's own behaviour (a list at `resourceVersion=0` is as fresh as a quorum read, and `limit`
//! is always honoured).
#![allow(dead_code)] // Each test file uses a different part of it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Collection path of Nodes.
pub const NODES: &str = "/api/v1/nodes";
/// Collection path of Namespaces.
pub const NAMESPACES: &str = "/api/v1/namespaces";
/// Collection path of Pods (all namespaces).
pub const PODS: &str = "/api/v1/pods";
/// Collection path of Services (all namespaces).
pub const SERVICES: &str = "/api/v1/services";
/// Collection path of EndpointSlices (all namespaces).
pub const ENDPOINTSLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";
/// Collection path of NetworkPolicies (all namespaces).
pub const NETWORKPOLICIES: &str = "/apis/networking.k8s.io/v1/networkpolicies";
/// Collection path of ServiceCIDRs.
pub const SERVICECIDRS: &str = "/apis/networking.k8s.io/v1/servicecidrs";

/// One kind the fake serves.
#[derive(Clone, Copy, Debug)]
struct ResourceType {
    path: &'static str,
    kind: &'static str,
    api_version: &'static str,
    namespaced: bool,
}

const RESOURCES: [ResourceType; 7] = [
    ResourceType { path: NODES, kind: "Node", api_version: "v1", namespaced: false },
    ResourceType { path: NAMESPACES, kind: "Namespace", api_version: "v1", namespaced: false },
    ResourceType { path: PODS, kind: "Pod", api_version: "v1", namespaced: true },
    ResourceType { path: SERVICES, kind: "Service", api_version: "v1", namespaced: true },
    ResourceType { path: ENDPOINTSLICES, kind: "EndpointSlice", api_version: "discovery.k8s.io/v1", namespaced: true },
    ResourceType {
        path: NETWORKPOLICIES,
        kind: "NetworkPolicy",
        api_version: "networking.k8s.io/v1",
        namespaced: true,
    },
    ResourceType { path: SERVICECIDRS, kind: "ServiceCIDR", api_version: "networking.k8s.io/v1", namespaced: false },
];

fn resource_type(path: &str) -> Option<ResourceType> {
    RESOURCES.iter().copied().find(|r| r.path == path)
}

/// Namespace (empty for cluster-scoped kinds) and name: etcd's key order.
type Key = (String, String);
type Objects = BTreeMap<Key, Value>;

/// One change in the history.
#[derive(Debug)]
struct Change {
    rv: u64,
    path: &'static str,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    kind: &'static str,
    key: Key,
    /// The object as stored (for `DELETED`, as last stored, with the deletion's version).
    object: Value,
}

/// An open watch: where its events go.
#[derive(Debug)]
struct Watch {
    path: &'static str,
    bookmarks: bool,
    tx: mpsc::UnboundedSender<Bytes>,
}

/// One request the fake answered, for assertions about what the client asked.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    /// The collection path.
    pub path: String,
    /// The query parameters.
    pub query: HashMap<String, String>,
    /// The HTTP status of the answer.
    pub status: u16,
}

impl RequestRecord {
    /// Whether this was a watch (as opposed to a list).
    pub fn is_watch(&self) -> bool {
        matches!(self.query.get("watch").map(String::as_str), Some("true" | "1"))
    }
}

#[derive(Debug)]
struct Inner {
    /// The latest resource version handed out.
    rv: u64,
    /// History before (and at) this version is forgotten.
    compacted: u64,
    /// Every collection at `compacted`.
    base: BTreeMap<&'static str, Objects>,
    /// Every collection now.
    current: BTreeMap<&'static str, Objects>,
    /// Changes after `compacted`, oldest first.
    log: Vec<Change>,
    watches: Vec<Watch>,
    failing_watches: usize,
    requests: Vec<RequestRecord>,
    next_uid: u64,
}

impl Inner {
    /// The collection at version `at` (at or after the compaction point).
    fn snapshot(&self, path: &'static str, at: u64) -> Objects {
        let mut objects = self.base.get(path).cloned().unwrap_or_default();
        for c in self.log.iter().filter(|c| c.path == path && c.rv <= at) {
            if c.kind == "DELETED" {
                objects.remove(&c.key);
            } else {
                objects.insert(c.key.clone(), c.object.clone());
            }
        }
        objects
    }

    /// Records a change and sends it to the open watches of its collection.
    fn record(&mut self, path: &'static str, kind: &'static str, key: Key, mut object: Value) -> u64 {
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let collection = self.current.entry(path).or_default();
        if kind == "DELETED" {
            collection.remove(&key);
        } else {
            collection.insert(key.clone(), object.clone());
        }
        let line = event_line(kind, &object);
        self.log.push(Change { rv: self.rv, path, kind, key, object });
        self.watches.retain(|w| w.path != path || w.tx.send(line.clone()).is_ok());
        self.rv
    }
}

/// The in-process fake API server. Dropping it stops the server and ends every open watch.
#[derive(Debug)]
pub struct FakeApi {
    url: String,
    inner: Arc<Mutex<Inner>>,
    server: JoinHandle<()>,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.server.abort();
        self.lock().watches.clear();
    }
}

impl FakeApi {
    /// Starts a server on `127.0.0.1` at a free port, with empty collections, at resource
    /// version 1.
    pub async fn start() -> FakeApi {
        let inner = Arc::new(Mutex::new(Inner {
            rv: 1,
            compacted: 1,
            base: BTreeMap::new(),
            current: BTreeMap::new(),
            log: Vec::new(),
            watches: Vec::new(),
            failing_watches: 0,
            requests: Vec::new(),
            next_uid: 1,
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let url = format!("http://{}", listener.local_addr().expect("local address"));
        let app = Router::new().fallback(handle).with_state(Arc::clone(&inner));
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("fake API server");
        });
        FakeApi { url, inner, server }
    }

    /// The server's base URL, `http://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking test thread must not hide the state from the others.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Creates or replaces an object of the collection at `path` (one of the constants above),
    /// as `ADDED` or `MODIFIED`. `kind`, `apiVersion`, `metadata.resourceVersion`, `metadata.uid`
    /// and, for namespaced kinds without one, `metadata.namespace: default` are filled in.
    /// Returns the change's resource version.
    ///
    /// # Panics
    ///
    /// On an unknown path or an object without `metadata.name`.
    pub fn apply(&self, path: &str, object: Value) -> u64 {
        let rt = resource_type(path).unwrap_or_else(|| panic!("fake API: unknown collection {path}"));
        let mut object = object;
        object["kind"] = json!(rt.kind);
        object["apiVersion"] = json!(rt.api_version);
        let name = object["metadata"]["name"].as_str().expect("object needs metadata.name").to_owned();
        let namespace = if rt.namespaced {
            let ns = object["metadata"]["namespace"].as_str().unwrap_or("default").to_owned();
            object["metadata"]["namespace"] = json!(ns);
            ns
        } else {
            if let Some(m) = object["metadata"].as_object_mut() {
                m.remove("namespace");
            }
            String::new()
        };
        let key = (namespace, name);
        let mut inner = self.lock();
        let previous = inner.current.get(rt.path).and_then(|c| c.get(&key)).cloned();
        let kind = match previous {
            Some(previous) => {
                object["metadata"]["uid"] = previous["metadata"]["uid"].clone();
                "MODIFIED"
            }
            None => {
                object["metadata"]["uid"] = json!(format!("00000000-0000-0000-0000-{:012}", inner.next_uid));
                inner.next_uid += 1;
                "ADDED"
            }
        };
        inner.record(rt.path, kind, key, object)
    }

    /// Deletes an object (`namespace` is ignored for cluster-scoped kinds), as `DELETED`.
    /// Returns the deletion's resource version, or `None` when there was no such object.
    pub fn delete(&self, path: &str, namespace: &str, name: &str) -> Option<u64> {
        let rt = resource_type(path).unwrap_or_else(|| panic!("fake API: unknown collection {path}"));
        let key = (if rt.namespaced { namespace.to_owned() } else { String::new() }, name.to_owned());
        let mut inner = self.lock();
        let object = inner.current.get(rt.path).and_then(|c| c.get(&key)).cloned()?;
        Some(inner.record(rt.path, "DELETED", key, object))
    }

    /// The latest resource version.
    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    /// Sends a `BOOKMARK` at the latest resource version to every open watch that allows them.
    /// Returns that version.
    pub fn bookmark(&self) -> u64 {
        let mut inner = self.lock();
        let rv = inner.rv;
        inner.watches.retain(|w| {
            if !w.bookmarks {
                return !w.tx.is_closed();
            }
            let rt = resource_type(w.path).expect("watches are only opened on known paths");
            w.tx.send(bookmark_line(rt, rv, false)).is_ok()
        });
        rv
    }

    /// Forgets the history up to now, as etcd's compaction (or the watch cache running out of
    /// window) does: every open watch gets an `ERROR` event with a `410 Expired` `Status` and
    /// ends; watches and continue tokens from before now are answered the same way from then
    /// on, so clients must relist.
    pub fn compact(&self) {
        let mut inner = self.lock();
        inner.compacted = inner.rv;
        inner.base = inner.current.clone();
        inner.log.clear();
        let compacted = inner.compacted;
        for w in inner.watches.drain(..) {
            // The client's version is older than the new compaction point, whatever it was.
            let _ = w.tx.send(expired_line(compacted.saturating_sub(1), compacted));
        }
    }

    /// Ends every open watch cleanly (the response simply ends), as a restarted API server or a
    /// dropped connection does. Clients resume watching from the last version they saw.
    pub fn close_watches(&self) {
        self.lock().watches.clear();
    }

    /// Answers the next `n` watch requests (of any collection) with HTTP 500 and an
    /// `InternalError` `Status`; `0` cancels failures still pending. Open watches are not
    /// affected; combine with [`FakeApi::close_watches`] to make clients reconnect.
    pub fn fail_next_watches(&self, n: usize) {
        self.lock().failing_watches = n;
    }

    /// The number of watches open now.
    pub fn open_watches(&self) -> usize {
        let mut inner = self.lock();
        inner.watches.retain(|w| !w.tx.is_closed());
        inner.watches.len()
    }

    /// Waits (polling) until at least `n` watches are open, or `timeout` passes.
    ///
    /// # Panics
    ///
    /// When `timeout` passes first.
    pub async fn wait_for_watches(&self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.open_watches() < n {
            assert!(Instant::now() < deadline, "fake API: {} watches open, waited for {n}", self.open_watches());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Every request answered so far, oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.lock().requests.clone()
    }

    /// The number of list requests on a collection so far.
    pub fn list_count(&self, path: &str) -> usize {
        self.lock().requests.iter().filter(|r| r.path == path && !r.is_watch()).count()
    }

    /// A kubeconfig (JSON, which is YAML) whose current context points at this server, with no
    /// credentials.
    pub fn kubeconfig(&self) -> String {
        json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": "default"}}],
            "current-context": "fake",
        })
        .to_string()
    }

    /// Writes [`FakeApi::kubeconfig`] to `dir/kubeconfig` and returns that path.
    pub fn write_kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(&path, self.kubeconfig()).expect("write kubeconfig");
        path
    }
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn bookmark_line(rt: ResourceType, rv: u64, initial_events_end: bool) -> Bytes {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_events_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    event_line("BOOKMARK", &json!({"kind": rt.kind, "apiVersion": rt.api_version, "metadata": metadata}))
}

fn status_object(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

fn expired_line(requested: u64, compacted: u64) -> Bytes {
    event_line("ERROR", &status_object(410, "Expired", &format!("too old resource version: {requested} ({compacted})")))
}

fn status(code: u16, reason: &str, message: &str) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [(header::CONTENT_TYPE, "application/json")], status_object(code, reason, message).to_string())
        .into_response()
}

async fn handle(
    State(inner): State<Arc<Mutex<Inner>>>,
    method: Method,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let mut inner = inner.lock().unwrap_or_else(PoisonError::into_inner);
    let path = uri.path().to_owned();
    let response = answer(&mut inner, &method, &path, &query);
    inner.requests.push(RequestRecord { path, query, status: response.status().as_u16() });
    response
}

fn answer(inner: &mut Inner, method: &Method, path: &str, query: &HashMap<String, String>) -> Response {
    if method != Method::GET {
        return status(405, "MethodNotAllowed", "the fake API server only serves list and watch");
    }
    let Some(rt) = resource_type(path) else {
        return status(404, "NotFound", &format!("the server could not find the requested resource ({path})"));
    };
    let param = |name: &str| query.get(name).map(String::as_str).filter(|v| !v.is_empty());
    if matches!(param("watch"), Some("true" | "1")) {
        watch(inner, rt, query)
    } else {
        list(inner, rt, param("limit"), param("continue"), param("resourceVersion"), param("resourceVersionMatch"))
    }
}

fn list(
    inner: &Inner,
    rt: ResourceType,
    limit: Option<&str>,
    continue_token: Option<&str>,
    rv: Option<&str>,
    rv_match: Option<&str>,
) -> Response {
    let Ok(limit) = limit.map(str::parse::<usize>).transpose() else {
        return status(400, "BadRequest", "limit: not a number");
    };
    let (at, offset) = if let Some(token) = continue_token {
        // Real tokens are opaque base64; this one is readable, and just as opaque to clients.
        let parsed = token
            .strip_prefix("fake-continue/")
            .and_then(|t| t.split_once('/'))
            .and_then(|(rv, offset)| Some((rv.parse::<u64>().ok()?, offset.parse::<usize>().ok()?)));
        let Some((at, offset)) = parsed else {
            return status(400, "BadRequest", "continue key is not valid");
        };
        if at < inner.compacted {
            return status(
                410,
                "Expired",
                "The provided continue parameter is too old to display a consistent list result. You can start a \
                 new list without the continue parameter.",
            );
        }
        (at, offset)
    } else {
        let at = match rv.map(|v| (v, v.parse::<u64>())) {
            None | Some(("0", _)) => inner.rv,
            Some((_, Err(_))) => return status(400, "BadRequest", "resourceVersion: not a number"),
            Some((_, Ok(n))) if n > inner.rv => {
                return status(504, "Timeout", &format!("Too large resource version: {n}, current: {}", inner.rv));
            }
            Some((_, Ok(n))) => match rv_match {
                Some("Exact") if n < inner.compacted => {
                    return status(410, "Expired", &format!("too old resource version: {n} ({})", inner.compacted));
                }
                Some("Exact") => n,
                None | Some("NotOlderThan") => inner.rv,
                Some(other) => {
                    return status(400, "BadRequest", &format!("resourceVersionMatch: unknown value {other:?}"))
                }
            },
        };
        (at, 0)
    };
    let snapshot = inner.snapshot(rt.path, at);
    let total = snapshot.len();
    let end = limit.filter(|&l| l > 0).map_or(total, |l| offset.saturating_add(l).min(total));
    let items: Vec<Value> = snapshot
        .into_values()
        .skip(offset)
        .take(end.saturating_sub(offset))
        .map(|mut o| {
            // List items carry no kind or apiVersion on the wire; the list does.
            if let Some(m) = o.as_object_mut() {
                m.remove("kind");
                m.remove("apiVersion");
            }
            o
        })
        .collect();
    let mut metadata = json!({"resourceVersion": at.to_string()});
    if end < total {
        metadata["continue"] = json!(format!("fake-continue/{at}/{end}"));
        metadata["remainingItemCount"] = json!(total - end);
    }
    let body = json!({
        "kind": format!("{}List", rt.kind),
        "apiVersion": rt.api_version,
        "metadata": metadata,
        "items": items,
    });
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn watch(inner: &mut Inner, rt: ResourceType, query: &HashMap<String, String>) -> Response {
    if inner.failing_watches > 0 {
        inner.failing_watches -= 1;
        return status(500, "InternalError", "Internal error occurred: injected by the fake API server");
    }
    let param = |name: &str| query.get(name).map(String::as_str).filter(|v| !v.is_empty());
    let bookmarks = param("allowWatchBookmarks") == Some("true");
    let send_initial = param("sendInitialEvents") == Some("true");
    // Without a timeout the real server picks one between 30 and 60 minutes.
    let Ok(timeout) = param("timeoutSeconds").map(str::parse::<u64>).transpose() else {
        return status(400, "BadRequest", "timeoutSeconds: not a number");
    };
    let deadline = Instant::now() + Duration::from_secs(timeout.unwrap_or(1800));

    let (tx, rx) = mpsc::unbounded_channel();
    let mut keep_open = true;
    match param("resourceVersion").map(|v| (v, v.parse::<u64>())) {
        // "Start at most recent" / "any": the current objects first, as ADDED.
        None | Some(("0", _)) => {
            for object in inner.current.get(rt.path).into_iter().flat_map(BTreeMap::values) {
                let _ = tx.send(event_line("ADDED", object));
            }
            if send_initial && bookmarks {
                let _ = tx.send(bookmark_line(rt, inner.rv, true));
            }
        }
        Some((_, Err(_))) => return status(400, "BadRequest", "resourceVersion: not a number"),
        Some((_, Ok(n))) if n < inner.compacted => {
            // As the real server: HTTP 200, then one ERROR event, then the end.
            let _ = tx.send(expired_line(n, inner.compacted));
            keep_open = false;
        }
        Some((_, Ok(n))) => {
            for c in inner.log.iter().filter(|c| c.path == rt.path && c.rv > n) {
                let _ = tx.send(event_line(c.kind, &c.object));
            }
        }
    }
    if keep_open {
        // Registered under the same lock as the backlog was read: no change can fall between.
        inner.watches.push(Watch { path: rt.path, bookmarks, tx });
    } else {
        drop(tx);
    }

    let body = futures::stream::unfold(rx, move |mut rx| async move {
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => None,
            line = rx.recv() => line.map(|l| (Ok::<_, Infallible>(l), rx)),
        }
    });
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], Body::from_stream(body)).into_response()
}
