//! Chunk locks on the data plane: `lock` (take, wait for, or renew a lock),
//! `unlock`, and the authorization every chunk operation passes first: a
//! lock token this node issued for a lock still held, or an implicit lock
//! taken for the operation and released right after it. The lock is also
//! the operation's fence: [`Shard::fence`] checks it again right before the
//! operation touches the disk, so an operation whose lock lapsed (or was
//! released with its connection) while it waited is refused then.
//!
//! The table itself ([`crate::lock_table`]) is pure bookkeeping; this file
//! turns its changes into messages: waiters are one-shot channels, granted
//! when a holder releases or its lease lapses (the shard's sweeper), and a
//! grant whose requester went away is released again at once.

use super::OpError;
use crate::chunk_store::StoreError;
use crate::conn::{Outgoing, Tx};
use crate::lock_table::{Acquire, Changes, Grant, LockError, Mode, Owner};
use crate::shard::Shard;
use futures::channel::oneshot;
use ringfs_schema::frame::{Header, LockMode, Op, Status, Token};
use ringfs_schema::ids::ChunkId;
use std::time::{Duration, Instant};

/// How a waiting lock request learns its outcome: the grant, or `None` when
/// its deadline passed.
pub(crate) type LockWaiter = oneshot::Sender<Option<Grant>>;

fn mode_of(m: LockMode) -> Option<Mode> {
    match m {
        LockMode::None => None,
        LockMode::Read => Some(Mode::Read),
        LockMode::Write => Some(Mode::Write),
    }
}

fn lock_mode(m: Mode) -> LockMode {
    match m {
        Mode::Read => LockMode::Read,
        Mode::Write => LockMode::Write,
    }
}

/// A lock request holding its place in its chunk's queue
/// ([`Shard::request_lock`]); [`Shard::granted`] waits for its outcome.
pub(crate) struct Requested {
    chunk: ChunkId,
    timeout: Duration,
    outcome: Outcome,
}

enum Outcome {
    /// Granted or refused at once.
    Done(Result<Grant, OpError>),
    /// Waiting in the queue: the grant, or `None` at the deadline.
    Queued(oneshot::Receiver<Option<Grant>>),
}

impl Requested {
    /// Whether it waits in the queue (it was not granted or refused at once).
    pub(crate) fn queued(&self) -> bool {
        matches!(self.outcome, Outcome::Queued(_))
    }
}

/// An authorization asked for ([`Shard::request_auth`]): decided, or
/// waiting for its implicit lock.
pub(super) enum Authorizing {
    Done(Result<Auth, OpError>),
    Lock { client: u64, lock: Requested },
}

/// How a request is authorized: by a lock held with a token, or by an
/// implicit lock to release after the operation (with [`Shard::end_auth`]).
pub(super) struct Auth {
    client: u64,
    generation: u64,
    implicit: bool,
}

impl Shard {
    /// Notifies granted and timed-out waiters and drops reservations whose
    /// lock is gone. A grant whose requester vanished is released again.
    pub(crate) fn apply(&self, changes: Changes<LockWaiter>) {
        let mut work = vec![changes];
        while let Some(ch) = work.pop() {
            for (chunk, client, generation) in ch.released {
                self.reservations
                    .borrow_mut()
                    .lock_released(chunk, client, generation);
            }
            for w in ch.timed_out {
                let _ = w.send(None);
            }
            for (w, chunk, client, grant) in ch.granted {
                if w.send(Some(grant)).is_err() {
                    if let Ok(more) = self.locks.borrow_mut().release(
                        chunk,
                        client,
                        grant.generation,
                        Instant::now(),
                    ) {
                        work.push(more);
                    }
                }
            }
        }
    }

    pub(crate) fn release(
        &self,
        chunk: ChunkId,
        client: u64,
        generation: u64,
    ) -> Result<(), LockError> {
        let changes = self
            .locks
            .borrow_mut()
            .release(chunk, client, generation, Instant::now())?;
        self.reservations
            .borrow_mut()
            .lock_released(chunk, client, generation);
        self.apply(changes);
        Ok(())
    }

    pub(super) fn lease(&self, ms: u32) -> Duration {
        if ms == 0 {
            self.cfg.default_lease
        } else {
            Duration::from_millis(ms as u64).min(self.cfg.max_lease)
        }
    }

