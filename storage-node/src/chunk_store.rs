//! A shard's chunk store: one file per chunk in the shard directory, read
//! and written through the [`crate::disk`] interface (O_DIRECT glommio DMA
//! files in production) in 4 KiB aligned units, a CRC32C per 4 KiB block
//! verified on every read, and writes made durable through the shard's
//! [`GroupCommit`] before they are acknowledged. The file layout is in
//! [`crate::chunk_file`].
//!
//! Concurrency: each chunk has an async read/write lock, so writes to one
//! chunk are serialized (read-modify-write of edge blocks and the header
//! update are atomic with respect to other I/O on the chunk) while reads share.
//!
//! Crash guarantee (today's; tested on the simulated disk in
//! `chunk_store/crash_tests.rs`): a write is acknowledged only once its data
//! and header are durable, so every acknowledged write survives a crash.
//! A crash before that leaves, in the blocks that write covered, the old
//! content, the new content, or blocks that disagree with the surviving
//! header slot, which reads report as checksum errors; never other bytes.
//! Blocks it did not cover keep their acknowledged content.

#[cfg(test)]
mod crash_tests;
#[cfg(test)]
mod tests;

use crate::chunk_file::{
    align_down, align_up, blocks, extend_with_zeros, ChunkMeta, ALIGN, CRC_BLOCK, DATA_OFFSET,
    MAX_CHUNK_SIZE, SLOT_LEN,
};
use crate::disk::dma::DmaDir;
use crate::disk::{DiskDir, DiskFile};
use crate::group_commit::GroupCommit;
use glommio::io::DmaBuffer;
use glommio::sync::RwLock;
use ringfs_schema::ids::ChunkId;
use std::cell::RefCell;
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
    #[error("chunk {id}: version {requested} is not newer than the stored version {current}")]
    StaleVersion {
        id: ChunkId,
        current: u64,
        requested: u64,
    },
    #[error("chunk {0}: I/O error: {1}")]
    Io(ChunkId, String),
    #[error("store I/O error: {0}")]
    Setup(String),
}

/// One chunk: its open file, its durable metadata and its I/O lock.
struct Chunk<F> {
    id: ChunkId,
    file: Rc<F>,
    meta: RefCell<ChunkMeta>,
    io_lock: RwLock<()>,
}

