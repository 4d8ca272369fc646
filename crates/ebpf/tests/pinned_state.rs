//! Pinned state from another version is checked before it is adopted: maps whose layout is this
//! version's are adopted with their entries, others are unpinned and made anew, and state of a
//! newer version is refused without touching anything.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use flowgate_ebpf::bpffs::TempBpffs;
use flowgate_ebpf::pinned::{self, PinnedError, ABI_VERSION};
use flowgate_ebpf::{load_sized, maps, objects};

fn objects() -> [&'static [u8]; 2] {
    [objects::UPLINK, objects::ENDPOINT]
}

/// Loads both objects with their maps pinned under `bpffs/maps`, some maps sized.
fn load(bpffs: &std::path::Path, sizes: &[(&str, u32)]) -> Vec<flowgate_ebpf::Loaded> {
    std::fs::create_dir_all(bpffs.join("maps")).unwrap();
    load_sized(&objects(), Some(&bpffs.join("maps")), &[], sizes).unwrap()
}

fn lb_key() -> maps::LbKey {
    maps::LbKey { dst: maps::Addr::from_ip("172.30.0.10".parse().unwrap()), dport: 80u16.to_be(), proto: 6, pad: 0 }
}

/// Writes one entry into the pinned fg_lb_dest and fg_ports (stand-ins for any state worth keeping).
fn write_entries(bpffs: &std::path::Path) {
    let m = aya::maps::MapData::from_pin(bpffs.join("maps/fg_lb_dest")).unwrap();
    let mut lb: aya::maps::HashMap<_, maps::LbKey, maps::RuleList> = aya::maps::Map::HashMap(m).try_into().unwrap();
    lb.insert(lb_key(), maps::RuleList { count: 1, ..Default::default() }, 0).unwrap();
}

fn has_entry(bpffs: &std::path::Path) -> bool {
    let m = aya::maps::MapData::from_pin(bpffs.join("maps/fg_lb_dest")).unwrap();
    let lb: aya::maps::HashMap<_, maps::LbKey, maps::RuleList> = aya::maps::Map::HashMap(m).try_into().unwrap();
    lb.get(&lb_key(), 0).is_ok()
}

#[test]
fn pinned_state_is_checked_before_it_is_adopted() {
    if !flowgate_ebpf::privileged_test("pinned_state_is_checked_before_it_is_adopted") {
        return;
    }
    let fs = TempBpffs::new().unwrap();
    let bpffs = fs.path().join("flowgate");
    std::fs::create_dir_all(&bpffs).unwrap();

    // Nothing pinned yet: nothing to adopt, the state is marked as this version's.
    let c = pinned::check(&bpffs, &objects(), &[]).unwrap();
    assert_eq!((c.found, c.adopted.len(), c.replaced.len()), (None, 0, 0));
    assert!(bpffs.join(format!("abi-{ABI_VERSION}")).is_dir());

    // State of this version: everything adopted, entries kept.
    drop(load(&bpffs, &[]));
    write_entries(&bpffs);
    let c = pinned::check(&bpffs, &objects(), &[]).unwrap();
    assert_eq!(c.found, Some(ABI_VERSION));
    assert!(c.replaced.is_empty(), "{:?}", c.replaced);
    assert!(
        c.adopted.iter().any(|m| m == "fg_flows") && c.adopted.iter().any(|m| m == "fg_lb_dest"),
        "{:?}",
        c.adopted
    );
    drop(load(&bpffs, &[]));
    assert!(has_entry(&bpffs), "adopted with its entries");

    // An older agent's state (no version mark) whose fg_lb_dest had another size, and a map this
    // version no longer has: those two are replaced, the rest (the flow table) adopted.
    std::fs::remove_dir(bpffs.join(format!("abi-{ABI_VERSION}"))).unwrap();
    std::fs::remove_file(bpffs.join("maps/fg_lb_dest")).unwrap();
    drop(load(&bpffs, &[("fg_lb_dest", 1024)]));
    write_entries(&bpffs);
    // (A map of an older version under a name no object uses: the same map pinned again.)
    let m = aya::maps::MapData::from_pin(bpffs.join("maps/fg_lb_dest")).unwrap();
    m.pin(bpffs.join("maps/fg_retired")).unwrap();
    let c = pinned::check(&bpffs, &objects(), &[]).unwrap();
    assert_eq!(c.found, Some(0), "no mark but maps: the state of an agent before versions");
    let replaced: Vec<&str> = c.replaced.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(replaced, vec!["fg_lb_dest", "fg_retired"], "{:?}", c.replaced);
    assert!(c.replaced[0].1.contains("1024 entries"), "{:?}", c.replaced);
    assert!(c.adopted.iter().any(|m| m == "fg_flows"), "{:?}", c.adopted);
    assert!(!bpffs.join("maps/fg_lb_dest").exists() && !bpffs.join("maps/fg_retired").exists());
    // The next load makes fg_lb_dest anew, with this version's layout (never the old one misread).
    drop(load(&bpffs, &[]));
    assert!(!has_entry(&bpffs));
    let info = aya::maps::MapInfo::from_pin(bpffs.join("maps/fg_lb_dest")).unwrap();
    assert_ne!(info.max_entries(), 1024);

    // A newer agent's state: refused, and nothing touched.
    std::fs::create_dir(bpffs.join(format!("abi-{}", ABI_VERSION + 1))).unwrap();
    let before: Vec<_> = std::fs::read_dir(bpffs.join("maps")).unwrap().map(|e| e.unwrap().file_name()).collect();
    match pinned::check(&bpffs, &objects(), &[]) {
        Err(PinnedError::Newer { found, supported, .. }) => {
            assert_eq!((found, supported), (ABI_VERSION + 1, ABI_VERSION))
        }
        other => panic!("newer state adopted: {other:?}"),
    }
    let after: Vec<_> = std::fs::read_dir(bpffs.join("maps")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(before, after);
    assert!(
        bpffs.join(format!("abi-{ABI_VERSION}")).is_dir() && bpffs.join(format!("abi-{}", ABI_VERSION + 1)).is_dir()
    );
}
