//! The incremental compiler agrees with a full compile: every scenario's objects are added one at a
//! time, every pod's labels are changed and restored, then objects are removed one at a time (in a
//! scrambled order), and after every step the probes of the scenario trace the same through the incrementally updated policy as through a policy compiled
//! from scratch for the same state.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use flowgate_cluster::{load_str, ClusterState, ObjectKey};
use flowgate_compiler::{compile, Changes, Compiler};
use flowgate_switch::{trace, FlowKey, Proto};

/// One object of a scenario, as the kind and key the change tracker would report.
#[derive(Clone, Debug)]
enum Obj {
    Service(ObjectKey),
    Slice(ObjectKey),
    Pod(ObjectKey),
    ServiceCidr(String),
    NetworkPolicy(ObjectKey),
    Namespace(String),
}

fn objects(state: &ClusterState) -> Vec<Obj> {
    let mut v: Vec<Obj> = Vec::new();
    v.extend(state.services.keys().cloned().map(Obj::Service));
    v.extend(state.endpoint_slices.keys().cloned().map(Obj::Slice));
    v.extend(state.pods.keys().cloned().map(Obj::Pod));
    v.extend(state.service_cidrs.keys().cloned().map(Obj::ServiceCidr));
    v.extend(state.network_policies.keys().cloned().map(Obj::NetworkPolicy));
    v.extend(state.namespaces.keys().cloned().map(Obj::Namespace));
    // A fixed scramble, so slices sometimes arrive before their Service.
    let n = v.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|i| (i * 7 + 3) % n.max(1));
    order.into_iter().map(|i| v[i].clone()).collect()
}

fn copy(obj: &Obj, from: &ClusterState, to: &mut ClusterState, add: bool) -> Changes {
    let mut c = Changes::default();
    match obj {
        Obj::Service(k) => {
            if add {
                to.services.insert(k.clone(), from.services[k].clone());
            } else {
                to.services.remove(k);
            }
            c.services.insert(k.clone());
        }
        Obj::Slice(k) => {
            if add {
                to.endpoint_slices.insert(k.clone(), from.endpoint_slices[k].clone());
            } else {
                to.endpoint_slices.remove(k);
            }
            c.endpoint_slices.insert(k.clone());
        }
        Obj::Pod(k) => {
            if add {
                to.pods.insert(k.clone(), from.pods[k].clone());
            } else {
                to.pods.remove(k);
            }
            c.pods.insert(k.clone());
        }
        Obj::ServiceCidr(k) => {
            if add {
                to.service_cidrs.insert(k.clone(), from.service_cidrs[k].clone());
            } else {
                to.service_cidrs.remove(k);
            }
            c.service_cidrs = true;
        }
        Obj::NetworkPolicy(k) => {
            if add {
                to.network_policies.insert(k.clone(), from.network_policies[k].clone());
            } else {
                to.network_policies.remove(k);
            }
            c.network_policies.insert(k.clone());
        }
        Obj::Namespace(k) => {
            if add {
                to.namespaces.insert(k.clone(), from.namespaces[k].clone());
            } else {
                to.namespaces.remove(k);
            }
            c.namespaces.insert(k.clone());
        }
    }
    c
}

/// A small probe parser (the CLI's is not a library): ADDR[:PORT] or [V6]:PORT, then /PROTO.
fn parse(from: &str, to: &str) -> Option<FlowKey> {
    fn hp(s: &str) -> Option<(std::net::IpAddr, u16)> {
        if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
            return Some((sa.ip(), sa.port()));
        }
        if let Some((a, p)) = s.rsplit_once(':').filter(|(a, _)| !a.contains(':')) {
            return Some((flowgate_cluster::parse_ip_sloppy(a)?, p.parse().ok()?));
        }
        flowgate_cluster::parse_ip_sloppy(s.trim_start_matches('[').trim_end_matches(']')).map(|ip| (ip, 40000))
    }
    let (to, proto) = match to.rsplit_once('/') {
        Some((t, p)) => (t, Proto::from_name(p)?),
        None => (to, Proto::TCP),
    };
    let (src, sport) = hp(from)?;
    let (dst, dport) = hp(to)?;
    Some(FlowKey { src, dst, proto, sport, dport })
}

