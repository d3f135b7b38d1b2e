//! ringfs storage node: glommio thread-per-core shards serving chunks over a
//! lean framed data-plane protocol. See "Data plane" in `docs/protocol.md`
//! and "Storage node" in `docs/architecture.md`.
//!
//! The library exists for the `ringfs-node` binary, the bench (which runs a
//! node as a hidden subcommand of itself and drives one over the data
//! plane) and tests. Its public surface is only what those need:
//! - [`cli::main_with_args`]: the whole node process;
//! - [`peer::Peer`]: a pipelined data-plane client on glommio;
//! - [`chunk_file`]: the on-disk layout constants of a chunk file;
//! - [`parse_cores`]: how `--cores` is read (the bench counts shards with it).
//!
//! The frame codec and chunk ids are in `ringfs-schema`, shared with clients.
//! With the `fuzzing` feature, [`fuzz`] holds the entry points of the fuzz
//! targets over this crate's decoders and state machines.
#![warn(missing_docs)]

// First: the `failpoint!` macro is used by the modules below.
#[macro_use]
mod failpoint;

pub mod chunk_file;
pub mod cli;
pub mod peer;

mod buffer_pool;
mod chunk_store;
mod config;
mod conn;
mod control_link;
mod crc_table;
mod disk;
mod fifo;
#[cfg(feature = "fuzzing")]
pub mod fuzz;
mod group_commit;
mod identity;
mod journal;
mod lock_table;
mod metrics;
mod node;
mod ops;
mod replicate;
mod reservations;
mod scrubber;
mod shard;
mod token;
mod tokio_thread;
mod write_order;

pub use config::{parse_cores, ConfigError};
