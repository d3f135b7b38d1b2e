//! The Cap'n Proto RPC service: the `Control` bootstrap capability, open
//! file handles and cluster-map subscriptions.
//!
//! Everything here runs on one thread (capnp-rpc is single-threaded): reads
//! go straight to the store's MVCC snapshots, mutations go through the
//! group-commit writer thread and are answered once durable.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use capnp::capability::Rc as CapRc;
use ringfs_schema::common_capnp::capacity;
use ringfs_schema::control_capnp::{
    attr, chunk_record, cluster_map, control, file_handle, map_watcher, subscription, FileKind,
    OpenMode,
};
use ringfs_schema::{read_chunk_id, write_chunk_id, PROTOCOL_VERSION};

use crate::error::{ControlError, Result};
use crate::group_commit::Committer;
use crate::leases::{Acquire, Guid, Leases};
use crate::membership::{Capacity, Membership};
use crate::records::{Chunk, Inode, Kind};
use crate::store::{CreateOptions, MetaStore, Mutation, Outcome};

/// Most entries one `list` call returns.
pub const MAX_LIST: u32 = 10_000;
/// Entries a `list` call with limit 0 returns.
pub const DEFAULT_LIST: u32 = 1_000;
/// Most chunk records one `getChunks` or `commitChunks` call carries.
pub const MAX_CHUNKS_PER_CALL: u32 = 4_096;
/// Longest a write open may wait for the lease.
pub const MAX_WAIT: Duration = Duration::from_secs(300);

/// Timing settings of membership.
#[derive(Clone, Copy, Debug)]
pub struct MembershipTiming {
    /// How often nodes heartbeat.
    pub heartbeat: Duration,
    /// Silence after which a node is down.
    pub node_ttl: Duration,
}

/// State shared by every connection.
pub struct State {
    store: Arc<MetaStore>,
    committer: Committer,
    secret: Vec<u8>,
    timing: MembershipTiming,
    leases: RefCell<Leases>,
    membership: RefCell<Membership>,
    /// Cluster-map epoch as last persisted.
    epoch: Cell<u64>,
    watchers: RefCell<Vec<(u64, map_watcher::Client)>>,
    next_watcher: Cell<u64>,
}

impl State {
    pub fn new(
        store: Arc<MetaStore>,
        committer: Committer,
        secret: Vec<u8>,
        timing: MembershipTiming,
    ) -> Result<Rc<Self>> {
        let membership = Membership::new(store.nodes()?);
        let epoch = store.epoch()?;
        Ok(Rc::new(State {
            store,
            committer,
            secret,
            timing,
            leases: RefCell::default(),
            membership: RefCell::new(membership),
            epoch: Cell::new(epoch),
            watchers: RefCell::default(),
            next_watcher: Cell::new(0),
        }))
    }

    /// The bootstrap capability to serve on every connection.
    pub fn bootstrap(self: &Rc<Self>) -> control::Client {
        capnp_rpc::new_client(ControlImpl {
            state: self.clone(),
        })
    }

    /// Membership figures for metrics: nodes up and down, and the capacity
    /// reported by the nodes that are up, summed.
    pub fn cluster_figures(&self) -> crate::metrics::ClusterFigures {
        let mut f = crate::metrics::ClusterFigures {
            epoch: self.epoch.get(),
            ..Default::default()
        };
        for (_, n) in self.membership.borrow().iter() {
            if n.up {
                f.nodes_up += 1;
                f.capacity.total += n.capacity.total;
                f.capacity.used += n.capacity.used;
                f.capacity.reserved += n.capacity.reserved;
                f.capacity.chunks += n.capacity.chunks;
            } else {
                f.nodes_down += 1;
            }
        }
        f
    }

    /// Like [`State::bootstrap`], with every call counted and timed.
    pub fn bootstrap_metered(
        self: &Rc<Self>,
        metrics: Rc<crate::metrics::ControlMetrics>,
    ) -> control::Client {
        crate::metrics::metered_client(
            ControlImpl {
                state: self.clone(),
            },
            metrics,
        )
    }

    /// Marks silent nodes down; on any change, persists a new epoch and
    /// notifies subscribers. Called periodically by the server.
    pub async fn sweep(self: &Rc<Self>) -> Result<()> {
        let down = self
            .membership
            .borrow_mut()
            .sweep(Instant::now(), self.timing.node_ttl);
        if !down.is_empty() {
            tracing::warn!(nodes = ?down, "nodes missed heartbeats: marked down");
            self.map_changed().await?;
        }
        Ok(())
    }

