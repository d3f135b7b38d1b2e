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

/// Decodes a Raft request, has `handle` answer it, and encodes the answer.
async fn answer<Req, Resp, Fut>(
    request: &[u8],
    handle: impl FnOnce(Req) -> Fut,
) -> Result<Vec<u8>, capnp::Error>
where
    Req: serde::de::DeserializeOwned,
    Resp: serde::Serialize,
    Fut: std::future::Future<Output = Resp>,
{
    let req = decode(request).map_err(malformed)?;
    Ok(encode(&handle(req).await))
}

impl raft_peer::Server for PeerImpl {
    async fn append_entries(
        self: CapRc<Self>,
        params: raft_peer::AppendEntriesParams,
        mut results: raft_peer::AppendEntriesResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let resp = answer(p.get_request()?, |req| self.raft.append_entries(req)).await?;
        results.get().set_response(&resp);
        Ok(())
    }

    async fn vote(
        self: CapRc<Self>,
        params: raft_peer::VoteParams,
        mut results: raft_peer::VoteResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let resp = answer(p.get_request()?, |req| self.raft.vote(req)).await?;
        results.get().set_response(&resp);
        Ok(())
    }

    async fn install_snapshot(
        self: CapRc<Self>,
        params: raft_peer::InstallSnapshotParams,
        mut results: raft_peer::InstallSnapshotResults,
    ) -> Result<(), capnp::Error> {
        tracing::debug!(from = self.from, "snapshot chunk");
        let p = params.get()?;
        let resp = answer(p.get_request()?, |req| self.raft.install_snapshot(req)).await?;
        results.get().set_response(&resp);
        Ok(())
    }
}
