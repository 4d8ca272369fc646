//! Pinned state from another version of flowgate, checked before it is adopted.
//!
//! The agent pins its maps under `<bpffs>/maps` so that a restart or an upgrade keeps established
//! flows. A map pinned by another version may have another layout, or the same layout with
//! another meaning; adopting it as it is would make the programs misread it. So before loading,
//! [`check`] compares every pinned map with what the objects about to be loaded declare:
//!
//! - The **state version** is a directory `<bpffs>/abi-<N>` (bpffs holds directories, not files).
//!   None with maps present is version 0, the state of agents from before versions were written.
//! - A state **newer** than [`ABI_VERSION`] is refused with [`PinnedError::Newer`], and nothing is
//!   touched: an older agent never destroys what a newer one left.
//! - A map whose **layout** differs (type, key size, value size, entries, flags) is unpinned, and
//!   the loader creates it anew; so is a map whose meaning changed since the state's version
//!   ([`CHANGED`]). Every other map is adopted with its entries, so established flows survive
//!   wherever the flow table's layout did.
//! - Maps no object declares any more are unpinned.
//!
//! Programs still attached that use a replaced map keep it alive until the agent attaches the new
//! programs in their place (atomically, see [`crate::loader`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use aya_obj::maps::PinningType;

/// The version of the pinned state this build reads and writes. Bump it when a map keeps its
/// layout but changes its meaning, and list the map in [`CHANGED`].
pub const ABI_VERSION: u32 = 1;

/// Maps whose meaning changed without their layout changing, by the version that changed them:
/// adopting state older than that version replaces them.
pub const CHANGED: &[(u32, &[&str])] = &[];

/// Why pinned state cannot be adopted.
#[derive(Debug, thiserror::Error)]
pub enum PinnedError {
    /// The state was written by a newer flowgate.
    #[error(
        "{} holds pinned state of version {found}, newer than this agent's {supported}: run the newer \
         flowgated (or remove {} to start from scratch, which drops established connections)",
        dir.display(),
        dir.display()
    )]
    Newer {
        /// The bpffs directory.
        dir: PathBuf,
        /// The version found.
        found: u32,
        /// The version this agent supports.
        supported: u32,
    },
    /// An object file could not be read.
    #[error("cannot read the map declarations of an eBPF object: {0}")]
    Object(String),
    /// A pinned map or the version marker could not be read, removed or written.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// What [`check`] found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Checked {
    /// The version of the state found (`None`: no pinned maps at all).
    pub found: Option<u32>,
    /// Maps adopted as they are.
    pub adopted: Vec<String>,
    /// Maps unpinned, and why; the loader creates them empty.
    pub replaced: Vec<(String, String)>,
}

/// A map's layout as the kernel holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Layout {
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    flags: u32,
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "key {} B, value {} B, {} entries, flags {:#x}",
            self.key_size, self.value_size, self.max_entries, self.flags
        )
    }
}

/// The layouts of the maps `objects` pin by name, with `max_entries` overrides applied.
fn declared(objects: &[&[u8]], max_entries: &[(&str, u32)]) -> Result<BTreeMap<String, Layout>, PinnedError> {
    let mut out = BTreeMap::new();
    for object in objects {
        let obj = aya_obj::Object::parse(object).map_err(|e| PinnedError::Object(e.to_string()))?;
        for (name, m) in &obj.maps {
            if !matches!(m.pinning(), PinningType::ByName) {
                continue;
            }
            let entries = max_entries.iter().find(|(n, _)| n == name).map(|(_, v)| *v).unwrap_or(m.max_entries());
            out.insert(
                name.clone(),
                Layout {
                    key_size: m.key_size(),
                    value_size: m.value_size(),
                    max_entries: entries,
                    flags: m.map_flags(),
                },
            );
        }
    }
    Ok(out)
}

fn version_of(bpffs: &Path) -> Result<Option<u32>, PinnedError> {
    let io = |source| PinnedError::Io { op: "read", path: bpffs.to_owned(), source };
    let mut found = None;
    for entry in std::fs::read_dir(bpffs).map_err(io)? {
        let entry = entry.map_err(io)?;
        if let Some(v) = entry.file_name().to_str().and_then(|n| n.strip_prefix("abi-")).and_then(|v| v.parse().ok()) {
            found = Some(found.map_or(v, |f: u32| f.max(v)));
        }
    }
    Ok(found)
}

/// Checks the maps pinned under `bpffs/maps` against what `objects` declare (see the module's
/// documentation), unpinning those that cannot be adopted, and marks the state as this version's.
///
/// # Errors
///
/// [`PinnedError::Newer`] for state of a newer version (nothing is changed); the others when the
/// objects or the bpffs cannot be read or written.
pub fn check(bpffs: &Path, objects: &[&[u8]], max_entries: &[(&str, u32)]) -> Result<Checked, PinnedError> {
    let maps = bpffs.join("maps");
    let declared = declared(objects, max_entries)?;
    let mut pinned: Vec<(String, PathBuf)> = match std::fs::read_dir(&maps) {
        Ok(dir) => dir
            .filter_map(Result::ok)
            .filter_map(|e| Some((e.file_name().to_str()?.to_string(), e.path())))
            .filter(|(_, p)| p.is_file())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(source) => return Err(PinnedError::Io { op: "read", path: maps, source }),
    };
    pinned.sort();
    let marked = version_of(bpffs)?;
    let found = match (marked, pinned.is_empty()) {
        (Some(v), _) => Some(v),
        (None, false) => Some(0),
        (None, true) => None,
    };
    if let Some(v) = found.filter(|v| *v > ABI_VERSION) {
        return Err(PinnedError::Newer { dir: bpffs.to_owned(), found: v, supported: ABI_VERSION });
    }
    let mut out = Checked { found, ..Checked::default() };
    let changed_since =
        |name: &str| CHANGED.iter().any(|(v, names)| found.is_some_and(|f| f < *v) && names.contains(&name));
    for (name, path) in pinned {
        let why = match declared.get(&name) {
            None => Some("no longer used".to_string()),
            Some(want) => match aya::maps::MapInfo::from_pin(&path) {
                Err(e) => Some(format!("unreadable: {e}")),
                Ok(info) => {
                    let have = Layout {
                        key_size: info.key_size(),
                        value_size: info.value_size(),
                        max_entries: info.max_entries(),
                        flags: info.map_flags(),
                    };
                    if have != *want {
                        Some(format!("layout {have}, this version's {want}"))
                    } else if changed_since(&name) {
                        Some(format!("its meaning changed since version {}", found.unwrap_or(0)))
                    } else {
                        None
                    }
                }
            },
        };
        match why {
            None => out.adopted.push(name),
            Some(why) => {
                std::fs::remove_file(&path).map_err(|source| PinnedError::Io {
                    op: "unpin",
                    path: path.clone(),
                    source,
                })?;
                out.replaced.push((name, why));
            }
        }
    }
    // The state is this version's from now on.
    if marked != Some(ABI_VERSION) {
        let mark = bpffs.join(format!("abi-{ABI_VERSION}"));
        std::fs::create_dir_all(&mark).map_err(|source| PinnedError::Io { op: "mark", path: mark.clone(), source })?;
        if let Some(old) = marked {
            let old = bpffs.join(format!("abi-{old}"));
            std::fs::remove_dir(&old).map_err(|source| PinnedError::Io { op: "unmark", path: old, source })?;
        }
    }
    Ok(out)
}
