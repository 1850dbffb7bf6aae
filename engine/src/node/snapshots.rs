//! Where a node keeps its ranges' snapshots, and the replicated metadata a
//! snapshot carries besides the key-value pairs.
//!
//! [`SnapshotStore`] is the node core's IO seam for snapshots, as the WAL's
//! file layer is for the log: [`DirSnapshotStore`] keeps one directory of
//! snapshot files per range (written atomically by
//! [`crate::range::write_snapshot`]), [`MemSnapshotStore`] keeps the same
//! byte streams in memory for the seeded simulator. A saved snapshot is
//! durable when `save` returns: the core relies on that to compact the log
//! (or to record an installed snapshot in the WAL) only afterwards.
//!
//! A store also keeps *tombstones*: the term at which this node's replica of
//! a group was removed. A message of an older term for that group is a
//! leftover of the configuration that still had the replica, and must not
//! recreate it.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use flotilla_raftgroup::ConfState;
use flotilla_transport::GroupId;
use parking_lot::Mutex;
use rkyv::{Archive, Deserialize, Serialize};

use crate::range::{
    self, LoadedSnapshot, RangeState, SnapshotAssembler, SnapshotChunks, SnapshotError,
};

/// The replicated state of a range that is not key-value pairs: it travels
/// in the snapshot's metadata field, so a replica restored from a snapshot
/// behaves exactly like one that applied the whole log.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct ReplicaMeta {
    /// The group's configuration at the snapshot's index.
    pub conf_state: ConfState,
    /// The request ids of the last proposals applied, oldest first (the
    /// duplicate-proposal window; see `NodeCore`).
    pub recent_requests: Vec<u64>,
    /// The range descriptor's generation at the snapshot's index.
    pub generation: u64,
}

impl ReplicaMeta {
    /// The bytes stored in the snapshot's metadata field.
    pub fn encode(&self) -> Vec<u8> {
        match rkyv::to_bytes::<rkyv::rancor::Error>(self) {
            Ok(bytes) => bytes.into_vec(),
            // Serializing plain vectors into a growable buffer cannot fail.
            Err(error) => unreachable!("encoding ReplicaMeta failed: {error}"),
        }
    }

    /// Decodes and validates the metadata field of a snapshot.
    pub fn decode(bytes: &[u8]) -> Result<ReplicaMeta, String> {
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
        aligned.extend_from_slice(bytes);
        rkyv::from_bytes::<ReplicaMeta, rkyv::rancor::Error>(&aligned)
            .map_err(|error| format!("undecodable replica metadata: {error}"))
    }
}

/// A node's snapshots and tombstones. See the module docs.
pub trait SnapshotStore: Send + Sync + Debug {
    /// Stores `state` (at its applied index) with `meta`, durably, and drops
    /// the group's older snapshots. A tombstone of the group is cleared
    /// first: the replica was added back.
    fn save(&self, group: GroupId, state: &RangeState, meta: &[u8]) -> Result<(), SnapshotError>;
    /// The group's newest snapshot that verifies, if it has any.
    fn load_latest(&self, group: GroupId) -> Result<Option<LoadedSnapshot>, SnapshotError>;
    /// Groups with at least one snapshot.
    fn groups(&self) -> Result<Vec<GroupId>, SnapshotError>;
    /// Drops the group's snapshots and records, durably, that its replica
    /// was removed at `term`.
    fn remove(&self, group: GroupId, term: u64) -> Result<(), SnapshotError>;
    /// Every tombstone: group → term of removal.
    fn tombstones(&self) -> Result<BTreeMap<GroupId, u64>, SnapshotError>;
}

/// Snapshots in files: `ROOT/{group:020}/snap-….snap`, tombstones in
/// `ROOT/{group:020}.tombstone` (the removal term, as text).
#[derive(Debug)]
pub struct DirSnapshotStore {
    root: PathBuf,
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

const TOMBSTONE_SUFFIX: &str = ".tombstone";

fn parse_group(name: &str) -> Option<GroupId> {
    (name.len() == 20 && name.bytes().all(|b| b.is_ascii_digit()))
        .then(|| name.parse().ok())
        .flatten()
}

impl DirSnapshotStore {
    /// A store rooted at `root`, created if missing.
    pub fn open(root: impl Into<PathBuf>) -> Result<DirSnapshotStore, SnapshotError> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(io_error(&root))?;
        Ok(DirSnapshotStore { root })
    }

    fn group_dir(&self, group: GroupId) -> PathBuf {
        self.root.join(format!("{group:020}"))
    }

