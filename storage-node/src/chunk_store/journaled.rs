//! The chunk store's side of the journal (`crate::journal`): checkpoints
//! and recovery by replay.
//!
//! A checkpoint (when the journal holds [`JournalConfig::checkpoint_bytes`],
//! and at every open) waits until no write is between its journal append
//! and its in-place apply, then, for every chunk written through the
//! journal since the last one:
//! 1. fdatasync of the chunk file (the blocks applied in place are durable);
//! 2. the chunk's header (CRC table, version, length) to its other slot, and
//!    fdatasync again;
//! 3. only then is the journal emptied (a new generation).
//!
//! Step 1 before step 2 matters: a header that became durable describes
//! blocks that already are. A crash anywhere leaves the journal's records
//! in place until step 3, so replay redoes what a torn step left.
//!
//! Replay applies the records in journal order, each only on top of the
//! version it names as its base (so a record already in a durable header,
//! or one whose predecessor was dropped, is skipped), stopping at the first
//! record that does not verify (torn, or of an older generation). A record
//! with data writes its blocks in place; one without (a direct write to a
//! fresh region) sets the chunk's CRCs, length and version. A direct
//! write's blocks are synced concurrently with its record, so a direct
//! record may describe torn blocks of a write that was never acknowledged:
//! - followed by a record of its chunk, it is kept as it is: the next write
//!   of a chunk reserves its record only after the blocks of the one before
//!   are synced (`pipeline.rs`), and it may have overwritten some of them
//!   in place since;
//! - the last of its chunk, it is kept only if the chunk file's blocks
//!   verify against it.
//!
//! Replay cannot tell a torn block from one damaged after an acknowledged
//! write, so damage to an unconfirmed direct write drops that write on this
//! replica (the replica goes back a version, which the control server sees
//! as behind and repairs from another replica; at R = 1 the chunk's newest
//! version is lost). To keep that window short, a checkpoint confirms every
//! direct write within [`CONFIRM_AFTER`] of its apply
//! ([`ChunkStore::confirm_direct_writes`], called by the shard): after it a
//! damaged block is a checksum error on read, as in any chunk. Then every
//! chunk file's bytes past the chunk's length (a direct
//! write whose record was lost) are zeroed, which keeps the chunk file
//! invariant that bytes past the length read as zeros.

use super::*;
use crate::journal::{header_len, RECORDS_AT};
use std::collections::HashSet;
use std::time::Duration;

/// The journal's file name in the shard directory (not a `.chunk` name).
pub(super) const JOURNAL: &str = "journal";

/// Zeros written per I/O when clearing a chunk file's tail.
const ZERO_IO: u64 = 1 << 20;

