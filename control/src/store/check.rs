//! The store's consistency check: the invariants every committed state
//! holds, checked over one read snapshot (see
//! [`super::MetaStore::consistency_problems`]).

use std::collections::{BTreeMap, HashMap};

use redb::{ReadTransaction, ReadableTable};

use super::chunk_map::chunk_end;
use super::tables::{
    decode_chunk, decode_node, CHUNKS, COUNTERS, DIRENTS, INODES, NEXT_INODE, NEXT_NODE_ID, NODES,
};
use crate::error::{ControlError, Result};
use crate::records::{Inode, Kind, ROOT_INODE};

/// Every violated invariant, one line each.
pub(super) fn problems(txn: &ReadTransaction) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut inodes = BTreeMap::new();
    for item in txn.open_table(INODES)?.iter()? {
        let (ino, value) = item?;
        let ino = ino.value();
        let attr = Inode::decode(value.value())
            .map_err(|e| ControlError::corrupt(format!("inode {ino}"), e.problem))?;
        inodes.insert(ino, attr);
    }
    match inodes.get(&ROOT_INODE) {
        Some(root) if root.kind == Kind::Directory && root.parent == ROOT_INODE => {}
        other => out.push(format!("the root directory is {other:?}")),
    }

    // Entries: each leads from a directory to an inode whose parent it is;
    // every inode but the root is named exactly once.
    let mut named: HashMap<u64, u32> = HashMap::new();
    for item in txn.open_table(DIRENTS)?.iter()? {
        let (key, child) = item?;
        let (dir, name) = key.value();
        let child = child.value();
        *named.entry(child).or_default() += 1;
        match inodes.get(&dir) {
            Some(d) if d.kind == Kind::Directory => {}
            Some(_) => out.push(format!("entry ({dir}, {name:?}): {dir} is not a directory")),
            None => out.push(format!(
                "entry ({dir}, {name:?}): directory {dir} is missing"
            )),
        }
        match inodes.get(&child) {
            None => out.push(format!("entry ({dir}, {name:?}): inode {child} is missing")),
            Some(a) if a.parent != dir => out.push(format!(
                "entry ({dir}, {name:?}): inode {child} has parent {}",
                a.parent
            )),
            Some(_) => {}
        }
        if child == ROOT_INODE {
            out.push(format!("entry ({dir}, {name:?}) names the root"));
        }
    }
    for (&ino, attr) in &inodes {
        if ino == ROOT_INODE {
            continue;
        }
        match named.get(&ino).copied().unwrap_or(0) {
            1 => {}
            n => out.push(format!("inode {ino} is named by {n} entries")),
        }
        // The parents lead to the root (no cycle, no detached subtree).
        let mut up = attr.parent;
        let mut steps = 0;
        while up != ROOT_INODE && steps <= inodes.len() {
            up = inodes.get(&up).map_or(ROOT_INODE, |a| a.parent);
            steps += 1;
        }
        if steps > inodes.len() {
            out.push(format!("inode {ino}: its parents form a cycle"));
        }
    }

    // Chunk records: of an existing file, within its size and chunk size,
    // on registered nodes.
    let mut nodes = Vec::new();
    for item in txn.open_table(NODES)?.iter()? {
        let (id, value) = item?;
        decode_node(id.value(), value.value())?;
        nodes.push(id.value());
    }
    for item in txn.open_table(CHUNKS)?.iter()? {
        let (key, value) = item?;
        let (ino, index) = key.value();
        let c = decode_chunk(ino, index, value.value())?;
        let Some(file) = inodes.get(&ino).filter(|a| a.kind == Kind::File) else {
            out.push(format!("chunk ({ino}, {index}): no file {ino}"));
            continue;
        };
        if c.length > file.chunk_size
            || chunk_end(index, file.chunk_size, c.length).is_none_or(|end| end > file.size)
        {
            out.push(format!(
                "chunk ({ino}, {index}): {} bytes do not fit chunk size {} and file size {}",
                c.length, file.chunk_size, file.size
            ));
        }
        if c.replicas.is_empty() || c.replicas.iter().any(|r| !nodes.contains(r)) {
            out.push(format!(
                "chunk ({ino}, {index}): replicas {:?} are not registered nodes",
                c.replicas
            ));
        }
    }

    // Counters: above every id in use.
    let counters = txn.open_table(COUNTERS)?;
    let counter =
        |name: &str| -> Result<u64> { Ok(counters.get(name)?.map(|v| v.value()).unwrap_or(0)) };
    let next_inode = counter(NEXT_INODE)?;
    if let Some((&max, _)) = inodes.last_key_value() {
        if next_inode <= max {
            out.push(format!("next_inode {next_inode} is not above inode {max}"));
        }
    }
    let next_node = counter(NEXT_NODE_ID)?;
    if let Some(&max) = nodes.iter().max() {
        if next_node <= max {
            out.push(format!("next_node_id {next_node} is not above node {max}"));
        }
    }
    Ok(out)
}
