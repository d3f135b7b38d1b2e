//! `copyTo`: this node reads its replica of a chunk (every block verified)
//! and writes it, at its version, to the target named in `chain[0]` with the
//! target's token; the answer is the target's. The control server's
//! re-replication uses the heartbeat command instead
//! ([`crate::replicate`]), which also verifies the copy by reading it back.

use super::OpError;
use crate::lock_table::Mode;
use crate::shard::Shard;
use ringfs_schema::frame::{Header, Op, Status};

impl Shard {
    pub(super) async fn op_copy_to(&self, h: &Header) -> Result<Header, OpError> {
        self.check_shard(h.chunk_id)?;
        let Some(target) = h.chain.first() else {
            return Err(OpError(
                Status::InvalidArgument,
                "copyTo needs the target in chain[0]".into(),
            ));
        };
        let auth = self.authorize(h, Mode::Read).await?;
        let r = async {
            let info = self.store.info(h.chunk_id)?;
            let (data, _) = self.store.read(h.chunk_id, 0, info.length).await?;
            Ok::<_, OpError>((info, data))
        }
        .await;
        self.end_auth(h.chunk_id, auth);
        let (info, data) = r?;
        let peer = self
            .peers
            .get(&target.address)
            .await
            .map_err(|e| OpError(Status::Unavailable, e.to_string()))?;
        let mut fh = Header::request(0, Op::Write);
        fh.chunk_id = h.chunk_id;
        fh.version = info.version;
        fh.token = target.token.clone();
        fh.chain = h.chain[1..].to_vec();
        let (resp, _) = peer
            .call(fh, &data)
            .await
            .map_err(|e| OpError(Status::Unavailable, e.to_string()))?;
        let mut r = Header::response_to(h, resp.status);
        r.message = resp.message;
        r.version = info.version;
        r.chunk_length = info.length;
        r.durable_replicas = resp.durable_replicas;
        Ok(r)
    }
}
