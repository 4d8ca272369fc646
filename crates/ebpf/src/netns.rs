//! Throw-away network namespaces for tests: [`Netns`] makes one named `flowgate-test-<pid>-<n>`,
//! runs code with the current thread inside it, builds veth pairs in it, and deletes it on drop,
//! also when the test panics.
//!
//! Namespaces and links are made by running iproute2's `ip` rather than through rtnetlink: the
//! tests need a handful of operations, `ip netns add`/`del` is the same bind-mount protocol every
//! other tool (and a human debugging a failed test) uses, and it avoids an async runtime and a
//! netlink stack in the build on two cores. Entering a namespace is `setns(2)` on the calling
//! thread only, undone by the [`Entered`] guard; other threads stay where they are.
//!
//! A namespace named here is removed with `ip netns del` on drop; its interfaces go with it.
//! Processes a test starts inside (`ip netns exec`) must be ended by the test: they keep the
//! namespace alive. Namespaces left by processes that died without dropping theirs are deleted
//! when the first [`Netns`] of a process is made.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::marker::PhantomData;
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

/// Every namespace made here is named `flowgate-test-<pid>-<n>`.
pub const PREFIX: &str = "flowgate-test-";

/// Where `ip netns` keeps the bind mounts that name namespaces.
const RUN_NETNS: &str = "/run/netns";

/// Why a namespace operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// An `ip` command failed (not installed: `apt-get install iproute2`; not root).
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status, or why it did not run.
        status: String,
        /// What it printed on stderr.
        stderr: String,
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
    /// `ip` printed something this module could not read.
    #[error("cannot read the output of `{command}`: {output:?}")]
    Parse {
        /// The command line.
        command: String,
        /// What it printed.
        output: String,
    },
}

