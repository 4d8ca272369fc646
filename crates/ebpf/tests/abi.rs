//! The Rust side of the kernel ABI is checked against what clang produced: every map of the
//! compiled objects has the key and value sizes of the Rust types the backend reads and writes it
//! with (`crates/ebpf/src/maps.rs`), and every map is accounted for — a new map in `bpf/` needs its
//! row here, so it cannot be added without its Rust mirror (or a note that only the programs use
//! it). Read from the ELF objects (aya-obj), no kernel needed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::mem::size_of;

use flowgate_ebpf::maps::*;
use flowgate_ebpf::objects;

/// An LPM trie key: the prefix length (u32), then the data.
const fn lpm<T>() -> usize {
    4 + size_of::<T>()
}

/// (map, key size, value size) as the Rust side has them; `None`: the programs' own scratch or
/// state, never read or written from user space.
fn rust_side() -> BTreeMap<&'static str, Option<(usize, usize)>> {
    BTreeMap::from([
        ("fg_lb_dest", Some((size_of::<LbKey>(), size_of::<RuleList>()))),
        ("fg_lb_nodeport", Some((size_of::<PortKey>(), size_of::<RuleList>()))),
        ("fg_groups", Some((4, size_of::<RuleList>()))),
        ("fg_sets", Some((lpm::<SetData>(), 1))),
        ("fg_set_hosts", Some((size_of::<SetData>(), 1))),
        ("fg_set_info", Some((4, 1))),
        ("fg_backend_sets", Some((4, size_of::<BackendSet>()))),
        ("fg_backends", Some((size_of::<BackendKey>(), size_of::<Backend>()))),
        ("fg_backend_members", Some((size_of::<MemberKey>(), 1))),
        ("fg_flows", Some((size_of::<FlowKey>(), size_of::<Flow>()))),
        ("fg_flows_est", Some((size_of::<FlowKey>(), size_of::<Flow>()))),
        ("fg_fragments", Some((size_of::<FragKey>(), size_of::<FlowKey>()))),
        ("fg_nat_pools", Some((size_of::<NatPoolKey>(), size_of::<NatPool>()))),
        ("fg_nat_pool_zero", Some((4, size_of::<NatPool>()))),
        ("fg_flow_counters", Some((4, 8))),
        ("fg_flow_gauges", Some((4, size_of::<FlowGauges>()))),
        ("fg_ports", Some((4, size_of::<Port>()))),
        ("fg_endpoint_addrs", Some((size_of::<EndpointKey>(), 1))),
        ("fg_acl_endpoints", Some((size_of::<Addr>(), size_of::<AclEndpoint>()))),
        ("fg_acl_classes", Some((lpm::<SetData>(), 4))),
        ("fg_acl_verdicts", Some((lpm::<AclPortData>(), size_of::<AclVerdict>()))),
        ("fg_config", Some((4, size_of::<Config>()))),
        ("fg_counters", Some((4, 8))),
        ("fg_rule_hits", Some((size_of::<RuleHitKey>(), 8))),
        ("fg_last", Some((4, size_of::<Last>()))),
        ("fg_affinity", None),
        ("fg_work", None),
        ("fg_icmp_scratch", None),
        ("fg_reject_scratch", None),
        ("fg_egress", None),
    ])
}

#[test]
fn every_map_matches_its_rust_mirror_as_compiled() {
    let rust = rust_side();
    let mut seen = Vec::new();
    for (object, bytes) in [("uplink", objects::UPLINK), ("endpoint", objects::ENDPOINT)] {
        assert!(!bytes.is_empty(), "the {object} object was not built");
        let obj = aya_obj::Object::parse(bytes).unwrap();
        for (name, map) in &obj.maps {
            // Sections of globals (.rodata, .bss, .data) are the programs' constants.
            if name.starts_with('.') {
                continue;
            }
            let Some(mirror) = rust.get(name.as_str()) else {
                panic!("{object}: map {name} has no row in tests/abi.rs (and so maybe no Rust mirror)")
            };
            if let Some((key, value)) = mirror {
                assert_eq!(
                    (map.key_size() as usize, map.value_size() as usize),
                    (*key, *value),
                    "{object}: map {name}: (key, value) sizes as clang laid them out vs the Rust types"
                );
            }
            seen.push(name.clone());
        }
    }
    for name in rust.keys() {
        assert!(seen.iter().any(|s| s == name), "tests/abi.rs names {name}, which no object has any more");
    }
}

/// `enum fg_drop_reason` in bpf/lib/maps.h names the model's drop reasons with the same numbers.
#[test]
fn drop_reasons_are_one_list() {
    let header = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../bpf/lib/maps.h")).unwrap();
    let start = header.find("enum fg_drop_reason {").expect("the enum");
    let body = &header[start..start + header[start..].find("};").unwrap()];
    let c: BTreeMap<u32, String> = body
        .lines()
        .filter_map(|l| {
            let (name, value) = l.trim().trim_end_matches(|c: char| c != ',' && !c.is_ascii_digit()).split_once('=')?;
            let name = name.trim().strip_prefix("FG_REASON_")?;
            let value: u32 = value.trim().trim_end_matches(',').parse().ok()?;
            (name != "NONE" && name != "MAX").then(|| (value, name.to_ascii_lowercase().replace('_', "-")))
        })
        .collect();
    let rust: BTreeMap<u32, String> =
        flowgate_switch::DropReason::ALL.iter().map(|r| (*r as u32, r.name().to_owned())).collect();
    assert_eq!(c, rust);
}
