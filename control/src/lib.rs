//! The ringfs control server: it owns the namespace, the file-to-chunk map
//! and cluster membership, and serves them over Cap'n Proto RPC
//! (`schema/control.capnp`). It is never on the data path.
//!
//! Modules, from the bottom up:
//! - [`path`]: path validation.
//! - [`records`]: the persisted records and their encodings.
//! - [`store`]: the redb metadata store; mutations check before they write.
//! - [`group_commit`]: the writer thread batching mutations into durable commits.
//! - [`leases`]: exclusive write leases with FIFO waiters.
//! - [`membership`]: node liveness, capacity and chunk reports.
//! - [`commands`]: delete/copy commands for nodes, carried by heartbeats.
//! - [`repair`]: replica health, re-replication planning, fsck.
//! - [`gc`]: garbage and orphan chunk deletion.
//! - [`service`]: the RPC objects.
//! - [`server`], [`config`], [`cli`]: the process.

pub mod call_gate;
pub mod cli;
pub mod commands;
pub mod config;
pub mod error;
pub mod gc;
pub mod group_commit;
pub mod leases;
pub mod membership;
pub mod metrics;
pub mod path;
pub mod records;
pub mod repair;
pub mod server;
pub mod service;
pub mod store;

pub use error::ControlError;