    /// Persists a new epoch, then pushes the map to every watcher.
    async fn map_changed(self: &Rc<Self>) -> Result<()> {
        if let Outcome::Epoch(e) = self.committer.submit(Mutation::BumpEpoch).await? {
            self.epoch.set(self.epoch.get().max(e));
        }
        self.notify_watchers();
        Ok(())
    }

    fn notify_watchers(self: &Rc<Self>) {
        let watchers = self.watchers.borrow().clone();
        for (id, watcher) in watchers {
            let mut req = watcher.update_request();
            self.fill_map(req.get().init_map());
            let state = Rc::downgrade(self);
            tokio::task::spawn_local(async move {
                if let Err(e) = req.send().promise.await {
                    tracing::debug!(watcher = id, error = %e, "dropping a map watcher");
                    if let Some(state) = state.upgrade() {
                        state.watchers.borrow_mut().retain(|(w, _)| *w != id);
                    }
                }
            });
        }
    }

    fn fill_map(&self, mut map: cluster_map::Builder) {
        map.set_epoch(self.epoch.get());
        let membership = self.membership.borrow();
        let nodes: Vec<_> = membership.iter().collect();
        let mut list = map.init_nodes(nodes.len() as u32);
        let now = Instant::now();
        for (i, (id, n)) in nodes.into_iter().enumerate() {
            let mut b = list.reborrow().get(i as u32);
            b.set_node_id(*id);
            b.set_up(n.up);
            b.set_last_heartbeat_ago_ms(
                n.last_heartbeat
                    .map(|t| now.saturating_duration_since(t).as_millis() as u64)
                    .unwrap_or(u64::MAX),
            );
            let mut shards = b.reborrow().init_shards(n.shards.len() as u32);
            for (s, addr) in n.shards.iter().enumerate() {
                let mut e = shards.reborrow().get(s as u32);
                e.set_shard(s as u16);
                e.set_address(addr.as_str());
            }
            let mut c = b.init_capacity();
            c.set_total_bytes(n.capacity.total);
            c.set_used_bytes(n.capacity.used);
            c.set_reserved_bytes(n.capacity.reserved);
            c.set_chunk_count(n.capacity.chunks);
        }
    }
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn text(r: capnp::Result<capnp::text::Reader<'_>>) -> Result<String> {
    r?.to_string()
        .map_err(|_| ControlError::InvalidArgument("text is not valid UTF-8".into()))
}

fn fill_attr(mut b: attr::Builder, ino: u64, a: &Inode) {
    b.set_inode(ino);
    b.set_kind(match a.kind {
        Kind::File => FileKind::File,
        Kind::Directory => FileKind::Directory,
    });
    b.set_size(a.size);
    b.set_mode(a.mode);
    b.set_mtime_ns(a.mtime_ns);
    b.set_chunk_size(a.chunk_size);
    b.set_replication(a.replication);
    b.set_write_quorum(a.write_quorum);
    b.set_version(a.version);
}

fn read_capacity(c: capacity::Reader) -> Capacity {
    Capacity {
        total: c.get_total_bytes(),
        used: c.get_used_bytes(),
        reserved: c.get_reserved_bytes(),
        chunks: c.get_chunk_count(),
    }
}

fn read_chunk_record(r: chunk_record::Reader) -> Result<(u64, Chunk)> {
    let id = read_chunk_id(r.get_chunk_id()?);
    let replicas = r.get_replicas()?;
    if replicas.len() > u8::MAX as u32 {
        return Err(ControlError::InvalidArgument("too many replicas".into()));
    }
    Ok((
        r.get_index(),
        Chunk {
            id,
            replicas: replicas.iter().collect(),
            length: r.get_length(),
            version: r.get_version(),
        },
    ))
}

fn fill_chunk_record(mut b: chunk_record::Builder, index: u64, c: &Chunk) {
    b.set_index(index);
    write_chunk_id(b.reborrow().init_chunk_id(), c.id);
    b.set_length(c.length);
    b.set_version(c.version);
    let mut reps = b.init_replicas(c.replicas.len() as u32);
    for (i, r) in c.replicas.iter().enumerate() {
        reps.set(i as u32, *r);
    }
}

fn node_key(r: capnp::Result<capnp::data::Reader<'_>>) -> Result<[u8; 16]> {
    let k = r?;
    if k.is_empty() {
        return Ok([0; 16]);
    }
    k.try_into()
        .map_err(|_| ControlError::InvalidArgument("a node key is 16 bytes".into()))
}

/// Runs `f` and turns a [`ControlError`] into a typed wire error.
async fn wire<F: std::future::Future<Output = Result<()>>>(f: F) -> Result<(), capnp::Error> {
    f.await.map_err(capnp::Error::from)
}

struct ControlImpl {
    state: Rc<State>,
}

impl ControlImpl {
    async fn mutate_attr(&self, m: Mutation, out: attr::Builder<'_>) -> Result<()> {
        match self.state.committer.submit(m).await? {
            Outcome::Attr(ino, a) => {
                fill_attr(out, ino, &a);
                Ok(())
            }
            other => Err(ControlError::Store(format!("unexpected outcome {other:?}"))),
        }
    }

