//! The durable metadata store: namespace, chunk map, registered nodes and
//! counters, in one redb database.
//!
//! Guarantees:
//! - A batch of mutations ([`MetaStore::apply_batch`]) is one redb write
//!   transaction committed with immediate durability: after it returns, every
//!   successful mutation in it is on disk, and readers see none of them before.
//! - Every mutation checks everything it needs *before* its first write, so a
//!   mutation that fails leaves nothing behind: no half-applied change. (redb
//!   offers no savepoint inside a dirty transaction, so this ordering is the
//!   mechanism; the proptest model test in `tests/model.rs` holds us to it.)
//! - A storage error aborts the whole batch: every mutation in it fails and
//!   none is applied.

use std::ops::Bound;
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use crate::error::{ControlError, Result};
use crate::path::{components, split_last};
use crate::records::{Chunk, Inode, Kind, Node, ROOT_INODE};

/// inode number -> [`Inode`]
const INODES: TableDefinition<u64, &[u8]> = TableDefinition::new("inodes");
/// (parent inode, name) -> child inode
const DIRENTS: TableDefinition<(u64, &str), u64> = TableDefinition::new("dirents");
/// (inode, chunk index) -> [`Chunk`]
const CHUNKS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("chunks");
/// node id -> [`Node`]
const NODES: TableDefinition<u64, &[u8]> = TableDefinition::new("nodes");
/// counter name -> value
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
/// chunk id -> [`Chunk`] no longer referenced by any file, to be deleted on
/// its replicas by garbage collection.
const GARBAGE: TableDefinition<u128, &[u8]> = TableDefinition::new("garbage");

const NEXT_INODE: &str = "next_inode";
const NEXT_NODE_ID: &str = "next_node_id";
const EPOCH: &str = "epoch";

/// Largest file size in bytes (2^60): keeps every offset computation far
/// from overflow.
pub const MAX_FILE_SIZE: u64 = 1 << 60;
/// Largest chunk size in bytes.
pub const MAX_CHUNK_SIZE: u32 = 1 << 30;
/// Smallest chunk size in bytes (one O_DIRECT block).
pub const MIN_CHUNK_SIZE: u32 = 4096;
/// Most replicas a file may ask for.
pub const MAX_REPLICATION: u8 = 16;

/// Server-side defaults for new files.
#[derive(Clone, Copy, Debug)]
pub struct FileDefaults {
    pub chunk_size: u32,
    pub replication: u8,
    pub mode: u32,
}

impl Default for FileDefaults {
    fn default() -> Self {
        FileDefaults {
            chunk_size: 64 << 20,
            replication: 3,
            mode: 0o644,
        }
    }
}

/// What a client asked for when creating a file; zero means "default".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CreateOptions {
    pub mode: u32,
    pub chunk_size: u32,
    pub replication: u8,
    pub write_quorum: u8,
    pub exclusive: bool,
}

/// One change to the metadata. Applied by [`MetaStore::apply_batch`].
#[derive(Clone, Debug)]
pub enum Mutation {
    Create {
        path: String,
        options: CreateOptions,
        now_ns: i64,
    },
    Mkdir {
        path: String,
        mode: u32,
        now_ns: i64,
    },
    Unlink {
        path: String,
        now_ns: i64,
    },
    Rmdir {
        path: String,
        now_ns: i64,
    },
    Rename {
        from: String,
        to: String,
        now_ns: i64,
    },
    /// Store chunk records of an open file and set its size.
    CommitChunks {
        inode: u64,
        chunks: Vec<(u64, Chunk)>,
        file_size: u64,
        now_ns: i64,
    },
    SetSize {
        inode: u64,
        size: u64,
        now_ns: i64,
    },
    /// chmod / utimes: the permission bits and/or the modification time
    /// of a file or directory (`None`: unchanged).
    SetAttr {
        path: String,
        mode: Option<u32>,
        mtime_ns: Option<i64>,
    },
    /// Register a new node (`node_id == 0`) or re-register a known one.
    Join {
        node_id: u64,
        key: [u8; 16],
        /// Key for a new node, drawn by the caller (keeps this pure).
        new_key: [u8; 16],
        shards: Vec<String>,
    },
    /// Advance the cluster-map epoch.
    BumpEpoch,
    /// Repair: `target` now holds a durable, verified copy of chunk `id` at
    /// `version` or newer (at least `length` bytes). Applied only if the
    /// record of (`inode`, `index`) still names that chunk at that version; the
    /// replicas in `drop` (lost, stale or corrupt) leave the record.
    ReplicaCopied {
        inode: u64,
        index: u64,
        id: u128,
        version: u64,
        length: u32,
        target: u64,
        drop: Vec<u64>,
    },
    /// Garbage collection: `nodes` confirmed they no longer hold chunk `id`.
    GarbageDone {
        id: u128,
        nodes: Vec<u64>,
    },
}

