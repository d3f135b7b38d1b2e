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
//! - [`cluster_state`]: the state shared by every connection (membership,
//!   leases, watchers, the repair planner).
//! - [`service`]: the RPC objects.
//! - [`server`], [`config`], [`cli`]: the process.
//!
//! With the `failpoints` cargo feature, `fail` failpoints (TiKV's
//! `fail-rs`) sit at the durability points: `group_commit::before_commit`,
//! `group_commit::before_answer`, `store::apply` (before each mutation of a
//! batch) and `store::before_commit`. The `ringfs-control` binary reads
//! them from the `FAILPOINTS` environment variable (`name=action;...`).
//! Without the feature none of this is compiled.

/// `fail::fail_point!` with the `failpoints` feature, nothing without it.
macro_rules! fail_point {
    ($($args:tt)*) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($($args)*);
    };
}
pub(crate) use fail_point;

pub mod call_gate;
pub mod cli;
pub mod cluster_state;
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
