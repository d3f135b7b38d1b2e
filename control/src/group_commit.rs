//! Group commit: one writer thread applies mutations to the [`MetaStore`] in
//! batches, one durable transaction (one fsync) per batch, and answers each
//! caller when its batch is on disk.
//!
//! Guarantee: a caller is answered `Ok` only after the transaction holding
//! its mutation committed durably; when the transaction fails, every
//! caller of the batch gets that error and none of the batch is applied. Batches form by themselves: while one
//! commit is in flight, new requests queue up and become the next batch, so
//! the fsync cost is shared by everything that arrived meanwhile.

use std::sync::mpsc;
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::error::{ControlError, Result};
use crate::store::{Batch, MetaStore, Mutation, Outcome, Request};

struct Waiting {
    request: Request,
    reply: oneshot::Sender<Result<Outcome>>,
}

/// Handle to the writer thread. Dropping every handle stops the thread after
/// it has committed what it already received.
#[derive(Clone)]
pub struct Committer {
    tx: mpsc::Sender<Waiting>,
}

impl Committer {
    /// Starts the writer thread; batches hold at most `max_batch` mutations.
    pub fn start(store: Arc<MetaStore>, max_batch: usize) -> (Self, std::thread::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel::<Waiting>();
        let thread = std::thread::Builder::new()
            .name("ringfs-commit".into())
            .spawn(move || writer_loop(&store, &rx, max_batch.max(1)))
            .expect("spawning the commit thread");
        (Committer { tx }, thread)
    }

    /// Applies `mutation` durably and returns its outcome.
    pub async fn submit(&self, mutation: Mutation) -> Result<Outcome> {
        self.submit_request(Request { id: None, mutation }).await
    }

    /// Applies `request` durably and returns its outcome; a request id seen
    /// before (within its retention) gets the first answer, not a second
    /// application.
    pub async fn submit_request(&self, request: Request) -> Result<Outcome> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Waiting { request, reply })
            .map_err(|_| ControlError::Unavailable("the metadata writer has stopped".into()))?;
        rx.await
            .map_err(|_| ControlError::Unavailable("the metadata writer has stopped".into()))?
    }
}

fn writer_loop(store: &MetaStore, rx: &mpsc::Receiver<Waiting>, max_batch: usize) {
    let mut batch = Batch {
        now_ns: 0,
        requests: Vec::with_capacity(max_batch),
    };
    let mut replies = Vec::with_capacity(max_batch);
    while let Ok(first) = rx.recv() {
        batch.requests.push(first.request);
        replies.push(first.reply);
        while batch.requests.len() < max_batch {
            match rx.try_recv() {
                Ok(r) => {
                    batch.requests.push(r.request);
                    replies.push(r.reply);
                }
                Err(_) => break,
            }
        }
        batch.now_ns = crate::service::now_ns();
        let started = std::time::Instant::now();
        let outcome = commit_batch(store, &batch);
        tracing::debug!(
            batch = batch.requests.len(),
            commit_us = started.elapsed().as_micros() as u64,
            "group commit"
        );
        crate::fail_point!("group_commit::before_answer");
        match outcome {
            Ok(results) => {
                for (reply, result) in replies.drain(..).zip(results) {
                    // A caller that went away no longer needs the answer.
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                tracing::error!(
                    error = %ringfs_schema::wire_error::describe(&e),
                    batch = batch.requests.len(),
                    "metadata commit failed"
                );
                for reply in replies.drain(..) {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
        batch.requests.clear();
    }
}

/// Applies and commits one batch. Failpoint `group_commit::before_commit`
/// fails the whole batch with a storage error before it reaches the store.
fn commit_batch(store: &MetaStore, batch: &Batch) -> Result<Vec<Result<Outcome>>> {
    crate::fail_point!("group_commit::before_commit", |_| Err(ControlError::from(
        redb::StorageError::Io(std::io::Error::other(
            "injected by failpoint group_commit::before_commit"
        ))
    )));
    Ok(store
        .apply_batches(&[batch], &[], true)?
        .pop()
        .unwrap_or_default())
}
