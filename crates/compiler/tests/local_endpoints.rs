//! Endpoints made on the node by its host networking service (CNI): they become ports with the
//! addresses they were given (over what the API says), their host ports are forwarded, their
//! OutBoundNAT policy switches outbound NAT on, and adding or removing one incrementally gives the
//! same policy as compiling from scratch.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use flowgate_cluster::{load_str, HostPort, LocalEndpoint, ObjectKey};
use flowgate_compiler::{Changes, Compiler};
use flowgate_switch::{trace, FlowKey, Proto};

const NODE: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node}
spec: {podCIDR: 10.244.1.0/24}
status:
  addresses:
  - {type: InternalIP, address: 192.168.77.1}
---
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clusterCIDR: 10.244.0.0/16
---
apiVersion: networking.k8s.io/v1
kind: ServiceCIDR
metadata: {name: kubernetes}
spec:
  cidrs: [10.96.0.0/16]
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop}
spec:
  nodeName: node
  containers: [{name: c, image: x}]
status:
  podIP: 10.244.1.50
"#;

fn key(src: &str, dst: &str, proto: Proto) -> FlowKey {
    FlowKey::new(src.parse().unwrap(), dst.parse().unwrap(), proto)
}

fn summary(p: &flowgate_switch::SwitchPolicy, k: &FlowKey) -> String {
    let t = trace(p, k);
    format!("{:?} {:?} masquerade={}", t.verdict, t.dnat, t.masquerade)
}

