//! Loading eBPF objects and attaching their TC classifiers with TCX links that outlive us.
//!
//! **Maps.** The programs declare the maps that must survive a restart with
//! `__uint(pinning, LIBBPF_PIN_BY_NAME)`. With a pin directory, aya pins each such map at
//! `<dir>/<map name>` or, when a map is already pinned there, *reuses* it; objects loaded with
//! the same directory therefore share those maps (the endpoint and uplink programs), and a
//! restarted agent finds the state it left. aya does not compare a reused map's key and value
//! sizes with the object's: whoever changes a layout must check `MapInfo` of the pinned maps
//! (or remove the pins) first. Maps without a `pinning` attribute are never pinned.
//!
//! Without a pin directory every map is private to this load. aya would otherwise pin into
//! `/sys/fs/bpf` (libbpf's default) and share state between unrelated loads, so the load runs on
//! a short-lived thread that has its own mount namespace with a fresh bpffs mounted over the temp
//! directory; the pins vanish with that namespace when the thread ends and the maps live on in
//! the returned [`Loaded`]. This needs `CAP_SYS_ADMIN` (root), like everything here.
//!
//! **Links.** TCX links are owned by file descriptors: they vanish when the process that made
//! them exits unless pinned in bpffs. [`Loaded::attach_pinned`] is the agent's primitive: it
//! switches a link pinned by an earlier run to the new program atomically (no packet sees the
//! hook empty), or creates and pins one. Interface names are resolved in the calling thread's
//! network namespace.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use aya::programs::links::{FdLink, Link as _, LinkError, PinnedLink};
use aya::programs::tc::{qdisc_add_clsact, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle};
use aya::programs::{LinkOrder, ProgramError, SchedClassifier, TcAttachType};
use aya::{Btf, Ebpf, EbpfLoader};

use crate::objects;

/// Why an eBPF operation failed. Each variant names the object, program or path involved; the
/// source (with the verifier's log for a rejected program) is the [`std::error::Error::source`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EbpfError {
    /// The object was left out of the build by `FLOWGATE_BPF_SKIP`: rebuild without it.
    #[error("eBPF object {name} was not built (listed in FLOWGATE_BPF_SKIP); rebuild without skipping it")]
    NotBuilt {
        /// The object's name (`ENDPOINT`).
        name: String,
    },
    /// aya could not parse the object, create or reuse its maps, or pin them.
    #[error("loading eBPF object {name} failed{}", pin_dir.as_ref().map(|d| format!(" (maps pinned under {})", d.display())).unwrap_or_default())]
    Load {
        /// The object's name (`ENDPOINT`, or `<object>` for bytes from elsewhere).
        name: String,
        /// Where its maps are pinned, if they are.
        pin_dir: Option<PathBuf>,
        /// What aya reported (boxed: aya's errors are large).
        #[source]
        source: Box<aya::EbpfError>,
    },
    /// The object has no program of this name.
    #[error("the eBPF object has no program named {name:?}")]
    NoProgram {
        /// The program (C function) name asked for.
        name: String,
    },
    /// An operation on a program failed: wrong program type (TC programs must be in
    /// `SEC("classifier")`), rejected by the verifier, attach, query or test run.
    #[error("{op} of eBPF program {name:?} failed")]
    Program {
        /// What was being done.
        op: &'static str,
        /// The program's name.
        name: String,
        /// What aya reported (boxed: aya's errors are large).
        #[source]
        source: Box<ProgramError>,
    },
    /// An operation on a pinned link failed.
    #[error("{op} of the TCX link {} failed", path.display())]
    Link {
        /// What was being done.
        op: &'static str,
        /// The link's pin (or `<interface>` for a link not pinned yet).
        path: PathBuf,
        /// What aya reported.
        #[source]
        source: LinkError,
    },
    /// Pinning failed: the directory must exist and be on a bpffs (see
    /// [`crate::bpffs::ensure_bpffs`]), and the path must be free.
    #[error("pinning at {} failed; is the directory on a bpffs, and the path free?", path.display())]
    Pin {
        /// The pin path.
        path: PathBuf,
        /// What aya reported.
        #[source]
        source: aya::pin::PinError,
    },
    /// A file or system call failed.
    #[error("{op} {} failed", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl From<crate::bpffs::BpffsError> for EbpfError {
    fn from(error: crate::bpffs::BpffsError) -> Self {
        let crate::bpffs::BpffsError::Io { op, path, source } = error;
        EbpfError::Io { op, path, source }
    }
}

