//! The file API: POSIX-like calls on integer descriptors, over the control
//! RPC (namespace, chunk maps; see [`crate::cluster`]) and the data plane
//! (chunk bytes; see [`crate::chunk_io`]).
//!
//! Invariants:
//! - Data becomes visible through `commitChunks`, at commit points: a
//!   write that grows the file, creates a chunk or loses a replica is
//!   committed before it returns; other writes (overwrites inside the file
//!   on replicas all in sync) at the descriptor's next commit point
//!   (`fsync`, `close`, `set_len`, a write that commits), their bytes being
//!   in place meanwhile on every replica the record lists (a reader accepts
//!   a replica at or above the record's version). A returned write is
//!   durable on at least W replicas; nothing it acknowledged is lost when
//!   the writer dies before its next commit point (see docs/client.md).
//! - Several writes per descriptor are in flight at once; per chunk they
//!   are sent, and applied by every replica, in issue order
//!   ([`crate::write_pipeline`]).
//! - A new chunk is placed on up to R distinct live nodes, most free space
//!   first; fewer than W reserved or durable replicas is an error.
//! - An existing chunk is overwritten under an implicit write lock per
//!   write on each of its in-sync replicas, each write creating a version
//!   `(epoch, seq)` of this descriptor's write lease on top of the exact
//!   version its replicas hold (see [`crate::chunk_write`]); a commit lists
//!   exactly the replicas that hold it.
//! - Offsets and sizes are bytes; a chunk covers
//!   `[index * chunk_size, (index + 1) * chunk_size)` of the file.
//!
//! What a failed call leaves behind is documented on each call; for writes
//! see [`Client::write`].
//!
//! Must run inside a tokio `LocalSet` (see [`crate::local`]).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use ringfs_schema::MAX_CHUNK_SIZE;

use crate::chunk_io::{chunk_id, ChunkIo, Layout, ReplicaDigest};
use crate::chunk_write::Writer;
use crate::cluster::Cluster;
use crate::control::Credential;
use crate::control::{
    Attr, ChunkRecord, ClusterMap, ControlClient, CreateOptions, FileHandle, Kind,
};
use crate::error::{Error, Result};
use crate::record_cache::RecordCache;

mod namespace;
mod write;

/// An open file on this client (like a POSIX file descriptor). Numbers
/// start at 3 and are not reused until they wrap.
pub type Fd = u32;

/// Most chunk records asked for in one `getChunks`.
const RECORDS_PER_CALL: u64 = 4096;

/// Most chunk records in one `commitChunks` (the server's limit).
const COMMIT_PART: usize = 4096;

/// Timeouts and caching of a client, all wall-clock.
#[derive(Clone, Copy, Debug)]
pub struct ClientOptions {
    /// One data-plane request (a read or write of up to one chunk); a node
    /// that does not answer within it fails the request with
    /// [`Error::Timeout`]. Default 30 s.
    pub request_timeout: Duration,
    /// How long a node may queue a lock request before answering `timeout`.
    /// Default 10 s.
    pub lock_wait: Duration,
    /// How long reads may use chunk records fetched earlier instead of
    /// asking the control server (see [`crate::record_cache`]); zero makes
    /// every read see every commit made before it started. Default 1 s.
    pub record_cache: Duration,
    /// With a replicated control plane: `stat` and `list` may be answered
    /// by any replica from its own state, which may be behind the leader
    /// (by the writes it has not applied yet). Off by default: every read
    /// is linearizable (the leader confirms its leadership with a majority
    /// before it answers).
    pub stale_reads: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(30),
            lock_wait: Duration::from_secs(10),
            record_cache: crate::record_cache::DEFAULT_MAX_AGE,
            stale_reads: false,
        }
    }
}

