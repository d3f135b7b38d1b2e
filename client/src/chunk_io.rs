//! Chunk I/O: the replica protocol with the storage nodes, for one call's
//! range of a file. Decisions (replica order, quorum, which failures move
//! on) are the pure functions of [`crate::replica_policy`]; this module
//! does the requests around them.
//!
//! - A call is split per chunk; up to [`PIPELINE`] chunks are in flight at
//!   once, across nodes.
//! - **New chunk**: reserved on up to R distinct live nodes, most free space
//!   first ([`crate::placement`]); the primary mints the id, the others
//!   reserve that id; a refusing node is skipped; fewer than W reserved is
//!   an error. The data goes to the primary with the rest as its chain; the
//!   durable replicas (a prefix of the chain) are recorded. A write that
//!   lost a node, timed out or fell short of W is placed once more.
//! - **Existing chunk**: write locks on its live replicas in ascending
//!   node-id order, the chain in the record's order; fewer than W locked is
//!   [`Error::Quorum`]. The nodes bump the version.
//! - **Reads** fail over between replicas; a replica that failed its
//!   checksum is repaired from a good one after the read, and reported.
//!
//! Nothing here commits: the caller commits the returned records (see
//! [`crate::Client`]). A chunk written and not committed is invisible to
//! readers, except an overwrite, whose bytes the nodes hold in place.

use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;

use futures::{StreamExt, TryStreamExt};
use ringfs_schema::frame::{Header, Hop, LockMode, Op, Status, Token};
use ringfs_schema::ChunkId;

use crate::client::ClientOptions;
use crate::cluster::Cluster;
use crate::control::{ChunkRecord, NodeInfo};
use crate::error::{Error, Result};
use crate::node_conn::{status_error, NodeConn, NodePool};
use crate::placement;
use crate::replica_policy::{self as policy, LockFailure};

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

/// A replica holding (or about to hold) a chunk, with our write lock on it.
struct Locked {
    node_id: u64,
    addr: String,
    conn: Rc<NodeConn>,
    token: Token,
}

/// The data-plane side of a client: connections to the storage nodes and
/// the replica protocol over them.
pub(crate) struct ChunkIo {
    cluster: Rc<Cluster>,
    pool: NodePool,
    /// Who this client's locks are for.
    client_id: u64,
    options: ClientOptions,
    /// Rotates the shard a new chunk is minted on.
    next_shard: Cell<usize>,
    repairs: Cell<u64>,
}

fn chunk_id(id: u128) -> ChunkId {
    ChunkId::new((id >> 64) as u64, id as u64)
}

fn chunk_u128(id: ChunkId) -> u128 {
    ((id.hi as u128) << 64) | id.lo as u128
}