/// The result of a successful [`Mutation`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Done,
    Attr(u64, Inode),
    Joined {
        node_id: u64,
        key: [u8; 16],
        epoch: u64,
    },
    Epoch(u64),
}

/// One chunk record with what repair needs of its file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapEntry {
    pub inode: u64,
    pub index: u64,
    pub chunk: Chunk,
    /// The file's inode, `None` if the record is dangling.
    pub file: Option<Inode>,
}

/// A directory entry as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub inode: u64,
    pub attr: Inode,
}

/// The metadata database. Reads may run on any thread concurrently with one
/// writer (redb MVCC); mutations go through [`MetaStore::apply_batch`].
pub struct MetaStore {
    db: Database,
    defaults: FileDefaults,
}

impl MetaStore {
    /// Opens (creating if needed) the database at `path`; a new database
    /// gets the root directory and its counters.
    pub fn open(path: &Path, defaults: FileDefaults) -> Result<Self> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        {
            let mut inodes = txn.open_table(INODES)?;
            txn.open_table(DIRENTS)?;
            txn.open_table(CHUNKS)?;
            txn.open_table(NODES)?;
            txn.open_table(GARBAGE)?;
            let mut counters = txn.open_table(COUNTERS)?;
            if inodes.get(ROOT_INODE)?.is_none() {
                let root = Inode {
                    kind: Kind::Directory,
                    parent: ROOT_INODE,
                    size: 0,
                    mode: 0o755,
                    mtime_ns: 0,
                    chunk_size: 0,
                    replication: 0,
                    write_quorum: 0,
                    version: 1,
                };
                inodes.insert(ROOT_INODE, root.encode().as_slice())?;
                counters.insert(NEXT_INODE, ROOT_INODE + 1)?;
                counters.insert(NEXT_NODE_ID, 1)?;
                counters.insert(EPOCH, 0)?;
            }
        }
        txn.commit()?;
        Ok(MetaStore { db, defaults })
    }

    // ---------------------------------------------------------------- reads

    /// The inode at `path`.
    pub fn stat(&self, path: &str) -> Result<(u64, Inode)> {
        let comps = components(path)?;
        let txn = self.db.begin_read()?;
        resolve(
            &txn.open_table(INODES)?,
            &txn.open_table(DIRENTS)?,
            path,
            &comps,
        )
    }

    /// The inode numbered `inode`, if it exists.
    pub fn inode(&self, inode: u64) -> Result<Option<Inode>> {
        let txn = self.db.begin_read()?;
        get_inode(&txn.open_table(INODES)?, inode)
    }

    /// Up to `limit` entries of the directory at `path` whose names sort
    /// after `after` (byte order), and whether more follow.
    pub fn list(&self, path: &str, after: &str, limit: usize) -> Result<(Vec<Entry>, bool)> {
        let comps = components(path)?;
        let txn = self.db.begin_read()?;
        let inodes = txn.open_table(INODES)?;
        let dirents = txn.open_table(DIRENTS)?;
        let (dir, attr) = resolve(&inodes, &dirents, path, &comps)?;
        if attr.kind != Kind::Directory {
            return Err(ControlError::NotDirectory(path.to_string()));
        }
        let start = if after.is_empty() {
            Bound::Included((dir, ""))
        } else {
            Bound::Excluded((dir, after))
        };
        let mut out = Vec::new();
        for item in dirents.range((start, Bound::Excluded((dir + 1, ""))))? {
            let (key, child) = item?;
            if out.len() == limit {
                return Ok((out, true));
            }
            let child = child.value();
            let attr = get_inode(&inodes, child)?
                .ok_or_else(|| ControlError::Corrupt(format!("dangling entry to inode {child}")))?;
            out.push(Entry {
                name: key.value().1.to_string(),
                inode: child,
                attr,
            });
        }
        Ok((out, false))
    }

    /// Chunk records of `inode` with index in `[first, first + count)`.
    pub fn chunks(&self, inode: u64, first: u64, count: u64) -> Result<Vec<(u64, Chunk)>> {
        let txn = self.db.begin_read()?;
        let chunks = txn.open_table(CHUNKS)?;
        let end = first.saturating_add(count);
        let mut out = Vec::new();
        for item in chunks.range((inode, first)..(inode, end))? {
            let (key, value) = item?;
            out.push((key.value().1, Chunk::decode(value.value())?));
        }
        Ok(out)
    }

    /// Every registered node, ascending id.
    pub fn nodes(&self) -> Result<Vec<(u64, Node)>> {
        let txn = self.db.begin_read()?;
        let nodes = txn.open_table(NODES)?;
        let mut out = Vec::new();
        for item in nodes.iter()? {
            let (id, value) = item?;
            out.push((id.value(), Node::decode(value.value())?));
        }
        Ok(out)
    }

    /// Chunks no file references any more, awaiting deletion on their nodes.
    pub fn garbage(&self) -> Result<Vec<Chunk>> {
        let txn = self.db.begin_read()?;
        let garbage = txn.open_table(GARBAGE)?;
        let mut out = Vec::new();
        for item in garbage.iter()? {
            out.push(Chunk::decode(item?.1.value())?);
        }
        Ok(out)
    }

    /// Every chunk record with its file's inode, in (inode, index) order.
    /// One read snapshot: a consistent view for repair and fsck.
    pub fn chunk_map(&self) -> Result<Vec<MapEntry>> {
        let txn = self.db.begin_read()?;
        let chunks = txn.open_table(CHUNKS)?;
        let inodes = txn.open_table(INODES)?;
        let mut out = Vec::new();
        let mut file: Option<(u64, Option<Inode>)> = None;
        for item in chunks.iter()? {
            let (key, value) = item?;
            let (inode, index) = key.value();
            if file.as_ref().is_none_or(|(i, _)| *i != inode) {
                file = Some((inode, get_inode(&inodes, inode)?));
            }
            out.push(MapEntry {
                inode,
                index,
                chunk: Chunk::decode(value.value())?,
                file: file.as_ref().and_then(|(_, a)| a.clone()),
            });
        }
        Ok(out)
    }

    /// The path of every inode that has one (files and directories), for
    /// reports that name files.
    pub fn paths(&self) -> Result<std::collections::HashMap<u64, String>> {
        let txn = self.db.begin_read()?;
        let dirents = txn.open_table(DIRENTS)?;
        let mut parent = std::collections::HashMap::new();
        for item in dirents.iter()? {
            let (key, child) = item?;
            let (dir, name) = key.value();
            parent.insert(child.value(), (dir, name.to_string()));
        }
        let mut out = std::collections::HashMap::new();
        for &ino in parent.keys() {
            let mut parts = Vec::new();
            let mut cur = ino;
            // Bounded walk: a damaged tree with a cycle must not hang us.
            while let Some((dir, name)) = parent.get(&cur) {
                parts.push(name.as_str());
                cur = *dir;
                if cur == ROOT_INODE || parts.len() > 4096 {
                    break;
                }
            }
            parts.reverse();
            out.insert(ino, format!("/{}", parts.join("/")));
        }
        out.insert(ROOT_INODE, "/".to_string());
        Ok(out)
    }

    /// The current cluster-map epoch.
    pub fn epoch(&self) -> Result<u64> {
        let txn = self.db.begin_read()?;
        Ok(txn
            .open_table(COUNTERS)?
            .get(EPOCH)?
            .map(|v| v.value())
            .unwrap_or(0))
    }

    // --------------------------------------------------------------- writes

    /// Applies `batch` in one durable transaction (group commit). Returns one
    /// result per mutation, in order; `Err` for the whole batch only when the
    /// transaction itself failed (then nothing was applied).
    pub fn apply_batch(&self, batch: &[Mutation]) -> Result<Vec<Result<Outcome>>> {
        let txn = self.db.begin_write()?;
        let results = batch
            .iter()
            .map(|m| apply(&txn, &self.defaults, m))
            .collect::<Vec<_>>();
        // A storage or corruption error may have struck after a write began:
        // the only safe answer is to drop the whole transaction.
        if let Some(Err(e)) = results
            .iter()
            .find(|r| matches!(r, Err(ControlError::Store(_) | ControlError::Corrupt(_))))
        {
            let msg = e.to_string();
            txn.abort()?;
            return Err(ControlError::Store(msg));
        }
        txn.commit()?;
        Ok(results)
    }
}

