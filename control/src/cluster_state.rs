//! The state the control server shares between its connections: the
//! store and its writer, membership, leases, map watchers, and the repair
//! and garbage-collection planner with its commands.
//!
//! With a replicated control plane, the leader's in-memory state
//! (membership, liveness, chunk reports, leases, commands, repair timing,
//! watchers) is not replicated: a new leader rebuilds it ([`State::lead`])
//! from the replicated store and the nodes' heartbeats, as a restarted
//! single server does, and a replica that stops leading drops it
//! ([`State::follow`]), which ends every write lease it granted.
//!
//! Everything here lives on the RPC thread (capnp-rpc is single-threaded),
//! in `Cell`s and `RefCell`s: no borrow is held across an `await`. The RPC
//! objects in [`crate::service`] read and change it; the server's periodic
//! tasks call [`State::sweep`] and [`State::plan_round`].

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringfs_ops::capability::CapabilityKeys;
use ringfs_schema::control_capnp::{cluster_map, map_watcher, node_commands};
use ringfs_schema::Version;

use crate::call_gate::CallGate;
use crate::commands::{Commands, Work};
use crate::error::Result;
use crate::gc::Gc;
use crate::leases::Leases;
use crate::membership::Membership;
use crate::proposer::Proposer;
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

/// Write epochs persisted ahead at a time: a write open costs no fsync
/// except once per this many (hi/lo allocation, as node ids' counters).
const WRITE_EPOCH_STEP: u64 = 1024;

/// State shared by every connection.
pub struct State {
    pub(crate) store: Arc<MetaStore>,
    pub(crate) committer: Proposer,
    /// The data directory (snapshots for backups go there).
    pub(crate) data_dir: std::path::PathBuf,
    /// This server's replica, when the control plane is replicated.
    pub(crate) replica: Option<Rc<crate::raft::Replica>>,
    pub(crate) secret: Vec<u8>,
    /// The data-plane keys (derived from the secret) this server issues
    /// capabilities with and checks commits' capabilities against.
    pub(crate) capabilities: CapabilityKeys,
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
    /// The write epoch the next write open gets, and the persisted mark
    /// (epochs up to it may have been handed out, by this run or an
    /// earlier one; one above it needs the mark raised first).
    next_write_epoch: Cell<u64>,
    write_epoch_mark: Cell<u64>,
    /// The epoch of every open write handle, with its file: chunks whose
    /// version carries one of them may still be committed by that handle.
    pub(crate) live_epochs: RefCell<HashMap<u64, u64>>,
    /// Every open write handle by guid (transactions name handles so).
    pub(crate) write_handles: RefCell<HashMap<crate::leases::Guid, crate::leases::WriteHandle>>,
    /// Nodes' `NodeCommands` capabilities: commands go out through them at
    /// once instead of with the next heartbeat reply.
    pub(crate) pushers: RefCell<HashMap<u64, node_commands::Client>>,
    /// Wakes the planner before its next tick (a command finished, a node
    /// reported).
    pub kick: Rc<tokio::sync::Notify>,
}

