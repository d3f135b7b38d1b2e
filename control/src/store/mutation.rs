//! The changes the metadata store accepts ([`Mutation`]), what they answer
//! ([`Outcome`]), and how one is applied inside a write transaction.
//!
//! A mutation is plain data, decided before it is applied (times and new
//! keys are drawn by the caller), so applying it is deterministic: the same
//! mutations in the same order give the same store.

use redb::WriteTransaction;

use super::access::Caller;
use super::chunk_map::{self, TxCreate, TxFile};
use super::namespace::{self, AttrChange, CreateOptions, FileDefaults};
use super::tables::COUNTERS;
use super::{nodes, users};
use crate::error::Result;
use crate::records::{Chunk, Inode, Kind, User};
use ringfs_schema::Version;

/// One change to the metadata. Applied by [`super::MetaStore::apply_batch`].
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub enum Mutation {
    /// Create a file (or, not exclusive, return the existing one).
    Create {
        /// Who creates it (owner and group of the file, permission checks).
        who: Caller,
        /// Absolute path.
        path: String,
        /// Layout and mode; zeros take the server's defaults.
        options: CreateOptions,
        /// The new file's mtime, nanoseconds since the Unix epoch.
        now_ns: i64,
    },
    /// Create a directory.
    Mkdir {
        /// Who creates it.
        who: Caller,
        /// Absolute path.
        path: String,
        /// Permission bits (0: 0o755).
        mode: u32,
        /// The directory's mtime.
        now_ns: i64,
    },
    /// Remove a file; its chunks go to garbage collection.
    Unlink {
        /// Who removes it.
        who: Caller,
        /// Absolute path.
        path: String,
        /// The parent's new mtime.
        now_ns: i64,
    },
    /// Remove an empty directory.
    Rmdir {
        /// Who removes it.
        who: Caller,
        /// Absolute path.
        path: String,
        /// The parent's new mtime.
        now_ns: i64,
    },
    /// Move `from` to `to`, replacing a file or an empty directory there.
    Rename {
        /// Who moves it.
        who: Caller,
        /// Current path.
        from: String,
        /// New path.
        to: String,
        /// The parents' new mtime.
        now_ns: i64,
    },
    /// Store chunk records of an open file and set its size.
    CommitChunks {
        /// The file.
        inode: u64,
        /// The write epoch of the committing handle's lease: a record of a
        /// chunk not yet recorded at its index must carry it (the chunk was
        /// written under this lease, so garbage collection spared it).
        epoch: u64,
        /// (chunk index, record) pairs; each replaces the one at its index.
        chunks: Vec<(u64, Chunk)>,
        /// The new size in bytes; never below the current one.
        file_size: u64,
        /// The file's new mtime.
        now_ns: i64,
    },
    /// Truncate or extend an open file.
    SetSize {
        /// The file.
        inode: u64,
        /// The new size in bytes.
        size: u64,
        /// The file's new mtime.
        now_ns: i64,
    },
    /// chmod / chown / utimes of a file or directory.
    SetAttr {
        /// Who changes it.
        who: Caller,
        /// Absolute path.
        path: String,
        /// What changes.
        change: AttrChange,
    },
    /// Register a user (the administrator's call, checked by the caller).
    AddUser {
        /// Its name (checked by [`users::check_name`]).
        name: String,
        /// Its uid; 0: the lowest free one from 1000.
        uid: u32,
        /// Its groups, primary first; empty: its uid's group.
        gids: Vec<u32>,
        /// It is an administrator.
        admin: bool,
        /// Its key-derivation salt, drawn by the caller (keeps this pure).
        salt: [u8; 16],
    },
    /// Remove a user.
    RemoveUser {
        /// Its name.
        name: String,
    },
    /// Register a new node (`node_id == 0`) or re-register a known one.
    Join {
        /// The node's id, 0 for a new node.
        node_id: u64,
        /// The key a known node presents.
        key: [u8; 16],
        /// Key for a new node, drawn by the caller (keeps this pure).
        new_key: [u8; 16],
        /// Data-plane endpoint of each shard.
        shards: Vec<String>,
    },
    /// Advance the cluster-map epoch.
    BumpEpoch,
    /// Raise the write-epoch mark to at least `to`: write epochs up to the
    /// mark may be handed out (after a restart, only epochs above it).
    AdvanceWriteEpoch {
        /// The new mark.
        to: u64,
    },
    /// Repair: `target` now holds a durable, verified copy of chunk `id` at
    /// `version` or newer (at least `length` bytes). Applied only if the
    /// record of (`inode`, `index`) still names that chunk at that version; the
    /// replicas in `drop` (lost, stale or corrupt) leave the record.
    ReplicaCopied {
        /// The file.
        inode: u64,
        /// The chunk's index in the file.
        index: u64,
        /// The chunk id copied.
        id: u128,
        /// The version copied: at least the record's.
        version: Version,
        /// Bytes the copy holds.
        length: u32,
        /// The node holding the new copy.
        target: u64,
        /// Replicas to take out of the record.
        drop: Vec<u64>,
    },
    /// Garbage collection: `nodes` confirmed they no longer hold chunk `id`.
    GarbageDone {
        /// The collected chunk.
        id: u128,
        /// Nodes that deleted their copy.
        nodes: Vec<u64>,
    },
    /// A transaction across files: creates files (linking inode numbers
    /// reserved for them), unlinks files, truncates and stores chunk
    /// records of every file, all or none (see
    /// [`chunk_map::commit_transaction`]). The leases were checked by the
    /// caller.
    CommitTransaction {
        /// Who commits (the permission checks of the creates and unlinks).
        who: Caller,
        /// The files, each at most once.
        files: Vec<TxFile>,
        /// Files of `files` to create (their inodes reserved).
        creates: Vec<TxCreate>,
        /// Paths of files to unlink (none of `files`).
        unlinks: Vec<String>,
        /// The files' new mtime.
        now_ns: i64,
    },
    /// Reserve an inode number for a file a transaction will create at
    /// `path` (see [`namespace::reserve`]): checked as an exclusive create
    /// now, linked only by the transaction's commit.
    ReserveInode {
        /// Who will create it.
        who: Caller,
        /// Absolute path.
        path: String,
        /// Layout and mode; zeros take the server's defaults.
        options: CreateOptions,
        /// The file's mtime if created.
        now_ns: i64,
    },
}

