//! Request ids: what makes a mutation safe to send again. A client gives
//! each mutation a 16-byte id; the store remembers, in the same transaction
//! that applies it, the id with the answer it got, so a mutation sent again
//! with the same id (its answer was lost, the leader changed) is answered
//! from there and never applied twice. The ids are replicated with the rest
//! of the store, so a new leader knows them too.
//!
//! Retention is by the time the proposer stamped on the batch (never a
//! local clock, so every replica expires the same ids in the same
//! transaction): an id is kept at least [`REQUEST_RETENTION`], which is
//! longer than any client keeps retrying (`docs/protocol.md`).
//!
//! Layout: one table, [`ANSWERS`], keyed by (batch time, id), so a batch's
//! ids go to the right edge of its tree and expiry takes them from the
//! left edge: a commit dirties a few pages of it however many ids are kept.
//! The way from an id to its row is [`RequestIndex`], in memory (id ->
//! batch time), built from the table when the store opens or imports a
//! snapshot and changed only once the transaction that changed the table
//! committed. Why: keyed by the random id (as before), every request
//! dirtied its own leaf and the path above it in a second tree, and the
//! commit of a create took about 1.9 times as long (docs/benchmarks.md).
//! Memory: one index entry (about 40 bytes) per id kept, at most
//! [`REQUEST_RETENTION`] times the commit rate (about 100 MB at 20,000
//! mutations a second, this store's most on one disk).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use redb::{ReadableDatabase, ReadableTable, TableDefinition, TableHandle, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::Outcome;
use crate::error::{ControlError, Result};

/// How long an answered request id is remembered.
pub const REQUEST_RETENTION: Duration = Duration::from_secs(120);
/// Most expired ids one batch forgets: expiry work per batch stays bounded
/// (a backlog clears over the following batches).
const EXPIRE_PER_BATCH: usize = 2048;

/// (batch time ns, request id) -> [`Answer`] (postcard).
pub(super) const ANSWERS: TableDefinition<(i64, u128), &[u8]> =
    TableDefinition::new("request_answers");
/// The tables of stores written before [`ANSWERS`]: request id ->
/// (batch time, answer), and (batch time, request id) -> (). Moved into
/// [`ANSWERS`] when such a store opens ([`migrate`]).
const OLD_REQUESTS: TableDefinition<u128, &[u8]> = TableDefinition::new("requests");
const OLD_REQUEST_TIMES: TableDefinition<(i64, u128), ()> = TableDefinition::new("request_times");

/// What a request was answered, as stored and as replicated: the outcome,
/// or the refusal's wire code and message (failures of the store itself are
/// never answers: they abort the whole batch).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    /// Applied.
    Done(Outcome),
    /// Refused with this wire error code (`ErrorCode as u16`) and message.
    Refused(u16, String),
}

impl Answer {
    /// The answer for `result`; `None` for a failure of the store itself.
    pub fn of(result: &Result<Outcome>) -> Option<Answer> {
        match result {
            Ok(o) => Some(Answer::Done(o.clone())),
            Err(e) => e
                .refusal()
                .map(|(code, m)| Answer::Refused(code as u16, m.to_string())),
        }
    }

    /// Back to the result it was made from.
    pub fn into_result(self) -> Result<Outcome> {
        match self {
            Answer::Done(o) => Ok(o),
            Answer::Refused(code, message) => {
                match ringfs_schema::control_capnp::ErrorCode::try_from(code) {
                    Ok(code) => Err(ControlError::with_code(code, message)),
                    Err(_) => Err(ControlError::Internal(format!(
                        "refused with unknown code {code}: {message}"
                    ))),
                }
            }
        }
    }
}

/// A row of [`OLD_REQUESTS`].
#[derive(Deserialize)]
struct OldRemembered {
    at_ns: i64,
    answer: Answer,
}

/// The ids kept in [`ANSWERS`], each with the batch time its row is under.
/// Changed only together with the commit that changed the table
/// ([`RequestIndex::commit`]), so it names exactly the rows of the last
/// committed transaction. A commit that fails leaves it as it was: redb
/// then refuses every later write until the database is opened again
/// ([`redb::StorageError::PreviousIo`]), which reads the index anew.
#[derive(Default)]
pub(super) struct RequestIndex {
    at: Mutex<HashMap<u128, i64>>,
}

/// What one write transaction changed of the index: `Some(time)` added,
/// `None` forgotten. Taken by [`RequestIndex::commit`], dropped with a
/// transaction that is not committed.
#[derive(Default)]
pub(super) struct Pending {
    changes: HashMap<u128, Option<i64>>,
}

impl RequestIndex {
    /// The index of the ids in `txn`'s [`ANSWERS`].
    pub(super) fn read(txn: &redb::ReadTransaction) -> Result<Self> {
        Ok(RequestIndex {
            at: Mutex::new(ids(&txn.open_table(ANSWERS)?)?),
        })
    }

    /// Commits `txn` and takes what it changed of the table (`pending`).
    /// The index is held across the commit: no lookup sees the table
    /// committed and the index not yet caught up.
    pub(super) fn commit(&self, txn: WriteTransaction, pending: Pending) -> Result<()> {
        let mut at = self.lock();
        txn.commit()?;
        for (id, change) in pending.changes {
            match change {
                Some(at_ns) => at.insert(id, at_ns),
                None => at.remove(&id),
            };
        }
        Ok(())
    }

    /// Commits `txn`, which replaced the whole table, and reads the index
    /// anew from it (held across the commit as in [`RequestIndex::commit`]).
    pub(super) fn commit_replaced(&self, txn: WriteTransaction) -> Result<()> {
        let fresh = ids(&txn.open_table(ANSWERS)?)?;
        let mut at = self.lock();
        txn.commit()?;
        *at = fresh;
        Ok(())
    }

