//! Chunk I/O: the replica protocol with the storage nodes. Decisions
//! (replica order, quorum, which failures move on) are the pure functions
//! of [`crate::replica_policy`]; the write path is [`crate::chunk_write`],
//! the read path [`crate::chunk_read`]; this module holds what both use:
//! the connections, and the single requests to one replica (reserve, lock,
//! unlock, delete, chunk info, digest, copy).
//!
//! Every chunk version is an `(epoch, seq)` pair ([`Version`]); a write or
//! copy names the version it creates and the version the replica must hold
//! (compare-and-set), and carries the CRC32C of its payload per 4 KiB block
//! piece; a read returns whole blocks with their stored CRCs, which are
//! checked here. See "Replica integrity" in `docs/architecture.md`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use ringfs_schema::frame::{Header, Hop, LockMode, Op, Status, Token};
use ringfs_schema::{ChunkId, Version};

use crate::client::ClientOptions;
use crate::cluster::Cluster;
use crate::control::{Capability, ChunkRecord};
use crate::error::{Error, Result};
use crate::node_conn::{status_error, NodeConn, NodePool};
use ringfs_ops::capability::Rights;

/// Chunks of one call in flight at once (across chunks and nodes).
pub(crate) const PIPELINE: usize = 4;

/// What chunk I/O needs of a file.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Layout {
    /// Bytes per chunk.
    pub chunk_size: u64,
    /// Replicas a new chunk gets (at most).
    pub replication: u8,
    /// Durable replicas a write needs.
    pub write_quorum: u8,
}

impl Layout {
    /// The write quorum, at least 1.
    pub(crate) fn quorum(&self) -> usize {
        self.write_quorum.max(1) as usize
    }
}

/// A replica holding (or about to hold) a chunk, with our write lock on it.
pub(crate) struct Locked {
    pub(crate) node_id: u64,
    pub(crate) addr: String,
    pub(crate) conn: Rc<NodeConn>,
    pub(crate) token: Token,
}

/// A replica's answer to `digest`: what `fsck --verify` compares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaDigest {
    /// The version the replica holds.
    pub version: Version,
    /// Its length in bytes.
    pub length: u64,
    /// BLAKE3 of its length and CRC table (32 bytes).
    pub digest: Vec<u8>,
}

impl std::fmt::Display for ReplicaDigest {
    /// `version V length L digest XXXXXXXXXXXXXXXX` (the digest's first 8
    /// bytes in hex).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "version {} length {} digest ", self.version, self.length)?;
        self.digest
            .iter()
            .take(8)
            .try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// The data-plane side of a client: connections to the storage nodes and
/// the replica protocol over them.
pub(crate) struct ChunkIo {
    pub(crate) cluster: Rc<Cluster>,
    pub(crate) pool: NodePool,
    /// Who this client's locks are for.
    pub(crate) client_id: u64,
    pub(crate) options: ClientOptions,
    /// Rotates the shard a new chunk is minted on.
    pub(crate) next_shard: Cell<usize>,
    pub(crate) repairs: Cell<u64>,
    /// The capability of each chunk this client was handed a record of
    /// (or minted), which every request for the chunk carries.
    caps: RefCell<HashMap<ChunkId, Capability>>,
}

/// Capabilities kept at most (about 100 bytes each); past it the expired
/// ones are dropped, and if that is not enough, all (the records of the
/// next call bring theirs again).
const MAX_CAPS: usize = 1 << 16;

pub(crate) fn chunk_id(id: u128) -> ChunkId {
    ChunkId::new((id >> 64) as u64, id as u64)
}

pub(crate) fn chunk_u128(id: ChunkId) -> u128 {
    ((id.hi as u128) << 64) | id.lo as u128
}

pub(crate) fn ms(d: std::time::Duration) -> u32 {
    d.as_millis().min(u32::MAX as u128) as u32
}

/// A client id for lock ownership: unique enough across processes (pid and
/// clock mixed), never zero.
fn new_client_id() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    ringfs_schema::ids::mix64(nanos ^ ((std::process::id() as u64) << 40)) | 1
}

impl ChunkIo {
    pub(crate) fn new(cluster: Rc<Cluster>, options: ClientOptions) -> Self {
        Self {
            pool: NodePool::new(cluster.tls.clone()),
            cluster,
            client_id: new_client_id(),
            options,
            next_shard: Cell::new(0),
            repairs: Cell::new(0),
            caps: RefCell::default(),
        }
    }

