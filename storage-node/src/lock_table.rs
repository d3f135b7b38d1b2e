//! A shard's chunk lock table: per chunk, one writer or many readers.
//!
//! Invariants:
//! - holders of a chunk are either exactly one `Write`, any number of
//!   `Read`, or several implicit `Write`s of one client asked on one
//!   connection (its pipelined writes of the chunk: the store orders them
//!   by their versions, and nobody else gets in until all are done);
//! - FIFO fairness: a request is granted at once only if nobody is queued
//!   ahead of it and it is compatible with the holders; queued requests are
//!   granted strictly from the front, so a waiting writer is never overtaken
//!   by later readers;
//! - every grant has a lease (an expiry instant); a holder whose lease lapsed
//!   no longer validates, and [`LockTable::expire`] removes it;
//! - every waiter has a deadline, after which `expire` hands it back as timed out;
//! - generations are unique per table (strictly increasing), so a token of a
//!   released lock can never match a later grant;
//! - locks follow their holder: a holder or waiter belongs to the connection
//!   it was asked on ([`Owner`]), and [`LockTable::drop_owner`] removes an
//!   explicit lock and every waiter of a closed connection at once (an
//!   implicit lock belongs to its operation, which releases it);
//! - at most `max_chunks` chunks have holders or waiters: a request for
//!   another chunk is refused ([`Acquire::Full`]), so arbitrary chunk ids
//!   cannot grow the table without bound.
//!
//! The table is pure bookkeeping: time is passed in and waiters are opaque
//! handles `W` (the shard uses one-shot channels), which keeps it unit-testable.

use ringfs_schema::ids::ChunkId;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Read,
    Write,
}

impl Mode {
    /// Whether a lock held in `self` mode permits an operation needing `need`.
    pub fn permits(self, need: Mode) -> bool {
        self == Mode::Write || need == Mode::Read
    }
}

/// A granted lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    pub generation: u64,
    pub mode: Mode,
    pub expires: Instant,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LockError {
    #[error("no lock of this client and generation is held (released, expired or never granted)")]
    NotHeld,
    #[error("the lock's lease has expired")]
    Expired,
    #[error("a read lock does not permit writing")]
    ModeTooWeak,
}

/// Outcome of [`LockTable::acquire`].
#[derive(Debug, PartialEq, Eq)]
pub enum Acquire {
    Granted(Grant),
    /// Queued; the grant (or the timeout) comes later through the handle.
    Queued,
    /// Not free and the caller did not want to wait.
    Busy,
    /// The table holds `max_chunks` chunks already.
    Full,
}

/// Whose request a lock is: the connection it came on (0: none, e.g. the
/// node's own commands) and whether the grant outlives the request (an
/// explicit `lock` or `reserve`, released with the connection) or belongs to
/// the one operation that asked (an implicit lock, which that operation
/// releases).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub conn: u64,
    pub explicit: bool,
}

impl Owner {
    /// No connection: never dropped with one.
    pub const NONE: Owner = Owner {
        conn: 0,
        explicit: false,
    };
}

/// What [`LockTable::expire`] and [`LockTable::release`] changed.
#[derive(Debug)]
pub struct Changes<W> {
    /// Locks released because their lease lapsed: (chunk, client, generation).
    pub released: Vec<(ChunkId, u64, u64)>,
    /// Waiters granted, to be notified.
    pub granted: Vec<(W, ChunkId, u64, Grant)>,
    /// Waiters whose deadline passed, to be notified.
    pub timed_out: Vec<W>,
}

impl<W> Default for Changes<W> {
    fn default() -> Self {
        Self {
            released: Vec::new(),
            granted: Vec::new(),
            timed_out: Vec::new(),
        }
    }
}

#[derive(Debug)]
struct Holder {
    client: u64,
    generation: u64,
    mode: Mode,
    expires: Instant,
    /// The connection an explicit lock is held for (0: implicit or none).
    conn: u64,
    /// The connection an implicit lock was asked on (0: explicit or none).
    implicit_conn: u64,
}

#[derive(Debug)]
struct Waiter<W> {
    client: u64,
    mode: Mode,
    lease: Duration,
    deadline: Instant,
    handle: W,
    owner: Owner,
}

