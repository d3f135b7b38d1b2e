//! ringfs storage node: glommio thread-per-core shards serving chunks over a
//! lean framed data-plane protocol. See "Data plane" in `docs/protocol.md`.

pub mod buffer_pool;
pub mod chunk_file;
pub mod chunk_store;
pub mod cli;
pub mod config;
pub mod control_link;
pub mod frame;
pub mod group_commit;
pub mod identity;
pub mod ids;
pub mod lock_table;
pub mod metrics;
pub mod node;
pub mod peer;
pub mod replicate;
pub mod reservations;
pub mod scrubber;
pub mod shard;
pub mod token;
pub mod tokio_thread;
pub mod wire;
