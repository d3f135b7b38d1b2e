//! The chunk map: where each chunk of each file lives (`chunks`), the
//! chunks no file references any more (`garbage`), and the mutations that
//! change them (commit, truncate, a repaired replica, a collected chunk).
//!
//! Every mutation checks everything it needs before its first write (see
//! [`super`]).

use redb::{ReadTransaction, ReadableTable, WriteTransaction};

use super::access::Caller;
use super::namespace::{self, CreateOptions, FileDefaults};
use super::tables::{
    decode_chunk, decode_garbage, get_chunk, get_inode, CHUNKS, GARBAGE, INODES, NODES,
};
use super::Outcome;
use crate::error::{ControlError, Result};
use crate::records::{Chunk, Inode, Kind};
use ringfs_schema::Version;

/// Largest file size in bytes (2^60): keeps every offset computation far
/// from overflow.
pub const MAX_FILE_SIZE: u64 = 1 << 60;

/// One chunk record with what repair needs of its file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapEntry {
    /// The file's inode number.
    pub inode: u64,
    /// The chunk's index in the file.
    pub index: u64,
    /// The record.
    pub chunk: Chunk,
    /// The file's inode, `None` if the record is dangling.
    pub file: Option<Inode>,
}

// ------------------------------------------------------------------ reads

/// The first `limit` chunk records of `inode` with index in `[first,
/// first + count)`, ascending, and whether the range holds more.
pub(super) fn chunks(
    txn: &ReadTransaction,
    inode: u64,
    first: u64,
    count: u64,
    limit: usize,
) -> Result<(Vec<(u64, Chunk)>, bool)> {
    let chunks = txn.open_table(CHUNKS)?;
    let end = first.saturating_add(count);
    let mut out = Vec::new();
    for item in chunks.range((inode, first)..(inode, end))? {
        if out.len() == limit {
            return Ok((out, true));
        }
        let (key, value) = item?;
        let index = key.value().1;
        out.push((index, decode_chunk(inode, index, value.value())?));
    }
    Ok((out, false))
}

/// Chunks no file references any more.
pub(super) fn garbage(txn: &ReadTransaction) -> Result<Vec<Chunk>> {
    let garbage = txn.open_table(GARBAGE)?;
    let mut out = Vec::new();
    for item in garbage.iter()? {
        let (id, value) = item?;
        out.push(decode_garbage(id.value(), value.value())?);
    }
    Ok(out)
}

/// Every chunk record with its file's inode, in (inode, index) order.
pub(super) fn chunk_map(txn: &ReadTransaction) -> Result<Vec<MapEntry>> {
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
            chunk: decode_chunk(inode, index, value.value())?,
            file: file.as_ref().and_then(|(_, a)| a.clone()),
        });
    }
    Ok(out)
}

// ---------------------------------------------------------------- helpers

/// Byte offset just past the data of chunk `index` of `length` bytes.
pub(super) fn chunk_end(index: u64, chunk_size: u32, length: u32) -> Option<u64> {
    index
        .checked_mul(chunk_size as u64)?
        .checked_add(length as u64)
}

/// The inode of a file open as `ino`.
fn open_file(inodes: &impl ReadableTable<u64, &'static [u8]>, ino: u64) -> Result<Inode> {
    match get_inode(inodes, ino)? {
        Some(a) if a.kind == Kind::File => Ok(a),
        Some(_) => Err(ControlError::IsDirectory(format!("inode {ino}"))),
        None => Err(ControlError::StaleHandle(format!(
            "inode {ino} was removed while open"
        ))),
    }
}

/// Moves every chunk record of `ino` with index >= `first` to the garbage
/// table. Writes only: callers have done their checks.
pub(super) fn drop_chunks_from(txn: &WriteTransaction, ino: u64, first: u64) -> Result<()> {
    let mut chunks = txn.open_table(CHUNKS)?;
    let mut garbage = txn.open_table(GARBAGE)?;
    for item in chunks.extract_from_if((ino, first)..(ino + 1, 0), |_, _| true)? {
        let (key, value) = item?;
        let (_, index) = key.value();
        let chunk = decode_chunk(ino, index, value.value())?;
        garbage.insert(chunk.id, value.value())?;
    }
    Ok(())
}

// -------------------------------------------------------------- mutations