#[derive(Debug)]
struct Entry<W> {
    holders: Vec<Holder>,
    queue: VecDeque<Waiter<W>>,
}

impl<W> Entry<W> {
    /// Whether `client`'s request for `mode` by `owner` can join the
    /// holders: none hold; or all read and so does it; or all are implicit
    /// writes of this client asked on this connection (not 0) and so is
    /// it (pipelined writes of one writer to one chunk).
    fn compatible(&self, mode: Mode, client: u64, owner: Owner) -> bool {
        let pipelined = |h: &Holder| {
            h.mode == Mode::Write
                && h.client == client
                && h.implicit_conn != 0
                && h.implicit_conn == implicit_conn(owner)
        };
        self.holders.is_empty()
            || match mode {
                Mode::Read => self.holders.iter().all(|h| h.mode == Mode::Read),
                Mode::Write => self.holders.iter().all(pipelined),
            }
    }
}

/// The connection an implicit lock of `owner` is asked on (0: explicit).
fn implicit_conn(owner: Owner) -> u64 {
    if owner.explicit {
        0
    } else {
        owner.conn
    }
}

/// The lock table of one shard.
#[derive(Debug)]
pub struct LockTable<W> {
    chunks: HashMap<ChunkId, Entry<W>>,
    next_generation: u64,
    max_chunks: usize,
}

impl<W> Default for LockTable<W> {
    fn default() -> Self {
        Self::new()
    }
}

impl<W> LockTable<W> {
    /// A table without a bound on its chunks.
    pub fn new() -> Self {
        Self::with_max_chunks(usize::MAX)
    }

    /// A table of at most `max_chunks` chunks with holders or waiters.
    pub fn with_max_chunks(max_chunks: usize) -> Self {
        Self {
            chunks: HashMap::new(),
            next_generation: 1,
            max_chunks,
        }
    }

    fn grant(
        &mut self,
        chunk: ChunkId,
        client: u64,
        mode: Mode,
        lease: Duration,
        now: Instant,
        owner: Owner,
    ) -> Grant {
        let generation = self.next_generation;
        self.next_generation += 1;
        let expires = now + lease;
        self.chunks
            .get_mut(&chunk)
            .expect("entry exists")
            .holders
            .push(Holder {
                client,
                generation,
                mode,
                expires,
                conn: if owner.explicit { owner.conn } else { 0 },
                implicit_conn: implicit_conn(owner),
            });
        Grant {
            generation,
            mode,
            expires,
        }
    }

    /// Requests `mode` on `chunk` for `client` with a lease of `lease`, on
    /// behalf of `owner`. With `wait = Some((deadline, handle))` the request
    /// queues if it cannot be granted now; otherwise it is refused with
    /// [`Acquire::Busy`].
    #[allow(clippy::too_many_arguments)]
    pub fn acquire(
        &mut self,
        chunk: ChunkId,
        client: u64,
        mode: Mode,
        lease: Duration,
        now: Instant,
        wait: Option<(Instant, W)>,
        owner: Owner,
    ) -> Acquire {
        if !self.chunks.contains_key(&chunk) && self.chunks.len() >= self.max_chunks {
            return Acquire::Full;
        }
        let entry = self.chunks.entry(chunk).or_insert_with(|| Entry {
            holders: Vec::new(),
            queue: VecDeque::new(),
        });
        if entry.queue.is_empty() && entry.compatible(mode, client, owner) {
            return Acquire::Granted(self.grant(chunk, client, mode, lease, now, owner));
        }
        match wait {
            Some((deadline, handle)) => {
                entry.queue.push_back(Waiter {
                    client,
                    mode,
                    lease,
                    deadline,
                    handle,
                    owner,
                });
                Acquire::Queued
            }
            None => {
                self.cleanup(chunk);
                Acquire::Busy
            }
        }
    }

    /// Checks that `client` holds generation `generation` on `chunk`, that its
    /// lease has not lapsed and that its mode permits `need`.
    pub fn validate(
        &self,
        chunk: ChunkId,
        client: u64,
        generation: u64,
        need: Mode,
        now: Instant,
    ) -> Result<Grant, LockError> {
        let h = self
            .chunks
            .get(&chunk)
            .and_then(|e| {
                e.holders
                    .iter()
                    .find(|h| h.client == client && h.generation == generation)
            })
            .ok_or(LockError::NotHeld)?;
        if h.expires <= now {
            return Err(LockError::Expired);
        }
        if !h.mode.permits(need) {
            return Err(LockError::ModeTooWeak);
        }
        Ok(Grant {
            generation,
            mode: h.mode,
            expires: h.expires,
        })
    }

