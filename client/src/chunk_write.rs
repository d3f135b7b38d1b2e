//! The write path of the replica protocol, for one call's range of a file.
//!
//! A write lease has a [`Writer`] (see [`crate::write_pipeline`]): its epoch
//! (from the control server) and one seq counter, so every version it
//! creates, `(epoch, seq)`, is unique, never reused even after a write whose
//! outcome is unknown; and per chunk it writes, its pipeline ([`Slot`]):
//! the order of the writes in flight and the replicas' state
//! ([`ChunkState`]).
//!
//! - **First touch** of a chunk (and after a failure): every replica of the
//!   record is asked for its version; at least `n - W + 1` of the record's
//!   `n` must answer (so the answers meet every set of W replicas an
//!   acknowledged write may be on); `base` is the highest version seen, in
//!   sync are the replicas at it. If fewer than W are, replicas behind are
//!   first brought up to `base` by a version-fenced copy from an in-sync
//!   one; never is a write laid on top of a lower version.
//! - **A write** goes down the chain of in-sync replicas (each hop under
//!   an implicit write lock for this write alone: no lock round trips)
//!   with `expected = base` and a new version, which becomes the `base` of
//!   the chunk's next write as soon as this one is on the wire: several
//!   writes of a chunk are in flight at once, applied by every replica in
//!   issue order. The answer names the replicas that hold it durably; the
//!   write succeeds when they are at least W. A replica that refused or
//!   failed leaves the in-sync set (and the record, at the next commit) and
//!   is repaired by a copy, never moved forward silently.
//! - **New chunks** are reserved on up to R distinct live nodes, most free
//!   space first ([`crate::placement`]); the primary mints the id, the others
//!   reserve that id; a refusing node is skipped; fewer than W reserved is an
//!   error. They are written with `expected = (0, 0)`, the chunk's later
//!   writes waiting for that first one to end. A write that fell short is
//!   deleted and placed once more.
//! - **Replicas to add** (the control server's answer to a commit of a
//!   chunk with fewer than R replicas): the writer copies its `base` to
//!   the node named, version-fenced, and lists it at its next commit; so a
//!   chunk that is being written is repaired in step with its writes.
//!
//! Nothing here commits: the caller commits the returned records (see
//! [`crate::Client`]). A chunk written and not committed is invisible to
//! readers, except an overwrite, whose bytes the nodes hold in place.

use ringfs_schema::frame::{Header, Hop, LockMode, Op, Status};
use ringfs_schema::{ChunkId, Version};

use crate::chunk_io::{chunk_id, chunk_u128, ChunkIo, Layout, Locked};
use crate::control::ChunkRecord;
use crate::error::{Error, Result};
use crate::node_conn::status_error;
use crate::placement;
use crate::replica_policy as policy;
pub(crate) use crate::write_pipeline::Writer;
use crate::write_pipeline::{ChunkState, Slot, Turn};

impl ChunkIo {
    /// Writes `data` at file `offset` into the chunks it covers, each in
    /// its turn (`turns`: the write's tickets, by chunk index, from
    /// [`Writer::issue`]): into the chunk this writer knows at that index
    /// (a write in flight, a record), else a new chunk. Returns the records
    /// to commit, in no particular order. On failure, chunk writes already
    /// started finish before this returns (none is abandoned mid-way);
    /// chunks already written stay as they are: new ones are never
    /// committed (orphans), overwritten ones hold the new bytes.
    pub(crate) async fn write_range(
        &self,
        layout: &Layout,
        offset: u64,
        data: &[u8],
        writer: &Writer,
        turns: Vec<(u64, Turn)>,
    ) -> Result<Vec<ChunkRecord>> {
        let cs = layout.chunk_size;
        let mut rest = data;
        let mut at = offset;
        let pieces = turns.into_iter().map(|(index, turn)| {
            let in_chunk = at - index * cs;
            let take = ((cs - in_chunk) as usize).min(rest.len());
            let (piece, tail) = rest.split_at(take);
            rest = tail;
            at += take as u64;
            self.write_piece(layout, index, turn, in_chunk, piece, writer)
        });
        // Every piece is in its chunk's queue already: all run at once (a
        // write call covers at most a few chunks).
        let results = futures::future::join_all(pieces).await;
        results.into_iter().collect()
    }

