//! The crate's kernel plumbing on bpf/test/echo.c (swaps MACs, counts packets in a map pinned by
//! name, returns the load-time constant FG_PASS): loading, constants, private and pinned maps,
//! BPF_PROG_TEST_RUN, TCX links pinned, adopted, replaced and detached, and the namespace and
//! bpffs guards cleaning up. Needs root; see `privileged_test`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::UdpSocket;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

use aya::maps::{HashMap, Map, MapData, MapInfo};
use flowgate_ebpf::bpffs::{self, Ensured, TempBpffs};
use flowgate_ebpf::loader::{self, Attachment};
use flowgate_ebpf::netns::{self, Netns};
use flowgate_ebpf::{
    load, load_all, objects, privileged_test, test_run, test_run_repeat, test_run_with, Direction, EbpfError,
    GlobalValue, Loaded, SkbContext,
};

const PROGRAM: &str = "fg_echo";
const COUNT_MAP: &str = "fg_echo_count";
const KEY_PACKETS: u32 = 0;
const KEY_IFINDEX: u32 = 1;
const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;

const DST: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const SRC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// An Ethernet frame carrying a minimal IPv4/UDP packet (echo looks only at the MACs).
fn frame() -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&DST);
    f.extend_from_slice(&SRC);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&[0x45, 0, 0, 29, 0, 0, 0x40, 0, 64, 17, 0, 0, 198, 18, 0, 2, 198, 18, 0, 1]);
    f.extend_from_slice(&[0x30, 0x39, 0, 9, 0, 9, 0, 0, b'x']);
    f
}

fn count(loaded: &Loaded, key: u32) -> u64 {
    let map = loaded.ebpf.map(COUNT_MAP).expect("echo has its count map");
    let map: HashMap<&MapData, u32, u64> = HashMap::try_from(map).expect("a hash map of u32 -> u64");
    map.get(&key, 0).unwrap_or(0)
}

fn pinned_count(pin_dir: &Path) -> u64 {
    let data = MapData::from_pin(pin_dir.join(COUNT_MAP)).expect("the count map is pinned");
    let map: HashMap<MapData, u32, u64> = HashMap::try_from(Map::HashMap(data)).expect("a hash map of u32 -> u64");
    map.get(&KEY_PACKETS, 0).unwrap_or(0)
}

fn mounted(path: &Path) -> bool {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let path = path.to_str().expect("utf-8 path");
    mountinfo.lines().any(|line| line.split(' ').nth(4) == Some(path))
}

fn thread_netns_inode() -> u64 {
    std::fs::metadata("/proc/thread-self/ns/net").expect("own netns").ino()
}

#[test]
fn test_run_swaps_macs_and_returns_pass() {
    if !privileged_test("test_run_swaps_macs_and_returns_pass") {
        return;
    }
    let mut loaded = load(objects::TEST_ECHO, None, &[]).unwrap();
    let prog = loaded.classifier(PROGRAM).unwrap();
    let input = frame();
    let result = test_run(prog, &input).unwrap();
    assert_eq!(result.retval, TC_ACT_OK);
    assert_eq!(result.output.len(), input.len());
    assert_eq!(result.output[0..6], SRC);
    assert_eq!(result.output[6..12], DST);
    assert_eq!(result.output[12..], input[12..]);
    assert_eq!(result.ctx, None);
    assert_eq!(count(&loaded, KEY_PACKETS), 1);

    // Too short for an Ethernet header: the kernel refuses before the program runs.
    let prog = loaded.classifier(PROGRAM).unwrap();
    let err = test_run(prog, &input[..10]).unwrap_err();
    assert!(matches!(err, EbpfError::Program { op: "BPF_PROG_TEST_RUN", .. }), "{err:?}");
}