    fn tombstone_path(&self, group: GroupId) -> PathBuf {
        self.root.join(format!("{group:020}{TOMBSTONE_SUFFIX}"))
    }

    fn sync_root(&self) -> Result<(), SnapshotError> {
        std::fs::File::open(&self.root)
            .and_then(|d| d.sync_all())
            .map_err(io_error(&self.root))
    }
}

impl SnapshotStore for DirSnapshotStore {
    fn save(&self, group: GroupId, state: &RangeState, meta: &[u8]) -> Result<(), SnapshotError> {
        // The tombstone goes before the snapshot is written: a crash between
        // leaves neither (the replica then waits for a snapshot again), never
        // both, so a tombstone beside a snapshot always means an interrupted
        // removal.
        let tombstone = self.tombstone_path(group);
        if tombstone.exists() {
            std::fs::remove_file(&tombstone).map_err(io_error(&tombstone))?;
            self.sync_root()?;
        }
        let dir = self.group_dir(group);
        if !dir.exists() {
            std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
            // The new directory's entry must itself survive a crash.
            self.sync_root()?;
        }
        range::write_snapshot(&dir, state, meta)?;
        range::remove_older(&dir, state.applied_index())?;
        Ok(())
    }

    fn load_latest(&self, group: GroupId) -> Result<Option<LoadedSnapshot>, SnapshotError> {
        let dir = self.group_dir(group);
        if !dir.exists() {
            return Ok(None);
        }
        let Some(found) = range::latest(&dir)? else {
            return Ok(None);
        };
        for skipped in &found.skipped {
            tracing::error!(group, error = %skipped, "passed over a corrupt snapshot");
        }
        Ok(Some(found.snapshot))
    }

    fn groups(&self) -> Result<Vec<GroupId>, SnapshotError> {
        let mut groups = Vec::new();
        for entry in std::fs::read_dir(&self.root).map_err(io_error(&self.root))? {
            let entry = entry.map_err(io_error(&self.root))?;
            if let Some(group) = entry.file_name().to_str().and_then(parse_group) {
                groups.push(group);
            }
        }
        groups.sort_unstable();
        Ok(groups)
    }

    fn remove(&self, group: GroupId, term: u64) -> Result<(), SnapshotError> {
        // The tombstone first: a crash after it and before the deletion
        // leaves a removed group with stale files, which opening skips.
        let path = self.tombstone_path(group);
        let temp = self.root.join(format!("{group:020}{TOMBSTONE_SUFFIX}.tmp"));
        let mut file = std::fs::File::create(&temp).map_err(io_error(&temp))?;
        file.write_all(term.to_string().as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io_error(&temp))?;
        std::fs::rename(&temp, &path).map_err(io_error(&path))?;
        let dir = self.group_dir(group);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io_error(&dir))?;
        }
        self.sync_root()
    }

    fn tombstones(&self) -> Result<BTreeMap<GroupId, u64>, SnapshotError> {
        let mut tombstones = BTreeMap::new();
        for entry in std::fs::read_dir(&self.root).map_err(io_error(&self.root))? {
            let entry = entry.map_err(io_error(&self.root))?;
            let name = entry.file_name();
            let Some(group) = name
                .to_str()
                .and_then(|n| n.strip_suffix(TOMBSTONE_SUFFIX))
                .and_then(parse_group)
            else {
                continue;
            };
            let path = entry.path();
            let text = std::fs::read_to_string(&path).map_err(io_error(&path))?;
            let term = text.trim().parse().map_err(|e| SnapshotError::Corrupt {
                path: path.clone(),
                offset: 0,
                reason: format!("a tombstone holds a term, not {text:?}: {e}"),
            })?;
            tombstones.insert(group, term);
        }
        Ok(tombstones)
    }
}

/// Snapshots in memory, for the simulator: every snapshot is kept as the
/// chunk stream a transfer would send, and loading re-verifies it, so the
/// simulator exercises the same encoding as files and transfers. Saved
/// means durable: a simulated crash keeps the store.
#[derive(Debug, Default)]
pub struct MemSnapshotStore {
    inner: Mutex<MemStoreInner>,
}

#[derive(Debug, Default)]
struct MemStoreInner {
    snapshots: BTreeMap<GroupId, Vec<Vec<u8>>>,
    tombstones: BTreeMap<GroupId, u64>,
}

/// The chunk size the in-memory store cuts streams into.
const MEM_STORE_CHUNK_BYTES: usize = 64 * 1024;

impl MemSnapshotStore {
    /// An empty store.
    pub fn new() -> MemSnapshotStore {
        MemSnapshotStore::default()
    }
}

