//! The Kubernetes source against an in-process API server that speaks the real list/watch wire
//! format (`fakeapi`): initial lists, watch events, bookmarks, dropped watches, `410 Gone` and
//! relists, HTTP 500s. Every wait is bounded; recovery waits allow for the watcher's backoff
//! (client-go's: 0.8 s doubling, with jitter), so the slowest test takes a few seconds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fakeapi;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use fakeapi::{FakeApi, ENDPOINTSLICES, NAMESPACES, NETWORKPOLICIES, NODES, PODS, SERVICECIDRS, SERVICES};
use flowgate_agent::sources::kube::{KubeSource, KubeSourceError};
use flowgate_agent::sources::{Kind, Object, ObjectName, Source, SourceEvent};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// How long a step that needs no backoff may take (they take milliseconds).
const STEP: Duration = Duration::from_secs(3);
/// How long a step that waits out one or two backoffs may take (0.8–1.6 s, then 1.6–2.4 s).
const RECOVERY: Duration = Duration::from_secs(8);

fn service(ns: &str, name: &str, cluster_ip: &str) -> Value {
    json!({
        "metadata": {"name": name, "namespace": ns},
        "spec": {"clusterIP": cluster_ip, "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
    })
}

fn slice(ns: &str, name: &str, service: &str, ips: &[&str]) -> Value {
    json!({
        "metadata": {"name": name, "namespace": ns, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": ips.iter().map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}})).collect::<Vec<_>>(),
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    })
}

/// One object of every kind, two Services.
fn populate(api: &FakeApi) {
    api.apply(NODES, json!({"metadata": {"name": "node-a"}, "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.2"}]}}));
    api.apply(NAMESPACES, json!({"metadata": {"name": "shop", "labels": {"team": "web"}}}));
    api.apply(SERVICECIDRS, json!({"metadata": {"name": "kubernetes"}, "spec": {"cidrs": ["10.96.0.0/16"]}}));
    api.apply(SERVICES, service("shop", "web", "10.96.0.10"));
    api.apply(SERVICES, service("shop", "db", "10.96.0.11"));
    api.apply(ENDPOINTSLICES, slice("shop", "web-abc", "web", &["10.0.1.5"]));
    api.apply(
        PODS,
        json!({
            "metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "web"}},
            "spec": {"nodeName": "node-a", "containers": [{"name": "web", "image": "web"}]},
            "status": {"podIP": "10.0.1.5", "podIPs": [{"ip": "10.0.1.5"}]},
        }),
    );
    api.apply(
        NETWORKPOLICIES,
        json!({"metadata": {"name": "deny-all", "namespace": "shop"}, "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}),
    );
}

fn name(namespace: &str, name: &str) -> ObjectName {
    ObjectName { namespace: namespace.into(), name: name.into() }
}

fn names(objects: &[Object]) -> BTreeSet<ObjectName> {
    objects.iter().map(Object::name).collect()
}

fn describe(event: &SourceEvent) -> String {
    match event {
        SourceEvent::Replace(kind, objects) => format!("Replace({kind}, {:?})", names(objects)),
        SourceEvent::Apply(o) => format!("Apply({}, {:?})", o.kind(), o.name()),
        SourceEvent::Delete(kind, n) => format!("Delete({kind}, {n:?})"),
        SourceEvent::Snapshot(_) => "Snapshot".into(),
        SourceEvent::Error(e) => format!("Error({e})"),
    }
}

/// A running source and the fake it watches.
struct Running {
    api: FakeApi,
    rx: mpsc::Receiver<SourceEvent>,
    task: JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Running {
    /// Starts a `KubeSource` from a kubeconfig pointing at `api`.
    async fn start(api: FakeApi) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = api.write_kubeconfig(dir.path());
        let source = KubeSource::from_kubeconfig(Some(&kubeconfig)).await.unwrap();
        assert_eq!(source.name(), "kubernetes");
        let (tx, rx) = mpsc::channel(16);
        let task = tokio::spawn(Box::new(source).run(tx));
        Running { api, rx, task, _dir: dir }
    }

    /// The next event, within `limit`.
    async fn next_within(&mut self, limit: Duration) -> SourceEvent {
        match timeout(limit, self.rx.recv()).await {
            Ok(Some(event)) => event,
            Ok(None) => panic!("the source stopped"),
            Err(_) => panic!("no event within {limit:?}"),
        }
    }

    async fn next(&mut self) -> SourceEvent {
        self.next_within(STEP).await
    }

    /// The next event that is not an `Error`, within `limit`, and the errors before it.
    async fn next_after_errors(&mut self, limit: Duration) -> (SourceEvent, Vec<String>) {
        let deadline = tokio::time::Instant::now() + limit;
        let mut errors = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_within(left).await {
                SourceEvent::Error(e) => errors.push(e),
                event => return (event, errors),
            }
        }
    }

    /// The initial `Replace` of every kind; nothing else may come first.
    async fn initial_lists(&mut self) -> BTreeMap<Kind, Vec<Object>> {
        let mut lists = BTreeMap::new();
        while lists.len() < Kind::ALL.len() {
            match self.next().await {
                SourceEvent::Replace(kind, objects) => {
                    assert!(lists.insert(kind, objects).is_none(), "{kind} listed twice");
                }
                other => panic!("before every kind listed: {}", describe(&other)),
            }
        }
        // Every watch is open once its list is done; tests that close or fail watches need that.
        self.api.wait_for_watches(Kind::ALL.len(), STEP).await;
        lists
    }

    /// Asserts that no event arrives for `d`.
    async fn quiet(&mut self, d: Duration) {
        if let Ok(event) = timeout(d, self.rx.recv()).await {
            panic!("expected no event, got {}", event.as_ref().map_or("the end".into(), describe));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_lists_replace_every_kind() {
    let api = FakeApi::start().await;
    populate(&api);
    let mut run = Running::start(api).await;
    let lists = run.initial_lists().await;

    let expect: [(Kind, &[ObjectName]); 7] = [
        (Kind::Node, &[name("", "node-a")]),
        (Kind::Namespace, &[name("", "shop")]),
        (Kind::ServiceCidr, &[name("", "kubernetes")]),
        (Kind::Service, &[name("shop", "db"), name("shop", "web")]),
        (Kind::EndpointSlice, &[name("shop", "web-abc")]),
        (Kind::Pod, &[name("shop", "web-1")]),
        (Kind::NetworkPolicy, &[name("shop", "deny-all")]),
    ];
    for (kind, expected) in expect {
        let objects = &lists[&kind];
        assert!(objects.iter().all(|o| o.kind() == kind), "{kind}: wrong kind in list");
        assert_eq!(names(objects), expected.iter().cloned().collect(), "{kind}");
    }
    // The typed objects made it through: fields, not just names.
    let web = lists[&Kind::Service].iter().find(|o| o.name().name == "web").unwrap();
    let Object::Service(web) = web else { unreachable!() };
    assert_eq!(web.spec.as_ref().unwrap().cluster_ip.as_deref(), Some("10.96.0.10"));
    let Object::EndpointSlice(s) = &lists[&Kind::EndpointSlice][0] else { unreachable!() };
    assert_eq!(s.endpoints[0].addresses, ["10.0.1.5"]);

    // What the client asked: a paginated list, then a watch from the list's version with bookmarks.
    let requests = run.api.requests();
    for rt in [NODES, NAMESPACES, SERVICECIDRS, SERVICES, ENDPOINTSLICES, PODS, NETWORKPOLICIES] {
        let list = requests.iter().find(|r| r.path == rt && !r.is_watch()).unwrap();
        assert_eq!(list.query.get("limit").map(String::as_str), Some("500"), "{rt}");
        let watch = requests.iter().find(|r| r.path == rt && r.is_watch()).unwrap();
        assert_eq!(watch.query.get("allowWatchBookmarks").map(String::as_str), Some("true"), "{rt}");
        assert_eq!(watch.query.get("resourceVersion"), Some(&run.api.resource_version().to_string()), "{rt}");
    }
    run.quiet(Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_reports_adds_changes_and_deletes() {
    let api = FakeApi::start().await;
    populate(&api);
    let mut run = Running::start(api).await;
    run.initial_lists().await;

    // Add.
    run.api.apply(SERVICES, service("shop", "cache", "10.96.0.12"));
    let SourceEvent::Apply(Object::Service(s)) = run.next().await else { panic!("expected Apply(Service)") };
    assert_eq!(s.metadata.name.as_deref(), Some("cache"));

    // Change: a scaled EndpointSlice arrives whole.
    run.api.apply(ENDPOINTSLICES, slice("shop", "web-abc", "web", &["10.0.1.5", "10.0.1.6"]));
    let SourceEvent::Apply(Object::EndpointSlice(s)) = run.next().await else {
        panic!("expected Apply(EndpointSlice)")
    };
    let ips: Vec<&str> = s.endpoints.iter().flat_map(|e| e.addresses.iter().map(String::as_str)).collect();
    assert_eq!(ips, ["10.0.1.5", "10.0.1.6"]);

    // Delete, namespaced and cluster-scoped.
    run.api.delete(SERVICES, "shop", "db").unwrap();
    match run.next().await {
        SourceEvent::Delete(Kind::Service, n) => assert_eq!(n, name("shop", "db")),
        other => panic!("expected Delete(Service), got {}", describe(&other)),
    }
    run.api.delete(NODES, "", "node-a").unwrap();
    match run.next().await {
        SourceEvent::Delete(Kind::Node, n) => assert_eq!(n, name("", "node-a")),
        other => panic!("expected Delete(Node), got {}", describe(&other)),
    }
    run.quiet(Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookmarks_produce_no_events_but_move_the_resume_point() {
    let api = FakeApi::start().await;
    populate(&api);
    let mut run = Running::start(api).await;
    run.initial_lists().await;

    // Other kinds move the server's version on; the Services watch only learns it by a bookmark.
    run.api.apply(NAMESPACES, json!({"metadata": {"name": "other"}}));
    assert!(matches!(run.next().await, SourceEvent::Apply(Object::Namespace(_))));
    let at = run.api.bookmark();
    run.quiet(Duration::from_millis(300)).await;

    // A dropped watch resumes from the bookmark, without a relist.
    let lists_before = run.api.list_count(SERVICES);
    let watches_before = run.api.requests().len();
    run.api.close_watches();
    run.api.wait_for_watches(Kind::ALL.len(), STEP).await;
    let resumed = run.api.requests()[watches_before..]
        .iter()
        .find(|r| r.path == SERVICES && r.is_watch())
        .cloned()
        .expect("the Services watch is reopened");
    assert_eq!(resumed.query.get("resourceVersion"), Some(&at.to_string()));
    assert_eq!(run.api.list_count(SERVICES), lists_before, "a dropped watch needs no relist");
    run.quiet(Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_watches_resume_without_losing_changes() {
    let api = FakeApi::start().await;
    populate(&api);
    let mut run = Running::start(api).await;
    run.initial_lists().await;

    run.api.close_watches();
    // Whether this lands before or after the watch is reopened, it is delivered once, as Apply.
    run.api.apply(SERVICES, service("shop", "web", "10.96.0.20"));
    let SourceEvent::Apply(Object::Service(s)) = run.next().await else { panic!("expected Apply(Service)") };
    assert_eq!(s.spec.as_ref().unwrap().cluster_ip.as_deref(), Some("10.96.0.20"));
    run.quiet(Duration::from_millis(200)).await;
    assert_eq!(run.api.list_count(SERVICES), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_forces_a_relist_of_every_kind() {
    let api = FakeApi::start().await;
    populate(&api);
    let mut run = Running::start(api).await;
    run.initial_lists().await;

    // Every watch gets 410 Expired: each kind reports the error, backs off, and lists again.
    run.api.compact();
    let mut errors = BTreeSet::new();
    let mut relisted = BTreeMap::new();
    while relisted.len() < Kind::ALL.len() {
        match run.next_within(RECOVERY).await {
            SourceEvent::Error(e) => {
                assert!(e.contains("too old resource version"), "{e}");
                errors.insert(Kind::ALL.into_iter().find(|k| e.contains(&format!(": {k}: "))).expect(&e));
            }
            SourceEvent::Replace(kind, objects) => {
                relisted.insert(kind, names(&objects));
            }
            other => panic!("unexpected {}", describe(&other)),
        }
    }
    assert_eq!(errors.len(), Kind::ALL.len(), "one error naming each kind");
    assert_eq!(relisted[&Kind::Service], [name("shop", "db"), name("shop", "web")].into());
    assert_eq!(run.api.list_count(SERVICES), 2);

    // And the new watches work.
    run.api.wait_for_watches(Kind::ALL.len(), STEP).await;
    run.api.delete(PODS, "shop", "web-1").unwrap();
    assert!(matches!(run.next().await, SourceEvent::Delete(Kind::Pod, _)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relist_after_410_carries_changes_made_while_disconnected() {
    let api = FakeApi::start().await;
    populate(&api);
    let mut run = Running::start(api).await;
    run.initial_lists().await;

    // Disconnect: watches end and cannot be reopened.
    run.api.fail_next_watches(usize::MAX);
    run.api.close_watches();
    // Changes the source cannot see as they happen...
    run.api.apply(SERVICES, service("shop", "web", "10.96.0.30"));
    run.api.delete(SERVICES, "shop", "db").unwrap();
    run.api.apply(SERVICES, service("shop", "new", "10.96.0.31"));
    // ...and then the history that would have let it catch up is gone.
    run.api.compact();
    run.api.fail_next_watches(0);

    // Services reconnect from a compacted version: 410, relist, and the relist has it all.
    let objects = loop {
        match run.next_within(RECOVERY).await {
            SourceEvent::Replace(Kind::Service, objects) => break objects,
            SourceEvent::Replace(..) | SourceEvent::Error(_) => {}
            other => panic!("expected a relist, got {}", describe(&other)),
        }
    };
    assert_eq!(names(&objects), [name("shop", "new"), name("shop", "web")].into());
    let web = objects.iter().find(|o| o.name().name == "web").unwrap();
    let Object::Service(web) = web else { unreachable!() };
    assert_eq!(web.spec.as_ref().unwrap().cluster_ip.as_deref(), Some("10.96.0.30"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_500s_are_reported_and_the_watch_recovers() {
    let api = FakeApi::start().await;
    populate(&api);
    let mut run = Running::start(api).await;
    run.initial_lists().await;

    run.api.fail_next_watches(2);
    run.api.close_watches();
    // Two reconnects fail; each is reported, naming its kind. After the backoff, they succeed.
    let mut errors = Vec::new();
    while errors.len() < 2 {
        match run.next_within(STEP).await {
            SourceEvent::Error(e) => errors.push(e),
            other => panic!("expected errors, got {}", describe(&other)),
        }
    }
    for e in &errors {
        assert!(e.starts_with("kubernetes: "), "{e}");
        assert!(Kind::ALL.iter().any(|k| e.contains(&format!(": {k}: "))), "no kind in {e:?}");
        assert!(e.contains("Internal error occurred"), "{e}");
    }
    run.api.wait_for_watches(Kind::ALL.len(), RECOVERY).await;
    let lists = run.api.requests().iter().filter(|r| !r.is_watch()).count();
    assert_eq!(lists, Kind::ALL.len(), "a failed watch start resumes; it does not relist");

    run.api.apply(
        NETWORKPOLICIES,
        json!({"metadata": {"name": "allow-web", "namespace": "shop"}, "spec": {"podSelector": {}}}),
    );
    let (event, errors) = run.next_after_errors(STEP).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert!(matches!(event, SourceEvent::Apply(Object::NetworkPolicy(_))), "{}", describe(&event));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_list_follows_continue_tokens() {
    let api = FakeApi::start().await;
    populate(&api);
    // More than one page (kube's watcher asks for 500 at a time).
    for i in 0..1_234 {
        api.apply(PODS, json!({"metadata": {"name": format!("p-{i:04}"), "namespace": "load"}, "spec": {"containers": [{"name": "c"}]}}));
    }
    let mut run = Running::start(api).await;
    let lists = run.initial_lists().await;
    assert_eq!(lists[&Kind::Pod].len(), 1_235);
    let continues = run.api.requests().iter().filter(|r| r.path == PODS && r.query.contains_key("continue")).count();
    assert_eq!(continues, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_receiver_stops_the_source() {
    let api = FakeApi::start().await;
    let mut run = Running::start(api).await;
    let lists = run.initial_lists().await;
    assert!(lists.values().all(Vec::is_empty));
    let Running { api, rx, task, _dir } = run;
    drop(rx);
    timeout(STEP, task).await.expect("the source stops when nobody listens").unwrap();
    drop(api);
}

#[tokio::test]
async fn kubeconfig_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let err = KubeSource::from_kubeconfig(Some(&missing)).await.unwrap_err();
    assert!(matches!(err, KubeSourceError::ReadKubeconfig { .. }), "{err:?}");
    assert!(err.to_string().contains("nope"), "{err}");

    let no_context = dir.path().join("empty");
    std::fs::write(
        &no_context,
        r#"{"apiVersion": "v1", "kind": "Config", "clusters": [], "users": [], "contexts": []}"#,
    )
    .unwrap();
    let err = KubeSource::from_kubeconfig(Some(&no_context)).await.unwrap_err();
    assert!(matches!(err, KubeSourceError::LoadKubeconfig { .. }), "{err:?}");
    assert!(err.to_string().contains("empty"), "{err}");
}
