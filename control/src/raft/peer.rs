//! The `RaftPeer` server: Raft messages from other replicas, handed to this
//! replica's openraft instance. Handed out only by `Control.raft` to a
//! connection authenticated as the cluster principal (`@cluster`).

use capnp::capability::Rc as CapRc;
use ringfs_schema::control_capnp::raft_peer;

use super::{decode, encode, Raft};
use crate::error::ControlError;

/// This replica's Raft endpoint for one authenticated connection.
pub struct PeerImpl {
    /// The local Raft instance.
    pub raft: Raft,
    /// The replica on the other end (as it said; for logs).
    pub from: u64,
}

fn malformed(e: postcard::Error) -> capnp::Error {
    ControlError::InvalidArgument(format!("malformed Raft message: {e}")).into()
}

impl raft_peer::Server for PeerImpl {
    async fn append_entries(
        self: CapRc<Self>,
        params: raft_peer::AppendEntriesParams,
        mut results: raft_peer::AppendEntriesResults,
    ) -> Result<(), capnp::Error> {
        let req = decode(params.get()?.get_request()?).map_err(malformed)?;
        let resp = self.raft.append_entries(req).await;
        results.get().set_response(&encode(&resp));
        Ok(())
    }

    async fn vote(
        self: CapRc<Self>,
        params: raft_peer::VoteParams,
        mut results: raft_peer::VoteResults,
    ) -> Result<(), capnp::Error> {
        let req = decode(params.get()?.get_request()?).map_err(malformed)?;
        let resp = self.raft.vote(req).await;
        results.get().set_response(&encode(&resp));
        Ok(())
    }

    async fn install_snapshot(
        self: CapRc<Self>,
        params: raft_peer::InstallSnapshotParams,
        mut results: raft_peer::InstallSnapshotResults,
    ) -> Result<(), capnp::Error> {
        let req = decode(params.get()?.get_request()?).map_err(malformed)?;
        tracing::debug!(from = self.from, "snapshot chunk");
        let resp = self.raft.install_snapshot(req).await;
        results.get().set_response(&encode(&resp));
        Ok(())
    }
}