#[test]
fn load_time_constant_sets_the_verdict() {
    if !privileged_test("load_time_constant_sets_the_verdict") {
        return;
    }
    for value in [GlobalValue::I32(TC_ACT_SHOT as i32), GlobalValue::U32(TC_ACT_SHOT)] {
        let mut loaded = load(objects::TEST_ECHO, None, &[("FG_PASS", value)]).unwrap();
        let result = test_run(loaded.classifier(PROGRAM).unwrap(), &frame()).unwrap();
        assert_eq!(result.retval, TC_ACT_SHOT);
    }
    // A constant of the wrong size, or one the object lacks, fails the load.
    let err = load(objects::TEST_ECHO, None, &[("FG_PASS", GlobalValue::U64(2))]).unwrap_err();
    assert!(matches!(&err, EbpfError::Load { name, .. } if name == "TEST_ECHO"), "{err:?}");
    let err = load(objects::TEST_ECHO, None, &[("FG_NO_SUCH", GlobalValue::U32(1))]).unwrap_err();
    assert!(matches!(err, EbpfError::Load { .. }), "{err:?}");
}

#[test]
fn unknown_and_wrong_programs_are_reported() {
    if !privileged_test("unknown_and_wrong_programs_are_reported") {
        return;
    }
    let mut loaded = load(objects::TEST_ECHO, None, &[]).unwrap();
    let err = loaded.classifier("fg_nope").unwrap_err();
    assert!(matches!(&err, EbpfError::NoProgram { name } if name == "fg_nope"), "{err:?}");
    let err = loaded.attach_tcx(PROGRAM, "fg-no-such-if", Direction::Ingress).unwrap_err();
    assert!(matches!(err, EbpfError::Program { .. }), "{err:?}");
}

#[test]
fn unpinned_loads_have_private_maps_and_load_all_shares_them() {
    if !privileged_test("unpinned_loads_have_private_maps_and_load_all_shares_them") {
        return;
    }
    let mut a = load(objects::TEST_ECHO, None, &[]).unwrap();
    let mut b = load(objects::TEST_ECHO, None, &[]).unwrap();
    for _ in 0..2 {
        test_run(a.classifier(PROGRAM).unwrap(), &frame()).unwrap();
    }
    test_run(b.classifier(PROGRAM).unwrap(), &frame()).unwrap();
    assert_eq!((count(&a, KEY_PACKETS), count(&b, KEY_PACKETS)), (2, 1));
    // Nothing was pinned in the machine's conventional place.
    assert!(!Path::new("/sys/fs/bpf").join(COUNT_MAP).exists());

    let mut both = load_all(&[objects::TEST_ECHO, objects::TEST_ECHO], None, &[]).unwrap();
    for _ in 0..2 {
        test_run(both[0].classifier(PROGRAM).unwrap(), &frame()).unwrap();
    }
    test_run(both[1].classifier(PROGRAM).unwrap(), &frame()).unwrap();
    assert_eq!((count(&both[0], KEY_PACKETS), count(&both[1], KEY_PACKETS)), (3, 3));
}

#[test]
fn pinned_map_survives_a_reload() {
    if !privileged_test("pinned_map_survives_a_reload") {
        return;
    }
    let fs = TempBpffs::new().unwrap();
    let dir = fs.path().to_owned();
    assert!(bpffs::is_bpffs(&dir).unwrap());
    assert!(mounted(&dir));

    let mut first = load(objects::TEST_ECHO, Some(&dir), &[]).unwrap();
    for _ in 0..2 {
        test_run(first.classifier(PROGRAM).unwrap(), &frame()).unwrap();
    }
    let pin = dir.join(COUNT_MAP);
    assert!(pin.exists(), "{} was not pinned", pin.display());
    let id = MapInfo::from_pin(&pin).unwrap().id();
    drop(first);

    let mut second = load(objects::TEST_ECHO, Some(&dir), &[]).unwrap();
    assert_eq!(MapInfo::from_pin(&pin).unwrap().id(), id, "the reload made a new map");
    assert_eq!(count(&second, KEY_PACKETS), 2);
    test_run(second.classifier(PROGRAM).unwrap(), &frame()).unwrap();
    assert_eq!(count(&second, KEY_PACKETS), 3);
    drop(second);

    drop(fs);
    assert!(!mounted(&dir), "{} is still mounted", dir.display());
    assert!(!dir.exists(), "{} was not removed", dir.display());
}

