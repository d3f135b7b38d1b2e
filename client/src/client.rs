//! The file API: POSIX-like calls on integer descriptors, over the control
//! RPC (namespace, chunk maps) and the data plane (chunk bytes).
//!
//! Invariants:
//! - Data becomes visible only through `commitChunks`: every `write` call
//!   writes its chunks on the storage nodes, then commits their records and
//!   the new size in one control-server transaction before it returns, so a
//!   returned write is durable on at least W replicas and visible to readers.
//!   (`fsync` therefore has nothing left to do.)
//! - A new chunk is placed on up to R distinct live nodes, most free space
//!   first; fewer than W reserved or durable replicas is an error.
//! - An existing chunk is overwritten under explicit write locks taken on its
//!   replicas in ascending node-id order (two writers cannot deadlock); the
//!   nodes bump its version.
//! - Offsets and sizes are bytes; a chunk covers
//!   `[index * chunk_size, (index + 1) * chunk_size)` of the file.
//!
//! Must run inside a tokio `LocalSet` (see [`crate::local`]).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use ringfs_schema::frame::{Header, Hop, LockMode, Op, Status, Token};
use ringfs_schema::{ChunkId, MAX_CHUNK_SIZE};

use crate::control::{
    Attr, ChunkRecord, ClusterMap, ControlClient, CreateOptions, FileHandle, Kind, NodeInfo,
};
use crate::error::{Error, Result};
use crate::node_conn::{status_error, NodeConn, NodePool};
use crate::placement;
use crate::record_cache::RecordCache;

/// An open file on this client (like a POSIX file descriptor).
pub type Fd = u32;

/// Chunks of one call in flight at once (across chunks and nodes).
const PIPELINE: usize = 4;
/// Most chunk records asked for in one `getChunks`.
const RECORDS_PER_CALL: u64 = 4096;
/// A cluster map older than this is fetched again before placing chunks
/// (the subscription pushes up/down changes, not capacity changes).
const MAP_MAX_AGE: Duration = Duration::from_secs(1);

/// Timeouts of a client, all wall-clock.
#[derive(Clone, Copy, Debug)]
pub struct ClientOptions {
    /// One data-plane request (a read or write of up to one chunk).
    pub request_timeout: Duration,
    /// How long a node may queue a lock request before answering `timeout`.
    pub lock_wait: Duration,
    /// How long reads may use chunk records fetched earlier instead of
    /// asking the control server (see [`crate::record_cache`]); zero makes
    /// every read see every commit made before it started.
    pub record_cache: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(30),
            lock_wait: Duration::from_secs(10),
            record_cache: crate::record_cache::DEFAULT_MAX_AGE,
        }
    }
}

/// How to open a file.
#[derive(Clone, Copy, Debug, Default)]
pub struct OpenOptions {
    pub read: bool,
    pub write: bool,
    /// Every write goes to the end of the file.
    pub append: bool,
    /// Cut the file to zero bytes at open (needs `write`).
    pub truncate: bool,
    /// Create the file if missing, with `layout` (needs `write`).
    pub create: bool,
    /// With `create`: fail with [`Error::Exists`] if it exists.
    pub exclusive: bool,
    /// Layout of a created file (zeros take the server's defaults).
    pub layout: CreateOptions,
    /// How long a write open waits for the file's write lease (FIFO) before
    /// failing with [`Error::Busy`].
    pub wait: Duration,
}

impl OpenOptions {
    pub fn read() -> Self {
        Self {
            read: true,
            ..Self::default()
        }
    }

    /// Write, create, truncate: like `open(O_WRONLY|O_CREAT|O_TRUNC)`.
    pub fn create(layout: CreateOptions) -> Self {
        Self {
            write: true,
            create: true,
            truncate: true,
            layout,
            ..Self::default()
        }
    }
}

/// Where a seek is relative to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeekFrom {
    Start(u64),
    Current(i64),
    End(i64),
}

struct OpenFile {
    path: String,
    handle: Rc<FileHandle>,
    read: bool,
    write: bool,
    append: bool,
    pos: u64,
    /// The committed size as this client last saw it.
    size: u64,
    chunk_size: u64,
    replication: u8,
    write_quorum: u8,
    /// Serializes writes through this descriptor (they update chunk records).
    io: Rc<tokio::sync::Mutex<()>>,
    /// Chunk records recently read through this descriptor.
    records: Rc<RefCell<RecordCache>>,
}