impl SnapshotStore for MemSnapshotStore {
    fn save(&self, group: GroupId, state: &RangeState, meta: &[u8]) -> Result<(), SnapshotError> {
        let chunks: Vec<Vec<u8>> =
            SnapshotChunks::new(state, meta, MEM_STORE_CHUNK_BYTES)?.collect();
        let mut inner = self.inner.lock();
        inner.tombstones.remove(&group);
        inner.snapshots.insert(group, chunks);
        Ok(())
    }

    fn load_latest(&self, group: GroupId) -> Result<Option<LoadedSnapshot>, SnapshotError> {
        let inner = self.inner.lock();
        let Some(chunks) = inner.snapshots.get(&group) else {
            return Ok(None);
        };
        let corrupt = |e: range::TransferError| SnapshotError::Corrupt {
            path: PathBuf::from(format!("memory:{group}")),
            offset: 0,
            reason: e.to_string(),
        };
        let mut assembler = SnapshotAssembler::new();
        for chunk in chunks {
            assembler.push(chunk).map_err(corrupt)?;
        }
        assembler.finish().map(Some).map_err(corrupt)
    }

    fn groups(&self) -> Result<Vec<GroupId>, SnapshotError> {
        Ok(self.inner.lock().snapshots.keys().copied().collect())
    }

    fn remove(&self, group: GroupId, term: u64) -> Result<(), SnapshotError> {
        let mut inner = self.inner.lock();
        inner.tombstones.insert(group, term);
        inner.snapshots.remove(&group);
        Ok(())
    }

    fn tombstones(&self) -> Result<BTreeMap<GroupId, u64>, SnapshotError> {
        Ok(self.inner.lock().tombstones.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::range::{Command, KeySpan, Proposal};

    fn state_with(pairs: u64) -> RangeState {
        let mut state = RangeState::new(KeySpan::full());
        for i in 0..pairs {
            let proposal = Proposal {
                request_id: i,
                command: Command::Put {
                    key: format!("k{i:04}").into_bytes(),
                    value: vec![i as u8; 10],
                },
            };
            state.apply(i + 1, 1, &proposal);
        }
        state
    }

    fn check_store(store: &dyn SnapshotStore) {
        assert!(store.load_latest(7).unwrap().is_none());
        let meta = ReplicaMeta {
            conf_state: ConfState::with_voters([1, 2, 3]),
            recent_requests: vec![4, 5],
            generation: 3,
        };
        store.save(7, &state_with(10), &meta.encode()).unwrap();
        store.save(7, &state_with(20), &meta.encode()).unwrap();
        let loaded = store.load_latest(7).unwrap().unwrap();
        assert_eq!(loaded.state, state_with(20));
        assert_eq!(ReplicaMeta::decode(&loaded.conf_state).unwrap(), meta);
        assert_eq!(store.groups().unwrap(), vec![7]);
        store.remove(7, 9).unwrap();
        assert!(store.load_latest(7).unwrap().is_none());
        assert!(store.groups().unwrap().is_empty());
        assert_eq!(store.tombstones().unwrap(), BTreeMap::from([(7, 9)]));
        // Added back: its first snapshot clears the tombstone.
        store.save(7, &state_with(2), &meta.encode()).unwrap();
        assert!(store.tombstones().unwrap().is_empty());
        assert_eq!(store.load_latest(7).unwrap().unwrap().state, state_with(2));
    }

    #[test]
    fn directory_store_saves_loads_and_tombstones() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirSnapshotStore::open(dir.path().join("snap")).unwrap();
        check_store(&store);
        // Only the newest snapshot file is kept.
        store.save(8, &state_with(3), &[]).unwrap();
        store.save(8, &state_with(5), &[]).unwrap();
        let files = std::fs::read_dir(dir.path().join("snap").join(format!("{:020}", 8)))
            .unwrap()
            .count();
        assert_eq!(files, 1);
    }

    #[test]
    fn memory_store_saves_loads_and_tombstones() {
        check_store(&MemSnapshotStore::new());
    }

    #[test]
    fn a_damaged_tombstone_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirSnapshotStore::open(dir.path()).unwrap();
        std::fs::write(dir.path().join(format!("{:020}.tombstone", 4)), "x").unwrap();
        let error = store.tombstones().unwrap_err().to_string();
        assert!(error.contains(".tombstone"), "{error}");
    }

    #[test]
    fn undecodable_meta_is_an_error() {
        assert!(ReplicaMeta::decode(&[1, 2, 3]).is_err());
    }
}
