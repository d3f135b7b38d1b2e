//! `copyTo`: this node reads its replica of a chunk, which must be at
//! exactly the version asked for (every block verified), and sends it as a
//! `replace` write to the target named in `chain[0]` (with the target's
//! token), fenced there on the target's expected version; the answer is the
//! target's. Copy-then-swap happens on the target, so a copy that fails
//! anywhere leaves the target's old replica as it was. The control server's
//! re-replication uses the node command instead ([`crate::replicate`]),
//! which also verifies the copy by reading it back.

use super::{store_error_frame, OpError};
use crate::chunk_store::{ReadOut, StoreError};
use crate::disk::dma::DmaDir;
use crate::disk::DiskDir;
use crate::lock_table::Mode;
use crate::peer::Peer;
use crate::shard::Shard;
use ringfs_schema::frame::{Header, Op, Status, Token, CAPABILITY_LEN};
use ringfs_schema::ids::ChunkId;
use ringfs_schema::Version;

/// A whole replica read for a copy.
pub(crate) type Whole = ReadOut<<<DmaDir as DiskDir>::File as crate::disk::DiskFile>::Read>;

impl Shard {
    pub(super) async fn op_copy_to(&self, h: &Header, conn: u64) -> Result<Header, OpError> {
        self.check_shard(h.chunk_id)?;
        let Some(target) = h.chain.first() else {
            return Err(OpError(
                Status::InvalidArgument,
                "copyTo needs the target in chain[0]".into(),
            ));
        };
        // The chunk goes only to a node of the cluster map, whatever
        // address the request names.
        self.member_at(&target.address).await?;
        let auth = self.authorize(h, Mode::Read, conn).await?;
        let fence = || self.fence(h.chunk_id, &auth, Mode::Read);
        let whole = self.read_whole(h.chunk_id, h.version, &fence).await;
        self.end_auth(h.chunk_id, auth);
        let whole = match whole {
            Ok(w) => w,
            Err(e) => return Ok(store_error_frame(h, e)),
        };
        let peer = self
            .peers
            .get(&target.address)
            .await
            .map_err(|e| OpError(Status::Unavailable, e.to_string()))?;
        let timeout = self.cfg.forward_timeout;
        // The target checks the caller's capability itself: a copy needs
        // write on the chunk there, not only read here.
        let send = send_replace(
            &peer,
            h.chunk_id,
            &target.token,
            h.capability,
            h.expected,
            &whole,
        );
        let resp = match glommio::timer::timeout(timeout, async { Ok(send.await) }).await {
            Err(_) => {
                return Err(OpError(
                    Status::Timeout,
                    format!("{} did not answer within {timeout:?}", target.address),
                ))
            }
            Ok(r) => r.map_err(|e| OpError(Status::Unavailable, e.to_string()))?,
        };
        let mut r = Header::response_to(h, resp.status);
        r.message = resp.message;
        r.version = resp.version;
        r.chunk_length = resp.chunk_length;
        r.durable_mask = resp.durable_mask;
        r.durable_replicas = resp.durable_replicas;
        Ok(r)
    }

    /// Reads this node's whole replica of `id`, which must be at exactly
    /// `version`, with its stored CRCs (every block verified; a checksum
    /// failure marks the chunk bad).
    pub(crate) async fn read_whole(
        &self,
        id: ChunkId,
        version: Version,
        fence: crate::chunk_store::Fence<'_>,
    ) -> Result<Whole, StoreError> {
        let info = self.store.info(id)?;
        if info.version != version {
            return Err(StoreError::StaleVersion {
                id,
                current: info.version,
                expected: version,
            });
        }
        let whole = self.store.read(id, 0, info.length, fence).await;
        if let Err(StoreError::Checksum(..)) = &whole {
            self.bad.borrow_mut().insert(id);
        }
        let whole = whole?;
        if whole.info.version != version {
            // Written between the look and the read.
            return Err(StoreError::StaleVersion {
                id,
                current: whole.info.version,
                expected: version,
            });
        }
        Ok(whole)
    }
}

/// Sends `whole` to `peer` as a `replace` write of chunk `id` with
/// `token` and `capability`, fenced on the target holding `expected`;
/// returns the target's answer.
pub(crate) async fn send_replace(
    peer: &Peer,
    id: ChunkId,
    token: &Token,
    capability: Option<[u8; CAPABILITY_LEN]>,
    expected: Version,
    whole: &Whole,
) -> Result<Header, crate::peer::PeerError> {
    let mut h = Header::request(0, Op::Write);
    h.chunk_id = id;
    h.replace = true;
    h.version = whole.info.version;
    h.expected = expected;
    h.token = token.clone();
    h.capability = capability;
    h.crcs = whole.crcs.clone();
    peer.call(h, &whole.data).await.map(|(r, _)| r)
}
