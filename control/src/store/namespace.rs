//! The namespace: directories, files and their entries (`inodes`,
//! `dirents`), the layout of new files, and the mutations that change them
//! (create, mkdir, unlink, rmdir, rename).
//!
//! Every mutation checks everything it needs before its first write (see
//! [`super`]); the point is marked "Every check has passed" where checks and
//! writes are not obviously apart.

use std::collections::HashMap;
use std::ops::Bound;

use redb::{ReadTransaction, ReadableTable, WriteTransaction};

use super::access::{Caller, READ, SEARCH, WRITE};
use super::tables::{get_inode, must_inode, next_counter, COUNTERS, DIRENTS, INODES, NEXT_INODE};
use super::{chunk_map, Outcome};
use crate::error::{ControlError, Result};
use crate::path::{components, split_last};
use crate::records::{Inode, Kind, ROOT_INODE};

/// Largest chunk size in bytes: the largest chunk a storage node stores
/// (64 MiB, `ringfs_schema::MAX_CHUNK_SIZE`). A larger chunk size would
/// create files whose chunks no node can hold.
pub const MAX_CHUNK_SIZE: u32 = ringfs_schema::MAX_CHUNK_SIZE as u32;
/// Smallest chunk size in bytes (one O_DIRECT block).
pub const MIN_CHUNK_SIZE: u32 = 4096;
/// Most replicas a file may ask for.
pub const MAX_REPLICATION: u8 = 16;

/// Server-side defaults for new files.
#[derive(Clone, Copy, Debug)]
pub struct FileDefaults {
    /// Bytes per chunk.
    pub chunk_size: u32,
    /// Replicas per chunk.
    pub replication: u8,
    /// Permission bits.
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CreateOptions {
    /// Permission bits.
    pub mode: u32,
    /// Bytes per chunk.
    pub chunk_size: u32,
    /// Replicas per chunk.
    pub replication: u8,
    /// Durable replicas a write needs (zero: all of them).
    pub write_quorum: u8,
    /// Fail if the path exists.
    pub exclusive: bool,
}

/// A directory entry as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The entry's name in its directory.
    pub name: String,
    /// Its inode number.
    pub inode: u64,
    /// Its inode.
    pub attr: Inode,
}

/// The root directory of a new database.
pub(super) fn root() -> Inode {
    Inode {
        kind: Kind::Directory,
        parent: ROOT_INODE,
        size: 0,
        mode: 0o755,
        mtime_ns: 0,
        chunk_size: 0,
        replication: 0,
        write_quorum: 0,
        version: 1,
        uid: 0,
        gid: 0,
    }
}

// ------------------------------------------------------------------ reads

/// The inode at `path`, reached as `who` (search permission on every
/// directory on the way).
pub(super) fn stat(txn: &ReadTransaction, who: &Caller, path: &str) -> Result<(u64, Inode)> {
    let comps = components(path)?;
    resolve(
        &txn.open_table(INODES)?,
        &txn.open_table(DIRENTS)?,
        who,
        path,
        &comps,
    )
}

/// Up to `limit` entries of the directory at `path` after `after`, and
/// whether more follow.
pub(super) fn list(
    txn: &ReadTransaction,
    who: &Caller,
    path: &str,
    after: &str,
    limit: usize,
) -> Result<(Vec<Entry>, bool)> {
    let comps = components(path)?;
    let inodes = txn.open_table(INODES)?;
    let dirents = txn.open_table(DIRENTS)?;
    let (dir, attr) = resolve(&inodes, &dirents, who, path, &comps)?;
    if attr.kind != Kind::Directory {
        return Err(ControlError::NotDirectory(path.to_string()));
    }
    who.require(&attr, READ, path)?;
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
        let attr = get_inode(&inodes, child)?.ok_or_else(|| {
            ControlError::corrupt(
                format!("entry ({dir}, {:?})", key.value().1),
                format!("points to missing inode {child}"),
            )
        })?;
        out.push(Entry {
            name: key.value().1.to_string(),
            inode: child,
            attr,
        });
    }
    Ok((out, false))
}