#[test]
fn repeated_test_run_reports_the_average() {
    if !privileged_test("repeated_test_run_reports_the_average") {
        return;
    }
    let mut loaded = load(objects::TEST_ECHO, None, &[]).unwrap();
    let input = frame();
    let result = test_run_repeat(loaded.classifier(PROGRAM).unwrap(), &input, 1000).unwrap();
    assert_eq!(result.retval, TC_ACT_OK);
    // Every repetition runs on the previous one's output: 1000 swaps give the input back.
    assert_eq!(result.output, input);
    assert!(result.duration_ns < 1_000_000, "{} ns per run", result.duration_ns);
    assert_eq!(count(&loaded, KEY_PACKETS), 1000);
    eprintln!("echo: {} ns per run (average of 1000)", result.duration_ns);
}

#[test]
fn test_run_context_names_an_interface_of_the_namespace() {
    if !privileged_test("test_run_context_names_an_interface_of_the_namespace") {
        return;
    }
    let ns = Netns::new().unwrap();
    ns.add_veth_pair("fg0", "fg1").unwrap();
    let ifindex = ns.ifindex("fg0").unwrap();
    let mut loaded = load(objects::TEST_ECHO, None, &[]).unwrap();
    let ctx = SkbContext { ifindex, mark: 7, cb: [1, 2, 3, 4, 5], ..SkbContext::default() };
    let result =
        ns.run(|| test_run_with(loaded.classifier(PROGRAM).unwrap(), &frame(), Some(&ctx), 1)).unwrap().unwrap();
    assert_eq!(result.retval, TC_ACT_OK);
    assert_eq!(count(&loaded, KEY_IFINDEX), u64::from(ifindex));
    let out = result.ctx.unwrap();
    assert_eq!((out.mark, out.cb), (7, [1, 2, 3, 4, 5]));

    // The same index does not exist outside the namespace (or is another device); an index that
    // exists nowhere is refused.
    let bad = SkbContext { ifindex: 1_000_000, ..SkbContext::default() };
    let err = ns.run(|| test_run_with(loaded.classifier(PROGRAM).unwrap(), &frame(), Some(&bad), 1)).unwrap();
    assert!(err.is_err());
}

/// Two namespaces joined by a veth: `fga` in `a` (where echo is attached, 198.18.0.1), `fgb` in `b`
/// (198.18.0.2) with a permanent neighbour entry, so every datagram `b` sends is one frame on
/// `fga`'s ingress (echo then swaps its MACs, and `a` drops it as not addressed to it).
struct Pair {
    a: Netns,
    b: Netns,
}

impl Pair {
    fn new() -> Pair {
        let a = Netns::new().unwrap();
        let b = Netns::new().unwrap();
        a.add_veth_to("fga", &b, "fgb").unwrap();
        a.ip(&["addr", "add", "198.18.0.1/30", "dev", "fga"]).unwrap();
        b.ip(&["addr", "add", "198.18.0.2/30", "dev", "fgb"]).unwrap();
        let mac = a.mac("fga").unwrap().iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
        b.ip(&["neigh", "replace", "198.18.0.1", "lladdr", &mac, "dev", "fgb", "nud", "permanent"]).unwrap();
        Pair { a, b }
    }

    fn send(&self, datagrams: usize) {
        self.b
            .run(|| {
                let socket = UdpSocket::bind("198.18.0.2:0").unwrap();
                for _ in 0..datagrams {
                    socket.send_to(b"x", "198.18.0.1:9").unwrap();
                }
            })
            .unwrap();
    }