/// A load-time constant (`volatile const` in C) for [`load`]. Its size must equal the C
/// variable's; signedness does not matter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GlobalValue {
    /// `__u8`.
    U8(u8),
    /// `__u16`.
    U16(u16),
    /// `__u32`.
    U32(u32),
    /// `int`.
    I32(i32),
    /// `__u64`.
    U64(u64),
    /// Anything else (a struct or array), in the target's layout and byte order.
    Bytes(Vec<u8>),
}

impl GlobalValue {
    fn to_ne_bytes(&self) -> Vec<u8> {
        match self {
            GlobalValue::U8(v) => vec![*v],
            GlobalValue::U16(v) => v.to_ne_bytes().to_vec(),
            GlobalValue::U32(v) => v.to_ne_bytes().to_vec(),
            GlobalValue::I32(v) => v.to_ne_bytes().to_vec(),
            GlobalValue::U64(v) => v.to_ne_bytes().to_vec(),
            GlobalValue::Bytes(v) => v.clone(),
        }
    }
}

/// Which TCX hook of an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Packets the interface receives.
    Ingress,
    /// Packets the interface sends.
    Egress,
}

impl Direction {
    fn attach_type(self) -> TcAttachType {
        match self {
            Direction::Ingress => TcAttachType::Ingress,
            Direction::Egress => TcAttachType::Egress,
        }
    }
}

/// What [`Loaded::attach_pinned`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attachment {
    /// No link was pinned there: a new one was created (last in the hook's TCX chain) and pinned.
    Created,
    /// A live pinned link now runs the new program; it kept its place in the chain.
    Replaced,
    /// The pinned link's interface had gone (the link was defunct): the pin was replaced by a new
    /// link on the interface of that name.
    ReplacedDefunct,
}

/// Where a program sits in a legacy (netlink) TC hook: the `cls_bpf` filter's priority and
/// handle on the interface's clsact qdisc. flowgate's endpoint programs use one fixed slot, so a
/// restarted agent finds and switches its filters without any record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcSlot {
    /// The filter's priority (lower runs first).
    pub priority: u16,
    /// The filter's handle.
    pub handle: u32,
}

impl TcSlot {
    fn options(self) -> TcAttachOptions {
        TcAttachOptions::Netlink(NlOptions {
            priority: self.priority,
            handle: TcHandle::from(self.handle),
            classid: None,
        })
    }
}

/// One loaded object: its maps (created, or reused from pins) and its programs (not yet
/// verified; [`Loaded::classifier`] does that).
#[derive(Debug)]
pub struct Loaded {
    /// The aya handle, for the maps and anything this module does not wrap.
    pub ebpf: Ebpf,
}

/// The kernel's BTF, parsed once per process (aya would parse the whole vmlinux BTF per load).
fn kernel_btf() -> Option<&'static Btf> {
    static BTF: OnceLock<Option<Btf>> = OnceLock::new();
    BTF.get_or_init(|| Btf::from_sys_fs().ok()).as_ref()
}

/// Loads one object (see the module doc for what `pin_dir` does), with `globals` overriding
/// load-time constants.
///
/// # Errors
///
/// [`EbpfError::NotBuilt`] for an object skipped at build time; [`EbpfError::Load`] when aya
/// fails (a constant that the object lacks or whose size differs, a map it cannot create or
/// pin); [`EbpfError::Io`] when the private bpffs for an unpinned load cannot be set up.
pub fn load(object: &[u8], pin_dir: Option<&Path>, globals: &[(&str, GlobalValue)]) -> Result<Loaded, EbpfError> {
    let mut loaded = load_all(&[object], pin_dir, globals)?;
    // load_all returns exactly one `Loaded` per object, or an error.
    Ok(loaded.remove(0))
}

/// Loads several objects that share their pinned maps: with a `pin_dir`, the same as calling
/// [`load`] for each; without one, every object's pinned maps are shared among these objects
/// (one private bpffs for all of them) and with nothing else. The same `globals` go to every
/// object; each must declare them all.
///
/// # Errors
///
/// As [`load`], for the first object that fails.
pub fn load_all(
    objects: &[&[u8]],
    pin_dir: Option<&Path>,
    globals: &[(&str, GlobalValue)],
) -> Result<Vec<Loaded>, EbpfError> {
    load_sized(objects, pin_dir, globals, &[])
}

