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
//!   Where checks and writes are not obviously apart, the point is marked
//!   "Every check has passed".
//! - A storage error aborts the whole batch: every mutation in it fails and
//!   none is applied, not even those applied before the error in the same
//!   transaction (`tests/failpoints.rs` holds us to it).
//!
//! Layout: [`MetaStore`] here is the entry point (open, reads, batches);
//! [`mutation`] defines the changes and dispatches them to the concept they
//! touch: [`namespace`] (directories and files), [`chunk_map`] (chunk
//! records and garbage), [`nodes`] (node registry and epoch). `tables`
//! holds the redb tables and typed record access; `check` the consistency
//! check.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{Database, ReadableDatabase, ReadableTable, StorageBackend};

use crate::error::Result;
use crate::records::{Chunk, Inode, Node, User, ROOT_INODE};

pub mod access;
mod check;
pub mod chunk_map;
pub mod mutation;
pub mod namespace;
pub mod nodes;
pub mod requests;
mod snapshot;
mod tables;
pub mod users;

pub use access::Caller;
pub use chunk_map::{MapEntry, TxCreate, TxFile, MAX_FILE_SIZE, MAX_TX_FILES};
pub use mutation::{Batch, Mutation, Outcome, Request};
pub use namespace::{
    validate_layout, AttrChange, CreateOptions, Entry, FileDefaults, MAX_CHUNK_SIZE,
    MAX_REPLICATION, MIN_CHUNK_SIZE,
};
pub use nodes::constant_time_eq;
pub use requests::Answer;
pub use snapshot::SnapshotError;

use tables::{
    CHUNKS, COUNTERS, DIRENTS, EPOCH, FORMAT, GARBAGE, INODES, NEXT_INODE, NEXT_NODE_ID, NODES,
    REPLICATION, STORE_FORMAT, USERS,
};

/// The metadata database. Reads may run on any thread concurrently with one
/// writer (redb MVCC); mutations go through [`MetaStore::apply_batch`].
pub struct MetaStore {
    db: Database,
    defaults: FileDefaults,
    /// Bumped after every commit that may have removed or changed a user
    /// (and every snapshot import): connections of users look their user
    /// up again when it moved, so a removal takes effect at their next
    /// call.
    users_version: AtomicU64,
    /// Request id -> where its answer is ([`requests`]).
    requests: requests::RequestIndex,
}

impl MetaStore {
    /// Opens (creating if needed) the database at `path`; a new database
    /// gets the root directory and its counters.
    pub fn open(path: &Path, defaults: FileDefaults) -> Result<Self> {
        Self::init(Database::create(path)?, defaults)
    }

    /// Like [`MetaStore::open`], on a redb storage backend of the caller's
    /// (an in-memory one, or one that simulates crashes in tests).
    pub fn with_backend(backend: impl StorageBackend, defaults: FileDefaults) -> Result<Self> {
        Self::init(Database::builder().create_with_backend(backend)?, defaults)
    }

    /// Creates the tables (and a new store's root and counters), or checks
    /// that an existing store is of this build's format: a store written
    /// by an older ringfs is refused (there is no migration).
    fn init(db: Database, defaults: FileDefaults) -> Result<Self> {
        let txn = db.begin_write()?;
        {
            let mut inodes = txn.open_table(INODES)?;
            txn.open_table(DIRENTS)?;
            txn.open_table(CHUNKS)?;
            txn.open_table(NODES)?;
            txn.open_table(GARBAGE)?;
            txn.open_table(requests::ANSWERS)?;
            txn.open_table(REPLICATION)?;
            txn.open_table(USERS)?;
            let mut counters = txn.open_table(COUNTERS)?;
            if inodes.get(ROOT_INODE)?.is_none() {
                inodes.insert(ROOT_INODE, namespace::root().encode().as_slice())?;
                counters.insert(NEXT_INODE, ROOT_INODE + 1)?;
                counters.insert(NEXT_NODE_ID, 1)?;
                counters.insert(EPOCH, 0)?;
                counters.insert(FORMAT, STORE_FORMAT)?;
            } else {
                let format = counters.get(FORMAT)?.map(|v| v.value()).unwrap_or(1);
                if format != STORE_FORMAT {
                    return Err(crate::ControlError::corrupt(
                        "store format",
                        format!(
                            "the metadata store is in format {format}, this control server \
                             reads format {STORE_FORMAT} (owners and groups on inodes); \
                             there is no migration: start it on an empty data directory"
                        ),
                    ));
                }
            }
        }
        requests::migrate(&txn)?;
        txn.commit()?;
        let requests = requests::RequestIndex::read(&db.begin_read()?)?;
        Ok(MetaStore {
            db,
            defaults,
            users_version: AtomicU64::new(0),
            requests,
        })
    }

    // ---------------------------------------------------------------- reads