    fn programs(&self) -> Vec<u32> {
        self.a.run(|| loader::tcx_program_ids("fga", Direction::Ingress)).unwrap().unwrap()
    }
}

/// Waits until `read()` reaches `at_least` (frames cross the veth in softirq context).
fn wait_for(read: impl Fn() -> u64, at_least: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let value = read();
        if value >= at_least || Instant::now() > deadline {
            return value;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn tcx_link_outlives_the_loader_when_pinned_and_is_adopted() {
    if !privileged_test("tcx_link_outlives_the_loader_when_pinned_and_is_adopted") {
        return;
    }
    let pair = Pair::new();
    let fs = TempBpffs::new().unwrap();
    let dir = fs.path().to_owned();
    let link_pin = dir.join("link_fga_ingress");

    let mut loaded = load(objects::TEST_ECHO, Some(&dir), &[]).unwrap();
    let link = pair.a.run(|| loaded.attach_tcx(PROGRAM, "fga", Direction::Ingress)).unwrap().unwrap();
    let id = loader::program_id(loaded.classifier(PROGRAM).unwrap()).unwrap();
    assert_eq!(pair.programs(), vec![id]);
    let pinned = loader::pin_link(link, &link_pin).unwrap();
    assert!(link_pin.exists());

    pair.send(5);
    let before = wait_for(|| pinned_count(&dir), 5);
    assert!(before >= 5, "echo saw {before} of 5 frames");

    // The loader and our link handle go, as when the agent exits: the pinned link stays.
    drop(pinned);
    drop(loaded);
    assert_eq!(pair.programs(), vec![id]);
    pair.send(5);
    let after = wait_for(|| pinned_count(&dir), before + 5);
    assert!(after >= before + 5, "echo saw {} of 5 frames after the loader went", after - before);

    // A new process adopts the link, and detaches it.
    let adopted = loader::adopt_link(&link_pin).unwrap().expect("the link is pinned");
    let link = adopted.unpin().unwrap();
    assert!(!link_pin.exists());
    drop(link);
    assert_eq!(pair.programs(), Vec::<u32>::new());
    let detached = pinned_count(&dir);
    pair.send(5);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(pinned_count(&dir), detached, "echo still runs after the detach");
    assert!(loader::adopt_link(&link_pin).unwrap().is_none());

    let names = [pair.a.name().to_owned(), pair.b.name().to_owned()];
    drop(pair);
    drop(fs);
    let left = netns::existing().unwrap();
    assert!(names.iter().all(|n| !left.contains(n)), "left behind: {left:?}");
    assert!(!mounted(&dir));
}

#[test]
fn attach_pinned_replaces_in_place_and_recovers_from_a_deleted_interface() {
    if !privileged_test("attach_pinned_replaces_in_place_and_recovers_from_a_deleted_interface") {
        return;
    }
    let pair = Pair::new();
    let fs = TempBpffs::new().unwrap();
    let dir = fs.path().to_owned();
    let pin = dir.join("link_fga_ingress");
    let attach = |loaded: &mut Loaded| {
        pair.a.run(|| loaded.attach_pinned(PROGRAM, "fga", Direction::Ingress, &pin)).unwrap().unwrap()
    };
    let id = |loaded: &mut Loaded| loader::program_id(loaded.classifier(PROGRAM).unwrap()).unwrap();

    let mut first = load(objects::TEST_ECHO, Some(&dir), &[]).unwrap();
    assert_eq!(attach(&mut first), Attachment::Created);
    assert_eq!(pair.programs(), vec![id(&mut first)]);

    // A restart: the new program takes over the same link; there is never a second one.
    let mut second = load(objects::TEST_ECHO, Some(&dir), &[]).unwrap();
    assert_eq!(attach(&mut second), Attachment::Replaced);
    let second_id = id(&mut second);
    assert_ne!(second_id, id(&mut first));
    assert_eq!(pair.programs(), vec![second_id]);
    drop(first);
    drop(second);
    assert_eq!(pair.programs(), vec![second_id]);
    pair.send(3);
    assert!(wait_for(|| pinned_count(&dir), 3) >= 3);

    // The interface goes and comes back under the same name: the pinned link is defunct.
    pair.a.ip(&["link", "del", "fga"]).unwrap();
    pair.a.add_veth_to("fga", &pair.b, "fgb").unwrap();
    let mut third = load(objects::TEST_ECHO, Some(&dir), &[]).unwrap();
    assert_eq!(attach(&mut third), Attachment::ReplacedDefunct);
    assert_eq!(pair.programs(), vec![id(&mut third)]);
    drop(third);

    assert!(loader::detach_pinned(&pin).unwrap());
    assert_eq!(pair.programs(), Vec::<u32>::new());
    assert!(!loader::detach_pinned(&pin).unwrap());
}

#[test]
fn netns_guard_returns_the_thread_and_deletes_the_namespace_on_panic() {
    if !privileged_test("netns_guard_returns_the_thread_and_deletes_the_namespace_on_panic") {
        return;
    }
    let home = thread_netns_inode();
    let mut name = String::new();
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let ns = Netns::new().unwrap();
        name = ns.name().to_owned();
        assert!(name.starts_with(netns::PREFIX));
        assert!(ns.path().exists());
        ns.run(|| {
            assert_ne!(thread_netns_inode(), home, "run() did not enter the namespace");
            panic!("a test failing inside the namespace");
        })
        .unwrap();
    }));
    assert!(panicked.is_err());
    assert_eq!(thread_netns_inode(), home, "the thread was left in the test namespace");
    assert!(!Path::new("/run/netns").join(&name).exists(), "{name} was not deleted");
    assert!(!netns::existing().unwrap().contains(&name));
}

