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
    attr, chunk_health, chunk_record, cluster_map, control, file_handle, map_watcher, node_command,
    subscription, CommandKind, FileKind, OpenMode,
};
use ringfs_schema::{read_chunk_id, write_chunk_id, PROTOCOL_VERSION};

use crate::call_gate::CallGate;
use crate::commands::{Commands, Work};
use crate::error::{ControlError, Result};
use crate::gc::Gc;
use crate::group_commit::Committer;
use crate::leases::{Acquire, Guid, Leases};
use crate::membership::{Capacity, Membership};
use crate::records::{Chunk, Inode, Kind};
use crate::repair::{ProblemKind, Repair, RepairConfig};
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
    repair: RefCell<Repair>,
    commands: RefCell<Commands>,
    gc: RefCell<Gc>,
    /// Every RPC passes it; a graceful stop closes it.
    pub gate: Rc<CallGate>,
    /// Something happened that the next planning round must scan for.
    rescan: Cell<bool>,
    /// When the planner last scanned the chunk map.
    last_scan: Cell<Option<Instant>>,
}

impl State {
    pub fn new(
        store: Arc<MetaStore>,
        committer: Committer,
        secret: Vec<u8>,
        timing: MembershipTiming,
        repair: RepairConfig,
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
            repair: RefCell::new(Repair::new(repair)),
            commands: RefCell::default(),
            gc: RefCell::default(),
            gate: Rc::default(),
            rescan: Cell::new(true),
            last_scan: Cell::new(None),
        }))
    }

    /// One round of repair and garbage collection: forgets lost commands,
    /// then, if a scan is due ([`State::scan_due`]), plans copies and
    /// deletes from the current chunk map.
    pub async fn plan_round(self: &Rc<Self>) -> Result<()> {
        let now = Instant::now();
        let garbage = self.store.garbage()?;
        let membership = self.membership.borrow();
        let mut cmds = self.commands.borrow_mut();
        let forgotten = cmds.expire(now, self.repair.borrow().cfg.command_timeout, |n| {
            membership.get(n).is_none_or(|s| !s.up)
        });
        for c in forgotten.iter().filter(|c| c.sent.is_some()) {
            tracing::warn!(
                node = c.node,
                command = c.id,
                "node did not report a command's outcome in time"
            );
        }
        // Commit times matter only until every up node reported after them
        // (a node that comes back is unverified until its fresh report).
        if let Some(oldest) = membership
            .iter()
            .filter(|(_, n)| n.up)
            .map(|(_, n)| n.report_time)
            .collect::<Option<Vec<_>>>()
            .and_then(|t| t.into_iter().min())
        {
            self.repair
                .borrow_mut()
                .committed_at
                .retain(|_, c| *c >= oldest);
        }
        if !self.scan_due(now, &membership, &cmds, &garbage) {
            return Ok(());
        }
        self.rescan.set(false);
        self.last_scan.set(Some(now));
        let map = self.store.chunk_map()?;
        let repair = self.repair.borrow();
        repair.scans.set(repair.scans.get() + 1);
        repair.plan(&map, &membership, &mut cmds, now);
        self.gc.borrow_mut().plan(
            &map,
            &garbage,
            &membership,
            &mut cmds,
            repair.cfg.orphan_grace,
            now,
        );
        Ok(())
    }

    /// Applies the outcome of command `id` that node `node` reports.
    async fn command_done(
        self: &Rc<Self>,
        node: u64,
        id: u64,
        ok: bool,
        message: &str,
        version: u64,
        length: u64,
    ) -> Result<()> {
        self.rescan.set(true);
        // The command stays open (its chunk busy for the planner) until its
        // outcome is applied, so no second copy is planned meanwhile.
        let Some(cmd) = self.commands.borrow().get(node, id) else {
            // Expired meanwhile, or a duplicate: the planner starts over.
            return Ok(());
        };
        let r = self
            .apply_outcome(node, cmd.work, ok, message, version, length)
            .await;
        self.commands.borrow_mut().finish(node, id);
        r
    }

    async fn apply_outcome(
        self: &Rc<Self>,
        node: u64,
        work: Work,
        ok: bool,
        message: &str,
        version: u64,
        length: u64,
    ) -> Result<()> {
        match work {
            Work::Delete { chunk, garbage } => {
                if !ok {
                    tracing::warn!(
                        node,
                        chunk = format!("{chunk:032x}"),
                        "delete failed: {message}"
                    );
                    return Ok(());
                }
                self.membership.borrow_mut().note_chunk(node, chunk, None);
                self.repair.borrow_mut().suspects.remove(&(chunk, node));
                if garbage {
                    let m = Mutation::GarbageDone {
                        id: chunk,
                        nodes: vec![node],
                    };
                    self.committer.submit(m).await?;
                }
            }
            Work::Copy {
                inode,
                index,
                chunk,
                version: want,
                length: min_len,
                target,
                drop,
                ..
            } => {
                let verified = ok && version >= want && length >= min_len as u64;
                if !verified {
                    self.repair.borrow_mut().copies_failed += 1;
                    tracing::warn!(
                        node,
                        target,
                        chunk = format!("{chunk:032x}"),
                        "copy failed: {message} (version {version}, length {length})"
                    );
                    return Ok(());
                }
                let m = Mutation::ReplicaCopied {
                    inode,
                    index,
                    id: chunk,
                    version: want,
                    length: length.min(u32::MAX as u64) as u32,
                    target,
                    drop: drop.clone(),
                };
                match self.committer.submit(m).await {
                    Ok(_) => {
                        let mut membership = self.membership.borrow_mut();
                        membership.note_chunk(target, chunk, Some((version, length as u32)));
                        let mut repair = self.repair.borrow_mut();
                        repair.copies_done += 1;
                        repair.suspects.remove(&(chunk, target));
                        tracing::info!(
                            inode,
                            index,
                            chunk = format!("{chunk:032x}"),
                            target,
                            "replica copied and verified; record updated"
                        );
                        // Copies on live nodes that left the record are known
                        // bad: delete them now rather than after the orphan grace.
                        let mut cmds = self.commands.borrow_mut();
                        for n in drop.into_iter().filter(|n| *n != target) {
                            repair.suspects.remove(&(chunk, n));
                            if membership.get(n).is_some_and(|s| s.up) && !cmds.deleting(n, chunk) {
                                cmds.queue(
                                    n,
                                    Work::Delete {
                                        chunk,
                                        garbage: false,
                                    },
                                );
                            }
                        }
                    }
                    Err(e) => {
                        // The record changed meanwhile: the copy is an orphan
                        // that garbage collection removes; plan again.
                        self.repair.borrow_mut().copies_failed += 1;
                        tracing::info!(chunk = format!("{chunk:032x}"), "copy not recorded: {e}");
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether this round must read the whole chunk map. A healthy, idle
    /// cluster has nothing to plan, and the scan is O(chunks) on the RPC
    /// thread, so it runs only when it can find work: something changed
    /// that may need repair (`rescan`: membership, a command outcome, a
    /// commit with fewer replicas than the file's R), work is under way or
    /// waiting (commands, backlog, garbage), a replica is suspect, a node is
    /// down within its grace or has not reported since it came back, or
    /// `report_interval` passed since the last scan (orphans, and replicas a
    /// node's fresh report no longer lists).
    fn scan_due(
        &self,
        now: Instant,
        membership: &Membership,
        cmds: &Commands,
        garbage: &[Chunk],
    ) -> bool {
        let repair = self.repair.borrow();
        let cfg = &repair.cfg;
        let periodic = self
            .last_scan
            .get()
            .is_none_or(|t| now.saturating_duration_since(t) >= cfg.report_interval);
        // A down node's replicas turn from "in grace" to lost without any
        // event: keep scanning until a round after its grace ended.
        let settle = cfg.node_ttl + cfg.grace + self.timing.heartbeat;
        let node_needs_scan = |n: &crate::membership::NodeState| {
            !n.bad.is_empty()
                || (n.up && !n.report_complete)
                || (!n.up
                    && now.saturating_duration_since(n.last_heartbeat.unwrap_or(repair.started))
                        < settle)
        };
        periodic
            || self.rescan.get()
            || !garbage.is_empty()
            || cmds.iter().next().is_some()
            || repair.backlog.get() > 0
            || !repair.suspects.is_empty()
            || membership.iter().any(|(_, n)| node_needs_scan(n))
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
        let repair = self.repair.borrow();
        let mut f = crate::metrics::ClusterFigures {
            epoch: self.epoch.get(),
            repair_backlog: repair.backlog.get(),
            repair_copies_in_flight: self.commands.borrow().copies() as u64,
            repair_copies_done: repair.copies_done,
            repair_copies_failed: repair.copies_failed,
            requests_in_flight: self.gate.in_flight(),
            repair_scans: repair.scans.get(),
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
            self.gate.clone(),
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
        self.rescan.set(true);
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
        // A stopping server answers waiters at once rather than holding
        // its stop up for as long as they asked to wait.
        let waited = tokio::select! {
            r = tokio::time::timeout(wait, rx) => matches!(r, Ok(Ok(()))),
            () = self.state.gate.stopped() => false,
        };
        if waited || self.state.leases.borrow().holds(inode, &guid) {
            std::mem::forget(guard);
            Ok(())
        } else if self.state.gate.is_stopping() {
            Err(CallGate::stopping_error())
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

    fn set_attr(
        self: CapRc<Self>,
        params: control::SetAttrParams,
        mut results: control::SetAttrResults,
    ) -> impl std::future::Future<Output = Result<(), capnp::Error>> + 'static {
        wire(async move {
            let p = params.get()?;
            let m = Mutation::SetAttr {
                path: text(p.get_path())?,
                mode: p.get_set_mode().then(|| p.get_mode()),
                mtime_ns: p.get_set_mtime().then(|| p.get_mtime_ns()),
            };
            self.mutate_attr(m, results.get().init_attr()).await
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
            // A (re)joining node starts a new session: commands sent to the
            // old one will never report back.
            self.state.commands.borrow_mut().forget_node(node_id);
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
            let refresh = self.state.repair.borrow().cfg.report_interval;
            let (came_up, report_wanted) = self.state.membership.borrow_mut().heartbeat(
                id,
                p.get_node_key()?,
                capacity,
                refresh,
            )?;
            let bad = p
                .get_bad_chunks()?
                .iter()
                .map(read_chunk_id)
                .collect::<Vec<_>>();
            if !bad.is_empty() {
                tracing::warn!(
                    node_id = id,
                    chunks = bad.len(),
                    "node reports chunks failing checksums"
                );
            }
            self.state.membership.borrow_mut().set_bad(id, bad);
            let done = p
                .get_done()?
                .iter()
                .map(|d| {
                    Ok((
                        d.get_id(),
                        d.get_ok(),
                        text(d.get_message())?,
                        d.get_version(),
                        d.get_length(),
                    ))
                })
                .collect::<Result<Vec<_>>>()?;
            // Outcomes may need a durable commit; the heartbeat's answer
            // must not wait for it (a slow fsync would look like a dead node).
            if !done.is_empty() {
                let state = self.state.clone();
                tokio::task::spawn_local(async move {
                    for (cmd, ok, msg, version, length) in done {
                        if let Err(e) = state.command_done(id, cmd, ok, &msg, version, length).await
                        {
                            tracing::error!(node_id = id, command = cmd, error = %e, "applying a command outcome failed");
                        }
                    }
                });
            }
            if came_up {
                tracing::info!(node_id = id, "node is up");
                self.state.map_changed().await?;
            }
            let commands = self
                .state
                .commands
                .borrow_mut()
                .take_for(id, Instant::now());
            let mut r = results.get();
            r.set_epoch(self.state.epoch.get());
            r.set_report_wanted(report_wanted);
            let mut list = r.init_commands(commands.len() as u32);
            for (i, c) in commands.iter().enumerate() {
                fill_command(list.reborrow().get(i as u32), c);
            }
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

    fn report_bad_replica(
        self: CapRc<Self>,
        params: control::ReportBadReplicaParams,
        _: control::ReportBadReplicaResults,
    ) -> impl std::future::Future<Output = Result<(), capnp::Error>> + 'static {
        wire(async move {
            let p = params.get()?;
            let chunk = read_chunk_id(p.get_chunk_id()?);
            let node = p.get_node_id();
            if self.state.membership.borrow().get(node).is_none() {
                return Err(ControlError::NotFound(format!("node {node}")));
            }
            let repaired = p.get_repaired();
            tracing::warn!(
                node,
                chunk = format!("{chunk:032x}"),
                repaired,
                "a client read a replica that failed its checksum"
            );
            let mut repair = self.state.repair.borrow_mut();
            repair.bad_reports += 1;
            // A replica the client already replaced with a verified copy is
            // good again; otherwise repair replaces it.
            if !repaired {
                repair.suspects.insert((chunk, node));
            } else {
                repair.suspects.remove(&(chunk, node));
            }
            Ok(())
        })
    }

    fn leave(
        self: CapRc<Self>,
        params: control::LeaveParams,
        mut results: control::LeaveResults,
    ) -> impl std::future::Future<Output = Result<(), capnp::Error>> + 'static {
        wire(async move {
            let p = params.get()?;
            let id = p.get_node_id();
            let was_up = self
                .state
                .membership
                .borrow_mut()
                .left(id, p.get_node_key()?)?;
            tracing::info!(node_id = id, "node is leaving: marked down");
            if was_up {
                self.state.map_changed().await?;
            }
            results.get().set_epoch(self.state.epoch.get());
            Ok(())
        })
    }

    fn chunk_health(
        self: CapRc<Self>,
        params: control::ChunkHealthParams,
        mut results: control::ChunkHealthResults,
    ) -> impl std::future::Future<Output = Result<(), capnp::Error>> + 'static {
        wire(async move {
            let limit = params.get()?.get_problem_limit().min(MAX_PROBLEMS) as usize;
            let map = self.state.store.chunk_map()?;
            let paths = if limit > 0 {
                self.state.store.paths()?
            } else {
                Default::default()
            };
            let garbage = self.state.store.garbage()?;
            let mut h = crate::repair::health(
                &self.state.repair.borrow(),
                &map,
                &self.state.membership.borrow(),
                &self.state.commands.borrow(),
                &paths,
                limit,
                Instant::now(),
            );
            h.deletes_pending = garbage.iter().map(|g| g.replicas.len() as u64).sum();
            fill_health(results.get().init_health(), &h);
            Ok(())
        })
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

fn fill_command(mut b: node_command::Builder, c: &crate::commands::Command) {
    b.set_id(c.id);
    match &c.work {
        Work::Delete { chunk, .. } => {
            b.set_kind(CommandKind::Delete);
            write_chunk_id(b.init_chunk_id(), *chunk);
        }
        Work::Copy {
            chunk,
            version,
            target,
            target_addr,
            replace,
            ..
        } => {
            b.set_kind(CommandKind::Copy);
            b.set_version(*version);
            b.set_target_node_id(*target);
            b.set_target_address(target_addr.as_str());
            b.set_replace(*replace);
            write_chunk_id(b.init_chunk_id(), *chunk);
        }
    }
}

fn fill_health(mut b: chunk_health::Builder, h: &crate::repair::Health) {
    b.set_chunks(h.chunks);
    b.set_healthy(h.healthy);
    b.set_under_replicated(h.under_replicated);
    b.set_being_repaired(h.being_repaired);
    b.set_lost(h.lost);
    b.set_unverified(h.unverified);
    b.set_namespace_errors(h.namespace_errors);
    b.set_copies_in_flight(h.copies_in_flight as u32);
    b.set_deletes_pending(h.deletes_pending);
    let mut list = b.init_problems(h.problems.len() as u32);
    for (i, p) in h.problems.iter().enumerate() {
        let mut e = list.reborrow().get(i as u32);
        e.set_path(p.path.as_str());
        e.set_index(p.index);
        e.set_kind(match p.kind {
            ProblemKind::UnderReplicated => {
                ringfs_schema::control_capnp::ProblemKind::UnderReplicated
            }
            ProblemKind::Lost => ringfs_schema::control_capnp::ProblemKind::Lost,
            ProblemKind::BeingRepaired => ringfs_schema::control_capnp::ProblemKind::BeingRepaired,
            ProblemKind::Unverified => ringfs_schema::control_capnp::ProblemKind::Unverified,
            ProblemKind::Namespace => ringfs_schema::control_capnp::ProblemKind::Namespace,
        });
        e.set_good_replicas(p.good.min(255) as u8);
        e.set_wanted(p.wanted.min(255) as u8);
        e.set_detail(p.detail.as_str());
        write_chunk_id(e.init_chunk_id(), p.chunk);
    }
}

/// Most problems one `chunkHealth` call lists.
pub const MAX_PROBLEMS: u32 = 100_000;

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
            // Before the commit becomes visible: the planner must never see
            // the new record judged by reports taken before these writes.
            {
                let now = Instant::now();
                let mut repair = self.state.repair.borrow_mut();
                for (_, c) in &chunks {
                    repair.committed_at.insert(c.id, now);
                }
            }
            let fewest_replicas = chunks.iter().map(|(_, c)| c.replicas.len()).min();
            let m = Mutation::CommitChunks {
                inode: self.inode,
                chunks,
                file_size: p.get_file_size(),
                now_ns: now_ns(),
            };
            match self.state.committer.submit(m).await? {
                Outcome::Attr(ino, a) => {
                    if fewest_replicas.is_some_and(|n| n < a.replication as usize) {
                        // A write that reached fewer than R replicas (W < R).
                        self.state.rescan.set(true);
                    }
                    fill_attr(results.get().init_attr(), ino, &a)
                }
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