    /// Extends a held, unexpired lock's lease to `now + lease`.
    pub fn renew(
        &mut self,
        chunk: ChunkId,
        client: u64,
        generation: u64,
        lease: Duration,
        now: Instant,
    ) -> Result<Grant, LockError> {
        let h = self
            .chunks
            .get_mut(&chunk)
            .and_then(|e| {
                e.holders
                    .iter_mut()
                    .find(|h| h.client == client && h.generation == generation)
            })
            .ok_or(LockError::NotHeld)?;
        if h.expires <= now {
            return Err(LockError::Expired);
        }
        h.expires = now + lease;
        Ok(Grant {
            generation,
            mode: h.mode,
            expires: h.expires,
        })
    }

    /// Releases a held lock and grants the waiters it unblocks.
    pub fn release(
        &mut self,
        chunk: ChunkId,
        client: u64,
        generation: u64,
        now: Instant,
    ) -> Result<Changes<W>, LockError> {
        let entry = self.chunks.get_mut(&chunk).ok_or(LockError::NotHeld)?;
        let pos = entry
            .holders
            .iter()
            .position(|h| h.client == client && h.generation == generation)
            .ok_or(LockError::NotHeld)?;
        entry.holders.swap_remove(pos);
        let mut changes = Changes::default();
        self.promote(chunk, now, &mut changes);
        Ok(changes)
    }

    /// Releases lapsed leases, times out waiters past their deadline, and
    /// grants what that unblocks.
    pub fn expire(&mut self, now: Instant) -> Changes<W> {
        self.remove_where(now, |h| h.expires <= now, |w| w.deadline <= now)
    }

    /// Removes what connection `conn` (not 0) had: its explicit locks (as
    /// released) and its waiters (as timed out), and grants what that
    /// unblocks.
    pub fn drop_owner(&mut self, conn: u64, now: Instant) -> Changes<W> {
        if conn == 0 {
            return Changes::default();
        }
        self.remove_where(now, |h| h.conn == conn, |w| w.owner.conn == conn)
    }

    /// Removes the holders that `holder_gone` picks (as released) and the
    /// waiters that `waiter_gone` picks (as timed out), then grants what
    /// that unblocks. Entries left without holders are promoted too, which
    /// drops the empty ones.
    fn remove_where(
        &mut self,
        now: Instant,
        holder_gone: impl Fn(&Holder) -> bool,
        waiter_gone: impl Fn(&Waiter<W>) -> bool,
    ) -> Changes<W> {
        let mut changes = Changes::default();
        let mut touched = Vec::new();
        for (chunk, entry) in self.chunks.iter_mut() {
            let before = (entry.holders.len(), entry.queue.len());
            entry.holders.retain(|h| {
                let gone = holder_gone(h);
                if gone {
                    changes.released.push((*chunk, h.client, h.generation));
                }
                !gone
            });
            // Rebuilt only when a waiter goes: the common tick allocates nothing.
            if entry.queue.iter().any(&waiter_gone) {
                let mut kept = VecDeque::with_capacity(entry.queue.len());
                for w in entry.queue.drain(..) {
                    if waiter_gone(&w) {
                        changes.timed_out.push(w.handle);
                    } else {
                        kept.push_back(w);
                    }
                }
                entry.queue = kept;
            }
            if before != (entry.holders.len(), entry.queue.len()) || entry.holders.is_empty() {
                touched.push(*chunk);
            }
        }
        for chunk in touched {
            self.promote(chunk, now, &mut changes);
        }
        changes
    }

    /// Grants queued requests from the front while they are compatible.
    fn promote(&mut self, chunk: ChunkId, now: Instant, changes: &mut Changes<W>) {
        loop {
            let Some(entry) = self.chunks.get_mut(&chunk) else {
                return;
            };
            let Some(front) = entry.queue.front() else {
                break;
            };
            if !entry.compatible(front.mode, front.client, front.owner) {
                break;
            }
            let w = entry.queue.pop_front().expect("front exists");
            let grant = self.grant(chunk, w.client, w.mode, w.lease, now, w.owner);
            changes.granted.push((w.handle, chunk, w.client, grant));
        }
        self.cleanup(chunk);
    }