// ------------------------------------------------------------ table helpers

fn get_inode(inodes: &impl ReadableTable<u64, &'static [u8]>, ino: u64) -> Result<Option<Inode>> {
    inodes
        .get(ino)?
        .map(|v| Inode::decode(v.value()))
        .transpose()
}

fn must_inode(inodes: &impl ReadableTable<u64, &'static [u8]>, ino: u64) -> Result<Inode> {
    get_inode(inodes, ino)?
        .ok_or_else(|| ControlError::Corrupt(format!("entry points to missing inode {ino}")))
}

/// Walks `comps` from the root. Errors name the whole `path`.
fn resolve(
    inodes: &impl ReadableTable<u64, &'static [u8]>,
    dirents: &impl ReadableTable<(u64, &'static str), u64>,
    path: &str,
    comps: &[&str],
) -> Result<(u64, Inode)> {
    let mut ino = ROOT_INODE;
    let mut attr = must_inode(inodes, ino)?;
    for name in comps {
        if attr.kind != Kind::Directory {
            return Err(ControlError::NotDirectory(path.to_string()));
        }
        ino = match dirents.get((ino, *name))? {
            Some(child) => child.value(),
            None => return Err(ControlError::NotFound(path.to_string())),
        };
        attr = must_inode(inodes, ino)?;
    }
    Ok((ino, attr))
}

/// Resolves the parent directory of `path`; returns (parent inode, parent
/// attr, final name).
fn resolve_parent<'p>(
    inodes: &impl ReadableTable<u64, &'static [u8]>,
    dirents: &impl ReadableTable<(u64, &'static str), u64>,
    path: &'p str,
) -> Result<(u64, Inode, &'p str)> {
    let (parent_comps, name) = split_last(path)?;
    let (ino, attr) = resolve(inodes, dirents, path, &parent_comps)?;
    if attr.kind != Kind::Directory {
        return Err(ControlError::NotDirectory(path.to_string()));
    }
    Ok((ino, attr, name))
}

fn next_counter(counters: &mut redb::Table<&str, u64>, name: &str) -> Result<u64> {
    let value = counters
        .get(name)?
        .map(|v| v.value())
        .ok_or_else(|| ControlError::Corrupt(format!("counter {name} is missing")))?;
    counters.insert(name, value + 1)?;
    Ok(value)
}

fn bump_epoch(counters: &mut redb::Table<&str, u64>) -> Result<u64> {
    let epoch = counters.get(EPOCH)?.map(|v| v.value()).unwrap_or(0) + 1;
    counters.insert(EPOCH, epoch)?;
    Ok(epoch)
}

/// Moves every chunk record of `ino` with index >= `first` to the garbage
/// table.
fn drop_chunks_from(txn: &WriteTransaction, ino: u64, first: u64) -> Result<()> {
    let mut chunks = txn.open_table(CHUNKS)?;
    let mut garbage = txn.open_table(GARBAGE)?;
    for item in chunks.extract_from_if((ino, first)..(ino + 1, 0), |_, _| true)? {
        let (_, value) = item?;
        let chunk = Chunk::decode(value.value())?;
        garbage.insert(chunk.id, value.value())?;
    }
    Ok(())
}

fn touch(attr: &mut Inode, now_ns: i64) {
    attr.mtime_ns = now_ns;
    attr.version += 1;
}

// -------------------------------------------------------------- mutations

fn apply(txn: &WriteTransaction, defaults: &FileDefaults, m: &Mutation) -> Result<Outcome> {
    match m {
        Mutation::Create {
            path,
            options,
            now_ns,
        } => create(txn, defaults, path, options, *now_ns),
        Mutation::Mkdir { path, mode, now_ns } => mkdir(txn, path, *mode, *now_ns),
        Mutation::Unlink { path, now_ns } => remove(txn, path, Kind::File, *now_ns),
        Mutation::Rmdir { path, now_ns } => remove(txn, path, Kind::Directory, *now_ns),
        Mutation::Rename { from, to, now_ns } => rename(txn, from, to, *now_ns),
        Mutation::CommitChunks {
            inode,
            chunks,
            file_size,
            now_ns,
        } => commit_chunks(txn, *inode, chunks, *file_size, *now_ns),
        Mutation::SetSize {
            inode,
            size,
            now_ns,
        } => set_size(txn, *inode, *size, *now_ns),
        Mutation::SetAttr {
            path,
            mode,
            mtime_ns,
        } => set_attr(txn, path, *mode, *mtime_ns),
        Mutation::Join {
            node_id,
            key,
            new_key,
            shards,
        } => join(txn, *node_id, key, new_key, shards),
        Mutation::BumpEpoch => Ok(Outcome::Epoch(bump_epoch(&mut txn.open_table(COUNTERS)?)?)),
        Mutation::ReplicaCopied {
            inode,
            index,
            id,
            version,
            length,
            target,
            drop,
        } => replica_copied(txn, *inode, *index, *id, *version, *length, *target, drop),
        Mutation::GarbageDone { id, nodes } => garbage_done(txn, *id, nodes),
    }
}

#[allow(clippy::too_many_arguments)]
fn replica_copied(
    txn: &WriteTransaction,
    ino: u64,
    index: u64,
    id: u128,
    version: u64,
    length: u32,
    target: u64,
    drop: &[u64],
) -> Result<Outcome> {
    let mut chunks = txn.open_table(CHUNKS)?;
    let current = chunks
        .get((ino, index))?
        .map(|v| Chunk::decode(v.value()))
        .transpose()?;
    let Some(mut rec) = current else {
        return Err(ControlError::NotFound(format!(
            "chunk record ({ino}, {index}) is gone (file removed or truncated)"
        )));
    };
    if rec.id != id || rec.version != version || rec.length > length {
        return Err(ControlError::InvalidArgument(format!(
            "chunk record ({ino}, {index}) changed during the copy \
             (now chunk {:x} version {}, copied {id:x} version {version})",
            rec.id, rec.version
        )));
    }
    if txn.open_table(NODES)?.get(target)?.is_none() {
        return Err(ControlError::NotFound(format!("node {target}")));
    }
    let wanted = get_inode(&txn.open_table(INODES)?, ino)?
        .map(|a| a.replication as usize)
        .unwrap_or(0);
    let after = rec
        .replicas
        .iter()
        .filter(|r| !drop.contains(r) || **r == target)
        .count()
        + usize::from(!rec.replicas.contains(&target));
    if after > wanted {
        // Another copy got there first: never list more than R replicas
        // (client commits would then be refused).
        return Err(ControlError::InvalidArgument(format!(
            "chunk record ({ino}, {index}) would list {after} replicas, the file wants {wanted}"
        )));
    }
    // Every check has passed: from here on only writes.
    rec.replicas.retain(|r| !drop.contains(r) || *r == target);
    if !rec.replicas.contains(&target) {
        rec.replicas.push(target);
    }
    chunks.insert((ino, index), rec.encode().as_slice())?;
    Ok(Outcome::Done)
}

fn garbage_done(txn: &WriteTransaction, id: u128, nodes: &[u64]) -> Result<Outcome> {
    let mut garbage = txn.open_table(GARBAGE)?;
    let entry = garbage
        .get(id)?
        .map(|v| Chunk::decode(v.value()))
        .transpose()?;
    if let Some(mut c) = entry {
        c.replicas.retain(|r| !nodes.contains(r));
        if c.replicas.is_empty() {
            garbage.remove(id)?;
        } else {
            garbage.insert(id, c.encode().as_slice())?;
        }
    }
    Ok(Outcome::Done)
}

/// Validates a file's layout options against the server defaults.
pub fn validate_layout(defaults: &FileDefaults, o: &CreateOptions) -> Result<(u32, u8, u8, u32)> {
    let bad = |s: String| Err(ControlError::InvalidArgument(s));
    let chunk_size = if o.chunk_size == 0 {
        defaults.chunk_size
    } else {
        o.chunk_size
    };
    if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size)
        || !chunk_size.is_multiple_of(MIN_CHUNK_SIZE)
    {
        return bad(format!(
            "chunk size {chunk_size} must be a multiple of 4096 between 4 KiB and 1 GiB"
        ));
    }
    let replication = if o.replication == 0 {
        defaults.replication
    } else {
        o.replication
    };
    if replication > MAX_REPLICATION {
        return bad(format!(
            "replication {replication} is above {MAX_REPLICATION}"
        ));
    }
    let quorum = if o.write_quorum == 0 {
        replication
    } else {
        o.write_quorum
    };
    if quorum > replication {
        return bad(format!(
            "write quorum {quorum} is above the replication {replication}"
        ));
    }
    let mode = if o.mode == 0 { defaults.mode } else { o.mode };
    if mode > 0o7777 {
        return bad(format!("mode {mode:o} has bits beyond 0o7777"));
    }
    Ok((chunk_size, replication, quorum, mode))
}

