//! A shard's chunk store: one file per chunk in the shard directory, read
//! and written through the [`crate::disk`] interface (O_DIRECT glommio DMA
//! files in production) in 4 KiB aligned units, a CRC32C per 4 KiB block
//! verified on every read, and writes made durable through the shard's
//! write-ahead [`Journal`] (small writes and overwrites; large writes to a
//! fresh region go to the chunk file, synced through [`GroupCommit`], and
//! put only their CRCs in the journal) before they are acknowledged. The
//! file layout is in [`crate::chunk_file`]; a write's admission in
//! `chunk_store/write.rs`, its durability and apply in order in
//! `chunk_store/pipeline.rs`, replaces in `chunk_store/replace.rs`,
//! checkpoints and replay in `chunk_store/journaled.rs`.
//!
//! Integrity rules (see "Replica integrity" in `docs/architecture.md`):
//! - **Strict versions.** A write applies only on top of the exact version
//!   its writer expects ([`Cas`]), and creates a higher one; a replace
//!   (copy) installs a version at least as high. Any other version is
//!   refused with [`StoreError::StaleVersion`] and nothing is written.
//! - **CRCs as sent.** The writer's CRC of every whole block it sent is
//!   stored as it came (the connection verified the payload against them
//!   before the write got here); the CRC of a block the write covers only
//!   partly is combined from the writer's CRC of its piece and the CRCs of
//!   the stored bytes around it, which are verified first. No CRC of the
//!   writer's bytes is ever recomputed here, so a bit flipped in node
//!   memory after the payload was verified is caught by the next read.
//! - **Fences.** Every write, replace and read calls its `fence` right
//!   before its disk I/O is issued, with no await in between: an operation
//!   whose lock lapsed meanwhile is refused before it touches the disk.
//! - **Copy-then-swap.** A replace writes the whole new chunk to a file
//!   aside, makes it durable, then renames it over the chunk: a failure at
//!   any point leaves the old replica as it was.
//!
//! Concurrency: a chunk's writes are admitted one at a time (version check
//! against the tip, edge merge) and then journalled, applied and
//! acknowledged in that order, several in flight at once
//! (`chunk_store/pipeline.rs`); each apply (in-place blocks and metadata)
//! holds the chunk's I/O lock exclusively, reads share it and see applied,
//! durable writes only.
//!
//! Crash guarantee (tested on the simulated disk in
//! `chunk_store/crash_tests.rs`): a write is acknowledged only once its
//! journal record is durable (for a direct write: its blocks and its
//! record, synced concurrently), so every acknowledged write survives a
//! crash (a direct write's blocks damaged within
//! [`CONFIRM_AFTER`] of its acknowledgment excepted, see
//! `chunk_store/journaled.rs`); and after a crash
//! at any point, with everything not yet synced lost, kept or torn, every
//! 4 KiB block of a chunk holds its old or its new content with a valid
//! CRC. A write changes nothing in its chunk file before its record is
//! durable (a direct write changes only bytes past the chunk's length),
//! and replay redoes a durable record.

#[cfg(test)]
mod crash_tests;
mod gate;
mod journaled;
mod pipeline;
mod replace;
#[cfg(test)]
mod tests;
mod write;

use crate::chunk_file::{
    align_down, align_up, blocks, extend_with_zeros, slot_format, ChunkMeta, SlotFormat, ALIGN,
    CRC_BLOCK, DATA_OFFSET, MAX_CHUNK_SIZE, SLOT_LEN,
};
use crate::disk::dma::DmaDir;
use crate::disk::{DiskDir, DiskFile};
use crate::group_commit::GroupCommit;
use crate::journal::{Journal, Record, FLAG_DATA};
use futures::channel::oneshot;
use glommio::io::DmaBuffer;
use glommio::sync::RwLock;
use ringfs_schema::crc::pieces;
use ringfs_schema::ids::ChunkId;
use ringfs_schema::Version;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;