    fn cleanup(&mut self, chunk: ChunkId) {
        if let Some(e) = self.chunks.get(&chunk) {
            if e.holders.is_empty() && e.queue.is_empty() {
                self.chunks.remove(&chunk);
            }
        }
    }

    /// Whether anyone holds or waits for a lock on `chunk`.
    pub fn is_busy(&self, chunk: ChunkId) -> bool {
        self.chunks.contains_key(&chunk)
    }

    /// Number of chunks with holders or waiters.
    #[cfg(feature = "fuzzing")]
    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: ChunkId = ChunkId::new(1, 1);
    const LEASE: Duration = Duration::from_secs(10);

    fn granted(a: Acquire) -> Grant {
        match a {
            Acquire::Granted(g) => g,
            other => panic!("expected a grant, got {other:?}"),
        }
    }

    #[test]
    fn writer_is_exclusive_readers_share() {
        let now = Instant::now();
        let mut t = LockTable::<u32>::new();
        let r1 = granted(t.acquire(C, 1, Mode::Read, LEASE, now, None, Owner::NONE));
        let r2 = granted(t.acquire(C, 2, Mode::Read, LEASE, now, None, Owner::NONE));
        assert_eq!(
            t.acquire(C, 3, Mode::Write, LEASE, now, None, Owner::NONE),
            Acquire::Busy
        );
        t.release(C, 1, r1.generation, now).unwrap();
        t.release(C, 2, r2.generation, now).unwrap();
        let w = granted(t.acquire(C, 3, Mode::Write, LEASE, now, None, Owner::NONE));
        assert_eq!(
            t.acquire(C, 1, Mode::Read, LEASE, now, None, Owner::NONE),
            Acquire::Busy
        );
        assert_eq!(
            t.acquire(C, 1, Mode::Write, LEASE, now, None, Owner::NONE),
            Acquire::Busy
        );
        t.release(C, 3, w.generation, now).unwrap();
        assert!(t.is_empty());
    }

    #[test]
    fn wait_then_grant_in_fifo_order_and_writer_not_starved() {
        let now = Instant::now();
        let later = now + Duration::from_secs(60);
        let mut t = LockTable::<u32>::new();
        let r1 = granted(t.acquire(C, 1, Mode::Read, LEASE, now, None, Owner::NONE));
        // A writer queues behind the reader...
        assert!(matches!(
            t.acquire(
                C,
                2,
                Mode::Write,
                LEASE,
                now,
                Some((later, 20)),
                Owner::NONE
            ),
            Acquire::Queued
        ));
        // ...and a later reader queues behind the writer instead of sharing.
        assert!(matches!(
            t.acquire(C, 3, Mode::Read, LEASE, now, Some((later, 30)), Owner::NONE),
            Acquire::Queued
        ));
        assert!(matches!(
            t.acquire(C, 4, Mode::Read, LEASE, now, Some((later, 40)), Owner::NONE),
            Acquire::Queued
        ));
        let ch = t.release(C, 1, r1.generation, now).unwrap();
        assert_eq!(ch.granted.len(), 1);
        let (h, _, client, wg) = &ch.granted[0];
        assert_eq!((*h, *client, wg.mode), (20, 2, Mode::Write));
        // Releasing the writer grants both queued readers together.
        let ch = t.release(C, 2, wg.generation, now).unwrap();
        let hs: Vec<u32> = ch.granted.iter().map(|g| g.0).collect();
        assert_eq!(hs, vec![30, 40]);
    }

    #[test]
    fn waiters_time_out() {
        let now = Instant::now();
        let mut t = LockTable::<u32>::new();
        let _w = granted(t.acquire(C, 1, Mode::Write, LEASE, now, None, Owner::NONE));
        let deadline = now + Duration::from_millis(50);
        assert!(matches!(
            t.acquire(
                C,
                2,
                Mode::Read,
                LEASE,
                now,
                Some((deadline, 7)),
                Owner::NONE
            ),
            Acquire::Queued
        ));
        assert!(t
            .expire(now + Duration::from_millis(10))
            .timed_out
            .is_empty());
        let ch = t.expire(deadline);
        assert_eq!(ch.timed_out, vec![7]);
        assert!(ch.granted.is_empty());
    }

