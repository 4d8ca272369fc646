//! Big or hostile objects stay cheap: what the API accepts in one object cannot make the compiler
//! build a policy whose size is a product of its lists.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use flowgate_cluster::load_str;
use flowgate_compiler::compile;
use flowgate_switch::{trace, FlowKey, Proto, Verdict};

const HEAD: &str = "apiVersion: v1\nkind: Node\nmetadata: {name: node-a}\nstatus: {addresses: [{type: InternalIP, address: 192.168.0.2}]}\n---\napiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nclusterCIDR: 10.0.0.0/8\n";

fn probe(p: &flowgate_switch::SwitchPolicy, from: &str, to: &str) -> (Verdict, Vec<String>) {
    let t = trace(p, &FlowKey::new(from.parse().unwrap(), to.parse().unwrap(), Proto::TCP));
    (t.verdict, t.dnat)
}

#[test]
fn a_service_with_addresses_times_ports_past_the_limit_keeps_its_cluster_ip() {
    // 200 externalIPs × 100 ports = 20,000 destinations (3,000 × 3,000 fits in one object too).
    let ips: Vec<String> = (0..200).map(|i| format!("203.0.113.{}", i)).collect();
    let ports: Vec<String> =
        (0..100).map(|i| format!("{{name: p{i}, port: {}, targetPort: 8080}}", 1000 + i)).collect();
    let text = format!(
        "{HEAD}---\napiVersion: v1\nkind: Service\nmetadata: {{name: huge, namespace: t}}\nspec:\n  clusterIP: 172.30.0.10\n  externalIPs: [{}]\n  ports: [{}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: huge-1, namespace: t, labels: {{kubernetes.io/service-name: huge}}}}\naddressType: IPv4\nports: [{}]\nendpoints: [{{addresses: [10.0.2.1]}}]\n",
        ips.join(", "),
        ports.join(", "),
        (0..100).map(|i| format!("{{name: p{i}, port: 8080}}")).collect::<Vec<_>>().join(", "),
    );
    let state = load_str(Path::new("huge.yaml"), &text).unwrap().state;
    let c = compile(&state, None).unwrap();
    assert_eq!(
        probe(&c.policy, "10.0.1.5:40000", "172.30.0.10:1050"),
        (Verdict::Allow, vec!["10.0.2.1:8080".to_string()])
    );
    assert_eq!(
        probe(&c.policy, "198.51.100.1:40000", "203.0.113.7:1050").1,
        Vec::<String>::new(),
        "external addresses refused"
    );
    assert_eq!(c.problems.len(), 1, "{:?}", c.problems);
    assert!(c.problems[0].object == "Service t/huge" && c.problems[0].message.contains("20000"), "{:?}", c.problems);
    // Under the limit, they are programmed.
    let small = text.replace(&ips[10..].join(", "), "").replace(", ]", "]");
    let state = load_str(Path::new("huge.yaml"), &small).unwrap().state;
    let c = compile(&state, None).unwrap();
    assert_eq!(probe(&c.policy, "198.51.100.1:40000", "203.0.113.7:1050").1, vec!["10.0.2.1:8080".to_string()]);
    assert!(c.problems.is_empty(), "{:?}", c.problems);
}