/// Why a chunk operation failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    #[error("chunk {0} not found")]
    NotFound(ChunkId),
    #[error("chunk {0}: checksum mismatch in CRC block {1} (4 KiB blocks)")]
    Checksum(ChunkId, u64),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("chunk {id} is at version {current}, the request expected {expected}")]
    StaleVersion {
        id: ChunkId,
        current: Version,
        expected: Version,
    },
    /// The operation's lock lapsed (or was released) before it was applied.
    #[error("{0}")]
    Fenced(String),
    /// An I/O error on chunk `id` while doing `what`.
    #[error("chunk {id}: {what}: {source}")]
    Io {
        id: ChunkId,
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The chunk cannot take the operation for a reason of its own (an
    /// earlier write of it failed, no valid header), not an I/O error now.
    #[error("chunk {0}: {1}")]
    Broken(ChunkId, &'static str),
    /// Opening the store or its journal, or a checkpoint, failed; `what`
    /// names the directory, file or step.
    #[error("{what}: {source}")]
    Setup {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The store cannot be used as it is (a chunk file this build does not
    /// read, a store that is closing): the message says what to do.
    #[error("{0}")]
    Unusable(String),
}

/// The version check of a write or replace: the replica must be at
/// `expected`; the write creates `version`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Cas {
    pub(crate) expected: Version,
    pub(crate) version: Version,
}

/// Given to a write's forward: sent or dropped once the forward's frame is
/// on the wire (or the forward gave up), which lets the chunk's next write
/// in (see [`ChunkStore::write`]).
pub(crate) type Sent = oneshot::Sender<()>;

/// Called right before an operation's disk I/O: `Err` refuses it (its lock
/// lapsed). See the module doc.
pub(crate) type Fence<'a> = &'a dyn Fn() -> Result<(), StoreError>;

/// A fence that never refuses (the store's own tests, the scrubber).
pub(crate) fn no_fence() -> Result<(), StoreError> {
    Ok(())
}

/// One chunk: its open file, its applied metadata (what reads see: only
/// durable writes), its I/O lock and its pipeline of writes in flight.
struct Chunk<F> {
    id: ChunkId,
    file: Rc<F>,
    /// Shared, never copied, by reads and the pipe's tip: a chunk's CRC
    /// table is 4 bytes per 4 KiB block (64 KiB for a 64 MiB chunk).
    meta: RefCell<Rc<ChunkMeta>>,
    /// Reads share it; a write's apply (in-place blocks and metadata) and
    /// replaces and deletes hold it exclusively.
    io_lock: RwLock<()>,
    /// Admits the chunk's writes one at a time, in arrival order (FIFO):
    /// see `chunk_store/pipeline.rs`.
    admit: crate::fifo::Fifo,
    /// Writes admitted and not yet applied.
    pipe: RefCell<pipeline::Pipe>,
    /// A write failed after its record may have become durable (or after
    /// it wrote past the chunk's end): later writes are refused until a
    /// restart replays the journal (or a replace installs a new file), so
    /// that no acknowledged write is built on a base that replay changes.
    failed: std::cell::Cell<bool>,
}

impl<F> Chunk<F> {
    fn new(id: ChunkId, file: F, meta: ChunkMeta) -> Self {
        Self {
            id,
            file: Rc::new(file),
            meta: RefCell::new(Rc::new(meta)),
            io_lock: RwLock::new(()),
            admit: crate::fifo::Fifo::default(),
            pipe: RefCell::default(),
            failed: std::cell::Cell::new(false),
        }
    }
}

/// A write's buffer: the payload placed inside a 4 KiB-aligned DMA buffer at
/// the position it has in the covering CRC blocks, so the payload is read
/// from the socket straight into it and written to disk without a copy.
pub(crate) struct WriteBuf {
    buf: DmaBuffer,
    /// Chunk offset of `buf[0]` (CRC-block aligned).
    io_start: u64,
    /// Chunk offset and length of the payload.
    offset: u64,
    len: u64,
}

impl WriteBuf {
    /// Allocates the buffer for a write of `len` bytes at chunk offset `offset`.
    pub(crate) fn new(offset: u64, len: u64) -> Result<Self, StoreError> {
        check_range(offset, len)?;
        let io_start = align_down(offset, CRC_BLOCK);
        let io_end = align_up(offset + len, CRC_BLOCK).max(io_start + ALIGN);
        let buf = crate::buffer_pool::take((io_end - io_start) as usize);
        Ok(Self {
            buf,
            io_start,
            offset,
            len,
        })
    }

    /// Where the payload goes.
    pub(crate) fn payload_mut(&mut self) -> &mut [u8] {
        let s = (self.offset - self.io_start) as usize;
        &mut self.buf.as_bytes_mut()[s..s + self.len as usize]
    }

    /// The payload.
    pub(crate) fn payload(&self) -> &[u8] {
        let s = (self.offset - self.io_start) as usize;
        &self.buf.as_bytes()[s..s + self.len as usize]
    }

    /// The chunk offset of the payload.
    pub(crate) fn offset(&self) -> u64 {
        self.offset
    }

    /// The buffer, to share between the disk write and the forward.
    pub(crate) fn share(self) -> SharedPayload {
        SharedPayload {
            io_start: self.io_start,
            start: (self.offset - self.io_start) as usize,
            len: self.len as usize,
            buf: Rc::new(self.buf),
        }
    }
}

/// A write's payload after preparation, shared between the local disk write
/// and the forward to the next replica.
#[derive(Clone)]
pub(crate) struct SharedPayload {
    buf: Rc<DmaBuffer>,
    /// Chunk offset of `buf[0]` (CRC-block aligned).
    io_start: u64,
    /// The payload within `buf`.
    start: usize,
    len: usize,
}

impl SharedPayload {
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf.as_bytes()[self.start..self.start + self.len]
    }

    /// Once every use is done: the buffer serves the next payload.
    pub(crate) fn recycle(self) {
        if let Ok(buf) = Rc::try_unwrap(self.buf) {
            crate::buffer_pool::give(buf);
        }
    }
}

/// The result of a write or a metadata query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ChunkInfo {
    pub(crate) version: Version,
    /// Valid bytes.
    pub(crate) length: u64,
}

/// What a read returns: whole blocks with their stored CRCs.
pub(crate) struct ReadOut<R> {
    /// The bytes from `offset` (a block boundary) on: whole blocks, the
    /// last one up to the chunk's length. Empty if the range held nothing.
    pub(crate) data: R,
    /// Chunk offset of `data[0]`.
    pub(crate) offset: u64,
    /// The stored CRC of each block of `data`.
    pub(crate) crcs: Vec<u32>,
    pub(crate) info: ChunkInfo,
}

impl StoreError {
    /// A `map_err` closure: an I/O error on chunk `id` while doing `what`.
    fn io(id: ChunkId, what: &'static str) -> impl Fn(std::io::Error) -> StoreError + Copy {
        move |source| StoreError::Io {
            id,
            what: what.into(),
            source,
        }
    }
}

fn check_range(offset: u64, len: u64) -> Result<(), StoreError> {
    match offset.checked_add(len) {
        Some(end) if end <= MAX_CHUNK_SIZE => Ok(()),
        _ => Err(StoreError::InvalidArgument(format!(
            "range {offset}+{len} exceeds the maximum chunk size {MAX_CHUNK_SIZE}"
        ))),
    }
}

fn zero_block_crc() -> u32 {
    thread_local!(static Z: u32 = extend_with_zeros(0, CRC_BLOCK));
    Z.with(|z| *z)
}

/// The name of chunk `id`'s file.
fn file_name(id: ChunkId) -> String {
    format!("{}.chunk", id.file_stem())
}

/// Where a replace writes the new chunk before swapping it in.
fn aside_name(id: ChunkId) -> String {
    format!("{}.chunk.new", id.file_stem())
}

/// Checks a write's versions against the replica's `current` one.
fn check_cas(id: ChunkId, current: Version, cas: &Cas, replace: bool) -> Result<(), StoreError> {
    if current != cas.expected {
        return Err(StoreError::StaleVersion {
            id,
            current,
            expected: cas.expected,
        });
    }
    // A write creates a newer version; a replace may install the same one
    // (repairing a damaged replica with identical content).
    let newer = if replace {
        cas.version >= cas.expected
    } else {
        cas.version > cas.expected
    };
    if !newer {
        return Err(StoreError::InvalidArgument(format!(
            "chunk {id}: version {} is not above the expected {}",
            cas.version, cas.expected
        )));
    }
    Ok(())
}

/// The chunk store of one shard, over the directory `D` (production: a real
/// directory of O_DIRECT files).
pub(crate) struct ChunkStore<D: DiskDir = DmaDir> {
    dir: D,
    chunks: RefCell<HashMap<ChunkId, Rc<Chunk<D::File>>>>,
    commit: GroupCommit<D::File>,
    journal: Journal<D::File>,
    /// Held shared by every write from its journal append to its in-place
    /// apply, exclusively by a checkpoint.
    gate: gate::Gate,
    /// A checkpoint is waiting for the gate or running (the writes that
    /// find the journal full meanwhile leave it to that one).
    checkpointing: Cell<bool>,
    /// Chunks whose header on disk is older than their metadata (written
    /// through the journal since the last checkpoint).
    dirty: RefCell<HashMap<ChunkId, Rc<Chunk<D::File>>>>,
    /// When the first direct write since the last checkpoint applied: its
    /// blocks are checked at replay until a checkpoint (or a later record
    /// of its chunk) confirms them, see `chunk_store/journaled.rs`.
    unconfirmed: Cell<Option<std::time::Instant>>,
    /// Direct writes the journal's replay at open dropped because their
    /// blocks did not verify.
    dropped_at_replay: Cell<u64>,
    cfg: JournalConfig,
}

/// How long an applied direct write may stay unconfirmed before
/// [`ChunkStore::confirm_direct_writes`] checkpoints.
pub(crate) const CONFIRM_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// When writes go through the journal and when it is checkpointed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct JournalConfig {
    /// A checkpoint runs once the journal holds this many bytes of records.
    pub(crate) checkpoint_bytes: u64,
    /// A write of at least this many bytes that only touches blocks past
    /// the chunk's end goes straight to the chunk file (its record carries
    /// only CRCs); smaller writes and every overwrite carry their data in
    /// the journal.
    pub(crate) direct_min: u64,
}

