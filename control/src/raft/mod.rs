//! Replication of the control server's state between control replicas with
//! Raft (the `openraft` crate), so that the control plane survives the loss
//! of a machine.
//!
//! The state machine IS the metadata store ([`crate::store::MetaStore`]):
//! a Raft log entry carries one [`Batch`] of mutations (a group commit),
//! applied with [`crate::store::MetaStore::apply_batches`] exactly as the
//! single server applies its batches. Everything a mutation needs that is
//! random or depends on time (a node key, `now_ns`, the defaults of a new
//! file) is decided by the leader before the entry is proposed and carried
//! in it, so every replica applies the same bytes.
//!
//! - [`log_store`]: the Raft log and vote in their own redb file, written by
//!   a log-writer thread that fsyncs many appends at once.
//! - [`state_machine`]: applying entries to the metadata store, snapshots.
//! - [`network`]: the Raft messages to other replicas, over Cap'n Proto
//!   (`RaftPeer` in `control.capnp`), authenticated as `@cluster` (a key
//!   derived from the cluster secret).
//! - [`peer`]: the `RaftPeer` server.
//! - [`proposer`]: forms batches of client mutations and proposes them.
//! - [`replica`]: starting a replica, joining a group, following
//!   leadership.
//!
//! openraft runs on the RPC thread (its `singlethreaded` feature: tasks are
//! `spawn_local`ed on the server's `LocalSet`, next to capnp-rpc).

// openraft's storage and network traits fix their error types (large
// enums); results here carry them as the traits require.
#![allow(clippy::result_large_err)]

use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::store::{Answer, Batch};

pub mod log_store;
pub mod network;
pub mod peer;
pub mod proposer;
pub mod replica;
pub mod state_machine;

pub use replica::{Replica, ReplicaConfig};

/// What applying one log entry answered: one answer per request of its
/// batch (none for blank and membership entries).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied(pub Vec<Answer>);

openraft::declare_raft_types!(
    /// The Raft types of the control plane.
    pub TypeConfig:
        D = Batch,
        R = Applied,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A replica's Raft handle.
pub type Raft = openraft::Raft<TypeConfig>;
/// A log id.
pub type LogId = openraft::LogId<u64>;
/// A storage error of this type configuration.
pub type StorageError = openraft::StorageError<u64>;

/// Encodes a Raft message or record with postcard.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("postcard encodes every openraft type into a Vec")
}

/// Decodes a Raft message or record; a malformed one is an error, never a
/// panic.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}
