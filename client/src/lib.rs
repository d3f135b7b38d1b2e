//! ringfs client library.
//!
//! - [`Client`]: the file API (create/open/read/write/pread/pwrite/seek/
//!   close, stat, unlink, mkdir, rmdir, rename, list) on integer
//!   descriptors; chunk data goes straight to the storage nodes
//!   ([`node_conn`]), metadata to the control server ([`control`]).
//! - [`control::ControlClient`] speaks the control server's Cap'n Proto RPC.
//!
//! - [`mount`]: the file system through FUSE (`ringfs mount`).
//! - [`Transaction`] ([`Client::transaction`]): writes to several files
//!   that readers see all at once or not at all.
//!
//! Everything runs on a tokio `LocalSet` (capnp-rpc is single-threaded);
//! [`local`] runs a future on one, and [`BlockingClient`] wraps the file
//! API for synchronous programs.
//!
//! Inside, [`client`] keeps the descriptor table and the POSIX-like calls,
//! `cluster` the control connection and the cluster map, `chunk_io` the
//! requests to storage nodes, `chunk_write` and `chunk_read` the replica
//! protocol's write and read paths, and `replica_policy` its decisions as
//! pure functions.

#![warn(missing_docs)]

pub mod blocking;
mod chunk_io;
mod chunk_read;
mod chunk_write;
pub mod client;
mod cluster;
pub mod control;
pub mod error;
pub mod human;
pub mod mount;
pub mod node_conn;
pub mod placement;
pub mod record_cache;
mod replica_policy;
pub mod transaction;
mod write_pipeline;

pub use blocking::BlockingClient;
pub use chunk_io::ReplicaDigest;
pub use client::{local, Client, ClientOptions, Fd, OpenOptions, SeekFrom};
pub use control::{
    Attr, ChunkHealth, ChunkProblem, ChunkRecord, ClusterMap, Committed, ControlClient,
    CreateOptions, Credential, FileHandle, Kind, NodeInfo, Principal, ProblemKind, ReplicaInfo,
    ReplicationStatus, ServerInfo, UserInfo, Version,
};
pub use error::{Cause, Error, Result};
pub use transaction::{Transaction, TransactionOptions};
