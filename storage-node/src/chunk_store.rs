//! A shard's chunk store: one file per chunk under the shard directory,
//! read and written with glommio DMA files (O_DIRECT, io_uring) in 4 KiB
//! aligned units, a CRC32C per 4 KiB block verified on every read, and
//! writes made durable through the shard's [`GroupCommit`] before they are
//! acknowledged. The file layout is in [`crate::chunk_file`].
//!
//! Concurrency: each chunk has an async read/write lock, so writes to one
//! chunk are serialized (read-modify-write of edge blocks and the header
//! update are atomic with respect to other I/O on the chunk) while reads share.

use crate::chunk_file::{
    align_down, align_up, blocks, extend_with_zeros, ChunkMeta, ALIGN, CRC_BLOCK, DATA_OFFSET,
    MAX_CHUNK_SIZE, SLOT_LEN,
};
use crate::group_commit::GroupCommit;
use crate::ids::ChunkId;
use glommio::io::{DmaBuffer, DmaFile, OpenOptions, ReadResult};
use glommio::sync::RwLock;
use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::rc::Rc;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
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
pub struct Chunk {
    pub id: ChunkId,
    path: PathBuf,
    file: Rc<DmaFile>,
    meta: RefCell<ChunkMeta>,
    io_lock: RwLock<()>,
}

impl Chunk {
    pub fn version(&self) -> u64 {
        self.meta.borrow().version
    }

    pub fn length(&self) -> u64 {
        self.meta.borrow().length
    }
}

/// A write's buffer: the payload placed inside a 4 KiB-aligned DMA buffer at
/// the position it has in the covering CRC blocks, so the payload is read
/// from the socket straight into it and written to disk without a copy.
pub struct WriteBuf {
    buf: DmaBuffer,
    /// Chunk offset of `buf[0]` (CRC-block aligned).
    io_start: u64,
    /// Chunk offset and length of the payload.
    offset: u64,
    len: u64,
}

impl WriteBuf {
    /// Allocates the buffer for a write of `len` bytes at chunk offset `offset`.
    pub fn new(offset: u64, len: u64) -> Result<Self, StoreError> {
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
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let s = (self.offset - self.io_start) as usize;
        &mut self.buf.as_bytes_mut()[s..s + self.len as usize]
    }

    pub fn payload(&self) -> &[u8] {
        let s = (self.offset - self.io_start) as usize;
        &self.buf.as_bytes()[s..s + self.len as usize]
    }

    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A write's payload after preparation, shared between the local disk write
/// and the forward to the next replica.
#[derive(Clone)]
pub struct SharedPayload {
    buf: Rc<DmaBuffer>,
    start: usize,
    len: usize,
}

impl SharedPayload {
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf.as_bytes()[self.start..self.start + self.len]
    }
}

/// The result of a write or a metadata query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkInfo {
    pub version: u64,
    pub length: u64,
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

/// The chunk store of one shard.
pub struct ChunkStore {
    dir: PathBuf,
    chunks: RefCell<HashMap<ChunkId, Rc<Chunk>>>,
    commit: GroupCommit,
}