fn probes(doc: &serde_yaml::Value) -> Vec<FlowKey> {
    let mut out = Vec::new();
    for p in doc.get("probes").and_then(|p| p.as_sequence()).into_iter().flatten() {
        let from = p.get("from").and_then(|v| v.as_str()).unwrap();
        let to = p.get("to").and_then(|v| v.as_str()).unwrap();
        out.push(parse(from, to).unwrap_or_else(|| panic!("cannot parse probe {from} -> {to}")));
    }
    out
}

fn answers(policy: &flowgate_switch::SwitchPolicy, probes: &[FlowKey]) -> Vec<String> {
    probes
        .iter()
        .map(|k| {
            let t = trace(policy, k);
            // (With the steps: the rule that decided, NetworkPolicy's included.)
            format!("{k}: {:?} {:?} {:?} {} {:?} {:?}", t.verdict, t.reason, t.dnat, t.masquerade, t.deliver, t.steps)
        })
        .collect()
}

#[test]
fn incremental_updates_match_full_compiles() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.retain(|p| p.extension().and_then(|e| e.to_str()) == Some("yaml"));
    files.sort();
    let mut steps = 0;
    for file in files {
        let doc: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        if doc.get("error").and_then(|e| e.as_bool()) == Some(true) {
            continue;
        }
        let mut text = String::new();
        for m in doc.get("manifests").and_then(|m| m.as_sequence()).unwrap() {
            text.push_str("---\n");
            text.push_str(&serde_yaml::to_string(m).unwrap());
        }
        let full_state = load_str(Path::new("scenario.yaml"), &text).unwrap().state;
        let node = doc.get("node").and_then(|n| n.as_str()).map(String::from);
        let probes = probes(&doc);
        let objs = objects(&full_state);

        // Start from the node-level objects only.
        let mut state = ClusterState {
            nodes: full_state.nodes.clone(),
            kube_proxy: full_state.kube_proxy.clone(),
            flowgate: full_state.flowgate.clone(),
            ..ClusterState::default()
        };
        let mut compiler = Compiler::new(node.clone());
        compiler.compile_full(&state).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        let check = |state: &ClusterState, compiler: &Compiler, what: &str| {
            let full = compile(state, node.as_deref()).unwrap();
            let want = answers(&full.policy, &probes);
            let got = answers(compiler.policy().unwrap(), &probes);
            assert_eq!(got, want, "{name}: after {what}");
            // Conflicting and refused claims too (who owns an address cannot depend on history).
            assert_eq!(compiler.problems(), full.problems, "{name}: problems after {what}");
        };
        for o in &objs {
            let changes = copy(o, &full_state, &mut state, true);
            compiler.update(&state, &changes).unwrap();
            check(&state, &compiler, &format!("adding {o:?}"));
            steps += 1;
        }
        // Every pod's labels changed, then restored (policies select and name pods by them); then
        // its addresses gone (not yet reported) and back; finished; on the host network.
        for key in full_state.pods.keys() {
            let original = full_state.pods[key].clone();
            let mut relabeled = original.clone();
            relabeled.metadata.labels = Some([("relabeled".to_string(), "yes".to_string())].into());
            let mut no_ip = original.clone();
            if let Some(st) = no_ip.status.as_mut() {
                st.pod_ip = None;
                st.pod_ips = None;
            }
            let mut finished = original.clone();
            finished.status.get_or_insert_with(Default::default).phase = Some("Succeeded".into());
            let mut host_network = original.clone();
            host_network.spec.get_or_insert_with(Default::default).host_network = Some(true);
            for (what, pod) in [
                ("relabeling", relabeled),
                ("restoring the labels of", original.clone()),
                ("taking the addresses of", no_ip),
                ("giving back the addresses of", original.clone()),
                ("finishing", finished),
                ("restarting", original.clone()),
                ("moving to the host network", host_network),
                ("moving back to the pod network", original),
            ] {
                state.pods.insert(key.clone(), pod);
                let changes = Changes { pods: [key.clone()].into(), ..Changes::default() };
                compiler.update(&state, &changes).unwrap();
                check(&state, &compiler, &format!("{what} {key}"));
                steps += 1;
            }
        }
        for o in objs.iter().rev().step_by(2) {
            let changes = copy(o, &full_state, &mut state, false);
            compiler.update(&state, &changes).unwrap();
            check(&state, &compiler, &format!("removing {o:?}"));
            steps += 1;
        }
    }
    assert!(steps > 500, "only {steps} steps");
}
