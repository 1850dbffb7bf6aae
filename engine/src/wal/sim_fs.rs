//! A simulated, in-memory file layer for deterministic crash testing.
//!
//! [`SimFs`] follows the durability contract of [`WalFs`] literally and no
//! further: file bytes survive a [`SimFs::crash`] only if they were synced with
//! `sync_data`, and directory changes only if `sync_dir` ran after them. On a
//! crash it can also tear the most recent unsynced write, keeping a random
//! prefix of it on "disk", the way a power cut leaves a half-written sector
//! run. Faults (an IO error at the n-th operation, a power cut at the n-th
//! operation, a full disk) are injected by the test. Everything random comes
//! from one seed, so a failing run replays exactly.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;

use super::file::{ReadView, SegmentFile, WalFs};

/// A small deterministic generator (SplitMix64). Used instead of an external
/// crate so that a seed replays identically across dependency upgrades.
#[derive(Clone, Debug)]
pub struct SimRng {
    state: u64,
}

impl SimRng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            state: seed ^ 0x6a09_e667_f3bc_c908,
        }
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "empty range");
        self.next_u64() % n
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

type FileId = u64;

#[derive(Debug)]
struct SimFile {
    /// What a reader sees (the page cache).
    data: Vec<u8>,
    /// What survives a crash.
    durable: Vec<u8>,
}

#[derive(Debug)]
struct UnsyncedWrite {
    file: FileId,
    offset: usize,
    bytes: Vec<u8>,
}

#[derive(Debug)]
struct SimState {
    rng: SimRng,
    files: HashMap<FileId, SimFile>,
    next_file: FileId,
    dir: BTreeMap<String, FileId>,
    dir_durable: BTreeMap<String, FileId>,
    /// Writes not yet covered by a sync, oldest first.
    unsynced: Vec<UnsyncedWrite>,
    /// Bumped by every crash; handles from an older epoch refuse to work.
    epoch: u64,
    mutating_ops: u64,
    fail_at_op: Option<u64>,
    power_cut_at_op: Option<u64>,
    powered_off: bool,
    tear_percent: u64,
    capacity_bytes: Option<u64>,
}

/// Statistics of a simulated file system.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimFsStats {
    /// Mutating operations so far (create, write, sync, rename, remove).
    pub mutating_ops: u64,
    /// Crashes simulated.
    pub crashes: u64,
    /// Bytes in files currently in the directory.
    pub used_bytes: u64,
}

/// A test's hook on segment header writes; see
/// [`SimFs::set_header_write_hook`].
pub type HeaderWriteHook = Arc<dyn Fn() + Send + Sync>;

/// A test's hook on file creation; see [`SimFs::set_create_hook`].
pub type CreateHook = Arc<dyn Fn(&str) + Send + Sync>;

/// A test's hook on file syncs; see [`SimFs::set_sync_hook`].
pub type SyncHook = Arc<dyn Fn() + Send + Sync>;

#[derive(Clone)]
struct HookSlot<H>(Arc<Mutex<Option<H>>>);

impl<H> Default for HookSlot<H> {
    fn default() -> Self {
        Self(Arc::default())
    }
}

impl<H> std::fmt::Debug for HookSlot<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.lock().is_some() {
            "HookSlot(set)"
        } else {
            "HookSlot(empty)"
        })
    }
}

/// The simulated file layer. Cloning shares the same simulated disk.
#[derive(Clone, Debug)]
pub struct SimFs {
    state: Arc<Mutex<SimState>>,
    header_hook: HookSlot<HeaderWriteHook>,
    create_hook: HookSlot<CreateHook>,
    sync_hook: HookSlot<SyncHook>,
}

