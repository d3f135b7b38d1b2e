//! Group commit on Raft: client mutations are queued, and whatever queued
//! while earlier entries were in flight goes into the next log entry (one
//! [`Batch`], up to [`MAX_BATCH`] mutations), with up to [`IN_FLIGHT`]
//! entries proposed at once so that the leader's log fsync, the followers'
//! and the network overlap. A caller is answered when its entry is
//! committed (a majority has it durable) and applied on the leader.
//!
//! What a mutation needs that is not in it already is decided here, on the
//! leader, before it is proposed: the batch time (`now_ns`, under which its
//! request ids are remembered) and the defaults of a new file's layout (a
//! replica's own defaults must not change what an entry does).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use openraft::error::{ClientWriteError, ForwardToLeader, RaftError};
use tokio::sync::{oneshot, Notify};

use super::Raft;
use crate::error::{ControlError, Result};
use crate::store::{Batch, FileDefaults, Mutation, Outcome, Request};

/// Most mutations in one log entry.
pub const MAX_BATCH: usize = 1024;
/// Log entries proposed and not yet answered, at most.
pub const IN_FLIGHT: usize = 4;
/// How long a proposal may wait to be committed before its callers are
/// answered `unavailable` (a leader cut off from its majority never
/// commits; it does not know it is no longer the leader). The entry may
/// still be committed later: the request id makes sending it again safe.
pub const COMMIT_WITHIN: Duration = Duration::from_secs(10);

type Waiting = (Request, oneshot::Sender<Result<Outcome>>);

/// Proposes client mutations through Raft.
pub struct Proposer {
    raft: Raft,
    defaults: FileDefaults,
    queue: RefCell<Vec<Waiting>>,
    wake: Notify,
    in_flight: Cell<usize>,
}

/// `not_leader` naming the leader Raft points to, if it knows one.
pub fn forward_to_leader(f: ForwardToLeader<u64, openraft::BasicNode>) -> ControlError {
    ControlError::NotLeader(match f.leader_node {
        Some(n) => format!(
            "the leader is {} (replica {})",
            n.addr,
            f.leader_id.unwrap_or(0)
        ),
        None => "no leader is known yet (an election is under way)".into(),
    })
}

/// The control error for a failed Raft write.
pub fn write_error(e: RaftError<u64, ClientWriteError<u64, openraft::BasicNode>>) -> ControlError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => forward_to_leader(f),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            ControlError::InvalidArgument(format!("membership change refused: {e}"))
        }
        RaftError::Fatal(f) => ControlError::Unavailable(format!("this replica stopped: {f}")),
    }
}

/// Fills a new file's zero layout fields with `defaults`, so that applying
/// the mutation does not depend on the applying replica's configuration.
fn resolve_defaults(m: &mut Mutation, defaults: &FileDefaults) {
    if let Mutation::Create { options, .. } = m {
        if options.chunk_size == 0 {
            options.chunk_size = defaults.chunk_size;
        }
        if options.replication == 0 {
            options.replication = defaults.replication;
        }
        if options.mode == 0 {
            options.mode = defaults.mode;
        }
    }
}

impl Proposer {
    /// Starts proposing on `raft` (a local task on the RPC thread).
    pub fn start(raft: Raft, defaults: FileDefaults) -> Rc<Self> {
        let p = Rc::new(Proposer {
            raft,
            defaults,
            queue: RefCell::default(),
            wake: Notify::new(),
            in_flight: Cell::new(0),
        });
        let me = p.clone();
        tokio::task::spawn_local(async move {
            loop {
                let notified = me.wake.notified();
                me.propose_queued();
                notified.await;
            }
        });
        p
    }

    /// Applies `r` through the Raft log; answers once it is committed and
    /// applied here. Fails with `not_leader` on a replica that is not the
    /// leader (Raft refuses the proposal), or that lost its leadership
    /// before the entry committed: then the entry may still be committed by
    /// the next leader, and the request id is what makes sending it again
    /// safe.
    pub async fn submit(&self, mut r: Request) -> Result<Outcome> {
        resolve_defaults(&mut r.mutation, &self.defaults);
        let (tx, rx) = oneshot::channel();
        self.queue.borrow_mut().push((r, tx));
        self.wake.notify_one();
        rx.await
            .map_err(|_| ControlError::Unavailable("the Raft proposer stopped".into()))?
    }

    /// Proposes what is queued, as long as fewer than [`IN_FLIGHT`] entries
    /// are out.
    fn propose_queued(self: &Rc<Self>) {
        while self.in_flight.get() < IN_FLIGHT {
            let waiting: Vec<Waiting> = {
                let mut q = self.queue.borrow_mut();
                if q.is_empty() {
                    return;
                }
                let n = q.len().min(MAX_BATCH);
                q.drain(..n).collect()
            };
            self.in_flight.set(self.in_flight.get() + 1);
            let me = self.clone();
            tokio::task::spawn_local(async move {
                let (requests, replies): (Vec<_>, Vec<_>) = waiting.into_iter().unzip();
                let hold =
                    held_path().is_some_and(|p| requests.iter().any(|r| touches(&r.mutation, &p)));
                let batch = Batch {
                    now_ns: crate::service::now_ns(),
                    requests,
                };
                let result = tokio::time::timeout(COMMIT_WITHIN, me.raft.client_write(batch)).await;
                me.in_flight.set(me.in_flight.get() - 1);
                me.wake.notify_one();
                if hold && matches!(result, Ok(Ok(_))) {
                    tracing::warn!(
                        "failpoint raft::before_answer: holding the answers of a committed entry"
                    );
                    std::future::pending::<()>().await;
                }
                let result = match result {
                    Ok(r) => r.map_err(write_error),
                    Err(_) => Err(ControlError::Unavailable(format!(
                        "not committed within {COMMIT_WITHIN:?} (this replica may have lost its \
                         majority); it may still be applied: send it again with the same request id"
                    ))),
                };
                match result {
                    Ok(resp) => {
                        let mut answers = resp.data.0.into_iter();
                        for reply in replies {
                            let r = answers.next().map(|a| a.into_result()).unwrap_or_else(|| {
                                Err(ControlError::Internal(
                                    "an entry's answer is missing".into(),
                                ))
                            });
                            let _ = reply.send(r);
                        }
                    }
                    Err(e) => {
                        for reply in replies {
                            let _ = reply.send(Err(e.clone()));
                        }
                    }
                }
            });
        }
    }
}

/// Failpoint `raft::before_answer` (`return(PATH)`): the answers of a
/// committed entry with a mutation of PATH are never sent, as if this
/// leader died between commit and answer (tests then kill it).
fn held_path() -> Option<String> {
    crate::fail_point!("raft::before_answer", |arg| arg);
    None
}

/// Whether `m` names `path`.
fn touches(m: &Mutation, path: &str) -> bool {
    match m {
        Mutation::Create { path: p, .. }
        | Mutation::Mkdir { path: p, .. }
        | Mutation::Unlink { path: p, .. }
        | Mutation::Rmdir { path: p, .. }
        | Mutation::SetAttr { path: p, .. } => p == path,
        Mutation::Rename { from, to, .. } => from == path || to == path,
        _ => false,
    }
}
