//! The fuzz targets of ringfs, in one list ([`TARGETS`]).
//!
//! A target is a function of arbitrary bytes that panics when a property
//! is violated. Targets over a crate's internals live in that crate behind
//! its `fuzzing` feature (`ringfs_node::fuzz`); targets over public APIs
//! live here. Each is run two ways:
//! - coverage-guided by libFuzzer on stable Rust (`scripts/fuzz`, run by
//!   `.ci/run` for a bounded time): the `ringfs-fuzz` binary, built with
//!   LLVM's sanitizer-coverage passes, runs the target named by
//!   `RINGFS_FUZZ_TARGET`;
//! - in `cargo test`: every checked-in input under `corpus/<target>/` (a
//!   crash libFuzzer found is committed there and stays fixed) plus
//!   seeded random inputs (`tests/targets.rs`).
//!
//! Adding a target: write its function, add one line to [`TARGETS`] with a
//! few seed inputs; both ways pick it up.

pub mod control_rpc;

use ringfs_schema::frame::{decode_header, encode_header, Header, Hop, LockMode, Op, Status};
use ringfs_schema::ids::ChunkId;

/// A fuzz target.
pub struct Target {
    /// Its name (`RINGFS_FUZZ_TARGET`, `corpus/<name>/`).
    pub name: &'static str,
    /// Runs one input; panics on a violated property.
    pub run: fn(&[u8]),
    /// Valid or near-valid inputs to start from.
    pub seeds: fn() -> Vec<Vec<u8>>,
    /// Seeded random inputs `cargo test` runs (and a fifteenth of that in
    /// mutations of each seed): a few seconds' worth.
    pub test_inputs: usize,
}

/// [`Target::test_inputs`] of a target that runs in microseconds.
const QUICK: usize = 3000;

/// Every fuzz target.
pub const TARGETS: &[Target] = &[
    Target {
        name: "frame_decoder",
        run: frame_decoder,
        seeds: frame_seeds,
        test_inputs: QUICK,
    },
    Target {
        name: "chunk_header",
        run: ringfs_node::fuzz::chunk_header,
        seeds: no_seeds,
        test_inputs: QUICK,
    },
    Target {
        name: "lock_table",
        run: ringfs_node::fuzz::lock_table,
        seeds: no_seeds,
        test_inputs: QUICK,
    },
    Target {
        name: "control_rpc",
        run: control_rpc::control_rpc,
        seeds: control_rpc::seeds,
        // Every input is a connection to a server, a few milliseconds.
        test_inputs: 300,
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

fn no_seeds() -> Vec<Vec<u8>> {
    Vec::new()
}

/// The data-plane frame decoder (what a node reads from any client): any
/// byte string decodes to a header or a typed error, never a panic, and a
/// decoded header survives an encode/decode round trip.
pub fn frame_decoder(data: &[u8]) {
    if let Ok(h) = decode_header(data) {
        let again = encode_header(&h);
        assert_eq!(decode_header(&again[4..]).as_ref(), Ok(&h));
    }
}

/// Encoded headers of several kinds (without their length prefix).
fn frame_seeds() -> Vec<Vec<u8>> {
    let mut write = Header::request(7, Op::Write);
    write.chunk_id = ChunkId::new(1, 2);
    write.offset = 4096;
    write.payload_length = 10;
    write.chain = vec![Hop {
        node_id: 3,
        address: "127.0.0.1:7100".into(),
        token: Default::default(),
    }];
    // Every request carries a capability (80 bytes): its length is checked
    // in the decoder, its MAC by the node.
    write.capability = Some([0x5a; ringfs_schema::frame::CAPABILITY_LEN]);
    let mut lock = Header::request(8, Op::Lock);
    lock.lock_mode = LockMode::Read;
    lock.timeout_ms = 100;
    let err = Header::error_to(&lock, Status::Busy, "chunk is locked");
    [write, lock, err]
        .iter()
        .map(|h| encode_header(h)[4..].to_vec())
        .collect()
}
