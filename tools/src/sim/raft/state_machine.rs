//! The replicated state machine each simulated node applies its committed
//! log to: a hash chain over the applied writes. Two state machines that
//! applied the same writes in the same order have the same `(writes, chain)`,
//! so comparing a node against the oracle is O(1), and a read reports exactly
//! which prefix of the writes it saw.
//!
//! Snapshot data format (little endian, 24 bytes): `applied: u64`,
//! `writes: u64`, `chain: u64`. The configuration travels in the snapshot's
//! metadata, not in the data.

use flotilla_raftgroup::{ConfState, Entry, EntryKind, Snapshot};

/// Bytes of the write id at the front of every write payload.
const WRITE_ID_BYTES: usize = 8;
/// Bytes of an encoded state machine.
const SNAPSHOT_DATA_BYTES: usize = 24;

/// FNV-1a over `bytes`, seeded with `seed`.
fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    let mut hash = seed ^ 0xcbf2_9ce4_8422_2325;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// A final avalanche so that chained values do not collide by structure.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A digest of an entry's kind and payload, for comparing entries without
/// keeping their bytes.
pub fn entry_digest(kind: EntryKind, data: &[u8]) -> u64 {
    mix(fnv1a(kind as u64, data))
}

/// Whether applying `entry` changes the state machine's writes: a non-empty
/// application payload. Empty entries are a new leader's no-op.
pub fn is_write(entry: &Entry) -> bool {
    entry.kind == EntryKind::Normal && !entry.data.is_empty()
}

/// The chain value after applying a write with this payload.
pub fn chain_step(chain: u64, data: &[u8]) -> u64 {
    mix(chain ^ fnv1a(0x5eed, data))
}

/// The payload of write `id`: its id, then `pad_bytes` of filler so that
/// entry sizes vary and exercise the byte limits of flow control.
pub fn write_payload(id: u64, pad_bytes: usize) -> Vec<u8> {
    let mut data = Vec::with_capacity(WRITE_ID_BYTES + pad_bytes);
    data.extend_from_slice(&id.to_le_bytes());
    data.extend((0..pad_bytes).map(|i| (id as usize + i) as u8));
    data
}

/// The write id of a payload made by [`write_payload`].
pub fn write_id(data: &[u8]) -> Option<u64> {
    let bytes: [u8; WRITE_ID_BYTES] = data.get(..WRITE_ID_BYTES)?.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

/// One node's applied state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateMachine {
    /// The index of the last entry applied.
    pub applied: u64,
    /// How many writes were applied.
    pub writes: u64,
    /// Hash chain over the applied writes' payloads, in order.
    pub chain: u64,
    /// The configuration as of `applied`.
    pub conf: ConfState,
}

impl StateMachine {
    /// The empty state a group starts from.
    pub fn bootstrap(conf: ConfState) -> Self {
        StateMachine {
            applied: 0,
            writes: 0,
            chain: 0,
            conf,
        }
    }

    /// Applies the data of one committed entry. The caller applies a
    /// membership change to `conf` itself (it needs the `RawNode`).
    pub fn apply(&mut self, entry: &Entry) {
        self.applied = entry.index;
        if is_write(entry) {
            self.writes += 1;
            self.chain = chain_step(self.chain, &entry.data);
        }
    }

    /// The snapshot data of this state (see the module docs for the format).
    pub fn encode(&self) -> Vec<u8> {
        let mut data = Vec::with_capacity(SNAPSHOT_DATA_BYTES);
        for value in [self.applied, self.writes, self.chain] {
            data.extend_from_slice(&value.to_le_bytes());
        }
        data
    }

    /// The state a snapshot captures. The empty snapshot at index 0 is the
    /// bootstrap state of its configuration.
    pub fn restore(snapshot: &Snapshot) -> Result<Self, String> {
        let meta = &snapshot.meta;
        if meta.index == 0 && snapshot.data.is_empty() {
            return Ok(StateMachine::bootstrap(meta.conf_state.clone()));
        }
        if snapshot.data.len() != SNAPSHOT_DATA_BYTES {
            return Err(format!(
                "snapshot at {} holds {} bytes of data, expected {SNAPSHOT_DATA_BYTES}",
                meta.index,
                snapshot.data.len()
            ));
        }
        let word = |at: usize| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&snapshot.data[at * 8..at * 8 + 8]);
            u64::from_le_bytes(bytes)
        };
        let state = StateMachine {
            applied: word(0),
            writes: word(1),
            chain: word(2),
            conf: meta.conf_state.clone(),
        };
        if state.applied != meta.index {
            return Err(format!(
                "snapshot at {} holds a state machine applied to {}",
                meta.index, state.applied
            ));
        }
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_raftgroup::SnapshotMeta;

    #[test]
    fn snapshot_data_round_trips() {
        let mut sm = StateMachine::bootstrap(ConfState::with_voters([1, 2, 3]));
        for index in 1..=5 {
            sm.apply(&Entry {
                term: 1,
                index,
                kind: EntryKind::Normal,
                data: write_payload(index * 7, index as usize).into(),
            });
        }
        let snapshot = Snapshot {
            meta: SnapshotMeta {
                index: 5,
                term: 1,
                conf_state: sm.conf.clone(),
            },
            data: sm.encode(),
        };
        assert_eq!(StateMachine::restore(&snapshot), Ok(sm));
    }

    #[test]
    fn the_chain_depends_on_order() {
        let a = chain_step(chain_step(0, b"x"), b"y");
        let b = chain_step(chain_step(0, b"y"), b"x");
        assert_ne!(a, b);
        assert_eq!(write_id(&write_payload(42, 3)), Some(42));
    }
}
