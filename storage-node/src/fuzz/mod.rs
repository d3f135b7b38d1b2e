//! Entry points of the fuzz targets over this crate's decoders and state
//! machines (feature `fuzzing`), run by the workspace's `fuzz/` crate, which
//! lists every target. Each takes arbitrary bytes and panics when a
//! property is violated; none may panic otherwise.

mod chunk_header;
mod lock_table;

pub use chunk_header::chunk_header;
pub use lock_table::lock_table;
