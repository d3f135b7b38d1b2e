//! The write path of the replica protocol, for one call's range of a file.
//!
//! A write lease has a [`Writer`]: its epoch (from the control server) and
//! one seq counter, so every version it creates, `(epoch, seq)`, is unique,
//! never reused even after a write whose outcome is unknown; and per chunk
//! it writes, its view ([`ChunkState`]): the version `base` its in-sync
//! replicas hold, and which replicas are in sync.
//!
//! - **First touch** of a chunk (and after an outcome it cannot know):
//!   every replica of the record is asked for its version; at least
//!   `n - W + 1` of the record's `n` must answer (so the answers meet every
//!   set of W replicas an acknowledged write may be on); `base` is the
//!   highest version seen, in sync are the replicas at it. If fewer than W
//!   are, replicas behind are first brought up to `base` by a
//!   version-fenced copy from an in-sync one; never is a write laid on top
//!   of a lower version.
//! - **A write** goes down the chain of in-sync replicas (each hop under
//!   an implicit write lock for this write alone: no lock round trips)
//!   with `expected = base` and a new version;
//!   every replica applies it only on top of `base`. The answer names the
//!   replicas that hold it durably; they are the new in-sync set, and the
//!   write succeeds when they are at least W. A replica that refused or
//!   failed leaves the set (and the record, at the commit) and is repaired
//!   by a copy, never moved forward silently.
//! - **New chunks** are reserved on up to R distinct live nodes, most free
//!   space first ([`crate::placement`]); the primary mints the id, the others
//!   reserve that id; a refusing node is skipped; fewer than W reserved is an
//!   error. They are written with `expected = (0, 0)`. A write that fell
//!   short is deleted and placed once more.
//! - **Replicas to add** (the control server's answer to a commit of a
//!   chunk with fewer than R replicas): the writer copies its `base` to
//!   the node named, version-fenced, and lists it at its next commit; so a
//!   chunk that is being written is repaired in step with its writes.
//!
//! Nothing here commits: the caller commits the returned records (see
//! [`crate::Client`]). A chunk written and not committed is invisible to
//! readers, except an overwrite, whose bytes the nodes hold in place.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use futures::StreamExt;
use ringfs_schema::frame::{Header, Hop, LockMode, Op, Status};
use ringfs_schema::{ChunkId, Version};

use crate::chunk_io::{chunk_id, chunk_u128, ChunkIo, Layout, Locked, PIPELINE};
use crate::control::{Capability, ChunkRecord};
use crate::error::{Error, Result};
use crate::node_conn::status_error;
use crate::placement;
use crate::replica_policy as policy;

/// Chunk states a writer keeps; past this, the oldest are forgotten (a
/// forgotten chunk is asked again at its next write).
const MAX_STATES: usize = 16_384;

/// What a write lease knows of the chunks it writes.
pub(crate) struct Writer {
    epoch: u64,
    seq: Cell<u64>,
    chunks: RefCell<HashMap<u64, ChunkState>>,
    /// The lease's reserve capability (nodes mint new chunk ids with it),
    /// set before each write ([`Writer::set_reserve_capability`]).
    reserve: Cell<Option<Capability>>,
}

/// A writer's view of one chunk.
#[derive(Clone, Debug)]
pub(crate) struct ChunkState {
    id: ChunkId,
    /// The version every in-sync replica holds.
    base: Version,
    /// The chunk's length on the nodes at `base`.
    length: u64,
    /// The replicas at `base`, chain order (primary first).
    in_sync: Vec<u64>,
    /// Replicas known to be behind, with the version they hold (as far as
    /// known): catch-up copies are fenced on it.
    behind: Vec<(u64, Version)>,
}

impl Writer {
    /// The writer of a write handle with this `epoch`.
    pub(crate) fn new(epoch: u64) -> Self {
        Self {
            epoch,
            seq: Cell::new(0),
            chunks: RefCell::default(),
            reserve: Cell::new(None),
        }
    }

    /// The reserve capability the next writes mint new chunks with.
    pub(crate) fn set_reserve_capability(&self, cap: Capability) {
        self.reserve.set(Some(cap));
    }

    /// A version no write of this lease used before.
    fn next_version(&self) -> Version {
        let s = self.seq.get() + 1;
        self.seq.set(s);
        Version::new(self.epoch, s)
    }