#[test]
fn temp_bpffs_is_unmounted_on_panic() {
    if !privileged_test("temp_bpffs_is_unmounted_on_panic") {
        return;
    }
    let mut dir = std::path::PathBuf::new();
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let fs = TempBpffs::new().unwrap();
        dir = fs.path().to_owned();
        let _loaded = load(objects::TEST_ECHO, Some(&dir), &[]).unwrap();
        assert!(dir.join(COUNT_MAP).exists());
        panic!("a test failing with a bpffs mounted");
    }));
    assert!(panicked.is_err());
    assert!(!mounted(&dir));
    assert!(!dir.exists());
}

#[test]
fn ensure_bpffs_mounts_once_and_accepts_subdirectories() {
    if !privileged_test("ensure_bpffs_mounts_once_and_accepts_subdirectories") {
        return;
    }
    // Below an existing bpffs: only the directory is made.
    let fs = TempBpffs::new().unwrap();
    let sub = fs.path().join("flowgate").join("node-1");
    assert_eq!(bpffs::ensure_bpffs(&sub).unwrap(), Ensured::AlreadyBpffs);
    assert!(sub.is_dir());

    // A plain directory: a bpffs is mounted there, once.
    let plain = std::env::temp_dir().join(format!("flowgate-ensure-{}", std::process::id()));
    let _ = std::fs::remove_dir(&plain);
    let target = plain.join("pins");
    let outcome = bpffs::ensure_bpffs(&target);
    let cleanup = || {
        if mounted(&target) {
            let status = std::process::Command::new("umount").arg(&target).status().unwrap();
            assert!(status.success());
        }
        let _ = std::fs::remove_dir(&target);
        let _ = std::fs::remove_dir(&plain);
    };
    let second = bpffs::ensure_bpffs(&target);
    cleanup();
    assert_eq!(outcome.unwrap(), Ensured::Mounted { at: target.clone() });
    assert_eq!(second.unwrap(), Ensured::AlreadyBpffs);
    assert!(!plain.exists());
}