    fn get(&self, id: u128) -> Option<i64> {
        self.lock().get(&id).copied()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u128, i64>> {
        // A plain map, whole after any panic.
        self.at.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The ids of `table`, each with its batch time.
fn ids(table: &impl ReadableTable<(i64, u128), &'static [u8]>) -> Result<HashMap<u128, i64>> {
    let mut at = HashMap::new();
    for row in table.iter()? {
        let (at_ns, id) = row?.0.value();
        at.insert(id, at_ns);
    }
    Ok(at)
}

impl Pending {
    /// Where `id`'s row is, counting this transaction's changes.
    fn at(&self, index: &RequestIndex, id: u128) -> Option<i64> {
        match self.changes.get(&id) {
            Some(change) => *change,
            None => index.get(id),
        }
    }
}

/// The remembered answer of request `id`, if it was applied and not yet
/// forgotten, as `txn` (with its changes so far, `pending`) sees it.
pub(super) fn lookup(
    txn: &WriteTransaction,
    index: &RequestIndex,
    pending: &Pending,
    id: u128,
) -> Result<Option<Answer>> {
    let Some(at_ns) = pending.at(index, id) else {
        return Ok(None);
    };
    match read_answer(&txn.open_table(ANSWERS)?, at_ns, id)? {
        Some(answer) => Ok(Some(answer)),
        None => Err(ControlError::corrupt(
            format!("request {id:032x}"),
            "indexed, but its answer is missing",
        )),
    }
}

/// [`lookup`] outside the writer: in a read transaction begun after the
/// index was consulted, so it holds every row the index names but those
/// forgotten meanwhile (which read as never seen).
pub(super) fn lookup_read(
    db: &redb::Database,
    index: &RequestIndex,
    id: u128,
) -> Result<Option<Answer>> {
    let Some(at_ns) = index.get(id) else {
        return Ok(None);
    };
    read_answer(&db.begin_read()?.open_table(ANSWERS)?, at_ns, id)
}

fn read_answer(
    table: &impl ReadableTable<(i64, u128), &'static [u8]>,
    at_ns: i64,
    id: u128,
) -> Result<Option<Answer>> {
    let Some(v) = table.get((at_ns, id))? else {
        return Ok(None);
    };
    postcard::from_bytes(v.value())
        .map(Some)
        .map_err(|e| ControlError::corrupt(format!("request {id:032x}"), e))
}

/// Remembers that request `id` was answered `answer` in the batch of
/// `at_ns`. Writes only.
pub(super) fn remember(
    txn: &WriteTransaction,
    pending: &mut Pending,
    id: u128,
    at_ns: i64,
    answer: Answer,
) -> Result<()> {
    let bytes = postcard::to_stdvec(&answer)
        .map_err(|e| ControlError::Internal(format!("encoding an answer: {e}")))?;
    txn.open_table(ANSWERS)?
        .insert((at_ns, id), bytes.as_slice())?;
    pending.changes.insert(id, Some(at_ns));
    Ok(())
}

/// Forgets up to [`EXPIRE_PER_BATCH`] ids remembered before
/// `now_ns - REQUEST_RETENTION`.
pub(super) fn expire(
    txn: &WriteTransaction,
    index: &RequestIndex,
    pending: &mut Pending,
    now_ns: i64,
) -> Result<()> {
    let before = now_ns.saturating_sub(REQUEST_RETENTION.as_nanos() as i64);
    let mut table = txn.open_table(ANSWERS)?;
    let mut gone = Vec::new();
    for row in table.range(..(before, 0))?.take(EXPIRE_PER_BATCH) {
        gone.push(row?.0.value());
    }
    for (at_ns, id) in gone {
        table.remove((at_ns, id))?;
        // The id may have been remembered again later (a client reusing
        // it after the retention): only its row of this time goes.
        if pending.at(index, id) == Some(at_ns) {
            pending.changes.insert(id, None);
        }
    }
    Ok(())
}

/// Moves the rows of a store written before [`ANSWERS`] into it and drops
/// the old tables; nothing to do for a new or already moved store.
pub(super) fn migrate(txn: &WriteTransaction) -> Result<()> {
    let old = txn.list_tables()?.any(|t| t.name() == OLD_REQUESTS.name());
    if !old {
        return Ok(());
    }
    {
        let from = txn.open_table(OLD_REQUESTS)?;
        let mut to = txn.open_table(ANSWERS)?;
        for row in from.iter()? {
            let (id, v) = row?;
            let (key, bytes) = old_row(&id.value().to_le_bytes(), v.value())?;
            to.insert(key, bytes.as_slice())?;
        }
    }
    txn.delete_table(OLD_REQUESTS)?;
    txn.delete_table(OLD_REQUEST_TIMES)?;
    Ok(())
}

/// A row of [`OLD_REQUESTS`] (key and value as stored) as a row of
/// [`ANSWERS`].
pub(super) fn old_row(key: &[u8], value: &[u8]) -> Result<((i64, u128), Vec<u8>)> {
    let id = <[u8; 16]>::try_from(key)
        .map(u128::from_le_bytes)
        .map_err(|_| ControlError::corrupt("a request id", format!("{} bytes", key.len())))?;
    let old: OldRemembered = postcard::from_bytes(value)
        .map_err(|e| ControlError::corrupt(format!("request {id:032x}"), e))?;
    let bytes = postcard::to_stdvec(&old.answer)
        .map_err(|e| ControlError::Internal(format!("encoding an answer: {e}")))?;
    Ok(((old.at_ns, id), bytes))
}
