//! `flotilla wal inspect|check DIR` and `flotilla sim wal`: looking at a WAL
//! directory without changing it, and the WAL's crash-recovery simulation.

use std::fmt::Write as _;
use std::ops::Range;
use std::path::Path;

use flotilla::wal::inspect::{inspect, InspectReport};
use flotilla::wal::WalError;

use crate::sim::parallel::run_seeds;

/// Renders what `inspect` found: segments, then groups, then (if listed)
/// records.
pub fn render_inspection(report: &InspectReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} segments, {} spare files, {} leftover temp files",
        report.segments.len(),
        report.spare_files,
        report.temp_files
    );
    for s in &report.segments {
        let state = match (s.sealed, s.torn_tail) {
            (true, _) => "sealed",
            (false, true) => "active, torn tail (repaired on open)",
            (false, false) => "active",
        };
        let _ = writeln!(
            out,
            "segment {:016} {:>10} bytes  {:>7} records  end at {:>10}  {state}",
            s.seq, s.file_bytes, s.records, s.end_offset
        );
    }
    let _ = writeln!(out, "{} groups", report.groups.len());
    for g in &report.groups {
        let hard_state = g.hard_state.map_or_else(
            || "no hard state".to_string(),
            |hs| format!("term {} vote {} commit {}", hs.term, hs.vote, hs.commit),
        );
        let _ = writeln!(
            out,
            "group {:>8}  entries {}..={}  {hard_state}",
            g.group, g.first_index, g.last_index
        );
    }
    for r in &report.records {
        let kind = if r.seal { "seal" } else { "batch" };
        let _ = writeln!(
            out,
            "record {:016}@{:<10} {kind:5} {:>8} bytes  {}",
            r.segment,
            r.offset,
            r.bytes,
            r.items.join("; ")
        );
    }
    out
}

/// `flotilla wal inspect DIR [--records]`.
pub fn inspect_dir(dir: &Path, records: bool) -> Result<String, WalError> {
    inspect(dir, records).map(|report| render_inspection(&report))
}

/// `flotilla wal check DIR`: one line, and whether the WAL is sound.
pub fn check_dir(dir: &Path) -> (String, bool) {
    match inspect(dir, false) {
        Ok(report) => {
            let records: u64 = report.segments.iter().map(|s| s.records).sum();
            let torn = report.segments.iter().any(|s| s.torn_tail);
            let note = if torn {
                "; the final record is torn and will be discarded on open"
            } else {
                ""
            };
            (
                format!(
                    "ok: {} segments, {records} records, {} groups verified{note}",
                    report.segments.len(),
                    report.groups.len()
                ),
                true,
            )
        }
        Err(error) => (format!("FAILED: {error}"), false),
    }
}

/// Outcome of `flotilla sim wal`.
#[derive(Debug)]
pub struct WalSimSummary {
    pub passed: u64,
    pub failures: Vec<(u64, String)>,
    pub seconds: f64,
}

/// Runs WAL crash-recovery seeds on `threads` threads; a panic fails its
/// seed instead of the run.
pub fn sim_wal(seeds: Range<u64>, threads: usize) -> WalSimSummary {
    let mut passed = 0u64;
    let mut failures = Vec::new();
    let stats = run_seeds(
        seeds,
        threads,
        |seed| {
            let outcome = std::panic::catch_unwind(|| flotilla::wal::sim::run_seed(seed));
            match outcome {
                Ok(Ok(_)) => (seed, None),
                Ok(Err(reason)) => (seed, Some(reason)),
                Err(_) => (seed, Some("panicked (see stderr)".to_string())),
            }
        },
        |(seed, failure)| match failure {
            None => {
                passed += 1;
                false
            }
            Some(reason) => {
                failures.push((seed, reason));
                true
            }
        },
        |progress| {
            eprintln!(
                "{}/{} seeds, {} failed, {:.1} seeds/s",
                progress.done,
                progress.total,
                progress.failed,
                progress.seeds_per_second()
            )
        },
    );
    failures.sort();
    WalSimSummary {
        passed,
        failures,
        seconds: stats.elapsed.as_secs_f64(),
    }
}
