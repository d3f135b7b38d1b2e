//! A chunk's life on a shard: `reserve` (mint or accept a chunk id, check
//! the space it will take, and hand out the write lock its writer needs)
//! and `delete`, fenced by version: a replica newer than the version the
//! delete names is kept.
//!
//! A reservation counts the bytes the chunk will occupy on disk (header and
//! data in 4 KiB units, as `used` counts them) and lapses with its lock, so
//! an abandoned reservation frees its space by itself.

use super::OpError;
use crate::chunk_file::MAX_CHUNK_SIZE;
use crate::lock_table::{Acquire, Mode, Owner};
use crate::reservations::Reservation;
use crate::shard::{on_disk, Shard};
use ringfs_ops::capability::{Claims, Rights};
use ringfs_schema::frame::{Header, LockMode, Status};
use ringfs_schema::ids::ChunkId;
use std::sync::atomic::Ordering;
use std::time::Instant;

impl Shard {
    /// `claims`: the request's capability (checked by the dispatch): a
    /// reserve capability of a write lease to mint an id, whose new chunk
    /// is answered with a read+write capability bound to the same lease
    /// and expiry; or a write capability of the id to reserve.
    pub(super) fn op_reserve(
        &self,
        h: &Header,
        claims: Option<Claims>,
        conn: u64,
    ) -> Result<Header, OpError> {
        let bytes = h.reserve_bytes;
        if bytes == 0 || bytes > MAX_CHUNK_SIZE {
            return Err(OpError(
                Status::InvalidArgument,
                format!("reserveBytes {bytes} must be in 1..={}", MAX_CHUNK_SIZE),
            ));
        }
        let id = self.id_to_reserve(h)?;
        let free = self.free_bytes();
        let outstanding = self.capacity().reserved;
        // What the chunk will occupy on disk: its header (two slots with
        // the CRC tables) and its data in 4 KiB units, as `used` counts it.
        let disk_bytes = on_disk(bytes);
        self.reservations
            .borrow()
            .check(disk_bytes, free, outstanding)
            .map_err(|e| match e {
                crate::reservations::ReserveError::TooMany(_) => {
                    OpError(Status::Unavailable, e.to_string())
                }
                _ => {
                    self.cfg.metrics.reservation_refused();
                    OpError(Status::NoSpace, e.to_string())
                }
            })?;
        let id = match id {
            Some(id) => id,
            None => self.mint()?,
        };
        let lease = self.lease(h.lease_ms);
        let g = match self.locks.borrow_mut().acquire(
            id,
            h.client_id,
            Mode::Write,
            lease,
            Instant::now(),
            None,
            // The reservation goes with the connection that made it.
            Owner {
                conn,
                explicit: true,
            },
        ) {
            Acquire::Granted(g) => g,
            Acquire::Full => {
                return Err(OpError(
                    Status::Unavailable,
                    "the shard's lock table is full".into(),
                ))
            }
            _ => {
                return Err(OpError(
                    Status::Internal,
                    format!("fresh chunk {id} is locked"),
                ))
            }
        };
        self.reservations.borrow_mut().insert(
            id,
            Reservation {
                bytes: disk_bytes,
                client: h.client_id,
                generation: g.generation,
            },
        );
        let mut r = Header::response_to(h, Status::Ok);
        r.chunk_id = id;
        r.token = self.key.issue(id, h.client_id, g.generation);
        r.lock_mode = LockMode::Write;
        r.lease_ms = lease.as_millis() as u32;
        r.reserve_bytes = bytes;
        if h.chunk_id == ChunkId::default() {
            let claims = claims.ok_or_else(|| {
                OpError(
                    Status::Internal,
                    "reserve without a checked capability".into(),
                )
            })?;
            r.capability = Some(self.cfg.capabilities.issue(
                Rights::READ_WRITE,
                id.to_bytes(),
                claims.lease,
                claims.expires_ms,
            ));
        }
        Ok(r)
    }

    /// The id a reservation asks for: `None` for a fresh one (this node
    /// must have joined, to have a node id), or a replica's reservation of
    /// an id minted elsewhere, which must be this shard's and unused.
    fn id_to_reserve(&self, h: &Header) -> Result<Option<ChunkId>, OpError> {
        if h.chunk_id == ChunkId::default() {
            if self.node_id.load(Ordering::Acquire) == 0 {
                return Err(OpError(
                    Status::Unavailable,
                    "node has not joined the control server yet (no node id to mint chunk ids)"
                        .into(),
                ));
            }
            return Ok(None);
        }
        self.check_shard(h.chunk_id)?;
        if self.store.contains(h.chunk_id) {
            return Err(OpError(
                Status::Exists,
                format!("chunk {} already exists", h.chunk_id),
            ));
        }
        if self.reservations.borrow().get(h.chunk_id).is_some()
            || self.locks.borrow().is_busy(h.chunk_id)
        {
            return Err(OpError(
                Status::Busy,
                format!("chunk {} is already reserved or locked", h.chunk_id),
            ));
        }
        Ok(Some(h.chunk_id))
    }

    /// A chunk id never minted before, owned by this shard.
    fn mint(&self) -> Result<ChunkId, OpError> {
        self.minter
            .borrow_mut()
            .mint(
                self.node_id.load(Ordering::Acquire),
                self.cfg.index,
                self.cfg.shards,
            )
            .map_err(|e| OpError(Status::Io, e.to_string()))
    }

    /// Deletes the chunk unless its version is above the request's.
    pub(super) async fn op_delete(&self, h: &Header, conn: u64) -> Result<Header, OpError> {
        self.check_shard(h.chunk_id)?;
        let auth = self.authorize(h, Mode::Write, conn).await?;
        let r = self.store.delete(h.chunk_id, h.version).await;
        self.end_auth(h.chunk_id, auth);
        if let Err(e) = r {
            return Ok(super::store_error_frame(h, e));
        }
        self.bad.borrow_mut().remove(&h.chunk_id);
        Ok(Header::response_to(h, Status::Ok))
    }
}