    /// Asks for a lock for `owner`, to wait up to `timeout` (FIFO) if it
    /// is not free. When this returns, the request holds its place in the
    /// chunk's lock queue (granted, queued or refused): requests asked one
    /// after the other are granted in that order. [`Shard::granted`] waits
    /// for the outcome.
    pub(crate) fn request_lock(
        &self,
        chunk: ChunkId,
        client: u64,
        mode: Mode,
        lease: Duration,
        timeout: Duration,
        owner: Owner,
    ) -> Requested {
        let now = Instant::now();
        let (tx, rx) = oneshot::channel();
        let wait = (!timeout.is_zero()).then(|| (now + timeout, tx));
        let r = self
            .locks
            .borrow_mut()
            .acquire(chunk, client, mode, lease, now, wait, owner);
        Requested {
            chunk,
            timeout,
            outcome: match r {
                Acquire::Granted(g) => Outcome::Done(Ok(g)),
                Acquire::Busy => Outcome::Done(Err(OpError(
                    Status::Busy,
                    format!("chunk {chunk} is locked"),
                ))),
                Acquire::Full => Outcome::Done(Err(table_full())),
                Acquire::Queued => {
                    self.cfg.metrics.lock_waited();
                    Outcome::Queued(rx)
                }
            },
        }
    }

    /// The outcome of a lock request: its grant, or why not (`timeout`
    /// once its deadline passed in the queue).
    pub(crate) async fn granted(&self, r: Requested) -> Result<Grant, OpError> {
        let rx = match r.outcome {
            Outcome::Done(r) => return r,
            Outcome::Queued(rx) => rx,
        };
        match rx.await {
            Ok(Some(g)) => Ok(g),
            _ => {
                self.cfg.metrics.lock_timed_out();
                Err(OpError(
                    Status::Timeout,
                    format!(
                        "timed out after {} ms waiting for the lock on chunk {}",
                        r.timeout.as_millis(),
                        r.chunk
                    ),
                ))
            }
        }
    }

    fn check_token(&self, chunk: ChunkId, token: &Token, need: Mode) -> Result<Grant, OpError> {
        if !self.key.verify(chunk, token) {
            return Err(OpError(
                Status::BadToken,
                format!("lock token for chunk {chunk} is not authentic (forged, altered or from another node)"),
            ));
        }
        self.locks
            .borrow()
            .validate(
                chunk,
                token.client_id,
                token.generation,
                need,
                Instant::now(),
            )
            .map_err(|e| {
                OpError(
                    Status::BadToken,
                    format!("lock token for chunk {chunk}: {e}"),
                )
            })
    }

    /// Authorizes a chunk operation needing `need`, asked on connection
    /// `conn`: a valid token, or an implicit lock taken now.
    pub(super) async fn authorize(
        &self,
        h: &Header,
        need: Mode,
        conn: u64,
    ) -> Result<Auth, OpError> {
        let a = self.request_auth(h, need, conn);
        self.authorized(a).await
    }

    /// Asks for the authorization of a chunk operation needing `need`,
    /// asked on connection `conn`: checks its token, or asks for its
    /// implicit lock, which holds its place in the chunk's lock queue when
    /// this returns. [`Shard::authorized`] waits for the outcome.
    pub(super) fn request_auth(&self, h: &Header, need: Mode, conn: u64) -> Authorizing {
        if h.token.is_present() {
            return Authorizing::Done(self.check_token(h.chunk_id, &h.token, need).map(|_| Auth {
                client: h.token.client_id,
                generation: h.token.generation,
                implicit: false,
            }));
        }
        match mode_of(h.implicit_lock) {
            None => Authorizing::Done(Err(OpError(
                Status::BadToken,
                "request carries neither a lock token nor an implicit lock".into(),
            ))),
            Some(m) if !m.permits(need) => Authorizing::Done(Err(OpError(
                Status::InvalidArgument,
                "implicit read lock does not permit this operation".into(),
            ))),
            Some(m) => Authorizing::Lock {
                client: h.client_id,
                lock: self.request_lock(
                    h.chunk_id,
                    h.client_id,
                    m,
                    self.cfg.implicit_lease,
                    Duration::from_millis(h.timeout_ms as u64),
                    Owner {
                        conn,
                        explicit: false,
                    },
                ),
            },
        }
    }

    /// The outcome of [`Shard::request_auth`].
    pub(super) async fn authorized(&self, a: Authorizing) -> Result<Auth, OpError> {
        match a {
            Authorizing::Done(r) => r,
            Authorizing::Lock { client, lock } => {
                let g = self.granted(lock).await?;
                Ok(Auth {
                    client,
                    generation: g.generation,
                    implicit: true,
                })
            }
        }
    }