impl Default for JournalConfig {
    fn default() -> Self {
        Self {
            checkpoint_bytes: 64 << 20,
            direct_min: 128 << 10,
        }
    }
}

impl<D: DiskDir> ChunkStore<D>
where
    D::File: 'static,
{
    /// Opens the store in `dir` and recovers every chunk file in it. Files
    /// whose both header slots are damaged are renamed to `*.corrupt` and
    /// skipped; leftovers of replaces that never finished are removed. A
    /// chunk file of the older format 1 fails the open: there is no
    /// migration.
    pub(crate) async fn open(dir: D) -> Result<Self, StoreError> {
        Self::open_with(dir, JournalConfig::default()).await
    }

    /// [`ChunkStore::open`] with a journal configuration; then replays the
    /// journal into the chunks and checkpoints (see `chunk_store/journaled.rs`).
    pub(crate) async fn open_with(dir: D, cfg: JournalConfig) -> Result<Self, StoreError> {
        let setup = |source| StoreError::Setup {
            what: dir.path().display().to_string(),
            source,
        };
        let names = dir.list().map_err(setup)?;
        // Opened or created (never truncated); recovery syncs the directory.
        let jfile = dir.create(journaled::JOURNAL).await.map_err(setup)?;
        let gen = crate::journal::read_generation(&jfile)
            .await
            .map_err(setup)?;
        let store = Self {
            dir,
            chunks: RefCell::new(HashMap::new()),
            commit: GroupCommit::new(),
            journal: Journal::new(jfile, gen),
            gate: gate::Gate::new(),
            checkpointing: Cell::new(false),
            dirty: RefCell::new(HashMap::new()),
            unconfirmed: Cell::new(None),
            dropped_at_replay: Cell::new(0),
            cfg,
        };
        for name in names {
            if name.ends_with(".chunk.new") {
                // A replace that crashed before its swap: the old replica
                // (if any) is still in place.
                let _ = store.dir.remove(&name);
                continue;
            }
            let Some(id) = name
                .strip_suffix(".chunk")
                .and_then(ChunkId::from_file_stem)
            else {
                continue;
            };
            match store.recover(id, &name).await {
                Ok(chunk) => {
                    store.chunks.borrow_mut().insert(id, Rc::new(chunk));
                }
                Err(e @ (StoreError::Setup { .. } | StoreError::Unusable(_))) => return Err(e),
                Err(e) => {
                    tracing::error!("chunk {id}: unrecoverable header ({e}); renaming to .corrupt");
                    let corrupt = format!("{}.corrupt", id.file_stem());
                    let _ = store.dir.rename(&name, &corrupt);
                }
            }
        }
        store.recover_journal().await?;
        Ok(store)
    }

    async fn recover(&self, id: ChunkId, name: &str) -> Result<Chunk<D::File>, StoreError> {
        let io = StoreError::io(id, "recovering");
        let file = self.dir.open(name).await.map_err(io)?;
        let read = file.read_at(0, DATA_OFFSET as usize).await.map_err(io)?;
        // Short when slot B was never written (or its write was lost): it
        // then reads as zeros, an invalid slot.
        let mut head = read.to_vec();
        head.resize(DATA_OFFSET as usize, 0);
        let (a, b) = (&head[..SLOT_LEN], &head[SLOT_LEN..]);
        if slot_format(a) == SlotFormat::V1 || slot_format(b) == SlotFormat::V1 {
            return Err(StoreError::Unusable(format!(
                "{}: chunk file {name} is in format 1 (written by a ringfs-node from before \
                 chunk versions had epochs); this node reads format 2 only and there is no \
                 migration: start it on an empty data directory",
                self.dir.path().display()
            )));
        }
        let meta =
            ChunkMeta::from_slots(a, b).ok_or(StoreError::Broken(id, "no valid header slot"))?;
        Ok(Chunk::new(id, file, meta))
    }

    fn get(&self, id: ChunkId) -> Option<Rc<Chunk<D::File>>> {
        self.chunks.borrow().get(&id).cloned()
    }

    /// Whether `chunk` is still the store's chunk `id` (not deleted or
    /// replaced while its caller waited for its lock).
    fn is_current(&self, chunk: &Rc<Chunk<D::File>>) -> bool {
        self.chunks
            .borrow()
            .get(&chunk.id)
            .is_some_and(|c| Rc::ptr_eq(c, chunk))
    }

    pub(crate) fn contains(&self, id: ChunkId) -> bool {
        self.chunks.borrow().contains_key(&id)
    }

    pub(crate) fn info(&self, id: ChunkId) -> Result<ChunkInfo, StoreError> {
        let c = self.get(id).ok_or(StoreError::NotFound(id))?;
        let m = c.meta.borrow();
        Ok(ChunkInfo {
            version: m.version,
            length: m.length,
        })
    }

    /// The chunk's version and length and a digest of its CRC table (what
    /// `fsck --verify` compares between replicas: no data is read).
    pub(crate) fn digest(&self, id: ChunkId) -> Result<(ChunkInfo, [u8; 32]), StoreError> {
        let c = self.get(id).ok_or(StoreError::NotFound(id))?;
        let m = c.meta.borrow();
        let info = ChunkInfo {
            version: m.version,
            length: m.length,
        };
        Ok((info, m.digest()))
    }

    /// (id, version, length) of every chunk, ascending by id.
    pub(crate) fn inventory(&self) -> Vec<(ChunkId, Version, u64)> {
        let mut v: Vec<_> = self
            .chunks
            .borrow()
            .values()
            .map(|c| {
                let m = c.meta.borrow();
                (c.id, m.version, m.length)
            })
            .collect();
        v.sort();
        v
    }

    /// Bytes the chunks occupy on disk (headers included, 4 KiB granularity).
    pub(crate) fn used_bytes(&self) -> u64 {
        self.chunks
            .borrow()
            .values()
            .map(|c| DATA_OFFSET + align_up(c.meta.borrow().length, ALIGN))
            .sum()
    }

    pub(crate) fn chunk_count(&self) -> usize {
        self.chunks.borrow().len()
    }

    /// Direct writes the journal's replay dropped when this store was
    /// opened: torn (never acknowledged), or damaged before a checkpoint
    /// confirmed them (`chunk_store/journaled.rs`).
    pub(crate) fn dropped_at_replay(&self) -> u64 {
        self.dropped_at_replay.get()
    }

    #[cfg(test)]
    fn group_commit(&self) -> &GroupCommit<D::File> {
        &self.commit
    }

    /// Creates an empty chunk (durably: file, header and directory entry).
    async fn create(&self, id: ChunkId) -> Result<Rc<Chunk<D::File>>, StoreError> {
        let io = StoreError::io(id, "creating");
        let file = self.dir.create(&file_name(id)).await.map_err(io)?;
        let meta = ChunkMeta::default();
        write_header(&file, &meta).await.map_err(io)?;
        // Header slot B stays zero (invalid) until the second update.
        file.fdatasync().await.map_err(io)?;
        self.dir
            .sync()
            .map_err(StoreError::io(id, "syncing the directory"))?;
        let chunk = Rc::new(Chunk::new(id, file, meta));
        self.chunks.borrow_mut().insert(id, chunk.clone());
        Ok(chunk)
    }

    /// Reads the whole blocks covering up to `len` bytes at `offset` (short
    /// at the chunk's end), verifying the CRC of every block, and returns
    /// them with their stored CRCs. `fence` is passed before the disk read.
    pub(crate) async fn read(
        &self,
        id: ChunkId,
        offset: u64,
        len: u64,
        fence: Fence<'_>,
    ) -> Result<ReadOut<<D::File as DiskFile>::Read>, StoreError> {
        check_range(offset, len)?;
        let chunk = self.get(id).ok_or(StoreError::NotFound(id))?;
        let _guard = chunk
            .io_lock
            .read()
            .await
            .map_err(|_| StoreError::NotFound(id))?;
        let meta = chunk.meta.borrow().clone();
        let info = ChunkInfo {
            version: meta.version,
            length: meta.length,
        };
        let end = (offset + len).min(meta.length);
        if offset >= end {
            return Ok(ReadOut {
                data: Default::default(),
                offset,
                crcs: Vec::new(),
                info,
            });
        }
        let io_start = align_down(offset, CRC_BLOCK);
        let io_end = align_up(end, CRC_BLOCK).min(align_up(meta.length, ALIGN));
        fence()?;
        let rr = read_verified(&chunk, &meta, io_start, io_end).await?;
        let valid_end = io_end.min(meta.length);
        let data = D::File::slice(&rr, 0, (valid_end - io_start) as usize)
            .ok_or(StoreError::Broken(id, "short read"))?;
        let first = (io_start / CRC_BLOCK) as usize;
        let crcs = meta.crcs.to_vec(first..blocks(valid_end));
        Ok(ReadOut {
            data,
            offset: io_start,
            crcs,
            info,
        })
    }

    /// Removes chunk `id` (file and metadata) unless its version is above
    /// `newest`: a replica made current by a write after the caller looked
    /// is never deleted.
    pub(crate) async fn delete(&self, id: ChunkId, newest: Version) -> Result<(), StoreError> {
        loop {
            let chunk = self.get(id).ok_or(StoreError::NotFound(id))?;
            let _guards = quiesce(&chunk).await.ok_or(StoreError::NotFound(id))?;
            if !self.is_current(&chunk) {
                continue;
            }
            let current = chunk.meta.borrow().version;
            if current > newest {
                return Err(StoreError::StaleVersion {
                    id,
                    current,
                    expected: newest,
                });
            }
            self.chunks.borrow_mut().remove(&id);
            return self
                .dir
                .remove(&file_name(id))
                .map_err(StoreError::io(id, "removing the chunk file"));
        }
    }
}