impl SimFs {
    /// An empty simulated disk whose random choices derive from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            state: Arc::new(Mutex::new(SimState {
                rng: SimRng::new(seed),
                files: HashMap::new(),
                next_file: 1,
                dir: BTreeMap::new(),
                dir_durable: BTreeMap::new(),
                unsynced: Vec::new(),
                epoch: 0,
                mutating_ops: 0,
                fail_at_op: None,
                power_cut_at_op: None,
                powered_off: false,
                tear_percent: 0,
                capacity_bytes: None,
            })),
            header_hook: HookSlot::default(),
            create_hook: HookSlot::default(),
            sync_hook: HookSlot::default(),
        }
    }

    /// Runs `hook` before every write of a segment header (a write at
    /// offset 0 of exactly [`crate::wal::format::SEGMENT_HEADER_BYTES`]),
    /// outside the disk's lock: at that moment a rotation owns its new
    /// segment's file and has not renamed it into place, so a test can hold
    /// it there while other threads run. `None` removes the hook.
    pub fn set_header_write_hook(&self, hook: Option<HeaderWriteHook>) {
        *self.header_hook.0.lock() = hook;
    }

    /// Runs `hook` with the file's name before every file creation, outside
    /// the disk's lock, so a test can hold a creation while other threads
    /// run. `None` removes the hook.
    pub fn set_create_hook(&self, hook: Option<CreateHook>) {
        *self.create_hook.0.lock() = hook;
    }

    /// Runs `hook` before every file sync, outside the disk's lock: a WAL
    /// round has then written its record and applied it to the index but not
    /// made it durable, so a test can hold it there while other threads run
    /// (or schedule a fault for the sync). `None` removes the hook.
    pub fn set_sync_hook(&self, hook: Option<SyncHook>) {
        *self.sync_hook.0.lock() = hook;
    }

    /// With probability `percent`/100 a crash tears the last unsynced write.
    pub fn set_tear_percent(&self, percent: u64) {
        self.state.lock().tear_percent = percent.min(100);
    }

    /// Limits the total size of files in the directory.
    pub fn set_capacity_bytes(&self, capacity: Option<u64>) {
        self.state.lock().capacity_bytes = capacity;
    }

    /// The `n`-th mutating operation from now (1 = the next) fails with EIO.
    pub fn fail_op_in(&self, n: u64) {
        let mut s = self.state.lock();
        s.fail_at_op = Some(s.mutating_ops + n.max(1));
    }

    /// The power goes off instead of performing the `n`-th mutating operation
    /// from now; every later operation fails until [`SimFs::crash`].
    pub fn power_cut_in(&self, n: u64) {
        let mut s = self.state.lock();
        s.power_cut_at_op = Some(s.mutating_ops + n.max(1));
    }

    /// Cancels scheduled IO errors and power cuts that have not fired.
    pub fn clear_faults(&self) {
        let mut s = self.state.lock();
        s.fail_at_op = None;
        s.power_cut_at_op = None;
    }

    /// True once a scheduled power cut happened (and no crash reset it).
    pub fn is_powered_off(&self) -> bool {
        self.state.lock().powered_off
    }

    /// Simulates a crash and restart: every unsynced byte and directory change
    /// is lost, except that (seeded) the last unsynced write may survive in
    /// part or whole. Handles opened before the crash stop working.
    pub fn crash(&self) {
        let mut s = self.state.lock();
        let s = &mut *s;
        s.epoch += 1;
        s.powered_off = false;
        s.power_cut_at_op = None;
        s.fail_at_op = None;
        s.dir = s.dir_durable.clone();
        let torn = if s.rng.chance(s.tear_percent) {
            s.unsynced.pop()
        } else {
            None
        };
        s.unsynced.clear();
        for file in s.files.values_mut() {
            file.data.clone_from(&file.durable);
        }
        if let Some(w) = torn {
            // Sometimes the whole write made it to disk before the power
            // went, though its sync never returned.
            let keep = if s.rng.chance(25) {
                w.bytes.len()
            } else {
                s.rng.below(w.bytes.len() as u64 + 1) as usize
            };
            if let Some(file) = s.files.get_mut(&w.file) {
                file.durable[w.offset..w.offset + keep].copy_from_slice(&w.bytes[..keep]);
                file.data.clone_from(&file.durable);
            }
        }
        let live: std::collections::HashSet<FileId> = s.dir.values().copied().collect();
        s.files.retain(|id, _| live.contains(id));
    }

    /// Counters.
    pub fn stats(&self) -> SimFsStats {
        let s = self.state.lock();
        SimFsStats {
            mutating_ops: s.mutating_ops,
            crashes: s.epoch,
            used_bytes: s.used_bytes(),
        }
    }

    /// Flips the bits of `mask` in byte `offset` of `name`, durably (bit rot).
    pub fn corrupt_byte(&self, name: &str, offset: usize, mask: u8) -> io::Result<()> {
        let mut s = self.state.lock();
        let id = *s.dir.get(name).ok_or_else(|| not_found(name))?;
        let file = s.files.get_mut(&id).ok_or_else(|| not_found(name))?;
        if offset >= file.data.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "offset past end",
            ));
        }
        file.data[offset] ^= mask;
        file.durable[offset] ^= mask;
        Ok(())
    }
}