fn create(
    txn: &WriteTransaction,
    defaults: &FileDefaults,
    path: &str,
    options: &CreateOptions,
    now_ns: i64,
) -> Result<Outcome> {
    let (chunk_size, replication, write_quorum, mode) = validate_layout(defaults, options)?;
    let mut inodes = txn.open_table(INODES)?;
    let mut dirents = txn.open_table(DIRENTS)?;
    let (parent, mut parent_attr, name) = resolve_parent(&inodes, &dirents, path)?;
    if let Some(existing) = dirents.get((parent, name))? {
        let ino = existing.value();
        let attr = must_inode(&inodes, ino)?;
        return match (options.exclusive, attr.kind) {
            (true, _) => Err(ControlError::Exists(path.to_string())),
            (false, Kind::Directory) => Err(ControlError::IsDirectory(path.to_string())),
            (false, Kind::File) => Ok(Outcome::Attr(ino, attr)),
        };
    }
    let attr = Inode {
        kind: Kind::File,
        parent,
        size: 0,
        mode,
        mtime_ns: now_ns,
        chunk_size,
        replication,
        write_quorum,
        version: 1,
    };
    link_new(
        txn,
        &mut inodes,
        &mut dirents,
        (parent, &mut parent_attr),
        name,
        attr,
    )
}