/// Takes a chunk for a replace or a delete: its admission (no write gets
/// in), then, once every admitted write finished, its I/O lock. `None` if
/// the I/O lock was closed.
async fn quiesce<F>(
    chunk: &Chunk<F>,
) -> Option<(
    crate::fifo::FifoGuard<&crate::fifo::Fifo>,
    glommio::sync::RwLockWriteGuard<'_, ()>,
)> {
    let admit = chunk.admit.lock().await;
    chunk.drained().await;
    let io = chunk.io_lock.write().await.ok()?;
    Some((admit, io))
}

/// Makes a durable write's header the chunk's: what reads verify against
/// from now on.
fn apply<F>(chunk: &Chunk<F>, mut meta: Rc<ChunkMeta>) -> ChunkInfo {
    let info = ChunkInfo {
        version: meta.version,
        length: meta.length,
    };
    let mut m = chunk.meta.borrow_mut();
    // The header slot counter is the checkpoint's (it may have run since
    // this write read the metadata).
    if meta.seq != m.seq {
        Rc::make_mut(&mut meta).seq = m.seq;
    }
    *m = meta;
    info
}

async fn write_header<F: DiskFile>(file: &F, meta: &ChunkMeta) -> std::io::Result<()> {
    let mut buf = glommio::allocate_dma_buffer(SLOT_LEN);
    meta.encode(buf.as_bytes_mut());
    file.write_at(buf, meta.slot_offset()).await?;
    Ok(())
}

