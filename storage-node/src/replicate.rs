//! Commands the control server sends a shard through the control link:
//! re-replicating a chunk to another node and deleting a chunk (garbage
//! collection).
//!
//! A copy is node-to-node and verified end to end: the source reads its
//! replica under a read lock (every 4 KiB block's CRC checked), reserves the
//! chunk id on the target (deleting a stale or corrupt copy there first),
//! writes the whole chunk at the same version (the target answers only once
//! it is durable), then reads it back from the target, whose read checks its
//! own stored CRCs, and compares a CRC32C of the whole chunk with what it
//! sent. Only then does it report success, and only then does the control
//! server add the target to the chunk's record.
//!
//! Sizes in bytes; durations as `Duration`.

use crate::lock_table::Mode;
use crate::shard::Shard;
use ringfs_schema::frame::{Header, LockMode, Op, Status, Token};
use ringfs_schema::ids::ChunkId;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Lease of the lock a command holds on its own node's chunk (released as
/// soon as the chunk is read or deleted).
const COMMAND_LEASE: Duration = Duration::from_secs(30);
/// Lease of the reservation on the target, renewed after the write: short,
/// so that a reservation left by a source that died mid-copy blocks the
/// next attempt only briefly.
const TARGET_LEASE: Duration = Duration::from_secs(15);
/// How long a command waits for a chunk lock held by a client.
const LOCK_WAIT: Duration = Duration::from_secs(30);
/// Longest a whole copy may take (below the control server's 120 s command
/// timeout): a target that stops answering (a partition leaves TCP hanging)
/// must not hold the command, or the source's connection, forever.
const COPY_TIMEOUT: Duration = Duration::from_secs(100);

impl Shard {
    /// The lock-table client id of this node's own commands.
    fn command_client(&self) -> u64 {
        0xFFFF_0000_0000_0000 | self.node_id.load(Ordering::Acquire)
    }

