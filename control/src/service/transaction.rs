//! `commitTransaction`: the chunk records and sizes of several files,
//! committed by one mutation (one durable transaction, one Raft entry), so
//! that readers see every file of it before or every file after.
//!
//! Each file is named by the guid of a write handle its caller opened and
//! still holds the lease of; the records obey commitChunks' rules for that
//! handle. A file whose handle came from `openNew` names the path the
//! commit creates it at; `unlinks` names files the commit removes.
//! Everything that lives only on this server (leases, handles,
//! capabilities) is checked here before the mutation is proposed;
//! everything in the store (versions, sizes, epochs, the namespace checks
//! of creates and unlinks) is checked by the mutation before its first
//! write. Failpoints `control::tx_before_commit`
//! and `control::tx_after_commit` (before the mutation is proposed, and
//! after it applied but before the answer) let tests crash the server
//! there.

use ringfs_ops::capability::Lease;
use ringfs_schema::control_capnp::control;

use super::convert::{fill_attr, now_ns, read_chunk_record, read_create_options, text};
use super::file_handle::{check_commit_capabilities, note_committed};
use super::session::Principal;
use super::MAX_CHUNKS_PER_CALL;
use crate::cluster_state::State;
use crate::error::{ControlError, Result};
use crate::store::{Mutation, Outcome, Request, TxCreate, TxFile, MAX_TX_FILES};

/// Checks and commits the transaction of `params` for `who`.
pub(super) async fn commit(
    state: &State,
    who: &Principal,
    params: control::CommitTransactionParams,
    results: control::CommitTransactionResults,
) -> Result<()> {
    let p = params.get()?;
    let id = super::control_impl::request_id(p.get_request_id())?;
    // Sent again after a lost answer: the handles of the first try died
    // with its connection, so the answer comes from the store, not from a
    // second check (applied at most once, answered the same).
    if let Some(id) = id {
        state.read_barrier(false).await?;
        if let Some(answer) = state.store.answer(id)? {
            return answer_attrs(answer.into_result()?, results);
        }
    }
    let list = p.get_files()?;
    if list.is_empty() || list.len() as usize > MAX_TX_FILES {
        return Err(ControlError::InvalidArgument(format!(
            "a transaction commits 1 to {MAX_TX_FILES} files, not {}",
            list.len()
        )));
    }
    let total: u64 = list
        .iter()
        .map(|f| f.get_chunks().map(|c| c.len() as u64))
        .sum::<capnp::Result<u64>>()?;
    if total > MAX_CHUNKS_PER_CALL as u64 {
        return Err(ControlError::InvalidArgument(format!(
            "at most {MAX_CHUNKS_PER_CALL} records per transaction, not {total}"
        )));
    }
    let unlinks = p.get_unlinks()?;
    if unlinks.len() as usize > MAX_TX_FILES {
        return Err(ControlError::InvalidArgument(format!(
            "a transaction unlinks at most {MAX_TX_FILES} files, not {}",
            unlinks.len()
        )));
    }
    let unlinks = unlinks.iter().map(text).collect::<Result<Vec<_>>>()?;
    let mut creates = Vec::new();
    let mut files = Vec::with_capacity(list.len() as usize);
    for f in list.iter() {
        let guid: crate::leases::Guid = f.get_guid()?.try_into().map_err(|_| {
            ControlError::InvalidArgument("a write handle's guid is 16 bytes".into())
        })?;
        let handle = state.write_handles.borrow().get(&guid).copied();
        let handle = match handle {
            Some(h) if state.leases.borrow().holds(h.inode, &guid) => h,
            _ => {
                return Err(ControlError::NoLease(format!(
                    "the transaction names a write handle ({}) that is closed or no longer \
                     holds its lease",
                    hex(&guid)
                )))
            }
        };
        if handle.uid != who.caller.uid {
            return Err(ControlError::PermissionDenied(format!(
                "write handle {} was opened by another user",
                hex(&guid)
            )));
        }
        let lease = Lease {
            inode: handle.inode,
            epoch: handle.epoch,
        };
        let chunks = f.get_chunks()?;
        check_commit_capabilities(state, lease, chunks)?;
        let create_at = text(f.get_create_at())?;
        if !create_at.is_empty() {
            creates.push(TxCreate {
                inode: handle.inode,
                path: create_at,
                options: read_create_options(f.get_create_options()?),
            });
        }
        files.push(TxFile {
            inode: handle.inode,
            epoch: handle.epoch,
            truncate_to: f.get_truncate_to(),
            chunks: chunks
                .iter()
                .map(read_chunk_record)
                .collect::<Result<Vec<_>>>()?,
            file_size: f.get_file_size(),
        });
    }
    for f in &files {
        note_committed(state, &f.chunks);
    }
    crate::fail_point!("control::tx_before_commit");
    let request = Request {
        id,
        mutation: Mutation::CommitTransaction {
            who: who.caller.clone(),
            files,
            creates,
            unlinks,
            now_ns: now_ns(),
        },
    };
    let outcome = state.committer.submit_request(request).await?;
    crate::fail_point!("control::tx_after_commit");
    // Replicas short of R are left to the planner (no writer follows up).
    state.rescan.set(true);
    answer_attrs(outcome, results)
}

fn answer_attrs(outcome: Outcome, mut results: control::CommitTransactionResults) -> Result<()> {
    let Outcome::Attrs(attrs) = outcome else {
        return Err(ControlError::Internal(format!("unexpected {outcome:?}")));
    };
    let mut out = results.get().init_attrs(attrs.len() as u32);
    for (i, (ino, a)) in attrs.iter().enumerate() {
        fill_attr(out.reborrow().get(i as u32), *ino, a);
    }
    Ok(())
}

fn hex(guid: &[u8]) -> String {
    guid.iter().map(|b| format!("{b:02x}")).collect()
}
