//! Failing safe: an object the kernel cannot take costs nobody else anything. The agent runs with
//! the kernel data plane over a private bpffs; faults are real kernel refusals — a map filled to
//! its limit from outside, so that the agent's next insert into it fails — one phase of the apply
//! at a time (rule lists, backend sets, address sets, endpoint addresses). Each time, the other
//! change of the same sync is in force, the object is reported by name, and once room is made the
//! retry programs it without any further change.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;

use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use flowgate_ebpf::bpffs::TempBpffs;
use flowgate_ebpf::maps;
use serde_json::Value;
use support::{probe, run_agent, status, status_until, synced};

const HEAD: &str = "apiVersion: v1\nkind: Node\nmetadata: {name: node-a}\nstatus: {addresses: [{type: InternalIP, address: 192.168.0.2}]}\n---\napiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nclusterCIDR: 10.0.0.0/8\n---\napiVersion: networking.k8s.io/v1\nkind: ServiceCIDR\nmetadata: {name: k}\nspec: {cidrs: [172.30.0.0/16]}\n";

/// A Service `name` on `cluster_ip:80` with one endpoint, created at `created` (RFC 3339), with
/// extra spec lines (externalIPs, type) and status.
fn service(name: &str, cluster_ip: &str, endpoint: &str, created: &str, extra: &str, st: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, creationTimestamp: \"{created}\"}}\nspec:\n  clusterIP: {cluster_ip}\n  ports: [{{name: http, port: 80}}]\n{extra}{st}---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints: [{{addresses: [{endpoint}]}}]\n"
    )
}

