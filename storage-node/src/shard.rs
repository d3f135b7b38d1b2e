//! One shard: a glommio executor pinned to a core that owns a slice of the
//! chunks (`ChunkId::shard`), their directory, lock table, reservations and
//! its own TCP listener. Nothing here is shared with other shards; the
//! control-plane thread talks to a shard only through [`ShardCommand`]s.
//!
//! This file holds the shard's state, its commands and its accept loop;
//! a connection is served by [`crate::conn`], each request by
//! [`crate::ops`], and the chunk bytes live in [`crate::chunk_store`].

use crate::chunk_store::{ChunkStore, StoreError, CONFIRM_AFTER};
use crate::disk::dma::DmaDir;
use crate::lock_table::LockTable;
use crate::ops::LockWaiter;
use crate::peer::PeerPool;
use crate::reservations::{IdMinter, Reservations};
use crate::token::TokenKey;
use futures::channel::{mpsc, oneshot};
use futures::StreamExt;
use glommio::net::TcpListener;
use ringfs_schema::ids::ChunkId;
use ringfs_schema::Version;
use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often lapsed leases and waiter deadlines are swept.
const SWEEP_EVERY: Duration = Duration::from_millis(20);

/// Tunables of a shard.
#[derive(Clone, Debug)]
pub struct ShardConfig {
    pub index: usize,
    pub shards: usize,
    /// The shard's chunk directory.
    pub dir: PathBuf,
    /// Capacity share of this shard in bytes (0 = a share of the filesystem).
    pub capacity_bytes: u64,
    pub default_lease: Duration,
    pub max_lease: Duration,
    /// Lease of implicit locks (they are released right after the operation).
    pub implicit_lease: Duration,
    /// Bytes per second the scrubber re-reads (0 = no scrubbing).
    pub scrub_bytes_per_sec: u64,
    /// How long a chain hop (or a copy's target) may take to answer.
    pub forward_timeout: Duration,
    /// Bounds on what clients can make this shard hold.
    pub limits: Limits,
    /// This shard's metric handles (touched by this shard only).
    pub metrics: crate::metrics::ShardMetrics,
    /// TLS for the data plane (accepted and peer connections), if
    /// configured: then nothing else is spoken.
    pub tls: Option<ringfs_ops::tls::Tls>,
    /// The data-plane keys (derived from the cluster secret) that every
    /// request's capability is checked with, and that this node's own
    /// requests to other nodes (re-replication) are issued with.
    pub capabilities: ringfs_ops::capability::CapabilityKeys,
    /// Wakes the control link to fetch the cluster map now: a forward or
    /// copy named an address the shard's map does not list (yet: a node
    /// that joined since the last map is otherwise learned of only at the
    /// next heartbeat, and the write waited for it).
    pub map_wanted: Arc<tokio::sync::Notify>,
}

/// What clients can make one shard hold, at most (`docs/operations.md`
/// states them). Past a bound a connection is not read from (bytes), a new
/// connection is closed at once, a lock or reservation is refused.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Bytes of request payloads and responses one connection may have in
    /// flight (a response counts until it is written to the socket). At
    /// least the largest payload.
    pub conn_bytes: u64,
    /// The same, over all connections of the shard.
    pub shard_bytes: u64,
    /// Requests one connection may have in flight.
    pub conn_requests: u64,
    /// Open connections.
    pub connections: usize,
    /// Chunks with lock holders or waiters.
    pub lock_chunks: usize,
    /// Outstanding reservations.
    pub reservations: usize,
    /// A response the peer does not take within this closes its connection
    /// (a peer that stops reading stalls only itself, and only this long).
    pub send_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            conn_bytes: 128 << 20,
            shard_bytes: 1 << 30,
            conn_requests: 256,
            connections: 1024,
            lock_chunks: 65_536,
            reservations: 65_536,
            send_timeout: Duration::from_secs(60),
        }
    }
}

/// A shard's capacity report, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CapacityReport {
    pub total: u64,
    pub used: u64,
    pub reserved: u64,
    pub chunks: u64,
}

