//! Data-plane framing. The codec lives in [`ringfs_schema::frame`] so that
//! clients share it without depending on glommio; re-exported here under its
//! old path.

pub use ringfs_schema::frame::*;

// The frame limit and the chunk store's limit must agree.
const _: () = assert!(crate::chunk_file::MAX_CHUNK_SIZE == ringfs_schema::MAX_CHUNK_SIZE);