/// See [`super::Mutation::CommitChunks`]. A record of the chunk already at
/// its index may not go back to an older version (the same version is
/// fine: the writer changed the replica list, e.g. added a copy); a record
/// of another chunk must carry `epoch` (written under the committing lease,
/// which garbage collection spares) and must not be a chunk the file
/// dropped (in the garbage table): committing it would commit a hole.
pub(super) fn commit_chunks(
    txn: &WriteTransaction,
    ino: u64,
    epoch: u64,
    new: &[(u64, Chunk)],
    file_size: u64,
    now_ns: i64,
) -> Result<Outcome> {
    let attr = open_file(&txn.open_table(INODES)?, ino)?;
    if file_size < attr.size {
        return Err(ControlError::InvalidArgument(format!(
            "commit would shrink the file from {} to {file_size} bytes; truncate with setSize",
            attr.size
        )));
    }
    let plan = check_records(txn, ino, attr, epoch, new, file_size, u64::MAX)?;
    // Every check has passed: from here on only writes.
    let (ino, attr) = plan.apply(txn, new, now_ns)?;
    Ok(Outcome::Attr(ino, attr))
}

/// One file of a [`super::Mutation::CommitTransaction`].
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct TxFile {
    /// The file.
    pub inode: u64,
    /// The write epoch of the lease the transaction holds on it.
    pub epoch: u64,
    /// First truncate to this size (`u64::MAX`: no truncation).
    pub truncate_to: u64,
    /// (chunk index, record) pairs stored after the truncation.
    pub chunks: Vec<(u64, Chunk)>,
    /// The file's size afterwards, exactly.
    pub file_size: u64,
}

/// Most files one transaction commits.
pub const MAX_TX_FILES: usize = 64;

/// A file a [`super::Mutation::CommitTransaction`] creates: its inode
/// number (reserved by [`super::Mutation::ReserveInode`], a file of the
/// transaction), where it is linked, and its layout.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct TxCreate {
    /// The reserved inode number.
    pub inode: u64,
    /// Absolute path.
    pub path: String,
    /// Layout and mode, as for a create (exclusive: the path must be free).
    pub options: CreateOptions,
}

/// What one transaction changes.
pub(super) struct TxChanges<'a> {
    pub files: &'a [TxFile],
    pub creates: &'a [TxCreate],
    pub unlinks: &'a [String],
}

/// See [`super::Mutation::CommitTransaction`]: everything is checked
/// before the first write, so a refusal of anything leaves everything as
/// it was. Creates are checked as exclusive creates by `who` (and their
/// inode numbers must be linked nowhere yet), unlinks as unlinks by `who`;
/// no path is both created and unlinked, none twice, and no file of the
/// transaction is unlinked. Then the created files are linked, the
/// unlinked ones removed (their chunks to garbage), and each file
/// truncated (as [`set_size`] does) and its records stored (as
/// [`commit_chunks`] does). A record may not name a chunk the truncation
/// drops from the file (it would be collected while recorded), and no
/// chunk id may appear twice in the transaction.
pub(super) fn commit_transaction(
    txn: &WriteTransaction,
    defaults: &FileDefaults,
    who: &Caller,
    tx: TxChanges<'_>,
    now_ns: i64,
) -> Result<Outcome> {
    let TxChanges {
        files,
        creates,
        unlinks,
    } = tx;
    let bad = |s: String| Err(ControlError::InvalidArgument(s));
    if files.is_empty() || files.len() > MAX_TX_FILES || unlinks.len() > MAX_TX_FILES {
        return bad(format!(
            "a transaction commits 1 to {MAX_TX_FILES} files and unlinks at most \
             {MAX_TX_FILES}, not {} and {}",
            files.len(),
            unlinks.len()
        ));
    }
    // By their components: "/d/f" and "/d/f/" name one entry.
    let mut paths = std::collections::HashSet::new();
    let mut created = Vec::with_capacity(creates.len());
    for c in creates {
        if !paths.insert(crate::path::components(&c.path)?) {
            return bad(format!("{} is created twice in one transaction", c.path));
        }
        if !files.iter().any(|f| f.inode == c.inode) {
            return bad(format!(
                "the create of {} names no file of the transaction",
                c.path
            ));
        }
        if created.iter().any(|(ino, _)| *ino == c.inode) || inode_exists(txn, c.inode)? {
            return bad(format!(
                "inode {} is not a reserved one (the create of {})",
                c.inode, c.path
            ));
        }
        let exclusive = CreateOptions {
            exclusive: true,
            ..c.options
        };
        let attr = namespace::check_create(txn, defaults, who, &c.path, &exclusive, now_ns)?;
        created.push((c.inode, attr));
    }
    for path in unlinks {
        if !paths.insert(crate::path::components(path)?) {
            return bad(format!(
                "{path} is unlinked twice, or created and unlinked, in one transaction"
            ));
        }
        let ino = namespace::check_unlink(txn, who, path)?;
        if files.iter().any(|f| f.inode == ino) {
            return bad(format!(
                "{path} is both written and unlinked in one transaction"
            ));
        }
    }
    let mut ids = std::collections::HashSet::new();
    let mut plans = Vec::with_capacity(files.len());
    for (i, f) in files.iter().enumerate() {
        if files[..i].iter().any(|g| g.inode == f.inode) {
            return bad(format!(
                "inode {} appears twice in one transaction",
                f.inode
            ));
        }
        for (index, c) in &f.chunks {
            if !ids.insert(c.id) {
                return bad(format!(
                    "chunk {:032x} (index {index} of inode {}) appears twice in one transaction",
                    c.id, f.inode
                ));
            }
        }
        let attr = match created.iter().find(|(ino, _)| *ino == f.inode) {
            Some((_, attr)) => attr.clone(),
            None => open_file(&txn.open_table(INODES)?, f.inode)?,
        };
        let cut = f.truncate_to.min(f.file_size);
        plans.push(check_records(
            txn,
            f.inode,
            attr,
            f.epoch,
            &f.chunks,
            f.file_size,
            cut,
        )?);
    }
    // Every check of everything has passed: from here on only writes.
    for (c, (ino, attr)) in creates.iter().zip(&created) {
        namespace::link_reserved(txn, who, &c.path, *ino, attr)?;
    }
    for path in unlinks {
        namespace::remove(txn, who, path, Kind::File, now_ns)?;
    }
    let mut attrs = Vec::with_capacity(files.len());
    for (f, plan) in files.iter().zip(plans) {
        let cut = f.truncate_to.min(f.file_size);
        if cut < plan.attr.size {
            truncate(txn, f.inode, plan.attr.chunk_size, cut)?;
        }
        attrs.push(plan.apply(txn, &f.chunks, now_ns)?);
    }
    Ok(Outcome::Attrs(attrs))
}