impl<F> Chunk<F> {
    fn new(id: ChunkId, file: F, meta: ChunkMeta) -> Self {
        Self {
            id,
            file: Rc::new(file),
            meta: RefCell::new(meta),
            io_lock: RwLock::new(()),
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

    /// The prepared buffer, to share between the disk write and the forward.
    fn share(self) -> SharedPayload {
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
    fn recycle(self) {
        if let Ok(buf) = Rc::try_unwrap(self.buf) {
            crate::buffer_pool::give(buf);
        }
    }
}

/// The result of a write or a metadata query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ChunkInfo {
    pub(crate) version: u64,
    /// Valid bytes.
    pub(crate) length: u64,
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

/// The chunk store of one shard, over the directory `D` (production: a real
/// directory of O_DIRECT files).
pub(crate) struct ChunkStore<D: DiskDir = DmaDir> {
    dir: D,
    chunks: RefCell<HashMap<ChunkId, Rc<Chunk<D::File>>>>,
    commit: GroupCommit<D::File>,
}

impl<D: DiskDir> ChunkStore<D>
where
    D::File: 'static,
{
    /// Opens the store in `dir` and recovers every chunk file in it. Files
    /// whose both header slots are damaged are renamed to `*.corrupt` and
    /// skipped.
    pub(crate) async fn open(dir: D) -> Result<Self, StoreError> {
        let names = dir
            .list()
            .map_err(|e| StoreError::Setup(format!("{}: {e}", dir.path().display())))?;
        let store = Self {
            dir,
            chunks: RefCell::new(HashMap::new()),
            commit: GroupCommit::new(),
        };
        for name in names {
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
                Err(e) => {
                    tracing::error!("chunk {id}: unrecoverable header ({e}); renaming to .corrupt");
                    let corrupt = format!("{}.corrupt", id.file_stem());
                    let _ = store.dir.rename(&name, &corrupt);
                }
            }
        }
        Ok(store)
    }

    async fn recover(&self, id: ChunkId, name: &str) -> Result<Chunk<D::File>, StoreError> {
        let io = |e: std::io::Error| StoreError::Io(id, e.to_string());
        let file = self.dir.open(name).await.map_err(io)?;
        let head = file.read_at(0, DATA_OFFSET as usize).await.map_err(io)?;
        if head.len() < DATA_OFFSET as usize {
            return Err(StoreError::Io(id, "file shorter than its header".into()));
        }
        let meta = ChunkMeta::from_slots(&head[..SLOT_LEN], &head[SLOT_LEN..])
            .ok_or_else(|| StoreError::Io(id, "no valid header slot".into()))?;
        Ok(Chunk::new(id, file, meta))
    }

    fn get(&self, id: ChunkId) -> Option<Rc<Chunk<D::File>>> {
        self.chunks.borrow().get(&id).cloned()
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

    /// (id, version, length) of every chunk, ascending by id.
    pub(crate) fn inventory(&self) -> Vec<(ChunkId, u64, u64)> {
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

    #[cfg(test)]
    fn group_commit(&self) -> &GroupCommit<D::File> {
        &self.commit
    }

    /// Creates an empty chunk (durably: file, header and directory entry).
    async fn create(&self, id: ChunkId) -> Result<Rc<Chunk<D::File>>, StoreError> {
        let io = |e: std::io::Error| StoreError::Io(id, e.to_string());
        let file = self.dir.create(&file_name(id)).await.map_err(io)?;
        let meta = ChunkMeta::default();
        write_header(&file, &meta).await.map_err(io)?;
        // Header slot B stays zero (invalid) until the second update.
        file.fdatasync().await.map_err(io)?;
        self.dir
            .sync()
            .map_err(|e| StoreError::Io(id, format!("syncing directory: {e}")))?;
        let chunk = Rc::new(Chunk::new(id, file, meta));
        self.chunks.borrow_mut().insert(id, chunk.clone());
        Ok(chunk)
    }

    /// Writes `data` (prepared with [`WriteBuf::new`] and filled) to chunk
    /// `id`, creating the chunk if `create` is set and it does not exist.
    /// `version` 0 means "current + 1"; otherwise it must exceed the current
    /// version. Once the edge blocks are merged, `forward` is started with the
    /// payload and the new version and runs concurrently with the local write
    /// and sync; its output is returned next to the local outcome (None if the
    /// local write failed before it could start). Returns once the write is
    /// durable.
    ///
    /// Steps: take the chunk's write lock, [`prepare`] the blocks and the
    /// new header, write and sync them ([`ChunkStore::persist`]) while the
    /// payload is forwarded, and only then [`apply`] the new header.
    pub(crate) async fn write<Fw, Fut, T>(
        &self,
        id: ChunkId,
        mut data: WriteBuf,
        version: u64,
        create: bool,
        forward: Fw,
    ) -> (Result<ChunkInfo, StoreError>, Option<T>)
    where
        Fw: FnOnce(SharedPayload, u64) -> Fut,
        Fut: Future<Output = T>,
    {
        let chunk = match self.chunk_for_write(id, create).await {
            Ok(c) => c,
            Err(e) => return (Err(e), None),
        };
        let Ok(_guard) = chunk.io_lock.write().await else {
            return (Err(StoreError::NotFound(id)), None);
        };
        if !self.contains(id) {
            // Deleted while we waited for the I/O lock.
            return (Err(StoreError::NotFound(id)), None);
        }
        let new_meta = match prepare(&chunk, &mut data, version).await {
            Ok(m) => m,
            Err(e) => return (Err(e), None),
        };
        let payload = data.share();
        let (local, fwd) = futures::join!(
            self.persist(&chunk, &payload, &new_meta),
            forward(payload.clone(), new_meta.version)
        );
        payload.recycle();
        let local = match local {
            Ok(()) => Ok(apply(&chunk, new_meta)),
            // The on-disk blocks may now disagree with the (unchanged) CRCs:
            // later reads report a checksum error, never wrong bytes.
            Err(e) => Err(StoreError::Io(id, e.to_string())),
        };
        (local, Some(fwd))
    }

    /// The chunk a write goes to: the existing one, or (with `create`) a
    /// new empty one.
    async fn chunk_for_write(
        &self,
        id: ChunkId,
        create: bool,
    ) -> Result<Rc<Chunk<D::File>>, StoreError> {
        match self.get(id) {
            Some(c) => Ok(c),
            None if create => self.create(id).await,
            None => Err(StoreError::NotFound(id)),
        }
    }

    /// Writes a prepared write's blocks and header, then waits for the
    /// group commit to make them durable.
    async fn persist(
        &self,
        chunk: &Chunk<D::File>,
        data: &SharedPayload,
        new_meta: &ChunkMeta,
    ) -> std::io::Result<()> {
        // Data and header go to disk concurrently: neither is durable
        // before the sync below, so ordering them would buy nothing. A
        // crash before the sync leaves blocks that disagree with one of
        // the two header slots, which reads report as checksum errors.
        let (d, h) = futures::join!(
            chunk
                .file
                .write_rc_at(data.buf.clone(), DATA_OFFSET + data.io_start),
            write_header(&*chunk.file, new_meta)
        );
        d?;
        h?;
        failpoint!("chunk_store::before_sync", |_| Err(
            crate::failpoint::injected("chunk_store::before_sync")
        ));
        self.commit.sync(chunk.file.clone()).await?;
        failpoint!("chunk_store::before_apply", |_| Err(
            crate::failpoint::injected("chunk_store::before_apply")
        ));
        Ok(())
    }

    /// Reads up to `len` bytes at `offset` (short at the chunk's end),
    /// verifying the CRC of every block touched.
    pub(crate) async fn read(
        &self,
        id: ChunkId,
        offset: u64,
        len: u64,
    ) -> Result<(<D::File as DiskFile>::Read, ChunkInfo), StoreError> {
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
            return Ok((Default::default(), info));
        }
        let io_start = align_down(offset, CRC_BLOCK);
        let io_end = align_up(end, CRC_BLOCK).min(align_up(meta.length, ALIGN));
        let rr = read_verified(&chunk, &meta, io_start, io_end).await?;
        let out = D::File::slice(&rr, (offset - io_start) as usize, (end - offset) as usize)
            .ok_or_else(|| StoreError::Io(id, "short read".into()))?;
        Ok((out, info))
    }

    /// Removes chunk `id` (file and metadata).
    pub(crate) async fn delete(&self, id: ChunkId) -> Result<(), StoreError> {
        let chunk = self.get(id).ok_or(StoreError::NotFound(id))?;
        let _guard = chunk
            .io_lock
            .write()
            .await
            .map_err(|_| StoreError::NotFound(id))?;
        if self.chunks.borrow_mut().remove(&id).is_none() {
            return Err(StoreError::NotFound(id));
        }
        self.dir
            .remove(&file_name(id))
            .map_err(|e| StoreError::Io(id, e.to_string()))?;
        Ok(())
    }
}

/// Picks the write's version, fills the edge blocks of `data` (old bytes
/// or zeros) and returns the chunk's header after the write. Nothing is
/// written yet.
async fn prepare<F: DiskFile>(
    chunk: &Chunk<F>,
    data: &mut WriteBuf,
    version: u64,
) -> Result<ChunkMeta, StoreError> {
    let old = chunk.meta.borrow().clone();
    let new_version = next_version(chunk.id, &old, version)?;
    let span = WriteSpan::of(&old, data);
    merge_edges(chunk, &old, data, span.io_end).await?;
    data.buf
        .trim_to_size((span.io_end - data.io_start) as usize);
    Ok(span.new_meta(&old, data, new_version))
}

/// Makes a durable write's header the chunk's: what reads verify against
/// from now on.
fn apply<F>(chunk: &Chunk<F>, meta: ChunkMeta) -> ChunkInfo {
    let info = ChunkInfo {
        version: meta.version,
        length: meta.length,
    };
    *chunk.meta.borrow_mut() = meta;
    info
}

/// The version a write gets: `requested`, or the current one + 1 for 0.
fn next_version(id: ChunkId, old: &ChunkMeta, requested: u64) -> Result<u64, StoreError> {
    match requested {
        0 => Ok(old.version + 1),
        v if v > old.version => Ok(v),
        v => Err(StoreError::StaleVersion {
            id,
            current: old.version,
            requested: v,
        }),
    }
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

    /// The header after the write: `old`'s with the CRCs of the blocks in
    /// `data` (merged), of the zeros a write past the end leaves between,
    /// and of the old last block grown with zeros.
    fn new_meta(&self, old: &ChunkMeta, data: &WriteBuf, version: u64) -> ChunkMeta {
        let (io_start, new_len) = (data.io_start, self.new_len);
        let mut crcs = old.crcs.clone();
        crcs.resize(blocks(new_len), 0);
        let first_block = io_start / CRC_BLOCK;
        if !old.length.is_multiple_of(CRC_BLOCK) {
            // The old last block ends before this write's range: it now
            // extends with zeros to its full size (or to the new length).
            let ob = old.length / CRC_BLOCK;
            if ob < first_block {
                let grown = (new_len.min((ob + 1) * CRC_BLOCK)) - old.length;
                crcs[ob as usize] = extend_with_zeros(old.crcs[ob as usize], grown);
            }
        }
        let gap_from = blocks(old.length) as u64;
        for b in gap_from..first_block {
            crcs[b as usize] = zero_block_crc();
        }
        let bytes = data.buf.as_bytes();
        let mut b = first_block;
        while b * CRC_BLOCK < self.io_end.min(new_len) {
            let s = b * CRC_BLOCK;
            let e = ((b + 1) * CRC_BLOCK).min(new_len);
            crcs[b as usize] =
                crc32c::crc32c(&bytes[(s - io_start) as usize..(e - io_start) as usize]);
            b += 1;
        }
        ChunkMeta {
            seq: old.seq + 1,
            version,
            length: new_len,
            crcs,
        }
    }
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
        .map_err(|e| StoreError::Io(id, e.to_string()))?;
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
    let needs_old =
        (off > io_start && io_start < old.length) || (off + len < io_end && off + len < old.length);
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
        .map_err(|e| StoreError::Io(chunk.id, format!("reading {io_start}..{old_end}: {e}")))?;
    let mut b = io_start / CRC_BLOCK;
    while b * CRC_BLOCK < old_end.min(old.length) {
        let s = b * CRC_BLOCK;
        let e = ((b + 1) * CRC_BLOCK).min(old.length);
        let overwritten = off <= s && off + len >= e;
        if !overwritten {
            let (rs, re) = ((s - io_start) as usize, (e - io_start) as usize);
            if rr.len() < re || crc32c::crc32c(&rr[rs..re]) != old.crcs[b as usize] {
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
