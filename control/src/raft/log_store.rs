//! The Raft log, the vote and the committed index, in their own redb file
//! (`DIR/raft-log.redb`), apart from the metadata store.
//!
//! Why a file of its own: the log is written with an fsync per group of
//! appends while the state machine applies without one (see
//! [`super::state_machine`]); in one redb file they would take turns on the
//! single write lock and every log fsync would also flush the state
//! machine's pages. Apart, a log append and an apply run at the same time.
//!
//! Appends are handed to a log-writer thread, which takes every operation
//! queued, writes them in one transaction with one fsync, and then reports
//! the appends flushed (group commit of the log: one fsync for as many
//! entries as arrived meanwhile). Until then the entries are served from
//! memory (`pending`), because openraft may read an entry to replicate it
//! before it is durable here (the leader replicates while it writes).
//! Operations keep their order: truncate, purge and vote go through the same
//! queue; a vote is answered only once it is durable.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::rc::Rc;
use std::sync::{mpsc, Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, RaftLogReader, StorageIOError, Vote};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use super::{decode, encode, LogId, StorageError, TypeConfig};

/// The log's file name in the data directory.
pub const FILE: &str = "raft-log.redb";

/// index -> Entry (postcard)
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
/// name -> value (postcard)
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const PURGED: &str = "purged";
const REPLICA_ID: &str = "replica_id";

type Pending = Arc<Mutex<BTreeMap<u64, Entry<TypeConfig>>>>;

enum Op {
    Append(Vec<Entry<TypeConfig>>, LogFlushed<TypeConfig>),
    Truncate(u64),
    Purge(LogId),
    Vote(Vote<u64>, oneshot::Sender<Result<(), String>>),
    Committed(Option<LogId>),
}

/// The log store; clones share it. Lives on the RPC thread.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    pending: Pending,
    tx: mpsc::Sender<Op>,
    last_log: Rc<Cell<Option<LogId>>>,
    last_purged: Rc<Cell<Option<LogId>>>,
}

fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

fn read_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::read_logs(&io_err(e)).into()
}

fn write_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_logs(&io_err(e)).into()
}

impl LogStore {
    /// Opens (creating if needed) the log at `path` and starts its writer
    /// thread; returns the store and this replica's id (drawn at random on
    /// first open and kept in the file).
    pub fn open(path: &Path) -> Result<(Self, u64), redb::Error> {
        let db = Arc::new(Database::create(path)?);
        let txn = db.begin_write()?;
        let id = {
            let mut meta = txn.open_table(META)?;
            txn.open_table(LOG)?;
            let existing = meta
                .get(REPLICA_ID)?
                .and_then(|v| decode::<u64>(v.value()).ok());
            match existing {
                Some(id) => id,
                None => {
                    // Nonzero: 0 means "no replica" on the wire.
                    let id = rand::random::<u64>().max(1);
                    meta.insert(REPLICA_ID, encode(&id).as_slice())?;
                    id
                }
            }
        };
        txn.commit()?;
        let (last_log, last_purged) = {
            let txn = db.begin_read()?;
            let log = txn.open_table(LOG)?;
            let meta = txn.open_table(META)?;
            let last = log
                .last()?
                .and_then(|(_, v)| decode::<Entry<TypeConfig>>(v.value()).ok())
                .map(|e| e.log_id);
            let purged = meta
                .get(PURGED)?
                .and_then(|v| decode::<Option<LogId>>(v.value()).ok())
                .flatten();
            (last.or(purged), purged)
        };
        let pending: Pending = Arc::default();
        let (tx, rx) = mpsc::channel();
        {
            let db = db.clone();
            let pending = pending.clone();
            std::thread::Builder::new()
                .name("ringfs-raft-log".into())
                .spawn(move || writer(&db, &pending, &rx))
                .map_err(redb::Error::Io)?;
        }
        Ok((
            LogStore {
                db,
                pending,
                tx,
                last_log: Rc::new(Cell::new(last_log)),
                last_purged: Rc::new(Cell::new(last_purged)),
            },
            id,
        ))
    }

    fn send(&self, op: Op) -> Result<(), StorageError> {
        self.tx
            .send(op)
            .map_err(|_| write_err("the Raft log writer has stopped"))
    }

    fn meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StorageError> {
        let txn = self.db.begin_read().map_err(read_err)?;
        let meta = txn.open_table(META).map_err(read_err)?;
        let Some(v) = meta.get(key).map_err(read_err)? else {
            return Ok(None);
        };
        decode(v.value()).map(Some).map_err(read_err)
    }

    /// Index of the last log entry (0 when empty), for status.
    pub fn last_index(&self) -> u64 {
        self.last_log.get().map(|l| l.index).unwrap_or(0)
    }
}