fn inode_exists(txn: &WriteTransaction, ino: u64) -> Result<bool> {
    Ok(get_inode(&txn.open_table(INODES)?, ino)?.is_some())
}

/// What storing checked records changes: the file's inode as it will be
/// and the records they replace (to the garbage table).
struct CommitPlan {
    ino: u64,
    attr: Inode,
    file_size: u64,
    replaced: Vec<Chunk>,
}

impl CommitPlan {
    /// Stores `new` (the records the plan was checked for), the replaced
    /// ones to garbage, and the size. Writes only.
    fn apply(
        self,
        txn: &WriteTransaction,
        new: &[(u64, Chunk)],
        now_ns: i64,
    ) -> Result<(u64, Inode)> {
        let mut chunks = txn.open_table(CHUNKS)?;
        for (index, c) in new {
            chunks.insert((self.ino, *index), c.encode().as_slice())?;
        }
        if !self.replaced.is_empty() {
            let mut garbage = txn.open_table(GARBAGE)?;
            for old in &self.replaced {
                garbage.insert(old.id, old.encode().as_slice())?;
            }
        }
        let mut attr = self.attr;
        attr.size = self.file_size;
        attr.touch(now_ns);
        txn.open_table(INODES)?
            .insert(self.ino, attr.encode().as_slice())?;
        Ok((self.ino, attr))
    }
}

