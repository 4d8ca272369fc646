//! The agent with the kernel data plane: it programs pinned maps, and a restarted agent adopts
//! them — established flows keep their backend, what changed while it was down is reconciled, and
//! what no longer exists is removed. The kernel's answers are read by running the uplink program,
//! loaded against the same pinned maps, on crafted packets (BPF_PROG_TEST_RUN).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use flowgate_ebpf::bpffs::TempBpffs;
use support::{probe, run_agent, status};

fn cluster(endpoint: &str, with_api: bool) -> String {
    let mut s = format!(
        "apiVersion: v1\nkind: Node\nmetadata: {{name: node-a}}\nstatus: {{addresses: [{{type: InternalIP, address: 192.168.0.2}}]}}\n---\napiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nclusterCIDR: 10.0.0.0/8\n---\napiVersion: networking.k8s.io/v1\nkind: ServiceCIDR\nmetadata: {{name: k}}\nspec: {{cidrs: [172.30.0.0/16]}}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  clusterIP: 172.30.0.10\n  ports: [{{name: http, port: 80}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: web-1, labels: {{kubernetes.io/service-name: web}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints: [{{addresses: [{endpoint}]}}]\n"
    );
    if with_api {
        s.push_str("---\napiVersion: v1\nkind: Service\nmetadata: {name: api}\nspec:\n  clusterIP: 172.30.0.11\n  ports: [{port: 443}]\n");
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_adopts_pinned_maps() {
    if !flowgate_ebpf::privileged_test("restart_adopts_pinned_maps") {
        return;
    }
    let fs = TempBpffs::new().unwrap();
    let bpffs = fs.path().join("flowgate");
    let maps = bpffs.join("maps");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("m")).unwrap();
    std::fs::write(dir.path().join("m/cluster.yaml"), cluster("10.0.2.1", true)).unwrap();

    let agent = run_agent(dir.path(), &bpffs).await;
    assert!(maps.join("fg_flows").exists() && maps.join("fg_lb_dest").exists(), "maps are pinned");
    assert_eq!(probe(&maps, "203.0.113.7:40000", "172.30.0.10:80"), (0, "10.0.2.1:8080".into()));
    assert_eq!(probe(&maps, "203.0.113.7:40001", "172.30.0.11:443").0, 7, "no endpoints: rejected");
    agent.stop();

    // While no agent runs, the established connection keeps working from the pinned flow table.
    assert_eq!(probe(&maps, "203.0.113.7:40000", "172.30.0.10:80"), (0, "10.0.2.1:8080".into()));

    // A restart with nothing changed: the connection keeps its backend.
    let agent = run_agent(dir.path(), &bpffs).await;
    assert_eq!(probe(&maps, "203.0.113.7:40000", "172.30.0.10:80"), (0, "10.0.2.1:8080".into()));
    agent.stop();

    // Changes while the agent is down: the endpoint moved, Service api was deleted.
    std::fs::write(dir.path().join("m/cluster.yaml"), cluster("10.0.2.2", false)).unwrap();
    let agent = run_agent(dir.path(), &bpffs).await;
    assert_eq!(probe(&maps, "203.0.113.7:40002", "172.30.0.10:80"), (0, "10.0.2.2:8080".into()), "new connections");
    assert_eq!(
        probe(&maps, "203.0.113.7:40000", "172.30.0.10:80"),
        (0, "10.0.2.2:8080".into()),
        "a flow to a gone backend moves"
    );
    assert_eq!(probe(&maps, "203.0.113.7:40003", "172.30.0.11:443").0, 2, "the deleted Service's address is dropped");
    // The kernel's counters (pinned, so they count across restarts) reach the agent's status.
    let packets = status(&dir.path().join("api.sock")).await["packets"].clone();
    assert!(packets["first_packets"].as_u64().unwrap() >= 4, "{packets}");
    assert!(packets["flow_hits"].as_u64().unwrap() >= 1, "{packets}");
    assert!(packets["dropped_unallocated_service_ip"].as_u64().unwrap() >= 1, "{packets}");
    agent.stop();
}