    /// Keeps the capabilities of `records` for the requests about their
    /// chunks.
    pub(crate) fn remember<'a>(&self, records: impl IntoIterator<Item = &'a ChunkRecord>) {
        for r in records {
            if let Some(c) = r.capability {
                self.remember_one(chunk_id(r.chunk_id), c);
            }
        }
    }

    /// Keeps `cap` for chunk `id`, unless the one kept grants more (a write
    /// handle's, not to be replaced by a read handle's) and is still good.
    pub(crate) fn remember_one(&self, id: ChunkId, cap: Capability) {
        let mut caps = self.caps.borrow_mut();
        let now = ringfs_ops::capability::now_ms();
        let margin = crate::control::CAPABILITY_MARGIN.as_millis() as u64;
        if let Some(old) = caps.get(&id) {
            let fewer_rights = !Rights::from_byte(cap.0[4]).contains(Rights::from_byte(old.0[4]));
            if fewer_rights && old.expires_ms() > now + margin {
                return;
            }
        }
        if caps.len() >= MAX_CAPS && !caps.contains_key(&id) {
            caps.retain(|_, c| c.expires_ms() > now);
            if caps.len() >= MAX_CAPS {
                caps.clear();
            }
        }
        caps.insert(id, cap);
    }

    /// The capability kept for chunk `id`.
    pub(crate) fn capability(&self, id: ChunkId) -> Option<Capability> {
        self.caps.borrow().get(&id).copied()
    }

    /// Whether the capability kept for chunk `id` grants write.
    pub(crate) fn may_write(&self, id: ChunkId) -> bool {
        self.capability(id)
            .is_some_and(|c| Rights::from_byte(c.0[4]).contains(Rights::WRITE))
    }

    /// A request for chunk `id` carrying its capability.
    pub(crate) fn request(&self, op: Op, id: ChunkId) -> Header {
        let mut h = Header::request(0, op);
        h.chunk_id = id;
        h.capability = self.capability(id).map(|c| c.0);
        h
    }

    /// Replicas this client repaired after checksum failures.
    pub(crate) fn repairs(&self) -> u64 {
        self.repairs.get()
    }

    /// The shard endpoint of `node_id` owning chunk `id`, from the map.
    pub(crate) fn endpoint(&self, id: ChunkId, node_id: u64) -> Result<String> {
        let node = self
            .cluster
            .node(node_id)
            .ok_or_else(|| Error::unavailable(format!("node {node_id} is not in the map")))?;
        node.shards
            .get(id.shard(node.shards.len()))
            .cloned()
            .ok_or_else(|| Error::unavailable(format!("node {node_id} has no shards")))
    }

    /// Whether the map calls `node_id` up.
    pub(crate) fn is_up(&self, node_id: u64) -> bool {
        self.cluster.node(node_id).is_some_and(|n| n.up)
    }

    /// Sends `h` to `addr` (with `payload`) and returns the answer, whatever
    /// its status; `wait`: the request may queue for a lock that long.
    pub(crate) async fn call(
        &self,
        addr: &str,
        h: Header,
        payload: &[u8],
        wait: bool,
    ) -> Result<(Header, Vec<u8>)> {
        let conn = self.pool.get(addr).await?;
        let timeout = if wait {
            self.options.request_timeout + self.options.lock_wait
        } else {
            self.options.request_timeout
        };
        conn.call(h, payload, timeout).await
    }

    /// Like [`ChunkIo::call`], an answer other than `ok` is the error.
    async fn call_ok(&self, addr: &str, h: Header, wait: bool) -> Result<Header> {
        let (r, _) = self.call(addr, h, &[], wait).await?;
        if r.status != Status::Ok {
            return Err(status_error(&r, addr));
        }
        Ok(r)
    }

    /// Reserves `bytes` for chunk `id` on `addr` (a fresh id there if `id`
    /// is zero, with `mint`, the lease's reserve capability); the answer
    /// holds the id and the reservation's write token. A minted chunk's
    /// capability is kept.
    pub(crate) async fn reserve(
        &self,
        addr: &str,
        id: ChunkId,
        bytes: u64,
        mint: Option<Capability>,
    ) -> Result<(Rc<NodeConn>, Header)> {
        let conn = self.pool.get(addr).await?;
        let mut h = self.request(Op::Reserve, id);
        if id == ChunkId::default() {
            h.capability = mint.map(|c| c.0);
        }
        h.client_id = self.client_id;
        h.reserve_bytes = bytes;
        let (r, _) = conn.call(h, &[], self.options.request_timeout).await?;
        if r.status != Status::Ok {
            return Err(status_error(&r, addr));
        }
        if id == ChunkId::default() {
            let cap = r.capability.map(Capability).ok_or_else(|| {
                Error::internal(format!(
                    "{addr} minted chunk {} without a capability",
                    r.chunk_id
                ))
            })?;
            self.remember_one(r.chunk_id, cap);
        }
        Ok((conn, r))
    }

    /// Takes the write lock on `node_id`'s replica of `id`.
    pub(crate) async fn lock_replica(&self, id: ChunkId, node_id: u64) -> Result<Locked> {
        let addr = self.endpoint(id, node_id)?;
        let conn = self.pool.get(&addr).await?;
        let mut h = self.request(Op::Lock, id);
        h.client_id = self.client_id;
        h.lock_mode = LockMode::Write;
        h.timeout_ms = ms(self.options.lock_wait);
        let (r, _) = conn
            .call(
                h,
                &[],
                self.options.lock_wait + self.options.request_timeout,
            )
            .await?;
        if r.status != Status::Ok {
            return Err(status_error(&r, &addr));
        }
        Ok(Locked {
            node_id,
            addr,
            conn,
            token: r.token,
        })
    }

    /// A connection to `node_id`'s shard of `id`, for writes that take an
    /// implicit write lock on every hop (no token: the lock lives as long
    /// as the write, so no lock or unlock round trip).
    pub(crate) async fn replica_conn(&self, id: ChunkId, node_id: u64) -> Result<Locked> {
        let addr = self.endpoint(id, node_id)?;
        let conn = self.pool.get(&addr).await?;
        Ok(Locked {
            node_id,
            addr,
            conn,
            token: Token::default(),
        })
    }

    /// Releases our locks on `id` (best effort: a lost unlock lapses with
    /// its lease).
    pub(crate) async fn unlock_all(&self, id: ChunkId, locked: &[Locked]) {
        let timeout = self.options.request_timeout;
        futures::future::join_all(locked.iter().map(|l| {
            let mut h = Header::request(0, Op::Unlock);
            h.chunk_id = id;
            h.token = l.token.clone();
            async move {
                let _ = l.conn.call(h, &[], timeout).await;
            }
        }))
        .await;
    }

    /// Best-effort delete of a chunk this writer created and will not
    /// commit, on the replicas we hold write locks on, at `version` or
    /// older. (One that cannot be deleted stays on its node as an orphan,
    /// which garbage collection deletes once this lease ended.)
    pub(crate) async fn delete_all(&self, id: ChunkId, locked: &[Locked], version: Version) {
        let timeout = self.options.request_timeout;
        futures::future::join_all(locked.iter().map(|l| {
            let mut h = self.request(Op::Delete, id);
            h.token = l.token.clone();
            h.version = version;
            async move {
                let _ = l.conn.call(h, &[], timeout).await;
            }
        }))
        .await;
    }

    /// The (version, length) `node_id` holds of `id`; (0, 0) when it holds
    /// only a reservation. `NotFound` when it holds nothing.
    pub(crate) async fn info(&self, id: ChunkId, node_id: u64) -> Result<(Version, u64)> {
        let addr = self.endpoint(id, node_id)?;
        let h = self.request(Op::ChunkInfo, id);
        let r = self.call_ok(&addr, h, false).await?;
        Ok((r.version, r.chunk_length))
    }

    /// `node_id`'s version, length and digest of its replica of `id`.
    pub(crate) async fn digest(&self, id: ChunkId, node_id: u64) -> Result<ReplicaDigest> {
        let addr = self.endpoint(id, node_id)?;
        let h = self.request(Op::Digest, id);
        let r = self.call_ok(&addr, h, false).await?;
        Ok(ReplicaDigest {
            version: r.version,
            length: r.chunk_length,
            digest: r.digest,
        })
    }

    /// Makes `target`'s replica of `id` a copy of `source`'s, which must be
    /// at exactly `version`: the target is locked (its replica, at
    /// `target_version`) or reserved (`target_version` (0, 0): it has
    /// none; `bytes` reserved), and the source copies the whole chunk into
    /// it, which the target writes aside and swaps in only if it still is
    /// at `target_version` (copy-then-swap: a failure anywhere leaves the
    /// target's old replica as it was).
    pub(crate) async fn copy_replica(
        &self,
        id: ChunkId,
        source: u64,
        version: Version,
        target: u64,
        target_version: Version,
        bytes: u64,
    ) -> Result<()> {
        let target_lock = if target_version == Version::NONE {
            let addr = self.endpoint(id, target)?;
            let (conn, r) = self.reserve(&addr, id, bytes, None).await?;
            Locked {
                node_id: target,
                addr,
                conn,
                token: r.token,
            }
        } else {
            self.lock_replica(id, target).await?
        };
        let source_addr = self.endpoint(id, source)?;
        let mut h = self.request(Op::CopyTo, id);
        h.client_id = self.client_id;
        h.implicit_lock = LockMode::Read;
        h.timeout_ms = ms(self.options.lock_wait);
        h.version = version;
        h.expected = target_version;
        h.chain = vec![Hop {
            node_id: target,
            address: target_lock.addr.clone(),
            token: target_lock.token.clone(),
        }];
        let result = self.call_ok(&source_addr, h, true).await;
        self.unlock_all(id, std::slice::from_ref(&target_lock))
            .await;
        let r = result?;
        if r.version != version {
            return Err(Error::internal(format!(
                "chunk {id}: the copy on node {target} is at version {}, not {version}",
                r.version
            )));
        }
        Ok(())
    }
}
