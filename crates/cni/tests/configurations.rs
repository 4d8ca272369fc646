//! The network configurations shipped with flowgate (examples/ for a single node, deploy/ for a
//! cluster) are ones the plugin accepts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use flowgate_cni::NetConf;
use serde_json::Value;

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// Each plugin entry of a conflist as the runtime passes it: with the list's name and version.
fn check(list: &str, what: &str) {
    let list: Value = serde_json::from_str(list).unwrap_or_else(|e| panic!("{what}: not JSON: {e}"));
    let plugins = list["plugins"].as_array().unwrap_or_else(|| panic!("{what}: no plugins"));
    assert_eq!(plugins.len(), 1, "{what}: flowgate-cni needs no chained plugin");
    let mut entry = plugins[0].clone();
    entry["name"] = list["name"].clone();
    entry["cniVersion"] = list["cniVersion"].clone();
    assert_eq!(entry["type"], "flowgate-cni", "{what}");
    let conf = NetConf::parse(entry.to_string().as_bytes()).unwrap_or_else(|e| panic!("{what}: {e:?}"));
    conf.network().unwrap_or_else(|e| panic!("{what}: {e:?}"));
}

#[test]
fn the_example_conflist_is_valid() {
    let path = root().join("examples/10-flowgate.conflist");
    check(&std::fs::read_to_string(path).unwrap(), "examples/10-flowgate.conflist");
}

#[test]
fn the_deployed_conflist_is_valid_and_follows_each_nodes_pod_cidr() {
    let text = std::fs::read_to_string(root().join("deploy/configmap.yaml")).unwrap();
    let cm: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let list = cm["data"]["10-flowgate.conflist"].as_str().expect("the ConfigMap holds 10-flowgate.conflist");
    check(list, "deploy/configmap.yaml");
    let v: Value = serde_json::from_str(list).unwrap();
    assert_eq!(v["plugins"][0]["ipam"]["usePodCIDR"], true);
    let ds = std::fs::read_to_string(root().join("deploy/daemonset.yaml")).unwrap();
    assert!(ds.contains("/host/etc/cni/net.d/10-flowgate.conflist"), "the init container installs it");
}
