//! The state the control server shares between its connections: the
//! store and its writer, membership, leases, map watchers, and the repair
//! and garbage-collection planner with its commands.
//!
//! Everything here lives on the RPC thread (capnp-rpc is single-threaded),
//! in `Cell`s and `RefCell`s: no borrow is held across an `await`. The RPC
//! objects in [`crate::service`] read and change it; the server's periodic
//! tasks call [`State::sweep`] and [`State::plan_round`].

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringfs_schema::control_capnp::{cluster_map, map_watcher};

use crate::call_gate::CallGate;
use crate::commands::{Commands, Work};
use crate::error::Result;
use crate::gc::Gc;
use crate::group_commit::Committer;
use crate::leases::Leases;
use crate::membership::Membership;
use crate::records::Chunk;
use crate::repair::{Repair, RepairConfig};
use crate::store::{MetaStore, Mutation, Outcome};

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
    pub(crate) store: Arc<MetaStore>,
    pub(crate) committer: Committer,
    pub(crate) secret: Vec<u8>,
    pub(crate) timing: MembershipTiming,
    pub(crate) leases: RefCell<Leases>,
    pub(crate) membership: RefCell<Membership>,
    /// Cluster-map epoch as last persisted.
    pub(crate) epoch: Cell<u64>,
    pub(crate) watchers: RefCell<Vec<(u64, map_watcher::Client)>>,
    pub(crate) next_watcher: Cell<u64>,
    pub(crate) repair: RefCell<Repair>,
    pub(crate) commands: RefCell<Commands>,
    gc: RefCell<Gc>,
    /// Every RPC passes it; a graceful stop closes it.
    pub gate: Rc<CallGate>,
    /// Something happened that the next planning round must scan for.
    pub(crate) rescan: Cell<bool>,
    /// When the planner last scanned the chunk map.
    last_scan: Cell<Option<Instant>>,
}

impl State {
    /// The state of a server starting on `store`: membership from the
    /// registered nodes (every node down until it heartbeats), the epoch as
    /// persisted, no leases, no watchers, a planner that scans at once.
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
    pub(crate) async fn command_done(
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
    pub(crate) async fn map_changed(self: &Rc<Self>) -> Result<()> {
        self.rescan.set(true);
        if let Outcome::Epoch(e) = self.committer.submit(Mutation::BumpEpoch).await? {
            self.epoch.set(self.epoch.get().max(e));
        }
        self.notify_watchers();
        Ok(())
    }

    pub(crate) fn notify_watchers(self: &Rc<Self>) {
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

    pub(crate) fn fill_map(&self, mut map: cluster_map::Builder) {
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