/// What the control-plane thread may ask a shard.
pub enum ShardCommand {
    Capacity(oneshot::Sender<CapacityReport>),
    /// (id, version, length) of every chunk.
    Inventory(oneshot::Sender<Vec<(ChunkId, Version, u64)>>),
    /// Chunks that failed a checksum (scrubber or a read) and are still here.
    Bad(oneshot::Sender<Vec<ChunkId>>),
    /// Delete a chunk unless it is newer than the version given (garbage
    /// collection, dropped replicas); a missing chunk is fine.
    Delete(ChunkId, Version, oneshot::Sender<Result<(), String>>),
    /// Copy a chunk at exactly `version` to another node's shard, where it
    /// is at `target_version` ((0, 0): absent) (re-replication); answers
    /// the verified (version, length).
    Copy {
        id: ChunkId,
        version: Version,
        target: String,
        target_version: Version,
        reply: oneshot::Sender<Result<(Version, u64), String>>,
    },
    /// The cluster's members as of the latest map (shard endpoint -> node
    /// id): a shard forwards and copies only to these.
    Members(Arc<Members>),
    /// Graceful stop (SIGTERM): stop accepting connections and reading
    /// requests, answer every request already read, then return from
    /// [`Shard::serve`].
    Drain,
}

/// Shard endpoints (`ip:port`) of the cluster map's nodes, with their
/// node ids.
pub type Members = std::collections::HashMap<String, u64>;

/// How long a forward or copy to an address the shard's map does not list
/// waits for a newer map (a node that just joined) before it is refused.
const MEMBER_WAIT: Duration = Duration::from_secs(3);

/// Resolves once a drain was asked for (never if the asker went away).
pub(crate) type StopSignal = futures::future::Shared<oneshot::Receiver<()>>;

