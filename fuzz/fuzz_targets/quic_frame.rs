//! Frames arrive from other nodes as a length prefix and an rkyv archive:
//! decoding must turn any bytes into a frame or a typed error, never a
//! panic, an allocation past the limit, or a read past the input; and a
//! frame that decodes must encode and decode back to itself.
#![no_main]

use flotilla_transport::quic::codec::{decode_wire, encode_frame};
use libfuzzer_sys::fuzz_target;

/// Small enough that the fuzzer reaches the limit, as a real peer might.
const FRAME_BYTES_MAX: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    if let Ok((frame, used)) = decode_wire(data, FRAME_BYTES_MAX) {
        assert!(used <= data.len(), "consumed more than the input");
        let encoded = encode_frame(&frame, usize::MAX).expect("a decoded frame encodes");
        let mut wire = encoded.prefix().to_vec();
        wire.extend_from_slice(encoded.archive());
        let (again, again_used) =
            decode_wire(&wire, usize::MAX).expect("an encoded frame decodes");
        assert_eq!(again, frame, "the frame changed on a round trip");
        assert_eq!(again_used, wire.len());
    }
});
