//! What a write lease keeps between its writes: the versions it issues,
//! per chunk the order writes are sent in and the replicas' state, the
//! records it knows, and what it wrote and has not committed yet.
//!
//! **Issue order.** Every write call takes a ticket for each chunk it covers
//! at once, before its first await ([`Writer::tickets`]); a chunk's writes
//! are sent in ticket order, each as soon as the one before it is on the
//! wire (not answered), carrying `expected` = the version the previous one
//! creates. The storage node applies a chunk's writes in arrival order
//! (compare-and-set on the version), so they land in issue order on every
//! replica, and one that a replica did not apply makes it refuse every
//! later one (never a later write on top of a missing one).
//!
//! **A failure in a pipeline.** When a chunk's write fails, every write of
//! that chunk already ticketed and not yet sent fails too
//! ([`Slot::broken_below`]): it was issued on top of the failed one. Writes
//! already sent report what the replicas did (a replica applies one only on
//! top of its predecessor, so a success there means the predecessor is
//! there too). The chunk's state is then unknown and asked again.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;

use ringfs_schema::{ChunkId, Version};
use tokio::sync::Notify;

use crate::control::{Capability, ChunkRecord};
use crate::error::Error;

/// Chunks a writer keeps state for; past this, idle ones are forgotten (a
/// forgotten chunk is asked again at its next write).
const MAX_CHUNKS: usize = 16_384;

/// A writer's view of one chunk.
#[derive(Clone, Debug)]
pub(crate) struct ChunkState {
    pub(crate) id: ChunkId,
    /// The version the in-sync replicas hold once every write sent so far
    /// is applied: the `expected` of the next write.
    pub(crate) base: Version,
    /// The chunk's length on the nodes at `base`.
    pub(crate) length: u64,
    /// The replicas at `base`, chain order (primary first).
    pub(crate) in_sync: Vec<u64>,
    /// Replicas known to be behind, with the version they hold (as far as
    /// known): catch-up copies are fenced on it.
    pub(crate) behind: Vec<(u64, Version)>,
}

/// One chunk's write pipeline.
#[derive(Default)]
pub(crate) struct Slot {
    next_ticket: Cell<u64>,
    serving: Cell<u64>,
    /// Tickets given up (their write call was dropped) before their turn.
    skipped: RefCell<BTreeSet<u64>>,
    turn: Notify,
    /// None while unknown (first touch, after a failure).
    pub(crate) state: RefCell<Option<ChunkState>>,
    /// Writes sent and not answered.
    pub(crate) in_flight: Cell<usize>,
    /// Tickets below this fail without being sent (see the module doc).
    pub(crate) broken_below: Cell<u64>,
    pub(crate) broken_why: RefCell<Option<Error>>,
}

impl Slot {
    fn idle(&self) -> bool {
        self.serving.get() == self.next_ticket.get() && self.in_flight.get() == 0
    }

    fn advance(&self) {
        let mut s = self.serving.get() + 1;
        let mut skipped = self.skipped.borrow_mut();
        while skipped.remove(&s) {
            s += 1;
        }
        self.serving.set(s);
        self.turn.notify_waiters();
    }

    /// A write of this chunk failed: every write ticketed so far and not
    /// sent fails too, and the chunk's state is asked again.
    pub(crate) fn break_pipeline(&self, why: &Error) {
        self.broken_below.set(self.next_ticket.get());
        *self.broken_why.borrow_mut() = Some(why.clone());
        *self.state.borrow_mut() = None;
    }
}

/// A write's place in one chunk's pipeline. Released when its write is on
/// the wire (or failed before); dropped unreleased, it lets the next one go.
pub(crate) struct Turn {
    pub(crate) slot: Rc<Slot>,
    pub(crate) ticket: u64,
    released: Cell<bool>,
}

impl Turn {
    /// Waits until every earlier ticket of the chunk was sent or gave up.
    pub(crate) async fn wait(&self) {
        loop {
            let notified = self.slot.turn.notified();
            if self.slot.serving.get() == self.ticket {
                return;
            }
            notified.await;
        }
    }

    /// Lets the next ticket go (once).
    pub(crate) fn release(&self) {
        if !self.released.replace(true) {
            self.slot.advance();
        }
    }

    /// Whether a write with this ticket must fail unsent: an earlier write
    /// of the chunk failed while it waited.
    pub(crate) fn broken(&self) -> Option<Error> {
        if self.ticket >= self.slot.broken_below.get() {
            return None;
        }
        let why = self.slot.broken_why.borrow();
        let why = why.as_ref().map_or_else(String::new, Error::describe);
        Some(Error::Quorum(format!(
            "an earlier write of this chunk, issued before this one, failed ({why}); \
             this one was not sent"
        )))
    }