    /// One chunk's piece of a write: waits for its turn, then writes it.
    /// A failure breaks the chunk's pipeline (see [`crate::write_pipeline`]).
    async fn write_piece(
        &self,
        layout: &Layout,
        index: u64,
        turn: Turn,
        offset: u64,
        payload: &[u8],
        writer: &Writer,
    ) -> Result<ChunkRecord> {
        let mut turn = turn;
        let mut retried = false;
        loop {
            turn.wait().await;
            let slot = turn.slot.clone();
            let r = match turn.broken() {
                Some(e) => Err(Retry::No(e)),
                None => {
                    self.write_in_turn(layout, index, &turn, offset, payload, writer)
                        .await
                }
            };
            match r {
                Ok(rec) => return Ok(rec),
                // The replicas moved under this writer's view (a copy, a
                // lost replica): ask them again, once, if that keeps the
                // issue order (no write of the chunk was issued after this
                // one or is in flight) and no earlier write of the chunk
                // failed (this one was issued on top of it: retried on the
                // replicas' version, it would land without it).
                Err(Retry::Refused(_))
                    if !retried
                        && turn.is_last()
                        && slot.in_flight.get() == 0
                        && turn.broken().is_none() =>
                {
                    retried = true;
                    *slot.state.borrow_mut() = None;
                    drop(turn);
                    turn = writer.ticket(index);
                }
                Err(Retry::Refused(e) | Retry::No(e)) => {
                    slot.break_pipeline(&e);
                    return Err(e);
                }
            }
        }
    }