fn write(dir: &Path, text: &str) {
    std::fs::write(dir.join("m/cluster.yaml"), text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_sharing_an_address_do_not_wedge_the_node() {
    if !flowgate_ebpf::privileged_test("services_sharing_an_address_do_not_wedge_the_node") {
        return;
    }
    let fs = TempBpffs::new().unwrap();
    let bpffs = fs.path().join("flowgate");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("m")).unwrap();
    // Seven Services on one externalIP:port (more rules than the kernel's list under one
    // destination, were they merged), created in reverse name order.
    let mut text = HEAD.to_string();
    text.push_str(&service("web", "172.30.0.10", "10.0.2.1", "2026-01-01T00:00:00Z", "", ""));
    for (i, n) in ["g", "f", "e", "d", "c", "b", "a"].iter().enumerate() {
        let ext = "  externalIPs: [203.0.113.50]\n";
        let created = format!("2026-02-0{}T00:00:00Z", i + 1);
        text.push_str(&service(
            &format!("share-{n}"),
            &format!("172.30.1.{}", 10 + i),
            &format!("10.0.3.{}", 10 + i),
            &created,
            ext,
            "",
        ));
    }
    write(dir.path(), &text);
    // Before: the apply failed on every sync, so the agent never synced (run_agent waits for it).
    let agent = run_agent(dir.path(), &bpffs).await;
    let maps = bpffs.join("maps");
    assert_eq!(
        probe(&maps, "198.51.100.7:40000", "203.0.113.50:80"),
        (0, "10.0.3.10:8080".into()),
        "the oldest owns it"
    );
    assert_eq!(probe(&maps, "198.51.100.7:40001", "172.30.0.10:80"), (0, "10.0.2.1:8080".into()));
    let s = status(&dir.path().join("api.sock")).await;
    let conflicts = s["sync"]["conflicts"].as_array().unwrap();
    assert_eq!(conflicts.len(), 6, "{s}");
    assert!(conflicts.iter().all(|c| c["message"].as_str().unwrap().contains("Service default/share-g")), "{s}");
    assert!(s["sync"]["degraded"].as_array().unwrap().is_empty(), "{s}");
    agent.stop();
}

/// Fills a pinned hash map with junk keys until the kernel refuses one; returns them.
fn fill<K: aya::Pod, V: aya::Pod>(
    path: &Path,
    key: impl Fn(u32) -> K,
    value: V,
) -> (BpfHashMap<MapData, K, V>, Vec<K>) {
    let data = MapData::from_pin(path).unwrap();
    let mut map: BpfHashMap<MapData, K, V> = Map::HashMap(data).try_into().unwrap();
    let mut junk = Vec::new();
    for i in 0.. {
        let k = key(i);
        if map.insert(k, value, 0).is_err() {
            break;
        }
        junk.push(k);
    }
    (map, junk)
}

fn empty<K: aya::Pod, V: aya::Pod>((mut map, junk): (BpfHashMap<MapData, K, V>, Vec<K>)) {
    for k in junk {
        map.remove(&k).unwrap();
    }
}

fn junk_addr(i: u32) -> maps::Addr {
    // 240.0.0.0/4 (reserved): nothing the agent writes.
    maps::Addr::from_ip(std::net::Ipv4Addr::from(0xf000_0000 | i).into())
}

fn degraded(s: &Value) -> Vec<String> {
    s["sync"]["degraded"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_map_degrades_one_object_and_is_retried() {
    if !flowgate_ebpf::privileged_test("a_full_map_degrades_one_object_and_is_retried") {
        return;
    }
    let fs = TempBpffs::new().unwrap();
    let bpffs = fs.path().join("flowgate");
    let maps = bpffs.join("maps");
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    std::fs::create_dir_all(dir.path().join("m")).unwrap();
    let base = |web: &str| format!("{HEAD}{}", service("web", "172.30.0.10", web, "2026-01-01T00:00:00Z", "", ""));
    write(dir.path(), &base("10.0.2.1"));
    let agent = run_agent(dir.path(), &bpffs).await;

    // Each phase: the map it writes is full; the same change moves web's endpoint (other maps,
    // existing keys) and adds an object that needs a new entry in the full map.
    let extra = service("extra", "172.30.0.20", "10.0.4.1", "2026-01-02T00:00:00Z", "", "");
    let lb = service(
        "extra",
        "172.30.0.20",
        "10.0.4.1",
        "2026-01-02T00:00:00Z",
        "  type: LoadBalancer\n  loadBalancerSourceRanges: [198.51.100.0/24]\n",
        "status: {loadBalancer: {ingress: [{ip: 203.0.113.20}]}}\n",
    );
    let pod = "---\napiVersion: v1\nkind: Pod\nmetadata: {name: extra-pod}\nspec: {nodeName: node-a, containers: [{name: c, image: i}]}\nstatus: {podIP: 10.0.5.5, podIPs: [{ip: 10.0.5.5}]}\n";
    for (phase, web) in [
        ("rule lists", "10.0.2.2"),
        ("backend sets", "10.0.2.3"),
        ("address sets", "10.0.2.4"),
        ("endpoints", "10.0.2.5"),
    ] {
        let (added, needle, probe_to): (&str, &str, Option<&str>) = match phase {
            "rule lists" => (&extra, "extra", Some("172.30.0.20:80")),
            "backend sets" => (&extra, "extra", Some("172.30.0.20:80")),
            "address sets" => (&lb, "extra:http source ranges", Some("203.0.113.20:80")),
            _ => (pod, "extra-pod", None),
        };
        let write_change = || write(dir.path(), &format!("{}{added}", base(web)));
        let check = |s: &Value| {
            let d = degraded(s);
            assert!(d.iter().any(|p| p.contains(needle)), "{phase}: the object is named: {d:?}");
        };
        let s = match phase {
            "rule lists" => {
                let full = fill(
                    &maps.join("fg_lb_dest"),
                    |i| maps::LbKey { dst: junk_addr(i), dport: 80, proto: 6, pad: 0 },
                    maps::RuleList::default(),
                );
                write_change();
                let s = status_until(&socket, "a degraded rule list", |s| !degraded(s).is_empty()).await;
                check(&s);
                assert_eq!(
                    probe(&maps, "198.51.100.7:41000", "172.30.0.10:80"),
                    (0, format!("{web}:8080")),
                    "{phase}: the rest is programmed"
                );
                empty(full);
                s
            }
            "backend sets" => {
                let full = fill(&maps.join("fg_backend_sets"), |i| 0x7000_0000 + i, maps::BackendSet::default());
                write_change();
                let s = status_until(&socket, "a degraded backend set", |s| !degraded(s).is_empty()).await;
                check(&s);
                assert_eq!(
                    probe(&maps, "198.51.100.7:42000", "172.30.0.10:80"),
                    (0, format!("{web}:8080")),
                    "{phase}: the rest is programmed"
                );
                empty(full);
                s
            }
            "address sets" => {
                let full = fill(&maps.join("fg_set_info"), |i| 0x7000_0000 + i, 1u8);
                write_change();
                let s = status_until(&socket, "a degraded set", |s| !degraded(s).is_empty()).await;
                check(&s);
                assert_eq!(
                    probe(&maps, "198.51.100.7:43000", "172.30.0.10:80"),
                    (0, format!("{web}:8080")),
                    "{phase}: the rest is programmed"
                );
                empty(full);
                s
            }
            _ => {
                let full = fill(
                    &maps.join("fg_endpoint_addrs"),
                    |i| maps::EndpointKey { port_id: 0x7000_0000 + i, addr: junk_addr(i) },
                    1u8,
                );
                write_change();
                let s = status_until(&socket, "a degraded endpoint", |s| !degraded(s).is_empty()).await;
                check(&s);
                assert_eq!(
                    probe(&maps, "198.51.100.7:44000", "172.30.0.10:80"),
                    (0, format!("{web}:8080")),
                    "{phase}: the rest is programmed"
                );
                empty(full);
                s
            }
        };
        assert_eq!(s["pending"], Value::Bool(true), "{phase}: the object waits for a retry");
        // Room made: the retry alone programs it.
        status_until(&socket, "the retry", |s| degraded(s).is_empty() && s["pending"] == Value::Bool(false)).await;
        if let Some(to) = probe_to {
            assert_eq!(
                probe(&maps, "198.51.100.7:45000", to),
                (0, "10.0.4.1:8080".into()),
                "{phase}: programmed by the retry"
            );
        }
        // Back to the base state for the next phase.
        write(dir.path(), &base(web));
        synced(&socket).await;
    }
    agent.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_refuses_pinned_state_of_a_newer_version_and_keeps_it() {
    if !flowgate_ebpf::privileged_test("an_agent_refuses_pinned_state_of_a_newer_version_and_keeps_it") {
        return;
    }
    let fs = TempBpffs::new().unwrap();
    let bpffs = fs.path().join("flowgate");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("m")).unwrap();
    write(dir.path(), &format!("{HEAD}{}", service("web", "172.30.0.10", "10.0.2.1", "2026-01-01T00:00:00Z", "", "")));
    let agent = run_agent(dir.path(), &bpffs).await;
    agent.stop();
    // A newer agent ran meanwhile (its mark is all this one needs to see).
    let newer = bpffs.join(format!("abi-{}", flowgate_ebpf::pinned::ABI_VERSION + 1));
    std::fs::create_dir(&newer).unwrap();
    let maps_before: Vec<_> = std::fs::read_dir(bpffs.join("maps")).unwrap().map(|e| e.unwrap().file_name()).collect();
    let mut settings = flowgate_agent::AgentSettings::for_manifests(dir.path().join("m"), dir.path().join("api.sock"));
    settings.bpffs = bpffs.clone();
    settings.dataplane = flowgate_agent::DataplaneSettings::Ebpf { uplink: None };
    let err = match flowgate_agent::start(settings).await {
        Ok(a) => {
            a.stop();
            panic!("an older agent adopted a newer agent's pinned state");
        }
        Err(e) => e.to_string(),
    };
    assert!(err.contains("newer than this agent"), "{err}");
    let maps_after: Vec<_> = std::fs::read_dir(bpffs.join("maps")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(maps_before, maps_after, "nothing removed");
    assert!(newer.is_dir());
}