    #[test]
    fn leases_expire_and_unblock_waiters() {
        let now = Instant::now();
        let mut t = LockTable::<u32>::new();
        let w = granted(t.acquire(
            C,
            1,
            Mode::Write,
            Duration::from_millis(100),
            now,
            None,
            Owner::NONE,
        ));
        assert!(t.validate(C, 1, w.generation, Mode::Write, now).is_ok());
        let far = now + Duration::from_secs(60);
        assert!(matches!(
            t.acquire(C, 2, Mode::Write, LEASE, now, Some((far, 9)), Owner::NONE),
            Acquire::Queued
        ));
        let at = now + Duration::from_millis(100);
        assert_eq!(
            t.validate(C, 1, w.generation, Mode::Write, at),
            Err(LockError::Expired)
        );
        let ch = t.expire(at);
        assert_eq!(ch.released, vec![(C, 1, w.generation)]);
        assert_eq!(ch.granted.len(), 1);
        assert_eq!(ch.granted[0].0, 9);
        // The expired holder's token is now stale.
        assert_eq!(
            t.validate(C, 1, w.generation, Mode::Read, at),
            Err(LockError::NotHeld)
        );
        assert_eq!(
            t.release(C, 1, w.generation, at).unwrap_err(),
            LockError::NotHeld
        );
    }

    #[test]
    fn validation_checks_client_generation_and_mode() {
        let now = Instant::now();
        let mut t = LockTable::<u32>::new();
        let r = granted(t.acquire(C, 1, Mode::Read, LEASE, now, None, Owner::NONE));
        assert_eq!(
            t.validate(C, 1, r.generation, Mode::Write, now),
            Err(LockError::ModeTooWeak)
        );
        assert_eq!(
            t.validate(C, 2, r.generation, Mode::Read, now),
            Err(LockError::NotHeld)
        );
        assert_eq!(
            t.validate(C, 1, r.generation + 1, Mode::Read, now),
            Err(LockError::NotHeld)
        );
        assert_eq!(
            t.validate(ChunkId::new(9, 9), 1, r.generation, Mode::Read, now),
            Err(LockError::NotHeld)
        );
        let renewed = t.renew(C, 1, r.generation, LEASE * 2, now).unwrap();
        assert!(renewed.expires > r.expires);
    }

    #[test]
    fn a_closed_connection_loses_its_locks_and_waiters_at_once() {
        let now = Instant::now();
        let later = now + Duration::from_secs(60);
        let mut t = LockTable::<u32>::new();
        let conn = |c| Owner {
            conn: c,
            explicit: true,
        };
        let held = granted(t.acquire(C, 1, Mode::Write, LEASE, now, None, conn(7)));
        // Connection 8 waits explicitly, 7 waits implicitly behind it, 9 last.
        let waits = [
            (2, conn(8)),
            (
                3,
                Owner {
                    conn: 7,
                    explicit: false,
                },
            ),
            (4, conn(9)),
        ];
        for (client, owner) in waits {
            let w = Some((later, client as u32));
            assert_eq!(
                t.acquire(C, client, Mode::Write, LEASE, now, w, owner),
                Acquire::Queued
            );
        }
        // Connection 8 closes: its waiter goes, nothing else changes.
        let ch = t.drop_owner(8, now);
        assert_eq!(ch.timed_out, vec![2]);
        assert!(ch.released.is_empty() && ch.granted.is_empty());
        // Connection 7 closes: its lock and its waiter go; 9 gets the lock.
        let ch = t.drop_owner(7, now);
        assert_eq!(ch.released, vec![(C, 1, held.generation)]);
        assert_eq!(ch.timed_out, vec![3]);
        assert_eq!(ch.granted.len(), 1);
        assert_eq!((ch.granted[0].0, ch.granted[0].2), (4, 4));
        assert_eq!(
            t.validate(C, 1, held.generation, Mode::Write, now),
            Err(LockError::NotHeld)
        );
        let g = ch.granted[0].3;
        assert_eq!(t.drop_owner(9, now).released, vec![(C, 4, g.generation)]);
        // An implicit grant is its operation's: the connection's close
        // leaves it.
        let implicit = Owner {
            conn: 5,
            explicit: false,
        };
        let i = granted(t.acquire(C, 5, Mode::Read, LEASE, now, None, implicit));
        assert!(t.drop_owner(5, now).released.is_empty());
        assert!(t.validate(C, 5, i.generation, Mode::Read, now).is_ok());
        assert!(t.drop_owner(0, now).released.is_empty());
    }