    /// Waits (FIFO, up to `wait`) for the write lease on `inode`.
    async fn acquire_write(&self, inode: u64, guid: Guid, wait: Duration) -> Result<()> {
        let acquired = self.state.leases.borrow_mut().acquire(inode, guid);
        let rx = match acquired {
            Acquire::Granted => return Ok(()),
            Acquire::Queued(rx) => rx,
        };
        // If this call is dropped while queued, or times out, leave the queue
        // (or hand on a lease granted at the last moment).
        let guard = LeaseGuard {
            state: self.state.clone(),
            inode,
            guid,
        };
        let granted = matches!(tokio::time::timeout(wait, rx).await, Ok(Ok(())))
            || self.state.leases.borrow().holds(inode, &guid);
        if granted {
            std::mem::forget(guard);
            Ok(())
        } else {
            Err(ControlError::Busy(format!(
                "file is open for writing by another client (waited {} ms)",
                wait.as_millis()
            )))
        }
    }
}

/// Releases a lease or queue place unless forgotten.
struct LeaseGuard {
    state: Rc<State>,
    inode: u64,
    guid: Guid,
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        self.state
            .leases
            .borrow_mut()
            .release(self.inode, &self.guid);
    }
}

impl control::Server for ControlImpl {
    fn hello(
        self: CapRc<Self>,
        params: control::HelloParams,
        mut results: control::HelloResults,
    ) -> impl std::future::Future<Output = Result<(), capnp::Error>> + 'static {
        wire(async move {
            let theirs = params.get()?.get_protocol_version();
            if theirs != PROTOCOL_VERSION {
                return Err(ControlError::VersionMismatch(format!(
                    "client speaks protocol {theirs}, this server speaks {PROTOCOL_VERSION}"
                )));
            }
            let mut r = results.get();
            r.set_protocol_version(PROTOCOL_VERSION);
            r.set_server_version(concat!("ringfs-control ", env!("CARGO_PKG_VERSION")));
            Ok(())
        })
    }

    fn create(
        self: CapRc<Self>,
        params: control::CreateParams,
        mut results: control::CreateResults,
    ) -> impl std::future::Future<Output = Result<(), capnp::Error>> + 'static {
        wire(async move {
            let p = params.get()?;
            let path = text(p.get_path())?;
            let o = p.get_options()?;
            let options = CreateOptions {
                mode: o.get_mode(),
                chunk_size: o.get_chunk_size(),
                replication: o.get_replication(),
                write_quorum: o.get_write_quorum(),
                exclusive: o.get_exclusive(),
            };
            let m = Mutation::Create {
                path,
                options,
                now_ns: now_ns(),
            };
            self.mutate_attr(m, results.get().init_attr()).await
        })
    }

    fn mkdir(
        self: CapRc<Self>,
        params: control::MkdirParams,
        mut results: control::MkdirResults,
    ) -> impl std::future::Future<Output = Result<(), capnp::Error>> + 'static {
        wire(async move {
            let p = params.get()?;
            let m = Mutation::Mkdir {
                path: text(p.get_path())?,
                mode: p.get_mode(),
                now_ns: now_ns(),
            };
            self.mutate_attr(m, results.get().init_attr()).await
        })
    }

    fn unlink(
        self: CapRc<Self>,
        params: control::UnlinkParams,
        _: control::UnlinkResults,
    ) -> impl std::future::Future<Output = Result<(), capnp::Error>> + 'static {
        wire(async move {
            let path = text(params.get()?.get_path())?;
            let m = Mutation::Unlink {
                path,
                now_ns: now_ns(),
            };
            self.state.committer.submit(m).await.map(drop)
        })
    }

    fn rmdir(
        self: CapRc<Self>,
        params: control::RmdirParams,
        _: control::RmdirResults,
    ) -> impl std::future::Future<Output = Result<(), capnp::Error>> + 'static {
        wire(async move {
            let path = text(params.get()?.get_path())?;
            let m = Mutation::Rmdir {
                path,
                now_ns: now_ns(),
            };
            self.state.committer.submit(m).await.map(drop)
        })
    }

    fn rename(
        self: CapRc<Self>,
        params: control::RenameParams,
        _: control::RenameResults,
    ) -> impl std::future::Future<Output = Result<(), capnp::Error>> + 'static {
        wire(async move {
            let p = params.get()?;
            let m = Mutation::Rename {
                from: text(p.get_from())?,
                to: text(p.get_to())?,
                now_ns: now_ns(),
            };
            self.state.committer.submit(m).await.map(drop)
        })
    }

    fn stat(
        self: CapRc<Self>,
        params: control::StatParams,
        mut results: control::StatResults,
    ) -> impl std::future::Future<Output = Result<(), capnp::Error>> + 'static {
        wire(async move {
            let path = text(params.get()?.get_path())?;
            let (ino, a) = self.state.store.stat(&path)?;
            fill_attr(results.get().init_attr(), ino, &a);
            Ok(())
        })
    }

    fn list(
        self: CapRc<Self>,
        params: control::ListParams,
        mut results: control::ListResults,
    ) -> impl std::future::Future<Output = Result<(), capnp::Error>> + 'static {
        wire(async move {
            let p = params.get()?;
            let path = text(p.get_path())?;
            let after = text(p.get_after())?;
            let limit = match p.get_limit() {
                0 => DEFAULT_LIST,
                n => n.min(MAX_LIST),
            };
            let (entries, more) = self.state.store.list(&path, &after, limit as usize)?;
            let mut r = results.get();
            r.set_more(more);
            let mut list = r.init_entries(entries.len() as u32);
            for (i, e) in entries.iter().enumerate() {
                let mut b = list.reborrow().get(i as u32);
                b.set_name(e.name.as_str());
                fill_attr(b.init_attr(), e.inode, &e.attr);
            }
            Ok(())
        })
    }

    fn open(
        self: CapRc<Self>,
        params: control::OpenParams,
        mut results: control::OpenResults,
    ) -> impl std::future::Future<Output = Result<(), capnp::Error>> + 'static {
        wire(async move {
            let p = params.get()?;
            let path = text(p.get_path())?;
            let write = p.get_mode()? == OpenMode::Write;
            let wait = Duration::from_millis(p.get_wait_ms() as u64).min(MAX_WAIT);
            let (ino, a) = self.state.store.stat(&path)?;
            if a.kind == Kind::Directory {
                return Err(ControlError::IsDirectory(path));
            }
            let guid: Guid = rand::random();
            if write {
                self.acquire_write(ino, guid, wait).await?;
            }
            let handle = FileHandleImpl {
                state: self.state.clone(),
                guid,
                inode: ino,
                write,
                closed: Cell::new(false),
            };
            // The file may have been removed while we waited for the lease.
            let attr_now = match self.state.store.inode(ino)? {
                Some(a) => a,
                None => {
                    drop(handle);
                    return Err(ControlError::NotFound(path));
                }
            };
            let mut r = results.get();
            r.set_guid(&guid);
            fill_attr(r.reborrow().init_attr(), ino, &attr_now);
            r.set_handle(crate::metrics::file_handle_client(handle));
            Ok(())
        })
    }

    fn join(
        self: CapRc<Self>,
        params: control::JoinParams,
        mut results: control::JoinResults,
    ) -> impl std::future::Future<Output = Result<(), capnp::Error>> + 'static {
        wire(async move {
            let p = params.get()?;
            if !crate::store::constant_time_eq(p.get_secret()?, &self.state.secret) {
                return Err(ControlError::PermissionDenied(
                    "wrong cluster secret".to_string(),
                ));
            }
            let node_id = p.get_node_id();
            let key = node_key(p.get_node_key())?;
            let shards = p
                .get_shards()?
                .iter()
                .map(|s| text(s.get_address()))
                .collect::<Result<Vec<_>>>()?;
            if shards.is_empty() || shards.len() > 1024 {
                return Err(ControlError::InvalidArgument(
                    "a node has 1 to 1024 shard endpoints".into(),
                ));
            }
            for s in &shards {
                if s.parse::<std::net::SocketAddr>().is_err() {
                    return Err(ControlError::InvalidArgument(format!(
                        "shard endpoint {s:?} is not ip:port"
                    )));
                }
            }
            let capacity = read_capacity(p.get_capacity()?);
            let m = Mutation::Join {
                node_id,
                key,
                new_key: rand::random(),
                shards: shards.clone(),
            };
            let Outcome::Joined {
                node_id,
                key,
                epoch,
            } = self.state.committer.submit(m).await?
            else {
                return Err(ControlError::Store("unexpected join outcome".into()));
            };
            self.state.epoch.set(self.state.epoch.get().max(epoch));
            self.state
                .membership
                .borrow_mut()
                .joined(node_id, key, shards, capacity);
            tracing::info!(node_id, "node joined");
            self.state.notify_watchers();
            let mut r = results.get();
            r.set_node_id(node_id);
            r.set_node_key(&key);
            r.set_heartbeat_ms(self.state.timing.heartbeat.as_millis() as u32);
            r.set_ttl_ms(self.state.timing.node_ttl.as_millis() as u32);
            Ok(())
        })
    }

    fn heartbeat(
        self: CapRc<Self>,
        params: control::HeartbeatParams,
        mut results: control::HeartbeatResults,
    ) -> impl std::future::Future<Output = Result<(), capnp::Error>> + 'static {
        wire(async move {
            let p = params.get()?;
            let id = p.get_node_id();
            let capacity = read_capacity(p.get_capacity()?);
            let (came_up, report_wanted) =
                self.state
                    .membership
                    .borrow_mut()
                    .heartbeat(id, p.get_node_key()?, capacity)?;
            if came_up {
                tracing::info!(node_id = id, "node is up");
                self.state.map_changed().await?;
            }
            let mut r = results.get();
            r.set_epoch(self.state.epoch.get());
            r.set_report_wanted(report_wanted);
            Ok(())
        })
    }

    fn report_chunks(
        self: CapRc<Self>,
        params: control::ReportChunksParams,
        _: control::ReportChunksResults,
    ) -> impl std::future::Future<Output = Result<(), capnp::Error>> + 'static {
        wire(async move {
            let p = params.get()?;
            let chunks = p
                .get_chunks()?
                .iter()
                .map(|c| {
                    Ok((
                        read_chunk_id(c.get_chunk_id()?),
                        c.get_version(),
                        c.get_length(),
                    ))
                })
                .collect::<Result<Vec<_>>>()?;
            self.state.membership.borrow_mut().report_chunks(
                p.get_node_id(),
                p.get_node_key()?,
                chunks,
                p.get_last(),
            )
        })
    }

    fn cluster_map(
        self: CapRc<Self>,
        _: control::ClusterMapParams,
        mut results: control::ClusterMapResults,
    ) -> impl std::future::Future<Output = Result<(), capnp::Error>> + 'static {
        self.state.fill_map(results.get().init_map());
        std::future::ready(Ok(()))
    }

    fn subscribe(
        self: CapRc<Self>,
        params: control::SubscribeParams,
        mut results: control::SubscribeResults,
    ) -> impl std::future::Future<Output = Result<(), capnp::Error>> + 'static {
        wire(async move {
            let watcher = params.get()?.get_watcher()?;
            let id = self.state.next_watcher.get();
            self.state.next_watcher.set(id + 1);
            self.state.watchers.borrow_mut().push((id, watcher));
            let mut r = results.get();
            self.state.fill_map(r.reborrow().init_map());
            r.set_subscription(capnp_rpc::new_client(SubscriptionImpl {
                state: Rc::downgrade(&self.state),
                id,
            }));
            Ok(())
        })
    }
}

