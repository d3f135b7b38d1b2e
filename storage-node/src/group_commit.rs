//! Per-shard group commit: concurrent writers each ask for an fdatasync of
//! their chunk file; one leader task syncs everything queued so far (each
//! file once, concurrently through io_uring) and wakes all of them, while
//! requests arriving meanwhile queue for the next batch. A write is
//! acknowledged only after the batch that contains it completed.

use futures::channel::oneshot;
use glommio::io::DmaFile;
use std::cell::RefCell;
use std::rc::Rc;

type Waiter = (Rc<DmaFile>, oneshot::Sender<Result<(), String>>);

#[derive(Default)]
struct Inner {
    pending: Vec<Waiter>,
    leader_running: bool,
    batches: u64,
    syncs: u64,
}

/// The group-commit queue of one shard (not `Send`: it lives on its executor).
#[derive(Clone, Default)]
pub struct GroupCommit {
    inner: Rc<RefCell<Inner>>,
}

impl GroupCommit {
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns once `file`'s data written before this call is durable.
    pub async fn sync(&self, file: Rc<DmaFile>) -> std::io::Result<()> {
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
            Ok(Err(e)) => Err(std::io::Error::other(e)),
            Err(_) => Err(std::io::Error::other("group commit leader vanished")),
        }
    }

    /// (batches, fdatasync calls) so far: batches < calls shows grouping.
    pub fn stats(&self) -> (u64, u64) {
        let i = self.inner.borrow();
        (i.batches, i.syncs)
    }

    async fn lead(inner: Rc<RefCell<Inner>>) {
        loop {
            let batch = std::mem::take(&mut inner.borrow_mut().pending);
            if batch.is_empty() {
                inner.borrow_mut().leader_running = false;
                return;
            }
            // Each distinct file once.
            let mut files: Vec<Rc<DmaFile>> = Vec::new();
            for (f, _) in &batch {
                if !files.iter().any(|g| g.is_same(f)) {
                    files.push(f.clone());
                }
            }
            let results = futures::future::join_all(files.iter().map(|f| f.fdatasync())).await;
            {
                let mut i = inner.borrow_mut();
                i.batches += 1;
                i.syncs += batch.len() as u64;
            }
            for (f, tx) in batch {
                let idx = files
                    .iter()
                    .position(|g| g.is_same(&f))
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