/// How to open a file.
#[derive(Clone, Copy, Debug, Default)]
pub struct OpenOptions {
    /// Reads allowed (implied when `write` and `append` are off).
    pub read: bool,
    /// Writes allowed: takes the file's exclusive write lease.
    pub write: bool,
    /// Every write goes to the end of the file (implies `write`).
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
    /// failing with [`Error::Busy`]; the server caps it at 5 minutes.
    pub wait: Duration,
    /// Verified reads: every read through this descriptor compares the
    /// digests of all replicas of each chunk it reads and serves only
    /// content a strict majority of them hold, repairing the replicas that
    /// disagree; with no majority it fails with [`Error::Corrupt`] naming
    /// the chunk (see `docs/client.md`, "Verified reads"). Costs one small
    /// request per replica and chunk on top of each read.
    pub verify_replicas: bool,
}

impl OpenOptions {
    /// Read only: like `open(O_RDONLY)`.
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

/// Where a seek is relative to, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeekFrom {
    /// From the start of the file.
    Start(u64),
    /// From the descriptor's position.
    Current(i64),
    /// From the end of the file as this client last saw it.
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
    layout: Layout,
    /// Writes hold it shared (several in flight); truncation and close
    /// exclusively, so they wait for the writes in flight.
    io: Rc<tokio::sync::RwLock<()>>,
    /// Write descriptors: the lease's view of the chunks it writes.
    writer: Option<Rc<Writer>>,
    /// Chunk records recently read through this descriptor.
    records: Rc<RefCell<RecordCache>>,
    /// Reads are verified against a majority of replicas.
    verify: bool,
}

/// What a read or write needs of an open file, copied out of the table so
/// no borrow is held across an await.
#[derive(Clone)]
struct FileView {
    handle: Rc<FileHandle>,
    io: Rc<tokio::sync::RwLock<()>>,
    records: Rc<RefCell<RecordCache>>,
    size: u64,
    layout: Layout,
    writer: Option<Rc<Writer>>,
    verify: bool,
}

/// A ringfs client: one control connection, data-plane connections per shard
/// endpoint, and a table of open descriptors. Not `Send`: it lives on the
/// `LocalSet` it was connected on.
pub struct Client {
    pub(crate) cluster: Rc<Cluster>,
    pub(crate) io: ChunkIo,
    options: ClientOptions,
    files: RefCell<HashMap<Fd, OpenFile>>,
    next_fd: Cell<Fd>,
    /// Record caches by inode, shared by the descriptors of one file.
    record_caches: RefCell<HashMap<u64, Weak<RefCell<RecordCache>>>>,
}

/// How long taking a write lease again after a leader change may wait
/// behind other writers.
const LEASE_AGAIN_WAIT: Duration = Duration::from_secs(10);

/// Whether `handle`'s connection is gone, judged by the connection and by
/// the error `e` a call through it just got: the RPC layer can answer a
/// pending call "disconnected" before the connection's task has wound
/// down, while `is_connected` still says true.
fn connection_dropped(handle: &FileHandle, e: &Error) -> bool {
    !handle.is_connected() || e.is_disconnect()
}

/// The error of a call through `handle` that is not safe to repeat: when
/// the connection was up when the call started and is gone now, the call
/// may have been applied before it dropped, so its outcome is unknown.
fn handle_call_error(handle: &FileHandle, was_connected: bool, call: String, e: Error) -> Error {
    if was_connected && connection_dropped(handle, &e) {
        Error::OutcomeUnknown {
            message: format!(
                "{call}: the control-server connection dropped during the call; \
                 it may or may not have been applied"
            ),
            source: Box::new(e),
        }
    } else {
        e
    }
}

impl Client {
    /// Connects to the control server at `control_addr` (checking that both
    /// speak the same protocol version) and subscribes to the cluster map,
    /// with [`ClientOptions::default`]. Fails with [`Error::Unavailable`]
    /// if the server cannot be reached and [`Error::VersionMismatch`] if it
    /// speaks another protocol. Authenticates as `cred`'s user (every
    /// later call runs as it): [`Error::Unauthenticated`] if refused.
    pub async fn connect(control_addr: SocketAddr, cred: &Credential) -> Result<Self> {
        Self::connect_with(control_addr, cred, ClientOptions::default()).await
    }

