//! bpf file systems: where maps and links are pinned so that they outlive the process.
//!
//! - [`ensure_bpffs`] is for the agent: make sure its pin directory (`/sys/fs/bpf/flowgate` by
//!   default) is on a bpffs, mounting one if needed.
//! - [`TempBpffs`] is for tests: a private bpffs at a fresh temp directory, unmounted and removed
//!   on drop (also when the test panics), so tests never touch `/sys/fs/bpf` or each other.
//!
//! Mounting needs `CAP_SYS_ADMIN`. Mounts are made in the calling thread's mount namespace.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

/// `statfs(2)`'s `f_type` of a bpf file system.
pub const BPF_FS_MAGIC: u32 = 0xcafe_4a11;

/// The conventional mount point, which cannot hold directories until a bpffs is mounted there.
const SYS_FS_BPF: &str = "/sys/fs/bpf";

/// Prefix of [`TempBpffs`] directories in the temp directory: `flowgate-bpffs-<pid>-<n>`.
const TEMP_PREFIX: &str = "flowgate-bpffs-";

/// Why a bpffs operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BpffsError {
    /// A file or system call failed (mounting needs root).
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

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> BpffsError + 'a {
    move |source| BpffsError::Io { op, path: path.to_owned(), source }
}

fn c_path(path: &Path) -> Result<CString, BpffsError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|e| BpffsError::Io {
        op: "using",
        path: path.to_owned(),
        source: io::Error::other(e),
    })
}

/// Whether `path` (which must exist) is on a bpffs.
///
/// # Errors
///
/// [`BpffsError::Io`] when `statfs` fails (e.g. the path does not exist).
pub fn is_bpffs(path: &Path) -> Result<bool, BpffsError> {
    let c = c_path(path)?;
    let mut stat = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    #[allow(unsafe_code)]
    // SAFETY: `c` is NUL-terminated and outlives the call; `stat` is writable memory of the
    // right type, which statfs fills on success.
    let rc = unsafe { libc::statfs(c.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(io_err("statfs", path)(io::Error::last_os_error()));
    }
    #[allow(unsafe_code)]
    // SAFETY: statfs succeeded, so it initialised the struct (and it was zeroed before).
    let stat = unsafe { stat.assume_init() };
    // f_type is a signed word; the magic fits in 32 bits.
    Ok(stat.f_type as u32 == BPF_FS_MAGIC)
}

/// What [`ensure_bpffs`] found or did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ensured {
    /// The path was on a bpffs already (mounted there or at an ancestor).
    AlreadyBpffs,
    /// A bpffs was mounted `at` the path, or at `/sys/fs/bpf` when the path is below it.
    Mounted {
        /// The new mount point.
        at: PathBuf,
    },
}

/// Makes sure `path` is a directory on a bpffs, mounting one if it is not: at `/sys/fs/bpf`
/// when the path lies below that conventional (and still empty) mount point, else at the path
/// itself. Missing directories are created. The mount is left in place: pins must outlive us.
///
/// # Errors
///
/// [`BpffsError::Io`] when a directory cannot be created or the mount fails (needs root).
pub fn ensure_bpffs(path: &Path) -> Result<Ensured, BpffsError> {
    let mut existing = path;
    while !existing.exists() {
        existing = existing.parent().unwrap_or(Path::new("/"));
    }
    if is_bpffs(existing)? {
        std::fs::create_dir_all(path).map_err(io_err("creating", path))?;
        return Ok(Ensured::AlreadyBpffs);
    }
    let at = if existing == Path::new(SYS_FS_BPF) {
        PathBuf::from(SYS_FS_BPF)
    } else {
        std::fs::create_dir_all(path).map_err(io_err("creating", path))?;
        path.to_owned()
    };
    mount_bpffs(&at)?;
    std::fs::create_dir_all(path).map_err(io_err("creating", path))?;
    Ok(Ensured::Mounted { at })
}

/// Mounts a new bpffs at the existing directory `at` (mode 0700).
pub(crate) fn mount_bpffs(at: &Path) -> Result<(), BpffsError> {
    let target = c_path(at)?;
    #[allow(unsafe_code)]
    // SAFETY: every pointer is to a NUL-terminated string that outlives the call.
    let rc =
        unsafe { libc::mount(c"bpffs".as_ptr(), target.as_ptr(), c"bpf".as_ptr(), 0, c"mode=0700".as_ptr().cast()) };
    if rc != 0 {
        return Err(io_err("mounting a bpffs at", at)(io::Error::last_os_error()));
    }
    Ok(())
}

fn unmount(at: &Path) -> Result<(), BpffsError> {
    let target = c_path(at)?;
    #[allow(unsafe_code)]
    // SAFETY: `target` is NUL-terminated and outlives the call.
    let rc = unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    if rc != 0 {
        return Err(io_err("unmounting", at)(io::Error::last_os_error()));
    }
    Ok(())
}

/// A private bpffs at a fresh directory `<temp>/flowgate-bpffs-<pid>-<n>`, for tests. Dropping
/// it unmounts the file system (every pin in it goes; maps and links still held by file
/// descriptors live on) and removes the directory. Leftovers of processes that died without
/// dropping theirs are swept when the first one of a process is made.
#[derive(Debug)]
pub struct TempBpffs {
    path: PathBuf,
}

impl TempBpffs {
    /// Mounts a new bpffs at a new temp directory.
    ///
    /// # Errors
    ///
    /// [`BpffsError::Io`] when the directory cannot be made or the mount fails (needs root).
    pub fn new() -> Result<Self, BpffsError> {
        static SWEEP: Once = Once::new();
        static NEXT: AtomicU64 = AtomicU64::new(0);
        SWEEP.call_once(sweep_stale);
        let pid = std::process::id();
        let path = loop {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir().join(format!("{TEMP_PREFIX}{pid}-{n}"));
            match std::fs::create_dir(&path) {
                Ok(()) => break path,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err("creating", &path)(e)),
            }
        };
        if let Err(e) = mount_bpffs(&path) {
            let _ = std::fs::remove_dir(&path);
            return Err(e);
        }
        Ok(TempBpffs { path })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempBpffs {
    fn drop(&mut self) {
        if let Err(e) = unmount(&self.path) {
            eprintln!(
                "flowgate-ebpf: {e}: {}",
                std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default()
            );
            return;
        }
        if let Err(e) = std::fs::remove_dir(&self.path) {
            eprintln!("flowgate-ebpf: removing {}: {e}", self.path.display());
        }
    }
}

/// Unmounts and removes [`TempBpffs`] directories of processes that no longer exist.
fn sweep_stale() {
    let temp = std::env::temp_dir();
    let dead = |name: &str| -> bool {
        name.strip_prefix(TEMP_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    };
    // Mount points first (field 5 of mountinfo), deepest stacking is irrelevant: one each.
    if let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") {
        for line in mountinfo.lines() {
            let Some(point) = line.split(' ').nth(4) else { continue };
            let point = Path::new(point);
            if point.parent() == Some(temp.as_path()) && point.file_name().and_then(|n| n.to_str()).is_some_and(dead) {
                let _ = unmount(point);
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(&temp) {
        for entry in entries.flatten() {
            if entry.file_name().to_str().is_some_and(dead) {
                let _ = std::fs::remove_dir(entry.path());
            }
        }
    }
}
