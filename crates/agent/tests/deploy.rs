//! The deploy/ manifests: valid Kubernetes objects, a ClusterRole granting exactly what the agent
//! uses, and a configuration the agent reads.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use flowgate_agent::sources::kube::RBAC_RULES;
use flowgate_agent::AgentSettings;
use flowgate_cluster::k8s_openapi::api::apps::v1::DaemonSet;
use flowgate_cluster::k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use flowgate_cluster::k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde::Deserialize;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn documents(file: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(deploy().join(file)).unwrap();
    serde_yaml::Deserializer::from_str(&text).map(|d| serde_json::Value::deserialize(d).unwrap()).collect()
}

#[test]
fn every_document_is_a_valid_object() {
    let mut kinds = Vec::new();
    for file in ["rbac.yaml", "configmap.yaml", "daemonset.yaml"] {
        for doc in documents(file) {
            let kind = doc["kind"].as_str().unwrap().to_string();
            let ok = match kind.as_str() {
                "ServiceAccount" => serde_json::from_value::<ServiceAccount>(doc).is_ok(),
                "ClusterRole" => serde_json::from_value::<ClusterRole>(doc).is_ok(),
                "ClusterRoleBinding" => serde_json::from_value::<ClusterRoleBinding>(doc).is_ok(),
                "ConfigMap" => serde_json::from_value::<ConfigMap>(doc).is_ok(),
                "DaemonSet" => serde_json::from_value::<DaemonSet>(doc).is_ok(),
                other => panic!("{file}: unexpected kind {other}"),
            };
            assert!(ok, "{file}: {kind} does not parse");
            kinds.push(kind);
        }
    }
    kinds.sort();
    assert_eq!(kinds, ["ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet", "ServiceAccount"]);
}

#[test]
fn cluster_role_grants_exactly_what_the_agent_uses() {
    let role: ClusterRole = documents("rbac.yaml")
        .into_iter()
        .find(|d| d["kind"] == "ClusterRole")
        .map(|d| serde_json::from_value(d).unwrap())
        .unwrap();
    let mut granted = BTreeSet::new();
    for rule in role.rules.unwrap_or_default() {
        for g in rule.api_groups.unwrap_or_default() {
            for r in rule.resources.clone().unwrap_or_default() {
                for v in &rule.verbs {
                    granted.insert((g.clone(), r.clone(), v.clone()));
                }
            }
        }
    }
    let mut used = BTreeSet::new();
    for (group, resource, verbs) in RBAC_RULES {
        for v in *verbs {
            used.insert((group.to_string(), resource.to_string(), v.to_string()));
        }
    }
    assert_eq!(granted, used);
    assert!(used.iter().all(|(_, _, v)| v == "list" || v == "watch"), "read-only");
}

#[test]
fn the_configmap_configures_the_agent() {
    let cm: ConfigMap =
        documents("configmap.yaml").into_iter().map(|d| serde_json::from_value(d).unwrap()).next().unwrap();
    let text = cm.data.unwrap().remove("config.yaml").unwrap();
    let dir = std::env::temp_dir().join(format!("flowgate-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("config.yaml");
    std::fs::write(&file, text).unwrap();
    let mut settings = AgentSettings::for_manifests("/unused", "/unused.sock");
    settings.read_config(&file).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let kp = settings.kube_proxy.unwrap();
    assert_eq!(kp.cluster_cidr, "10.244.0.0/16");
    assert!(settings.flowgate.unwrap().outbound_nat.enabled);
    assert_eq!(settings.healthz_bind, Some("0.0.0.0:10256".parse().unwrap()));
    assert_eq!(settings.metrics_bind, Some("127.0.0.1:10249".parse().unwrap()));
    assert_eq!(settings.timing.min_interval, std::time::Duration::from_secs(1));
}