/// Reads chunk range `[io_start, io_end)` (block aligned at the start, 4 KiB
/// aligned at the end) and verifies every block's CRC.
async fn read_verified<F: DiskFile>(
    chunk: &Chunk<F>,
    meta: &ChunkMeta,
    io_start: u64,
    io_end: u64,
) -> Result<F::Read, StoreError> {
    let id = chunk.id;
    let rr = chunk
        .file
        .read_at(DATA_OFFSET + io_start, (io_end - io_start) as usize)
        .await
        .map_err(StoreError::io(id, "reading"))?;
    let valid_end = io_end.min(meta.length);
    if (rr.len() as u64) < valid_end - io_start {
        // A truncated file: report it as damage, never serve zeros.
        return Err(StoreError::Checksum(
            id,
            (io_start + rr.len() as u64) / CRC_BLOCK,
        ));
    }
    let mut b = io_start / CRC_BLOCK;
    while b * CRC_BLOCK < valid_end {
        let s = b * CRC_BLOCK;
        let e = ((b + 1) * CRC_BLOCK).min(meta.length);
        if crc32c::crc32c(&rr[(s - io_start) as usize..(e - io_start) as usize])
            != meta.crcs[b as usize]
        {
            return Err(StoreError::Checksum(id, b));
        }
        b += 1;
    }
    Ok(rr)
}