    /// Like [`Client::connect`], with `options`.
    pub async fn connect_with(
        control_addr: SocketAddr,
        cred: &Credential,
        options: ClientOptions,
    ) -> Result<Self> {
        Self::connect_replicas(&[control_addr], cred, options).await
    }

    /// Connects to a control plane given every address it may answer at
    /// (the replicas of a replicated control plane; one address for a
    /// single server): the client talks to the one that serves (the Raft
    /// leader) and follows leadership changes by itself.
    pub async fn connect_replicas(
        control_addrs: &[SocketAddr],
        cred: &Credential,
        options: ClientOptions,
    ) -> Result<Self> {
        Self::connect_tls(control_addrs, cred, options, None).await
    }

    /// [`Client::connect_replicas`] over TLS when `tls` is given: every
    /// connection, to the control servers and to the storage nodes,
    /// verifies the server against the cluster CA and presents `tls`'s
    /// certificate. A failed handshake is [`Error::Unauthenticated`].
    pub async fn connect_tls(
        control_addrs: &[SocketAddr],
        cred: &Credential,
        options: ClientOptions,
        tls: Option<ringfs_ops::tls::Tls>,
    ) -> Result<Self> {
        let cluster = Rc::new(Cluster::connect(control_addrs, cred.clone(), tls).await?);
        Ok(Self {
            io: ChunkIo::new(cluster.clone(), options),
            cluster,
            options,
            files: RefCell::new(HashMap::new()),
            next_fd: Cell::new(3),
            record_caches: RefCell::default(),
        })
    }

    /// If the control connection is gone (the server restarted), connects
    /// again, retrying for up to 30 s, and resubscribes to the map. Returns
    /// whether a new connection was made. The handles (and write leases) of
    /// open descriptors ended with the old connection: a write descriptor
    /// takes its lease again on its next write or truncation; other calls
    /// through an old handle fail with an error. Calls reconnect by
    /// themselves; this makes it explicit.
    pub async fn reconnect(&self) -> Result<bool> {
        self.cluster.reconnect().await
    }

    /// The control-RPC client, for calls this API does not wrap (the
    /// current connection; reconnect first with [`Client::reconnect`]).
    pub fn control(&self) -> ControlClient {
        self.cluster.ctl()
    }

