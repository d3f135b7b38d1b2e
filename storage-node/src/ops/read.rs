//! `read` (verified against the stored CRCs, returned as whole blocks with
//! those CRCs so the reader verifies them too; a checksum failure marks the
//! chunk bad, which the control link reports for repair), `chunkInfo` and
//! `digest`.

use super::OpError;
use crate::chunk_file::ChunkMeta;
use crate::chunk_store::StoreError;
use crate::conn::{Outgoing, Payload};
use crate::lock_table::Mode;
use crate::shard::Shard;
use ringfs_schema::frame::{Header, Status, MAX_PAYLOAD_LEN};
use ringfs_schema::Version;

impl Shard {
    pub(super) async fn op_read(&self, h: &Header, conn: u64) -> Result<Outgoing, OpError> {
        self.check_shard(h.chunk_id)?;
        if h.length as u64 > MAX_PAYLOAD_LEN as u64 {
            return Err(OpError(
                Status::InvalidArgument,
                format!("read length {} over the limit", h.length),
            ));
        }
        let auth = self.authorize(h, Mode::Read, conn).await?;
        let fence = || self.fence(h.chunk_id, &auth, Mode::Read);
        let r = self
            .store
            .read(h.chunk_id, h.offset, h.length as u64, &fence)
            .await;
        self.end_auth(h.chunk_id, auth);
        if let Err(StoreError::Checksum(..)) = &r {
            // Reported to the control server, which has it repaired.
            self.bad.borrow_mut().insert(h.chunk_id);
        }
        let out = r?;
        let mut resp = Header::response_to(h, Status::Ok);
        resp.offset = out.offset;
        resp.payload_length = out.data.len() as u32;
        resp.version = out.info.version;
        resp.chunk_length = out.info.length;
        resp.crcs = out.crcs;
        #[cfg(feature = "failpoints")]
        if fail::eval("ops::read::flip_bit", |_| ()).is_some() && !out.data.is_empty() {
            // Damage in node memory after the disk read was verified: the
            // reader's check of the stored CRCs must catch it.
            let mut bytes = out.data.to_vec();
            bytes[0] ^= 1;
            let mut buf = glommio::allocate_dma_buffer(bytes.len());
            buf.as_bytes_mut().copy_from_slice(&bytes);
            return Ok(Outgoing::new(resp, Payload::Owned(buf)));
        }
        Ok(Outgoing::new(resp, Payload::Read(out.data)))
    }

    pub(super) fn op_chunk_info(&self, h: &Header) -> Result<Header, OpError> {
        self.check_shard(h.chunk_id)?;
        let mut resp = Header::response_to(h, Status::Ok);
        match self.store.info(h.chunk_id) {
            Ok(info) => {
                resp.version = info.version;
                resp.chunk_length = info.length;
            }
            // A reserved, not yet written chunk is empty at (0, 0).
            Err(_) if self.reservations.borrow().get(h.chunk_id).is_some() => {}
            Err(e) => return Err(e.into()),
        }
        Ok(resp)
    }

    /// The chunk's version, length and a digest of its stored CRCs: what
    /// `fsck --verify` compares between replicas without reading data.
    pub(super) fn op_digest(&self, h: &Header) -> Result<Header, OpError> {
        self.check_shard(h.chunk_id)?;
        let mut resp = Header::response_to(h, Status::Ok);
        match self.store.digest(h.chunk_id) {
            Ok((info, digest)) => {
                resp.version = info.version;
                resp.chunk_length = info.length;
                resp.digest = digest.to_vec();
            }
            Err(_) if self.reservations.borrow().get(h.chunk_id).is_some() => {
                resp.version = Version::NONE;
                resp.digest = ChunkMeta::default().digest().to_vec();
            }
            Err(e) => return Err(e.into()),
        }
        Ok(resp)
    }
}
