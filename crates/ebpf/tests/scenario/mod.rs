//! The cluster state of a scenario file (`tests/scenarios/*.yaml`: its `manifests`), for tests
//! that program the kernel from one.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

/// The state of scenario `file` (a name under `tests/scenarios`).
pub fn state(file: &str) -> flowgate_cluster::ClusterState {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/scenarios").join(file);
    let doc: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut text = String::new();
    for m in doc["manifests"].as_sequence().unwrap() {
        text.push_str("---\n");
        text.push_str(&serde_yaml::to_string(m).unwrap());
    }
    flowgate_cluster::load_str(Path::new(file), &text).unwrap().state
}
