//! The redb tables of the metadata store, and typed access to their records:
//! a record that does not decode, or a reference that leads nowhere, is a
//! [`ControlError::Corrupt`] naming the record.

use redb::{ReadableTable, TableDefinition};

use crate::error::{ControlError, Result};
use crate::records::{Chunk, Inode, Node};

/// inode number -> [`Inode`]
pub(super) const INODES: TableDefinition<u64, &[u8]> = TableDefinition::new("inodes");
/// (parent inode, name) -> child inode
pub(super) const DIRENTS: TableDefinition<(u64, &str), u64> = TableDefinition::new("dirents");
/// (inode, chunk index) -> [`Chunk`]
pub(super) const CHUNKS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("chunks");
/// node id -> [`Node`]
pub(super) const NODES: TableDefinition<u64, &[u8]> = TableDefinition::new("nodes");
/// counter name -> value
pub(super) const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
/// chunk id -> [`Chunk`] no longer referenced by any file, to be deleted on
/// its replicas by garbage collection.
pub(super) const GARBAGE: TableDefinition<u128, &[u8]> = TableDefinition::new("garbage");

/// user name -> [`crate::records::User`] (users the administrator added).
pub(super) const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");

/// Replication state kept with the data it describes (the Raft state
/// machine's last applied log id and membership), key -> bytes.
pub(super) const REPLICATION: TableDefinition<&str, &[u8]> = TableDefinition::new("replication");

/// The next inode number to hand out.
pub(super) const NEXT_INODE: &str = "next_inode";
/// The next node id to hand out.
pub(super) const NEXT_NODE_ID: &str = "next_node_id";
/// The cluster-map epoch.
pub(super) const EPOCH: &str = "epoch";
/// The write-epoch mark (see [`super::Mutation::AdvanceWriteEpoch`]).
pub(super) const WRITE_EPOCH: &str = "write_epoch_mark";
/// The store's format: [`STORE_FORMAT`] for this build's records.
pub(super) const FORMAT: &str = "format";
/// 2: chunk versions are (epoch, seq) pairs (chunk records of format 2).
/// 3: inodes have an owner and a group (inode records of format 2), and
/// the users table.
pub(super) const STORE_FORMAT: u64 = 3;

/// Inode `ino`, if it exists.
pub(super) fn get_inode(
    inodes: &impl ReadableTable<u64, &'static [u8]>,
    ino: u64,
) -> Result<Option<Inode>> {
    inodes
        .get(ino)?
        .map(|v| {
            Inode::decode(v.value())
                .map_err(|e| ControlError::corrupt(format!("inode {ino}"), e.problem))
        })
        .transpose()
}

/// Inode `ino`, which an entry or a parent link names: its absence is
/// corruption.
pub(super) fn must_inode(
    inodes: &impl ReadableTable<u64, &'static [u8]>,
    ino: u64,
) -> Result<Inode> {
    get_inode(inodes, ino)?.ok_or_else(|| {
        ControlError::corrupt(format!("inode {ino}"), "missing, but an entry points to it")
    })
}

/// Decodes the chunk record stored under (`ino`, `index`).
pub(super) fn decode_chunk(ino: u64, index: u64, bytes: &[u8]) -> Result<Chunk> {
    Chunk::decode(bytes)
        .map_err(|e| ControlError::corrupt(format!("chunk ({ino}, {index})"), e.problem))
}

/// The chunk record (`ino`, `index`), if it exists.
pub(super) fn get_chunk(
    chunks: &impl ReadableTable<(u64, u64), &'static [u8]>,
    ino: u64,
    index: u64,
) -> Result<Option<Chunk>> {
    chunks
        .get((ino, index))?
        .map(|v| decode_chunk(ino, index, v.value()))
        .transpose()
}

/// Decodes the garbage entry stored under chunk id `id`.
pub(super) fn decode_garbage(id: u128, bytes: &[u8]) -> Result<Chunk> {
    Chunk::decode(bytes).map_err(|e| ControlError::corrupt(format!("garbage {id:032x}"), e.problem))
}

/// Decodes the node record stored under `id`.
pub(super) fn decode_node(id: u64, bytes: &[u8]) -> Result<Node> {
    Node::decode(bytes).map_err(|e| ControlError::corrupt(format!("node {id}"), e.problem))
}

/// Returns counter `name` and advances it.
pub(super) fn next_counter(counters: &mut redb::Table<&str, u64>, name: &str) -> Result<u64> {
    let value = counters
        .get(name)?
        .map(|v| v.value())
        .ok_or_else(|| ControlError::corrupt(format!("counter {name}"), "missing"))?;
    counters.insert(name, value + 1)?;
    Ok(value)
}
