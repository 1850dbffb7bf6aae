//! # flotilla-tools
//!
//! The library behind the `flotilla` binary. Today it holds the seeded
//! simulators ([`sim`]); the binary's subcommands are thin wrappers over it so
//! that tests drive exactly the code the command line runs.

pub mod sim;
