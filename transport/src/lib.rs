//! flotilla-transport moves frames between flotilla nodes.
//!
//! This crate is filled by the QUIC transport issue: one mutually
//! authenticated QUIC connection per node pair, coalesced heartbeats, and an
//! in-process transport with fault injection. It currently exports nothing;
//! the node runtime does not depend on any of its items yet.