/// Allocates an inode number for `attr` (new, checks done), links it as
/// `name` in `parent`, and touches the parent.
fn link_new(
    txn: &WriteTransaction,
    inodes: &mut redb::Table<u64, &[u8]>,
    dirents: &mut redb::Table<(u64, &str), u64>,
    (parent, parent_attr): (u64, &mut Inode),
    name: &str,
    attr: Inode,
) -> Result<Outcome> {
    let ino = next_counter(&mut txn.open_table(COUNTERS)?, NEXT_INODE)?;
    inodes.insert(ino, attr.encode().as_slice())?;
    dirents.insert((parent, name), ino)?;
    touch(parent_attr, attr.mtime_ns);
    inodes.insert(parent, parent_attr.encode().as_slice())?;
    Ok(Outcome::Attr(ino, attr))
}

fn mkdir(txn: &WriteTransaction, path: &str, mode: u32, now_ns: i64) -> Result<Outcome> {
    let mode = if mode == 0 { 0o755 } else { mode };
    if mode > 0o7777 {
        return Err(ControlError::InvalidArgument(format!(
            "mode {mode:o} has bits beyond 0o7777"
        )));
    }
    let mut inodes = txn.open_table(INODES)?;
    let mut dirents = txn.open_table(DIRENTS)?;
    let (parent, mut parent_attr, name) = resolve_parent(&inodes, &dirents, path)?;
    if dirents.get((parent, name))?.is_some() {
        return Err(ControlError::Exists(path.to_string()));
    }
    let attr = Inode {
        kind: Kind::Directory,
        parent,
        size: 0,
        mode,
        mtime_ns: now_ns,
        chunk_size: 0,
        replication: 0,
        write_quorum: 0,
        version: 1,
    };
    link_new(
        txn,
        &mut inodes,
        &mut dirents,
        (parent, &mut parent_attr),
        name,
        attr,
    )
}