    /// Whether no write was ticketed after this one (a retry then keeps
    /// the issue order).
    pub(crate) fn is_last(&self) -> bool {
        self.slot.next_ticket.get() == self.ticket + 1
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if self.released.get() {
            return;
        }
        if self.slot.serving.get() == self.ticket {
            self.slot.advance();
        } else {
            self.slot.skipped.borrow_mut().insert(self.ticket);
        }
    }
}

/// Written, acknowledged, not committed yet.
#[derive(Default)]
pub(crate) struct Dirty {
    pub(crate) records: HashMap<u64, ChunkRecord>,
    /// The end of the furthest acknowledged write (bytes).
    pub(crate) end: u64,
}

/// What a write lease knows of the chunks it writes.
pub(crate) struct Writer {
    epoch: u64,
    seq: Cell<u64>,
    slots: RefCell<HashMap<u64, Rc<Slot>>>,
    /// Committed records, as this lease last fetched or committed them.
    records: RefCell<HashMap<u64, ChunkRecord>>,
    /// Acknowledged, not committed.
    pub(crate) dirty: RefCell<Dirty>,
    /// The end of the furthest write issued (appends go there).
    issued_end: Cell<u64>,
    /// One commit at a time, in order.
    pub(crate) commit: tokio::sync::Mutex<()>,
    /// Acknowledged writes, counted.
    acked: Cell<u64>,
    /// Acknowledged writes a commit covered, counted.
    committed: Cell<u64>,
    /// The lease's reserve capability (nodes mint new chunk ids with it),
    /// set before each write ([`Writer::set_reserve_capability`]).
    reserve: Cell<Option<Capability>>,
}

impl Writer {
    /// The writer of a write handle with this `epoch`, on a file of `size`
    /// bytes.
    pub(crate) fn new(epoch: u64, size: u64) -> Self {
        Self {
            epoch,
            seq: Cell::new(0),
            slots: RefCell::default(),
            records: RefCell::default(),
            dirty: RefCell::default(),
            issued_end: Cell::new(size),
            commit: tokio::sync::Mutex::new(()),
            acked: Cell::new(0),
            committed: Cell::new(0),
            reserve: Cell::new(None),
        }
    }

    /// A version no write of this lease used before.
    pub(crate) fn next_version(&self) -> Version {
        let s = self.seq.get() + 1;
        self.seq.set(s);
        Version::new(self.epoch, s)
    }

    /// Reserves `len` bytes at `offset` (None: at the end of every write
    /// issued so far, for appends) and a ticket in each chunk of them;
    /// returns the offset (None: past the largest offset). `len` > 0.
    /// Synchronous: the call order is the issue order.
    pub(crate) fn issue(
        &self,
        offset: Option<u64>,
        len: u64,
        chunk_size: u64,
        committed_size: u64,
    ) -> Option<(u64, Vec<(u64, Turn)>)> {
        let end_now = self.issued_end.get().max(committed_size);
        let offset = offset.unwrap_or(end_now);
        let end = offset.checked_add(len)?;
        self.issued_end.set(end_now.max(end));
        let turns = (offset / chunk_size..=(end - 1) / chunk_size)
            .map(|i| (i, self.ticket(i)))
            .collect();
        Some((offset, turns))
    }

    /// A ticket in chunk `index`'s queue, after every one given so far.
    pub(crate) fn ticket(&self, index: u64) -> Turn {
        let mut slots = self.slots.borrow_mut();
        if slots.len() >= MAX_CHUNKS && !slots.contains_key(&index) {
            if let Some(k) = slots.iter().find(|(_, s)| s.idle()).map(|(k, _)| *k) {
                slots.remove(&k);
            }
        }
        let slot = slots.entry(index).or_default().clone();
        let ticket = slot.next_ticket.get();
        slot.next_ticket.set(ticket + 1);
        Turn {
            slot,
            ticket,
            released: Cell::new(false),
        }
    }

    /// The reserve capability the next writes mint new chunks with.
    pub(crate) fn set_reserve_capability(&self, cap: Capability) {
        self.reserve.set(Some(cap));
    }

    /// The reserve capability last set, if any.
    pub(crate) fn reserve_capability(&self) -> Option<Capability> {
        self.reserve.get()
    }

