//! The order of one connection's writes to each chunk.
//!
//! A writer pipelines its writes of a chunk on one connection, each
//! expecting the version the one before creates (issue 18). The node runs
//! every request as its own task, and tasks resume in no particular order:
//! a write could reach the chunk's lock or its admission before the write
//! it is built on and be refused as stale, or wait in the lock queue
//! behind a reader that itself waits for the earlier write (until a
//! timeout). So the connection's read loop gives each write two places
//! in line per chunk as its frame arrives ([`WriteOrder::ticket`]): one
//! for asking the chunk's lock, passed on as soon as the request holds its
//! place in the lock queue (so the writes of one connection stay together
//! in that queue, as when each asked on arrival, and another connection's
//! write cannot queue between them and be granted first), and one for the
//! chunk's admission, passed on once the write is admitted or refused and
//! its forward's frame is on the wire. The writes still overlap in the
//! journal, in their syncs and downstream.

use crate::fifo::{Fifo, Place};
use ringfs_schema::ids::ChunkId;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

/// Per connection: two lines per chunk with writes in flight (asking
/// the lock, admission).
#[derive(Default)]
pub(crate) struct WriteOrder {
    lines: RefCell<HashMap<ChunkId, Rc<[Fifo; 2]>>>,
    /// Lines are swept of idle ones when there are this many: the map
    /// stays within about twice the chunks with writes in flight.
    sweep_at: Cell<usize>,
}

/// A write's places in its chunk's lines on its connection.
pub(crate) struct Ticket {
    /// Asking the chunk's lock.
    pub(crate) lock: Place<Line>,
    /// The chunk's admission.
    pub(crate) admit: Place<Line>,
}

/// One of a chunk's two lines.
pub(crate) struct Line(Rc<[Fifo; 2]>, usize);

impl std::ops::Deref for Line {
    type Target = Fifo;
    fn deref(&self) -> &Fifo {
        &self.0[self.1]
    }
}

const MIN_SWEEP: usize = 64;

impl WriteOrder {
    /// A place in `chunk`'s line behind every write of it this connection
    /// read before.
    pub(crate) fn ticket(&self, chunk: ChunkId) -> Ticket {
        let mut lines = self.lines.borrow_mut();
        if lines.len() >= self.sweep_at.get().max(MIN_SWEEP) {
            lines.retain(|_, l| !(l[0].is_idle() && l[1].is_idle()));
            self.sweep_at.set(2 * lines.len());
        }
        let l = lines.entry(chunk).or_default();
        Ticket {
            lock: Fifo::place(Line(l.clone(), 0)),
            admit: Fifo::place(Line(l.clone(), 1)),
        }
    }

    #[cfg(test)]
    fn lines(&self) -> usize {
        self.lines.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[test]
    fn lines_are_per_chunk_and_idle_ones_are_swept() {
        let order = WriteOrder::default();
        let id = |n| ChunkId::new(7, n);
        let a1 = order.ticket(id(1));
        let a2 = order.ticket(id(1));
        let b1 = order.ticket(id(2));
        let mut a2 = Box::pin(a2.admit.turn());
        assert!((&mut a2).now_or_never().is_none(), "behind a1");
        let tb = b1
            .admit
            .turn()
            .now_or_never()
            .expect("another chunk's line");
        // The two lines are apart: a1 asks its lock while a2 waits to be
        // admitted.
        let la = a1.lock.turn().now_or_never().expect("a1 asks first");
        drop(la);
        let ta = a1.admit.turn().now_or_never().expect("first of chunk 1");
        drop(ta);
        let _ = a2.now_or_never().expect("a1 done");
        drop(tb);
        for n in 3..3 + 2 * MIN_SWEEP as u64 {
            drop(order.ticket(id(n)));
        }
        assert!(order.lines() <= MIN_SWEEP + 1, "{}", order.lines());
    }
}