    #[test]
    fn the_table_refuses_chunks_past_its_bound() {
        let now = Instant::now();
        let mut t = LockTable::<u32>::with_max_chunks(2);
        let a = granted(t.acquire(C, 1, Mode::Write, LEASE, now, None, Owner::NONE));
        let d = ChunkId::new(2, 2);
        granted(t.acquire(d, 1, Mode::Read, LEASE, now, None, Owner::NONE));
        let e = ChunkId::new(3, 3);
        assert_eq!(
            t.acquire(e, 1, Mode::Read, LEASE, now, None, Owner::NONE),
            Acquire::Full
        );
        // A chunk already in the table is still served.
        granted(t.acquire(d, 2, Mode::Read, LEASE, now, None, Owner::NONE));
        t.release(C, 1, a.generation, now).unwrap();
        granted(t.acquire(e, 1, Mode::Read, LEASE, now, None, Owner::NONE));
    }

    #[test]
    fn generations_are_unique() {
        let now = Instant::now();
        let mut t = LockTable::<u32>::new();
        let a = granted(t.acquire(C, 1, Mode::Write, LEASE, now, None, Owner::NONE));
        t.release(C, 1, a.generation, now).unwrap();
        let b = granted(t.acquire(C, 1, Mode::Write, LEASE, now, None, Owner::NONE));
        assert_ne!(a.generation, b.generation);
        assert_eq!(
            t.validate(C, 1, a.generation, Mode::Write, now),
            Err(LockError::NotHeld)
        );
    }

    /// Pipelined writes of one writer share the chunk's write lock: only
    /// implicit writes of the same client on the same connection, and
    /// never past a queued request of someone else.
    #[test]
    fn implicit_writes_of_one_client_on_one_connection_share() {
        let now = Instant::now();
        let mut t = LockTable::<u32>::new();
        let on = |conn, explicit| Owner { conn, explicit };
        let a = granted(t.acquire(C, 1, Mode::Write, LEASE, now, None, on(4, false)));
        let b = granted(t.acquire(C, 1, Mode::Write, LEASE, now, None, on(4, false)));
        assert_ne!(a.generation, b.generation);
        for (client, mode, owner) in [
            (2, Mode::Write, on(4, false)),
            (1, Mode::Write, on(5, false)),
            (1, Mode::Write, on(4, true)),
            (1, Mode::Read, on(4, false)),
            (1, Mode::Write, Owner::NONE),
        ] {
            assert_eq!(
                t.acquire(C, client, mode, LEASE, now, None, owner),
                Acquire::Busy,
                "{client} {mode:?} {owner:?}"
            );
        }
        // A reader queues; the writer's next write queues behind it.
        let far = now + LEASE;
        let q = t.acquire(C, 2, Mode::Read, LEASE, now, Some((far, 7)), on(5, false));
        assert_eq!(q, Acquire::Queued);
        let q = t.acquire(C, 1, Mode::Write, LEASE, now, Some((far, 8)), on(4, false));
        assert_eq!(q, Acquire::Queued);
        assert!(t
            .release(C, 1, a.generation, now)
            .unwrap()
            .granted
            .is_empty());
        let ch = t.release(C, 1, b.generation, now).unwrap();
        assert_eq!(ch.granted.len(), 1);
        assert_eq!(ch.granted[0].0, 7);
        // The node's own commands (connection 0) never share.
        let mut t = LockTable::<u32>::new();
        granted(t.acquire(C, 1, Mode::Write, LEASE, now, None, Owner::NONE));
        assert_eq!(
            t.acquire(C, 1, Mode::Write, LEASE, now, None, Owner::NONE),
            Acquire::Busy
        );
    }
}
