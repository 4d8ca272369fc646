//! Fuzz target: arbitrary bytes as a manifest file. Loading must return objects or an error, never
//! panic; whatever loads must compile for its node and trace a few packets without panicking.
#![no_main]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(loaded) = flowgate_cluster::load_str(Path::new("fuzz.yaml"), text) else { return };
    let node = loaded.state.nodes.keys().next().cloned();
    let Ok(compiled) = flowgate_compiler::compile(&loaded.state, node.as_deref()) else { return };
    let policy = &compiled.policy;
    let sources: [SocketAddr; 3] =
        ["10.0.1.5:40000".parse().unwrap(), "192.168.0.2:40000".parse().unwrap(), "203.0.113.7:40000".parse().unwrap()];
    for (_, set) in policy.backend_sets() {
        for b in &set.backends {
            for s in sources {
                if s.is_ipv4() == b.is_ipv4() {
                    let _ = flowgate_switch::trace(policy, &flowgate_switch::FlowKey::new(s, *b, flowgate_switch::Proto::TCP));
                }
            }
        }
    }
});