    /// The inode at `path` (as the administrator: no permission check).
    pub fn stat(&self, path: &str) -> Result<(u64, Inode)> {
        self.stat_as(&Caller::admin(), path)
    }

    /// The inode at `path`, reached as `who` (search permission on every
    /// directory on the way, else `permission_denied`).
    pub fn stat_as(&self, who: &Caller, path: &str) -> Result<(u64, Inode)> {
        namespace::stat(&self.db.begin_read()?, who, path)
    }

    /// The remembered answer of request `id`, if a mutation with that id
    /// was applied and its id is still kept.
    pub fn answer(&self, id: u128) -> Result<Option<requests::Answer>> {
        requests::lookup_read(&self.db, &self.requests, id)
    }

    /// The inode numbered `inode`, if it exists.
    pub fn inode(&self, inode: u64) -> Result<Option<Inode>> {
        let txn = self.db.begin_read()?;
        tables::get_inode(&txn.open_table(INODES)?, inode)
    }

    /// Up to `limit` entries of the directory at `path` whose names sort
    /// after `after` (byte order), and whether more follow.
    /// As the administrator (no permission check).
    pub fn list(&self, path: &str, after: &str, limit: usize) -> Result<(Vec<Entry>, bool)> {
        self.list_as(&Caller::admin(), path, after, limit)
    }

    /// [`MetaStore::list`] as `who`: search permission on the way, read
    /// permission on the directory.
    pub fn list_as(
        &self,
        who: &Caller,
        path: &str,
        after: &str,
        limit: usize,
    ) -> Result<(Vec<Entry>, bool)> {
        namespace::list(&self.db.begin_read()?, who, path, after, limit)
    }

    /// The registered user `name`, if any.
    pub fn user(&self, name: &str) -> Result<Option<User>> {
        users::get(&self.db.begin_read()?, name)
    }

    /// Every registered user, by name.
    pub fn users(&self) -> Result<Vec<(String, User)>> {
        users::list(&self.db.begin_read()?)
    }

    /// Changes with every commit that may have changed a user (compare it
    /// to a value read earlier to know whether to look a user up again).
    pub fn users_version(&self) -> u64 {
        self.users_version.load(Ordering::Acquire)
    }

    /// Records that users may have changed.
    pub(crate) fn users_changed(&self) {
        self.users_version.fetch_add(1, Ordering::AcqRel);
    }

    /// The path of every inode that has one (files and directories), for
    /// reports that name files.
    pub fn paths(&self) -> Result<HashMap<u64, String>> {
        namespace::paths(&self.db.begin_read()?)
    }

    /// Chunk records of `inode` with index in `[first, first + count)`.
    pub fn chunks(&self, inode: u64, first: u64, count: u64) -> Result<Vec<(u64, Chunk)>> {
        Ok(self.chunk_page(inode, first, count, usize::MAX)?.0)
    }

    /// The first `limit` chunk records of `inode` with index in `[first,
    /// first + count)`, ascending, and whether that range holds more.
    pub fn chunk_page(
        &self,
        inode: u64,
        first: u64,
        count: u64,
        limit: usize,
    ) -> Result<(Vec<(u64, Chunk)>, bool)> {
        chunk_map::chunks(&self.db.begin_read()?, inode, first, count, limit)
    }

    /// Chunks no file references any more, awaiting deletion on their nodes.
    pub fn garbage(&self) -> Result<Vec<Chunk>> {
        chunk_map::garbage(&self.db.begin_read()?)
    }

    /// Every chunk record with its file's inode, in (inode, index) order.
    /// One read snapshot: a consistent view for repair and fsck.
    pub fn chunk_map(&self) -> Result<Vec<MapEntry>> {
        chunk_map::chunk_map(&self.db.begin_read()?)
    }

    /// Every registered node, ascending id.
    pub fn nodes(&self) -> Result<Vec<(u64, Node)>> {
        nodes::nodes(&self.db.begin_read()?)
    }

    /// The current cluster-map epoch.
    pub fn epoch(&self) -> Result<u64> {
        nodes::epoch(&self.db.begin_read()?)
    }

    /// The write-epoch mark: write epochs handed out so far are at most it.
    pub fn write_epoch_mark(&self) -> Result<u64> {
        nodes::write_epoch_mark(&self.db.begin_read()?)
    }

    /// Everything that breaks the store's invariants, one line each (empty
    /// when consistent): entries leading to missing inodes or inodes whose
    /// parent is another directory, inodes no entry names, parent cycles,
    /// chunk records of missing files or past their file's size, counters
    /// not above every id in use. One read snapshot.
    pub fn consistency_problems(&self) -> Result<Vec<String>> {
        check::problems(&self.db.begin_read()?)
    }

    /// The replication state stored under `key` with the last applied
    /// batches (see [`MetaStore::apply_batches`]), if any.
    pub fn replication_state(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(REPLICATION)?;
        Ok(table.get(key)?.map(|v| v.value().to_vec()))
    }