/// Checks records `new` of file `ino` (inode `attr`) for a commit under
/// `epoch` that leaves the file `file_size` bytes long, after a truncation
/// to `cut` (`u64::MAX`: none): the rules of [`commit_chunks`], and no
/// record of a chunk the truncation drops. Reads only.
fn check_records(
    txn: &WriteTransaction,
    ino: u64,
    attr: Inode,
    epoch: u64,
    new: &[(u64, Chunk)],
    file_size: u64,
    cut: u64,
) -> Result<CommitPlan> {
    let bad = |s: String| Err(ControlError::InvalidArgument(s));
    if file_size > MAX_FILE_SIZE {
        return bad(format!(
            "file size {file_size} is above the limit {MAX_FILE_SIZE}"
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
    // The truncation trims the chunk holding `cut` (a record of that same
    // chunk would undo the trim) and drops every chunk past it (to
    // garbage: a record of one would be collected while recorded).
    let cs = attr.chunk_size as u64;
    let (first_cut, first_dropped) = if cut < attr.size {
        (cut / cs, cut.div_ceil(cs))
    } else {
        (u64::MAX, u64::MAX)
    };
    let chunks = txn.open_table(CHUNKS)?;
    let dropped = txn.open_table(GARBAGE)?;
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
        if c.version.epoch > epoch {
            return bad(format!(
                "chunk {index}: version {} is from an epoch after this lease's {epoch}",
                c.version
            ));
        }
        let old = get_chunk(&chunks, ino, *index)?;
        match &old {
            Some(old) if old.id == c.id => {
                if c.version < old.version {
                    return bad(format!(
                        "chunk {index}: version {} is older than the committed {}",
                        c.version, old.version
                    ));
                }
                if *index >= first_cut {
                    return bad(format!(
                        "chunk {index}: chunk {:032x} is cut by this commit's truncation",
                        c.id
                    ));
                }
            }
            _ => {
                if c.version.epoch != epoch || c.version == Version::NONE {
                    return bad(format!(
                        "chunk {index}: chunk {:032x} at version {} was not written under this \
                         lease (epoch {epoch}); it may have been collected",
                        c.id, c.version
                    ));
                }
                if dropped.get(c.id)?.is_some() {
                    return bad(format!(
                        "chunk {index}: chunk {:032x} was dropped from the file (truncated or \
                         replaced) and is being deleted; committing it would commit a hole",
                        c.id
                    ));
                }
            }
        }
        // A record the truncation drops is collected by it already.
        if let Some(old) = old.filter(|o| o.id != c.id && *index < first_dropped) {
            replaced.push(old);
        }
    }
    Ok(CommitPlan {
        ino,
        attr,
        file_size,
        replaced,
    })
}

pub(super) fn set_size(
    txn: &WriteTransaction,
    ino: u64,
    size: u64,
    now_ns: i64,
) -> Result<Outcome> {
    let mut inodes = txn.open_table(INODES)?;
    let mut attr = open_file(&inodes, ino)?;
    if size > MAX_FILE_SIZE {
        return Err(ControlError::InvalidArgument(format!(
            "size {size} is above the limit {MAX_FILE_SIZE}"
        )));
    }
    // Every check has passed: from here on only writes.
    if size < attr.size {
        truncate(txn, ino, attr.chunk_size, size)?;
    }
    attr.size = size;
    attr.touch(now_ns);
    inodes.insert(ino, attr.encode().as_slice())?;
    Ok(Outcome::Attr(ino, attr))
}

/// Drops the chunk records of `ino` past `size` bytes (to garbage). The
/// chunk holding the new end keeps only the bytes before it, so that a
/// later extension reads zeros there, not the old bytes. Writes only.
fn truncate(txn: &WriteTransaction, ino: u64, chunk_size: u32, size: u64) -> Result<()> {
    let cs = chunk_size as u64;
    if !size.is_multiple_of(cs) {
        let mut chunks = txn.open_table(CHUNKS)?;
        let index = size / cs;
        if let Some(mut c) = get_chunk(&chunks, ino, index)? {
            c.length = c.length.min((size % cs) as u32);
            chunks.insert((ino, index), c.encode().as_slice())?;
        }
    }
    drop_chunks_from(txn, ino, size.div_ceil(cs))
}

/// See [`super::Mutation::ReplicaCopied`].
#[allow(clippy::too_many_arguments)]
pub(super) fn replica_copied(
    txn: &WriteTransaction,
    ino: u64,
    index: u64,
    id: u128,
    version: Version,
    length: u32,
    target: u64,
    drop: &[u64],
) -> Result<Outcome> {
    let mut chunks = txn.open_table(CHUNKS)?;
    let Some(mut rec) = get_chunk(&chunks, ino, index)? else {
        return Err(ControlError::NotFound(format!(
            "chunk record ({ino}, {index}) is gone (file removed or truncated)"
        )));
    };
    // A copy at a version above the record's is fine (a writer's write not
    // yet committed, or one of a writer that died): readers accept it, and
    // it holds everything the record promises.
    if rec.id != id || version < rec.version || rec.length > length {
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

pub(super) fn garbage_done(txn: &WriteTransaction, id: u128, nodes: &[u64]) -> Result<Outcome> {
    let mut garbage = txn.open_table(GARBAGE)?;
    let entry = garbage
        .get(id)?
        .map(|v| decode_garbage(id, v.value()))
        .transpose()?;
    // Every check has passed: from here on only writes.
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
