//! Where the control server's mutations go: the local group-commit writer
//! of a single server, or the Raft log of a replicated control plane. Both
//! answer a mutation only once it is durable (on this disk, or on a
//! majority of the replicas' disks).

use std::rc::Rc;

use crate::error::Result;
use crate::group_commit::Committer;
use crate::store::{Mutation, Outcome, Request};

/// The path of mutations.
#[derive(Clone)]
pub enum Proposer {
    /// One server: the group-commit writer thread.
    Local(Committer),
    /// A replica: the Raft proposer (leader only).
    Raft(Rc<crate::raft::proposer::Proposer>),
}

impl Proposer {
    /// Applies `mutation` durably (no request id: callers for which a
    /// repeat is harmless, or that never repeat).
    pub async fn submit(&self, mutation: Mutation) -> Result<Outcome> {
        self.submit_request(Request { id: None, mutation }).await
    }

    /// Applies `request` durably; a request id seen before gets the first
    /// answer again.
    pub async fn submit_request(&self, request: Request) -> Result<Outcome> {
        match self {
            Proposer::Local(c) => c.submit_request(request).await,
            Proposer::Raft(p) => p.submit(request).await,
        }
    }
}
