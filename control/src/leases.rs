//! Exclusive write leases on files, with a FIFO queue of waiting writers.
//!
//! Invariants: a file has at most one writer; when the writer releases, the
//! lease passes to the oldest waiter that is still waiting, never to a later
//! one; a file with no writer has no live waiter. Leases live in memory: a
//! control-server restart ends them all (their handles die with the
//! connections).
//!
//! Single-threaded: used from the RPC thread only.

use std::collections::{HashMap, VecDeque};

use tokio::sync::oneshot;

/// 16-byte handle id.
pub type Guid = [u8; 16];

#[derive(Default)]
struct FileLease {
    writer: Option<Guid>,
    waiters: VecDeque<(Guid, oneshot::Sender<()>)>,
}

/// An open write handle, as a transaction names it (by its guid): the
/// file, its lease's write epoch, and who opened it.
#[derive(Clone, Copy, Debug)]
pub struct WriteHandle {
    /// The file.
    pub inode: u64,
    /// The lease's write epoch.
    pub epoch: u64,
    /// The uid of the principal that opened it: only it commits through it.
    pub uid: u32,
}

/// The outcome of asking for a write lease.
pub enum Acquire {
    Granted,
    /// Queued; the receiver fires when the lease is handed over.
    Queued(oneshot::Receiver<()>),
}

/// All write leases of the server.
#[derive(Default)]
pub struct Leases {
    files: HashMap<u64, FileLease>,
}

impl Leases {
    /// Grants the lease on `inode` to `guid` at once if it is free, or queues
    /// `guid` behind the current writer and earlier waiters.
    pub fn acquire(&mut self, inode: u64, guid: Guid) -> Acquire {
        let lease = self.files.entry(inode).or_default();
        if lease.writer.is_none() {
            lease.writer = Some(guid);
            return Acquire::Granted;
        }
        let (tx, rx) = oneshot::channel();
        lease.waiters.push_back((guid, tx));
        Acquire::Queued(rx)
    }

    /// Whether `guid` holds the lease on `inode`.
    pub fn holds(&self, inode: u64, guid: &Guid) -> bool {
        self.files
            .get(&inode)
            .is_some_and(|l| l.writer.as_ref() == Some(guid))
    }

    /// Gives up whatever `guid` has on `inode`: the lease (which passes to
    /// the next live waiter) or its place in the queue.
    pub fn release(&mut self, inode: u64, guid: &Guid) {
        let Some(lease) = self.files.get_mut(&inode) else {
            return;
        };
        if lease.writer.as_ref() == Some(guid) {
            lease.writer = None;
            while let Some((next, tx)) = lease.waiters.pop_front() {
                // A waiter whose call was dropped cannot take the lease.
                if tx.send(()).is_ok() {
                    lease.writer = Some(next);
                    break;
                }
            }
        } else {
            lease.waiters.retain(|(g, _)| g != guid);
        }
        if lease.writer.is_none() && lease.waiters.is_empty() {
            self.files.remove(&inode);
        }
    }

    /// Whether `inode` has a writer.
    pub fn has_writer(&self, inode: u64) -> bool {
        self.files.get(&inode).is_some_and(|l| l.writer.is_some())
    }

    /// Number of files with a writer (for status and tests).
    pub fn held(&self) -> usize {
        self.files.values().filter(|l| l.writer.is_some()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(n: u8) -> Guid {
        [n; 16]
    }

    #[test]
    fn one_writer_then_fifo_handover() {
        let mut l = Leases::default();
        assert!(matches!(l.acquire(7, g(1)), Acquire::Granted));
        let Acquire::Queued(mut rx2) = l.acquire(7, g(2)) else {
            panic!("granted twice")
        };
        let Acquire::Queued(mut rx3) = l.acquire(7, g(3)) else {
            panic!("granted twice")
        };
        assert!(l.holds(7, &g(1)));
        l.release(7, &g(1));
        assert!(rx2.try_recv().is_ok(), "oldest waiter gets the lease");
        assert!(rx3.try_recv().is_err());
        assert!(l.holds(7, &g(2)) && !l.holds(7, &g(3)));
        l.release(7, &g(2));
        assert!(rx3.try_recv().is_ok());
        l.release(7, &g(3));
        assert_eq!(l.held(), 0);
    }

    #[test]
    fn dropped_and_withdrawn_waiters_are_skipped() {
        let mut l = Leases::default();
        assert!(matches!(l.acquire(1, g(1)), Acquire::Granted));
        let Acquire::Queued(rx2) = l.acquire(1, g(2)) else {
            panic!()
        };
        let Acquire::Queued(_rx3) = l.acquire(1, g(3)) else {
            panic!()
        };
        let Acquire::Queued(mut rx4) = l.acquire(1, g(4)) else {
            panic!()
        };
        drop(rx2); // caller went away
        l.release(1, &g(3)); // timed out and withdrew
        l.release(1, &g(1));
        assert!(l.holds(1, &g(4)));
        assert!(rx4.try_recv().is_ok());
    }

    #[test]
    fn leases_are_per_file() {
        let mut l = Leases::default();
        assert!(matches!(l.acquire(1, g(1)), Acquire::Granted));
        assert!(matches!(l.acquire(2, g(2)), Acquire::Granted));
        assert_eq!(l.held(), 2);
    }
}
