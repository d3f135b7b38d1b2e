//! The node registry (`nodes`: id, key, shard endpoints of every storage
//! node that joined) and the cluster-map epoch counter.
//!
//! Every mutation checks everything it needs before its first write (see
//! [`super`]).

use redb::{ReadTransaction, ReadableTable, WriteTransaction};

use super::tables::{decode_node, next_counter, COUNTERS, EPOCH, NEXT_NODE_ID, NODES, WRITE_EPOCH};
use super::Outcome;
use crate::error::{ControlError, Result};
use crate::records::Node;

/// Every registered node, ascending id.
pub(super) fn nodes(txn: &ReadTransaction) -> Result<Vec<(u64, Node)>> {
    let nodes = txn.open_table(NODES)?;
    let mut out = Vec::new();
    for item in nodes.iter()? {
        let (id, value) = item?;
        out.push((id.value(), decode_node(id.value(), value.value())?));
    }
    Ok(out)
}

/// The current cluster-map epoch.
pub(super) fn epoch(txn: &ReadTransaction) -> Result<u64> {
    Ok(txn
        .open_table(COUNTERS)?
        .get(EPOCH)?
        .map(|v| v.value())
        .unwrap_or(0))
}

/// The write-epoch mark: every write epoch handed out is at most it.
pub(super) fn write_epoch_mark(txn: &ReadTransaction) -> Result<u64> {
    Ok(txn
        .open_table(COUNTERS)?
        .get(WRITE_EPOCH)?
        .map(|v| v.value())
        .unwrap_or(0))
}

/// Raises the write-epoch mark to at least `to`; returns the mark.
pub(super) fn advance_write_epoch(counters: &mut redb::Table<&str, u64>, to: u64) -> Result<u64> {
    let mark = counters
        .get(WRITE_EPOCH)?
        .map(|v| v.value())
        .unwrap_or(0)
        .max(to);
    counters.insert(WRITE_EPOCH, mark)?;
    Ok(mark)
}

/// Advances the epoch and returns the new one.
pub(super) fn bump_epoch(counters: &mut redb::Table<&str, u64>) -> Result<u64> {
    let epoch = counters.get(EPOCH)?.map(|v| v.value()).unwrap_or(0) + 1;
    counters.insert(EPOCH, epoch)?;
    Ok(epoch)
}

/// See [`super::Mutation::Join`].
pub(super) fn join(
    txn: &WriteTransaction,
    node_id: u64,
    key: &[u8; 16],
    new_key: &[u8; 16],
    shards: &[String],
) -> Result<Outcome> {
    let mut nodes = txn.open_table(NODES)?;
    let mut counters = txn.open_table(COUNTERS)?;
    let (id, key) = if node_id == 0 {
        (next_counter(&mut counters, NEXT_NODE_ID)?, *new_key)
    } else {
        let known = nodes
            .get(node_id)?
            .map(|v| decode_node(node_id, v.value()))
            .transpose()?;
        match known {
            Some(n) if constant_time_eq(&n.key, key) => (node_id, n.key),
            Some(_) => {
                return Err(ControlError::PermissionDenied(format!(
                    "wrong node key for node {node_id}"
                )))
            }
            None => {
                return Err(ControlError::NotFound(format!(
                    "node {node_id} (not registered with this control server)"
                )))
            }
        }
    };
    let record = Node {
        key,
        shards: shards.to_vec(),
    };
    nodes.insert(id, record.encode().as_slice())?;
    let epoch = bump_epoch(&mut counters)?;
    Ok(Outcome::Joined {
        node_id: id,
        key,
        epoch,
    })
}

/// Compares secrets without an early exit, so timing does not reveal how
/// many leading bytes matched.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