/// A subscription; dropping it (or the connection) ends it.
struct SubscriptionImpl {
    state: std::rc::Weak<State>,
    id: u64,
}

impl subscription::Server for SubscriptionImpl {}

impl Drop for SubscriptionImpl {
    fn drop(&mut self) {
        if let Some(state) = self.state.upgrade() {
            state.watchers.borrow_mut().retain(|(w, _)| *w != self.id);
        }
    }
}

/// An open file. Holds the write lease for write handles until closed or
/// dropped (the client disconnected).
struct FileHandleImpl {
    state: Rc<State>,
    guid: Guid,
    inode: u64,
    write: bool,
    closed: Cell<bool>,
}

impl FileHandleImpl {
    fn check_open(&self) -> Result<()> {
        if self.closed.get() {
            return Err(ControlError::StaleHandle("the handle is closed".into()));
        }
        Ok(())
    }

    fn check_writer(&self) -> Result<()> {
        self.check_open()?;
        if !self.write {
            return Err(ControlError::NoLease("the file is open for reading".into()));
        }
        if !self.state.leases.borrow().holds(self.inode, &self.guid) {
            return Err(ControlError::NoLease(
                "this handle no longer holds the write lease".into(),
            ));
        }
        Ok(())
    }

    fn release(&self) {
        if !self.closed.replace(true) && self.write {
            self.state
                .leases
                .borrow_mut()
                .release(self.inode, &self.guid);
        }
    }
}

