//! The WAL reports its size (bytes on disk, segments) and its syncs as
//! metrics.

use flotilla::wal::{LogEntry, Wal, WalConfig, WriteBatch};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

#[test]
fn wal_size_and_syncs_are_metrics() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let dir = tempfile::tempdir().unwrap();
    metrics::with_local_recorder(&recorder, || {
        let config = WalConfig {
            segment_bytes: 64 << 10,
            ..WalConfig::default()
        };
        let wal = Wal::open(dir.path(), config).unwrap();
        // Enough data for several segments.
        for index in 1..=100u64 {
            let mut batch = WriteBatch::new();
            batch.add_entries(
                7,
                vec![LogEntry {
                    index,
                    term: 1,
                    kind: 0,
                    data: vec![index as u8; 2000],
                }],
            );
            wal.append(batch).unwrap();
        }
        assert!(wal.segment_count() > 2);
    });
    let values: Vec<(String, DebugValue)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| (key.key().name().to_string(), value))
        .collect();
    let get = |name: &str| {
        values
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("metric {name} missing: {values:?}"))
    };
    assert!(matches!(get("flotilla_wal_syncs_total"), DebugValue::Counter(n) if *n >= 100));
    assert!(matches!(get("flotilla_wal_segments"), DebugValue::Gauge(g) if g.into_inner() >= 2.0));
    assert!(
        matches!(get("flotilla_wal_bytes"), DebugValue::Gauge(g) if g.into_inner() >= 2.0 * 65536.0)
    );
}
