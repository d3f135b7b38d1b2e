//! A chunk write: admission (the version check against the chunk's tip,
//! the merge of partial edge blocks with the stored bytes, the fence), its
//! journal record and the header it leaves; `pipeline.rs` then makes it
//! durable and applies it in its chunk's order. The rules it keeps are in
//! the parent module's doc.

use super::*;
impl<D: DiskDir> ChunkStore<D>
where
    D::File: 'static,
{
    /// Writes `data` (prepared with [`WriteBuf::new`], filled, and checked
    /// against `crcs`, the writer's CRC of each piece) to chunk `id`, if the
    /// chunk's tip (the version its last admitted write creates, see
    /// `chunk_store/pipeline.rs`) is `cas.expected`; the chunk then is at
    /// `cas.version`. A missing chunk is created (at version (0, 0)) if
    /// `create` is set.
    ///
    /// `forward` is started with the payload once the write is admitted
    /// and runs concurrently with the local write and sync; the next write
    /// of the chunk is admitted only once `forward` dropped (or sent on)
    /// the [`Sent`] it is given, which it does when its frame is on the
    /// wire, so a chunk's writes are forwarded in the order they are
    /// admitted. When the local write is refused before admission, the
    /// payload is forwarded anyway (the next replicas decide for
    /// themselves). Its output is returned next to the local outcome.
    /// Returns once the write is durable and applied, after every earlier
    /// write of the chunk.
    ///
    /// Steps: take the chunk's admission lock, check the version against
    /// the tip, [`prepare`] the blocks and the new header (waiting first
    /// for pending writes whose blocks the edges need), pass the `fence`,
    /// stage the write (it becomes the tip), and start the forward; then
    /// [`ChunkStore::pipelined`] makes it durable and applies it in order.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn write<Fw, Fut, T>(
        &self,
        id: ChunkId,
        mut data: WriteBuf,
        crcs: &[u32],
        cas: Cas,
        create: bool,
        fence: Fence<'_>,
        forward: Fw,
    ) -> (Result<ChunkInfo, StoreError>, T)
    where
        Fw: FnOnce(SharedPayload, Sent) -> Fut,
        Fut: Future<Output = T>,
    {
        if data.len == 0 {
            let e = StoreError::InvalidArgument("a write needs a payload".into());
            return refused(e, data, forward).await;
        }
        loop {
            let chunk = match self.chunk_for_write(id, create, &cas).await {
                Ok(c) => c,
                Err(e) => return refused(e, data, forward).await,
            };
            let admit = chunk.admit.lock().await;
            if !self.is_current(&chunk) {
                // Deleted or replaced while we waited: look it up again.
                continue;
            }
            let failed = || {
                StoreError::Broken(
                    id,
                    "an earlier write to this chunk failed; it takes writes again after a \
                     restart of the node or a copy of the chunk",
                )
            };
            if chunk.failed.get() {
                return refused(failed(), data, forward).await;
            }
            let mut tip = chunk.tip();
            if let Err(e) = check_cas(id, tip.version, &cas, false) {
                return refused(e, data, forward).await;
            }
            let span = WriteSpan::of(&tip, &data);
            if needs_old(&tip, &data, span.io_end) && chunk.pending_in(data.io_start..span.io_end) {
                // The edge blocks need bytes a pending write changes, which
                // are not in the chunk file before it applies.
                if !chunk.drained().await {
                    return refused(failed(), data, forward).await;
                }
                tip = chunk.tip();
            }
            let new_meta = match prepare(&chunk, &tip, &mut data, crcs, cas.version).await {
                Ok(m) => m,
                Err(e) => return refused(e, data, forward).await,
            };
            #[cfg(feature = "failpoints")]
            if fail::eval("chunk_store::before_persist", |_| ()).is_some() {
                let e = StoreError::Io {
                    id,
                    what: "writing".into(),
                    source: crate::failpoint::injected("chunk_store::before_persist"),
                };
                return refused(e, data, forward).await;
            }
            // Held from here to the apply: a checkpoint waits for no write
            // between its journal record and its apply. Taken after the
            // admission lock: no write that holds the gate waits for an
            // admission, so a checkpoint waiting for the gate cannot block
            // one that it waits for.
            let Ok(gate) = self.gate.enter().await else {
                return refused(StoreError::NotFound(id), data, forward).await;
            };
            if let Err(e) = fence() {
                drop(gate);
                return refused(e, data, forward).await;
            }
            let rec = self.record(id, &tip, &data, &new_meta);
            let staged = chunk.stage(data.io_start..span.io_end, new_meta);
            let payload = data.share();
            let local = async {
                let r = self.pipelined(&chunk, &payload, &rec, staged).await;
                drop(gate);
                r
            };
            let (sent, on_wire) = oneshot::channel();
            let admitted = async move {
                let _ = on_wire.await;
                drop(admit);
            };
            let (local, fwd, ()) = futures::join!(local, forward(payload.clone(), sent), admitted);
            payload.recycle();
            if local.is_ok() && self.journal.used() >= self.cfg.checkpoint_bytes {
                if let Err(e) = self.checkpoint().await {
                    tracing::error!("journal checkpoint failed: {e}");
                }
            }
            return (local, fwd);
        }
    }

    /// The journal record of a prepared write: with its data, unless it is
    /// large and touches only blocks past the chunk's end (then the data
    /// goes straight to the chunk file, see [`JournalConfig::direct_min`]).
    fn record(
        &self,
        id: ChunkId,
        old: &ChunkMeta,
        data: &WriteBuf,
        new_meta: &ChunkMeta,
    ) -> Record {
        let span = data.buf.len() as u64;
        let direct =
            data.io_start >= align_up(old.length, CRC_BLOCK) && span >= self.cfg.direct_min;
        // The old last block (grown with zeros) and a gap of zero blocks
        // before the data change their CRCs too.
        let crc_from = (data.io_start / CRC_BLOCK).min(old.length / CRC_BLOCK);
        let crc_to = ((data.io_start + span) / CRC_BLOCK) as usize;
        Record {
            chunk: id,
            base: old.version,
            version: new_meta.version,
            length: new_meta.length,
            io_start: data.io_start,
            blocks: (span / CRC_BLOCK) as u32,
            flags: if direct { 0 } else { FLAG_DATA },
            crc_from,
            crcs: new_meta.crcs.to_vec(crc_from as usize..crc_to),
        }
    }

    /// The chunk a write goes to: the existing one, or (with `create`) a
    /// new empty one, which only a write expecting (0, 0) may create.
    async fn chunk_for_write(
        &self,
        id: ChunkId,
        create: bool,
        cas: &Cas,
    ) -> Result<Rc<Chunk<D::File>>, StoreError> {
        match self.get(id) {
            Some(c) => Ok(c),
            None if create && cas.expected != Version::NONE => Err(StoreError::StaleVersion {
                id,
                current: Version::NONE,
                expected: cas.expected,
            }),
            None if create => self.create(id).await,
            None => Err(StoreError::NotFound(id)),
        }
    }
}