#[test]
fn local_endpoints_are_ports_with_host_ports_and_outbound_nat() {
    let mut state = load_str(std::path::Path::new("node.yaml"), NODE).unwrap().state;
    let web = ObjectKey::new("shop", "web-1");
    let mut c = Compiler::new(None);
    c.compile_full(&state).unwrap();
    let outside = key("203.0.113.9:40000", "192.168.77.1:30999", Proto::TCP);
    let out = key("10.244.1.5:40000", "203.0.113.20:443", Proto::TCP);
    assert!(summary(c.policy().unwrap(), &outside).contains("[]"), "no host port yet");

    // The CNI made web-1 with another address than the API reports (not yet updated), and a pod
    // without a Kubernetes name.
    state.local_endpoints.insert(
        web.clone(),
        LocalEndpoint {
            ips: vec!["10.244.1.5".parse().unwrap()],
            outbound_nat: Some(vec!["203.0.113.0/28".parse().unwrap()]),
            host_ports: vec![HostPort {
                host_port: 30999,
                container_port: 8080,
                protocol: "TCP".into(),
                host_ip: None,
            }],
            acls: vec![],
            gateways: vec![],
        },
    );
    let bare = ObjectKey::new("", "net/ctr-1/eth0");
    state
        .local_endpoints
        .insert(bare.clone(), LocalEndpoint { ips: vec!["10.244.1.6".parse().unwrap()], ..LocalEndpoint::default() });
    let changes = Changes { local_endpoints: [web.clone(), bare.clone()].into(), ..Changes::default() };
    c.update(&state, &changes).unwrap();
    let p = c.policy().unwrap();
    let port = c.endpoint_port(&web).unwrap();
    assert_eq!(p.port(port).unwrap().addresses, vec!["10.244.1.5".parse::<std::net::IpAddr>().unwrap()]);
    assert!(c.endpoint_port(&bare).is_some());
    assert_eq!(summary(p, &outside), r#"Allow ["10.244.1.5:8080"] masquerade=false"#);
    assert!(summary(p, &key("203.0.113.9:40000", "192.168.77.1:30999", Proto::UDP)).contains("[]"), "TCP only");
    let t = trace(p, &out);
    assert!(t.masquerade, "outbound NAT from the endpoint: {:?}", t.steps);
    let excepted = trace(p, &key("10.244.1.5:40000", "203.0.113.5:443", Proto::TCP));
    assert!(!excepted.masquerade, "an exception is reached untranslated: {:?}", excepted.steps);
    let without = trace(p, &key("10.244.1.6:40000", "203.0.113.20:443", Proto::TCP));
    assert!(!without.masquerade, "an endpoint without OutBoundNAT leaves as itself: {:?}", without.steps);

    // The same state compiled from scratch traces the same.
    let mut fresh = Compiler::new(None);
    fresh.compile_full(&state).unwrap();
    for k in [&outside, &out] {
        assert_eq!(summary(fresh.policy().unwrap(), k), summary(c.policy().unwrap(), k));
    }

    // Removed: its port, host port and outbound NAT go.
    state.local_endpoints.clear();
    let changes = Changes { local_endpoints: [web.clone(), bare.clone()].into(), ..Changes::default() };
    c.update(&state, &changes).unwrap();
    let p = c.policy().unwrap();
    assert!(summary(p, &outside).contains("[]"));
    assert!(!trace(p, &out).masquerade, "outbound NAT is off again");
    assert!(c.endpoint_port(&bare).is_none());
    // web-1 is still a pod of the API, with the API's address.
    let port = c.endpoint_port(&web).unwrap();
    assert_eq!(p.port(port).unwrap().addresses, vec!["10.244.1.50".parse::<std::net::IpAddr>().unwrap()]);
}

#[test]
fn host_networking_load_balancers_spread_reject_and_source_nat() {
    use flowgate_cluster::{LoadBalancerPort, LocalLoadBalancer};
    let mut state = load_str(std::path::Path::new("node.yaml"), NODE).unwrap().state;
    let mut c = Compiler::new(None);
    c.compile_full(&state).unwrap();
    let to_vip = key("203.0.113.9:40000", "10.97.0.1:80", Proto::TCP);
    let lb = |backends: Vec<&str>, source_nat: bool| LocalLoadBalancer {
        frontend_vips: vec!["10.97.0.1".parse().unwrap()],
        ports: vec![LoadBalancerPort { protocol: "TCP".into(), frontend_port: 80, backend_port: 8080 }],
        backends: backends.into_iter().map(|b| b.parse().unwrap()).collect(),
        source_nat,
    };
    let changed = || Changes { local_load_balancers: ["lb1".to_owned()].into(), ..Changes::default() };

    state.local_load_balancers.insert("lb1".into(), lb(vec!["10.244.1.50", "10.244.2.7"], false));
    c.update(&state, &changed()).unwrap();
    assert_eq!(
        summary(c.policy().unwrap(), &to_vip),
        r#"Allow ["10.244.1.50:8080", "10.244.2.7:8080"] masquerade=false"#
    );
    assert!(summary(c.policy().unwrap(), &key("203.0.113.9:40000", "10.97.0.1:81", Proto::TCP)).contains("[]"));

    state.local_load_balancers.insert("lb1".into(), lb(vec!["10.244.2.7"], true));
    c.update(&state, &changed()).unwrap();
    assert_eq!(summary(c.policy().unwrap(), &to_vip), r#"Allow ["10.244.2.7:8080"] masquerade=true"#);
    let mut fresh = Compiler::new(None);
    fresh.compile_full(&state).unwrap();
    assert_eq!(summary(fresh.policy().unwrap(), &to_vip), summary(c.policy().unwrap(), &to_vip));

    state.local_load_balancers.insert("lb1".into(), lb(vec![], false));
    c.update(&state, &changed()).unwrap();
    let t = trace(c.policy().unwrap(), &to_vip);
    assert_eq!(format!("{:?}", t.verdict), "Reject", "no backends: refused at once: {:?}", t.steps);

    state.local_load_balancers.clear();
    c.update(&state, &changed()).unwrap();
    assert!(summary(c.policy().unwrap(), &to_vip).contains("[]"), "gone");
}

#[test]
fn endpoints_keep_their_port_numbers_across_full_compiles_and_restarts() {
    let mut state = load_str(std::path::Path::new("node.yaml"), NODE).unwrap().state;
    let ep = |ip: &str| LocalEndpoint { ips: vec![ip.parse().unwrap()], ..LocalEndpoint::default() };
    let (a, b) = (ObjectKey::new("shop", "a"), ObjectKey::new("shop", "b"));
    state.local_endpoints.insert(a.clone(), ep("10.244.1.7"));
    state.local_endpoints.insert(b.clone(), ep("10.244.1.8"));
    let mut c = Compiler::new(None);
    c.compile_full(&state).unwrap();
    state.local_endpoints.remove(&a);
    c.update(&state, &Changes { local_endpoints: [a.clone()].into(), ..Changes::default() }).unwrap();
    let b_port = c.endpoint_port(&b).unwrap();
    // A full compile (a configuration change) would otherwise hand b the lowest free number.
    c.compile_full(&state).unwrap();
    assert_eq!(c.endpoint_port(&b), Some(b_port), "kept across a full compile");
    assert_eq!(c.policy().unwrap().port(b_port).unwrap().addresses, ep("10.244.1.8").ips);
    // A new compiler (a restarted agent) told what the kernel binds b to.
    let mut fresh = Compiler::new(None);
    fresh.prefer_ports([(b.clone(), b_port)]);
    fresh.compile_full(&state).unwrap();
    assert_eq!(fresh.endpoint_port(&b), Some(b_port), "kept across a restart");
    let mut unhinted = Compiler::new(None);
    unhinted.compile_full(&state).unwrap();
    assert_ne!(unhinted.endpoint_port(&b), Some(b_port), "the test means something: without the hint it moves");
    // The pod's address still leads to its port.
    let t = trace(fresh.policy().unwrap(), &key("10.244.1.8:40000", "203.0.113.20:443", Proto::TCP));
    assert!(t.steps.iter().any(|s| s.contains("shop/b")), "{:?}", t.steps);
}

/// An endpoint's own ACL policies come first, by ascending priority, then its pod's NetworkPolicy
/// rules (and the default deny they bring); without NetworkPolicy, what they do not match passes.
/// Incremental updates give what a full compile gives.
#[test]
fn acl_policies_come_before_network_policy_rules() {
    use flowgate_cluster::LocalAcl;
    use flowgate_switch::{DropReason, Verdict};
    let mut state = load_str(std::path::Path::new("node.yaml"), NODE).unwrap().state;
    let web = ObjectKey::new("shop", "web-1");
    let mut c = Compiler::new(None);
    c.compile_full(&state).unwrap();
    let acl = |allow: bool, inbound: bool, priority: u16, remote: &str, ports: Vec<(u16, u16)>| LocalAcl {
        allow,
        inbound,
        priority,
        protocol: Some("TCP".into()),
        remote: vec![remote.parse().unwrap()],
        ports,
    };
    state.local_endpoints.insert(
        web.clone(),
        LocalEndpoint {
            ips: vec!["10.244.1.50".parse().unwrap()],
            acls: vec![
                acl(false, true, 20, "10.0.0.0/8", vec![]),
                acl(true, true, 10, "10.244.7.7/32", vec![(8080, 8080)]),
                acl(false, false, 1, "169.254.169.254/32", vec![(80, 80)]),
            ],
            ..LocalEndpoint::default()
        },
    );
    let changes = Changes { local_endpoints: [web.clone()].into(), ..Changes::default() };
    c.update(&state, &changes).unwrap();
    let verdict = |c: &Compiler, from: &str, to: &str| {
        let t = trace(c.policy().unwrap(), &key(from, to, Proto::TCP));
        (t.verdict, t.reason)
    };
    let denied = (Verdict::Drop, Some(DropReason::PolicyDenied));
    let allowed = (Verdict::Allow, None);
    let cases = [
        ("10.244.7.7:40000", "10.244.1.50:8080", allowed), // priority 10 allows before 20 blocks
        ("10.244.7.7:40000", "10.244.1.50:9090", denied),  // only the block matches
        ("10.244.2.9:40000", "10.244.1.50:8080", denied),
        ("203.0.113.9:40000", "10.244.1.50:8080", allowed), // no rule: no isolation, passes
        ("10.244.1.50:40000", "169.254.169.254:80", denied),
        ("10.244.1.50:40000", "169.254.169.254:443", allowed),
    ];
    for (from, to, want) in cases {
        assert_eq!(verdict(&c, from, to), want, "{from} -> {to} (ACL policies only)");
    }
    // A NetworkPolicy isolating the pod for ingress, allowing 203.0.113.0/24: the ACL policies still
    // decide first, then the NetworkPolicy's allow, then its default deny.
    let np = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: outside-only, namespace: shop}
spec:
  podSelector: {}
  ingress: [{from: [{ipBlock: {cidr: 203.0.113.0/24}}]}]
"#;
    let with_np = load_str(std::path::Path::new("np.yaml"), np).unwrap().state;
    state.network_policies.extend(with_np.network_policies);
    let changes = Changes { network_policies: [ObjectKey::new("shop", "outside-only")].into(), ..Changes::default() };
    c.update(&state, &changes).unwrap();
    let full = flowgate_compiler::compile(&state, None).unwrap().policy;
    let cases = [
        ("10.244.7.7:40000", "10.244.1.50:8080", allowed),
        ("203.0.113.9:40000", "10.244.1.50:8080", allowed),
        ("198.51.100.1:40000", "10.244.1.50:8080", denied), // the NetworkPolicy's default deny
        ("10.244.2.9:40000", "10.244.1.50:8080", denied),
    ];
    for (from, to, want) in cases {
        assert_eq!(verdict(&c, from, to), want, "{from} -> {to} (with the NetworkPolicy)");
        let t = trace(&full, &key(from, to, Proto::TCP));
        assert_eq!((t.verdict, t.reason), want, "{from} -> {to}: full compile");
    }
}

/// Host ports belong to every local address of the node, as with the reference `portmap` plugin:
/// one without `hostIP` is also served on the gateway addresses of the node's pods (a pod calling
/// `gateway:hostPort`; a gateway that comes with a new network is served at once, incrementally as
/// from scratch) and on loopback; a `hostIP` of 127.0.0.1 serves loopback only. On loopback only
/// the node's own clients are served, masqueraded (a pod cannot answer 127.0.0.1); a packet from
/// the network or from a pod to 127.0.0.1 is never sent on (CVE-2020-8558).
#[test]
fn host_ports_are_served_on_the_gateways_and_on_loopback_to_the_node_only() {
    let mut state = load_str(std::path::Path::new("node.yaml"), NODE).unwrap().state;
    let web = ObjectKey::new("shop", "web-1");
    let client = ObjectKey::new("shop", "client");
    let other = ObjectKey::new("", "other/ctr-9/eth0");
    let host_port = |host_port: u16, host_ip: Option<&str>| HostPort {
        host_port,
        container_port: 8080,
        protocol: "TCP".into(),
        host_ip: host_ip.map(|h| h.parse().unwrap()),
    };
    let gw = |g: &str| vec![g.parse().unwrap()];
    state.local_endpoints.insert(
        web.clone(),
        LocalEndpoint {
            ips: vec!["10.244.1.5".parse().unwrap()],
            host_ports: vec![host_port(30999, None), host_port(30998, Some("127.0.0.1"))],
            gateways: gw("10.244.1.1"),
            ..LocalEndpoint::default()
        },
    );
    state.local_endpoints.insert(
        client.clone(),
        LocalEndpoint {
            ips: vec!["10.244.1.6".parse().unwrap()],
            gateways: gw("10.244.1.1"),
            ..LocalEndpoint::default()
        },
    );
    let mut c = Compiler::new(None);
    c.compile_full(&state).unwrap();
    let served = r#"Allow ["10.244.1.5:8080"] masquerade=false"#;
    let masqueraded = r#"Allow ["10.244.1.5:8080"] masquerade=true"#;
    let not_served = r#"Allow [] masquerade=false"#;
    let cases = |c: &Compiler, other_gateway: &str| {
        let p = c.policy().unwrap();
        let s = |from: &str, to: &str| summary(p, &key(from, to, Proto::TCP));
        vec![
            ("node, 127.0.0.1", s("127.0.0.1:40000", "127.0.0.1:30999"), masqueraded),
            ("node, hostIP 127.0.0.1", s("127.0.0.1:40000", "127.0.0.1:30998"), masqueraded),
            ("node address, hostIP 127.0.0.1", s("192.168.77.1:40000", "192.168.77.1:30998"), not_served),
            ("network to 127.0.0.1", s("203.0.113.9:40000", "127.0.0.1:30999"), not_served),
            ("pod to 127.0.0.1", s("10.244.1.6:40000", "127.0.0.1:30999"), not_served),
            ("pod to its gateway", s("10.244.1.6:40000", "10.244.1.1:30999"), served),
            ("pod to the node address", s("10.244.1.6:40000", "192.168.77.1:30999"), served),
            ("pod to the other network's gateway", s("10.244.1.6:40000", other_gateway), served),
        ]
    };
    for (what, got, want) in cases(&c, "10.244.1.1:30999") {
        assert_eq!(got, want, "{what}");
    }
    let t = trace(c.policy().unwrap(), &key("127.0.0.1:40000", "127.0.0.1:30999", Proto::TCP));
    assert!(t.steps.iter().any(|s| s.contains("the node's own clients only")), "{:?}", t.steps);

    // A pod of another network brings another gateway: web-1's host port is served there too.
    state.local_endpoints.insert(
        other.clone(),
        LocalEndpoint {
            ips: vec!["10.245.0.2".parse().unwrap()],
            gateways: gw("10.245.0.1"),
            ..LocalEndpoint::default()
        },
    );
    c.update(&state, &Changes { local_endpoints: [other.clone()].into(), ..Changes::default() }).unwrap();
    let mut fresh = Compiler::new(None);
    fresh.compile_full(&state).unwrap();
    for compiler in [&c, &fresh] {
        for (what, got, want) in cases(compiler, "10.245.0.1:30999") {
            assert_eq!(got, want, "{what}, with the second network");
        }
    }
    state.local_endpoints.remove(&other);
    c.update(&state, &Changes { local_endpoints: [other.clone()].into(), ..Changes::default() }).unwrap();
    let p = c.policy().unwrap();
    assert_eq!(summary(p, &key("10.244.1.6:40000", "10.245.0.1:30999", Proto::TCP)), not_served, "gateway gone");
}

#[test]
fn the_nodes_loopback_clients_reach_an_isolated_pods_host_port() {
    let isolated = format!(
        "{NODE}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: deny, namespace: shop}}\nspec: {{podSelector: {{}}, policyTypes: [Ingress]}}\n"
    );
    let mut state = load_str(std::path::Path::new("node.yaml"), &isolated).unwrap().state;
    state.local_endpoints.insert(
        ObjectKey::new("shop", "web-1"),
        LocalEndpoint {
            ips: vec!["10.244.1.5".parse().unwrap()],
            host_ports: vec![HostPort {
                host_port: 30999,
                container_port: 8080,
                protocol: "TCP".into(),
                host_ip: None,
            }],
            gateways: vec!["10.244.1.1".parse().unwrap()],
            ..LocalEndpoint::default()
        },
    );
    let mut c = Compiler::new(None);
    c.compile_full(&state).unwrap();
    let p = c.policy().unwrap();
    let s = |from: &str, to: &str| summary(p, &key(from, to, Proto::TCP));
    assert_eq!(s("127.0.0.1:40000", "127.0.0.1:30999"), r#"Allow ["10.244.1.5:8080"] masquerade=true"#);
    assert_eq!(s("192.168.77.1:40000", "192.168.77.1:30999"), r#"Allow ["10.244.1.5:8080"] masquerade=false"#);
    // Anyone else is still denied by the isolation.
    assert!(
        s("203.0.113.9:40000", "192.168.77.1:30999").starts_with("Drop"),
        "{}",
        s("203.0.113.9:40000", "192.168.77.1:30999")
    );
}
