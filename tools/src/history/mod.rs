//! Operation histories: recording what clients did, and checking it.
//!
//! A history is what a client saw: for every operation, when it was invoked
//! and how it completed. Simulators and benchmarks record one with a
//! [`Recorder`], write it as JSON lines with a [`HistoryWriter`] (the format
//! is described in `HISTORY.md` and read back by [`read_history`]), and
//! [`check`] decides whether some order of the operations, consistent with
//! real time, explains every result — linearizability.
//!
//! The two halves are separate on purpose: [`format`] is the contract with
//! outside tools (Jepsen-shaped histories), [`checker`] is our own reading of
//! it, and either can change without the other.

pub mod checker;
pub mod format;

pub use checker::{check, check_with, CheckOptions, MalformedHistory, Report, Verdict};
pub use format::{
    read_history, Event, EventError, EventType, HistoryError, HistoryWriter, Op, OpKind, Outcome,
    Pending, Recorder,
};