/// Runs `ip` with `args`; its stdout on success.
fn ip<S: AsRef<OsStr>>(args: &[S]) -> Result<String, NetnsError> {
    let command = || {
        let mut line = String::from("ip");
        for arg in args {
            line.push(' ');
            line.push_str(&arg.as_ref().to_string_lossy());
        }
        line
    };
    let output = Command::new("ip").args(args).output().map_err(|e| NetnsError::Command {
        command: command(),
        status: format!("not run: {e}"),
        stderr: "is iproute2 installed?".to_owned(),
    })?;
    if !output.status.success() {
        return Err(NetnsError::Command {
            command: command(),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A network namespace of our own, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    path: PathBuf,
}

impl Netns {
    /// Makes a new, empty namespace (only `lo`, down) named `flowgate-test-<pid>-<n>`.
    ///
    /// # Errors
    ///
    /// [`NetnsError::Command`] when `ip netns add` fails (needs root and iproute2).
    pub fn new() -> Result<Self, NetnsError> {
        static SWEEP: Once = Once::new();
        static NEXT: AtomicU64 = AtomicU64::new(0);
        SWEEP.call_once(sweep_stale);
        let pid = std::process::id();
        loop {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let name = format!("{PREFIX}{pid}-{n}");
            let path = Path::new(RUN_NETNS).join(&name);
            if path.exists() {
                continue; // left over from an earlier process with our pid
            }
            ip(&["netns", "add", &name])?;
            return Ok(Netns { name, path });
        }
    }

    /// The name (`ip netns exec NAME`, `ip -n NAME`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind mount that holds it open (`/run/netns/NAME`), for `setns`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves the calling thread into this namespace until the returned guard is dropped. Sockets
    /// opened, interface names resolved and eBPF links attached meanwhile are this namespace's.
    ///
    /// # Errors
    ///
    /// [`NetnsError::Io`] when either namespace cannot be opened or `setns` fails.
    pub fn enter(&self) -> Result<Entered<'_>, NetnsError> {
        let current = Path::new("/proc/thread-self/ns/net");
        let previous =
            File::open(current).map_err(|source| NetnsError::Io { op: "opening", path: current.to_owned(), source })?;
        let target = File::open(&self.path).map_err(|source| NetnsError::Io {
            op: "opening",
            path: self.path.clone(),
            source,
        })?;
        setns(&target).map_err(|source| NetnsError::Io { op: "setns into", path: self.path.clone(), source })?;
        Ok(Entered { previous, _netns: PhantomData, _not_send: PhantomData })
    }

    /// Runs `f` with the calling thread inside this namespace, and returns there even when `f`
    /// panics (the panic then continues).
    ///
    /// # Errors
    ///
    /// As [`Netns::enter`].
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> Result<T, NetnsError> {
        let _entered = self.enter()?;
        Ok(f())
    }

    /// Runs `ip -n NAME args...`; its stdout.
    ///
    /// # Errors
    ///
    /// [`NetnsError::Command`] when it fails.
    pub fn ip(&self, args: &[&str]) -> Result<String, NetnsError> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// A command that runs `program` inside this namespace (`ip netns exec NAME program`). The
    /// caller must end what it spawns before the namespace is dropped.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    /// Makes a veth pair with both ends, `a` and `b`, in this namespace, and sets both up.
    ///
    /// # Errors
    ///
    /// [`NetnsError::Command`] (e.g. a name longer than 15 bytes, or taken).
    pub fn add_veth_pair(&self, a: &str, b: &str) -> Result<(), NetnsError> {
        self.ip(&["link", "add", a, "type", "veth", "peer", "name", b])?;
        self.ip(&["link", "set", a, "up"])?;
        self.ip(&["link", "set", b, "up"])?;
        Ok(())
    }

    /// Makes a veth pair with end `local` here and end `remote` in `other`, and sets both up.
    ///
    /// # Errors
    ///
    /// [`NetnsError::Command`].
    pub fn add_veth_to(&self, local: &str, other: &Netns, remote: &str) -> Result<(), NetnsError> {
        self.ip(&["link", "add", local, "type", "veth", "peer", "name", remote, "netns", other.name()])?;
        self.ip(&["link", "set", local, "up"])?;
        other.ip(&["link", "set", remote, "up"])?;
        Ok(())
    }

    /// The index of interface `name` in this namespace.
    ///
    /// # Errors
    ///
    /// [`NetnsError::Command`] when there is no such interface; [`NetnsError::Parse`].
    pub fn ifindex(&self, name: &str) -> Result<u32, NetnsError> {
        let out = self.ip(&["-o", "link", "show", "dev", name])?;
        // "7: veth0@if6: <BROADCAST,...> ..."
        out.split(':').next().and_then(|n| n.trim().parse().ok()).ok_or_else(|| NetnsError::Parse {
            command: format!("ip -n {} -o link show dev {name}", self.name),
            output: out.clone(),
        })
    }

    /// The MAC address of interface `name` in this namespace.
    ///
    /// # Errors
    ///
    /// As [`Netns::ifindex`].
    pub fn mac(&self, name: &str) -> Result<[u8; 6], NetnsError> {
        let out = self.ip(&["-o", "link", "show", "dev", name])?;
        let parse = || -> Option<[u8; 6]> {
            let mut words = out.split_whitespace();
            words.find(|w| *w == "link/ether")?;
            let mut mac = [0u8; 6];
            let mut parts = words.next()?.split(':');
            for byte in &mut mac {
                *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
            }
            Some(mac)
        };
        parse().ok_or_else(|| NetnsError::Parse {
            command: format!("ip -n {} -o link show dev {name}", self.name),
            output: out.clone(),
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("flowgate-ebpf: deleting network namespace {}: {e}", self.name);
        }
    }
}

/// The calling thread is inside a [`Netns`] while this lives; dropping it returns the thread to
/// the namespace it was in. It cannot be sent to another thread.
#[derive(Debug)]
pub struct Entered<'a> {
    previous: File,
    _netns: PhantomData<&'a Netns>,
    _not_send: PhantomData<*const ()>,
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        if let Err(e) = setns(&self.previous) {
            // A thread left in a test namespace would run later code against the wrong network;
            // nothing sound can continue.
            eprintln!("flowgate-ebpf: cannot return this thread to its network namespace: {e}");
            std::process::abort();
        }
    }
}

/// Moves the calling thread into the network namespace `ns` refers to.
fn setns(ns: &File) -> io::Result<()> {
    #[allow(unsafe_code)]
    // SAFETY: the fd is valid for the call (borrowed from a live File); setns only changes the
    // calling thread's namespace and touches no memory of ours.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The names of this module's namespaces that currently exist (all processes').
///
/// # Errors
///
/// [`NetnsError::Io`] when `/run/netns` exists but cannot be read.
pub fn existing() -> Result<Vec<String>, NetnsError> {
    let entries = match std::fs::read_dir(RUN_NETNS) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(NetnsError::Io { op: "reading", path: PathBuf::from(RUN_NETNS), source }),
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name.starts_with(PREFIX))
        .collect();
    names.sort();
    Ok(names)
}

/// Deletes this module's namespaces whose process no longer exists.
fn sweep_stale() {
    for name in existing().unwrap_or_default() {
        let pid = name[PREFIX.len()..].split('-').next().and_then(|pid| pid.parse::<u32>().ok());
        if pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = ip(&["netns", "del", &name]);
        }
    }
}