    /// Takes the state of chunk `index` out: while a write is in flight
    /// the state is unknown, so a write whose future is dropped leaves it
    /// unknown (asked again next time).
    fn take(&self, index: u64) -> Option<ChunkState> {
        self.chunks.borrow_mut().remove(&index)
    }

    fn put(&self, index: u64, state: ChunkState) {
        let mut chunks = self.chunks.borrow_mut();
        if chunks.len() >= MAX_STATES && !chunks.contains_key(&index) {
            if let Some(&k) = chunks.keys().next() {
                chunks.remove(&k);
            }
        }
        chunks.insert(index, state);
    }

    /// Forgets every chunk state (the file was truncated).
    pub(crate) fn forget(&self) {
        self.chunks.borrow_mut().clear();
    }
}

/// How a chunk write went when it did not succeed.
enum Failed {
    /// Nothing was applied anywhere (every replica refused before its own
    /// write): worth asking the replicas again and retrying once.
    Refused(Error),
    /// The replicas' state is known (some applied, fewer than W).
    Known(ChunkState, Error),
    /// Unknown: a connection failed or timed out with the write sent.
    Unknown(Error),
}

impl ChunkIo {
    /// Writes `data` at file `offset` into the chunks it covers: into the
    /// existing chunk where `existing` has a record for its index, else a
    /// new chunk. Returns the records to commit, in no particular order.
    /// On failure, chunk writes already started finish before this
    /// returns (none is abandoned mid-way); chunks already written stay as
    /// they are: new ones are never committed (orphans), overwritten ones
    /// hold the new bytes.
    pub(crate) async fn write_range(
        &self,
        layout: &Layout,
        existing: &HashMap<u64, ChunkRecord>,
        offset: u64,
        data: &[u8],
        writer: &Writer,
    ) -> Result<Vec<ChunkRecord>> {
        self.remember(existing.values());
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
        // After a failure no further chunk write starts; those in flight
        // finish (their states stay known).
        let failed = Cell::new(false);
        let results: Vec<Option<Result<ChunkRecord>>> = futures::stream::iter(pieces)
            .map(|(index, rec, off, piece)| {
                let failed = &failed;
                async move {
                    if failed.get() {
                        return None;
                    }
                    let r = match rec {
                        Some(rec) => self.overwrite_chunk(layout, rec, off, piece, writer).await,
                        None => {
                            self.write_new_chunk(layout, index, off, piece, writer)
                                .await
                        }
                    };
                    failed.set(failed.get() || r.is_err());
                    Some(r)
                }
            })
            .buffer_unordered(PIPELINE)
            .collect()
            .await;
        let mut records = Vec::new();
        for r in results.into_iter().flatten() {
            records.push(r?);
        }
        Ok(records)
    }