    /// Deletes chunk `id` under its write lock; a missing chunk is not an
    /// error (the command is idempotent).
    pub async fn delete_command(&self, id: ChunkId) -> Result<(), String> {
        let client = self.command_client();
        let g = self
            .acquire(id, client, Mode::Write, COMMAND_LEASE, LOCK_WAIT)
            .await
            .map_err(|e| e.1)?;
        let r = self.store.delete(id).await;
        let _ = self.release(id, client, g.generation);
        match r {
            Ok(()) | Err(crate::chunk_store::StoreError::NotFound(_)) => {
                self.bad.borrow_mut().remove(&id);
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Copies this shard's replica of `id`, which must be at `version` or
    /// newer, to the target shard at `addr`; returns the (version, length)
    /// verified there.
    pub async fn copy_command(
        &self,
        id: ChunkId,
        version: u64,
        addr: &str,
        replace: bool,
    ) -> Result<(u64, u64), String> {
        let copy = async { Ok(self.copy(id, version, addr, replace).await) };
        glommio::timer::timeout(COPY_TIMEOUT, copy)
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "copy to {addr} did not finish within {COPY_TIMEOUT:?}"
                ))
            })
    }

    async fn copy(
        &self,
        id: ChunkId,
        version: u64,
        addr: &str,
        replace: bool,
    ) -> Result<(u64, u64), String> {
        let client = self.command_client();
        let g = self
            .acquire(id, client, Mode::Read, COMMAND_LEASE, LOCK_WAIT)
            .await
            .map_err(|e| e.1)?;
        let local = async {
            let info = self.store.info(id).map_err(|e| e.to_string())?;
            // Newer is fine: an overwrite reached this replica but was not
            // committed; the record's version is what must be covered.
            if info.version < version {
                return Err(format!(
                    "source replica of chunk {id} is at version {}, older than the record's {version}",
                    info.version
                ));
            }
            let (data, _) = self.store.read(id, 0, info.length).await.map_err(|e| {
                if matches!(e, crate::chunk_store::StoreError::Checksum(..)) {
                    self.bad.borrow_mut().insert(id);
                }
                e.to_string()
            })?;
            Ok((info, data))
        }
        .await;
        let _ = self.release(id, client, g.generation);
        let (info, data) = local?;
        let peer = self.peers.get(addr).await.map_err(|e| e.to_string())?;
        let call = |h: Header, payload: &[u8]| {
            let peer = peer.clone();
            let payload = payload.to_vec();
            async move {
                let (r, p) = peer.call(h, &payload).await.map_err(|e| e.to_string())?;
                Ok::<_, String>((r, p))
            }
        };
        let delete = || {
            let mut h = Header::request(0, Op::Delete);
            h.chunk_id = id;
            h.client_id = client;
            h.implicit_lock = LockMode::Write;
            h.timeout_ms = LOCK_WAIT.as_millis() as u32;
            h
        };
        let reserve = || {
            let mut h = Header::request(0, Op::Reserve);
            h.chunk_id = id;
            h.client_id = client;
            h.reserve_bytes = info.length.max(4096);
            h.lease_ms = TARGET_LEASE.as_millis() as u32;
            h
        };
        if replace {
            let (r, _) = call(delete(), &[]).await?;
            if !matches!(r.status, Status::Ok | Status::NotFound) {
                return Err(format!(
                    "{addr}: delete of the old copy: {:?} {}",
                    r.status, r.message
                ));
            }
        }
        let (mut r, _) = call(reserve(), &[]).await?;
        if matches!(r.status, Status::Exists) {
            // A copy left by an earlier attempt: replace it.
            call(delete(), &[]).await?;
            r = call(reserve(), &[]).await?.0;
        }
        if r.status != Status::Ok {
            return Err(format!("{addr}: reserve: {:?} {}", r.status, r.message));
        }
        let token = r.token.clone();
        let result = self
            .write_and_verify(&peer, id, info.version, &token, &data, addr)
            .await;
        let mut h = Header::request(0, Op::Unlock);
        h.chunk_id = id;
        h.token = token;
        let _ = call(h, &[]).await;
        result.map(|()| (info.version, info.length))
    }

    async fn write_and_verify(
        &self,
        peer: &crate::peer::Peer,
        id: ChunkId,
        version: u64,
        token: &Token,
        data: &[u8],
        addr: &str,
    ) -> Result<(), String> {
        let mut h = Header::request(0, Op::Write);
        h.chunk_id = id;
        h.version = version;
        h.token = token.clone();
        let (r, _) = peer.call(h, data).await.map_err(|e| e.to_string())?;
        if r.status != Status::Ok || r.version != version || r.chunk_length != data.len() as u64 {
            return Err(format!(
                "{addr}: write: {:?} {} (version {}, length {})",
                r.status, r.message, r.version, r.chunk_length
            ));
        }
        // Renew the reservation's lock for the read-back.
        let mut h = Header::request(0, Op::Lock);
        h.chunk_id = id;
        h.token = token.clone();
        h.lock_mode = LockMode::Write;
        h.lease_ms = TARGET_LEASE.as_millis() as u32;
        let (r, _) = peer.call(h, &[]).await.map_err(|e| e.to_string())?;
        if r.status != Status::Ok {
            return Err(format!(
                "{addr}: renewing the lock: {:?} {}",
                r.status, r.message
            ));
        }
        let mut h = Header::request(0, Op::Read);
        h.chunk_id = id;
        h.length = data.len() as u32;
        h.token = token.clone();
        let (r, back) = peer.call(h, &[]).await.map_err(|e| e.to_string())?;
        if r.status != Status::Ok {
            return Err(format!("{addr}: read-back: {:?} {}", r.status, r.message));
        }
        if r.version != version || crc32c::crc32c(&back) != crc32c::crc32c(data) {
            return Err(format!(
                "{addr}: read-back of chunk {id} differs from the source (version {})",
                r.version
            ));
        }
        Ok(())
    }
}
