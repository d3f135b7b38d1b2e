//! Fuzzes the data-plane frame decoder: any byte string must decode to a
//! header or a `FrameError`, never panic, and a decoded header must survive
//! an encode/decode round trip.
//!
//! Run: `cargo +nightly fuzz run frame_decoder` in `storage-node/`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringfs_node::frame::{decode_header, encode_header};

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = decode_header(data) {
        let again = encode_header(&h);
        assert_eq!(decode_header(&again[4..]).as_ref(), Ok(&h));
    }
});