/// [`load_all`], with the number of entries of some maps set (`(map name, max_entries)`): a map
/// created by this load gets that size; a pinned map of another size is not adopted (see
/// [`crate::pinned::check`], which the agent runs first).
///
/// # Errors
///
/// As [`load`].
pub fn load_sized(
    objects: &[&[u8]],
    pin_dir: Option<&Path>,
    globals: &[(&str, GlobalValue)],
    max_entries: &[(&str, u32)],
) -> Result<Vec<Loaded>, EbpfError> {
    for object in objects {
        if object.is_empty() {
            return Err(EbpfError::NotBuilt { name: object_name(object) });
        }
    }
    let values: Vec<(&str, Vec<u8>)> = globals.iter().map(|(name, value)| (*name, value.to_ne_bytes())).collect();
    let load_in = |dir: &Path, private: bool| -> Result<Vec<Loaded>, EbpfError> {
        objects
            .iter()
            .map(|object| {
                let mut loader = EbpfLoader::new();
                loader.btf(kernel_btf()).default_map_pin_directory(dir);
                for (name, bytes) in &values {
                    loader.override_global(name, bytes.as_slice(), true);
                }
                for (name, entries) in max_entries {
                    loader.map_max_entries(name, *entries);
                }
                loader.load(object).map(|ebpf| Loaded { ebpf }).map_err(|source| EbpfError::Load {
                    name: object_name(object),
                    pin_dir: (!private).then(|| dir.to_owned()),
                    source: Box::new(source),
                })
            })
            .collect()
    };
    match pin_dir {
        Some(dir) => load_in(dir, false),
        None => with_private_bpffs(|dir| load_in(dir, true))?,
    }
}

fn object_name(object: &[u8]) -> String {
    objects::name_of(object).unwrap_or("<object>").to_owned()
}