impl ChunkStore {
    /// Opens (creating if needed) the store in `dir` and recovers every chunk
    /// file in it. Files whose both header slots are damaged are renamed to
    /// `*.corrupt` and skipped.
    pub async fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Setup(format!("{}: {e}", dir.display())))?;
        probe_iopoll(dir).await?;
        let store = Self {
            dir: dir.to_path_buf(),
            chunks: RefCell::new(HashMap::new()),
            commit: GroupCommit::new(),
        };
        let entries = std::fs::read_dir(dir)
            .map_err(|e| StoreError::Setup(format!("{}: {e}", dir.display())))?;
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::Setup(e.to_string()))?;
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("chunk") {
                continue;
            }
            let Some(id) = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(ChunkId::from_file_stem)
            else {
                continue;
            };
            match Self::recover(id, &path).await {
                Ok(chunk) => {
                    store.chunks.borrow_mut().insert(id, Rc::new(chunk));
                }
                Err(e) => {
                    tracing::error!("chunk {id}: unrecoverable header ({e}); renaming to .corrupt");
                    let _ = std::fs::rename(&path, path.with_extension("corrupt"));
                }
            }
        }
        Ok(store)
    }

    async fn recover(id: ChunkId, path: &Path) -> Result<Chunk, StoreError> {
        let file = open_rw(path, false)
            .await
            .map_err(|e| StoreError::Io(id, e))?;
        let head = file
            .read_at_aligned(0, DATA_OFFSET as usize)
            .await
            .map_err(|e| StoreError::Io(id, e.to_string()))?;
        if head.len() < DATA_OFFSET as usize {
            return Err(StoreError::Io(id, "file shorter than its header".into()));
        }
        let meta = ChunkMeta::from_slots(&head[..SLOT_LEN], &head[SLOT_LEN..])
            .ok_or_else(|| StoreError::Io(id, "no valid header slot".into()))?;
        Ok(Chunk {
            id,
            path: path.to_path_buf(),
            file: Rc::new(file),
            meta: RefCell::new(meta),
            io_lock: RwLock::new(()),
        })
    }

    fn path_of(&self, id: ChunkId) -> PathBuf {
        self.dir.join(format!("{}.chunk", id.file_stem()))
    }

    pub fn get(&self, id: ChunkId) -> Option<Rc<Chunk>> {
        self.chunks.borrow().get(&id).cloned()
    }

    pub fn contains(&self, id: ChunkId) -> bool {
        self.chunks.borrow().contains_key(&id)
    }

    pub fn info(&self, id: ChunkId) -> Result<ChunkInfo, StoreError> {
        let c = self.get(id).ok_or(StoreError::NotFound(id))?;
        let m = c.meta.borrow();
        Ok(ChunkInfo {
            version: m.version,
            length: m.length,
        })
    }

    /// (id, version, length) of every chunk, ascending by id.
    pub fn inventory(&self) -> Vec<(ChunkId, u64, u64)> {
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
    pub fn used_bytes(&self) -> u64 {
        self.chunks
            .borrow()
            .values()
            .map(|c| DATA_OFFSET + align_up(c.meta.borrow().length, ALIGN))
            .sum()
    }

    pub fn chunk_count(&self) -> usize {
        self.chunks.borrow().len()
    }

    pub fn group_commit(&self) -> &GroupCommit {
        &self.commit
    }

    /// Creates an empty chunk (durably: file, header and directory entry).
    async fn create(&self, id: ChunkId) -> Result<Rc<Chunk>, StoreError> {
        let path = self.path_of(id);
        let file = open_rw(&path, true)
            .await
            .map_err(|e| StoreError::Io(id, e))?;
        let meta = ChunkMeta::default();
        let file = Rc::new(file);
        write_header(&file, &meta)
            .await
            .map_err(|e| StoreError::Io(id, e))?;
        // Header slot B stays zero (invalid) until the second update.
        file.fdatasync()
            .await
            .map_err(|e| StoreError::Io(id, e.to_string()))?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| StoreError::Io(id, format!("syncing directory: {e}")))?;
        let chunk = Rc::new(Chunk {
            id,
            path,
            file,
            meta: RefCell::new(meta),
            io_lock: RwLock::new(()),
        });
        self.chunks.borrow_mut().insert(id, chunk.clone());
        Ok(chunk)
    }

    /// Writes `data` (prepared with [`WriteBuf::new`] and filled) to chunk
    /// `id`, creating the chunk if `create` is set and it does not exist.
    /// `version` 0 means "current + 1"; otherwise it must exceed the current
    /// version. Once the edge blocks are merged, `forward` is started with the
    /// payload and the new version and runs concurrently with the local write and sync; its
    /// output is returned next to the local outcome (None if the local write
    /// failed before it could start). Returns once the write is durable.
    pub async fn write<F, Fut, T>(
        &self,
        id: ChunkId,
        mut data: WriteBuf,
        version: u64,
        create: bool,
        forward: F,
    ) -> (Result<ChunkInfo, StoreError>, Option<T>)
    where
        F: FnOnce(SharedPayload, u64) -> Fut,
        Fut: Future<Output = T>,
    {
        let chunk = match self.get(id) {
            Some(c) => c,
            None if create => match self.create(id).await {
                Ok(c) => c,
                Err(e) => return (Err(e), None),
            },
            None => return (Err(StoreError::NotFound(id)), None),
        };
        let Ok(_guard) = chunk.io_lock.write().await else {
            return (Err(StoreError::NotFound(id)), None);
        };
        if !self.contains(id) {
            // Deleted while we waited for the I/O lock.
            return (Err(StoreError::NotFound(id)), None);
        }
        let old = chunk.meta.borrow().clone();
        let new_version = match version {
            0 => old.version + 1,
            v if v > old.version => v,
            v => {
                return (
                    Err(StoreError::StaleVersion {
                        id,
                        current: old.version,
                        requested: v,
                    }),
                    None,
                )
            }
        };
        let (off, len) = (data.offset, data.len);
        let io_start = data.io_start;
        let new_len = old.length.max(off + len);
        let io_end = align_up(off + len, CRC_BLOCK)
            .min(align_up(new_len, ALIGN))
            .max(io_start + ALIGN);
        if let Err(e) = merge_edges(&chunk, &old, &mut data, io_end).await {
            return (Err(e), None);
        }
        data.buf.trim_to_size((io_end - io_start) as usize);

        // New block CRCs.
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
        while b * CRC_BLOCK < io_end.min(new_len) {
            let s = b * CRC_BLOCK;
            let e = ((b + 1) * CRC_BLOCK).min(new_len);
            crcs[b as usize] =
                crc32c::crc32c(&bytes[(s - io_start) as usize..(e - io_start) as usize]);
            b += 1;
        }
        let new_meta = ChunkMeta {
            seq: old.seq + 1,
            version: new_version,
            length: new_len,
            crcs,
        };

        let shared = SharedPayload {
            buf: Rc::new(data.buf),
            start: (off - io_start) as usize,
            len: len as usize,
        };
        let local = async {
            // Data and header go to disk concurrently: neither is durable
            // before the sync below, so ordering them would buy nothing. A
            // crash before the sync leaves blocks that disagree with one of
            // the two header slots, which reads report as checksum errors.
            let data = async {
                chunk
                    .file
                    .write_rc_at(shared.buf.clone(), DATA_OFFSET + io_start)
                    .await
                    .map_err(|e| e.to_string())
            };
            let (d, h) = futures::join!(data, write_header(&chunk.file, &new_meta));
            d?;
            h?;
            self.commit
                .sync(chunk.file.clone())
                .await
                .map_err(|e| e.to_string())
        };
        let (local, fwd) = futures::join!(local, forward(shared.clone(), new_version));
        // Both uses are done: the buffer serves the next payload.
        if let Ok(buf) = Rc::try_unwrap(shared.buf) {
            crate::buffer_pool::give(buf);
        }
        match local {
            Ok(()) => {
                *chunk.meta.borrow_mut() = new_meta;
                (
                    Ok(ChunkInfo {
                        version: new_version,
                        length: new_len,
                    }),
                    Some(fwd),
                )
            }
            // The on-disk blocks may now disagree with the (unchanged) CRCs:
            // later reads report a checksum error, never wrong bytes.
            Err(e) => (Err(StoreError::Io(id, e)), Some(fwd)),
        }
    }

    /// Reads up to `len` bytes at `offset` (short at the chunk's end),
    /// verifying the CRC of every block touched.
    pub async fn read(
        &self,
        id: ChunkId,
        offset: u64,
        len: u64,
    ) -> Result<(ReadResult, ChunkInfo), StoreError> {
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
            return Ok((ReadResult::default(), info));
        }
        let io_start = align_down(offset, CRC_BLOCK);
        let io_end = align_up(end, CRC_BLOCK).min(align_up(meta.length, ALIGN));
        let rr = read_verified(&chunk, &meta, io_start, io_end).await?;
        let out = ReadResult::slice(&rr, (offset - io_start) as usize, (end - offset) as usize)
            .ok_or_else(|| StoreError::Io(id, "short read".into()))?;
        Ok((out, info))
    }

    /// Removes chunk `id` (file and metadata).
    pub async fn delete(&self, id: ChunkId) -> Result<(), StoreError> {
        let chunk = self.get(id).ok_or(StoreError::NotFound(id))?;
        let _guard = chunk
            .io_lock
            .write()
            .await
            .map_err(|_| StoreError::NotFound(id))?;
        if self.chunks.borrow_mut().remove(&id).is_none() {
            return Err(StoreError::NotFound(id));
        }
        std::fs::remove_file(&chunk.path).map_err(|e| StoreError::Io(id, e.to_string()))?;
        Ok(())
    }
}

