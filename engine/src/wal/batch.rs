//! The plain values a caller hands to the WAL: log entries, hard states and the
//! items of a write batch.
//!
//! The WAL owns these types instead of borrowing the Raft crate's so the log
//! format does not change when the consensus types do; conversion happens in
//! the storage adapter above the WAL.

/// Identifier of one Raft group. Every item in the log names its group.
pub type GroupId = u64;

/// One Raft log entry as the WAL stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    /// Raft log index, at least 1.
    pub index: u64,
    /// Term in which the entry was proposed.
    pub term: u64,
    /// Entry type as defined by the consensus layer (normal, conf change, ...).
    pub kind: u8,
    /// Opaque payload.
    pub data: Vec<u8>,
}

impl LogEntry {
    /// Bytes this entry counts for in `max_bytes` limits and the cache bound.
    pub fn size_bytes(&self) -> usize {
        self.data.len() + ENTRY_OVERHEAD_BYTES
    }
}

/// Fixed cost charged per entry on top of its payload (index, term, kind and
/// bookkeeping), so that many empty entries still count against a bound.
pub(crate) const ENTRY_OVERHEAD_BYTES: usize = 32;

/// The Raft state that must be durable before votes and acknowledgements are
/// sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    /// Current term.
    pub term: u64,
    /// Candidate voted for in `term`, 0 for none.
    pub vote: u64,
    /// Highest index known to be committed.
    pub commit: u64,
}

/// One change to one group's durable state. A record holds many items of many
/// groups; items are applied in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WalItem {
    /// Append `entries` (contiguous indexes). Any existing entries at or after
    /// the first index are replaced, as in Raft's log matching rule.
    Entries {
        /// Group the entries belong to.
        group: GroupId,
        /// Entries with consecutive indexes.
        entries: Vec<LogEntry>,
    },
    /// Replace the group's hard state.
    HardState {
        /// Group whose hard state changes.
        group: GroupId,
        /// The new hard state.
        state: HardState,
    },
    /// Drop every entry with index `>= from_index` (a follower's conflicting
    /// suffix).
    TruncateSuffix {
        /// Group to truncate.
        group: GroupId,
        /// First index to drop.
        from_index: u64,
    },
    /// Drop every entry with index `< to_index` (log compaction after the
    /// state machine has a snapshot covering them).
    CompactPrefix {
        /// Group to compact.
        group: GroupId,
        /// First index to keep; at most `last_index + 1`.
        to_index: u64,
    },
    /// The group installed a snapshot at `index`/`term`: all entries are
    /// dropped and the log continues at `index + 1`.
    SnapshotMarker {
        /// Group that installed the snapshot.
        group: GroupId,
        /// Last index covered by the snapshot.
        index: u64,
        /// Term of that index.
        term: u64,
    },
    /// The group left this node: its entries and hard state are forgotten.
    GroupRemoved {
        /// Group that is gone.
        group: GroupId,
    },
}

impl WalItem {
    /// The group this item changes.
    pub fn group(&self) -> GroupId {
        match self {
            WalItem::Entries { group, .. }
            | WalItem::HardState { group, .. }
            | WalItem::TruncateSuffix { group, .. }
            | WalItem::CompactPrefix { group, .. }
            | WalItem::SnapshotMarker { group, .. }
            | WalItem::GroupRemoved { group } => *group,
        }
    }
}

/// The unit of durability: everything one worker round wants persisted, for
/// any number of groups. Either all of it is recovered after a crash, or (if
/// `append` never returned `Ok`) possibly none of it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteBatch {
    items: Vec<WalItem>,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a raw item.
    pub fn push(&mut self, item: WalItem) -> &mut Self {
        self.items.push(item);
        self
    }

    /// Appends entries for `group`; an empty list adds nothing.
    pub fn add_entries(&mut self, group: GroupId, entries: Vec<LogEntry>) -> &mut Self {
        if !entries.is_empty() {
            self.items.push(WalItem::Entries { group, entries });
        }
        self
    }

    /// Records a new hard state for `group`.
    pub fn set_hard_state(&mut self, group: GroupId, state: HardState) -> &mut Self {
        self.push(WalItem::HardState { group, state })
    }

    /// Drops entries `>= from_index` of `group`.
    pub fn truncate_suffix(&mut self, group: GroupId, from_index: u64) -> &mut Self {
        self.push(WalItem::TruncateSuffix { group, from_index })
    }

    /// Drops entries `< to_index` of `group`.
    pub fn compact_prefix(&mut self, group: GroupId, to_index: u64) -> &mut Self {
        self.push(WalItem::CompactPrefix { group, to_index })
    }

    /// Records that `group` installed a snapshot at `index`/`term`.
    pub fn snapshot_marker(&mut self, group: GroupId, index: u64, term: u64) -> &mut Self {
        self.push(WalItem::SnapshotMarker { group, index, term })
    }

    /// Forgets `group`.
    pub fn remove_group(&mut self, group: GroupId) -> &mut Self {
        self.push(WalItem::GroupRemoved { group })
    }

    /// The items in application order.
    pub fn items(&self) -> &[WalItem] {
        &self.items
    }

    /// Consumes the batch, returning its items.
    pub fn into_items(self) -> Vec<WalItem> {
        self.items
    }

    /// True when the batch holds no item.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

impl From<Vec<WalItem>> for WriteBatch {
    fn from(items: Vec<WalItem>) -> Self {
        Self { items }
    }
}