    // --------------------------------------------------------------- writes

    /// Applies `batches` in order in one transaction, with request-id
    /// deduplication ([`requests`]), and stores `replication` (key, value)
    /// pairs in the same transaction (a Raft state machine's last applied
    /// log id and membership). `durable`: commit with an fsync; otherwise
    /// the commit is visible at once but survives a crash only once a later
    /// durable commit ([`MetaStore::sync`]) follows, which is how a Raft
    /// state machine may apply without an fsync per entry (its log holds
    /// the entries until a durable commit covers them).
    ///
    /// Returns one result per request, per batch; `Err` for the whole call
    /// only when the transaction failed (then nothing was applied).
    pub fn apply_batches(
        &self,
        batches: &[&Batch],
        replication: &[(&str, &[u8])],
        durable: bool,
    ) -> Result<Vec<Vec<Result<Outcome>>>> {
        let mut txn = self.db.begin_write()?;
        if !durable {
            txn.set_durability(redb::Durability::None)?;
        }
        let mut pending = requests::Pending::default();
        let mut out = Vec::with_capacity(batches.len());
        for batch in batches {
            let mut results = Vec::with_capacity(batch.requests.len());
            for r in &batch.requests {
                let remembered = match r
                    .id
                    .map(|id| requests::lookup(&txn, &self.requests, &pending, id))
                    .transpose()
                {
                    Ok(found) => found.flatten(),
                    Err(e) => {
                        txn.abort()?;
                        return Err(e);
                    }
                };
                let result = match remembered {
                    // Sent again: the first answer; the id keeps the time
                    // it was first applied at.
                    Some(answer) => answer.into_result(),
                    None => {
                        let result = apply_one(&txn, &self.defaults, &r.mutation);
                        if let Err(e) = &result {
                            if e.is_storage_failure() {
                                txn.abort()?;
                                return Err(e.clone());
                            }
                        }
                        if let (Some(id), Some(answer)) = (r.id, Answer::of(&result)) {
                            if let Err(e) =
                                requests::remember(&txn, &mut pending, id, batch.now_ns, answer)
                            {
                                txn.abort()?;
                                return Err(e);
                            }
                        }
                        result
                    }
                };
                results.push(result);
            }
            if let Err(e) = requests::expire(&txn, &self.requests, &mut pending, batch.now_ns) {
                txn.abort()?;
                return Err(e);
            }
            out.push(results);
        }
        {
            let mut table = txn.open_table(REPLICATION)?;
            for (k, v) in replication {
                table.insert(*k, *v)?;
            }
        }
        crate::fail_point!("store::before_commit", |_| Err(injected(
            "store::before_commit"
        )));
        self.requests.commit(txn, pending)?;
        if batches
            .iter()
            .any(|b| b.requests.iter().any(|r| r.mutation.changes_users()))
        {
            self.users_changed();
        }
        Ok(out)
    }

    /// Makes every commit so far durable (one fsync).
    pub fn sync(&self) -> Result<()> {
        let txn = self.db.begin_write()?;
        txn.commit()?;
        Ok(())
    }

    /// Applies `batch` in one durable transaction (group commit). Returns one
    /// result per mutation, in order; `Err` for the whole batch only when the
    /// transaction itself failed (then nothing was applied).
    pub fn apply_batch(&self, batch: &[Mutation]) -> Result<Vec<Result<Outcome>>> {
        let txn = self.db.begin_write()?;
        let mut results = Vec::with_capacity(batch.len());
        for m in batch {
            let result = apply_one(&txn, &self.defaults, m);
            if let Err(e) = &result {
                // A storage or corruption error may have struck after a
                // write began, in this mutation or below it in the
                // transaction's pages: the only safe answer is to drop the
                // whole transaction.
                if e.is_storage_failure() {
                    txn.abort()?;
                    return Err(e.clone());
                }
            }
            results.push(result);
        }
        crate::fail_point!("store::before_commit", |_| Err(injected(
            "store::before_commit"
        )));
        txn.commit()?;
        if batch.iter().any(Mutation::changes_users) {
            self.users_changed();
        }
        Ok(results)
    }
}

/// Applies one mutation of a batch. Failpoint `store::apply` (before each
/// mutation, so between the mutations of a batch) fails it with a storage
/// error, as a failing disk would.
fn apply_one(
    txn: &redb::WriteTransaction,
    defaults: &FileDefaults,
    m: &Mutation,
) -> Result<Outcome> {
    crate::fail_point!("store::apply", |_| Err(injected("store::apply")));
    mutation::apply(txn, defaults, m)
}

/// The storage error a failpoint injects.
#[cfg(feature = "failpoints")]
fn injected(failpoint: &str) -> crate::ControlError {
    crate::ControlError::from(redb::StorageError::Io(std::io::Error::other(format!(
        "injected by failpoint {failpoint}"
    ))))
}