/// What a read or write needs of an open file, copied out of the table so
/// no borrow is held across an await.
#[derive(Clone)]
struct FileView {
    handle: Rc<FileHandle>,
    records: Rc<RefCell<RecordCache>>,
    size: u64,
    chunk_size: u64,
    replication: u8,
    write_quorum: u8,
}

struct MapState {
    map: ClusterMap,
    fetched: Instant,
    /// Bytes this client reserved per node since `map` was fetched.
    claimed: HashMap<u64, u64>,
}

/// A replica holding (or about to hold) a chunk, with our write lock on it.
struct Locked {
    node_id: u64,
    addr: String,
    conn: Rc<NodeConn>,
    token: Token,
}

/// A ringfs client: one control connection, data-plane connections per shard
/// endpoint, and a table of open descriptors.
pub struct Client {
    /// Replaced by a new connection when the control server went away
    /// (see [`Client::reconnect`]).
    control: RefCell<ControlClient>,
    control_addr: SocketAddr,
    pool: NodePool,
    map: Rc<RefCell<MapState>>,
    client_id: u64,
    options: ClientOptions,
    files: RefCell<HashMap<Fd, OpenFile>>,
    next_fd: Cell<Fd>,
    /// Record caches by inode, shared by the descriptors of one file.
    record_caches: RefCell<HashMap<u64, Weak<RefCell<RecordCache>>>>,
    /// Rotates the shard a new chunk is minted on.
    next_shard: Cell<usize>,
    repairs: Cell<u64>,
    watcher: RefCell<tokio::task::JoinHandle<()>>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.watcher.borrow().abort();
    }
}

/// How long a client keeps trying to reach a control server that went away.
const RECONNECT_FOR: Duration = Duration::from_secs(30);

