//! # flotilla-tools
//!
//! The library behind the `flotilla` binary: the seeded simulators
//! ([`sim`]), operation histories and their linearizability checker
//! ([`history`]), WAL inspection ([`wal_cmd`]), and the settings, status
//! server and signal handling of `flotilla start` ([`start`]). The binary's
//! subcommands are thin wrappers over it so that tests drive exactly the
//! code the command line runs.

pub mod cert;
pub mod demo;
pub mod history;
pub mod sim;
pub mod start;
pub mod wal_cmd;