fn not_found(name: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{name}: no such file"))
}

fn eio(what: &str) -> io::Error {
    io::Error::other(format!("simulated IO error during {what}"))
}

impl SimState {
    fn used_bytes(&self) -> u64 {
        self.dir
            .values()
            .filter_map(|id| self.files.get(id))
            .map(|f| f.data.len() as u64)
            .sum()
    }

    /// Counts a mutating operation and applies scheduled faults. `Err` means
    /// the operation must not happen.
    fn begin_op(&mut self, what: &str) -> io::Result<()> {
        if self.powered_off {
            return Err(io::Error::other("simulated power loss"));
        }
        self.mutating_ops += 1;
        if self.power_cut_at_op == Some(self.mutating_ops) {
            self.powered_off = true;
            return Err(io::Error::other("simulated power loss"));
        }
        if self.fail_at_op == Some(self.mutating_ops) {
            self.fail_at_op = None;
            return Err(eio(what));
        }
        Ok(())
    }
}

impl WalFs for SimFs {
    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.state.lock().dir.keys().cloned().collect())
    }

    fn create(&self, name: &str, len: u64) -> io::Result<Arc<dyn SegmentFile>> {
        let hook = self.create_hook.0.lock().clone();
        if let Some(hook) = hook {
            hook(name);
        }
        let mut s = self.state.lock();
        s.begin_op("create")?;
        if s.dir.contains_key(name) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                name.to_string(),
            ));
        }
        if let Some(cap) = s.capacity_bytes {
            if s.used_bytes() + len > cap {
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    "simulated full disk",
                ));
            }
        }
        let id = s.next_file;
        s.next_file += 1;
        let zeros = vec![0u8; len as usize];
        s.files.insert(
            id,
            SimFile {
                data: zeros.clone(),
                durable: zeros,
            },
        );
        s.dir.insert(name.to_string(), id);
        Ok(Arc::new(SimSegment {
            fs: self.clone(),
            id,
            epoch: s.epoch,
            len,
        }))
    }

    fn open(&self, name: &str) -> io::Result<Arc<dyn SegmentFile>> {
        let s = self.state.lock();
        let id = *s.dir.get(name).ok_or_else(|| not_found(name))?;
        let len = s.files[&id].data.len() as u64;
        Ok(Arc::new(SimSegment {
            fs: self.clone(),
            id,
            epoch: s.epoch,
            len,
        }))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut s = self.state.lock();
        s.begin_op("rename")?;
        let id = s.dir.remove(from).ok_or_else(|| not_found(from))?;
        s.dir.insert(to.to_string(), id);
        Ok(())
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        let mut s = self.state.lock();
        s.begin_op("remove")?;
        s.dir.remove(name).ok_or_else(|| not_found(name))?;
        Ok(())
    }

    fn sync_dir(&self) -> io::Result<()> {
        let mut s = self.state.lock();
        s.begin_op("sync_dir")?;
        s.dir_durable = s.dir.clone();
        Ok(())
    }

    fn available_bytes(&self) -> io::Result<u64> {
        let s = self.state.lock();
        Ok(match s.capacity_bytes {
            Some(cap) => cap.saturating_sub(s.used_bytes()),
            None => u64::MAX / 2,
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        PathBuf::from("sim").join(name)
    }
}

/// A handle to one simulated file.
#[derive(Debug)]
struct SimSegment {
    fs: SimFs,
    id: FileId,
    epoch: u64,
    len: u64,
}

impl SimSegment {
    fn check_epoch(&self, s: &SimState) -> io::Result<()> {
        if s.epoch != self.epoch {
            return Err(io::Error::other("handle from before a simulated crash"));
        }
        Ok(())
    }
}

impl SegmentFile for SimSegment {
    fn size_bytes(&self) -> u64 {
        self.len
    }

    fn write_at(&self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        if offset == 0 && bytes.len() == crate::wal::format::SEGMENT_HEADER_BYTES {
            let hook = self.fs.header_hook.0.lock().clone();
            if let Some(hook) = hook {
                hook();
            }
        }
        let mut s = self.fs.state.lock();
        self.check_epoch(&s)?;
        s.begin_op("write")?;
        let end = offset
            .checked_add(bytes.len() as u64)
            .filter(|&e| e <= self.len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "write past end"))?;
        let file = s
            .files
            .get_mut(&self.id)
            .ok_or_else(|| not_found("segment"))?;
        file.data[offset as usize..end as usize].copy_from_slice(bytes);
        s.unsynced.push(UnsyncedWrite {
            file: self.id,
            offset: offset as usize,
            bytes: bytes.to_vec(),
        });
        Ok(())
    }

    fn read_at(&self, offset: u64, len: usize) -> io::Result<ReadView> {
        let s = self.fs.state.lock();
        self.check_epoch(&s)?;
        let file = s.files.get(&self.id).ok_or_else(|| not_found("segment"))?;
        let end = offset
            .checked_add(len as u64)
            .filter(|&e| e <= self.len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "read past end"))?;
        Ok(ReadView::owned(
            file.data[offset as usize..end as usize].to_vec(),
        ))
    }

    fn sync_data(&self) -> io::Result<()> {
        let hook = self.fs.sync_hook.0.lock().clone();
        if let Some(hook) = hook {
            hook();
        }
        let mut s = self.fs.state.lock();
        self.check_epoch(&s)?;
        s.begin_op("sync")?;
        let s = &mut *s;
        let file = s
            .files
            .get_mut(&self.id)
            .ok_or_else(|| not_found("segment"))?;
        for w in s.unsynced.iter().filter(|w| w.file == self.id) {
            let range = w.offset..w.offset + w.bytes.len();
            file.durable[range.clone()].copy_from_slice(&file.data[range]);
        }
        s.unsynced.retain(|w| w.file != self.id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_keeps_synced_bytes_and_drops_the_rest() {
        let fs = SimFs::new(1);
        let f = fs.create("a", 64).unwrap();
        fs.sync_dir().unwrap();
        f.write_at(0, b"durable").unwrap();
        f.sync_data().unwrap();
        f.write_at(8, b"lost").unwrap();
        assert_eq!(&*f.read_at(8, 4).unwrap(), b"lost");
        fs.crash();
        assert!(f.read_at(0, 1).is_err(), "old handles die with the crash");
        let f = fs.open("a").unwrap();
        assert_eq!(&*f.read_at(0, 7).unwrap(), b"durable");
        assert_eq!(&*f.read_at(8, 4).unwrap(), &[0, 0, 0, 0]);
    }

    #[test]
    fn directory_changes_need_a_directory_sync() {
        let fs = SimFs::new(2);
        fs.create("a", 16).unwrap();
        fs.create("b", 16).unwrap();
        fs.sync_dir().unwrap();
        fs.rename("a", "c").unwrap();
        fs.remove("b").unwrap();
        fs.crash();
        assert_eq!(fs.list().unwrap(), vec!["a".to_string(), "b".to_string()]);
    }

    #[test]
    fn tearing_keeps_a_prefix_of_the_last_unsynced_write() {
        let mut saw_partial = false;
        for seed in 0..40 {
            let fs = SimFs::new(seed);
            fs.set_tear_percent(100);
            let f = fs.create("a", 64).unwrap();
            fs.sync_dir().unwrap();
            f.write_at(0, &[1; 32]).unwrap();
            fs.crash();
            let got = fs.open("a").unwrap().read_at(0, 32).unwrap().to_vec();
            let kept = got.iter().take_while(|&&b| b == 1).count();
            assert!(got[kept..].iter().all(|&b| b == 0), "not a prefix: {got:?}");
            saw_partial |= kept > 0 && kept < 32;
        }
        assert!(saw_partial);
    }

    #[test]
    fn injected_faults_fire_at_the_chosen_operation() {
        let fs = SimFs::new(3);
        let f = fs.create("a", 64).unwrap();
        fs.sync_dir().unwrap();
        fs.fail_op_in(2);
        f.write_at(0, b"x").unwrap();
        assert!(f.sync_data().is_err());
        f.sync_data().unwrap();
        fs.power_cut_in(1);
        assert!(f.write_at(1, b"y").is_err());
        assert!(fs.is_powered_off());
        assert!(f.sync_data().is_err());
        fs.set_capacity_bytes(Some(100));
        fs.crash();
        assert!(fs.create("b", 64).is_err(), "64 + 64 > 100 after the crash");
    }
}
