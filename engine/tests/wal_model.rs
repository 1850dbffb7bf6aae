//! Model-based test: random operations on the WAL over the simulated disk,
//! compared after every step with a plain in-memory oracle. Proptest shrinks
//! a failure to a short sequence of operations.

use std::sync::Arc;

use flotilla::wal::sim::{BatchGen, Oracle};
use flotilla::wal::sim_fs::{SimFs, SimRng};
use flotilla::wal::{Wal, WalConfig};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    /// Append a random valid batch generated from this seed.
    Append(u64),
    /// Power loss (tearing the last unsynced write), then reopen.
    Crash,
    /// Clean close and reopen.
    Reopen,
    /// Free what no group needs.
    Purge,
    /// Rewrite a group forward.
    Rewrite(u64),
    /// Compare one group with the model.
    Check(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => any::<u64>().prop_map(Op::Append),
        1 => Just(Op::Crash),
        1 => Just(Op::Reopen),
        1 => Just(Op::Purge),
        1 => (1u64..=12).prop_map(Op::Rewrite),
        2 => (1u64..=12).prop_map(Op::Check),
    ]
}

fn open(fs: &SimFs, config: &WalConfig) -> Wal {
    Wal::open_with_fs(Arc::new(fs.clone()), config.clone()).expect("reopen")
}

fn run(ops: &[Op], cache_bytes_max: usize) -> Result<(), TestCaseError> {
    let fs = SimFs::new(ops.len() as u64);
    fs.set_tear_percent(100);
    let config = WalConfig {
        segment_bytes: 64 << 10,
        cache_bytes_max,
        recycle_segments_max: 1,
        prepare_in_background: false,
        ..WalConfig::default()
    };
    let mut wal = open(&fs, &config);
    let mut oracle = Oracle::new();
    let mut gen = BatchGen::new(12);
    for op in ops {
        match op {
            Op::Append(seed) => {
                let batch = gen.batch(&mut SimRng::new(*seed), &oracle);
                wal.append(batch.clone())
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                oracle.apply(&batch).map_err(TestCaseError::fail)?;
            }
            Op::Crash => {
                drop(wal);
                fs.crash();
                wal = open(&fs, &config);
                oracle.check(&wal).map_err(TestCaseError::fail)?;
            }
            Op::Reopen => {
                drop(wal);
                wal = open(&fs, &config);
                oracle.check(&wal).map_err(TestCaseError::fail)?;
            }
            Op::Purge => {
                wal.purge()
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
            Op::Rewrite(group) => {
                wal.rewrite_forward(*group)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
            Op::Check(group) => oracle
                .check_group(&wal, *group)
                .map_err(TestCaseError::fail)?,
        }
    }
    oracle.check(&wal).map_err(TestCaseError::fail)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn wal_matches_the_oracle(ops in proptest::collection::vec(op(), 1..120), cache in prop_oneof![Just(0usize), Just(8usize << 10), Just(1usize << 20)]) {
        run(&ops, cache)?;
    }
}
