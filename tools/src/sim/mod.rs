//! Seeded simulators that drive production code through fault schedules.
//!
//! A run is a pure function of its seed: every random choice comes from one
//! `ChaCha8Rng` seeded from it and every collection that affects the run is
//! ordered, so a failing seed replays exactly.

pub mod cluster;
pub mod raft;