/// glommio decides once per device whether O_DIRECT reads may use the
/// io_uring poll ring, by reading the first block of the first DmaFile opened
/// there. If that file is empty the probe read "succeeds" at EOF and every
/// later read on a device without iopoll fails with EOPNOTSUPP. Opening a
/// file that has a full block first makes the probe see the real answer.
async fn probe_iopoll(dir: &Path) -> Result<(), StoreError> {
    let path = dir.join(".iopoll-probe");
    let setup = |e: std::io::Error| StoreError::Setup(format!("{}: {e}", path.display()));
    std::fs::write(&path, [0u8; ALIGN as usize]).map_err(setup)?;
    let f = DmaFile::open(&path).await.map_err(|e| setup(e.into()))?;
    let _ = f.close().await;
    let _ = std::fs::remove_file(&path);
    Ok(())
}

async fn open_rw(path: &Path, create: bool) -> Result<DmaFile, String> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .dma_open(path)
        .await
        .map_err(|e| format!("{}: {e}", path.display()))
}

async fn write_header(file: &DmaFile, meta: &ChunkMeta) -> Result<(), String> {
    let mut buf = file.alloc_dma_buffer(SLOT_LEN);
    meta.encode(buf.as_bytes_mut());
    file.write_at(buf, meta.slot_offset())
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Reads chunk range `[io_start, io_end)` (block aligned at the start, 4 KiB
/// aligned at the end) and verifies every block's CRC.
async fn read_verified(
    chunk: &Chunk,
    meta: &ChunkMeta,
    io_start: u64,
    io_end: u64,
) -> Result<ReadResult, StoreError> {
    let id = chunk.id;
    let rr = chunk
        .file
        .read_at_aligned(DATA_OFFSET + io_start, (io_end - io_start) as usize)
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
async fn merge_edges(
    chunk: &Chunk,
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
        .read_at_aligned(DATA_OFFSET + io_start, (old_end - io_start) as usize)
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