/// Runs `f` on a new thread that has a private mount namespace with a fresh bpffs mounted over
/// the temp directory, and returns what `f` returns. When the thread ends its mount namespace
/// and the bpffs go away, with every pin in it; nothing is visible outside the thread.
fn with_private_bpffs<T: Send>(f: impl FnOnce(&Path) -> T + Send) -> Result<T, EbpfError> {
    let dir = std::env::temp_dir();
    std::thread::scope(|scope| {
        let thread = scope.spawn(|| -> Result<T, EbpfError> {
            private_mount_namespace()?;
            crate::bpffs::mount_bpffs(&dir)?;
            Ok(f(&dir))
        });
        match thread.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Moves the calling thread into a mount namespace of its own whose mounts do not propagate
/// back to the one it came from.
#[allow(unsafe_code)]
fn private_mount_namespace() -> Result<(), EbpfError> {
    let err = |op| EbpfError::Io { op, path: PathBuf::from("/"), source: io::Error::last_os_error() };
    // SAFETY: unshare takes a flag word and touches no memory of ours. CLONE_NEWNS also unshares
    // this thread's fs attributes (cwd, root), which other threads then no longer see change;
    // this thread changes neither.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(err("unshare(CLONE_NEWNS) for a private bpffs at"));
    }
    // SAFETY: the pointers are to NUL-terminated literals that outlive the call; null source,
    // type and data are allowed for a propagation change.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(err("making the private mount namespace private at"));
    }
    Ok(())
}

impl Loaded {
    /// The TC classifier `name` (its C function), verified and loaded into the kernel on first
    /// use.
    ///
    /// # Errors
    ///
    /// [`EbpfError::NoProgram`]; [`EbpfError::Program`] when it is not a classifier
    /// (`SEC("classifier")`) or the verifier rejects it (the source carries the verifier log).
    pub fn classifier(&mut self, name: &str) -> Result<&mut SchedClassifier, EbpfError> {
        let program = self.ebpf.program_mut(name).ok_or_else(|| EbpfError::NoProgram { name: name.to_owned() })?;
        let classifier: &mut SchedClassifier = program.try_into().map_err(|source| EbpfError::Program {
            op: "using as a TC classifier (SEC(\"classifier\"))",
            name: name.to_owned(),
            source: Box::new(source),
        })?;
        if classifier.fd().is_err() {
            classifier.load().map_err(|source| EbpfError::Program {
                op: "loading",
                name: name.to_owned(),
                source: Box::new(source),
            })?;
        }
        Ok(classifier)
    }

    /// Attaches the classifier `program` to `interface` (in the calling thread's network
    /// namespace) with a new TCX link, last in the hook's chain. The link lives as long as the
    /// returned [`FdLink`] (dropping it detaches) unless it is pinned ([`pin_link`]).
    ///
    /// # Errors
    ///
    /// As [`Loaded::classifier`]; [`EbpfError::Program`] when the interface does not exist or the
    /// kernel refuses the link.
    pub fn attach_tcx(&mut self, program: &str, interface: &str, direction: Direction) -> Result<FdLink, EbpfError> {
        let classifier = self.classifier(program)?;
        attach_new(classifier, program, interface, direction)
    }

    /// Makes the classifier `program` run on `interface`'s `direction` hook in `slot`, as a legacy
    /// TC (`cls_bpf`, direct action) filter rather than a TCX link: a filter already in the slot
    /// is switched to this program atomically ([`Attachment::Replaced`]); else the interface's
    /// clsact qdisc is added when missing and the filter created ([`Attachment::Created`]). The
    /// filter lives with the interface, after this process exits too.
    ///
    /// Why not TCX for the pods' interfaces: a TCX attach waits for an RCU grace period under
    /// RTNL (7-15 ms here), which would be most of a pod's ADD; a netlink filter takes ~0.15 ms.
    ///
    /// # Errors
    ///
    /// [`EbpfError::Program`] when the interface does not exist or netlink refuses.
    pub fn attach_tc(
        &mut self,
        program: &str,
        interface: &str,
        direction: Direction,
        slot: TcSlot,
    ) -> Result<Attachment, EbpfError> {
        if self.replace_tc(program, interface, direction, slot)? {
            return Ok(Attachment::Replaced);
        }
        let err = |op, source| EbpfError::Program { op, name: format!("{program}\" on \"{interface}"), source };
        // (It fails when the interface has its clsact qdisc already; a real failure shows in the
        // attach that follows.)
        let _ = qdisc_add_clsact(interface);
        let classifier = self.classifier(program)?;
        let id = classifier
            .attach_with_options(interface, direction.attach_type(), slot.options())
            .map_err(|e| err("TC filter attach", Box::new(e)))?;
        // The filter stays when the link value goes (dropping it would detach it).
        let link = classifier.take_link(id).map_err(|e| err("TC filter attach", Box::new(e)))?;
        std::mem::forget(link);
        Ok(Attachment::Created)
    }

    /// Switches the filter in `slot` of `interface`'s `direction` hook to the classifier
    /// `program`; `false` when there is no such filter (nothing is created).
    ///
    /// # Errors
    ///
    /// [`EbpfError::Program`] when the program is not in the object.
    pub fn replace_tc(
        &mut self,
        program: &str,
        interface: &str,
        direction: Direction,
        slot: TcSlot,
    ) -> Result<bool, EbpfError> {
        let classifier = self.classifier(program)?;
        let Ok(link) = SchedClassifierLink::attached(
            interface,
            direction.attach_type(),
            slot.priority,
            TcHandle::from(slot.handle),
            None,
        ) else {
            return Ok(false);
        };
        match classifier.attach_to_link(link) {
            Ok(id) => {
                if let Ok(link) = classifier.take_link(id) {
                    std::mem::forget(link);
                }
                Ok(true)
            }
            Err(_) => Ok(false),
        }
    }

    /// Makes the classifier `program` run on `interface`'s `direction` hook through the TCX link
    /// pinned at `pin` (which the caller names per interface and hook): a live link pinned there
    /// is switched to this program atomically; a defunct one (its interface was deleted) or none
    /// is replaced by a new link, pinned there. Either way the hook is served by exactly one link
    /// of ours, and it stays after this process exits.
    ///
    /// # Errors
    ///
    /// As [`Loaded::attach_tcx`]; [`EbpfError::Link`] when the pin exists but is not a TCX link;
    /// [`EbpfError::Pin`] when the new link cannot be pinned (then it is detached again).
    pub fn attach_pinned(
        &mut self,
        program: &str,
        interface: &str,
        direction: Direction,
        pin: &Path,
    ) -> Result<Attachment, EbpfError> {
        let classifier = self.classifier(program)?;
        let mut outcome = Attachment::Created;
        if let Some(pinned) = adopt_link(pin)? {
            let link = SchedClassifierLink::try_from(FdLink::from(pinned)).map_err(|source| EbpfError::Link {
                op: "adopting (not a TCX link?)",
                path: pin.to_owned(),
                source,
            })?;
            match classifier.attach_to_link(link) {
                Ok(id) => {
                    // Our fd on the link closes here; the pin keeps the link, now running `program`.
                    drop(classifier.take_link(id).map_err(|source| EbpfError::Program {
                        op: "taking the replaced link",
                        name: program.to_owned(),
                        source: Box::new(source),
                    })?);
                    return Ok(Attachment::Replaced);
                }
                Err(ProgramError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOLINK) => {
                    std::fs::remove_file(pin).map_err(|source| EbpfError::Io {
                        op: "removing the defunct link pin",
                        path: pin.to_owned(),
                        source,
                    })?;
                    outcome = Attachment::ReplacedDefunct;
                }
                Err(source) => {
                    return Err(EbpfError::Program {
                        op: "replacing the pinned link's program",
                        name: program.to_owned(),
                        source: Box::new(source),
                    })
                }
            }
        }
        let link = attach_new(classifier, program, interface, direction)?;
        pin_link(link, pin)?;
        Ok(outcome)
    }
}

fn attach_new(
    classifier: &mut SchedClassifier,
    program: &str,
    interface: &str,
    direction: Direction,
) -> Result<FdLink, EbpfError> {
    let op = match direction {
        Direction::Ingress => "TCX attach (ingress)",
        Direction::Egress => "TCX attach (egress)",
    };
    let err =
        |source| EbpfError::Program { op, name: format!("{program}\" on \"{interface}"), source: Box::new(source) };
    let id = classifier
        .attach_with_options(interface, direction.attach_type(), TcAttachOptions::TcxOrder(LinkOrder::default()))
        .map_err(err)?;
    let link = classifier.take_link(id).map_err(err)?;
    // Only netlink (non-TCX) links fail to convert, and this one is TCX.
    FdLink::try_from(link).map_err(|source| EbpfError::Link {
        op: "taking the new link",
        path: PathBuf::from(format!("<{interface}>")),
        source,
    })
}

/// Pins `link` at `path` (on a bpffs, parent directory existing, path free), so it stays
/// attached after the link value and this process are gone.
///
/// # Errors
///
/// [`EbpfError::Pin`]; the link is then dropped, which detaches it.
pub fn pin_link(link: FdLink, path: &Path) -> Result<PinnedLink, EbpfError> {
    link.pin(path).map_err(|source| EbpfError::Pin { path: path.to_owned(), source })
}

/// The link pinned at `path`, or `None` when nothing is pinned there. Dropping the returned
/// value leaves it attached; `unpin()` and dropping the resulting [`FdLink`] detaches it.
///
/// # Errors
///
/// [`EbpfError::Link`] when `path` exists but cannot be opened as a bpf object.
pub fn adopt_link(path: &Path) -> Result<Option<PinnedLink>, EbpfError> {
    match PinnedLink::from_pin(path) {
        Ok(link) => Ok(Some(link)),
        Err(LinkError::SyscallError(e)) if e.io_error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(EbpfError::Link { op: "opening", path: path.to_owned(), source }),
    }
}

/// Detaches the link pinned at `path` and removes the pin; `false` when nothing was pinned.
/// (The link stays if another process holds a file descriptor on it, until that closes.)
///
/// # Errors
///
/// As [`adopt_link`]; [`EbpfError::Io`] when the pin cannot be removed.
pub fn detach_pinned(path: &Path) -> Result<bool, EbpfError> {
    let Some(link) = adopt_link(path)? else { return Ok(false) };
    let link =
        link.unpin().map_err(|source| EbpfError::Io { op: "removing the link pin", path: path.to_owned(), source })?;
    drop(link);
    Ok(true)
}

/// Removes flowgate's filter in `slot` from `interface`'s `direction` hook (see
/// [`Loaded::attach_tc`]); `false` when the interface or the filter was not there.
pub fn detach_tc(interface: &str, direction: Direction, slot: TcSlot) -> bool {
    match SchedClassifierLink::attached(
        interface,
        direction.attach_type(),
        slot.priority,
        TcHandle::from(slot.handle),
        None,
    ) {
        Ok(link) => link.detach().is_ok(),
        Err(_) => false,
    }
}

/// The ids of the programs on `interface`'s TCX hook, in chain order (bpftool 7.1 cannot show
/// TCX links). Resolved in the calling thread's network namespace.
///
/// # Errors
///
/// [`EbpfError::Program`] when the interface does not exist or the query fails.
pub fn tcx_program_ids(interface: &str, direction: Direction) -> Result<Vec<u32>, EbpfError> {
    let (_revision, programs) = SchedClassifier::query_tcx(interface, direction.attach_type()).map_err(|source| {
        EbpfError::Program { op: "TCX query", name: format!("<any> on {interface}"), source: Box::new(source) }
    })?;
    Ok(programs.iter().map(|p| p.id()).collect())
}

/// The kernel's id of a loaded program (what [`tcx_program_ids`] lists).
///
/// # Errors
///
/// [`EbpfError::Program`] when it is not loaded.
pub fn program_id(classifier: &SchedClassifier) -> Result<u32, EbpfError> {
    classifier.info().map(|info| info.id()).map_err(|source| EbpfError::Program {
        op: "reading the id",
        name: "<classifier>".to_owned(),
        source: Box::new(source),
    })
}
