//! The lock table ([`crate::lock_table`]) against a reference model: a
//! random sequence of acquires (waiting or not, explicit or implicit, on a
//! few connections), releases, renewals, validations, expiry sweeps,
//! closed connections and passing time, on a few chunks and clients, with
//! every outcome compared.
//!
//! The model is the table's specification written plainly: per chunk the
//! holders and a FIFO queue; a request is granted at once only if nobody is
//! queued and it is compatible with the holders (one writer, many
//! readers, or several implicit writes of one client on one connection); queued requests are granted strictly from the front; leases
//! and deadlines lapse at the sweep; a closed connection loses its explicit
//! locks and its waiters at once. Generation numbers are the table's
//! (the order a sweep visits chunks in is unspecified), checked to be
//! fresh and increasing.

use crate::lock_table::{Acquire, Changes, Grant, LockError, LockTable, Mode, Owner};
use arbitrary::{Arbitrary, Unstructured};
use ringfs_schema::ids::ChunkId;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

const CHUNKS: u8 = 3;
const CLIENTS: u8 = 3;
/// Connections 1..=CONNS (0: none).
const CONNS: u8 = 2;

#[derive(Arbitrary, Debug)]
enum Op {
    Acquire {
        chunk: u8,
        client: u8,
        write: bool,
        lease_ms: u8,
        /// Wait up to this long if not granted at once; `None`: refuse.
        wait_ms: Option<u8>,
        /// The connection (mod CONNS + 1; 0 = none).
        conn: u8,
        explicit: bool,
    },
    /// Connection `conn` (mod CONNS + 1) closes.
    DropConn {
        conn: u8,
    },
    /// Release a lock the model knows (`pick` chooses one), or a stale or
    /// made-up one.
    Release {
        pick: u8,
        stale: bool,
    },
    Renew {
        pick: u8,
        stale: bool,
        lease_ms: u8,
    },
    Validate {
        pick: u8,
        stale: bool,
        need_write: bool,
    },
    Sweep,
    Wait {
        ms: u8,
    },
}

fn mode(write: bool) -> Mode {
    if write {
        Mode::Write
    } else {
        Mode::Read
    }
}