impl Mutation {
    /// Whether applying it may change or remove a user.
    pub fn changes_users(&self) -> bool {
        matches!(self, Mutation::AddUser { .. } | Mutation::RemoveUser { .. })
    }
}

/// A mutation as a client sent it: with its request id, if it has one
/// (see [`super::requests`]).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Request {
    /// The client's id for this mutation; a second request with the same
    /// id gets the first one's answer and is not applied again.
    pub id: Option<u128>,
    /// The change.
    pub mutation: Mutation,
}

/// Mutations applied together, in order, in one transaction: a group
/// commit, and with replication the payload of one Raft log entry.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Batch {
    /// When the batch was formed (nanoseconds since the Unix epoch, the
    /// proposer's clock): the time request ids are remembered under.
    pub now_ns: i64,
    /// The requests.
    pub requests: Vec<Request>,
}

/// The result of a successful [`Mutation`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Outcome {
    /// Applied; nothing to report.
    Done,
    /// The inode number and attributes of the file or directory changed.
    Attr(u64, Inode),
    /// A node joined.
    Joined {
        /// Its id (new or the one it presented).
        node_id: u64,
        /// Its key.
        key: [u8; 16],
        /// The epoch its join started.
        epoch: u64,
    },
    /// The new cluster-map epoch.
    Epoch(u64),
    /// A user was added.
    User(String, User),
    /// The inode numbers and attributes of the files a transaction
    /// committed, in its order.
    Attrs(Vec<(u64, Inode)>),
}

/// Applies `m` inside `txn`. A refusal (any error but a storage failure,
/// [`crate::ControlError::is_storage_failure`]) leaves `txn` as it was.
pub(super) fn apply(
    txn: &WriteTransaction,
    defaults: &FileDefaults,
    m: &Mutation,
) -> Result<Outcome> {
    match m {
        Mutation::Create {
            who,
            path,
            options,
            now_ns,
        } => namespace::create(txn, defaults, who, path, options, *now_ns),
        Mutation::Mkdir {
            who,
            path,
            mode,
            now_ns,
        } => namespace::mkdir(txn, who, path, *mode, *now_ns),
        Mutation::Unlink { who, path, now_ns } => {
            namespace::remove(txn, who, path, Kind::File, *now_ns)
        }
        Mutation::Rmdir { who, path, now_ns } => {
            namespace::remove(txn, who, path, Kind::Directory, *now_ns)
        }
        Mutation::Rename {
            who,
            from,
            to,
            now_ns,
        } => namespace::rename(txn, who, from, to, *now_ns),
        Mutation::CommitChunks {
            inode,
            epoch,
            chunks,
            file_size,
            now_ns,
        } => chunk_map::commit_chunks(txn, *inode, *epoch, chunks, *file_size, *now_ns),
        Mutation::SetSize {
            inode,
            size,
            now_ns,
        } => chunk_map::set_size(txn, *inode, *size, *now_ns),
        Mutation::SetAttr { who, path, change } => namespace::set_attr(txn, who, path, change),
        Mutation::AddUser {
            name,
            uid,
            gids,
            admin,
            salt,
        } => users::add(txn, name, *uid, gids, *admin, *salt),
        Mutation::RemoveUser { name } => users::remove(txn, name),
        Mutation::Join {
            node_id,
            key,
            new_key,
            shards,
        } => nodes::join(txn, *node_id, key, new_key, shards),
        Mutation::BumpEpoch => Ok(Outcome::Epoch(nodes::bump_epoch(
            &mut txn.open_table(COUNTERS)?,
        )?)),
        Mutation::AdvanceWriteEpoch { to } => Ok(Outcome::Epoch(nodes::advance_write_epoch(
            &mut txn.open_table(COUNTERS)?,
            *to,
        )?)),
        Mutation::ReplicaCopied {
            inode,
            index,
            id,
            version,
            length,
            target,
            drop,
        } => chunk_map::replica_copied(txn, *inode, *index, *id, *version, *length, *target, drop),
        Mutation::GarbageDone { id, nodes } => chunk_map::garbage_done(txn, *id, nodes),
        Mutation::CommitTransaction {
            who,
            files,
            creates,
            unlinks,
            now_ns,
        } => chunk_map::commit_transaction(
            txn,
            defaults,
            who,
            chunk_map::TxChanges {
                files,
                creates,
                unlinks,
            },
            *now_ns,
        ),
        Mutation::ReserveInode {
            who,
            path,
            options,
            now_ns,
        } => namespace::reserve(txn, defaults, who, path, options, *now_ns)
            .map(|(ino, attr)| Outcome::Attr(ino, attr)),
    }
}
