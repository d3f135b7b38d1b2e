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
use crate::store::{MetaStore, Mutation, Outcome};

struct Request {
    mutation: Mutation,
    reply: oneshot::Sender<Result<Outcome>>,
}

/// Handle to the writer thread. Dropping every handle stops the thread after
/// it has committed what it already received.
#[derive(Clone)]
pub struct Committer {
    tx: mpsc::Sender<Request>,
}

impl Committer {
    /// Starts the writer thread; batches hold at most `max_batch` mutations.
    pub fn start(store: Arc<MetaStore>, max_batch: usize) -> (Self, std::thread::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel::<Request>();
        let thread = std::thread::Builder::new()
            .name("ringfs-commit".into())
            .spawn(move || writer_loop(&store, &rx, max_batch.max(1)))
            .expect("spawning the commit thread");
        (Committer { tx }, thread)
    }

    /// Applies `mutation` durably and returns its outcome.
    pub async fn submit(&self, mutation: Mutation) -> Result<Outcome> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request { mutation, reply })
            .map_err(|_| ControlError::Unavailable("the metadata writer has stopped".into()))?;
        rx.await
            .map_err(|_| ControlError::Unavailable("the metadata writer has stopped".into()))?
    }
}

fn writer_loop(store: &MetaStore, rx: &mpsc::Receiver<Request>, max_batch: usize) {
    let mut mutations = Vec::with_capacity(max_batch);
    let mut replies = Vec::with_capacity(max_batch);
    while let Ok(first) = rx.recv() {
        mutations.push(first.mutation);
        replies.push(first.reply);
        while mutations.len() < max_batch {
            match rx.try_recv() {
                Ok(r) => {
                    mutations.push(r.mutation);
                    replies.push(r.reply);
                }
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        let outcome = commit_batch(store, &mutations);
        tracing::debug!(
            batch = mutations.len(),
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
                    batch = mutations.len(),
                    "metadata commit failed"
                );
                for reply in replies.drain(..) {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
        mutations.clear();
    }
}

/// Applies and commits one batch. Failpoint `group_commit::before_commit`
/// fails the whole batch with a storage error before it reaches the store.
fn commit_batch(store: &MetaStore, mutations: &[Mutation]) -> Result<Vec<Result<Outcome>>> {
    crate::fail_point!("group_commit::before_commit", |_| Err(ControlError::from(
        redb::StorageError::Io(std::io::Error::other(
            "injected by failpoint group_commit::before_commit"
        ))
    )));
    store.apply_batch(mutations)
}
