//! The unified flow table: one entry per direction of every connection the switch has seen, each
//! holding the header transposition that later packets of that direction get without walking any
//! layer.

use std::net::SocketAddr;

use rustc_hash::FxHashMap;

use crate::packet::FlowKey;
use crate::port::PortId;
use crate::rule::DropReason;

/// What to do with every later packet of one direction of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transposition {
    /// Rewrite the source and/or destination, then send out of `egress`.
    Forward {
        /// New source address and port, if rewritten.
        src: Option<SocketAddr>,
        /// New destination address and port, if rewritten.
        dst: Option<SocketAddr>,
        /// The port the packet leaves through.
        egress: PortId,
    },
    /// Discard.
    Drop(DropReason),
    /// Discard and answer with a reset or unreachable.
    Reject(DropReason),
}

/// One direction of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowEntry {
    /// The policy generation the transposition was computed under.
    pub generation: u64,
    /// The key of the connection's first packet, as it entered the switch.
    pub origin: FlowKey,
    /// The port that first packet entered on.
    pub origin_port: PortId,
    /// Whether this entry is the reply direction.
    pub reply: bool,
    /// What to do with the packets of this direction.
    pub transposition: Transposition,
    /// For a connection a policy change stopped: the transposition it had, so that it resumes as
    /// it was (its reply entry is under that transposition's reply key).
    pub stopped: Option<Transposition>,
}

/// The flow table, keyed by the 5-tuple as packets of each direction enter the switch.
#[derive(Clone, Debug, Default)]
pub struct FlowTable {
    entries: FxHashMap<FlowKey, FlowEntry>,
}

impl FlowTable {
    /// An empty table.
    pub fn new() -> FlowTable {
        FlowTable::default()
    }

    /// The entry for packets with this key.
    #[inline]
    pub fn get(&self, key: &FlowKey) -> Option<&FlowEntry> {
        self.entries.get(key)
    }

    /// Mutable access to an entry.
    pub fn get_mut(&mut self, key: &FlowKey) -> Option<&mut FlowEntry> {
        self.entries.get_mut(key)
    }

    /// Whether a key is in use.
    pub fn contains(&self, key: &FlowKey) -> bool {
        self.entries.contains_key(key)
    }

    /// Inserts or replaces an entry.
    pub fn insert(&mut self, key: FlowKey, entry: FlowEntry) {
        self.entries.insert(key, entry);
    }

    /// Removes an entry.
    pub fn remove(&mut self, key: &FlowKey) -> Option<FlowEntry> {
        self.entries.remove(key)
    }

    /// Number of entries (two per allowed connection).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