    /// Runs `f` with the connection to the serving control server (the
    /// leader), and again on a new connection while it fails because the
    /// connection dropped or the replica stopped leading, for up to 30 s.
    /// Only for calls that are safe to repeat: reads, and the admin calls,
    /// which are idempotent (adding a member, removing a non-member).
    pub async fn with_control<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: Fn(ControlClient) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        self.cluster.retry(f).await
    }

    /// The current cluster map, fetched fresh (capacities included).
    pub async fn cluster_map(&self) -> Result<ClusterMap> {
        self.cluster.fetch_map().await
    }

    /// Replicas this client repaired after checksum failures.
    pub fn repairs(&self) -> u64 {
        self.io.repairs()
    }

    // ---- descriptors ----

    /// Creates (or truncates) `path` with `layout` and opens it for writing:
    /// [`OpenOptions::create`].
    pub async fn create(&self, path: &str, layout: CreateOptions) -> Result<Fd> {
        self.open(path, &OpenOptions::create(layout)).await
    }

    /// Opens `path` as `opts` says and returns a descriptor at position 0.
    /// A write open takes the file's exclusive write lease, waiting up to
    /// `opts.wait` behind other writers ([`Error::Busy`] after that);
    /// readers never wait. `create` and `truncate` need a write open
    /// ([`Error::InvalidArgument`]). The create is sent again after a
    /// reconnect under the same request id, so an exclusive create that was
    /// applied before the connection dropped is not refused as existing.
    /// If the open itself fails after the create, the created file stays.
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
            self.cluster
                .mutate(
                    || format!("create {path}"),
                    |c, id| async move { c.create_as(Some(id), path, layout).await },
                )
                .await?;
        }
        let wait = opts.wait;
        let handle = self
            .cluster
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
        let writer = write.then(|| Rc::new(Writer::new(handle.write_epoch, attr.size)));
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
                layout: Layout {
                    chunk_size: attr.chunk_size as u64,
                    replication: attr.replication,
                    write_quorum: attr.write_quorum,
                },
                io: Rc::default(),
                writer,
                records,
                verify: opts.verify_replicas,
            },
        );
        Ok((fd, attr))
    }

    /// A commit point: commits what the descriptor's writes acknowledged
    /// (see [`Client::fsync`]), then releases the descriptor and its
    /// control handle (and write lease), after the writes in flight through
    /// it ended. The descriptor is gone even when this fails (the handle is
    /// then released when the connection ends). [`Error::BadDescriptor`]
    /// if it is not open.
    pub async fn close(&self, fd: Fd) -> Result<()> {
        let io = self.with_file(fd, |f| Ok(f.io.clone()))?;
        // Wait for writes in flight through this descriptor.
        let guard = io.write().await;
        let committed = self.commit_point(fd, None).await;
        drop(guard);
        let f = self
            .files
            .borrow_mut()
            .remove(&fd)
            .ok_or_else(|| Error::BadDescriptor(fd.to_string()))?;
        let closed = match Rc::try_unwrap(f.handle) {
            Ok(h) => h.close().await,
            // A concurrent call still holds it: dropping our reference
            // releases the handle when that call ends.
            Err(_) => Ok(()),
        };
        committed.and(closed)
    }

    /// A commit point: every write through `fd` that returned before this
    /// call is committed when it returns (visible to every reader that
    /// fetches chunk records after it; see docs/client.md). Writes still in
    /// flight are not waited for. Nothing to do for a read descriptor.
    /// [`Error::OutcomeUnknown`] if the control connection dropped during
    /// the commit.
    pub async fn fsync(&self, fd: Fd) -> Result<()> {
        self.commit_point(fd, None).await
    }

    /// Attributes of an open file, fresh from the control server (the
    /// descriptor's idea of the size is updated). [`Error::StaleHandle`] if
    /// the file was removed.
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

    /// Moves the descriptor's position (bytes) and returns it; no I/O.
    /// Positions past the end are allowed (a write there leaves a hole that
    /// reads as zeros). [`Error::InvalidArgument`] for a position before 0
    /// or past `u64::MAX`; the position is then unchanged. `End` counts
    /// from the size this client last saw ([`Client::fstat`] refreshes it).
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

    /// Truncates or extends an open file to `size` bytes (write
    /// descriptors; [`Error::BadDescriptor`] otherwise). Bytes past a
    /// shrunk end are gone for good: extending again reads zeros there.
    /// Durable and visible when it returns; the position is unchanged.
    ///
    /// On failure nothing changed, except [`Error::OutcomeUnknown`] (the
    /// control connection dropped during the call): the new size is then
    /// either fully applied or not at all; `fstat` after reconnecting
    /// tells which.
    pub async fn set_len(&self, fd: Fd, size: u64) -> Result<()> {
        let (h, io, records) = self.with_file(fd, |f| {
            if !f.write {
                return Err(Error::BadDescriptor(format!(
                    "{fd} is not open for writing"
                )));
            }
            Ok((f.handle.clone(), f.io.clone(), f.records.clone()))
        })?;
        let _io = io.write().await;
        // Writes acknowledged before the truncation are committed first.
        self.commit_point(fd, None).await?;
        let attr = self
            .handle_call(
                fd,
                &h,
                || format!("set_len {} to {size}", self.path_of(fd).unwrap_or_default()),
                |h, id| async move { h.set_size_as(Some(id), size).await },
            )
            .await;
        records.borrow_mut().clear();
        let attr = attr?;
        if let Ok(Some(w)) = self.with_file(fd, |f| Ok(f.writer.clone())) {
            // Chunks may have been dropped: what it knew is void.
            w.forget(attr.size);
        }
        self.with_file_mut(fd, |f| {
            f.size = attr.size;
            Ok(())
        })
    }

    /// Reads at the descriptor's position and advances it by the bytes
    /// read: like [`Client::pread`], which says what is returned. On
    /// failure the position is unchanged.
    pub async fn read(&self, fd: Fd, buf: &mut [u8]) -> Result<usize> {
        let pos = self.with_file(fd, |f| Ok(f.pos))?;
        let n = self.pread(fd, pos, buf).await?;
        self.with_file_mut(fd, |f| {
            f.pos = pos + n as u64;
            Ok(())
        })?;
        Ok(n)
    }

    /// Reads up to `buf.len()` bytes at `offset`; fewer only at end of file
    /// (0 at or past it). Holes and bytes past a chunk's valid length read
    /// as zeros. Sees every commit made before the call, except that chunk
    /// records fetched less than [`ClientOptions::record_cache`] ago may be
    /// used (see [`crate::record_cache`]). A replica that fails (checksum,
    /// timeout, stale) is skipped for the next; [`Error::Corrupt`] if every
    /// replica of a chunk failed its checksum, [`Error::Unavailable`] if
    /// none could serve it otherwise. On failure `buf` holds unspecified
    /// bytes.
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
        let cs = v.layout.chunk_size;
        let (first, last) = (offset / cs, (offset + n as u64 - 1) / cs);
        let cached = v
            .records
            .borrow()
            .get(first, last, Instant::now(), self.options.record_cache);
        if let Some(records) = cached {
            if self
                .io
                .read_range(&records, cs, offset, buf, v.verify)
                .await
                .is_ok()
            {
                return Ok(n);
            }
            // A cached record may be outdated: retry with fresh ones.
        }
        let (generation, fetched_at) = (v.records.borrow().generation(), Instant::now());
        let records = self.records(&v.handle, first, last).await?;
        v.records
            .borrow_mut()
            .insert(generation, first, last, &records, fetched_at);
        self.io
            .read_range(&records, cs, offset, buf, v.verify)
            .await?;
        Ok(n)
    }

    /// The record cache of `inode`, shared with its other descriptors.
    pub(crate) fn record_cache(&self, inode: u64) -> Rc<RefCell<RecordCache>> {
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
            io: f.io.clone(),
            records: f.records.clone(),
            size: f.size,
            layout: f.layout,
            writer: f.writer.clone(),
            verify: f.verify,
        }
    }

    /// Chunk records with index in `first..=last`, by index (holes absent);
    /// their capabilities are kept for the requests that use them.
    pub(crate) async fn records(
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
        self.io.remember(out.values());
        Ok(out)
    }

    /// Runs a write-handle call of `fd` (a commit, a truncation) under a
    /// request id of its own. If the write lease ended with the control
    /// server that granted it (a leader change, a lost connection), takes
    /// the lease again from the server that serves now and sends the call
    /// again under the same id: applied at most once, and a commit of
    /// chunks whose data is already durable on the nodes is not lost. If
    /// that fails, the first error is returned ([`Error::OutcomeUnknown`]
    /// when the connection dropped during the call).
    async fn handle_call<T, F, Fut>(
        &self,
        fd: Fd,
        h: &Rc<FileHandle>,
        call: impl Fn() -> String,
        f: F,
    ) -> Result<T>
    where
        F: Fn(Rc<FileHandle>, u128) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let id: u128 = rand::random();
        let was_connected = h.is_connected();
        let e = match f(h.clone(), id).await {
            Err(e) if Self::lease_lost(h, &e) => e,
            r => return r.map_err(|e| handle_call_error(h, was_connected, call(), e)),
        };
        // Another call of this descriptor may have taken it again already.
        let current = self.with_file(fd, |f| Ok(f.handle.clone()))?;
        let again = if Rc::ptr_eq(&current, h) {
            self.lease_again(fd, h.attr.inode).await
        } else {
            Ok(current)
        };
        match again {
            Ok(h2) => f(h2, id).await,
            // The first failure says what happened to this call.
            Err(_) => Err(handle_call_error(h, was_connected, call(), e)),
        }
    }

    /// Whether a handle call failed because the handle's lease ended with
    /// its control server (it stopped leading, or the connection to it
    /// dropped, during the call or while the descriptor sat idle, as a
    /// file open across a failover does): a new lease from the server that
    /// serves now may succeed.
    fn lease_lost(h: &FileHandle, e: &Error) -> bool {
        matches!(e, Error::NotLeader(_)) || connection_dropped(h, e)
    }

    /// Takes the write lease of `fd`'s file again (from the control server
    /// that serves now) and makes the new handle the descriptor's. Fails
    /// with [`Error::StaleHandle`] if its path now names another file.
    async fn lease_again(&self, fd: Fd, inode: u64) -> Result<Rc<FileHandle>> {
        let path = self.path_of(fd)?;
        let path = path.as_str();
        let handle = self
            .cluster
            .retry(|c| async move { c.open(path, true, LEASE_AGAIN_WAIT).await })
            .await?;
        if handle.attr.inode != inode {
            return Err(Error::StaleHandle(format!(
                "{path} names another file since it was opened"
            )));
        }
        let handle = Rc::new(handle);
        let writer = Rc::new(Writer::new(handle.write_epoch, handle.attr.size));
        self.with_file_mut(fd, |f| {
            // The file as it is now: another writer may have changed its
            // size while no lease was held here.
            f.size = handle.attr.size;
            f.handle = handle.clone();
            // Versions the new lease creates carry its epoch.
            f.writer = Some(writer);
            Ok(())
        })?;
        Ok(handle)
    }

    /// Every replica of every chunk of the file at `path`, with what the
    /// replica says it holds (version, length, and a digest of its stored
    /// CRCs: replicas at one version must agree on it), or why it could not
    /// be asked. No chunk data crosses the network. For `ringfs fsck
    /// --verify`.
    pub async fn replica_digests(
        &self,
        path: &str,
    ) -> Result<Vec<(ChunkRecord, Vec<(u64, Result<ReplicaDigest>)>)>> {
        let fd = self.open(path, &OpenOptions::read()).await?;
        let h = self.with_file(fd, |f| Ok(f.handle.clone()))?;
        let size = self.with_file(fd, |f| Ok(f.size))?;
        let cs = self.with_file(fd, |f| Ok(f.layout.chunk_size))?.max(1);
        let records = if size == 0 {
            Ok(HashMap::new())
        } else {
            self.records(&h, 0, (size - 1) / cs).await
        };
        let _ = self.close(fd).await;
        let mut records: Vec<ChunkRecord> = records?.into_values().collect();
        records.sort_by_key(|r| r.index);
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            let id = chunk_id(r.chunk_id);
            let mut replicas = Vec::with_capacity(r.replicas.len());
            for &node in &r.replicas {
                replicas.push((node, self.io.digest(id, node).await));
            }
            out.push((r, replicas));
        }
        Ok(out)
    }
}

/// Runs `fut` to completion on a current-thread tokio runtime inside a
/// `LocalSet`: the simplest way to use the client from synchronous code.
/// Panics if the runtime cannot be built (the process is out of threads or
/// file descriptors); [`crate::BlockingClient`] returns that as an error.
pub fn local<F: std::future::Future>(fut: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building a tokio runtime");
    tokio::task::LocalSet::new().block_on(&rt, fut)
}
