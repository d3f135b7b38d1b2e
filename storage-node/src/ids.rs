//! Chunk ids and the chunk-to-shard mapping; live in [`ringfs_schema::ids`],
//! re-exported here under their old path.

pub use ringfs_schema::ids::*;