    /// Reserves a new chunk on up to R distinct live nodes (most free space
    /// first; a refusing node is skipped). Primary first.
    async fn place(&self, layout: &Layout, writer: &Writer) -> Result<(ChunkId, Vec<Locked>)> {
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
            match self.reserve(&addr, id, bytes, writer.reserve.get()).await {
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
                layout.quorum(),
                map.nodes.iter().filter(|n| n.up).count(),
                if refusals.is_empty() { "" } else { ": " },
                refusals.join("; ")
            );
            return Err(policy::placement_failure(no_space, msg));
        }
        Ok((id, locked))
    }

    /// Sends `payload` at `offset` of chunk `id` down the chain `locked`
    /// (primary first) as the write creating `version` on top of
    /// `expected`, with its CRCs. The answer, whatever its status; an error
    /// only when none came (the outcome is unknown).
    #[allow(clippy::too_many_arguments)]
    async fn chain_write(
        &self,
        layout: &Layout,
        id: ChunkId,
        locked: &[Locked],
        offset: u64,
        payload: &[u8],
        expected: Version,
        version: Version,
    ) -> Result<Header> {
        let primary = &locked[0];
        let mut h = self.request(Op::Write, id);
        h.offset = offset;
        h.token = primary.token.clone();
        let mut timeout = self.options.request_timeout;
        if !h.token.is_present() {
            // Every hop takes an implicit write lock for this write only.
            h.implicit_lock = LockMode::Write;
            h.client_id = self.client_id;
            h.timeout_ms = crate::chunk_io::ms(self.options.lock_wait);
            timeout += self.options.lock_wait;
        }
        h.write_quorum = layout.write_quorum;
        h.expected = expected;
        h.version = version;
        h.crcs = ringfs_schema::crc::piece_crcs(offset, payload);
        h.chain = locked[1..]
            .iter()
            .map(|l| Hop {
                node_id: l.node_id,
                address: l.addr.clone(),
                token: l.token.clone(),
            })
            .collect();
        let (r, _) = primary.conn.call(h, payload, timeout).await?;
        Ok(r)
    }

    async fn write_new_chunk(
        &self,
        layout: &Layout,
        index: u64,
        offset: u64,
        payload: &[u8],
        writer: &Writer,
    ) -> Result<ChunkRecord> {
        // A node that dies between placement and write fails the chain; a
        // second placement skips it (its connection is refused).
        let mut attempt = 0;
        loop {
            let (id, locked) = self.place(layout, writer).await?;
            let version = writer.next_version();
            let result = self
                .chain_write(layout, id, &locked, offset, payload, Version::NONE, version)
                .await;
            let outcome = result.and_then(|r| {
                let durable = policy::durable_nodes(&locked, r.durable_mask, |l| l.node_id);
                if policy::has_quorum(durable.len(), layout.write_quorum) {
                    Ok(durable)
                } else {
                    Err(short_of_quorum(
                        &r,
                        &locked[0].addr,
                        id,
                        durable.len(),
                        layout,
                    ))
                }
            });
            if outcome.is_err() {
                // Nobody will commit this chunk: drop what reached the nodes.
                self.delete_all(id, &locked, version).await;
            }
            self.unlock_all(id, &locked).await;
            match outcome {
                Ok(in_sync) => {
                    let length = offset + payload.len() as u64;
                    let state = ChunkState {
                        id,
                        base: version,
                        length,
                        in_sync,
                        behind: Vec::new(),
                    };
                    let record = ChunkRecord {
                        index,
                        chunk_id: chunk_u128(id),
                        replicas: state.in_sync.clone(),
                        length: length as u32,
                        version,
                        capability: self.capability(id),
                    };
                    writer.put(index, state);
                    return Ok(record);
                }
                Err(e) if attempt == 0 && policy::retry_new_chunk(&e) => attempt += 1,
                Err(e) => return Err(e),
            }
        }
    }

    async fn overwrite_chunk(
        &self,
        layout: &Layout,
        rec: ChunkRecord,
        offset: u64,
        payload: &[u8],
        writer: &Writer,
    ) -> Result<ChunkRecord> {
        let id = chunk_id(rec.chunk_id);
        let mut retried = false;
        loop {
            let state = match writer.take(rec.index) {
                Some(s) if s.id == id => self.reconcile(s, &rec).await,
                _ => self.first_touch(&rec, layout).await?,
            };
            let state = self.ensure_quorum(state, layout).await?;
            match self
                .write_chunk(layout, &rec, state, offset, payload, writer)
                .await
            {
                Ok(state) => {
                    let record = ChunkRecord {
                        index: rec.index,
                        chunk_id: rec.chunk_id,
                        replicas: state.in_sync.clone(),
                        length: policy::length_after_write(rec.length, offset, payload.len()),
                        version: state.base,
                        capability: rec.capability,
                    };
                    writer.put(rec.index, state);
                    return Ok(record);
                }
                // The replicas moved under this writer's view (a copy, a
                // lost replica): ask them again, once.
                Err(Failed::Refused(_)) if !retried => retried = true,
                Err(Failed::Refused(e) | Failed::Unknown(e)) => return Err(e),
                Err(Failed::Known(state, e)) => {
                    writer.put(rec.index, state);
                    return Err(e);
                }
            }
        }
    }

    /// Asks every live replica of `rec` for its version (see the module
    /// doc): `base` is the highest answered, in sync the replicas at it.
    async fn first_touch(&self, rec: &ChunkRecord, layout: &Layout) -> Result<ChunkState> {
        let id = chunk_id(rec.chunk_id);
        let answers = futures::future::join_all(rec.replicas.iter().map(|&node| async move {
            if !self.is_up(node) {
                return (
                    node,
                    Err(Error::unavailable(format!("node {node} is down"))),
                );
            }
            match self.info(id, node).await {
                // A replica without the chunk holds no write of it.
                Err(Error::NotFound(_)) => (node, Ok((Version::NONE, 0))),
                r => (node, r),
            }
        }))
        .await;
        let need = policy::answers_needed(rec.replicas.len(), layout.write_quorum);
        let answered: Vec<(u64, Version, u64)> = answers
            .iter()
            .filter_map(|(n, r)| r.as_ref().ok().map(|(v, l)| (*n, *v, *l)))
            .collect();
        if answered.len() < need {
            let why: Vec<String> = answers
                .iter()
                .filter_map(|(n, r)| {
                    r.as_ref()
                        .err()
                        .map(|e| format!("node {n}: {}", e.describe()))
                })
                .collect();
            return Err(Error::Quorum(format!(
                "chunk {id}: {} of its {} replicas answered, {need} must (write quorum {}) to be \
                 sure no acknowledged write is missed: {}",
                answered.len(),
                rec.replicas.len(),
                layout.quorum(),
                why.join("; ")
            )));
        }
        let base = answered.iter().map(|a| a.1).max().unwrap_or(Version::NONE);
        if base < rec.version {
            return Err(Error::Quorum(format!(
                "chunk {id}: no replica that answered holds the committed version {} \
                 (newest: {base})",
                rec.version
            )));
        }
        Ok(ChunkState {
            id,
            base,
            length: answered
                .iter()
                .filter(|a| a.1 == base)
                .map(|a| a.2)
                .max()
                .unwrap_or(0),
            in_sync: answered
                .iter()
                .filter(|a| a.1 == base)
                .map(|a| a.0)
                .collect(),
            behind: answered
                .iter()
                .filter(|a| a.1 < base)
                .map(|a| (a.0, a.1))
                .collect(),
        })
    }

    /// Brings a known state in line with the record: a replica the record
    /// lists and the state does not (repair added it) is asked for its
    /// version.
    async fn reconcile(&self, mut state: ChunkState, rec: &ChunkRecord) -> ChunkState {
        let unknown: Vec<u64> = rec
            .replicas
            .iter()
            .copied()
            .filter(|n| !state.in_sync.contains(n) && !state.behind.iter().any(|(b, _)| b == n))
            .collect();
        for node in unknown {
            match self.info(state.id, node).await {
                Ok((v, _)) if v == state.base => state.in_sync.push(node),
                Ok((v, _)) => state.behind.push((node, v)),
                Err(_) => {}
            }
        }
        state
    }

    /// Makes sure at least W replicas are in sync, catching replicas that
    /// are behind up to `base` (version-fenced copies) if needed.
    async fn ensure_quorum(&self, mut state: ChunkState, layout: &Layout) -> Result<ChunkState> {
        let mut failures = Vec::new();
        while state.in_sync.len() < layout.quorum() {
            let Some(pos) = state.behind.iter().position(|(n, _)| self.is_up(*n)) else {
                break;
            };
            let (node, held) = state.behind.remove(pos);
            match self
                .copy_replica(
                    state.id,
                    state.in_sync[0],
                    state.base,
                    node,
                    held,
                    state.length.max(4096),
                )
                .await
            {
                Ok(()) => state.in_sync.push(node),
                Err(e) => failures.push(format!("node {node}: {}", e.describe())),
            }
        }
        if state.in_sync.len() < layout.quorum() {
            return Err(Error::Quorum(format!(
                "chunk {}: {} replicas in sync at version {}, the file needs {}{}{}",
                state.id,
                state.in_sync.len(),
                state.base,
                layout.quorum(),
                if failures.is_empty() {
                    ""
                } else {
                    "; catching up failed: "
                },
                failures.join("; ")
            )));
        }
        Ok(state)
    }

    /// One write of `payload` at `offset` (of the chunk recorded as `rec`)
    /// on top of `state`: writes down the chain of the in-sync replicas,
    /// each hop under an implicit write lock (no lock round trips: the
    /// versions' compare-and-set orders writers, the lock only keeps this
    /// write apart from other I/O on the chunk), and returns the state
    /// after it.
    async fn write_chunk(
        &self,
        layout: &Layout,
        rec: &ChunkRecord,
        mut state: ChunkState,
        offset: u64,
        payload: &[u8],
        writer: &Writer,
    ) -> std::result::Result<ChunkState, Failed> {
        let id = state.id;
        let mut locked = Vec::new();
        for node_id in state.in_sync.clone() {
            match self.replica_conn(id, node_id).await {
                Ok(l) => locked.push(l),
                // Unreachable: out of this write; asked again later.
                Err(_) => state.in_sync.retain(|n| *n != node_id),
            }
        }
        if !policy::has_quorum(locked.len(), layout.write_quorum) {
            let e = Error::Quorum(format!(
                "chunk {id}: {} of {} replicas reachable, the file needs {}",
                locked.len(),
                rec.replicas.len(),
                layout.quorum()
            ));
            return Err(Failed::Known(state, e));
        }
        let (at, gap) = policy::overwrite_span(rec.length, offset);
        let version = writer.next_version();
        let result = if gap > 0 {
            let mut buf = vec![0u8; gap + payload.len()];
            buf[gap..].copy_from_slice(payload);
            self.chain_write(layout, id, &locked, at, &buf, state.base, version)
                .await
        } else {
            self.chain_write(layout, id, &locked, at, payload, state.base, version)
                .await
        };
        let r = result.map_err(Failed::Unknown)?;
        let durable = policy::durable_nodes(&locked, r.durable_mask, |l| l.node_id);
        if durable.is_empty() {
            // Nobody applied it: every replica refused on its own.
            return Err(Failed::Refused(status_error(&r, &locked[0].addr)));
        }
        let end = at + (gap + payload.len()) as u64;
        let old_base = state.base;
        for l in &locked {
            if !durable.contains(&l.node_id) {
                state.behind.push((l.node_id, old_base));
            }
        }
        state.in_sync = durable;
        state.base = version;
        state.length = state.length.max(end);
        if policy::has_quorum(state.in_sync.len(), layout.write_quorum) {
            Ok(state)
        } else {
            let n = state.in_sync.len();
            Err(Failed::Known(
                state,
                short_of_quorum(&r, &locked[0].addr, id, n, layout),
            ))
        }
    }

    /// Copies the writer's current version of each chunk named in
    /// `repairs` ((index, node), from a commit's answer) to that node, and
    /// returns the records to commit with the nodes added. A copy that
    /// fails is left out (the control server tries again later).
    pub(crate) async fn add_replicas(
        &self,
        records: &[ChunkRecord],
        repairs: &[(u64, u64)],
        layout: &Layout,
        writer: &Writer,
    ) -> Vec<ChunkRecord> {
        let mut out = Vec::new();
        for &(index, node) in repairs {
            let Some(rec) = records.iter().find(|r| r.index == index) else {
                continue;
            };
            let Some(mut state) = writer.take(index) else {
                continue;
            };
            if state.in_sync.contains(&node) || state.in_sync.is_empty() {
                writer.put(index, state);
                continue;
            }
            // A copy that fails leaves the node out of the record: the
            // control server, which asked for it, plans the copy again.
            if self.copy_to_node(&state, node, layout).await.is_ok() {
                state.in_sync.push(node);
                state.behind.retain(|(n, _)| *n != node);
                let mut r = rec.clone();
                r.replicas = state.in_sync.clone();
                out.push(r);
            }
            writer.put(index, state);
        }
        out
    }

    /// Copies `state.base` to `node`, reserving the chunk there, or
    /// replacing the copy it already holds (fenced on its version).
    async fn copy_to_node(&self, state: &ChunkState, node: u64, layout: &Layout) -> Result<()> {
        let source = state.in_sync[0];
        let bytes = layout.chunk_size;
        match self
            .copy_replica(state.id, source, state.base, node, Version::NONE, bytes)
            .await
        {
            Err(Error::Exists(_)) => {
                let (held, _) = self.info(state.id, node).await?;
                self.copy_replica(state.id, source, state.base, node, held, bytes)
                    .await
            }
            r => r,
        }
    }
}

/// The error of a chain write durable on `durable` replicas, fewer than
/// the quorum.
fn short_of_quorum(r: &Header, addr: &str, id: ChunkId, durable: usize, layout: &Layout) -> Error {
    if durable == 0 && r.status != Status::Quorum {
        return status_error(r, addr);
    }
    Error::Quorum(format!(
        "chunk {id}: {durable} durable replicas, the file needs {}: {}",
        layout.quorum(),
        r.message
    ))
}
