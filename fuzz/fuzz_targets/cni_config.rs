//! Fuzz target: arbitrary bytes as what a CNI runtime gives the plugin (the network configuration on
//! stdin) and as bodies of the agent's host networking API (a Network, an endpoint request). Parsing
//! and validation must answer with a result or a CNI error / field error, never panic; whatever
//! validates must turn into a request and, for a network, hand out addresses without panicking.
#![no_main]

use flowgate_cni::{Command, Env, NetConf};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(conf) = NetConf::parse(data) {
        let env = Env {
            command: Command::Add,
            container_id: "fuzz".into(),
            netns: "/run/netns/fuzz".into(),
            ifname: "eth0".into(),
            pod: None,
        };
        if let Ok(network) = conf.network() {
            for set in &network.ranges {
                let _ = flowgate_hostnet::ipam::allocate(set, None, |_| false);
                let _ = flowgate_hostnet::ipam::capacity(set);
            }
        }
        let _ = conf.endpoint_request(&env);
        let _ = conf.valid_attachments();
    }
    if let Ok(n) = serde_json::from_slice::<flowgate_hostnet::Network>(data) {
        if n.validate().is_ok() {
            for set in &n.ranges {
                let _ = flowgate_hostnet::ipam::allocate(set, None, |_| false);
            }
        }
    }
    if let Ok(r) = serde_json::from_slice::<flowgate_hostnet::EndpointRequest>(data) {
        let _ = r.validate();
    }
});
