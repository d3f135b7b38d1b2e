//! Commands the control server sends a shard through the control link:
//! re-replicating a chunk to another node and deleting a chunk (garbage
//! collection, replicas dropped from a record).
//!
//! Both are version-fenced. A delete names the newest version it may
//! delete: a replica a write made newer since the control server looked is
//! kept. A copy names the exact version the source must hold and the
//! version the target holds ((0, 0): none): the source reads its replica
//! under a read lock (every 4 KiB block's CRC checked), reserves the chunk
//! on the target (or locks the target's stale copy), and sends the whole
//! chunk as a `replace` write with its stored CRCs, which the target
//! verifies, writes aside and swaps in only if its replica is still at the
//! version named (copy-then-swap: a failed copy leaves the target's old
//! replica as it was, and never replaces a newer one). It then reads the
//! copy back from the target, whose read checks its own stored CRCs, and
//! compares every block's CRC with the source's. Only then does it report
//! success, and only then does the control server change the record.
//!
//! Sizes in bytes; durations as `Duration`.

use crate::lock_table::{Grant, Mode, Owner};
use crate::ops::send_replace;
use crate::peer::Peer;
use crate::shard::Shard;
use ringfs_ops::capability::{self, Lease, Rights};
use ringfs_schema::frame::{Header, LockMode, Op, Status, Token, CAPABILITY_LEN};
use ringfs_schema::ids::ChunkId;
use ringfs_schema::Version;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Lease of the lock a command holds on its own node's chunk (released as
/// soon as the chunk is read or deleted).
const COMMAND_LEASE: Duration = Duration::from_secs(30);
/// Lease of the reservation (or lock) on the target, renewed after the
/// write: short, so that one left by a source that died mid-copy blocks
/// the next attempt only briefly.
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

    /// Takes a command's lock on chunk `id` (waiting behind clients' locks
    /// up to [`LOCK_WAIT`]): the command's client id and the grant.
    async fn command_lock(&self, id: ChunkId, mode: Mode) -> Result<(u64, Grant), String> {
        let client = self.command_client();
        let r = self.request_lock(id, client, mode, COMMAND_LEASE, LOCK_WAIT, Owner::NONE);
        let g = self.granted(r).await.map_err(|e| e.1)?;
        Ok((client, g))
    }

    /// This node's own capability for chunk `id` on a copy's target: it
    /// holds the cluster secret like the control server, and the control
    /// server asked for the copy over the authenticated control link.
    fn own_capability(&self, id: ChunkId) -> Option<[u8; CAPABILITY_LEN]> {
        Some(self.cfg.capabilities.issue(
            Rights::READ_WRITE,
            id.to_bytes(),
            Lease::NONE,
            capability::now_ms() + COPY_TIMEOUT.as_millis() as u64,
        ))
    }

    /// Deletes chunk `id` under its write lock unless it is newer than
    /// `newest`; a missing chunk is not an error (the command is
    /// idempotent).
    pub async fn delete_command(&self, id: ChunkId, newest: Version) -> Result<(), String> {
        let (client, g) = self.command_lock(id, Mode::Write).await?;
        let r = self.store.delete(id, newest).await;
        let _ = self.release(id, client, g.generation);
        match r {
            Ok(()) | Err(crate::chunk_store::StoreError::NotFound(_)) => {
                self.bad.borrow_mut().remove(&id);
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Copies this shard's replica of `id`, which must be at exactly
    /// `version`, to the target shard at `addr`, where the chunk is at
    /// `target_version` ((0, 0): absent); returns the (version, length)
    /// verified there.
    pub async fn copy_command(
        &self,
        id: ChunkId,
        version: Version,
        addr: &str,
        target_version: Version,
    ) -> Result<(Version, u64), String> {
        let copy = async { Ok(self.copy(id, version, addr, target_version).await) };
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
        version: Version,
        addr: &str,
        target_version: Version,
    ) -> Result<(Version, u64), String> {
        let (client, g) = self.command_lock(id, Mode::Read).await?;
        let fence = || {
            self.locks
                .borrow()
                .validate(
                    id,
                    client,
                    g.generation,
                    Mode::Read,
                    std::time::Instant::now(),
                )
                .map(drop)
                .map_err(|e| crate::chunk_store::StoreError::Fenced(e.to_string()))
        };
        let whole = self.read_whole(id, version, &fence).await;
        let _ = self.release(id, client, g.generation);
        let whole = whole.map_err(|e| format!("source replica: {e}"))?;
        crate::failpoint::delay("replicate::before_send").await;
        let peer = self.peers.get(addr).await.map_err(|e| e.to_string())?;
        let capability = self.own_capability(id);
        let call = |mut h: Header| {
            let peer = peer.clone();
            h.capability = capability;
            async move {
                peer.call(h, &[])
                    .await
                    .map(|(r, _)| r)
                    .map_err(|e| e.to_string())
            }
        };
        // The target's stale or damaged copy: locked for the replace.
        let lock_target = || async {
            let mut h = Header::request(0, Op::Lock);
            h.chunk_id = id;
            h.client_id = client;
            h.lock_mode = LockMode::Write;
            h.lease_ms = TARGET_LEASE.as_millis() as u32;
            h.timeout_ms = LOCK_WAIT.as_millis() as u32;
            let r = call(h).await?;
            if r.status != Status::Ok {
                return Err(format!("{addr}: lock: {:?} {}", r.status, r.message));
            }
            Ok(r.token)
        };
        let token = if target_version == Version::NONE {
            let mut h = Header::request(0, Op::Reserve);
            h.chunk_id = id;
            h.client_id = client;
            h.reserve_bytes = whole.info.length.max(4096);
            h.lease_ms = TARGET_LEASE.as_millis() as u32;
            let r = call(h).await?;
            match r.status {
                Status::Ok => r.token,
                // An empty chunk at (0, 0): left by a first write that never
                // became durable, or that replay dropped. A stale copy like
                // any other; the replace is fenced on (0, 0) all the same.
                Status::Exists => lock_target().await?,
                _ => return Err(format!("{addr}: reserve: {:?} {}", r.status, r.message)),
            }
        } else {
            lock_target().await?
        };
        let result = self
            .replace_and_verify(&peer, id, &token, target_version, &whole, addr)
            .await;
        let mut h = Header::request(0, Op::Unlock);
        h.chunk_id = id;
        h.token = token;
        let _ = call(h).await;
        result.map(|()| (whole.info.version, whole.info.length))
    }

    async fn replace_and_verify(
        &self,
        peer: &Peer,
        id: ChunkId,
        token: &Token,
        target_version: Version,
        whole: &crate::ops::Whole,
        addr: &str,
    ) -> Result<(), String> {
        let (version, length) = (whole.info.version, whole.info.length);
        let capability = self.own_capability(id);
        let r = send_replace(peer, id, token, capability, target_version, whole)
            .await
            .map_err(|e| e.to_string())?;
        if r.status != Status::Ok || r.version != version || r.chunk_length != length {
            return Err(format!(
                "{addr}: replace: {:?} {} (version {}, length {})",
                r.status, r.message, r.version, r.chunk_length
            ));
        }
        // Renew the lock for the read-back.
        let mut h = Header::request(0, Op::Lock);
        h.chunk_id = id;
        h.token = token.clone();
        h.lock_mode = LockMode::Write;
        h.lease_ms = TARGET_LEASE.as_millis() as u32;
        h.capability = capability;
        let (r, _) = peer.call(h, &[]).await.map_err(|e| e.to_string())?;
        if r.status != Status::Ok {
            return Err(format!(
                "{addr}: renewing the lock: {:?} {}",
                r.status, r.message
            ));
        }
        let mut h = Header::request(0, Op::Read);
        h.chunk_id = id;
        h.length = length as u32;
        h.token = token.clone();
        h.capability = capability;
        let (r, back) = peer.call(h, &[]).await.map_err(|e| e.to_string())?;
        if r.status != Status::Ok {
            return Err(format!("{addr}: read-back: {:?} {}", r.status, r.message));
        }
        let same = r.version == version
            && r.offset == 0
            && back.len() as u64 == length
            && r.crcs == whole.crcs
            && ringfs_schema::crc::verify_pieces(0, &back, &r.crcs).is_ok();
        if !same {
            return Err(format!(
                "{addr}: read-back of chunk {id} differs from the source (version {})",
                r.version
            ));
        }
        Ok(())
    }
}