    /// Remembers committed record `rec` unless a newer record of the same chunk is known.
    pub(crate) fn know(&self, rec: &ChunkRecord) {
        let mut records = self.records.borrow_mut();
        if records.len() >= MAX_CHUNKS && !records.contains_key(&rec.index) {
            if let Some(&k) = records.keys().next() {
                records.remove(&k);
            }
        }
        match records.get(&rec.index) {
            Some(old) if old.chunk_id == rec.chunk_id && old.version > rec.version => {}
            _ => {
                records.insert(rec.index, rec.clone());
            }
        }
    }

    /// Adds an acknowledged write (its records, and the end of its range)
    /// to what the next commit carries; returns its generation (see
    /// [`Writer::committed_through`]).
    pub(crate) fn acknowledged(&self, records: &[ChunkRecord], end: u64) -> u64 {
        let mut d = self.dirty.borrow_mut();
        d.end = d.end.max(end);
        let committed = self.records.borrow();
        for r in records {
            // Writes of one chunk finish in any order: a record older than
            // one already acknowledged, or already committed (a later
            // write's commit point came first), has nothing to add.
            let newer = |old: Option<&ChunkRecord>| {
                old.is_some_and(|o| o.chunk_id == r.chunk_id && o.version >= r.version)
            };
            if !newer(d.records.get(&r.index)) && !newer(committed.get(&r.index)) {
                d.records.insert(r.index, r.clone());
            }
        }
        self.acked.set(self.acked.get() + 1);
        self.acked.get()
    }

    /// Whether acknowledged write `gen` is committed.
    pub(crate) fn committed_through(&self, gen: u64) -> bool {
        self.committed.get() >= gen
    }

    /// The newest acknowledged write's generation, and what a commit of
    /// everything acknowledged carries: the records, by index, and the
    /// end of the furthest write.
    pub(crate) fn snapshot(&self) -> (u64, Vec<ChunkRecord>, u64) {
        let d = self.dirty.borrow();
        let mut records: Vec<ChunkRecord> = d.records.values().cloned().collect();
        records.sort_by_key(|r| r.index);
        (self.acked.get(), records, d.end)
    }

    /// A commit of `snapshot` (taken at generation `gen`) succeeded: its
    /// records are the committed ones now, and leave the dirty set unless
    /// a newer write of their chunk came since.
    pub(crate) fn committed(&self, gen: u64, records: &[ChunkRecord]) {
        let mut d = self.dirty.borrow_mut();
        for r in records {
            self.know(r);
            if d.records
                .get(&r.index)
                .is_some_and(|n| n.chunk_id == r.chunk_id && n.version <= r.version)
            {
                d.records.remove(&r.index);
            }
        }
        self.committed.set(self.committed.get().max(gen));
    }

    /// Whether a write that produced `rec` must be committed before it is
    /// acknowledged: a new chunk, or a replica set or length that differs
    /// from the committed record. (Until a dead writer's leases are
    /// recovered from the replicas, only a version may be left
    /// uncommitted: readers accept replicas at or above the committed
    /// version, see docs/client.md.)
    pub(crate) fn needs_commit(&self, rec: &ChunkRecord) -> bool {
        match self.records.borrow().get(&rec.index) {
            Some(c) => {
                c.chunk_id != rec.chunk_id
                    || c.length < rec.length
                    || c.replicas.len() != rec.replicas.len()
                    || rec.replicas.iter().any(|n| !c.replicas.contains(n))
            }
            None => true,
        }
    }

    /// The chunk at `index` this writer knows: written and not committed
    /// yet, else committed.
    pub(crate) fn record(&self, index: u64) -> Option<ChunkRecord> {
        if let Some(r) = self.dirty.borrow().records.get(&index) {
            return Some(r.clone());
        }
        self.records.borrow().get(&index).cloned()
    }

    /// Forgets the chunks at `index` and past: their states, records and
    /// uncommitted writes (a transaction cut them off; they are never
    /// committed, and a later write there starts a new chunk).
    pub(crate) fn discard_from(&self, index: u64) {
        self.slots.borrow_mut().retain(|&i, _| i < index);
        self.records.borrow_mut().retain(|&i, _| i < index);
        self.dirty.borrow_mut().records.retain(|&i, _| i < index);
    }

    /// Forgets every chunk state and record (the file was truncated); the
    /// file is now `size` bytes.
    pub(crate) fn forget(&self, size: u64) {
        self.slots.borrow_mut().retain(|_, s| {
            *s.state.borrow_mut() = None;
            !s.idle()
        });
        self.records.borrow_mut().clear();
        *self.dirty.borrow_mut() = Dirty::default();
        self.issued_end.set(size);
    }
}