/// The path of every inode that has one.
pub(super) fn paths(txn: &ReadTransaction) -> Result<HashMap<u64, String>> {
    let dirents = txn.open_table(DIRENTS)?;
    let mut parent = HashMap::new();
    for item in dirents.iter()? {
        let (key, child) = item?;
        let (dir, name) = key.value();
        parent.insert(child.value(), (dir, name.to_string()));
    }
    let mut out = HashMap::new();
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

/// Walks `comps` from the root as `who`, who needs search permission on
/// every directory it passes through. Errors name the whole `path`.
fn resolve(
    inodes: &impl ReadableTable<u64, &'static [u8]>,
    dirents: &impl ReadableTable<(u64, &'static str), u64>,
    who: &Caller,
    path: &str,
    comps: &[&str],
) -> Result<(u64, Inode)> {
    let mut ino = ROOT_INODE;
    let mut attr = must_inode(inodes, ino)?;
    for name in comps {
        if attr.kind != Kind::Directory {
            return Err(ControlError::NotDirectory(path.to_string()));
        }
        who.require(&attr, SEARCH, path)?;
        ino = match dirents.get((ino, *name))? {
            Some(child) => child.value(),
            None => return Err(ControlError::NotFound(path.to_string())),
        };
        attr = must_inode(inodes, ino)?;
    }
    Ok((ino, attr))
}

/// Resolves the parent directory of `path` as `who`, who needs search
/// permission on it too; returns (parent inode, parent attr, final name).
fn resolve_parent<'p>(
    inodes: &impl ReadableTable<u64, &'static [u8]>,
    dirents: &impl ReadableTable<(u64, &'static str), u64>,
    who: &Caller,
    path: &'p str,
) -> Result<(u64, Inode, &'p str)> {
    let (parent_comps, name) = split_last(path)?;
    let (ino, attr) = resolve(inodes, dirents, who, path, &parent_comps)?;
    if attr.kind != Kind::Directory {
        return Err(ControlError::NotDirectory(path.to_string()));
    }
    who.require(&attr, SEARCH, path)?;
    Ok((ino, attr, name))
}

fn is_empty_dir(dirents: &impl ReadableTable<(u64, &'static str), u64>, ino: u64) -> Result<bool> {
    Ok(dirents.range((ino, "")..(ino + 1, ""))?.next().is_none())
}

// -------------------------------------------------------------- mutations

/// Validates a file's layout options against the server defaults; returns
/// (chunk size, replication, write quorum, mode).
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
            "chunk size {chunk_size} must be a multiple of 4096 between 4 KiB and 64 MiB"
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

pub(super) fn create(
    txn: &WriteTransaction,
    defaults: &FileDefaults,
    who: &Caller,
    path: &str,
    options: &CreateOptions,
    now_ns: i64,
) -> Result<Outcome> {
    let layout = validate_layout(defaults, options)?;
    let mut inodes = txn.open_table(INODES)?;
    let mut dirents = txn.open_table(DIRENTS)?;
    let (parent, mut parent_attr, name) = resolve_parent(&inodes, &dirents, who, path)?;
    let existing = dirents.get((parent, name))?.map(|v| v.value());
    if let Some(ino) = existing {
        if options.exclusive {
            return Err(ControlError::Exists(path.to_string()));
        }
        let attr = must_inode(&inodes, ino)?;
        return match attr.kind {
            Kind::Directory => Err(ControlError::IsDirectory(path.to_string())),
            Kind::File => Ok(Outcome::Attr(ino, attr)),
        };
    }
    who.require(&parent_attr, WRITE | SEARCH, path)?;
    let attr = new_file(who, parent, layout, now_ns);
    link_new(
        txn,
        &mut inodes,
        &mut dirents,
        (parent, &mut parent_attr),
        name,
        attr,
    )
}

/// The inode an exclusive create of file `path` as `who` would make now,
/// without making it: the checks of [`create`] (layout, parent, free
/// name, permission). Reads only.
pub(super) fn check_create(
    txn: &WriteTransaction,
    defaults: &FileDefaults,
    who: &Caller,
    path: &str,
    options: &CreateOptions,
    now_ns: i64,
) -> Result<Inode> {
    let layout = validate_layout(defaults, options)?;
    let inodes = txn.open_table(INODES)?;
    let dirents = txn.open_table(DIRENTS)?;
    let (parent, parent_attr, name) = resolve_parent(&inodes, &dirents, who, path)?;
    if dirents.get((parent, name))?.is_some() {
        return Err(ControlError::Exists(path.to_string()));
    }
    who.require(&parent_attr, WRITE | SEARCH, path)?;
    Ok(new_file(who, parent, layout, now_ns))
}

/// A new file's inode: in `parent`, owned by `who`, with `layout` (chunk
/// size, replication, write quorum, mode, as [`validate_layout`] gives).
fn new_file(who: &Caller, parent: u64, layout: (u32, u8, u8, u32), now_ns: i64) -> Inode {
    let (chunk_size, replication, write_quorum, mode) = layout;
    Inode {
        kind: Kind::File,
        parent,
        size: 0,
        mode,
        mtime_ns: now_ns,
        chunk_size,
        replication,
        write_quorum,
        version: 1,
        uid: who.uid,
        gid: who.primary_gid(),
    }
}

/// [`super::Mutation::ReserveInode`]: checks that `who` may create file
/// `path` now and allocates an inode number for it, linked nowhere and
/// stored nowhere (a transaction links it at its commit; a number never
/// linked is simply never used). The number and the inode the file would
/// have.
pub(super) fn reserve(
    txn: &WriteTransaction,
    defaults: &FileDefaults,
    who: &Caller,
    path: &str,
    options: &CreateOptions,
    now_ns: i64,
) -> Result<(u64, Inode)> {
    let attr = check_create(txn, defaults, who, path, options, now_ns)?;
    let ino = next_counter(&mut txn.open_table(COUNTERS)?, NEXT_INODE)?;
    Ok((ino, attr))
}

/// Links inode number `ino` (new or reserved) as file `path` with `attr`
/// (as [`check_create`] made it: checks done) and touches the parent.
pub(super) fn link_reserved(
    txn: &WriteTransaction,
    who: &Caller,
    path: &str,
    ino: u64,
    attr: &Inode,
) -> Result<()> {
    let mut inodes = txn.open_table(INODES)?;
    let mut dirents = txn.open_table(DIRENTS)?;
    let (parent, mut parent_attr, name) = resolve_parent(&inodes, &dirents, who, path)?;
    inodes.insert(ino, attr.encode().as_slice())?;
    dirents.insert((parent, name), ino)?;
    parent_attr.touch(attr.mtime_ns);
    inodes.insert(parent, parent_attr.encode().as_slice())?;
    Ok(())
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
    parent_attr.touch(attr.mtime_ns);
    inodes.insert(parent, parent_attr.encode().as_slice())?;
    Ok(Outcome::Attr(ino, attr))
}

pub(super) fn mkdir(
    txn: &WriteTransaction,
    who: &Caller,
    path: &str,
    mode: u32,
    now_ns: i64,
) -> Result<Outcome> {
    let mode = if mode == 0 { 0o755 } else { mode };
    if mode > 0o7777 {
        return Err(ControlError::InvalidArgument(format!(
            "mode {mode:o} has bits beyond 0o7777"
        )));
    }
    let mut inodes = txn.open_table(INODES)?;
    let mut dirents = txn.open_table(DIRENTS)?;
    let (parent, mut parent_attr, name) = resolve_parent(&inodes, &dirents, who, path)?;
    if dirents.get((parent, name))?.is_some() {
        return Err(ControlError::Exists(path.to_string()));
    }
    who.require(&parent_attr, WRITE | SEARCH, path)?;
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
        uid: who.uid,
        gid: who.primary_gid(),
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

/// unlink (`kind == File`) or rmdir (`kind == Directory`).
pub(super) fn remove(
    txn: &WriteTransaction,
    who: &Caller,
    path: &str,
    kind: Kind,
    now_ns: i64,
) -> Result<Outcome> {
    let mut inodes = txn.open_table(INODES)?;
    let mut dirents = txn.open_table(DIRENTS)?;
    let (parent, mut parent_attr, name, ino, attr) =
        check_remove(&inodes, &dirents, who, path, kind)?;
    // Every check has passed: from here on only writes.
    dirents.remove((parent, name))?;
    inodes.remove(ino)?;
    parent_attr.touch(now_ns);
    inodes.insert(parent, parent_attr.encode().as_slice())?;
    drop(inodes);
    drop(dirents);
    if attr.kind == Kind::File {
        chunk_map::drop_chunks_from(txn, ino, 0)?;
    }
    Ok(Outcome::Done)
}

/// The checks of [`remove`]: (parent, its inode, name, inode, attr) of
/// what `who` may remove at `path`. Reads only.
fn check_remove<'p>(
    inodes: &impl ReadableTable<u64, &'static [u8]>,
    dirents: &impl ReadableTable<(u64, &'static str), u64>,
    who: &Caller,
    path: &'p str,
    kind: Kind,
) -> Result<(u64, Inode, &'p str, u64, Inode)> {
    let (parent, parent_attr, name) = resolve_parent(inodes, dirents, who, path)?;
    let ino = match dirents.get((parent, name))? {
        Some(v) => v.value(),
        None => return Err(ControlError::NotFound(path.to_string())),
    };
    let attr = must_inode(inodes, ino)?;
    who.require(&parent_attr, WRITE | SEARCH, path)?;
    who.require_unsticky(&parent_attr, &attr, path)?;
    match (kind, attr.kind) {
        (Kind::File, Kind::Directory) => return Err(ControlError::IsDirectory(path.to_string())),
        (Kind::Directory, Kind::File) => return Err(ControlError::NotDirectory(path.to_string())),
        (Kind::Directory, Kind::Directory) if !is_empty_dir(dirents, ino)? => {
            return Err(ControlError::NotEmpty(path.to_string()))
        }
        _ => {}
    }
    Ok((parent, parent_attr, name, ino, attr))
}

/// The inode number of the file `who` may unlink at `path` now (the
/// checks of an unlink). Reads only.
pub(super) fn check_unlink(txn: &WriteTransaction, who: &Caller, path: &str) -> Result<u64> {
    let inodes = txn.open_table(INODES)?;
    let dirents = txn.open_table(DIRENTS)?;
    Ok(check_remove(&inodes, &dirents, who, path, Kind::File)?.3)
}

/// What a `setAttr` changes (`None`: unchanged).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AttrChange {
    /// Permission bits (at most 0o7777): the owner or the administrator.
    pub mode: Option<u32>,
    /// Modification time, nanoseconds since the Unix epoch: the owner, the
    /// administrator, or a caller with write permission.
    pub mtime_ns: Option<i64>,
    /// Owner: the administrator only.
    pub uid: Option<u32>,
    /// Group: the administrator, or the owner to one of its groups.
    pub gid: Option<u32>,
}

/// chmod, chown and/or utimes of the file or directory at `path` as
/// `who`; bumps its version.
pub(super) fn set_attr(
    txn: &WriteTransaction,
    who: &Caller,
    path: &str,
    change: &AttrChange,
) -> Result<Outcome> {
    if let Some(mode) = change.mode.filter(|m| *m > 0o7777) {
        return Err(ControlError::InvalidArgument(format!(
            "mode {mode:o} has bits beyond 0o7777"
        )));
    }
    let comps = components(path)?;
    let mut inodes = txn.open_table(INODES)?;
    let dirents = txn.open_table(DIRENTS)?;
    let (ino, mut attr) = resolve(&inodes, &dirents, who, path, &comps)?;
    let denied = |what: &str| Err(ControlError::PermissionDenied(format!("{path}: {what}")));
    if change.mode.is_some() && !who.owns(&attr) {
        return denied("only the owner or the administrator may change the mode");
    }
    // Only the administrator gives a file away; its owner may "change" it
    // to itself (chown to the same owner is a no-op in POSIX too).
    if change
        .uid
        .is_some_and(|u| !(who.admin || (who.uid == attr.uid && u == attr.uid)))
    {
        return denied("only the administrator may change the owner");
    }
    if let Some(gid) = change.gid {
        if !who.admin && (!who.owns(&attr) || !who.in_group(gid)) {
            return denied(
                "only the owner, to one of its groups, or the administrator may change the group",
            );
        }
    }
    if change.mtime_ns.is_some() && !who.owns(&attr) {
        who.require(&attr, WRITE, path)?;
    }
    // Every check has passed: from here on only writes.
    if let Some(mode) = change.mode {
        attr.mode = mode;
    }
    if let Some(t) = change.mtime_ns {
        attr.mtime_ns = t;
    }
    if let Some(uid) = change.uid {
        attr.uid = uid;
    }
    if let Some(gid) = change.gid {
        attr.gid = gid;
    }
    attr.version += 1;
    inodes.insert(ino, attr.encode().as_slice())?;
    Ok(Outcome::Attr(ino, attr))
}

pub(super) fn rename(
    txn: &WriteTransaction,
    who: &Caller,
    from: &str,
    to: &str,
    now_ns: i64,
) -> Result<Outcome> {
    let mut inodes = txn.open_table(INODES)?;
    let mut dirents = txn.open_table(DIRENTS)?;
    let (src_parent, src_attr, src_name) = resolve_parent(&inodes, &dirents, who, from)?;
    let (dst_parent, dst_attr, dst_name) = resolve_parent(&inodes, &dirents, who, to)?;
    let ino = match dirents.get((src_parent, src_name))? {
        Some(v) => v.value(),
        None => return Err(ControlError::NotFound(from.to_string())),
    };
    let mut attr = must_inode(&inodes, ino)?;
    who.require(&src_attr, WRITE | SEARCH, from)?;
    who.require(&dst_attr, WRITE | SEARCH, to)?;
    who.require_unsticky(&src_attr, &attr, from)?;
    // A directory moving to another parent changes its `..`: as in POSIX
    // that needs write permission on it.
    if attr.kind == Kind::Directory && src_parent != dst_parent {
        who.require(&attr, WRITE, from)?;
    }
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
            who.require_unsticky(&dst_attr, &old_attr, to)?;
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
        d.touch(now_ns);
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
            chunk_map::drop_chunks_from(txn, old, 0)?;
        }
    }
    Ok(Outcome::Done)
}
