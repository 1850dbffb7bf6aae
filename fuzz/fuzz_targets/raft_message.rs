//! Raft messages arrive from the network as rkyv archives: validation must
//! reject any malformed archive without panicking, and whatever validates
//! must deserialize.
#![no_main]

use flotilla_raftgroup::{ArchivedMessage, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(data.len());
    aligned.extend_from_slice(data);
    if let Ok(archived) = rkyv::access::<ArchivedMessage, rkyv::rancor::Error>(&aligned) {
        let message: Result<Message, _> = rkyv::deserialize::<Message, rkyv::rancor::Error>(archived);
        assert!(message.is_ok(), "a validated archive must deserialize");
    }
});
