//! `write`: a chunk write on this node and its forward to the rest of the
//! chain, concurrently. The local part is [`crate::chunk_store`]'s (it picks
//! the version and is durable before it returns); this file checks the
//! chain and the write quorum, authorizes the write, forwards the payload
//! with the version to the next hop along with the chain's tail, and
//! answers how many replicas are durable (`quorum` when fewer than the
//! write quorum).

use super::OpError;
use crate::chunk_store::{SharedPayload, WriteBuf};
use crate::lock_table::Mode;
use crate::shard::Shard;
use ringfs_schema::frame::{Header, Op, Status};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// How long a chain hop may take to acknowledge a forwarded write.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);

impl Shard {
    pub(super) async fn op_write(&self, h: &Header, wb: WriteBuf) -> Result<Header, OpError> {
        self.check_shard(h.chunk_id)?;
        let quorum = if h.write_quorum == 0 {
            h.chain.len() + 1
        } else {
            h.write_quorum as usize
        };
        if quorum > h.chain.len() + 1 {
            return Err(OpError(
                Status::InvalidArgument,
                format!(
                    "writeQuorum {quorum} exceeds the {} replicas of the chain",
                    h.chain.len() + 1
                ),
            ));
        }
        let me = self.node_id.load(Ordering::Acquire);
        if me != 0 && h.chain.iter().any(|hop| hop.node_id == me) {
            // Forwarding to ourselves would wait on the chunk lock we hold.
            return Err(OpError(
                Status::InvalidArgument,
                format!("the chain lists this node ({me}) again"),
            ));
        }
        let auth = self.authorize(h, Mode::Write).await?;
        let create = self.reservations.borrow().get(h.chunk_id).is_some();
        if !create && !self.store.contains(h.chunk_id) {
            self.end_auth(h.chunk_id, auth);
            return Err(OpError(
                Status::NotFound,
                format!(
                    "chunk {} does not exist and has no reservation here (reserve it first)",
                    h.chunk_id
                ),
            ));
        }
        let forward = |payload: SharedPayload, version: u64| self.forward(h, payload, version);
        let (local, downstream) = self
            .store
            .write(h.chunk_id, wb, h.version, create, forward)
            .await;
        self.end_auth(h.chunk_id, auth);
        let info = local?;
        let (down_ok, down_msg) = match downstream {
            None | Some(Ok(0)) if h.chain.is_empty() => (0, String::new()),
            Some(Ok(n)) => (n, String::new()),
            Some(Err(msg)) => (0, msg),
            None => (0, "not forwarded".into()),
        };
        let durable = 1 + down_ok;
        let mut r = Header::response_to(h, Status::Ok);
        r.version = info.version;
        r.chunk_length = info.length;
        r.durable_replicas = durable.min(255) as u8;
        if durable < quorum {
            r.status = Status::Quorum;
            r.message =
                format!("write durable on {durable} of {quorum} required replicas: {down_msg}");
        }
        Ok(r)
    }

    /// Forwards a write to the next hop of its chain; returns the number of
    /// durable replicas downstream, or why none.
    async fn forward(
        &self,
        h: &Header,
        payload: SharedPayload,
        version: u64,
    ) -> Result<usize, String> {
        let Some(next) = h.chain.first() else {
            return Ok(0);
        };
        let peer = self
            .peers
            .get(&next.address)
            .await
            .map_err(|e| e.to_string())?;
        let mut fh = Header::request(0, Op::Write);
        fh.chunk_id = h.chunk_id;
        fh.offset = h.offset;
        fh.version = version;
        fh.chain = h.chain[1..].to_vec();
        fh.write_quorum = 0;
        if next.token.is_present() {
            fh.token = next.token.clone();
        } else {
            fh.implicit_lock = h.implicit_lock;
            fh.client_id = h.client_id;
            fh.timeout_ms = h.timeout_ms;
        }
        // A hung next hop must not hold this chunk's write lock forever.
        let call = async { Ok(peer.call(fh, payload.as_bytes()).await) };
        let (resp, _) = glommio::timer::timeout(FORWARD_TIMEOUT, call)
            .await
            .map_err(|_| format!("{} did not answer within {FORWARD_TIMEOUT:?}", next.address))?
            .map_err(|e| e.to_string())?;
        match resp.status {
            Status::Ok => Ok(resp.durable_replicas as usize),
            Status::Quorum if resp.durable_replicas > 0 => Ok(resp.durable_replicas as usize),
            s => Err(format!("{} replied {s:?}: {}", next.address, resp.message)),
        }
    }
}