impl<D: DiskDir> ChunkStore<D>
where
    D::File: 'static,
{
    /// Checkpoints if the journal is (still) over its size: see the module
    /// doc.
    pub(super) async fn checkpoint(&self) -> Result<(), StoreError> {
        if self.journal.used() < self.cfg.checkpoint_bytes {
            return Ok(());
        }
        self.checkpoint_now().await
    }

    /// Checkpoints if a direct write applied `age` ago or more is not
    /// confirmed yet (the module doc): the shard calls this every quarter
    /// of [`CONFIRM_AFTER`] with that age, so a direct write's blocks are
    /// checked at replay only within about that long of its
    /// acknowledgment, and with zero when it stops.
    pub(crate) async fn confirm_direct_writes(&self, age: Duration) -> Result<(), StoreError> {
        match self.unconfirmed.get() {
            Some(t) if t.elapsed() >= age => {
                let r = self.checkpoint_now().await;
                if r.is_err() {
                    // The journal refuses everything until a restart now,
                    // whose replay checks the blocks: asking again would
                    // only fail again.
                    self.unconfirmed.set(None);
                }
                r
            }
            _ => Ok(()),
        }
    }

    /// Checkpoints unless one is under way.
    async fn checkpoint_now(&self) -> Result<(), StoreError> {
        if self.checkpointing.replace(true) {
            return Ok(());
        }
        let _one = Checkpointing(&self.checkpointing);
        let asked = std::time::Instant::now();
        let _gate =
            self.gate.exclusive().await.map_err(|e| {
                StoreError::Unusable(format!("checkpoint: the store is closing: {e}"))
            })?;
        let started = std::time::Instant::now();
        let chunks = self.dirty.borrow().len();
        let r = self.checkpoint_locked().await;
        tracing::debug!(
            chunks,
            waited_us = (started - asked).as_micros() as u64,
            took_us = started.elapsed().as_micros() as u64,
            "journal checkpoint"
        );
        r
    }

    /// The checkpoint itself, with the gate held exclusively (or at open).
    async fn checkpoint_locked(&self) -> Result<(), StoreError> {
        let fail = |what: &str, source: std::io::Error| {
            let what = format!("checkpoint: {what}");
            self.journal.poison(format!("{what}: {source}"));
            StoreError::Setup { what, source }
        };
        let dirty: Vec<_> = std::mem::take(&mut *self.dirty.borrow_mut())
            .into_values()
            .collect();
        let synced = futures::future::join_all(dirty.iter().map(|c| c.file.fdatasync())).await;
        synced
            .into_iter()
            .try_for_each(|r| r)
            .map_err(|e| fail("syncing chunk data", e))?;
        failpoint!("journal::checkpoint_before_headers", |_| Err(fail(
            "headers",
            crate::failpoint::injected("journal::checkpoint_before_headers")
        )));
        let headers = futures::future::join_all(dirty.iter().map(|c| async {
            let meta = {
                let mut m = c.meta.borrow_mut();
                Rc::make_mut(&mut m).seq += 1;
                m.clone()
            };
            write_header(&*c.file, &meta).await?;
            c.file.fdatasync().await
        }))
        .await;
        headers
            .into_iter()
            .try_for_each(|r| r)
            .map_err(|e| fail("writing chunk headers", e))?;
        self.journal
            .reset()
            .await
            .map_err(|e| fail("emptying the journal", e))?;
        self.unconfirmed.set(None);
        Ok(())
    }

    /// Replays the journal into the chunks just loaded, clears the chunk
    /// files' tails and checkpoints (see the module doc). The journal file
    /// may be new: its name is made durable too.
    pub(super) async fn recover_journal(&self) -> Result<(), StoreError> {
        let setup = |source| StoreError::Setup {
            what: format!("{}: journal", self.dir.path().display()),
            source,
        };
        let file = self.journal.file();
        let gen = crate::journal::read_generation(file).await.map_err(setup)?;
        // Pass 1: the valid prefix of records (data verified, not kept).
        let mut records = Vec::new();
        let mut pos = RECORDS_AT;
        while let Some(rec) = self.next_record(gen, pos).await.map_err(setup)? {
            let at = pos;
            pos += rec.size();
            records.push((at, rec));
        }
        // A direct record followed by a record of its chunk had its blocks
        // synced before that one was reserved (`pipeline.rs`); the last one
        // of its chunk may not have.
        let mut seen = HashSet::new();
        let mut last = vec![false; records.len()];
        for (i, (_, rec)) in records.iter().enumerate().rev() {
            last[i] = seen.insert(rec.chunk);
        }
        let mut replayed = 0u64;
        for ((at, rec), last) in records.iter().zip(last) {
            if self.replay(*at, rec, last).await? {
                replayed += 1;
            }
        }
        let chunks: Vec<_> = self.chunks.borrow().values().cloned().collect();
        for c in chunks {
            self.clear_tail(&c).await?;
        }
        if replayed > 0 {
            tracing::info!("journal: replayed {replayed} records");
        }
        self.checkpoint_locked().await?;
        self.preallocate().await.map_err(setup)?;
        self.dir.sync().map_err(setup)
    }

    /// Writes zeros over the journal up to its checkpoint size, once (a
    /// new journal): appends then overwrite allocated, written blocks, so
    /// an fdatasync of the journal has no file size or extent change to
    /// commit with the data (a journal commit of the file system's own).
    /// Zeros never read as a record.
    async fn preallocate(&self) -> std::io::Result<()> {
        let file = self.journal.file();
        let want = RECORDS_AT + self.cfg.checkpoint_bytes;
        let mut at = file.size().await?;
        if at >= want {
            return Ok(());
        }
        at = align_up(at, ALIGN).max(RECORDS_AT);
        while at < want {
            let n = (want - at).min(ZERO_IO);
            let mut buf = glommio::allocate_dma_buffer(align_up(n, ALIGN) as usize);
            buf.as_bytes_mut().fill(0);
            file.write_at(buf, at).await?;
            at += n;
        }
        file.fdatasync().await
    }

    /// The record at `pos`, if a valid one of generation `gen` is there
    /// (its header CRC and every data block's CRC verify).
    async fn next_record(&self, gen: u64, pos: u64) -> std::io::Result<Option<Record>> {
        let file = self.journal.file();
        let head = file.read_at(pos, ALIGN as usize).await?;
        let Some(hlen) = Record::peek(&head, gen, pos) else {
            return Ok(None);
        };
        let hdr = file.read_at(pos, hlen as usize).await?;
        if hdr.len() as u64 != hlen {
            return Ok(None);
        }
        let Some(rec) = Record::verify_header(&hdr).filter(plausible) else {
            return Ok(None);
        };
        if rec.flags & FLAG_DATA != 0 && self.record_data(pos, &rec).await?.is_none() {
            return Ok(None);
        }
        Ok(Some(rec))
    }

    /// The data blocks of the record at `pos`, if they are all there and
    /// verify.
    async fn record_data(
        &self,
        pos: u64,
        rec: &Record,
    ) -> std::io::Result<Option<<D::File as DiskFile>::Read>> {
        let len = rec.blocks as usize * CRC_BLOCK as usize;
        let at = pos + header_len(rec.crcs.len());
        let data = self.journal.file().read_at(at, len).await?;
        Ok((data.len() == len && blocks_verify(rec, &data)).then_some(data))
    }

    /// Applies the record at journal offset `pos` if its chunk is at its
    /// base version (and, for a direct record that is the `last` of its
    /// chunk, if the chunk file's blocks verify against it); whether it did.
    async fn replay(&self, pos: u64, rec: &Record, last: bool) -> Result<bool, StoreError> {
        let id = rec.chunk;
        let io = StoreError::io(id, "journal replay");
        // A chunk deleted since (a write creates its file durably first).
        let Some(chunk) = self.get(id) else {
            return Ok(false);
        };
        let mut meta = ChunkMeta::clone(&chunk.meta.borrow());
        if meta.version != rec.base {
            return Ok(false);
        }
        let at = DATA_OFFSET + rec.io_start;
        let len = rec.blocks as usize * CRC_BLOCK as usize;
        if rec.flags & FLAG_DATA == 0 && last {
            // Its blocks were synced concurrently with the record: torn
            // unless they verify (the write was not acknowledged then, and
            // its region is cleared below).
            let blocks = chunk.file.read_at(at, len).await.map_err(io)?;
            if blocks.len() != len || !blocks_verify(rec, &blocks) {
                tracing::warn!(
                    chunk = %id,
                    version = %rec.version,
                    "journal replay: a direct write's blocks do not verify; dropped (never \
                     acknowledged, or damaged before a checkpoint confirmed it)"
                );
                self.dropped_at_replay.set(self.dropped_at_replay.get() + 1);
                return Ok(false);
            }
        } else if rec.flags & FLAG_DATA != 0 {
            let data = self
                .record_data(pos, rec)
                .await
                .map_err(io)?
                .ok_or_else(|| io(std::io::Error::other("a verified record changed")))?;
            let mut buf = glommio::allocate_dma_buffer(len);
            buf.as_bytes_mut().copy_from_slice(&data);
            chunk.file.write_at(buf, at).await.map_err(io)?;
        }
        meta.crcs.resize(blocks(rec.length));
        let from = rec.crc_from as usize;
        meta.crcs.copy_from_slice(from, &rec.crcs);
        meta.length = rec.length;
        meta.version = rec.version;
        *chunk.meta.borrow_mut() = Rc::new(meta);
        self.dirty.borrow_mut().insert(id, chunk);
        Ok(true)
    }

    /// Zeros the chunk file past the chunk's length (rounded up to 4 KiB).
    async fn clear_tail(&self, chunk: &Rc<Chunk<D::File>>) -> Result<(), StoreError> {
        let io = StoreError::io(chunk.id, "clearing the tail");
        let size = chunk.file.size().await.map_err(io)?;
        let mut at = DATA_OFFSET + align_up(chunk.meta.borrow().length, ALIGN);
        if size <= at {
            return Ok(());
        }
        while at < size {
            let n = (size - at).min(ZERO_IO);
            let mut buf = glommio::allocate_dma_buffer(align_up(n, ALIGN) as usize);
            buf.as_bytes_mut().fill(0);
            chunk.file.write_at(buf, at).await.map_err(io)?;
            at += n;
        }
        self.dirty.borrow_mut().insert(chunk.id, chunk.clone());
        Ok(())
    }
}

