//! `read` (verified against the stored CRCs; a checksum failure marks the
//! chunk bad, which the control link reports for repair) and `chunkInfo`.

use super::OpError;
use crate::chunk_store::StoreError;
use crate::conn::{Outgoing, Payload};
use crate::lock_table::Mode;
use crate::shard::Shard;
use ringfs_schema::frame::{Header, Status, MAX_PAYLOAD_LEN};

impl Shard {
    pub(super) async fn op_read(&self, h: &Header) -> Result<Outgoing, OpError> {
        self.check_shard(h.chunk_id)?;
        if h.length as u64 > MAX_PAYLOAD_LEN as u64 {
            return Err(OpError(
                Status::InvalidArgument,
                format!("read length {} over the limit", h.length),
            ));
        }
        let auth = self.authorize(h, Mode::Read).await?;
        let r = self.store.read(h.chunk_id, h.offset, h.length as u64).await;
        self.end_auth(h.chunk_id, auth);
        if let Err(StoreError::Checksum(..)) = &r {
            // Reported to the control server, which has it repaired.
            self.bad.borrow_mut().insert(h.chunk_id);
        }
        let (data, info) = r?;
        let mut resp = Header::response_to(h, Status::Ok);
        resp.offset = h.offset;
        resp.payload_length = data.len() as u32;
        resp.version = info.version;
        resp.chunk_length = info.length;
        Ok(Outgoing {
            header: resp,
            payload: Payload::Read(data),
        })
    }

    pub(super) fn op_chunk_info(&self, h: &Header) -> Result<Header, OpError> {
        self.check_shard(h.chunk_id)?;
        let mut resp = Header::response_to(h, Status::Ok);
        match self.store.info(h.chunk_id) {
            Ok(info) => {
                resp.version = info.version;
                resp.chunk_length = info.length;
            }
            // A reserved, not yet written chunk is empty.
            Err(_) if self.reservations.borrow().get(h.chunk_id).is_some() => {}
            Err(e) => return Err(e.into()),
        }
        Ok(resp)
    }
}