impl State {
    /// The state of a server starting on `store`: membership from the
    /// registered nodes (every node presumed up for one TTL, see
    /// [`Membership::new`]), the epoch as persisted, no leases, no watchers,
    /// a planner that scans at once.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<MetaStore>,
        committer: Proposer,
        replica: Option<Rc<crate::raft::Replica>>,
        secret: Vec<u8>,
        timing: MembershipTiming,
        repair: RepairConfig,
        gate: Rc<CallGate>,
        data_dir: std::path::PathBuf,
        capability_key_id: u32,
    ) -> Result<Rc<Self>> {
        let membership = Membership::new(store.nodes()?);
        let epoch = store.epoch()?;
        let write_epoch_mark = store.write_epoch_mark()?;
        Ok(Rc::new(State {
            store,
            committer,
            replica,
            data_dir,
            capabilities: CapabilityKeys::new(&secret, capability_key_id),
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
            gate,
            rescan: Cell::new(true),
            last_scan: Cell::new(None),
            next_write_epoch: Cell::new(write_epoch_mark + 1),
            write_epoch_mark: Cell::new(write_epoch_mark),
            live_epochs: RefCell::default(),
            write_handles: RefCell::default(),
            pushers: RefCell::default(),
            kick: Rc::default(),
        }))
    }

    /// Takes over as the leader of a replicated control plane: the state a
    /// restarted single server would have, from the replicated store (every
    /// node presumed up for one TTL as if it had just heartbeated here, so
    /// clients can place chunks before the nodes rejoin; no chunk report
    /// yet, so nothing is judged lost before the nodes report; downtime
    /// counts from now), and no lease (those granted by an earlier leader
    /// ended with it).
    pub(crate) async fn lead(self: &Rc<Self>) -> Result<()> {
        let membership = Membership::new(self.store.nodes()?);
        *self.membership.borrow_mut() = membership;
        self.epoch.set(self.store.epoch()?);
        // Write epochs continue above the replicated mark: every epoch an
        // earlier leader handed out is at most the mark it committed first.
        let mark = self.store.write_epoch_mark()?;
        self.write_epoch_mark.set(mark);
        self.next_write_epoch.set(mark + 1);
        self.drop_leader_state();
        let cfg = self.repair.borrow().cfg;
        *self.repair.borrow_mut() = Repair::new(cfg);
        self.rescan.set(true);
        self.last_scan.set(None);
        // Nodes and clients see the map of the new leader's term.
        self.map_changed().await
    }

    /// Stops leading: every lease, watcher and command of this term ends
    /// (their holders get `not_leader` and go to the new leader).
    pub(crate) fn follow(&self) {
        self.drop_leader_state();
    }

    fn drop_leader_state(&self) {
        *self.leases.borrow_mut() = Leases::default();
        // No handle of an ended lease can commit: chunks written under its
        // epoch are orphans, which garbage collection may judge.
        self.live_epochs.borrow_mut().clear();
        self.write_handles.borrow_mut().clear();
        // Nodes pass their `NodeCommands` again when they join the leader.
        self.pushers.borrow_mut().clear();
        self.watchers.borrow_mut().clear();
        *self.commands.borrow_mut() = Commands::default();
        *self.gc.borrow_mut() = Gc::default();
    }

    /// Returns when a read here may be served: at once for a single
    /// server, or for a `stale` read (any replica, possibly behind);
    /// otherwise once this replica confirmed its leadership and applied
    /// every write acknowledged before (linearizable).
    pub(crate) async fn read_barrier(&self, stale: bool) -> Result<()> {
        match &self.replica {
            Some(r) if !stale => r.read_barrier().await,
            _ => Ok(()),
        }
    }

    /// A write epoch for a new write lease: above every epoch handed out
    /// before, by this run or any earlier one (the mark is durable before
    /// an epoch above the old one is handed out).
    pub(crate) async fn write_epoch(self: &Rc<Self>) -> Result<u64> {
        let e = self.next_write_epoch.get();
        self.next_write_epoch.set(e + 1);
        if e > self.write_epoch_mark.get() {
            let m = Mutation::AdvanceWriteEpoch {
                to: e + WRITE_EPOCH_STEP - 1,
            };
            if let Outcome::Epoch(mark) = self.committer.submit(m).await? {
                self.write_epoch_mark
                    .set(self.write_epoch_mark.get().max(mark));
            }
        }
        Ok(e)
    }

    /// Whether the file `inode` has an open write handle.
    pub(crate) fn has_writer(&self, inode: u64) -> bool {
        self.leases.borrow().has_writer(inode)
    }

    /// How recently a node must have been heard from to be chosen as a
    /// copy's target: a node killed a moment ago is "up" until its TTL.
    pub(crate) fn alive_within(&self) -> Duration {
        self.timing.heartbeat * 3
    }

    /// Sends every queued command of a node that offered `NodeCommands`
    /// now; each outcome is applied when its call returns. A push that
    /// fails puts its command back in the queue (a heartbeat reply carries
    /// it) and forgets the capability.
    pub(crate) fn push_queued(self: &Rc<Self>) {
        let nodes = self.commands.borrow().queued_nodes();
        for node in nodes {
            let Some(pusher) = self.pushers.borrow().get(&node).cloned() else {
                continue;
            };
            let sent = self.commands.borrow_mut().take_for(node, Instant::now());
            for c in sent {
                let mut req = pusher.run_request();
                crate::service::fill_command(req.get().init_command(), &c);
                let state = self.clone();
                tokio::task::spawn_local(async move {
                    let reply = req.send().promise.await;
                    let outcome = reply.and_then(|r| {
                        crate::service::read_command_result(r.get()?.get_result()?)
                            .map_err(|e| capnp::Error::failed(e.to_string()))
                    });
                    match outcome {
                        Ok((_, ok, msg, version, length)) => {
                            if let Err(e) = state
                                .command_done(node, c.id, ok, &msg, version, length)
                                .await
                            {
                                tracing::error!(node, command = c.id, error = %e, "applying a command outcome failed");
                            }
                        }
                        Err(e) => {
                            tracing::debug!(node, command = c.id, error = %e, "pushing a command failed");
                            state.commands.borrow_mut().unsend(c.id);
                            state.pushers.borrow_mut().remove(&node);
                        }
                    }
                });
            }
        }
    }

    /// One round of repair and garbage collection: forgets lost commands,
    /// then, if a scan is due ([`State::scan_due`]), plans copies and
    /// deletes from the current chunk map. Only the leader plans.
    pub async fn plan_round(self: &Rc<Self>) -> Result<()> {
        if !self.gate.is_leader() {
            return Ok(());
        }
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
        let writer = |inode| self.has_writer(inode);
        repair.plan(
            &map,
            &membership,
            &mut cmds,
            now,
            &writer,
            self.alive_within(),
        );
        let live_epochs = self.live_epochs.borrow();
        self.gc.borrow_mut().plan(
            &map,
            &garbage,
            &membership,
            &mut cmds,
            repair.cfg.orphan_grace,
            now,
            &|epoch| live_epochs.contains_key(&epoch),
        );
        drop((repair, live_epochs, cmds, membership));
        self.push_queued();
        Ok(())
    }

    /// Applies the outcome of command `id` that node `node` reports.
    pub(crate) async fn command_done(
        self: &Rc<Self>,
        node: u64,
        id: u64,
        ok: bool,
        message: &str,
        version: Version,
        length: u64,
    ) -> Result<()> {
        self.rescan.set(true);
        self.kick.notify_one();
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
        version: Version,
        length: u64,
    ) -> Result<()> {
        match work {
            Work::Delete { chunk, garbage, .. } => {
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
                let drop_nodes: Vec<u64> = drop.iter().map(|(n, _)| *n).collect();
                let verified = ok && version == want && length >= min_len as u64;
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
                    version,
                    length: length.min(u32::MAX as u64) as u32,
                    target,
                    drop: drop_nodes,
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
                        // bad: delete them now rather than after the orphan
                        // grace, each only at the version it was seen at (a
                        // replica a write made current since is kept).
                        let mut cmds = self.commands.borrow_mut();
                        for (n, seen) in drop.into_iter().filter(|(n, _)| *n != target) {
                            repair.suspects.remove(&(chunk, n));
                            if membership.get(n).is_some_and(|s| s.up) && !cmds.deleting(n, chunk) {
                                cmds.queue(
                                    n,
                                    Work::Delete {
                                        chunk,
                                        garbage: false,
                                        newest: seen,
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
                || (!n.up && now.saturating_duration_since(membership.last_heard(n)) < settle)
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
            raft: self.replica.as_ref().map(|r| r.figures()),
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
        if !self.gate.is_leader() {
            return Ok(());
        }
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