/// Whether a record's fields describe a write a chunk can hold (a record
/// whose header CRC verifies but whose fields do not is damage: replay
/// stops there).
fn plausible(rec: &Record) -> bool {
    let data_end = rec.io_start + rec.blocks as u64 * CRC_BLOCK;
    rec.length <= MAX_CHUNK_SIZE
        && rec.io_start.is_multiple_of(CRC_BLOCK)
        && rec.blocks > 0
        && data_end <= align_up(rec.length, CRC_BLOCK)
        && rec.crc_from <= rec.io_start / CRC_BLOCK
        && rec.crc_from + rec.crcs.len() as u64 == data_end / CRC_BLOCK
}

/// Whether `data` (the record's blocks) matches the record's CRCs, each
/// block over its bytes up to the record's length.
fn blocks_verify(rec: &Record, data: &[u8]) -> bool {
    let first = rec.io_start / CRC_BLOCK;
    data.chunks(CRC_BLOCK as usize)
        .enumerate()
        .all(|(i, block)| {
            let b = first + i as u64;
            let valid = (rec.length - b * CRC_BLOCK).min(CRC_BLOCK) as usize;
            crc32c::crc32c(&block[..valid]) == rec.crcs[(b - rec.crc_from) as usize]
        })
}

/// Marks a checkpoint under way until dropped (also when its future is).
struct Checkpointing<'a>(&'a std::cell::Cell<bool>);

impl Drop for Checkpointing<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}