/// A write refused before its own disk I/O: the payload is still forwarded
/// (each replica of the chain decides for itself).
async fn refused<Fw, Fut, T>(
    e: StoreError,
    data: WriteBuf,
    forward: Fw,
) -> (Result<ChunkInfo, StoreError>, T)
where
    Fw: FnOnce(SharedPayload, Sent) -> Fut,
    Fut: Future<Output = T>,
{
    let payload = data.share();
    let fwd = forward(payload.clone(), oneshot::channel().0).await;
    payload.recycle();
    (Err(e), fwd)
}

/// Fills the edge blocks of `data` (old bytes or zeros) and returns the
/// chunk's header after the write, at `version`. Nothing is written yet.
async fn prepare<F: DiskFile>(
    chunk: &Chunk<F>,
    old: &ChunkMeta,
    data: &mut WriteBuf,
    crcs: &[u32],
    version: Version,
) -> Result<ChunkMeta, StoreError> {
    let span = WriteSpan::of(old, data);
    merge_edges(chunk, old, data, span.io_end).await?;
    data.buf
        .trim_to_size((span.io_end - data.io_start) as usize);
    Ok(span.new_meta(old, data, crcs, version))
}

/// What a write covers on disk.
struct WriteSpan {
    /// End of the bytes written (4 KiB aligned; never past the new length
    /// rounded up to 4 KiB).
    io_end: u64,
    /// The chunk's length after the write.
    new_len: u64,
}

impl WriteSpan {
    fn of(old: &ChunkMeta, data: &WriteBuf) -> Self {
        let end = data.offset + data.len;
        let new_len = old.length.max(end);
        let io_end = align_up(end, CRC_BLOCK)
            .min(align_up(new_len, ALIGN))
            .max(data.io_start + ALIGN);
        Self { io_end, new_len }
    }