/// Follows the map pushed by the control server into `map`.
fn watch_map(
    map: Rc<RefCell<MapState>>,
    mut sub: crate::control::MapSubscription,
) -> tokio::task::JoinHandle<()> {
    tokio::task::spawn_local(async move {
        while let Some(m) = sub.next().await {
            let mut st = map.borrow_mut();
            if m.epoch >= st.map.epoch {
                st.map = m;
                st.fetched = Instant::now();
                st.claimed.clear();
            }
        }
    })
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

fn chunk_id(id: u128) -> ChunkId {
    ChunkId::new((id >> 64) as u64, id as u64)
}

fn chunk_u128(id: ChunkId) -> u128 {
    ((id.hi as u128) << 64) | id.lo as u128
}

fn ms(d: Duration) -> u32 {
    d.as_millis().min(u32::MAX as u128) as u32
}

impl Client {
    /// Connects to the control server and subscribes to the cluster map.
    pub async fn connect(control_addr: SocketAddr) -> Result<Self> {
        Self::connect_with(control_addr, ClientOptions::default()).await
    }

    pub async fn connect_with(control_addr: SocketAddr, options: ClientOptions) -> Result<Self> {
        let control = ControlClient::connect(control_addr).await?;
        let (map, sub) = control.subscribe().await?;
        let map = Rc::new(RefCell::new(MapState {
            map,
            fetched: Instant::now(),
            claimed: HashMap::new(),
        }));
        let watcher = watch_map(map.clone(), sub);
        Ok(Self {
            control: RefCell::new(control),
            control_addr,
            pool: NodePool::default(),
            map,
            client_id: new_client_id(),
            options,
            files: RefCell::new(HashMap::new()),
            next_fd: Cell::new(3),
            record_caches: RefCell::default(),
            next_shard: Cell::new(0),
            repairs: Cell::new(0),
            watcher: RefCell::new(watcher),
        })
    }

    /// The current control connection.
    fn ctl(&self) -> ControlClient {
        self.control.borrow().clone()
    }

    /// If the control connection is gone (the server restarted), connects
    /// again, retrying for up to 30 s, and resubscribes to the map. Returns
    /// whether a new connection was made. Open descriptors stay bound to the
    /// old connection: their handles (and write leases) ended with it, so
    /// their next control call fails with an error instead of writing
    /// unseen.
    pub async fn reconnect(&self) -> Result<bool> {
        if self.ctl().is_connected() {
            return Ok(false);
        }
        let start = Instant::now();
        let mut wait = Duration::from_millis(50);
        let control = loop {
            match ControlClient::connect(self.control_addr).await {
                Ok(c) => break c,
                Err(e) if start.elapsed() >= RECONNECT_FOR => return Err(e),
                Err(_) => {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(1));
                }
            }
        };
        let (map, sub) = control.subscribe().await?;
        {
            let mut st = self.map.borrow_mut();
            st.map = map;
            st.fetched = Instant::now();
            st.claimed.clear();
        }
        let watcher = watch_map(self.map.clone(), sub);
        self.watcher.replace(watcher).abort();
        self.control.replace(control);
        Ok(true)
    }

    /// Runs an idempotent control call; if it failed because the control
    /// connection dropped, reconnects and runs it once more.
    async fn retry<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: Fn(ControlClient) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        match f(self.ctl()).await {
            Err(e) if !self.ctl().is_connected() => {
                if self.reconnect().await? {
                    f(self.ctl()).await
                } else {
                    Err(e)
                }
            }
            r => r,
        }
    }

    /// Runs a control call that is not safe to repeat (it may have been
    /// applied before the connection dropped): a dropped connection is
    /// re-established for later calls, and this one fails.
    async fn once<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: FnOnce(ControlClient) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let r = f(self.ctl()).await;
        if r.is_err() && !self.ctl().is_connected() {
            self.reconnect().await?;
            return r.map_err(|e| {
                Error::Unavailable(format!(
                    "the control server connection dropped during the call ({e}); \
                     it may or may not have been applied"
                ))
            });
        }
        r
    }

    /// The control-RPC client, for calls this API does not wrap (the
    /// current connection; reconnect first with [`Client::reconnect`]).
    pub fn control(&self) -> ControlClient {
        self.ctl()
    }

    /// The current cluster map, fetched fresh (capacities included).
    pub async fn cluster_map(&self) -> Result<ClusterMap> {
        let m = self.retry(|c| async move { c.cluster_map().await }).await?;
        let mut st = self.map.borrow_mut();
        st.map = m.clone();
        st.fetched = Instant::now();
        st.claimed.clear();
        Ok(m)
    }

    // ---- namespace ----

    pub async fn stat(&self, path: &str) -> Result<Attr> {
        self.retry(|c| async move { c.stat(path).await }).await
    }

    /// Sets the permission bits and/or the modification time (`None`:
    /// unchanged); returns the new attributes. Safe to repeat.
    pub async fn set_attr(
        &self,
        path: &str,
        mode: Option<u32>,
        mtime_ns: Option<i64>,
    ) -> Result<Attr> {
        self.retry(|c| async move { c.set_attr(path, mode, mtime_ns).await })
            .await
    }

    pub async fn mkdir(&self, path: &str, mode: u32) -> Result<Attr> {
        self.once(|c| async move { c.mkdir(path, mode).await })
            .await
    }

    pub async fn rmdir(&self, path: &str) -> Result<()> {
        self.once(|c| async move { c.rmdir(path).await }).await
    }

    /// Removes a file; the control server collects its chunks.
    pub async fn unlink(&self, path: &str) -> Result<()> {
        self.once(|c| async move { c.unlink(path).await }).await
    }

    pub async fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.once(|c| async move { c.rename(from, to).await }).await
    }

    /// Entries of a directory in name order.
    pub async fn list(&self, path: &str) -> Result<Vec<(String, Attr)>> {
        self.retry(|c| async move { c.list(path).await }).await
    }

    // ---- descriptors ----

    /// Creates (or truncates) `path` and opens it for writing.
    pub async fn create(&self, path: &str, layout: CreateOptions) -> Result<Fd> {
        self.open(path, &OpenOptions::create(layout)).await
    }

    pub async fn open(&self, path: &str, opts: &OpenOptions) -> Result<Fd> {
        Ok(self.open_with_attr(path, opts).await?.0)
    }

    /// Like [`Client::open`], also returning the file's attributes as the
    /// open found them (after the truncate, with `truncate`): one control
    /// round trip for both, which is what a close-to-open check needs.
    pub async fn open_with_attr(&self, path: &str, opts: &OpenOptions) -> Result<(Fd, Attr)> {
        let write = opts.write || opts.append;
        if (opts.truncate || opts.create) && !write {
            return Err(Error::InvalidArgument(format!(
                "{path}: truncate and create need a write open"
            )));
        }
        if opts.create {
            let mut layout = opts.layout;
            layout.exclusive = opts.exclusive;
            if layout.chunk_size as u64 > MAX_CHUNK_SIZE {
                return Err(Error::InvalidArgument(format!(
                    "chunk size {} exceeds the storage nodes' limit of {MAX_CHUNK_SIZE} bytes",
                    layout.chunk_size
                )));
            }
            // A non-exclusive create returns an existing file unchanged, so
            // it may be repeated after a reconnect; an exclusive one not.
            if layout.exclusive {
                self.once(|c| async move { c.create(path, layout).await })
                    .await?;
            } else {
                self.retry(|c| async move { c.create(path, layout).await })
                    .await?;
            }
        }
        let wait = opts.wait;
        let handle = self
            .retry(|c| async move { c.open(path, write, wait).await })
            .await?;
        let mut attr = handle.attr.clone();
        if attr.kind == Kind::Directory {
            return Err(Error::IsDirectory(path.to_string()));
        }
        if write && attr.chunk_size as u64 > MAX_CHUNK_SIZE {
            return Err(Error::InvalidArgument(format!(
                "{path}: chunk size {} exceeds the storage nodes' limit of {MAX_CHUNK_SIZE} bytes",
                attr.chunk_size
            )));
        }
        if opts.truncate && attr.size != 0 {
            attr = handle.set_size(0).await?;
        }
        let records = self.record_cache(attr.inode);
        records.borrow_mut().revalidate(attr.version);
        if opts.truncate {
            records.borrow_mut().clear();
        }
        let fd = self.next_fd.get();
        self.next_fd.set(fd.wrapping_add(1).max(3));
        self.files.borrow_mut().insert(
            fd,
            OpenFile {
                path: path.to_string(),
                handle: Rc::new(handle),
                read: opts.read || !write,
                write,
                append: opts.append,
                pos: 0,
                size: attr.size,
                chunk_size: attr.chunk_size as u64,
                replication: attr.replication,
                write_quorum: attr.write_quorum,
                io: Rc::new(tokio::sync::Mutex::new(())),
                records,
            },
        );
        Ok((fd, attr))
    }

    /// Releases the descriptor and its control handle (and write lease).
    pub async fn close(&self, fd: Fd) -> Result<()> {
        let f = self
            .files
            .borrow_mut()
            .remove(&fd)
            .ok_or_else(|| Error::BadDescriptor(fd.to_string()))?;
        // Wait for writes in flight through this descriptor.
        let _io = f.io.lock().await;
        match Rc::try_unwrap(f.handle) {
            Ok(h) => h.close().await,
            // A concurrent call still holds it: dropping our reference
            // releases the handle when that call ends.
            Err(_) => Ok(()),
        }
    }

    /// Every returned write is already durable and committed (see the module
    /// invariants), so this only checks the descriptor.
    pub async fn fsync(&self, fd: Fd) -> Result<()> {
        self.with_file(fd, |_| Ok(()))
    }

    /// Attributes of an open file, fresh from the control server.
    pub async fn fstat(&self, fd: Fd) -> Result<Attr> {
        let h = self.with_file(fd, |f| Ok(f.handle.clone()))?;
        let attr = h.attr().await?;
        self.with_file_mut(fd, |f| {
            f.size = attr.size;
            Ok(())
        })?;
        Ok(attr)
    }

    /// The path a descriptor was opened with.
    pub fn path_of(&self, fd: Fd) -> Result<String> {
        self.with_file(fd, |f| Ok(f.path.clone()))
    }

    pub fn seek(&self, fd: Fd, to: SeekFrom) -> Result<u64> {
        self.with_file_mut(fd, |f| {
            let base = match to {
                SeekFrom::Start(n) => {
                    f.pos = n;
                    return Ok(n);
                }
                SeekFrom::Current(_) => f.pos,
                SeekFrom::End(_) => f.size,
            };
            let delta = match to {
                SeekFrom::Current(d) | SeekFrom::End(d) => d,
                SeekFrom::Start(_) => 0,
            };
            let pos = base.checked_add_signed(delta).ok_or_else(|| {
                Error::InvalidArgument("seek before the start of the file".into())
            })?;
            f.pos = pos;
            Ok(pos)
        })
    }

    /// Truncates or extends an open file (write descriptors).
    pub async fn set_len(&self, fd: Fd, size: u64) -> Result<()> {
        let (h, io, records) = self.with_file(fd, |f| {
            if !f.write {
                return Err(Error::BadDescriptor(format!(
                    "{fd} is not open for writing"
                )));
            }
            Ok((f.handle.clone(), f.io.clone(), f.records.clone()))
        })?;
        let _io = io.lock().await;
        let attr = h.set_size(size).await;
        records.borrow_mut().clear();
        let attr = attr?;
        self.with_file_mut(fd, |f| {
            f.size = attr.size;
            Ok(())
        })
    }

    /// Reads at the descriptor's position and advances it; 0 at end of file.
    pub async fn read(&self, fd: Fd, buf: &mut [u8]) -> Result<usize> {
        let pos = self.with_file(fd, |f| Ok(f.pos))?;
        let n = self.pread(fd, pos, buf).await?;
        self.with_file_mut(fd, |f| {
            f.pos = pos + n as u64;
            Ok(())
        })?;
        Ok(n)
    }

    /// Writes at the descriptor's position (the end for append opens) and
    /// advances it.
    pub async fn write(&self, fd: Fd, data: &[u8]) -> Result<usize> {
        let (pos, append) = self.with_file(fd, |f| Ok((f.pos, f.append)))?;
        let at = if append { None } else { Some(pos) };
        let end = self.write_at(fd, at, data).await?;
        self.with_file_mut(fd, |f| {
            f.pos = end;
            Ok(())
        })?;
        Ok(data.len())
    }

    /// Writes `data` at `offset` without moving the position.
    pub async fn pwrite(&self, fd: Fd, offset: u64, data: &[u8]) -> Result<usize> {
        self.write_at(fd, Some(offset), data).await?;
        Ok(data.len())
    }

    /// Reads up to `buf.len()` bytes at `offset`; fewer only at end of file.
    /// Holes and bytes past a chunk's valid length read as zeros.
    pub async fn pread(&self, fd: Fd, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let (mut v, readable, write) =
            self.with_file(fd, |f| Ok((self.view(f), f.read, f.write)))?;
        if !readable {
            return Err(Error::BadDescriptor(format!(
                "{fd} is not open for reading"
            )));
        }
        let want_end = offset.saturating_add(buf.len() as u64);
        if want_end > v.size && !write {
            // Another client may have appended since we looked.
            let attr = v.handle.attr().await?;
            v.size = attr.size;
            v.records.borrow_mut().clear();
            self.with_file_mut(fd, |f| {
                f.size = attr.size;
                Ok(())
            })?;
        }
        if offset >= v.size || buf.is_empty() {
            return Ok(0);
        }
        let n = (v.size - offset).min(buf.len() as u64) as usize;
        let buf = &mut buf[..n];
        let cs = v.chunk_size;
        let (first, last) = (offset / cs, (offset + n as u64 - 1) / cs);
        let cached = v
            .records
            .borrow()
            .get(first, last, Instant::now(), self.options.record_cache);
        if let Some(records) = cached {
            if self.read_records(&records, cs, offset, buf).await.is_ok() {
                return Ok(n);
            }
            // A cached record may be outdated: retry with fresh ones.
        }
        let (generation, fetched_at) = (v.records.borrow().generation(), Instant::now());
        let records = self.records(&v.handle, first, last).await?;
        v.records
            .borrow_mut()
            .insert(generation, first, last, &records, fetched_at);
        self.read_records(&records, cs, offset, buf).await?;
        Ok(n)
    }

    /// Reads `buf` at file `offset` from the chunks in `records` (by index;
    /// holes absent), chunk pieces concurrently.
    async fn read_records(
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

    /// The record cache of `inode`, shared with its other descriptors.
    fn record_cache(&self, inode: u64) -> Rc<RefCell<RecordCache>> {
        let mut caches = self.record_caches.borrow_mut();
        caches.retain(|_, c| c.strong_count() > 0);
        if let Some(c) = caches.get(&inode).and_then(Weak::upgrade) {
            return c;
        }
        let c = Rc::default();
        caches.insert(inode, Rc::downgrade(&c));
        c
    }

    fn with_file<T>(&self, fd: Fd, f: impl FnOnce(&OpenFile) -> Result<T>) -> Result<T> {
        let files = self.files.borrow();
        let file = files
            .get(&fd)
            .ok_or_else(|| Error::BadDescriptor(fd.to_string()))?;
        f(file)
    }

    fn with_file_mut<T>(&self, fd: Fd, f: impl FnOnce(&mut OpenFile) -> Result<T>) -> Result<T> {
        let mut files = self.files.borrow_mut();
        let file = files
            .get_mut(&fd)
            .ok_or_else(|| Error::BadDescriptor(fd.to_string()))?;
        f(file)
    }

    fn view(&self, f: &OpenFile) -> FileView {
        FileView {
            handle: f.handle.clone(),
            records: f.records.clone(),
            size: f.size,
            chunk_size: f.chunk_size,
            replication: f.replication,
            write_quorum: f.write_quorum,
        }
    }

    /// Chunk records with index in `first..=last`, by index (holes absent).
    async fn records(
        &self,
        h: &FileHandle,
        first: u64,
        last: u64,
    ) -> Result<HashMap<u64, ChunkRecord>> {
        let mut out = HashMap::new();
        let mut at = first;
        while at <= last {
            let count = (last - at + 1).min(RECORDS_PER_CALL);
            for r in h.get_chunks(at, count as u32).await? {
                out.insert(r.index, r);
            }
            at += count;
        }
        Ok(out)
    }

    /// Writes `data` at `offset` (`None`: at the end of file); returns the
    /// end offset. Commits before returning.
    async fn write_at(&self, fd: Fd, offset: Option<u64>, data: &[u8]) -> Result<u64> {
        let io = self.with_file(fd, |f| {
            if !f.write {
                return Err(Error::BadDescriptor(format!(
                    "{fd} is not open for writing"
                )));
            }
            Ok(f.io.clone())
        })?;
        let _io = io.lock().await;
        let v = self.with_file(fd, |f| Ok(self.view(f)))?;
        let offset = offset.unwrap_or(v.size);
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or_else(|| Error::InvalidArgument("write past the largest offset".into()))?;
        if data.is_empty() {
            return Ok(offset);
        }
        let cs = v.chunk_size;
        let first = offset / cs;
        let last = (end - 1) / cs;
        let existing = self.records(&v.handle, first, last).await?;
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
        let v = &v;
        let records: Vec<ChunkRecord> = futures::stream::iter(pieces.into_iter().map(
            |(index, rec, off, piece)| async move {
                match rec {
                    Some(rec) => self.overwrite_chunk(v, rec, off, piece).await,
                    None => self.write_new_chunk(v, index, off, piece).await,
                }
            },
        ))
        .buffer_unordered(PIPELINE)
        .try_collect()
        .await?;
        let new_size = v.size.max(end);
        let attr = v.handle.commit_chunks(&records, new_size).await;
        // Also after a failed commit: the chunks may have changed anyway.
        v.records.borrow_mut().clear();
        let attr = attr?;
        self.with_file_mut(fd, |f| {
            f.size = attr.size;
            Ok(())
        })?;
        Ok(end)
    }

    /// The cluster map, refreshed if its capacities are old.
    async fn fresh_map(&self) -> Result<ClusterMap> {
        let stale = self.map.borrow().fetched.elapsed() > MAP_MAX_AGE;
        if stale {
            self.cluster_map().await
        } else {
            Ok(self.map.borrow().map.clone())
        }
    }

    fn node_info(&self, node_id: u64) -> Option<NodeInfo> {
        self.map
            .borrow()
            .map
            .nodes
            .iter()
            .find(|n| n.node_id == node_id)
            .cloned()
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
    async fn place(&self, v: &FileView) -> Result<(ChunkId, Vec<Locked>)> {
        let map = self.fresh_map().await?;
        let claimed = self.map.borrow().claimed.clone();
        let candidates = placement::candidates(&map, &claimed);
        let want = v.replication.max(1) as usize;
        let quorum = v.write_quorum.max(1) as usize;
        let bytes = v.chunk_size;
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
                    *self
                        .map
                        .borrow_mut()
                        .claimed
                        .entry(node.node_id)
                        .or_default() += bytes;
                    locked.push(Locked {
                        node_id: node.node_id,
                        addr,
                        conn,
                        token: r.token,
                    });
                }
                Err(e) => {
                    no_space |= matches!(e, Error::NoSpace(_));
                    refusals.push(format!("node {}: {e}", node.node_id));
                }
            }
        }
        if locked.len() < quorum {
            self.unlock_all(id, &locked).await;
            let msg = format!(
                "{} of the {quorum} replicas a write needs could be reserved ({} live nodes){}{}",
                locked.len(),
                map.nodes.iter().filter(|n| n.up).count(),
                if refusals.is_empty() { "" } else { ": " },
                refusals.join("; ")
            );
            return Err(if no_space {
                Error::NoSpace(msg)
            } else {
                Error::Unavailable(msg)
            });
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
    /// orphan: the control server does not collect never-committed chunk ids
    /// yet.)
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
    /// (primary first) and returns the record of the durable replicas.
    async fn chain_write(
        &self,
        v: &FileView,
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
        h.write_quorum = v.write_quorum;
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
        let durable = (r.durable_replicas as usize).min(locked.len());
        if durable < v.write_quorum.max(1) as usize {
            return Err(Error::Quorum(format!(
                "chunk {id}: {durable} durable replicas, the file needs {}",
                v.write_quorum
            )));
        }
        // A hop forwards only what it received, so the durable replicas are
        // a prefix of the chain.
        Ok((
            locked[..durable].iter().map(|l| l.node_id).collect(),
            r.version,
        ))
    }

    async fn write_new_chunk(
        &self,
        v: &FileView,
        index: u64,
        offset: u64,
        payload: &[u8],
    ) -> Result<ChunkRecord> {
        // A node that dies between placement and write fails the chain; a
        // second placement skips it (its connection is refused).
        let mut attempt = 0;
        let (id, replicas, version) = loop {
            let (id, locked) = self.place(v).await?;
            let result = self.chain_write(v, id, &locked, offset, payload).await;
            if result.is_err() {
                // Nobody will commit this chunk: drop what reached the nodes.
                self.delete_all(id, &locked).await;
            }
            self.unlock_all(id, &locked).await;
            match result {
                Ok((replicas, version)) => break (id, replicas, version),
                Err(Error::Unavailable(_) | Error::Quorum(_) | Error::Timeout(_))
                    if attempt == 0 =>
                {
                    attempt += 1;
                }
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

    /// Takes the write lock on `node_id`'s replica of `id`.
    async fn lock_replica(&self, id: ChunkId, node: &NodeInfo) -> Result<Locked> {
        let addr = node
            .shards
            .get(id.shard(node.shards.len()))
            .ok_or_else(|| Error::Unavailable(format!("node {} has no shards", node.node_id)))?
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
        v: &FileView,
        rec: ChunkRecord,
        offset: u64,
        payload: &[u8],
    ) -> Result<ChunkRecord> {
        let id = chunk_id(rec.chunk_id);
        // Locks in ascending node-id order: two writers never deadlock.
        let mut order = rec.replicas.clone();
        order.sort_unstable();
        let mut locked = Vec::new();
        let mut skipped = Vec::new();
        for node_id in order {
            let node = match self.node_info(node_id) {
                Some(n) if n.up => n,
                _ => {
                    skipped.push(format!("node {node_id} is down"));
                    continue;
                }
            };
            match self.lock_replica(id, &node).await {
                Ok(l) => locked.push(l),
                // A lock held by someone else is not a lost replica.
                Err(e @ (Error::Busy(_) | Error::Timeout(_))) => {
                    self.unlock_all(id, &locked).await;
                    return Err(e);
                }
                Err(e) => skipped.push(format!("node {node_id}: {e}")),
            }
        }
        if locked.len() < v.write_quorum.max(1) as usize {
            self.unlock_all(id, &locked).await;
            return Err(Error::Quorum(format!(
                "chunk {id}: {} of {} replicas reachable, the file needs {}: {}",
                locked.len(),
                rec.replicas.len(),
                v.write_quorum,
                skipped.join("; ")
            )));
        }
        // Chain in the record's order (the primary stays first).
        locked.sort_by_key(|l| rec.replicas.iter().position(|r| *r == l.node_id));
        // Bytes between the record's valid length and the write must read
        // as zeros, whatever the node still holds there (after a truncate).
        let gap = offset.saturating_sub(rec.length as u64) as usize;
        let result = if gap > 0 {
            let mut buf = vec![0u8; gap + payload.len()];
            buf[gap..].copy_from_slice(payload);
            self.chain_write(v, id, &locked, rec.length as u64, &buf)
                .await
        } else {
            self.chain_write(v, id, &locked, offset, payload).await
        };
        self.unlock_all(id, &locked).await;
        let (replicas, version) = result?;
        Ok(ChunkRecord {
            index: rec.index,
            chunk_id: rec.chunk_id,
            replicas,
            length: (rec.length as u64).max(offset + payload.len() as u64) as u32,
            version,
        })
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
        // Live replicas first, the least loaded (fewest of our requests in
        // flight) first, ties broken by a chunk-dependent rotation to spread
        // reads; replicas the map calls down are tried last.
        let mut order: Vec<(bool, usize, usize, u64)> = rec
            .replicas
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let up = self.node_info(n).is_some_and(|n| n.up);
                let load = self
                    .endpoint(id, n)
                    .map_or(0, |addr| self.pool.in_flight(&addr));
                let rot = (i + rec.index as usize) % rec.replicas.len().max(1);
                (!up, load, rot, n)
            })
            .collect();
        order.sort_unstable();
        let mut errors = Vec::new();
        let mut all_corrupt = true;
        let mut corrupt = Vec::new();
        for (_, _, _, node_id) in order {
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
                        self.report_bad(rec.chunk_id, bad, repaired).await;
                    }
                    return Ok(());
                }
                Err(e) => {
                    if matches!(e, Error::Corrupt(_)) {
                        corrupt.push(node_id);
                    } else {
                        all_corrupt = false;
                    }
                    errors.push(e.to_string());
                }
            }
        }
        for &bad in &corrupt {
            self.report_bad(rec.chunk_id, bad, false).await;
        }
        let msg = format!(
            "chunk {id} (index {}): no replica could be read: {}",
            rec.index,
            errors.join("; ")
        );
        Err(if all_corrupt && !errors.is_empty() {
            Error::Corrupt(msg)
        } else {
            Error::Unavailable(msg)
        })
    }

    /// The shard endpoint of `node_id` owning chunk `id`, from the map.
    fn endpoint(&self, id: ChunkId, node_id: u64) -> Result<String> {
        let node = self
            .node_info(node_id)
            .ok_or_else(|| Error::Unavailable(format!("node {node_id} is not in the map")))?;
        node.shards
            .get(id.shard(node.shards.len()))
            .cloned()
            .ok_or_else(|| Error::Unavailable(format!("node {node_id} has no shards")))
    }

    /// Replaces `bad`'s replica of chunk `id` (it failed its checksum) with
    /// a copy of `good`'s: delete it on `bad`, reserve the id (`chunk_size`
    /// bytes) there again,
    /// and have `good` copy the whole chunk (same version) into that
    /// reservation.
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

    /// Tells the control server about a replica that failed its checksum
    /// (best effort: the node reports it too, and the read already has its
    /// answer).
    async fn report_bad(&self, chunk: u128, node: u64, repaired: bool) {
        // A failure changes nothing: the node reports the bad chunk itself.
        let _ = self.ctl().report_bad_replica(chunk, node, repaired).await;
    }

    /// Replicas this client repaired after checksum failures.
    pub fn repairs(&self) -> u64 {
        self.repairs.get()
    }

    async fn read_replica(
        &self,
        id: ChunkId,
        node_id: u64,
        version: u64,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<()> {
        let node = self
            .node_info(node_id)
            .ok_or_else(|| Error::Unavailable(format!("node {node_id} is not in the map")))?;
        let addr = node
            .shards
            .get(id.shard(node.shards.len()))
            .ok_or_else(|| Error::Unavailable(format!("node {node_id} has no shards")))?;
        let conn = self.pool.get(addr).await?;
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
            return Err(status_error(&r, addr));
        }
        // A replica behind the committed record (it missed a write) must
        // not be served: try another.
        if r.version < version || payload.len() < buf.len() {
            return Err(Error::Unavailable(format!(
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

/// Runs `fut` to completion on a current-thread tokio runtime inside a
/// `LocalSet`: the simplest way to use the client from synchronous code.
pub fn local<F: std::future::Future>(fut: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building a tokio runtime");
    tokio::task::LocalSet::new().block_on(&rt, fut)
}