fn ms(d: std::time::Duration) -> u32 {
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
            cluster,
            pool: NodePool::default(),
            client_id: new_client_id(),
            options,
            next_shard: Cell::new(0),
            repairs: Cell::new(0),
        }
    }

    /// Replicas this client repaired after checksum failures.
    pub(crate) fn repairs(&self) -> u64 {
        self.repairs.get()
    }

    // ------------------------------------------------------------ writes

    /// Writes `data` at file `offset` into the chunks it covers: into the
    /// existing chunk where `existing` has a record for its index, else a
    /// new chunk. Returns the records to commit, in no particular order.
    /// On failure, chunks already written stay as they are: new ones are
    /// never committed (orphans), overwritten ones hold the new bytes.
    pub(crate) async fn write_range(
        &self,
        layout: &Layout,
        existing: &HashMap<u64, ChunkRecord>,
        offset: u64,
        data: &[u8],
    ) -> Result<Vec<ChunkRecord>> {
        let cs = layout.chunk_size;
        let mut pieces = Vec::new();
        let mut at = offset;
        let mut rest = data;
        while !rest.is_empty() {
            let index = at / cs;
            let in_chunk = at - index * cs;
            let take = ((cs - in_chunk) as usize).min(rest.len());
            let (piece, tail) = rest.split_at(take);
            pieces.push((index, existing.get(&index).cloned(), in_chunk, piece));
            rest = tail;
            at += take as u64;
        }
        futures::stream::iter(
            pieces
                .into_iter()
                .map(|(index, rec, off, piece)| async move {
                    match rec {
                        Some(rec) => self.overwrite_chunk(layout, rec, off, piece).await,
                        None => self.write_new_chunk(layout, index, off, piece).await,
                    }
                }),
        )
        .buffer_unordered(PIPELINE)
        .try_collect()
        .await
    }

    async fn reserve(&self, addr: &str, id: ChunkId, bytes: u64) -> Result<(Rc<NodeConn>, Header)> {
        let conn = self.pool.get(addr).await?;
        let mut h = Header::request(0, Op::Reserve);
        h.client_id = self.client_id;
        h.reserve_bytes = bytes;
        h.chunk_id = id;
        let (r, _) = conn.call(h, &[], self.options.request_timeout).await?;
        if r.status != Status::Ok {
            return Err(status_error(&r, addr));
        }
        Ok((conn, r))
    }

    /// Reserves a new chunk on up to R distinct live nodes (most free space
    /// first; a refusing node is skipped). Primary first.
    async fn place(&self, layout: &Layout) -> Result<(ChunkId, Vec<Locked>)> {
        let (map, claimed) = self.cluster.map_for_placement().await?;
        let candidates = placement::candidates(&map, &claimed);
        let want = layout.replication.max(1) as usize;
        let bytes = layout.chunk_size;
        let mut refusals = Vec::new();
        let mut no_space = false;
        let mut locked: Vec<Locked> = Vec::new();
        let mut id = ChunkId::default();
        for node in candidates {
            if locked.len() == want {
                break;
            }
            let addr = if locked.is_empty() {
                // A new id may be minted on any shard: rotate for balance.
                let s = self.next_shard.get();
                self.next_shard.set(s.wrapping_add(1));
                node.shards[s % node.shards.len()].clone()
            } else {
                node.shards[id.shard(node.shards.len())].clone()
            };
            match self.reserve(&addr, id, bytes).await {
                Ok((conn, r)) => {
                    if locked.is_empty() {
                        id = r.chunk_id;
                    }
                    self.cluster.claim(node.node_id, bytes);
                    locked.push(Locked {
                        node_id: node.node_id,
                        addr,
                        conn,
                        token: r.token,
                    });
                }
                Err(e) => {
                    no_space |= matches!(e, Error::NoSpace(_));
                    refusals.push(format!("node {}: {}", node.node_id, e.describe()));
                }
            }
        }
        if !policy::has_quorum(locked.len(), layout.write_quorum) {
            self.unlock_all(id, &locked).await;
            let msg = format!(
                "{} of the {} replicas a write needs could be reserved ({} live nodes){}{}",
                locked.len(),
                layout.write_quorum.max(1),
                map.nodes.iter().filter(|n| n.up).count(),
                if refusals.is_empty() { "" } else { ": " },
                refusals.join("; ")
            );
            return Err(policy::placement_failure(no_space, msg));
        }
        Ok((id, locked))
    }

    async fn unlock_all(&self, id: ChunkId, locked: &[Locked]) {
        let timeout = self.options.request_timeout;
        futures::future::join_all(locked.iter().map(|l| {
            let mut h = Header::request(0, Op::Unlock);
            h.chunk_id = id;
            h.token = l.token.clone();
            // Best effort: a lost unlock lapses with its lease.
            async move {
                let _ = l.conn.call(h, &[], timeout).await;
            }
        }))
        .await;
    }

    /// Best-effort delete of an uncommitted chunk on the replicas we hold
    /// write locks on. (One that cannot be deleted stays on its node as an
    /// orphan, which the control server's garbage collection deletes after
    /// its grace.)
    async fn delete_all(&self, id: ChunkId, locked: &[Locked]) {
        let timeout = self.options.request_timeout;
        futures::future::join_all(locked.iter().map(|l| {
            let mut h = Header::request(0, Op::Delete);
            h.chunk_id = id;
            h.token = l.token.clone();
            async move {
                let _ = l.conn.call(h, &[], timeout).await;
            }
        }))
        .await;
    }

    /// Writes `payload` at `offset` of chunk `id` through the chain `locked`
    /// (primary first) and returns the durable replicas and the version.
    async fn chain_write(
        &self,
        layout: &Layout,
        id: ChunkId,
        locked: &[Locked],
        offset: u64,
        payload: &[u8],
    ) -> Result<(Vec<u64>, u64)> {
        let primary = &locked[0];
        let mut h = Header::request(0, Op::Write);
        h.chunk_id = id;
        h.offset = offset;
        h.token = primary.token.clone();
        h.write_quorum = layout.write_quorum;
        h.chain = locked[1..]
            .iter()
            .map(|l| Hop {
                node_id: l.node_id,
                address: l.addr.clone(),
                token: l.token.clone(),
            })
            .collect();
        let (r, _) = primary
            .conn
            .call(h, payload, self.options.request_timeout)
            .await?;
        if r.status != Status::Ok {
            return Err(status_error(&r, &primary.addr));
        }
        let durable = policy::durable_prefix(locked.len(), r.durable_replicas);
        if !policy::has_quorum(durable, layout.write_quorum) {
            return Err(Error::Quorum(format!(
                "chunk {id}: {durable} durable replicas, the file needs {}",
                layout.write_quorum
            )));
        }
        Ok((
            locked[..durable].iter().map(|l| l.node_id).collect(),
            r.version,
        ))
    }

    async fn write_new_chunk(
        &self,
        layout: &Layout,
        index: u64,
        offset: u64,
        payload: &[u8],
    ) -> Result<ChunkRecord> {
        // A node that dies between placement and write fails the chain; a
        // second placement skips it (its connection is refused).
        let mut attempt = 0;
        let (id, replicas, version) = loop {
            let (id, locked) = self.place(layout).await?;
            let result = self.chain_write(layout, id, &locked, offset, payload).await;
            if result.is_err() {
                // Nobody will commit this chunk: drop what reached the nodes.
                self.delete_all(id, &locked).await;
            }
            self.unlock_all(id, &locked).await;
            match result {
                Ok((replicas, version)) => break (id, replicas, version),
                Err(e) if attempt == 0 && policy::retry_new_chunk(&e) => attempt += 1,
                Err(e) => return Err(e),
            }
        };
        Ok(ChunkRecord {
            index,
            chunk_id: chunk_u128(id),
            replicas,
            length: (offset + payload.len() as u64) as u32,
            version,
        })
    }

    /// Takes the write lock on `node`'s replica of `id`.
    async fn lock_replica(&self, id: ChunkId, node: &NodeInfo) -> Result<Locked> {
        let addr = node
            .shards
            .get(id.shard(node.shards.len()))
            .ok_or_else(|| Error::unavailable(format!("node {} has no shards", node.node_id)))?
            .clone();
        let conn = self.pool.get(&addr).await?;
        let mut h = Header::request(0, Op::Lock);
        h.chunk_id = id;
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
            node_id: node.node_id,
            addr,
            conn,
            token: r.token,
        })
    }

    async fn overwrite_chunk(
        &self,
        layout: &Layout,
        rec: ChunkRecord,
        offset: u64,
        payload: &[u8],
    ) -> Result<ChunkRecord> {
        let id = chunk_id(rec.chunk_id);
        let mut locked = Vec::new();
        let mut skipped = Vec::new();
        for node_id in policy::lock_order(&rec.replicas) {
            let node = match self.cluster.node(node_id) {
                Some(n) if n.up => n,
                _ => {
                    skipped.push(format!("node {node_id} is down"));
                    continue;
                }
            };
            match self.lock_replica(id, &node).await {
                Ok(l) => locked.push(l),
                Err(e) => match policy::on_lock_failure(&e) {
                    LockFailure::Abort => {
                        self.unlock_all(id, &locked).await;
                        return Err(e);
                    }
                    LockFailure::Skip => skipped.push(format!("node {node_id}: {}", e.describe())),
                },
            }
        }
        if !policy::has_quorum(locked.len(), layout.write_quorum) {
            self.unlock_all(id, &locked).await;
            return Err(Error::Quorum(format!(
                "chunk {id}: {} of {} replicas reachable, the file needs {}: {}",
                locked.len(),
                rec.replicas.len(),
                layout.write_quorum,
                skipped.join("; ")
            )));
        }
        locked.sort_by_key(|l| policy::chain_position(&rec.replicas, l.node_id));
        let (at, gap) = policy::overwrite_span(rec.length, offset);
        let result = if gap > 0 {
            let mut buf = vec![0u8; gap + payload.len()];
            buf[gap..].copy_from_slice(payload);
            self.chain_write(layout, id, &locked, at, &buf).await
        } else {
            self.chain_write(layout, id, &locked, at, payload).await
        };
        self.unlock_all(id, &locked).await;
        let (replicas, version) = result?;
        Ok(ChunkRecord {
            index: rec.index,
            chunk_id: rec.chunk_id,
            replicas,
            length: policy::length_after_write(rec.length, offset, payload.len()),
            version,
        })
    }

    // ------------------------------------------------------------- reads

    /// Reads `buf` at file `offset` from the chunks in `records` (by index;
    /// holes absent), chunk pieces concurrently.
    pub(crate) async fn read_range(
        &self,
        records: &HashMap<u64, ChunkRecord>,
        cs: u64,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<()> {
        let mut pieces = Vec::new();
        let mut rest = buf;
        let mut at = offset;
        while !rest.is_empty() {
            let index = at / cs;
            let in_chunk = at - index * cs;
            let take = ((cs - in_chunk) as usize).min(rest.len());
            let (piece, tail) = rest.split_at_mut(take);
            pieces.push((records.get(&index).cloned(), in_chunk, piece));
            rest = tail;
            at += take as u64;
        }
        futures::stream::iter(
            pieces
                .into_iter()
                .map(|(rec, off, piece)| self.read_piece(rec, cs, off, piece)),
        )
        .buffer_unordered(PIPELINE)
        .try_collect::<Vec<()>>()
        .await?;
        Ok(())
    }

    /// Fills `buf` with the chunk bytes at `offset` of record `rec` (`None`:
    /// a hole), failing over between replicas.
    async fn read_piece(
        &self,
        rec: Option<ChunkRecord>,
        chunk_size: u64,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<()> {
        let Some(rec) = rec else {
            buf.fill(0);
            return Ok(());
        };
        let valid = (rec.length as u64)
            .saturating_sub(offset)
            .min(buf.len() as u64) as usize;
        buf[valid..].fill(0);
        if valid == 0 {
            return Ok(());
        }
        let id = chunk_id(rec.chunk_id);
        let order = policy::read_order(
            &rec.replicas,
            rec.index,
            |n| self.cluster.node(n).is_some_and(|n| n.up),
            |n| {
                self.endpoint(id, n)
                    .map_or(0, |addr| self.pool.in_flight(&addr))
            },
        );
        let mut errors = Vec::new();
        let mut corrupt = Vec::new();
        for node_id in order {
            match self
                .read_replica(id, node_id, rec.version, offset, &mut buf[..valid])
                .await
            {
                Ok(()) => {
                    for bad in corrupt {
                        // Best effort: a failed repair leaves the replica
                        // refusing reads, as before; the read succeeded.
                        let repaired = self.repair(id, bad, node_id, chunk_size).await.is_ok();
                        if repaired {
                            self.repairs.set(self.repairs.get() + 1);
                        }
                        self.cluster.report_bad(rec.chunk_id, bad, repaired).await;
                    }
                    return Ok(());
                }
                Err(e) => {
                    if matches!(e, Error::Corrupt(_)) {
                        corrupt.push(node_id);
                    }
                    errors.push(e);
                }
            }
        }
        for &bad in &corrupt {
            self.cluster.report_bad(rec.chunk_id, bad, false).await;
        }
        let msg = format!(
            "chunk {id} (index {}): no replica could be read: {}",
            rec.index,
            errors
                .iter()
                .map(Error::describe)
                .collect::<Vec<_>>()
                .join("; ")
        );
        Err(policy::read_failure(&errors, msg))
    }

    /// The shard endpoint of `node_id` owning chunk `id`, from the map.
    fn endpoint(&self, id: ChunkId, node_id: u64) -> Result<String> {
        let node = self
            .cluster
            .node(node_id)
            .ok_or_else(|| Error::unavailable(format!("node {node_id} is not in the map")))?;
        node.shards
            .get(id.shard(node.shards.len()))
            .cloned()
            .ok_or_else(|| Error::unavailable(format!("node {node_id} has no shards")))
    }

    /// Replaces `bad`'s replica of chunk `id` (it failed its checksum) with
    /// a copy of `good`'s: delete it on `bad`, reserve the id (`chunk_size`
    /// bytes) there again, and have `good` copy the whole chunk (same
    /// version) into that reservation.
    async fn repair(&self, id: ChunkId, bad: u64, good: u64, chunk_size: u64) -> Result<()> {
        let bad_addr = self.endpoint(id, bad)?;
        let good_addr = self.endpoint(id, good)?;
        let bad_conn = self.pool.get(&bad_addr).await?;
        let timeout = self.options.request_timeout + self.options.lock_wait;
        let mut h = Header::request(0, Op::Delete);
        h.chunk_id = id;
        h.client_id = self.client_id;
        h.implicit_lock = LockMode::Write;
        h.timeout_ms = ms(self.options.lock_wait);
        let (r, _) = bad_conn.call(h, &[], timeout).await?;
        if !matches!(r.status, Status::Ok | Status::NotFound) {
            return Err(status_error(&r, &bad_addr));
        }
        let (_, reservation) = self.reserve(&bad_addr, id, chunk_size).await?;
        let target = Locked {
            node_id: bad,
            addr: bad_addr,
            conn: bad_conn,
            token: reservation.token,
        };
        let good_conn = self.pool.get(&good_addr).await?;
        let mut h = Header::request(0, Op::CopyTo);
        h.chunk_id = id;
        h.client_id = self.client_id;
        h.implicit_lock = LockMode::Read;
        h.timeout_ms = ms(self.options.lock_wait);
        h.chain = vec![Hop {
            node_id: bad,
            address: target.addr.clone(),
            token: target.token.clone(),
        }];
        let result = good_conn.call(h, &[], timeout).await;
        self.unlock_all(id, std::slice::from_ref(&target)).await;
        let (r, _) = result?;
        if r.status != Status::Ok {
            return Err(status_error(&r, &good_addr));
        }
        Ok(())
    }

    async fn read_replica(
        &self,
        id: ChunkId,
        node_id: u64,
        version: u64,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<()> {
        let addr = self.endpoint(id, node_id)?;
        let conn = self.pool.get(&addr).await?;
        let mut h = Header::request(0, Op::Read);
        h.chunk_id = id;
        h.offset = offset;
        h.length = buf.len() as u32;
        h.client_id = self.client_id;
        h.implicit_lock = LockMode::Read;
        h.timeout_ms = ms(self.options.lock_wait);
        let (r, payload) = conn
            .call(
                h,
                &[],
                self.options.request_timeout + self.options.lock_wait,
            )
            .await?;
        if r.status != Status::Ok {
            return Err(status_error(&r, &addr));
        }
        // A replica behind the committed record (it missed a write) must
        // not be served: try another.
        if !policy::replica_is_current(r.version, version, payload.len(), buf.len()) {
            return Err(Error::unavailable(format!(
                "storage node {addr}: replica of chunk {id} is stale (version {} < {version} \
                 or {} of {} bytes)",
                r.version,
                payload.len(),
                buf.len()
            )));
        }
        buf.copy_from_slice(&payload[..buf.len()]);
        crate::node_conn::recycle_payload(payload);
        Ok(())
    }
}
