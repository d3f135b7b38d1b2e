//! Request ids: what makes a mutation safe to send again. A client gives
//! each mutation a 16-byte id; the store remembers, in the same transaction
//! that applies it, the id with the answer it got (`requests`), so a
//! mutation sent again with the same id (its answer was lost, the leader
//! changed) is answered from there and never applied twice. The ids are
//! replicated with the rest of the store, so a new leader knows them too.
//!
//! Retention is by the time the proposer stamped on the batch (never a
//! local clock, so every replica expires the same ids in the same
//! transaction): an id is kept at least [`REQUEST_RETENTION`], which is
//! longer than any client keeps retrying (`docs/protocol.md`).

use std::time::Duration;

use redb::{ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::Outcome;
use crate::error::{ControlError, Result};

/// How long an answered request id is remembered.
pub const REQUEST_RETENTION: Duration = Duration::from_secs(120);
/// Most expired ids one batch forgets: expiry work per batch stays bounded
/// (a backlog clears over the following batches).
const EXPIRE_PER_BATCH: usize = 2048;

/// request id -> [`Remembered`] (postcard)
pub(super) const REQUESTS: TableDefinition<u128, &[u8]> = TableDefinition::new("requests");
/// (batch time ns, request id) -> (): the ids in the order they expire.
pub(super) const REQUEST_TIMES: TableDefinition<(i64, u128), ()> =
    TableDefinition::new("request_times");

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

#[derive(Serialize, Deserialize)]
struct Remembered {
    at_ns: i64,
    answer: Answer,
}

/// The remembered answer of request `id`, if it was applied and not yet
/// forgotten.
pub(super) fn lookup(txn: &WriteTransaction, id: u128) -> Result<Option<Answer>> {
    read_answer(&txn.open_table(REQUESTS)?, id)
}

/// [`lookup`] in a read transaction.
pub(super) fn lookup_read(txn: &redb::ReadTransaction, id: u128) -> Result<Option<Answer>> {
    read_answer(&txn.open_table(REQUESTS)?, id)
}

fn read_answer(
    table: &impl ReadableTable<u128, &'static [u8]>,
    id: u128,
) -> Result<Option<Answer>> {
    let Some(v) = table.get(id)? else {
        return Ok(None);
    };
    let r: Remembered = postcard::from_bytes(v.value())
        .map_err(|e| ControlError::corrupt(format!("request {id:032x}"), e))?;
    Ok(Some(r.answer))
}

/// Remembers that request `id` was answered `answer` in the batch of
/// `at_ns`. Writes only.
pub(super) fn remember(txn: &WriteTransaction, id: u128, at_ns: i64, answer: Answer) -> Result<()> {
    let bytes = postcard::to_stdvec(&Remembered { at_ns, answer })
        .map_err(|e| ControlError::Internal(format!("encoding an answer: {e}")))?;
    txn.open_table(REQUESTS)?.insert(id, bytes.as_slice())?;
    txn.open_table(REQUEST_TIMES)?.insert((at_ns, id), ())?;
    Ok(())
}

/// Forgets up to [`EXPIRE_PER_BATCH`] ids remembered before
/// `now_ns - REQUEST_RETENTION`.
pub(super) fn expire(txn: &WriteTransaction, now_ns: i64) -> Result<()> {
    let before = now_ns.saturating_sub(REQUEST_RETENTION.as_nanos() as i64);
    let mut times = txn.open_table(REQUEST_TIMES)?;
    let mut requests = txn.open_table(REQUESTS)?;
    let mut gone = Vec::new();
    for item in times
        .range((i64::MIN, 0)..(before, 0))?
        .take(EXPIRE_PER_BATCH)
    {
        gone.push(item?.0.value());
    }
    for key in gone {
        times.remove(key)?;
        requests.remove(key.1)?;
    }
    Ok(())
}
