//! The model backend: a copy of the policy that the switch model walks, updated entry by entry.

use std::sync::{Arc, RwLock};

use flowgate_switch::{PolicyDelta, SwitchPolicy};

use crate::{ApplyStats, Dataplane, DataplaneError};

/// The in-process data plane: the programmed policy, shared with readers (trace).
#[derive(Debug, Default)]
pub struct ModelDataplane {
    programmed: Arc<RwLock<SwitchPolicy>>,
}

impl ModelDataplane {
    /// An empty data plane (no services, no endpoints).
    pub fn new() -> ModelDataplane {
        ModelDataplane::default()
    }

    /// The programmed policy, for readers.
    pub fn programmed(&self) -> Arc<RwLock<SwitchPolicy>> {
        Arc::clone(&self.programmed)
    }
}

impl Dataplane for ModelDataplane {
    fn name(&self) -> &'static str {
        "model"
    }

    fn apply(&self, desired: &SwitchPolicy, delta: &PolicyDelta) -> Result<ApplyStats, DataplaneError> {
        if delta.full {
            let copy = desired.clone();
            let mut p = self.programmed.write().map_err(|_| poisoned())?;
            *p = copy;
            return Ok(ApplyStats { entries: 0, full: true, ..ApplyStats::default() });
        }
        // Gather every new value first, then install them under one lock: readers see the old
        // policy or the new one, never a mix.
        let ports: Vec<_> = delta.ports.iter().map(|id| (*id, desired.port(*id).cloned())).collect();
        let sets: Vec<_> = delta.sets.iter().map(|id| (*id, desired.address_set(*id).cloned())).collect();
        let backend_sets: Vec<_> =
            delta.backend_sets.iter().map(|id| (*id, desired.backend_set(*id).cloned())).collect();
        let rules: Vec<_> = delta.rules.iter().map(|r| (r.clone(), desired.rules_at(r).map(<[_]>::to_vec))).collect();
        let acls: Vec<_> = delta.acls.iter().map(|id| (*id, desired.acls.get(id).cloned())).collect();
        let host = delta.host.then(|| (desired.host_addresses.clone(), desired.snat_v4, desired.snat_v6));
        let entries = ports.len() + sets.len() + backend_sets.len() + rules.len() + acls.len();
        let mut p = self.programmed.write().map_err(|_| poisoned())?;
        // Rule groups the desired policy has but the programmed one lacks (a group created by an
        // incremental update) come over whole.
        for layer in &desired.layers {
            let have =
                p.layer(layer.kind).map(|l| l.groups.iter().map(|g| g.id).collect::<Vec<_>>()).unwrap_or_default();
            for g in &layer.groups {
                if !have.contains(&g.id) {
                    p.layer_mut(layer.kind).add_group(g.clone());
                }
            }
        }
        for (id, port) in ports {
            p.put_port(id, port);
        }
        for (id, set) in sets {
            p.put_set(id, set);
        }
        for (id, set) in backend_sets {
            p.put_backend_set(id, set);
        }
        for (r, v) in rules {
            p.put_rules(&r, v);
        }
        for (id, a) in acls {
            p.put_acl(id, a);
        }
        if let Some((addrs, v4, v6)) = host {
            p.host_addresses = addrs;
            p.snat_v4 = v4;
            p.snat_v6 = v6;
        }
        Ok(ApplyStats { entries, ..ApplyStats::default() })
    }
}

fn poisoned() -> DataplaneError {
    DataplaneError::Apply {
        backend: "model",
        op: "lock".into(),
        message: "a reader panicked while holding the policy".into(),
    }
}
