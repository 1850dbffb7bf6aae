//! flotilla-placement decides where ranges live: range descriptors, split
//! policy, and leader/replica balancing. Pure decisions: state in, operations
//! out.
//!
//! This crate is filled by the placement issue and currently exports nothing.