pub(crate) async fn stopped(stop: StopSignal) {
    if stop.await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The state of one shard (lives on its executor only).
pub struct Shard {
    pub(crate) cfg: ShardConfig,
    pub(crate) node_id: Arc<AtomicU64>,
    pub(crate) store: ChunkStore,
    pub(crate) locks: RefCell<LockTable<LockWaiter>>,
    pub(crate) reservations: RefCell<Reservations>,
    pub(crate) minter: RefCell<IdMinter>,
    pub(crate) key: TokenKey,
    pub(crate) peers: PeerPool,
    /// The members of the latest cluster map (none before the first).
    members: RefCell<Arc<Members>>,
    /// Chunks that failed a checksum here; reported to the control server
    /// with every heartbeat until the chunk is deleted (replaced).
    pub(crate) bad: RefCell<std::collections::HashSet<ChunkId>>,
    /// Payload and response bytes in flight over all connections
    /// ([`Limits::shard_bytes`]).
    pub(crate) bytes_in_flight: Rc<glommio::sync::Semaphore>,
    /// Open connections, and the id of the next one (ids start at 1).
    pub(crate) connections: Cell<usize>,
    pub(crate) next_conn: Cell<u64>,
}

impl Shard {
    /// Opens the shard's store (recovering its chunks) and id counter.
    pub async fn open(
        cfg: ShardConfig,
        node_id: Arc<AtomicU64>,
        key: TokenKey,
    ) -> anyhow::Result<Rc<Self>> {
        let dir = DmaDir::open(&cfg.dir)
            .await
            .map_err(|source| StoreError::Setup {
                what: cfg.dir.display().to_string(),
                source,
            })?;
        let store = ChunkStore::open(dir).await?;
        cfg.metrics.replay_dropped(store.dropped_at_replay());
        let minter = IdMinter::open(&cfg.dir.join("id-counter"))?;
        tracing::info!(
            shard = cfg.index,
            chunks = store.chunk_count(),
            "shard recovered"
        );
        let limits = cfg.limits;
        let peers = PeerPool::new(cfg.tls.clone());
        Ok(Rc::new(Self {
            cfg,
            node_id,
            store,
            locks: RefCell::new(LockTable::with_max_chunks(limits.lock_chunks)),
            reservations: RefCell::new(Reservations::new(limits.reservations)),
            minter: RefCell::new(minter),
            key,
            peers,
            members: RefCell::default(),
            bad: RefCell::default(),
            bytes_in_flight: Rc::new(glommio::sync::Semaphore::new(limits.shard_bytes)),
            connections: Cell::new(0),
            next_conn: Cell::new(1),
        }))
    }

    /// Serves `listener` and `commands` until a [`ShardCommand::Drain`],
    /// then returns once every connection's requests are answered.
    pub async fn serve(
        self: Rc<Self>,
        listener: TcpListener,
        commands: mpsc::UnboundedReceiver<ShardCommand>,
    ) {
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let stop: StopSignal = futures::FutureExt::shared(stop_rx);
        glommio::spawn_local(self.clone().sweep_locks()).detach();
        glommio::spawn_local(self.clone().confirm_direct_writes()).detach();
        glommio::spawn_local(self.clone().run_commands(commands, stop_tx)).detach();
        if self.cfg.scrub_bytes_per_sec > 0 {
            glommio::spawn_local(crate::scrubber::run(self.clone())).detach();
        }
        self.accept_until_stopped(listener, stop).await;
    }

    /// Releases lapsed leases and times out lock waiters, forever.
    async fn sweep_locks(self: Rc<Self>) {
        loop {
            glommio::timer::sleep(SWEEP_EVERY).await;
            let changes = self.locks.borrow_mut().expire(Instant::now());
            self.apply(changes);
        }
    }

    /// Checkpoints the chunk store whenever a direct write stayed
    /// unconfirmed for [`CONFIRM_AFTER`] (`chunk_store/journaled.rs`),
    /// forever.
    async fn confirm_direct_writes(self: Rc<Self>) {
        loop {
            glommio::timer::sleep(CONFIRM_AFTER / 4).await;
            if let Err(e) = self.store.confirm_direct_writes(CONFIRM_AFTER).await {
                tracing::error!(shard = self.cfg.index, "journal checkpoint failed: {e}");
            }
        }
    }

    /// Answers the control-plane thread's commands; a drain fires `stop`.
    async fn run_commands(
        self: Rc<Self>,
        mut commands: mpsc::UnboundedReceiver<ShardCommand>,
        stop: oneshot::Sender<()>,
    ) {
        let mut stop = Some(stop);
        while let Some(cmd) = commands.next().await {
            match cmd {
                ShardCommand::Capacity(tx) => {
                    let _ = tx.send(self.capacity());
                }
                ShardCommand::Inventory(tx) => {
                    let _ = tx.send(self.store.inventory());
                }
                ShardCommand::Bad(tx) => {
                    let mut bad: Vec<_> = self.bad.borrow().iter().copied().collect();
                    bad.sort();
                    let _ = tx.send(bad);
                }
                // Long-running commands get their own tasks so that
                // capacity and inventory requests never wait on them.
                ShardCommand::Delete(id, newest, tx) => {
                    let me = self.clone();
                    glommio::spawn_local(async move {
                        let _ = tx.send(me.delete_command(id, newest).await);
                    })
                    .detach();
                }
                ShardCommand::Copy {
                    id,
                    version,
                    target,
                    target_version,
                    reply,
                } => {
                    let me = self.clone();
                    glommio::spawn_local(async move {
                        let r = me.copy_command(id, version, &target, target_version).await;
                        let _ = reply.send(r);
                    })
                    .detach();
                }
                ShardCommand::Members(m) => {
                    // Connections to nodes that left the map go now.
                    self.peers.retain(|addr| m.contains_key(addr));
                    *self.members.borrow_mut() = m;
                }
                ShardCommand::Drain => {
                    if let Some(tx) = stop.take() {
                        let _ = tx.send(());
                    }
                }
            }
        }
        // Keep the stop signal pending (not cancelled) forever.
        std::future::pending::<()>().await;
    }

    /// Accepts connections until `stop`, then waits for the connections to
    /// finish the requests they already read.
    async fn accept_until_stopped(self: Rc<Self>, listener: TcpListener, stop: StopSignal) {
        // Connections run through the gate so that a drain can wait for them.
        let gate = glommio::sync::Gate::new();
        loop {
            let accepted = {
                let stop = std::pin::pin!(stopped(stop.clone()));
                let accept = std::pin::pin!(listener.accept());
                match futures::future::select(stop, accept).await {
                    futures::future::Either::Left(_) => break,
                    futures::future::Either::Right((r, _)) => r,
                }
            };
            match accepted {
                Ok(stream) if self.connections.get() >= self.cfg.limits.connections => {
                    // Closed at once: the peer sees the connection end.
                    self.cfg.metrics.connection_refused();
                    tracing::warn!(
                        shard = self.cfg.index,
                        limit = self.cfg.limits.connections,
                        "connection limit reached: closing a new connection"
                    );
                    drop(stream);
                }
                Ok(stream) => match gate.spawn(self.clone().serve_conn(stream, stop.clone())) {
                    Ok(task) => {
                        task.detach();
                    }
                    Err(e) => tracing::warn!(shard = self.cfg.index, "connection refused: {e}"),
                },
                Err(e) => {
                    tracing::warn!(shard = self.cfg.index, "accept failed: {e}");
                    glommio::timer::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        drop(listener);
        tracing::info!(
            shard = self.cfg.index,
            "draining: no new requests, finishing those in flight"
        );
        let _ = gate.close().await;
        // A restart (or an upgrade) then finds no direct write to check.
        if let Err(e) = self.store.confirm_direct_writes(Duration::ZERO).await {
            tracing::error!(shard = self.cfg.index, "journal checkpoint failed: {e}");
        }
        tracing::info!(shard = self.cfg.index, "drained");
    }

    /// The node id of the member at `addr` in the latest map, if listed.
    pub(crate) fn member_id(&self, addr: &str) -> Option<u64> {
        self.members.borrow().get(addr).copied()
    }

    /// The node id of the cluster member whose shard listens at `addr`.
    /// An address the map does not list gets up to [`MEMBER_WAIT`] for a
    /// newer map (the control link fetches one when the epoch moves);
    /// then it is refused: a node never sends chunk data to an address a
    /// request names unless it is a member's.
    pub(crate) async fn member_at(&self, addr: &str) -> Result<u64, crate::ops::OpError> {
        let deadline = Instant::now() + MEMBER_WAIT;
        let mut asked = false;
        loop {
            if let Some(&id) = self.members.borrow().get(addr) {
                return Ok(id);
            }
            if !asked {
                self.cfg.map_wanted.notify_one();
                asked = true;
            }
            if Instant::now() >= deadline {
                return Err(crate::ops::OpError(
                    ringfs_schema::frame::Status::Denied,
                    format!("{addr} is not a shard of a node of the cluster map"),
                ));
            }
            glommio::timer::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Capacity of this shard: its share of the configured capacity (or of
    /// the filesystem), bounded by the filesystem's free space.
    pub fn capacity(&self) -> CapacityReport {
        let (fs_total, _) = fs_space(&self.cfg.dir).unwrap_or((0, 0));
        let shards = self.cfg.shards as u64;
        let total = if self.cfg.capacity_bytes > 0 {
            self.cfg.capacity_bytes
        } else {
            fs_total / shards
        };
        let used = self.store.used_bytes();
        let reserved = self
            .reservations
            .borrow()
            .outstanding(|id| self.store.info(id).map(|i| on_disk(i.length)).unwrap_or(0));
        CapacityReport {
            total,
            used,
            reserved,
            chunks: self.store.chunk_count() as u64,
        }
    }

    /// Bytes this shard may still promise: its share minus what is used,
    /// bounded by its share of the filesystem's available space.
    pub(crate) fn free_bytes(&self) -> u64 {
        let c = self.capacity();
        let (_, fs_avail) = fs_space(&self.cfg.dir).unwrap_or((0, 0));
        c.total
            .saturating_sub(c.used)
            .min(fs_avail / self.cfg.shards as u64)
    }
}

/// Bytes a chunk of `length` data bytes occupies on disk (header included),
/// as [`ChunkStore::used_bytes`] counts it.
pub(crate) fn on_disk(length: u64) -> u64 {
    use crate::chunk_file::{align_up, ALIGN, DATA_OFFSET};
    DATA_OFFSET + align_up(length, ALIGN)
}

/// (total, available) bytes of the filesystem holding `dir`.
pub fn fs_space(dir: &std::path::Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let frsize = st.f_frsize as u64;
    Ok((st.f_blocks as u64 * frsize, st.f_bavail as u64 * frsize))
}