impl Drop for FileHandleImpl {
    fn drop(&mut self) {
        self.release();
    }
}

impl file_handle::Server for FileHandleImpl {
    fn attr(
        self: CapRc<Self>,
        _: file_handle::AttrParams,
        mut results: file_handle::AttrResults,
    ) -> impl std::future::Future<Output = Result<(), capnp::Error>> + 'static {
        wire(async move {
            self.check_open()?;
            let a = self.state.store.inode(self.inode)?.ok_or_else(|| {
                ControlError::StaleHandle("the file was removed while open".into())
            })?;
            fill_attr(results.get().init_attr(), self.inode, &a);
            Ok(())
        })
    }

    fn get_chunks(
        self: CapRc<Self>,
        params: file_handle::GetChunksParams,
        mut results: file_handle::GetChunksResults,
    ) -> impl std::future::Future<Output = Result<(), capnp::Error>> + 'static {
        wire(async move {
            self.check_open()?;
            let p = params.get()?;
            let count = p.get_count().min(MAX_CHUNKS_PER_CALL);
            let chunks = self
                .state
                .store
                .chunks(self.inode, p.get_first_index(), count as u64)?;
            let mut list = results.get().init_chunks(chunks.len() as u32);
            for (i, (index, c)) in chunks.iter().enumerate() {
                fill_chunk_record(list.reborrow().get(i as u32), *index, c);
            }
            Ok(())
        })
    }

    fn commit_chunks(
        self: CapRc<Self>,
        params: file_handle::CommitChunksParams,
        mut results: file_handle::CommitChunksResults,
    ) -> impl std::future::Future<Output = Result<(), capnp::Error>> + 'static {
        wire(async move {
            self.check_writer()?;
            let p = params.get()?;
            let list = p.get_chunks()?;
            if list.len() > MAX_CHUNKS_PER_CALL {
                return Err(ControlError::InvalidArgument(format!(
                    "at most {MAX_CHUNKS_PER_CALL} chunks per commit"
                )));
            }
            let chunks = list
                .iter()
                .map(read_chunk_record)
                .collect::<Result<Vec<_>>>()?;
            let m = Mutation::CommitChunks {
                inode: self.inode,
                chunks,
                file_size: p.get_file_size(),
                now_ns: now_ns(),
            };
            match self.state.committer.submit(m).await? {
                Outcome::Attr(ino, a) => fill_attr(results.get().init_attr(), ino, &a),
                other => return Err(ControlError::Store(format!("unexpected {other:?}"))),
            }
            Ok(())
        })
    }

    fn set_size(
        self: CapRc<Self>,
        params: file_handle::SetSizeParams,
        mut results: file_handle::SetSizeResults,
    ) -> impl std::future::Future<Output = Result<(), capnp::Error>> + 'static {
        wire(async move {
            self.check_writer()?;
            let m = Mutation::SetSize {
                inode: self.inode,
                size: params.get()?.get_size(),
                now_ns: now_ns(),
            };
            match self.state.committer.submit(m).await? {
                Outcome::Attr(ino, a) => fill_attr(results.get().init_attr(), ino, &a),
                other => return Err(ControlError::Store(format!("unexpected {other:?}"))),
            }
            Ok(())
        })
    }

    fn close(
        self: CapRc<Self>,
        _: file_handle::CloseParams,
        _: file_handle::CloseResults,
    ) -> impl std::future::Future<Output = Result<(), capnp::Error>> + 'static {
        self.release();
        std::future::ready(Ok(()))
    }
}
