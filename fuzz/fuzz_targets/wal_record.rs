//! The WAL record decoder reads bytes from disk: whatever they are, it must
//! return a record or a typed error, never panic or read out of bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let seq = u64::from_le_bytes(data[..8].try_into().unwrap());
    let bytes = &data[8..];
    if let Ok(record) = flotilla::wal::format::decode_record(seq, bytes) {
        // A record that validates must also decode its payload without panicking.
        let _ = record;
    }
    let _ = flotilla::wal::format::decode_payload(bytes);
});