    /// The header after the write: `old`'s with, for every block the
    /// payload touches, the writer's CRC of its piece (combined with the
    /// CRCs of the merged old bytes or zeros around it when the piece is
    /// partial), zero CRCs for the gap a write past the end leaves, and the
    /// old last block's CRC grown with zeros.
    fn new_meta(
        &self,
        old: &ChunkMeta,
        data: &WriteBuf,
        piece_crcs: &[u32],
        version: Version,
    ) -> ChunkMeta {
        let (io_start, new_len) = (data.io_start, self.new_len);
        let mut crcs = old.crcs.clone();
        crcs.resize(blocks(new_len));
        let first_block = io_start / CRC_BLOCK;
        if !old.length.is_multiple_of(CRC_BLOCK) {
            // The old last block ends before this write's range: it now
            // extends with zeros to its full size (or to the new length).
            let ob = old.length / CRC_BLOCK;
            if ob < first_block {
                let grown = (new_len.min((ob + 1) * CRC_BLOCK)) - old.length;
                crcs.set(ob as usize, extend_with_zeros(old.crcs[ob as usize], grown));
            }
        }
        let gap_from = blocks(old.length) as u64;
        for b in gap_from..first_block {
            crcs.set(b as usize, zero_block_crc());
        }
        let bytes = data.buf.as_bytes();
        let at = |chunk_offset: u64| (chunk_offset - io_start) as usize;
        for (piece, &piece_crc) in pieces(data.offset, data.len as usize).zip(piece_crcs) {
            let (ps, pe) = (
                data.offset + piece.start as u64,
                data.offset + piece.end as u64,
            );
            let b = ps / CRC_BLOCK;
            let (bs, be) = (b * CRC_BLOCK, ((b + 1) * CRC_BLOCK).min(new_len));
            let head = &bytes[at(bs)..at(ps)];
            let tail = &bytes[at(pe)..at(be)];
            let mut crc = piece_crc;
            if !head.is_empty() {
                crc = crc32c::crc32c_combine(crc32c::crc32c(head), crc, (pe - ps) as usize);
            }
            if !tail.is_empty() {
                crc = crc32c::crc32c_combine(crc, crc32c::crc32c(tail), tail.len());
            }
            crcs.set(b as usize, crc);
        }
        ChunkMeta {
            seq: old.seq,
            version,
            length: new_len,
            crcs,
        }
    }
}

/// Whether the edge blocks of `data` (up to `io_end`) need bytes `old`
/// holds: a partial first or last block inside the chunk.
fn needs_old(old: &ChunkMeta, data: &WriteBuf, io_end: u64) -> bool {
    let (io_start, off, end) = (data.io_start, data.offset, data.offset + data.len);
    (off > io_start && io_start < old.length) || (end < io_end && end < old.length)
}

/// Fills the parts of `data.buf[..io_end - io_start]` outside the payload:
/// old chunk bytes where the chunk has them (their blocks verified first),
/// zeros elsewhere.
async fn merge_edges<F: DiskFile>(
    chunk: &Chunk<F>,
    old: &ChunkMeta,
    data: &mut WriteBuf,
    io_end: u64,
) -> Result<(), StoreError> {
    let (io_start, off, len) = (data.io_start, data.offset, data.len);
    let head = (off - io_start) as usize;
    let tail_from = (off + len - io_start) as usize;
    let tail_to = (io_end - io_start) as usize;
    let needs_old = needs_old(old, data, io_end);
    let buf = data.buf.as_bytes_mut();
    buf[..head].fill(0);
    buf[tail_from..tail_to].fill(0);
    if !needs_old {
        return Ok(());
    }
    let old_end = io_end.min(align_up(old.length, ALIGN));
    // Verify only the old blocks whose bytes survive this write: a corrupt
    // block that is wholly overwritten is simply repaired.
    let rr = chunk
        .file
        .read_at(DATA_OFFSET + io_start, (old_end - io_start) as usize)
        .await
        .map_err(|source| StoreError::Io {
            id: chunk.id,
            what: format!("reading {io_start}..{old_end}"),
            source,
        })?;
    // The file may end before `old.length`: a pending write past the end
    // leaves a gap whose blocks are zeros until it applies (its own blocks
    // are not read here: `pending_in`). Bytes past the file's end read as
    // zeros, as the chunk file invariant says.
    let mut b = io_start / CRC_BLOCK;
    while b * CRC_BLOCK < old_end.min(old.length) {
        let s = b * CRC_BLOCK;
        let e = ((b + 1) * CRC_BLOCK).min(old.length);
        let overwritten = off <= s && off + len >= e;
        if !overwritten {
            let (rs, re) = ((s - io_start) as usize, (e - io_start) as usize);
            let got = rr.get(rs..re.min(rr.len())).unwrap_or_default();
            let crc = extend_with_zeros(crc32c::crc32c(got), (re - rs - got.len()) as u64);
            if crc != old.crcs[b as usize] {
                return Err(StoreError::Checksum(chunk.id, b));
            }
        }
        b += 1;
    }
    let avail = (rr.len() as u64).min(old.length.saturating_sub(io_start)) as usize;
    let h = head.min(avail);
    buf[..h].copy_from_slice(&rr[..h]);
    if tail_from < avail {
        let t = tail_to.min(avail);
        buf[tail_from..t].copy_from_slice(&rr[tail_from..t]);
    }
    Ok(())
}