fn ms(v: u8) -> Duration {
    Duration::from_millis(v as u64)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Holder {
    client: u64,
    generation: u64,
    mode: Mode,
    expires: Instant,
    /// The connection of an explicit lock (0: implicit or none).
    conn: u64,
    /// The connection of an implicit lock (0: explicit or none).
    implicit_conn: u64,
}

#[derive(Clone, Copy, Debug)]
struct Waiter {
    handle: u64,
    client: u64,
    mode: Mode,
    lease: Duration,
    deadline: Instant,
    owner: Owner,
}

#[derive(Default)]
struct Entry {
    holders: Vec<Holder>,
    queue: VecDeque<Waiter>,
}

impl Entry {
    /// None hold, or readers only and a reader asks, or implicit writes of
    /// one client on one connection (not 0) only and another one asks.
    fn compatible(&self, mode: Mode, client: u64, owner: Owner) -> bool {
        let conn = implicit_on(owner);
        self.holders.is_empty()
            || (mode == Mode::Read && self.holders.iter().all(|h| h.mode == Mode::Read))
            || (mode == Mode::Write
                && conn != 0
                && self.holders.iter().all(|h| {
                    h.mode == Mode::Write && h.client == client && h.implicit_conn == conn
                }))
    }
}

/// The specification.
#[derive(Default)]
struct Model {
    chunks: BTreeMap<u8, Entry>,
    /// Every generation handed out so far (all distinct).
    generations: BTreeSet<u64>,
    /// The largest generation handed out before the current operation:
    /// every grant of this operation must exceed it.
    floor: u64,
    /// Every lock ever granted: (chunk, client, generation), for stale picks.
    granted: Vec<(u8, u64, u64)>,
}

impl Model {
    /// Records a grant the table made: its generation is new and larger
    /// than any handed out before this operation.
    fn hold(&mut self, chunk: u8, h: Holder) {
        assert!(
            h.generation > self.floor,
            "generation {} not past {}",
            h.generation,
            self.floor
        );
        assert!(
            self.generations.insert(h.generation),
            "generation {} twice",
            h.generation
        );
        self.granted.push((chunk, h.client, h.generation));
        self.chunks.entry(chunk).or_default().holders.push(h);
    }

    fn find(&self, chunk: u8, client: u64, generation: u64) -> Option<&Holder> {
        self.chunks
            .get(&chunk)?
            .holders
            .iter()
            .find(|h| h.client == client && h.generation == generation)
    }

    /// Chunks with holders or waiters (the table drops the others).
    fn busy(&self) -> usize {
        self.chunks
            .values()
            .filter(|e| !e.holders.is_empty() || !e.queue.is_empty())
            .count()
    }

    /// Grants from the front of `chunk`'s queue while compatible, checking
    /// them against the table's `granted` (handle -> grant).
    fn promote(&mut self, chunk: u8, now: Instant, granted: &mut BTreeMap<u64, (u8, u64, Grant)>) {
        let mut last = 0;
        loop {
            let e = self.chunks.entry(chunk).or_default();
            let Some(front) = e.queue.front().copied() else {
                return;
            };
            if !e.compatible(front.mode, front.client, front.owner) {
                return;
            }
            e.queue.pop_front();
            let (gc, gclient, g) = granted.remove(&front.handle).unwrap_or_else(|| {
                panic!("waiter {front:?} on chunk {chunk} should have been granted")
            });
            assert_eq!(
                (gc, gclient, g.mode, g.expires),
                (chunk, front.client, front.mode, now + front.lease)
            );
            // One queue is granted in its order.
            assert!(
                g.generation > last,
                "queue of chunk {chunk} granted out of order"
            );
            last = g.generation;
            self.hold(
                chunk,
                Holder {
                    client: front.client,
                    generation: g.generation,
                    mode: g.mode,
                    expires: g.expires,
                    conn: held_by(front.owner),
                    implicit_conn: implicit_on(front.owner),
                },
            );
        }
    }
}

/// The connection an implicit grant to `owner` was asked on (0: explicit).
fn implicit_on(owner: Owner) -> u64 {
    if owner.explicit {
        0
    } else {
        owner.conn
    }
}

/// The connection a grant to `owner` is held for (0: none).
fn held_by(owner: Owner) -> u64 {
    if owner.explicit {
        owner.conn
    } else {
        0
    }
}

/// Runs the op sequence `data` encodes on a fresh table and the model.
pub fn lock_table(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let start = Instant::now();
    let mut now = start;
    let mut table = LockTable::<u64>::new();
    let mut model = Model::default();
    let mut next_handle = 1u64;
    let id = |c: u8| ChunkId::new(1, c as u64);
    // `arbitrary` makes values from an exhausted input too: stop there.
    while !u.is_empty() {
        let Ok(op) = Op::arbitrary(&mut u) else {
            return;
        };
        match op {
            Op::Acquire {
                chunk,
                client,
                write,
                lease_ms,
                wait_ms,
                conn,
                explicit,
            } => {
                let (chunk, client, mode) =
                    (chunk % CHUNKS, (client % CLIENTS) as u64, mode(write));
                let owner = Owner {
                    conn: (conn % (CONNS + 1)) as u64,
                    explicit,
                };
                let lease = ms(lease_ms);
                let handle = next_handle;
                next_handle += 1;
                let wait = wait_ms.map(|w| (now + ms(w), handle));
                let got = table.acquire(id(chunk), client, mode, lease, now, wait, owner);
                let e = model.chunks.entry(chunk).or_default();
                if e.queue.is_empty() && e.compatible(mode, client, owner) {
                    let Acquire::Granted(g) = got else {
                        panic!("{op:?}: want a grant, got {got:?}")
                    };
                    assert_eq!((g.mode, g.expires), (mode, now + lease));
                    model.hold(
                        chunk,
                        Holder {
                            client,
                            generation: g.generation,
                            mode,
                            expires: g.expires,
                            conn: held_by(owner),
                            implicit_conn: implicit_on(owner),
                        },
                    );
                } else if let Some((deadline, handle)) = wait {
                    assert_eq!(got, Acquire::Queued, "{op:?}");
                    e.queue.push_back(Waiter {
                        handle,
                        client,
                        mode,
                        lease,
                        deadline,
                        owner,
                    });
                } else {
                    assert_eq!(got, Acquire::Busy, "{op:?}");
                }
            }
            Op::Release { pick, stale } => {
                let Some((chunk, client, generation)) = pick_lock(&model, pick, stale) else {
                    continue;
                };
                let held = model.find(chunk, client, generation).is_some();
                match table.release(id(chunk), client, generation, now) {
                    Ok(changes) => {
                        assert!(held, "released a lock not held");
                        let e = model.chunks.get_mut(&chunk).expect("held");
                        e.holders
                            .retain(|h| !(h.client == client && h.generation == generation));
                        let mut granted = granted_by(changes, &[], &[]);
                        model.promote(chunk, now, &mut granted);
                        assert!(granted.is_empty(), "granted too many: {granted:?}");
                    }
                    Err(e) => {
                        assert!(!held, "release of a held lock failed: {e}");
                        assert_eq!(e, LockError::NotHeld);
                    }
                }
            }
            Op::Renew {
                pick,
                stale,
                lease_ms,
            } => {
                let Some((chunk, client, generation)) = pick_lock(&model, pick, stale) else {
                    continue;
                };
                let want = model.find(chunk, client, generation).copied();
                let got = table.renew(id(chunk), client, generation, ms(lease_ms), now);
                match (want, got) {
                    (None, Err(LockError::NotHeld)) => {}
                    (Some(h), Err(LockError::Expired)) if h.expires <= now => {}
                    (Some(h), Ok(g)) if h.expires > now => {
                        assert_eq!(
                            (g.generation, g.mode, g.expires),
                            (generation, h.mode, now + ms(lease_ms))
                        );
                        let e = model.chunks.get_mut(&chunk).expect("held");
                        let h = e
                            .holders
                            .iter_mut()
                            .find(|h| h.generation == generation)
                            .expect("held");
                        h.expires = g.expires;
                    }
                    (want, got) => panic!("renew of {want:?} at {:?}: {got:?}", now - start),
                }
            }
            Op::Validate {
                pick,
                stale,
                need_write,
            } => {
                let Some((chunk, client, generation)) = pick_lock(&model, pick, stale) else {
                    continue;
                };
                let need = mode(need_write);
                let want = match model.find(chunk, client, generation) {
                    None => Err(LockError::NotHeld),
                    Some(h) if h.expires <= now => Err(LockError::Expired),
                    Some(h) if !h.mode.permits(need) => Err(LockError::ModeTooWeak),
                    Some(h) => Ok(Grant {
                        generation,
                        mode: h.mode,
                        expires: h.expires,
                    }),
                };
                assert_eq!(
                    table.validate(id(chunk), client, generation, need, now),
                    want
                );
            }
            Op::Sweep => {
                let changes = table.expire(now);
                let mut released = Vec::new();
                let mut timed_out = Vec::new();
                for (&chunk, e) in model.chunks.iter_mut() {
                    e.holders.retain(|h| {
                        let lapsed = h.expires <= now;
                        if lapsed {
                            released.push((id(chunk), h.client, h.generation));
                        }
                        !lapsed
                    });
                    e.queue.retain(|w| {
                        let lapsed = w.deadline <= now;
                        if lapsed {
                            timed_out.push(w.handle);
                        }
                        !lapsed
                    });
                }
                let mut granted = granted_by(changes, &released, &timed_out);
                for chunk in 0..CHUNKS {
                    model.promote(chunk, now, &mut granted);
                }
                assert!(granted.is_empty(), "granted too many: {granted:?}");
            }
            Op::DropConn { conn } => {
                let conn = (conn % (CONNS + 1)) as u64;
                let changes = table.drop_owner(conn, now);
                let mut released = Vec::new();
                let mut timed_out = Vec::new();
                if conn != 0 {
                    for (&chunk, e) in model.chunks.iter_mut() {
                        e.holders.retain(|h| {
                            if h.conn == conn {
                                released.push((id(chunk), h.client, h.generation));
                            }
                            h.conn != conn
                        });
                        e.queue.retain(|w| {
                            if w.owner.conn == conn {
                                timed_out.push(w.handle);
                            }
                            w.owner.conn != conn
                        });
                    }
                }
                let mut granted = granted_by(changes, &released, &timed_out);
                for chunk in 0..CHUNKS {
                    model.promote(chunk, now, &mut granted);
                }
                assert!(granted.is_empty(), "granted too many: {granted:?}");
            }
            Op::Wait { ms: t } => now += ms(t),
        }
        assert_eq!(table.len(), model.busy(), "chunks with holders or waiters");
        model.floor = model.generations.last().copied().unwrap_or(0);
    }
}

/// The grants in `changes` by waiter handle, after checking that it
/// released and timed out exactly `released` and `timed_out`.
fn granted_by(
    changes: Changes<u64>,
    released: &[(ChunkId, u64, u64)],
    timed_out: &[u64],
) -> BTreeMap<u64, (u8, u64, Grant)> {
    fn sorted<T: Ord + Clone>(v: &[T]) -> Vec<T> {
        let mut v = v.to_vec();
        v.sort();
        v
    }
    assert_eq!(sorted(&changes.released), sorted(released), "released");
    assert_eq!(sorted(&changes.timed_out), sorted(timed_out), "timed out");
    changes
        .granted
        .into_iter()
        .map(|(handle, chunk, client, g)| (handle, (chunk.lo as u8, client, g)))
        .collect()
}

/// A lock to operate on: one the model granted (held or not any more),
/// or, with `stale`, one with a generation never handed out.
fn pick_lock(model: &Model, pick: u8, stale: bool) -> Option<(u8, u64, u64)> {
    if stale {
        let never = model.generations.last().copied().unwrap_or(0) + 1 + pick as u64;
        return Some((pick % CHUNKS, (pick / CHUNKS % CLIENTS) as u64, never));
    }
    let n = model.granted.len();
    (n > 0).then(|| model.granted[pick as usize % n])
}
