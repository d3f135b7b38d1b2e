//! The data-plane operations of a shard, one file per family:
//! [`locks`] (lock, unlock, and the authorization every chunk operation
//! passes), [`reserve`] (reserving a chunk id and space; deleting a chunk),
//! [`write`] (local write plus the forward along the chain), [`read`]
//! (reads and chunk info) and [`copy`] (a node-driven copy to another node).
//!
//! Every operation checks that the chunk belongs to this shard and that the
//! request is authorized before it touches the store, and answers with a
//! typed status ([`OpError`]), never a panic.

mod copy;
mod locks;
mod read;
mod reserve;
mod write;

use crate::chunk_store::{StoreError, WriteBuf};
use crate::conn::{Outgoing, Tx};
use crate::shard::Shard;
use crate::write_order::Ticket;
use ringfs_ops::capability::{self, Claims, Rights};
use ringfs_schema::frame::{Header, LockMode, Op, Status};
use ringfs_schema::ids::ChunkId;

pub(crate) use copy::{send_replace, Whole};
pub(crate) use locks::LockWaiter;

/// Why an operation failed: a status and a message for the error frame.
pub(crate) struct OpError(pub(crate) Status, pub(crate) String);

/// The error frame of `e` for request `h`; a stale version also says the
/// replica's current version.
pub(crate) fn store_error_frame(h: &Header, e: StoreError) -> Header {
    let current = match &e {
        StoreError::StaleVersion { current, .. } => Some(*current),
        _ => None,
    };
    let OpError(status, msg) = e.into();
    let mut r = Header::error_to(h, status, msg);
    if let Some(v) = current {
        r.version = v;
    }
    r
}

impl From<StoreError> for OpError {
    fn from(e: StoreError) -> Self {
        let status = match &e {
            StoreError::NotFound(_) => Status::NotFound,
            StoreError::Checksum(..) => Status::Checksum,
            StoreError::InvalidArgument(_) => Status::InvalidArgument,
            StoreError::StaleVersion { .. } => Status::StaleVersion,
            StoreError::Fenced(_) => Status::BadToken,
            StoreError::Io { .. }
            | StoreError::Broken(..)
            | StoreError::Setup { .. }
            | StoreError::Unusable(_) => Status::Io,
        };
        OpError(status, e.to_string())
    }
}

impl Shard {
    /// Runs one request; `Ok(None)` when the response was already sent
    /// (a lock that waited sends `wait` first, then its grant). A write
    /// comes with its place among its connection's writes of the chunk
    /// (`write_order.rs`).
    pub(crate) async fn dispatch(
        &self,
        h: &Header,
        wb: Option<WriteBuf>,
        tx: &Tx,
        conn: u64,
        ticket: Option<Ticket>,
    ) -> Result<Option<Outgoing>, OpError> {
        let ok = |header| Ok(Some(Outgoing::header(header)));
        let claims = self.check_capability(h)?;
        match h.op {
            Op::Lock => self.op_lock(h, tx, conn).await,
            Op::Unlock => ok(self.op_unlock(h)?),
            Op::Reserve => ok(self.op_reserve(h, claims, conn)?),
            Op::Write => {
                let wb = match wb {
                    Some(wb) => wb,
                    None => WriteBuf::new(h.offset, 0)?,
                };
                ok(self.op_write(h, wb, conn, ticket).await?)
            }
            Op::Read => self.op_read(h, conn).await.map(Some),
            Op::ChunkInfo => ok(self.op_chunk_info(h)?),
            Op::Digest => ok(self.op_digest(h)?),
            Op::Delete => ok(self.op_delete(h, conn).await?),
            Op::CopyTo => ok(self.op_copy_to(h, conn).await?),
            Op::LockGranted => Err(OpError(
                Status::InvalidArgument,
                "lockGranted is sent by nodes only".into(),
            )),
        }
    }

    /// Checks the request's capability before anything else (so a refused
    /// write is not forwarded either): authentic, unexpired, for its chunk
    /// and with the right its op needs. `unlock` needs none (its token is
    /// the proof: a lock is only granted with a capability). Answers the
    /// capability's claims (`None` for unlock).
    fn check_capability(&self, h: &Header) -> Result<Option<Claims>, OpError> {
        let need = match h.op {
            Op::Unlock | Op::LockGranted => return Ok(None),
            Op::Reserve if h.chunk_id == ChunkId::default() => Rights::RESERVE,
            Op::Lock if h.lock_mode != LockMode::Write => Rights::READ,
            Op::Read | Op::ChunkInfo | Op::Digest | Op::CopyTo => Rights::READ,
            Op::Lock | Op::Reserve | Op::Write | Op::Delete => Rights::WRITE,
        };
        let caps = &self.cfg.capabilities;
        caps.verify(
            h.capability.as_ref(),
            h.chunk_id.to_bytes(),
            need,
            capability::now_ms(),
        )
        .map(Some)
        .map_err(|e| {
            self.cfg.metrics.capability_refused();
            let status = if e.is_expiry() {
                Status::CapabilityExpired
            } else {
                Status::Denied
            };
            OpError(status, format!("chunk {}: {e}", h.chunk_id))
        })
    }

    /// Refuses a chunk that another shard of this node owns.
    fn check_shard(&self, chunk: ChunkId) -> Result<(), OpError> {
        let owner = chunk.shard(self.cfg.shards);
        if owner != self.cfg.index {
            return Err(OpError(
                Status::WrongShard,
                format!(
                    "chunk {chunk} belongs to shard {owner}, this is shard {}",
                    self.cfg.index
                ),
            ));
        }
        Ok(())
    }
}
