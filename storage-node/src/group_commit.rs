//! Per-shard group commit: concurrent writers each ask for an fdatasync of
//! their chunk file; one leader task syncs everything queued so far (each
//! file once, concurrently through io_uring) and wakes all of them, while
//! requests arriving meanwhile queue for the next batch. A write is
//! acknowledged only after the batch that contains it completed.
//!
//! Failpoints (feature `failpoints`): `group_commit::before_fdatasync` and
//! `group_commit::after_fdatasync`; with `return` the whole batch fails
//! (before: nothing was synced; after: everything was, and is reported
//! failed anyway).

use crate::disk::DiskFile;
use futures::channel::oneshot;
use std::cell::RefCell;
use std::io;
use std::rc::Rc;

type Waiter<F> = (Rc<F>, oneshot::Sender<Result<(), String>>);

struct Inner<F> {
    pending: Vec<Waiter<F>>,
    leader_running: bool,
    batches: u64,
    syncs: u64,
}

/// The group-commit queue of one shard (not `Send`: it lives on its executor).
pub(crate) struct GroupCommit<F> {
    inner: Rc<RefCell<Inner<F>>>,
}

impl<F: DiskFile + 'static> GroupCommit<F> {
    pub(crate) fn new() -> Self {
        Self {
            inner: Rc::new(RefCell::new(Inner {
                pending: Vec::new(),
                leader_running: false,
                batches: 0,
                syncs: 0,
            })),
        }
    }

    /// Returns once `file`'s data written before this call is durable.
    pub(crate) async fn sync(&self, file: Rc<F>) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        let start_leader = {
            let mut inner = self.inner.borrow_mut();
            inner.pending.push((file, tx));
            !std::mem::replace(&mut inner.leader_running, true)
        };
        if start_leader {
            glommio::spawn_local(Self::lead(self.inner.clone())).detach();
        }
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(io::Error::other(e)),
            Err(_) => Err(io::Error::other("group commit leader vanished")),
        }
    }

    /// (batches, fdatasync calls) so far: batches < calls shows grouping.
    #[cfg(test)]
    pub(crate) fn stats(&self) -> (u64, u64) {
        let i = self.inner.borrow();
        (i.batches, i.syncs)
    }

    async fn lead(inner: Rc<RefCell<Inner<F>>>) {
        loop {
            let batch = std::mem::take(&mut inner.borrow_mut().pending);
            if batch.is_empty() {
                inner.borrow_mut().leader_running = false;
                return;
            }
            // Each distinct file once (a chunk has one open file).
            let mut files: Vec<Rc<F>> = Vec::new();
            for (f, _) in &batch {
                if !files.iter().any(|g| Rc::ptr_eq(g, f)) {
                    files.push(f.clone());
                }
            }
            let results = sync_all(&files).await;
            {
                let mut i = inner.borrow_mut();
                i.batches += 1;
                i.syncs += batch.len() as u64;
            }
            for (f, tx) in batch {
                let idx = files
                    .iter()
                    .position(|g| Rc::ptr_eq(g, &f))
                    .expect("file in batch");
                let r = match &results[idx] {
                    Ok(()) => Ok(()),
                    Err(e) => Err(format!("fdatasync failed: {e}")),
                };
                let _ = tx.send(r);
            }
        }
    }
}

/// fdatasync of every file, concurrently; one result per file.
async fn sync_all<F: DiskFile>(files: &[Rc<F>]) -> Vec<io::Result<()>> {
    failpoint!("group_commit::before_fdatasync", |_| files
        .iter()
        .map(|_| Err(crate::failpoint::injected("group_commit::before_fdatasync")))
        .collect());
    let results = futures::future::join_all(files.iter().map(|f| f.fdatasync())).await;
    failpoint!("group_commit::after_fdatasync", |_| files
        .iter()
        .map(|_| Err(crate::failpoint::injected("group_commit::after_fdatasync")))
        .collect());
    results
}