    /// [`ChunkIo::write_piece`] in its turn.
    async fn write_in_turn(
        &self,
        layout: &Layout,
        index: u64,
        turn: &Turn,
        offset: u64,
        payload: &[u8],
        writer: &Writer,
    ) -> std::result::Result<ChunkRecord, Retry> {
        let known = turn.slot.state.borrow_mut().take();
        let state = match known {
            Some(s) => s,
            None => match writer.record(index) {
                Some(rec) => {
                    let mut s = self.first_touch(&rec, layout).await?;
                    s = self.ensure_quorum(s, layout).await?;
                    // Bytes a replica holds past the recorded length are
                    // not the file's (a truncation cut them): a write past
                    // it fills the gap with zeros.
                    s.length = u64::from(rec.length);
                    s
                }
                None => {
                    return Ok(self
                        .write_new_chunk(layout, index, offset, payload, writer, &turn.slot)
                        .await?)
                }
            },
        };
        self.write_chunk(layout, index, state, offset, payload, writer, turn)
            .await
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
            match self
                .reserve(&addr, id, bytes, writer.reserve_capability())
                .await
            {
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
    /// `expected`, with its CRCs, running `sent` once it is on the wire
    /// (see [`crate::node_conn::NodeConn::call_then`]). The answer, whatever
    /// its status; an error only when none came (the outcome is unknown).
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
        sent: impl FnOnce(),
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
        let (r, _) = primary.conn.call_then(h, payload, timeout, sent).await?;
        Ok(r)
    }

    /// Writes the first piece of chunk `index` to a new chunk; the slot's
    /// state is the chunk's after it. The caller holds the chunk's turn
    /// until this ends: later writes of the chunk go to the chunk this
    /// placed.
    async fn write_new_chunk(
        &self,
        layout: &Layout,
        index: u64,
        offset: u64,
        payload: &[u8],
        writer: &Writer,
        slot: &Slot,
    ) -> Result<ChunkRecord> {
        // A node that dies between placement and write fails the chain; a
        // second placement skips it (its connection is refused).
        let mut attempt = 0;
        loop {
            let (id, locked) = self.place(layout, writer).await?;
            let version = writer.next_version();
            let result = self
                .chain_write(
                    layout,
                    id,
                    &locked,
                    offset,
                    payload,
                    Version::NONE,
                    version,
                    || {},
                )
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
                    let record = ChunkRecord {
                        index,
                        chunk_id: chunk_u128(id),
                        replicas: in_sync.clone(),
                        length: length as u32,
                        version,
                        capability: self.capability(id),
                    };
                    *slot.state.borrow_mut() = Some(ChunkState {
                        id,
                        base: version,
                        length,
                        in_sync,
                        behind: Vec::new(),
                    });
                    return Ok(record);
                }
                Err(e) if attempt == 0 && policy::retry_new_chunk(&e) => attempt += 1,
                Err(e) => return Err(e),
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

    /// One write of `payload` at `offset` of chunk `index` on top of
    /// `state`: down the chain of the in-sync replicas, each hop under an
    /// implicit write lock (no lock round trips: the versions'
    /// compare-and-set orders writes, the lock only keeps this write apart
    /// from other I/O on the chunk). The slot's state becomes the one after
    /// this write before it is sent, and the turn passes on once it is on
    /// the wire; the answer then drops the replicas that did not take it.
    #[allow(clippy::too_many_arguments)]
    async fn write_chunk(
        &self,
        layout: &Layout,
        index: u64,
        mut state: ChunkState,
        offset: u64,
        payload: &[u8],
        writer: &Writer,
        turn: &Turn,
    ) -> std::result::Result<ChunkRecord, Retry> {
        let id = state.id;
        let mut locked = Vec::new();
        for node_id in state.in_sync.clone() {
            match self.replica_conn(id, node_id).await {
                Ok(l) => locked.push(l),
                // Unreachable: out of this write; caught up later.
                Err(_) => {
                    state.in_sync.retain(|n| *n != node_id);
                    state.behind.push((node_id, state.base));
                }
            }
        }
        if !policy::has_quorum(locked.len(), layout.write_quorum) {
            return Err(Retry::No(Error::Quorum(format!(
                "chunk {id}: {} of its in-sync replicas reachable, the file needs {}",
                locked.len(),
                layout.quorum()
            ))));
        }
        let (at, gap) = policy::overwrite_span(state.length as u32, offset);
        let end = at + (gap + payload.len()) as u64;
        let version = writer.next_version();
        let expected = state.base;
        let slot = &turn.slot;
        *slot.state.borrow_mut() = Some(ChunkState {
            base: version,
            length: state.length.max(end),
            ..state.clone()
        });
        slot.in_flight.set(slot.in_flight.get() + 1);
        let sent = || turn.release();
        let result = if gap > 0 {
            let mut buf = vec![0u8; gap + payload.len()];
            buf[gap..].copy_from_slice(payload);
            self.chain_write(layout, id, &locked, at, &buf, expected, version, sent)
                .await
        } else {
            self.chain_write(layout, id, &locked, at, payload, expected, version, sent)
                .await
        };
        slot.in_flight.set(slot.in_flight.get() - 1);
        let r = result.map_err(Retry::No)?;
        let durable = policy::durable_nodes(&locked, r.durable_mask, |l| l.node_id);
        if durable.is_empty() {
            // Nobody applied it: every replica refused on its own.
            return Err(Retry::Refused(status_error(&r, &locked[0].addr)));
        }
        if let Some(s) = slot.state.borrow_mut().as_mut() {
            // Missed this write: refuses every later one, so it is behind.
            for l in locked.iter().filter(|l| !durable.contains(&l.node_id)) {
                s.in_sync.retain(|n| *n != l.node_id);
                s.behind.push((l.node_id, expected));
            }
        }
        if !policy::has_quorum(durable.len(), layout.write_quorum) {
            let n = durable.len();
            return Err(Retry::No(short_of_quorum(
                &r,
                &locked[0].addr,
                id,
                n,
                layout,
            )));
        }
        Ok(ChunkRecord {
            index,
            chunk_id: chunk_u128(id),
            replicas: durable,
            length: policy::length_after_write(state.length as u32, at, gap + payload.len()),
            version,
            capability: self.capability(id),
        })
    }

    /// Copies the writer's current version of each chunk named in
    /// `repairs` ((index, node), from a commit's answer) to that node, and
    /// returns the records to commit with the nodes added. A copy that
    /// fails, or of a chunk with writes in flight, is left out (the control
    /// server asks again later).
    pub(crate) async fn add_replicas(
        &self,
        repairs: &[(u64, u64)],
        layout: &Layout,
        writer: &Writer,
    ) -> Vec<ChunkRecord> {
        let mut out = Vec::new();
        for &(index, node) in repairs {
            let Some(rec) = writer.record(index) else {
                continue;
            };
            let turn = writer.ticket(index);
            turn.wait().await;
            let slot = &turn.slot;
            if slot.in_flight.get() > 0 {
                continue;
            }
            let Some(mut state) = slot.state.borrow_mut().take() else {
                continue;
            };
            if !state.in_sync.contains(&node) && !state.in_sync.is_empty() {
                // A copy that fails leaves the node out of the record: the
                // control server, which asked for it, plans the copy again.
                if self.copy_to_node(&state, node, layout).await.is_ok() {
                    state.in_sync.push(node);
                    state.behind.retain(|(n, _)| *n != node);
                    let mut r = rec;
                    r.replicas = state.in_sync.clone();
                    r.version = state.base;
                    out.push(r);
                }
            }
            *slot.state.borrow_mut() = Some(state);
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

/// How a chunk write failed: worth another try on fresh state, or not.
enum Retry {
    /// Nothing was applied anywhere (every replica refused before its own
    /// write).
    Refused(Error),
    /// Some replicas may hold it, or it is known to have failed.
    No(Error),
}

impl From<Error> for Retry {
    fn from(e: Error) -> Self {
        Retry::No(e)
    }
}
