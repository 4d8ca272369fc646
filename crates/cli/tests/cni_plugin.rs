//! The CNI plugin called as a runtime calls it, against the real agent in a node namespace (root;
//! CI runs it): every command, the endpoint it makes (interfaces, addresses, routes, DNS), real
//! traffic from pods made this way (pod to pod, to a Service VIP, to an "internet" namespace through
//! outbound NAT), anti-spoofing on them, every error path with its CNI code, idempotent DEL, GC,
//! STATUS, and an agent restart that keeps working endpoints untouched and cleans what a crash
//! left.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cni;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use cni::*;
use flowgate_ebpf::netns::Netns;
use serde_json::{json, Value};

fn root(test: &str) -> bool {
    flowgate_ebpf::privileged_test(test)
}

#[test]
fn version_answers_every_supported_version() {
    let o = cni("VERSION", "", None, None, &json!({"cniVersion": "1.1.0"}));
    assert_eq!(o.code, 0, "{}", o.raw);
    assert_eq!(o.out["cniVersion"], "1.1.0");
    let versions: Vec<&str> =
        o.out["supportedVersions"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(versions.contains(&"1.0.0") && versions.contains(&"1.1.0"), "{versions:?}");
}

#[test]
fn errors_before_the_agent_carry_the_spec_codes() {
    // No agent needed: the plugin refuses these itself.
    let conf = json!({"cniVersion": "1.0.0", "name": "n", "type": "flowgate-cni", "socket": "/nonexistent/flowgate.sock",
        "ipam": {"ranges": [[{"subnet": "10.250.0.0/24"}]]}});
    let missing_netns = cni("ADD", "c1", None, None, &conf);
    assert_eq!((missing_netns.code, missing_netns.out["code"].as_u64()), (1, Some(4)), "{}", missing_netns.raw);
    assert!(missing_netns.out["msg"].as_str().unwrap().contains("CNI_NETNS"));

    let ns = std::path::Path::new("/proc/self/ns/net");
    let mut old = conf.clone();
    old["cniVersion"] = json!("0.4.0");
    let o = cni("ADD", "c1", Some(ns), None, &old);
    assert_eq!(o.out["code"], 1, "{}", o.raw);

    let mut bad = conf.clone();
    bad["ipam"]["ranges"][0][0]["gateway"] = json!("10.9.9.9");
    let o = cni("ADD", "c1", Some(ns), None, &bad);
    assert_eq!(o.out["code"], 7, "{}", o.raw);
    assert!(o.out["msg"].as_str().unwrap().contains("ipam.ranges[0][0].gateway"), "{}", o.raw);

    let mut ipam = conf.clone();
    ipam["ipam"]["type"] = json!("host-local");
    assert_eq!(cni("ADD", "c1", Some(ns), None, &ipam).out["code"], 2);

    let o = cni("ADD", "c/../x", Some(ns), None, &conf);
    assert_eq!(o.out["code"], 4, "{}", o.raw);

    // Not JSON at all.
    let mut c = std::process::Command::new(plugin());
    c.env_clear().env("CNI_COMMAND", "DEL").env("CNI_CONTAINERID", "c").env("CNI_IFNAME", "eth0");
    let out = c.stdin(std::process::Stdio::null()).output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((out.status.code(), v["code"].as_u64()), (Some(1), Some(6)), "{v}");

    // GC without the list of attachments to keep would remove everything: refused.
    let mut gc = conf.clone();
    gc["cniVersion"] = json!("1.1.0");
    let o = cni("GC", "", None, None, &gc);
    assert_eq!(o.out["code"], 7, "{}", o.raw);
    assert!(o.out["msg"].as_str().unwrap().contains("cni.dev/valid-attachments"), "{}", o.raw);
    // An interface name that could not be one (it would also break the agent's URL).
    let o = cni_on("a/b", "DEL", "c1", None, None, &conf);
    assert_eq!(o.out["code"], 4, "{}", o.raw);

    // The agent is not there: try again later, saying where it looked.
    let o = cni("DEL", "c1", None, None, &conf);
    assert_eq!(o.out["code"], 11, "{}", o.raw);
    assert!(o.out["details"].as_str().unwrap().contains("/nonexistent/flowgate.sock"), "{}", o.raw);
    let o = cni("STATUS", "", None, None, &conf);
    assert_eq!(o.out["code"], 50, "{}", o.raw);
}

#[test]
fn pods_made_by_the_plugin_are_endpoints_of_the_switch() {
    if !root("pods_made_by_the_plugin_are_endpoints_of_the_switch") {
        return;
    }
    let node = Node::start("pods");
    let conf = node.conf("fgtest", "10.244.1.0/24");
    let mut failures: Vec<String> = Vec::new();

    // ADD: the result, then what it says is really there.
    let (pod_a, a) = add_pod(&conf, "ctr-a", "shop", "client");
    // pod-b publishes a host port, as containerd's go-cni spells it.
    let mut conf_b = conf.clone();
    conf_b["runtimeConfig"] =
        json!({"portMappings": [{"HostPort": 30999, "ContainerPort": 8080, "Protocol": "TCP", "HostIP": ""}]});
    let (pod_b, b) = add_pod(&conf_b, "ctr-b", "shop", "web-1");
    assert_eq!(a["cniVersion"], "1.0.0", "a 1.0.0 configuration gets a 1.0.0 result");
    assert_eq!(a["ips"][0]["address"], "10.244.1.2/32");
    assert_eq!(a["ips"][0]["gateway"], "10.244.1.1");
    assert_eq!(b["ips"][0]["address"], "10.244.1.3/32");
    assert_eq!(a["routes"], json!([{"dst": "10.244.1.1/32"}, {"dst": "0.0.0.0/0", "gw": "10.244.1.1"}]));
    assert_eq!(
        a["dns"],
        json!({"nameservers": [SERVICE_IP], "options": ["ndots:5"],
               "search": ["shop.svc.cluster.local", "svc.cluster.local", "cluster.local"]})
    );
    assert_eq!(a["interfaces"][1]["name"], "eth0");
    assert_eq!(a["interfaces"][1]["sandbox"], pod_a.path().to_str().unwrap());
    let mac = a["interfaces"][1]["mac"].as_str().unwrap();
    let link = pod_a.ip(&["-o", "link", "show", "eth0"]).unwrap();
    assert!(link.contains(mac) && link.contains("mtu 1400") && link.contains(",UP"), "{link}");
    let addrs = pod_a.ip(&["-o", "-4", "addr", "show", "eth0"]).unwrap();
    assert!(addrs.contains("10.244.1.2/32"), "{addrs}");
    let routes = pod_a.ip(&["route", "show"]).unwrap();
    assert!(routes.contains("default via 10.244.1.1 dev eth0"), "{routes}");
    let listed = std::process::Command::new(env!("CARGO_BIN_EXE_flowgate"))
        .args(["endpoints", "--socket"])
        .arg(node.socket())
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(
        listed.contains("fgtest/ctr-a/eth0  shop/client  10.244.1.2  ")
            && listed.contains("fgtest/ctr-b/eth0  shop/web-1  10.244.1.3  ")
            && listed.lines().all(|l| l.ends_with("  ready")),
        "flowgate endpoints:\n{listed}"
    );
    let host_if = a["interfaces"][0]["name"].as_str().unwrap();
    assert!(node.host_interfaces().contains(&host_if.to_owned()));
    let host_routes = node.ns.ip(&["route", "show"]).unwrap();
    assert!(host_routes.contains(&format!("10.244.1.2 dev {host_if}")), "{host_routes}");
    assert_eq!(node.endpoint_programs().len(), 2, "the endpoint program is attached before ADD returns");
    assert!(node.endpoint_pins().is_empty(), "a TC filter, not a pinned TCX link: {:?}", node.endpoint_pins());

    // Traffic: pod to pod, pod to the Service (endpoints written once pod-b's address is known),
    // pod to the internet through outbound NAT.
    let ip_b = ip_of(&b);
    let _web = Server::tcp(&pod_b, "web-1", "0.0.0.0:8080");
    let _udp = Server::udp(&pod_b, "web-1", "0.0.0.0:5353");
    let _far = Server::tcp(&node.internet, "internet", &format!("{INTERNET_IP}:9000"));
    match ask(&pod_a, &format!("{ip_b}:8080")) {
        Ok(l) if l == "web-1 10.244.1.2" => {}
        other => failures.push(format!("pod-a -> pod-b: {other:?}")),
    }
    std::fs::write(node.dir.0.join("m/slice.yaml"), endpoint_slice(&ip_b)).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let via_service = loop {
        let r = ask(&pod_a, &format!("{SERVICE_IP}:80"));
        if r.is_ok() || std::time::Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    match via_service {
        Ok(l) if l == "web-1 10.244.1.2" => {}
        other => failures.push(format!("pod-a -> Service {SERVICE_IP}:80: {other:?}")),
    }
    // The host port, from outside the node: the pod sees the client itself.
    match ask(&node.internet, &format!("{NODE_IP}:30999")) {
        Ok(l) if l == format!("web-1 {INTERNET_IP}") => {}
        other => failures.push(format!("internet -> hostPort {NODE_IP}:30999: {other:?}")),
    }
    match ask(&pod_a, &format!("{INTERNET_IP}:9000")) {
        Ok(l) if l == format!("internet {NODE_IP}") => {}
        other => failures.push(format!("pod-a -> internet (outbound NAT, must see {NODE_IP}): {other:?}")),
    }

    // An HNS load balancer: a VIP the switch spreads over backend addresses, like a Service.
    let lb = json!({"name": "lb1", "frontendVips": ["10.97.0.1"], "backends": [ip_b],
                    "portMappings": [{"protocol": "tcp", "frontendPort": 80, "backendPort": 8080}]});
    node.api("PUT", "/v1/loadbalancers/lb1", Some(lb)).unwrap();
    match ask(&pod_a, "10.97.0.1:80") {
        Ok(l) if l == "web-1 10.244.1.2" => {}
        other => failures.push(format!("pod-a -> load balancer 10.97.0.1:80: {other:?}")),
    }
    let bad = json!({"name": "lb2", "frontendVips": ["10.97.0.2"], "backends": ["fd00::1"],
                     "portMappings": [{"protocol": "tcp", "frontendPort": 80, "backendPort": 8080}]});
    let err = node.api("PUT", "/v1/loadbalancers/lb2", Some(bad)).unwrap_err();
    assert!(err.contains("400") && err.contains("backends[0]"), "{err}");
    node.api("DELETE", "/v1/loadbalancers/lb1", None).unwrap();
    assert!(ask(&pod_a, "10.97.0.1:80").is_err(), "the VIP is gone with its load balancer");

    // Anti-spoofing on a plugin-made endpoint: a second address pod-a gives itself is not its own.
    pod_a.ip(&["addr", "add", "10.244.1.99/32", "dev", "eth0"]).unwrap();
    let spoofed_before = node.counter("dropped_spoofed");
    if let Err(e) = udp_ask(&pod_a, "10.244.1.2:0", &format!("{ip_b}:5353")) {
        failures.push(format!("UDP from pod-a's own address: {e}"));
    }
    match udp_ask(&pod_a, "10.244.1.99:0", &format!("{ip_b}:5353")) {
        Ok(answer) => failures.push(format!("a spoofed datagram got through: {answer}")),
        Err(_) => {
            if node.counter("dropped_spoofed") <= spoofed_before {
                failures.push("the spoofed datagram was not counted as spoofed".into());
            }
        }
    }
    pod_a.ip(&["addr", "del", "10.244.1.99/32", "dev", "eth0"]).unwrap();

    // CHECK: fine as made; names what is missing once something is.
    let mut check = conf.clone();
    check["prevResult"] = a.clone();
    let o = cni("CHECK", "ctr-a", Some(pod_a.path()), None, &check);
    if o.code != 0 {
        failures.push(format!("CHECK of a good endpoint: {}", o.raw));
    }
    let mut wrong = check.clone();
    wrong["prevResult"]["ips"][0]["address"] = json!("10.244.1.77/32");
    let o = cni("CHECK", "ctr-a", Some(pod_a.path()), None, &wrong);
    assert_eq!(o.out["code"], 111, "CHECK with another address: {}", o.raw);
    pod_b.ip(&["route", "del", "default"]).unwrap();
    let mut check_b = conf.clone();
    check_b["prevResult"] = b.clone();
    let o = cni("CHECK", "ctr-b", Some(pod_b.path()), None, &check_b);
    assert_eq!(o.out["code"], 111, "{}", o.raw);
    assert!(o.out["msg"].as_str().unwrap().contains("no default route via 10.244.1.1"), "{}", o.raw);
    let o = cni("CHECK", "ctr-x", Some(pod_b.path()), None, &check_b);
    assert_eq!(o.out["code"], 3, "CHECK of an unknown container: {}", o.raw);

    // A host port may only be on one of the node's own addresses, never on a Service's.
    let mut hijack = conf.clone();
    hijack["runtimeConfig"] =
        json!({"portMappings": [{"hostPort": 80, "containerPort": 8080, "protocol": "tcp", "hostIP": SERVICE_IP}]});
    let thief = Netns::new().unwrap();
    let o = cni("ADD", "ctr-thief", Some(thief.path()), None, &hijack);
    assert_eq!(o.out["code"], 7, "{}", o.raw);
    assert!(o.out["msg"].as_str().unwrap().contains("hostIP"), "{}", o.raw);
    drop(thief);

    // The ipRanges capability replaces the network's ranges for one pod.
    let mut ranged = conf.clone();
    ranged["runtimeConfig"] =
        json!({"ipRanges": [[{"subnet": "10.244.1.0/24", "rangeStart": "10.244.1.200", "rangeEnd": "10.244.1.210"}]]});
    let (pod_r, r) = add_pod(&ranged, "ctr-r", "shop", "ranged");
    assert_eq!(r["ips"][0]["address"], "10.244.1.200/32", "{r}");
    assert_eq!(cni("DEL", "ctr-r", Some(pod_r.path()), None, &conf).code, 0);
    drop(pod_r);

    // Errors from the agent: a namespace that does not exist, an exhausted range, STATUS.
    let o = cni("ADD", "ctr-gone", Some(std::path::Path::new("/run/netns/flowgate-no-such-ns")), None, &conf);
    assert_eq!(o.out["code"], 7, "{}", o.raw);
    assert!(o.out["msg"].as_str().unwrap().contains("netns"), "{}", o.raw);
    let tiny = node.conf("tiny", "10.245.0.0/30");
    let (_t1, _) = add_pod(&tiny, "ctr-t1", "shop", "t1");
    assert_eq!(cni("STATUS", "", None, None, &tiny).out["code"], 50, "STATUS of a full network");
    let t2 = Netns::new().unwrap();
    let o = cni("ADD", "ctr-t2", Some(t2.path()), None, &tiny);
    assert_eq!(o.out["code"], 110, "{}", o.raw);
    assert!(o.out["msg"].as_str().unwrap().contains("no free address"), "{}", o.raw);
    assert_eq!(cni("STATUS", "", None, None, &conf).code, 0);
    assert_eq!(node.host_interfaces().len(), 3, "the failed ADD left no interface: {:?}", node.host_interfaces());

    // DEL is idempotent, also once the namespace is gone; GC removes what is not valid.
    let o = cni("DEL", "ctr-b", Some(pod_b.path()), None, &conf);
    assert_eq!(o.code, 0, "{}", o.raw);
    assert_eq!(o.raw.trim(), "", "DEL prints nothing on success");
    assert_eq!(cni("DEL", "ctr-b", Some(pod_b.path()), None, &conf).code, 0, "second DEL");
    drop(t2);
    drop(_t1);
    let o = cni("DEL", "ctr-t1", None, None, &tiny);
    assert_eq!(o.code, 0, "DEL after the namespace is gone: {}", o.raw);
    let mut gc = conf.clone();
    gc["cniVersion"] = json!("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([]);
    let o = cni("GC", "", None, None, &gc);
    assert_eq!(o.code, 0, "{}", o.raw);
    assert!(node.host_interfaces().is_empty(), "left: {:?}", node.host_interfaces());
    assert!(node.endpoint_pins().is_empty(), "left: {:?}", node.endpoint_pins());
    assert_eq!(node.api("GET", "/v1/endpoints", None).unwrap(), json!([]));
    drop(pod_a);
    drop(pod_b);
    assert!(failures.is_empty(), "{}\nagent log:\n{}", failures.join("\n"), node.log());
}

#[test]
fn a_restarted_agent_keeps_working_endpoints_and_cleans_what_a_crash_left() {
    if !root("a_restarted_agent_keeps_working_endpoints_and_cleans_what_a_crash_left") {
        return;
    }
    let mut node = Node::start("restart");
    let conf = node.conf("fgtest", "10.244.1.0/24");
    // A pod that comes and goes first, so that pod-a's port is not the lowest number: a restarted
    // agent that renumbered ports would move it.
    let (pod_0, _) = add_pod(&conf, "ctr-0", "shop", "gone");
    let (pod_a, a) = add_pod(&conf, "ctr-a", "shop", "client");
    assert_eq!(cni("DEL", "ctr-0", Some(pod_0.path()), None, &conf).code, 0);
    drop(pod_0);
    let a_host = a["interfaces"][0]["name"].as_str().unwrap().to_owned();
    let port_before = bound_port(&node, &a_host).expect("pod-a's interface is bound");
    let (pod_b, b) = add_pod(&conf, "ctr-b", "shop", "web-1");
    let _web = Server::tcp(&pod_b, "web-1", "0.0.0.0:8080");
    let _client = Server::tcp(&pod_a, "client", "0.0.0.0:8080");
    let ip_b = ip_of(&b);
    // A load balancer recorded before the crash is served after the restart.
    let lb = json!({"name": "lb1", "frontendVips": ["10.97.0.1"], "backends": [ip_of(&a)],
                    "portMappings": [{"protocol": "tcp", "frontendPort": 80, "backendPort": 8080}]});
    node.api("PUT", "/v1/loadbalancers/lb1", Some(lb)).unwrap();
    let index_before = node.ns.ip(&["-o", "link", "show", a["interfaces"][0]["name"].as_str().unwrap()]).unwrap();

    // A crash: the agent dies; meanwhile pod-b's namespace goes away, and an ADD that never
    // returned left a record (still "creating") and an interface; a stray interface appears.
    node.stop_agent(true);
    drop(pod_b);
    {
        let store = flowgate_hostnet::store::Store::open(&node.state_dir().join("hostnet.redb")).unwrap();
        let half = flowgate_hostnet::Endpoint {
            id: "fgtest/ctr-half/eth0".into(),
            network: "fgtest".into(),
            container_id: "ctr-half".into(),
            ifname: "eth0".into(),
            netns: "/run/netns/flowgate-no-such-ns".into(),
            pod: None,
            ips: vec![],
            mac: None,
            host_interface: flowgate_hostnet::links::host_interface_name("fgtest/ctr-half/eth0"),
            mtu: None,
            dns: Default::default(),
            policies: vec![],
            state: flowgate_hostnet::EndpointState::Creating,
        };
        let sets: Vec<Vec<flowgate_hostnet::IpRange>> =
            vec![vec![serde_json::from_value(json!({"subnet": "10.244.1.0/24"})).unwrap()]];
        store.reserve(half.clone(), &sets).unwrap();
        node.ns.ip(&["link", "add", &half.host_interface, "type", "veth", "peer", "name", "fgtmp0"]).unwrap();
    }
    node.ns.ip(&["link", "add", "fgv00000000beef", "type", "veth", "peer", "name", "fgtmp1"]).unwrap();
    node.ns.ip(&["link", "add", "keepme0", "type", "veth", "peer", "name", "keepme1"]).unwrap();

    node.start_agent();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while node.host_interfaces().len() != 1 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let left: BTreeSet<String> = node.host_interfaces().into_iter().collect();
    assert_eq!(
        left,
        BTreeSet::from([a["interfaces"][0]["name"].as_str().unwrap().to_owned()]),
        "only pod-a's interface remains:\n{}",
        node.log()
    );
    assert!(node.ns.ip(&["link", "show", "keepme0"]).is_ok(), "an interface not named as ours is left alone");
    let index_after = node.ns.ip(&["-o", "link", "show", a["interfaces"][0]["name"].as_str().unwrap()]).unwrap();
    assert_eq!(index_before.split(':').next(), index_after.split(':').next(), "pod-a's veth was not remade");
    let eps = node.api("GET", "/v1/endpoints", None).unwrap();
    let ids: Vec<&str> = eps.as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["fgtest/ctr-a/eth0"]);
    assert_eq!(bound_port(&node, &a_host), Some(port_before), "pod-a keeps its port number across the restart");
    // pod-a still works, under the switch: the next ADD reuses no address still held.
    let (pod_c, c) = add_pod(&conf, "ctr-c", "shop", "web-2");
    assert_ne!(ip_of(&c), ip_of(&a));
    let _web_c = Server::tcp(&pod_c, "web-2", "0.0.0.0:8080");
    assert_eq!(ask(&pod_a, &format!("{}:8080", ip_of(&c))).unwrap(), format!("web-2 {}", ip_of(&a)));
    assert_eq!(ask(&pod_c, "10.97.0.1:80").unwrap(), format!("client {}", ip_of(&c)), "the load balancer");
    let _ = ip_b;
    let mut check = conf.clone();
    check["prevResult"] = a.clone();
    let o = cni("CHECK", "ctr-a", Some(pod_a.path()), None, &check);
    assert_eq!(o.code, 0, "CHECK after the restart: {}", o.raw);
    for id in ["ctr-a", "ctr-c"] {
        assert_eq!(cni("DEL", id, None, None, &conf).code, 0);
    }
    assert!(node.host_interfaces().is_empty());
    node.ns.ip(&["link", "del", "keepme0"]).unwrap();
}

#[test]
fn churn_leaves_no_interface_address_record_or_map_entry() {
    if !root("churn_leaves_no_interface_address_record_or_map_entry") {
        return;
    }
    let node = Node::start("churn");
    // One configuration for every node: the ranges are the node's podCIDRs.
    let mut conf = node.conf("fgtest", "10.244.1.0/24");
    conf["ipam"] = json!({"usePodCIDR": true});
    let ns = Netns::new().unwrap();
    let ports_before = kernel_entries(&node);
    for round in 0..110 {
        let id = format!("churn-{round}");
        let o =
            cni("ADD", &id, Some(ns.path()), Some(&format!("K8S_POD_NAMESPACE=churn;K8S_POD_NAME=p{round}")), &conf);
        assert_eq!(o.code, 0, "ADD {round}: {}", o.raw);
        let o = cni("DEL", &id, Some(ns.path()), None, &conf);
        assert_eq!(o.code, 0, "DEL {round}: {}", o.raw);
    }
    assert!(node.host_interfaces().is_empty(), "{:?}", node.host_interfaces());
    assert!(node.endpoint_pins().is_empty(), "{:?}", node.endpoint_pins());
    assert_eq!(node.api("GET", "/v1/endpoints", None).unwrap(), json!([]));
    let links = ns.ip(&["-o", "link", "show"]).unwrap();
    assert_eq!(links.lines().count(), 1, "only lo is left in the pod namespace: {links}");
    assert_eq!(kernel_entries(&node), ports_before, "kernel map entries (bound interfaces, endpoint addresses)");
    let state = node.api("GET", "/v1/state", None).unwrap();
    let ports = state["ports"].as_array().unwrap();
    assert!(ports.iter().all(|p| p["kind"] != "endpoint"), "no endpoint port is left: {ports:?}");
}

/// The port an interface of the node is bound to in the kernel (`fg_ports`).
fn bound_port(node: &Node, iface: &str) -> Option<u32> {
    let line = node.ns.ip(&["-o", "link", "show", iface]).ok()?;
    let ifindex: u32 = line.split(':').next()?.trim().parse().ok()?;
    let data = aya::maps::MapData::from_pin(node.pins().join("maps/fg_ports")).unwrap();
    let map = aya::maps::Map::HashMap(data);
    let ports = aya::maps::HashMap::<_, u32, flowgate_ebpf::maps::Port>::try_from(&map).unwrap();
    ports.get(&ifindex, 0).ok().map(|p| p.port_id)
}

/// Entries of the kernel's per-endpoint maps: bound interfaces and endpoint addresses.
fn kernel_entries(node: &Node) -> (usize, usize) {
    let maps = node.pins().join("maps");
    let count = |name: &str| -> usize {
        let data = aya::maps::MapData::from_pin(maps.join(name)).unwrap();
        let map = aya::maps::Map::HashMap(data);
        match name {
            "fg_ports" => {
                aya::maps::HashMap::<_, u32, flowgate_ebpf::maps::Port>::try_from(&map).unwrap().keys().count()
            }
            _ => aya::maps::HashMap::<_, flowgate_ebpf::maps::EndpointKey, u8>::try_from(&map).unwrap().keys().count(),
        }
    };
    (count("fg_ports"), count("fg_endpoint_addrs"))
}

#[test]
fn dual_stack_pods_get_an_address_per_family_and_talk_over_both() {
    if !root("dual_stack_pods_get_an_address_per_family_and_talk_over_both") {
        return;
    }
    let node = Node::start("dual");
    let mut conf = node.conf("dual", "10.244.1.0/24");
    conf["ipam"]["ranges"] = json!([[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:10:244:1::/64"}]]);
    let (a, ra) = add_pod(&conf, "ds-a", "shop", "a");
    let (b, rb) = add_pod(&conf, "ds-b", "shop", "b");
    let ips: Vec<&str> = rb["ips"].as_array().unwrap().iter().map(|i| i["address"].as_str().unwrap()).collect();
    assert_eq!(ips, ["10.244.1.3/32", "fd00:10:244:1::3/128"], "{rb}");
    assert_eq!(rb["ips"][1]["gateway"], "fd00:10:244:1::1");
    assert_eq!(
        ra["routes"],
        json!([{"dst": "10.244.1.1/32"}, {"dst": "0.0.0.0/0", "gw": "10.244.1.1"},
               {"dst": "fd00:10:244:1::1/128"}, {"dst": "::/0", "gw": "fd00:10:244:1::1"}])
    );
    let routes = a.ip(&["-6", "route", "show"]).unwrap();
    assert!(routes.contains("default via fd00:10:244:1::1 dev eth0"), "{routes}");
    let _v4 = Server::tcp(&b, "b", "0.0.0.0:8080");
    let _v6 = Server::tcp(&b, "b", "[::]:8081");
    assert_eq!(ask(&a, "10.244.1.3:8080").unwrap(), "b 10.244.1.2");
    assert_eq!(ask(&a, "[fd00:10:244:1::3]:8081").unwrap(), "b fd00:10:244:1::2");
    let mut check = conf.clone();
    check["prevResult"] = ra.clone();
    assert_eq!(cni("CHECK", "ds-a", Some(a.path()), None, &check).code, 0);
    // The result is what the pod holds, in both result versions.
    assert_result_is_what_the_pod_holds(&ra, &a);
    let mut v11 = conf.clone();
    v11["cniVersion"] = json!("1.1.0");
    let (c, rc) = add_pod(&v11, "ds-c", "shop", "c");
    assert_eq!(rc["routes"][0], json!({"dst": "10.244.1.1/32", "scope": 253}), "{rc}");
    assert_result_is_what_the_pod_holds(&rc, &c);
    assert_eq!(cni("DEL", "ds-c", None, None, &v11).code, 0);
    drop(c);
    for id in ["ds-a", "ds-b"] {
        assert_eq!(cni("DEL", id, None, None, &conf).code, 0);
    }
    assert!(node.host_interfaces().is_empty());
}

/// The addresses (with their prefix lengths) and routes of the pod's interface, read with `ip -j`
/// in the pod, are those the result lists, no more and no fewer (the kernel's own link-local
/// address and route aside).
fn assert_result_is_what_the_pod_holds(result: &Value, pod: &Netns) {
    let json = |args: &[&str]| -> Value { serde_json::from_str(&pod.ip(args).unwrap()).unwrap() };
    let mut held: BTreeSet<String> = BTreeSet::new();
    for link in json(&["-j", "addr", "show", "dev", "eth0"]).as_array().unwrap() {
        for a in link["addr_info"].as_array().unwrap().iter().filter(|a| a["scope"] == "global") {
            held.insert(format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]));
        }
    }
    let reported: BTreeSet<String> =
        result["ips"].as_array().unwrap().iter().map(|i| i["address"].as_str().unwrap().to_owned()).collect();
    assert_eq!(reported, held, "the result's addresses vs the pod's interface: {result}");
    let mut routes: BTreeSet<(String, Option<String>)> = BTreeSet::new();
    for (family, default, host) in [("-4", "0.0.0.0/0", "/32"), ("-6", "::/0", "/128")] {
        for r in json(&[family, "-j", "route", "show", "dev", "eth0"]).as_array().unwrap() {
            if r["protocol"] == "kernel" {
                continue;
            }
            let dst = match r["dst"].as_str().unwrap() {
                "default" => default.to_owned(),
                d if d.contains('/') => d.to_owned(),
                d => format!("{d}{host}"),
            };
            routes.insert((dst, r["gateway"].as_str().map(str::to_owned)));
        }
    }
    let listed: BTreeSet<(String, Option<String>)> = result["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["dst"].as_str().unwrap().to_owned(), r["gw"].as_str().map(str::to_owned)))
        .collect();
    assert_eq!(listed, routes, "the result's routes vs the pod's: {result}");
}

#[test]
fn a_pod_on_two_networks_sends_from_both_of_its_addresses() {
    if !root("a_pod_on_two_networks_sends_from_both_of_its_addresses") {
        return;
    }
    let node = Node::start("multi");
    let one = node.conf("one", "10.244.1.0/24");
    let two = node.conf("two", "10.245.0.0/24");
    let (server, rs) = add_pod(&one, "srv", "shop", "server");
    let _web = Server::tcp(&server, "server", "0.0.0.0:8080");
    let pod = Netns::new().unwrap();
    let args = "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=multi";
    let first = cni_on("eth0", "ADD", "multi", Some(pod.path()), Some(args), &one);
    let second = cni_on("eth1", "ADD", "multi", Some(pod.path()), Some(args), &two);
    assert_eq!((first.code, second.code), (0, 0), "{} {}", first.raw, second.raw);
    let (a1, a2) = (ip_of(&first.out), ip_of(&second.out));
    // Both attachments are the same pod's endpoint: each address may send on its own interface.
    pod.ip(&[
        "route",
        "add",
        &format!("{}/32", ip_of(&rs)),
        "via",
        "10.245.0.1",
        "dev",
        "eth1",
        "src",
        &a2,
        "table",
        "100",
    ])
    .unwrap();
    pod.ip(&["rule", "add", "from", &a2, "table", "100"]).unwrap();
    let to = format!("{}:8080", ip_of(&rs));
    assert_eq!(ask_from(&pod, &format!("{a1}:0"), &to).unwrap(), format!("server {a1}"));
    assert_eq!(ask_from(&pod, &format!("{a2}:0"), &to).unwrap(), format!("server {a2}"));
    for (ifname, conf) in [("eth0", &one), ("eth1", &two)] {
        assert_eq!(cni_on(ifname, "DEL", "multi", None, None, conf).code, 0);
    }
    assert_eq!(cni("DEL", "srv", None, None, &one).code, 0);
    assert!(node.host_interfaces().is_empty());
}

/// A network's ACL policies (the host networking service's `ACL` type, `acls` in the network
/// configuration) are every pod's first ACL rules, by ascending priority, enforced in the kernel:
/// here "allow out TCP 8080" (priority 5) before "block out TCP 8080-8090" (priority 20), so a pod
/// reaches another on 8080 but not on 8081, and `flowgate trace --live` names the rule.
#[test]
fn a_networks_acl_policies_allow_and_block_in_the_kernel() {
    if !root("a_networks_acl_policies_allow_and_block_in_the_kernel") {
        return;
    }
    let node = Node::start("acl");
    let mut conf = node.conf("acl", "10.244.1.0/24");
    conf["acls"] = json!([
        {"action": "Block", "direction": "Out", "protocol": "tcp", "ports": ["8080-8090"], "priority": 20},
        {"action": "Allow", "direction": "Out", "protocol": "tcp", "ports": ["8080"], "priority": 5},
    ]);
    let (a, _) = add_pod(&conf, "acl-a", "shop", "a");
    let (b, rb) = add_pod(&conf, "acl-b", "shop", "b");
    let b_ip = ip_of(&rb);
    let _open = Server::tcp(&b, "b", "0.0.0.0:8080");
    let _closed = Server::tcp(&b, "b", "0.0.0.0:8081");
    assert_eq!(ask(&a, &format!("{b_ip}:8080")).unwrap(), "b 10.244.1.2");
    let blocked = ask(&a, &format!("{b_ip}:8081"));
    assert!(blocked.is_err(), "8081 must be blocked: {blocked:?}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flowgate"))
        .args(["trace", "--live", "--socket"])
        .arg(node.socket())
        .args(["--from", "10.244.1.2", "--to", &format!("{b_ip}:8081"), "-o", "json"])
        .output()
        .unwrap();
    let t: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    assert_eq!(t["verdict"], "drop", "{t}");
    assert_eq!(t["reason"], "policy-denied", "{t}");
    assert!(t["steps"].to_string().contains("ACL policy (priority 20): block out"), "{t}");
    for id in ["acl-a", "acl-b"] {
        assert_eq!(cni("DEL", id, None, None, &conf).code, 0);
    }
    assert!(node.host_interfaces().is_empty());
}

/// NetworkPolicy on pods the plugin made, whose Pod objects the agent has not seen (yet): they
/// count as pods without labels, so a policy selecting every pod of their namespace isolates them.
/// Under deny-all (ingress and egress) one pod cannot reach another, but the node still reaches
/// them — its connections come from the gateway address on the pod's host side, which counts as
/// the node's own (Kubernetes: traffic to and from the pod's node is always allowed).
#[test]
fn deny_all_isolates_cni_pods_but_never_from_their_node() {
    if !root("deny_all_isolates_cni_pods_but_never_from_their_node") {
        return;
    }
    let node = Node::start("denyall");
    let conf = node.conf("denyall", "10.244.1.0/24");
    let (a, ra) = add_pod(&conf, "da-a", "shop", "a");
    let (b, rb) = add_pod(&conf, "da-b", "shop", "b");
    let b_ip = ip_of(&rb);
    let _server = Server::tcp(&b, "b", "0.0.0.0:8080");
    assert_eq!(ask(&a, &format!("{b_ip}:8080")).unwrap(), "b 10.244.1.2", "before the policy");

    std::fs::write(
        node.dir.0.join("m/policy.yaml"),
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-all, namespace: shop}\n\
         spec: {podSelector: {}, policyTypes: [Ingress, Egress]}\n",
    )
    .unwrap();
    let trace = |from: &str| -> Value {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_flowgate"))
            .args(["trace", "--live", "--socket"])
            .arg(node.socket())
            .args(["--from", from, "--to", &format!("{b_ip}:8080"), "-o", "json"])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while trace("10.244.1.2")["verdict"] != "drop" {
        assert!(std::time::Instant::now() < deadline, "the policy was not applied: {}", node.log());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(ask(&a, &format!("{b_ip}:8080")).is_err(), "pod to pod under deny-all");
    assert_eq!(trace("10.244.1.1")["verdict"], "allow", "from the gateway (the node)");
    assert_eq!(trace(NODE_IP)["verdict"], "allow", "from the node's address");
    // The node's own connection (its source: the gateway address on b's host side).
    let got = ask(&node.ns, &format!("{b_ip}:8080")).unwrap_or_else(|e| panic!("node to pod under deny-all: {e}"));
    assert!(got.starts_with("b 10.244.1.1"), "{got}");
    // CHECK notices a host interface without the endpoint program (someone deleted the filter).
    let mut check = conf.clone();
    check["prevResult"] = ra;
    assert_eq!(cni("CHECK", "da-a", Some(a.path()), None, &check).code, 0);
    for dev in node.endpoint_programs() {
        let out = node.ns.command("tc").args(["filter", "del", "dev", &dev, "ingress"]).output().unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let o = cni("CHECK", "da-a", Some(a.path()), None, &check);
    assert_eq!(o.out["code"], 111, "{}", o.raw);
    assert!(o.raw.contains("no endpoint program"), "{}", o.raw);
    for id in ["da-a", "da-b"] {
        assert_eq!(cni("DEL", id, None, None, &conf).code, 0);
    }
}

/// A second ADD of a live attachment (same network, container and interface, no DEL between) is
/// refused with code 112 and changes nothing: the pod keeps its address, its veth and its traffic
/// (an agent that replaced it renumbered a running pod). An ADD after a half-made attachment — its
/// veth gone, or its namespace gone — replaces the leftover and works.
#[test]
fn a_second_add_is_refused_and_a_leftover_replaced() {
    if !root("a_second_add_is_refused_and_a_leftover_replaced") {
        return;
    }
    let node = Node::start("twice");
    let conf = node.conf("twice", "10.244.1.0/24");
    let args = "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web";
    let (pod, first) = add_pod(&conf, "twice", "shop", "web");
    let ip = ip_of(&first);
    let host_if = first["interfaces"][0]["name"].as_str().unwrap().to_owned();
    let link_before = node.ns.ip(&["-o", "link", "show", &host_if]).unwrap();
    let _web = Server::tcp(&pod, "web", "0.0.0.0:8080");
    let mut failures = Vec::new();

    let other = Netns::new().unwrap();
    for (what, ns) in [("same namespace", pod.path()), ("another namespace", other.path())] {
        let o = cni("ADD", "twice", Some(ns), Some(args), &conf);
        if o.code == 0 || o.out["code"] != 112 {
            failures.push(format!("second ADD ({what}) must fail with code 112: {}", o.raw));
        } else if !o.out["msg"].as_str().unwrap_or_default().contains("already has interface \"eth0\"") {
            failures.push(format!("second ADD ({what}): the message should say what exists: {}", o.raw));
        }
    }
    let addrs = pod.ip(&["-o", "-4", "addr", "show", "eth0"]).unwrap_or_else(|e| format!("no eth0: {e}"));
    if !addrs.contains(&format!("{ip}/32")) || addrs.lines().count() != 1 {
        failures.push(format!("the pod's address changed: {addrs}"));
    }
    if node.ns.ip(&["-o", "link", "show", &host_if]).ok().as_deref() != Some(link_before.as_str()) {
        failures.push(format!("the pod's veth was touched: {:?}", node.host_interfaces()));
    }
    let recorded = node.api("GET", "/v1/endpoints/twice/twice/eth0", None).unwrap_or_else(|e| json!(e));
    if recorded["ips"][0]["address"].as_str().map(|a| a.starts_with(&format!("{ip}/"))) != Some(true) {
        failures.push(format!("the record changed: {recorded}"));
    }
    match ask(&node.ns, &format!("{ip}:8080")) {
        Ok(l) if l.starts_with("web ") => {}
        other => failures.push(format!("the pod no longer answers at {ip}: {other:?}")),
    }
    let mut check = conf.clone();
    check["prevResult"] = first.clone();
    let o = cni("CHECK", "twice", Some(pod.path()), None, &check);
    if o.code != 0 {
        failures.push(format!("CHECK after the refused ADDs: {}", o.raw));
    }
    assert!(failures.is_empty(), "{}\nagent log:\n{}", failures.join("\n"), node.log());

    // Half made: the veth is gone (deleted by someone); the runtime's next ADD replaces it.
    node.ns.ip(&["link", "del", &host_if]).unwrap();
    let o = cni("ADD", "twice", Some(pod.path()), Some(args), &conf);
    assert_eq!(o.code, 0, "ADD after the veth went: {}\n{}", o.raw, node.log());
    let again = ip_of(&o.out);
    assert!(pod.ip(&["-o", "-4", "addr", "show", "eth0"]).unwrap().contains(&format!("{again}/32")));
    assert_eq!(ask(&node.ns, &format!("{again}:8080")).unwrap().split(' ').next(), Some("web"));
    // The namespace is gone (the container died without a DEL): ADD in a new one works.
    drop(_web);
    drop(pod);
    let o = cni("ADD", "twice", Some(other.path()), Some(args), &conf);
    assert_eq!(o.code, 0, "ADD after the namespace went: {}\n{}", o.raw, node.log());
    assert!(other.ip(&["-o", "-4", "addr", "show", "eth0"]).unwrap().contains(&format!("{}/32", ip_of(&o.out))));
    assert_eq!(node.host_interfaces().len(), 1, "{:?}", node.host_interfaces());
    assert_eq!(cni("DEL", "twice", Some(other.path()), None, &conf).code, 0);
    assert!(node.host_interfaces().is_empty(), "{:?}", node.host_interfaces());
}

/// Makes `ns` send 127.0.0.0/8 out of `dev` to `via`, as a hostile peer would (its own loopback
/// addresses flushed, route_localnet on its interface): the node must never answer.
fn route_loopback_out(ns: &Netns, dev: &str, via: &str) {
    let out = ns
        .command("sh")
        .args(["-c", &format!("echo 1 > /proc/sys/net/ipv4/conf/{dev}/route_localnet")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    ns.ip(&["addr", "flush", "dev", "lo"]).unwrap();
    ns.ip(&["route", "add", "127.0.0.0/8", "via", via, "dev", dev]).unwrap();
}

/// Host ports on the node's loopback and at the pods' gateway, as the reference portmap plugin
/// serves them: `hostIP` 127.0.0.1 is accepted (podman `-p 127.0.0.1:8081:80`) and served to the
/// node's own clients on 127.0.0.1 only; a host port without `hostIP` answers on 127.0.0.1 from the
/// node, at the gateway address from pods (the pod itself included, hairpinned) and from the node,
/// and on the node's address from outside as before. Loopback is never served to anyone else: a
/// pod or a peer on the uplink routing 127.0.0.0/8 to the node reaches neither a host port nor a
/// service the node listens to on 127.0.0.1 (CVE-2020-8558).
#[test]
fn host_ports_answer_on_loopback_to_the_node_only_and_at_the_gateway() {
    if !root("host_ports_answer_on_loopback_to_the_node_only_and_at_the_gateway") {
        return;
    }
    let node = Node::start("hostports");
    let conf = node.conf("hp", "10.244.1.0/24");
    let mut with_ports = conf.clone();
    with_ports["runtimeConfig"] = json!({"portMappings": [
        {"hostPort": 30990, "containerPort": 8080, "protocol": "tcp"},
        {"hostPort": 30991, "containerPort": 8080, "protocol": "tcp", "hostIP": "127.0.0.1"},
    ]});
    let (web, rw) = add_pod(&with_ports, "hp-web", "shop", "web");
    let (client, rc) = add_pod(&conf, "hp-client", "shop", "client");
    let (web_ip, client_ip) = (ip_of(&rw), ip_of(&rc));
    let gateway = rw["ips"][0]["gateway"].as_str().unwrap().to_owned();
    let _web = Server::tcp(&web, "web", "0.0.0.0:8080");
    // A service of the node's own, on loopback only.
    let _node_local = Server::tcp(&node.ns, "node-local", "127.0.0.1:30992");
    let mut failures = Vec::new();
    fn expect(failures: &mut Vec<String>, what: &str, got: Result<String, String>, want: Option<&str>) {
        match (got, want) {
            (Ok(l), Some(w)) if l == w => {}
            (Err(_), None) => {}
            (got, want) => failures.push(format!("{what}: got {got:?}, want {want:?}")),
        }
    }
    let from_node = format!("web {NODE_IP}");
    expect(&mut failures, "node -> 127.0.0.1:30990", ask(&node.ns, "127.0.0.1:30990"), Some(&from_node));
    expect(
        &mut failures,
        "node -> 127.0.0.1:30991 (hostIP 127.0.0.1)",
        ask(&node.ns, "127.0.0.1:30991"),
        Some(&from_node),
    );
    expect(
        &mut failures,
        "node -> its address:30991 (hostIP 127.0.0.1)",
        ask(&node.ns, &format!("{NODE_IP}:30991")),
        None,
    );
    expect(
        &mut failures,
        "client pod -> gateway:30990",
        ask(&client, &format!("{gateway}:30990")),
        Some(&format!("web {client_ip}")),
    );
    expect(
        &mut failures,
        "web pod -> gateway:30990 (itself)",
        ask(&web, &format!("{gateway}:30990")),
        Some(&from_node),
    );
    expect(
        &mut failures,
        "node -> gateway:30990",
        ask(&node.ns, &format!("{gateway}:30990")),
        Some(&format!("web {gateway}")),
    );
    expect(
        &mut failures,
        "internet -> node:30990",
        ask(&node.internet, &format!("{NODE_IP}:30990")),
        Some(&format!("web {INTERNET_IP}")),
    );
    expect(
        &mut failures,
        "client pod -> gateway:30991 (hostIP 127.0.0.1)",
        ask(&client, &format!("{gateway}:30991")),
        None,
    );
    expect(
        &mut failures,
        "node -> 127.0.0.1:30992 (control)",
        ask(&node.ns, "127.0.0.1:30992"),
        Some("node-local 127.0.0.1"),
    );

    // `flowgate trace --live` says the same as the kernel.
    let trace = |from: &str, to: &str| -> Value {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_flowgate"))
            .args(["trace", "--live", "--socket"])
            .arg(node.socket())
            .args(["--from", from, "--to", to, "-o", "json"])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    };
    let t = trace("127.0.0.1", "127.0.0.1:30991");
    if t["dnat"] != json!([format!("{web_ip}:8080")]) || t["masquerade"] != json!(true) {
        failures.push(format!("trace from the node's loopback: {t}"));
    }
    let t = trace(&client_ip, &format!("{gateway}:30990"));
    if t["dnat"] != json!([format!("{web_ip}:8080")]) || t["masquerade"] != json!(false) {
        failures.push(format!("trace from a pod to the gateway: {t}"));
    }

    // Hostile peers sending to 127.0.0.1: a pod, and a peer on the uplink.
    route_loopback_out(&client, "eth0", &gateway);
    route_loopback_out(&node.internet, "eth0", NODE_IP);
    for (who, ns) in [("pod", &client), ("uplink peer", &node.internet)] {
        for port in [30990, 30991, 30992] {
            expect(&mut failures, &format!("{who} -> 127.0.0.1:{port}"), ask(ns, &format!("127.0.0.1:{port}")), None);
        }
    }
    expect(&mut failures, "node -> 127.0.0.1:30990 after", ask(&node.ns, "127.0.0.1:30990"), Some(&from_node));
    assert!(failures.is_empty(), "{}\nagent log:\n{}", failures.join("\n"), node.log());
    for id in ["hp-web", "hp-client"] {
        assert_eq!(cni("DEL", id, None, None, &conf).code, 0);
    }
    assert!(node.host_interfaces().is_empty(), "{:?}", node.host_interfaces());
}

#[test]
fn a_restart_the_kernel_cannot_program_yet_costs_no_running_pod_its_network() {
    if !root("a_restart_the_kernel_cannot_program_yet_costs_no_running_pod_its_network") {
        return;
    }
    let mut node = Node::start("restart-degraded");
    let conf = node.conf("fgtest", "10.244.1.0/24");
    let (pod_a, a) = add_pod(&conf, "ctr-a", "shop", "client");
    let (pod_b, b) = add_pod(&conf, "ctr-b", "shop", "web-1");
    let _web = Server::tcp(&pod_a, "client", "0.0.0.0:8080");
    let a_host = a["interfaces"][0]["name"].as_str().unwrap().to_owned();
    let index_before = node.ns.ip(&["-o", "link", "show", &a_host]).unwrap();
    assert_eq!(ask(&pod_b, &format!("{}:8080", ip_of(&a))).unwrap(), format!("client {}", ip_of(&b)));

    // While the agent is down, pod-a's interface binding leaves the kernel's map of bound
    // interfaces, and the map fills up: the restarted agent cannot bind pod-a until room is made.
    node.stop_agent(true);
    let data = aya::maps::MapData::from_pin(node.pins().join("maps/fg_ports")).unwrap();
    let mut ports: aya::maps::HashMap<_, u32, flowgate_ebpf::maps::Port> =
        aya::maps::Map::HashMap(data).try_into().unwrap();
    let a_ifindex: u32 = index_before.split(':').next().unwrap().trim().parse().unwrap();
    ports.remove(&a_ifindex).unwrap();
    let mut junk = Vec::new();
    for i in 0u32.. {
        let k = 0x7000_0000 + i;
        if ports.insert(k, flowgate_ebpf::maps::Port::default(), 0).is_err() {
            break;
        }
        junk.push(k);
    }

    node.start_agent();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = node.api("GET", "/v1/status", None).unwrap();
        if s["sync"]["degraded_endpoints"].to_string().contains("fgtest/ctr-a/eth0") {
            break;
        }
        assert!(Instant::now() < deadline, "pod-a is not reported: {s}\n{}", node.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    // Kept: its record, its interface (the same one), its address.
    let eps = node.api("GET", "/v1/endpoints", None).unwrap();
    assert!(eps.as_array().unwrap().iter().any(|e| e["id"] == "fgtest/ctr-a/eth0"), "{eps}\n{}", node.log());
    let index_after = node.ns.ip(&["-o", "link", "show", &a_host]).unwrap();
    assert_eq!(index_before.split(':').next(), index_after.split(':').next(), "pod-a's veth was kept");
    assert!(pod_a.ip(&["addr", "show", "eth0"]).unwrap().contains(&ip_of(&a)), "pod-a keeps its address");

    assert_eq!(bound_port(&node, &a_host), None, "not bound yet");
    // Room made: the agent's retry binds pod-a, with nothing else done.
    for k in &junk {
        ports.remove(k).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = node.api("GET", "/v1/status", None).unwrap();
        if s["sync"]["degraded_endpoints"].as_array().is_some_and(|d| d.is_empty())
            && bound_port(&node, &a_host).is_some()
        {
            break;
        }
        assert!(Instant::now() < deadline, "never programmed: {s}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(ask(&pod_b, &format!("{}:8080", ip_of(&a))).unwrap(), format!("client {}", ip_of(&b)));
    for id in ["ctr-a", "ctr-b"] {
        assert_eq!(cni("DEL", id, None, None, &conf).code, 0);
    }
}
