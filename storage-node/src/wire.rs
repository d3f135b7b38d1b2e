//! Async frame I/O over futures streams; lives in [`ringfs_schema::wire`],
//! re-exported here under its old path.

pub use ringfs_schema::wire::*;