fn is_empty_dir(dirents: &impl ReadableTable<(u64, &'static str), u64>, ino: u64) -> Result<bool> {
    Ok(dirents.range((ino, "")..(ino + 1, ""))?.next().is_none())
}

/// unlink (`kind == File`) or rmdir (`kind == Directory`).
fn remove(txn: &WriteTransaction, path: &str, kind: Kind, now_ns: i64) -> Result<Outcome> {
    let mut inodes = txn.open_table(INODES)?;
    let mut dirents = txn.open_table(DIRENTS)?;
    let (parent, mut parent_attr, name) = resolve_parent(&inodes, &dirents, path)?;
    let ino = match dirents.get((parent, name))? {
        Some(v) => v.value(),
        None => return Err(ControlError::NotFound(path.to_string())),
    };
    let attr = must_inode(&inodes, ino)?;
    match (kind, attr.kind) {
        (Kind::File, Kind::Directory) => return Err(ControlError::IsDirectory(path.to_string())),
        (Kind::Directory, Kind::File) => return Err(ControlError::NotDirectory(path.to_string())),
        (Kind::Directory, Kind::Directory) if !is_empty_dir(&dirents, ino)? => {
            return Err(ControlError::NotEmpty(path.to_string()))
        }
        _ => {}
    }
    dirents.remove((parent, name))?;
    inodes.remove(ino)?;
    touch(&mut parent_attr, now_ns);
    inodes.insert(parent, parent_attr.encode().as_slice())?;
    drop(inodes);
    drop(dirents);
    if attr.kind == Kind::File {
        drop_chunks_from(txn, ino, 0)?;
    }
    Ok(Outcome::Done)
}

fn rename(txn: &WriteTransaction, from: &str, to: &str, now_ns: i64) -> Result<Outcome> {
    let mut inodes = txn.open_table(INODES)?;
    let mut dirents = txn.open_table(DIRENTS)?;
    let (src_parent, _, src_name) = resolve_parent(&inodes, &dirents, from)?;
    let (dst_parent, _, dst_name) = resolve_parent(&inodes, &dirents, to)?;
    let ino = match dirents.get((src_parent, src_name))? {
        Some(v) => v.value(),
        None => return Err(ControlError::NotFound(from.to_string())),
    };
    let mut attr = must_inode(&inodes, ino)?;
    if src_parent == dst_parent && src_name == dst_name {
        return Ok(Outcome::Done);
    }
    if attr.kind == Kind::Directory {
        // The destination's parent must not be the source or inside it.
        let mut up = dst_parent;
        loop {
            if up == ino {
                return Err(ControlError::InvalidArgument(format!(
                    "cannot move {from} inside itself ({to})"
                )));
            }
            if up == ROOT_INODE {
                break;
            }
            up = must_inode(&inodes, up)?.parent;
        }
    }
    let replaced = match dirents.get((dst_parent, dst_name))? {
        None => None,
        Some(v) => {
            let old = v.value();
            let old_attr = must_inode(&inodes, old)?;
            match (attr.kind, old_attr.kind) {
                (Kind::File, Kind::Directory) => {
                    return Err(ControlError::IsDirectory(to.to_string()))
                }
                (Kind::Directory, Kind::File) => {
                    return Err(ControlError::NotDirectory(to.to_string()))
                }
                (Kind::Directory, Kind::Directory) if !is_empty_dir(&dirents, old)? => {
                    return Err(ControlError::NotEmpty(to.to_string()))
                }
                _ => Some((old, old_attr.kind)),
            }
        }
    };
    // Every check has passed: from here on only writes.
    dirents.remove((src_parent, src_name))?;
    dirents.insert((dst_parent, dst_name), ino)?;
    attr.parent = dst_parent;
    attr.version += 1;
    inodes.insert(ino, attr.encode().as_slice())?;
    for dir in [src_parent, dst_parent] {
        let mut d = must_inode(&inodes, dir)?;
        touch(&mut d, now_ns);
        inodes.insert(dir, d.encode().as_slice())?;
        if src_parent == dst_parent {
            break;
        }
    }
    if let Some((old, kind)) = replaced {
        inodes.remove(old)?;
        drop(inodes);
        drop(dirents);
        if kind == Kind::File {
            drop_chunks_from(txn, old, 0)?;
        }
    }
    Ok(Outcome::Done)
}

/// Byte offset just past the data of chunk `index` of `length` bytes.
fn chunk_end(index: u64, chunk_size: u32, length: u32) -> Option<u64> {
    index
        .checked_mul(chunk_size as u64)?
        .checked_add(length as u64)
}

fn open_file(inodes: &impl ReadableTable<u64, &'static [u8]>, ino: u64) -> Result<Inode> {
    match get_inode(inodes, ino)? {
        Some(a) if a.kind == Kind::File => Ok(a),
        Some(_) => Err(ControlError::IsDirectory(format!("inode {ino}"))),
        None => Err(ControlError::StaleHandle(format!(
            "inode {ino} was removed while open"
        ))),
    }
}

fn commit_chunks(
    txn: &WriteTransaction,
    ino: u64,
    new: &[(u64, Chunk)],
    file_size: u64,
    now_ns: i64,
) -> Result<Outcome> {
    let bad = |s: String| Err(ControlError::InvalidArgument(s));
    let mut inodes = txn.open_table(INODES)?;
    let mut attr = open_file(&inodes, ino)?;
    if file_size > MAX_FILE_SIZE {
        return bad(format!(
            "file size {file_size} is above the limit {MAX_FILE_SIZE}"
        ));
    }
    if file_size < attr.size {
        return bad(format!(
            "commit would shrink the file from {} to {file_size} bytes; truncate with setSize",
            attr.size
        ));
    }
    let known_nodes = {
        let nodes = txn.open_table(NODES)?;
        let mut ids = Vec::new();
        for item in nodes.iter()? {
            ids.push(item?.0.value());
        }
        ids
    };
    let mut chunks = txn.open_table(CHUNKS)?;
    let mut replaced = Vec::new();
    for (i, (index, c)) in new.iter().enumerate() {
        if new[..i].iter().any(|(j, _)| j == index) {
            return bad(format!("chunk index {index} appears twice in one commit"));
        }
        if c.length > attr.chunk_size {
            return bad(format!(
                "chunk {index}: length {} is above the chunk size {}",
                c.length, attr.chunk_size
            ));
        }
        match chunk_end(*index, attr.chunk_size, c.length) {
            Some(end) if end <= file_size => {}
            _ => {
                return bad(format!(
                    "chunk {index} ends past the committed file size {file_size}"
                ))
            }
        }
        let n = c.replicas.len();
        if n == 0 || n > attr.replication as usize || n < attr.write_quorum as usize {
            return bad(format!(
                "chunk {index}: {n} replicas, the file needs {}..={}",
                attr.write_quorum, attr.replication
            ));
        }
        for (k, r) in c.replicas.iter().enumerate() {
            if c.replicas[..k].contains(r) {
                return bad(format!("chunk {index}: node {r} listed twice"));
            }
            if !known_nodes.contains(r) {
                return bad(format!("chunk {index}: node {r} is not registered"));
            }
        }
        if let Some(old) = chunks.get((ino, *index))? {
            let old = Chunk::decode(old.value())?;
            if c.version <= old.version {
                return bad(format!(
                    "chunk {index}: version {} is not above the committed {}",
                    c.version, old.version
                ));
            }
            if old.id != c.id {
                replaced.push(old);
            }
        }
    }
    // Every check has passed: from here on only writes.
    for (index, c) in new {
        chunks.insert((ino, *index), c.encode().as_slice())?;
    }
    if !replaced.is_empty() {
        let mut garbage = txn.open_table(GARBAGE)?;
        for old in replaced {
            garbage.insert(old.id, old.encode().as_slice())?;
        }
    }
    attr.size = file_size;
    touch(&mut attr, now_ns);
    inodes.insert(ino, attr.encode().as_slice())?;
    Ok(Outcome::Attr(ino, attr))
}

fn set_size(txn: &WriteTransaction, ino: u64, size: u64, now_ns: i64) -> Result<Outcome> {
    let mut inodes = txn.open_table(INODES)?;
    let mut attr = open_file(&inodes, ino)?;
    if size > MAX_FILE_SIZE {
        return Err(ControlError::InvalidArgument(format!(
            "size {size} is above the limit {MAX_FILE_SIZE}"
        )));
    }
    if size < attr.size {
        let cs = attr.chunk_size as u64;
        // The chunk holding the new end keeps only the bytes before it, so
        // that a later extension reads zeros there, not the old bytes.
        let first_dropped = size.div_ceil(cs);
        if !size.is_multiple_of(cs) {
            let mut chunks = txn.open_table(CHUNKS)?;
            let index = size / cs;
            let kept = chunks
                .get((ino, index))?
                .map(|v| Chunk::decode(v.value()))
                .transpose()?;
            if let Some(mut c) = kept {
                c.length = c.length.min((size % cs) as u32);
                chunks.insert((ino, index), c.encode().as_slice())?;
            }
        }
        drop_chunks_from(txn, ino, first_dropped)?;
    }
    attr.size = size;
    touch(&mut attr, now_ns);
    inodes.insert(ino, attr.encode().as_slice())?;
    Ok(Outcome::Attr(ino, attr))
}

fn set_attr(
    txn: &WriteTransaction,
    path: &str,
    mode: Option<u32>,
    mtime_ns: Option<i64>,
) -> Result<Outcome> {
    if let Some(mode) = mode.filter(|m| *m > 0o7777) {
        return Err(ControlError::InvalidArgument(format!(
            "mode {mode:o} has bits beyond 0o7777"
        )));
    }
    let comps = components(path)?;
    let mut inodes = txn.open_table(INODES)?;
    let dirents = txn.open_table(DIRENTS)?;
    let (ino, mut attr) = resolve(&inodes, &dirents, path, &comps)?;
    // Every check has passed: from here on only writes.
    if let Some(mode) = mode {
        attr.mode = mode;
    }
    if let Some(t) = mtime_ns {
        attr.mtime_ns = t;
    }
    attr.version += 1;
    inodes.insert(ino, attr.encode().as_slice())?;
    Ok(Outcome::Attr(ino, attr))
}

fn join(
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
            .map(|v| Node::decode(v.value()))
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
