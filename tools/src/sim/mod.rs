//! Seeded simulators that drive production code through fault schedules.
//!
//! A run is a pure function of its seed: every random choice comes from one
//! `ChaCha8Rng` seeded from it and every collection that affects the run is
//! ordered, so a failing seed replays exactly.

pub mod cluster;
pub mod parallel;
pub mod raft;

/// Parses `--seeds`: `A..B` (B excluded) or a single seed `A`.
pub fn parse_seeds(text: &str) -> Result<std::ops::Range<u64>, String> {
    let number = |part: &str| {
        part.trim()
            .parse::<u64>()
            .map_err(|error| format!("`{part}` is not a seed: {error}"))
    };
    let range = match text.split_once("..") {
        Some((start, end)) => number(start)?..number(end)?,
        None => {
            let seed = number(text)?;
            seed..seed.saturating_add(1)
        }
    };
    if range.is_empty() {
        return Err(format!("`{text}` holds no seeds; write A..B with A < B"));
    }
    Ok(range)
}

/// How every simulator prints a failed seed: the violated property, the
/// events that led to it, and the command that replays it.
pub fn write_failure(
    f: &mut std::fmt::Formatter<'_>,
    seed: u64,
    tick: u64,
    property: &dyn std::fmt::Display,
    detail: &str,
    recent_events: &[String],
    simulator: &str,
) -> std::fmt::Result {
    writeln!(
        f,
        "seed {seed} FAILED at tick {tick}: {property} violated: {detail}"
    )?;
    writeln!(f, "  last {} events:", recent_events.len())?;
    for event in recent_events {
        writeln!(f, "    {event}")?;
    }
    write!(
        f,
        "  replay: flotilla sim {simulator} --seeds {seed} --verbose"
    )
}