/// The log-writer thread: group commits of queued operations.
fn writer(db: &Database, pending: &Pending, rx: &mpsc::Receiver<Op>) {
    while let Ok(first) = rx.recv() {
        let mut ops = vec![first];
        while let Ok(op) = rx.try_recv() {
            ops.push(op);
        }
        let result = write_ops(db, &ops);
        if let Err(e) = &result {
            tracing::error!(error = %e, "writing the Raft log failed");
        }
        for op in ops {
            match op {
                Op::Append(entries, flushed) => {
                    if result.is_ok() {
                        let mut p = pending.lock().expect("pending log entries");
                        for e in &entries {
                            if p.get(&e.log_id.index).is_some_and(|x| x.log_id == e.log_id) {
                                p.remove(&e.log_id.index);
                            }
                        }
                    }
                    flushed.log_io_completed(result.clone().map_err(io_err));
                }
                Op::Vote(_, done) => {
                    let _ = done.send(result.clone());
                }
                _ => {}
            }
        }
    }
}

fn write_ops(db: &Database, ops: &[Op]) -> Result<(), String> {
    let run = || -> Result<(), redb::Error> {
        let mut txn = db.begin_write()?;
        // A lone committed-index update is a hint openraft can do without
        // after a crash: no fsync for it.
        if ops.iter().all(|o| matches!(o, Op::Committed(_))) {
            txn.set_durability(redb::Durability::None)?;
        }
        {
            let mut log = txn.open_table(LOG)?;
            let mut meta = txn.open_table(META)?;
            for op in ops {
                match op {
                    Op::Append(entries, _) => {
                        for e in entries {
                            log.insert(e.log_id.index, encode(e).as_slice())?;
                        }
                    }
                    Op::Truncate(from) => {
                        log.retain_in(*from.., |_, _| false)?;
                    }
                    Op::Purge(upto) => {
                        log.retain_in(..=upto.index, |_, _| false)?;
                        meta.insert(PURGED, encode(&Some(*upto)).as_slice())?;
                    }
                    Op::Vote(v, _) => {
                        meta.insert(VOTE, encode(v).as_slice())?;
                    }
                    Op::Committed(c) => {
                        meta.insert(COMMITTED, encode(c).as_slice())?;
                    }
                }
            }
        }
        txn.commit()?;
        Ok(())
    };
    run().map_err(|e| e.to_string())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        // Never past the last entry: a truncated tail may still be in the
        // file until the writer gets to the truncation.
        let Some(last) = self.last_log.get().map(|l| l.index) else {
            return Ok(Vec::new());
        };
        let start = match range.start_bound() {
            Bound::Included(s) => *s,
            Bound::Excluded(s) => s + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(e) => (*e).min(last),
            Bound::Excluded(e) => e.saturating_sub(1).min(last),
            Bound::Unbounded => last,
        };
        if start > end {
            return Ok(Vec::new());
        }
        let mut out: BTreeMap<u64, Entry<TypeConfig>> = BTreeMap::new();
        {
            let txn = self.db.begin_read().map_err(read_err)?;
            let log = txn.open_table(LOG).map_err(read_err)?;
            for item in log.range(start..=end).map_err(read_err)? {
                let (k, v) = item.map_err(read_err)?;
                out.insert(k.value(), decode(v.value()).map_err(read_err)?);
            }
        }
        // Entries not yet durable (or rewritten after a truncation) win.
        let pending = self.pending.lock().expect("pending log entries");
        for (i, e) in pending.range(start..=end) {
            out.insert(*i, e.clone());
        }
        Ok(out.into_values().collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        Ok(LogState {
            last_purged_log_id: self.last_purged.get(),
            last_log_id: self.last_log.get(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError> {
        let (tx, rx) = oneshot::channel();
        self.send(Op::Vote(*vote, tx))?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StorageIOError::write_vote(&io_err(e)).into()),
            Err(_) => Err(write_err("the Raft log writer has stopped")),
        }
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError> {
        self.meta(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.send(Op::Committed(committed))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.meta::<Option<LogId>>(COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>>,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        {
            let mut pending = self.pending.lock().expect("pending log entries");
            for e in &entries {
                pending.insert(e.log_id.index, e.clone());
            }
        }
        if let Some(last) = entries.last() {
            self.last_log.set(Some(last.log_id));
        }
        self.send(Op::Append(entries, callback))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        {
            let mut pending = self.pending.lock().expect("pending log entries");
            pending.retain(|i, _| *i < log_id.index);
        }
        // The entry before the cut is the new last one.
        let before = if log_id.index == 0 {
            None
        } else {
            let mut me = self.clone();
            me.try_get_log_entries(log_id.index - 1..log_id.index)
                .await?
                .pop()
                .map(|e| e.log_id)
        };
        self.last_log.set(before.or(self.last_purged.get()));
        self.send(Op::Truncate(log_id.index))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        {
            let mut pending = self.pending.lock().expect("pending log entries");
            pending.retain(|i, _| *i > log_id.index);
        }
        self.last_purged.set(Some(log_id));
        if self.last_log.get().is_none_or(|l| l.index < log_id.index) {
            self.last_log.set(Some(log_id));
        }
        self.send(Op::Purge(log_id))
    }
}