    /// The fence of an operation authorized by `auth`: its lock must still
    /// be held, unexpired, in a mode permitting `need`. Called right before
    /// the operation's disk I/O.
    pub(super) fn fence(&self, chunk: ChunkId, auth: &Auth, need: Mode) -> Result<(), StoreError> {
        failpoint!("ops::fence", |_| Err(StoreError::Fenced(
            "injected by failpoint ops::fence".into()
        )));
        self.locks
            .borrow()
            .validate(chunk, auth.client, auth.generation, need, Instant::now())
            .map(drop)
            .map_err(|e| {
                StoreError::Fenced(format!(
                    "chunk {chunk}: the lock of this operation lapsed before it was applied ({e}); \
                     nothing was applied"
                ))
            })
    }

    pub(super) fn end_auth(&self, chunk: ChunkId, auth: Auth) {
        if auth.implicit {
            let _ = self.release(chunk, auth.client, auth.generation);
        }
    }

    pub(super) async fn op_lock(
        &self,
        h: &Header,
        tx: &Tx,
        conn: u64,
    ) -> Result<Option<Outgoing>, OpError> {
        self.check_shard(h.chunk_id)?;
        let mode = mode_of(h.lock_mode).ok_or_else(|| {
            OpError(
                Status::InvalidArgument,
                "lock needs lockMode read or write".into(),
            )
        })?;
        let lease = self.lease(h.lease_ms);
        let grant_frame = |op: Op, client: u64, g: Grant| {
            let mut r = Header::response_to(h, Status::Ok);
            r.op = op;
            r.token = self.key.issue(h.chunk_id, client, g.generation);
            r.lock_mode = lock_mode(g.mode);
            r.lease_ms = g
                .expires
                .saturating_duration_since(Instant::now())
                .as_millis() as u32;
            r
        };
        if h.token.is_present() {
            // Renewal of a held lock.
            self.check_token(h.chunk_id, &h.token, mode)?;
            let g = self
                .locks
                .borrow_mut()
                .renew(
                    h.chunk_id,
                    h.token.client_id,
                    h.token.generation,
                    lease,
                    Instant::now(),
                )
                .map_err(|e| OpError(Status::BadToken, e.to_string()))?;
            return Ok(Some(Outgoing::header(grant_frame(
                Op::Lock,
                h.token.client_id,
                g,
            ))));
        }
        // Locks are for chunks this shard has (or reserved): a lock on an
        // arbitrary id would only take room in the table.
        if !self.store.contains(h.chunk_id) && self.reservations.borrow().get(h.chunk_id).is_none()
        {
            return Err(OpError(
                Status::NotFound,
                format!("chunk {} does not exist here", h.chunk_id),
            ));
        }
        let timeout = Duration::from_millis(h.timeout_ms as u64);
        let owner = Owner {
            conn,
            explicit: true,
        };
        let r = self.request_lock(h.chunk_id, h.client_id, mode, lease, timeout, owner);
        if !r.queued() {
            let g = self.granted(r).await?;
            return Ok(Some(Outgoing::header(grant_frame(
                Op::Lock,
                h.client_id,
                g,
            ))));
        }
        // Queued: `wait` now, the grant (or its timeout) pushed later.
        let _ = tx.unbounded_send(Outgoing::header(Header::response_to(h, Status::Wait)));
        let header = match self.granted(r).await {
            Ok(g) => grant_frame(Op::LockGranted, h.client_id, g),
            Err(OpError(status, message)) => {
                let mut r = Header::error_to(h, status, message);
                r.op = Op::LockGranted;
                r
            }
        };
        Ok(Some(Outgoing::header(header)))
    }

    pub(super) fn op_unlock(&self, h: &Header) -> Result<Header, OpError> {
        self.check_shard(h.chunk_id)?;
        if !self.key.verify(h.chunk_id, &h.token) {
            return Err(OpError(
                Status::BadToken,
                "lock token is not authentic".into(),
            ));
        }
        self.release(h.chunk_id, h.token.client_id, h.token.generation)
            .map_err(|e| OpError(Status::BadToken, e.to_string()))?;
        Ok(Header::response_to(h, Status::Ok))
    }
}

/// The refusal of a lock when the shard's lock table is at its bound.
fn table_full() -> OpError {
    OpError(
        Status::Unavailable,
        "the shard's lock table is full (too many chunks locked or waited for)".into(),
    )
}
