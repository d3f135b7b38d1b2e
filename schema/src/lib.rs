//! The wire contract of ringfs: the Cap'n Proto schema (`schema/*.capnp`) and
//! its generated Rust code, checked in under `src/generated` so that a plain
//! `cargo build` needs no `capnp` tool. Regenerate with `scripts/gen-schema`.
//!
//! - [`common_capnp`]: chunk ids, capacity reports, the protocol version.
//! - [`control_capnp`]: the control server's RPC interface.
//! - [`data_capnp`]: the data-plane frame header spoken with storage nodes.
//! - [`raw_rpc`]: RPC messages built by hand, for fuzz targets and fault
//!   tests.

#![warn(missing_docs)]

#[allow(clippy::all, unused_parens, dead_code, missing_docs)]
pub mod common_capnp {
    include!("generated/common_capnp.rs");
}
#[allow(clippy::all, unused_parens, dead_code, missing_docs)]
pub mod control_capnp {
    include!("generated/control_capnp.rs");
}
#[allow(clippy::all, unused_parens, dead_code, missing_docs)]
pub mod data_capnp {
    include!("generated/data_capnp.rs");
}

/// The wire protocol version this build speaks (see `common.capnp`).
pub const PROTOCOL_VERSION: u32 = common_capnp::PROTOCOL_VERSION;

pub mod crc;
pub mod frame;
pub mod ids;
pub mod raw_rpc;
pub mod version;
pub mod wire;
pub mod wire_error;

pub use ids::ChunkId;
pub use version::Version;

/// Largest chunk a storage node stores, in bytes (64 MiB): also the largest
/// data-plane payload. Files may use smaller chunk sizes, never larger ones.
pub const MAX_CHUNK_SIZE: u64 = 64 * 1024 * 1024;

/// A 128-bit chunk id from its wire form (`hi` = minting node, `lo` = counter).
pub fn read_chunk_id(r: common_capnp::chunk_id::Reader<'_>) -> u128 {
    ((r.get_hi() as u128) << 64) | r.get_lo() as u128
}

/// Writes a 128-bit chunk id in its wire form.
pub fn write_chunk_id(mut b: common_capnp::chunk_id::Builder<'_>, id: u128) {
    b.set_hi((id >> 64) as u64);
    b.set_lo(id as u64);
}
