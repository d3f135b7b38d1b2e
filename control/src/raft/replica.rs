//! One control replica: its Raft instance, how it joins a group, how it
//! follows leadership, and the reads that must be linearizable.
//!
//! Forming a group: the first replica starts with `--bootstrap` and makes a
//! group of one voter (itself); every other replica starts empty with
//! `--peers` and asks the group to add it (`Control.addReplica`, answered by
//! the leader: add as learner, wait until it caught up, make it a voter).
//! `--bootstrap` acts only on an empty log, so a replaced replica never
//! starts a second group.
//!
//! Leadership: a replica serves calls that need the leader (see
//! [`crate::call_gate::CallGate::check_leader`]) only once it is leader AND
//! has applied everything committed before its term (a read barrier right
//! after the election), and then rebuilds the leader's in-memory state from
//! the replicated store ([`crate::cluster_state::State::lead`]). When it
//! stops leading, that state is dropped ([`crate::cluster_state::State::follow`]).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, RaftError};
use openraft::{BasicNode, ChangeMembers, ServerState};
use tokio::sync::oneshot;

use super::log_store::LogStore;
use super::network::Network;
use super::proposer::{forward_to_leader, write_error, Proposer};
use super::state_machine::StateMachine;
use super::Raft;
use crate::call_gate::CallGate;
use crate::cluster_state::State;
use crate::error::{ControlError, Result};
use crate::store::{FileDefaults, MetaStore};

/// How a replica runs.
#[derive(Clone, Debug)]
pub struct ReplicaConfig {
    /// Start a new group of one voter (this replica) if the log is empty.
    pub bootstrap: bool,
    /// RPC addresses of other replicas, asked to add this one when its log
    /// is empty.
    pub peers: Vec<String>,
    /// The RPC address other replicas and clients reach this one at.
    pub advertise: String,
    /// Raft heartbeat interval.
    pub heartbeat: Duration,
    /// Election timeout (the lower bound; the upper is twice it).
    pub election: Duration,
    /// A snapshot is built after this many log entries since the last one.
    pub snapshot_every: u64,
    /// Log entries kept behind a snapshot (for followers slightly behind).
    pub logs_kept: u64,
    /// TLS for the connections to other replicas, if configured.
    pub tls: Option<ringfs_ops::tls::Tls>,
}

/// A running replica.
pub struct Replica {
    /// Its id.
    pub id: u64,
    /// Its advertised RPC address.
    pub addr: String,
    /// Its Raft instance.
    pub raft: Raft,
    /// Client mutations through Raft.
    pub proposer: Rc<Proposer>,
    log: LogStore,
    gate: Rc<CallGate>,
    dir: std::path::PathBuf,
    barrier_waiters: RefCell<Vec<oneshot::Sender<Result<()>>>>,
    barrier_running: Cell<bool>,
}

fn not_leader(e: RaftError<u64, CheckIsLeaderError<u64, BasicNode>>) -> ControlError {
    match e {
        RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)) => forward_to_leader(f),
        RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q)) => {
            ControlError::NotLeader(format!("leadership not confirmed by a majority: {q}"))
        }
        RaftError::Fatal(f) => ControlError::Unavailable(format!("this replica stopped: {f}")),
    }
}

impl Replica {
    /// Opens the log in `dir`, starts Raft over `store`, and bootstraps or
    /// starts joining as `cfg` says.
    pub async fn start(
        cfg: ReplicaConfig,
        dir: &std::path::Path,
        store: Arc<MetaStore>,
        gate: Rc<CallGate>,
        secret: Rc<[u8]>,
        defaults: FileDefaults,
    ) -> Result<Rc<Self>> {
        let (log, id) = LogStore::open(&dir.join(super::log_store::FILE))?;
        let sm = StateMachine::new(store, dir.to_path_buf());
        let ms = cfg.election.as_millis() as u64;
        let config = openraft::Config {
            cluster_name: "ringfs-control".into(),
            heartbeat_interval: cfg.heartbeat.as_millis() as u64,
            election_timeout_min: ms,
            election_timeout_max: ms * 2,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(cfg.snapshot_every),
            max_in_snapshot_log_to_keep: cfg.logs_kept,
            install_snapshot_timeout: 10_000,
            ..Default::default()
        }
        .validate()
        .map_err(|e| ControlError::InvalidArgument(format!("Raft settings: {e}")))?;
        let network = Network::new(&secret, id, cfg.tls.clone());
        let raft = Raft::new(id, Arc::new(config), network.clone(), log.clone(), sm)
            .await
            .map_err(|e| ControlError::Unavailable(format!("starting Raft: {e}")))?;
        gate.set_leader(false, String::new());
        let proposer = Proposer::start(raft.clone(), defaults);
        let replica = Rc::new(Replica {
            id,
            addr: cfg.advertise.clone(),
            raft,
            proposer,
            log,
            gate,
            dir: dir.to_path_buf(),
            barrier_waiters: RefCell::default(),
            barrier_running: Cell::new(false),
        });
        let initialized = replica
            .raft
            .is_initialized()
            .await
            .map_err(|e| ControlError::Unavailable(format!("Raft: {e}")))?;
        if !initialized {
            if cfg.bootstrap {
                let mut members = BTreeMap::new();
                members.insert(
                    id,
                    BasicNode {
                        addr: cfg.advertise.clone(),
                    },
                );
                replica
                    .raft
                    .initialize(members)
                    .await
                    .map_err(|e| ControlError::Unavailable(format!("bootstrapping Raft: {e}")))?;
                tracing::info!(replica = id, "bootstrapped a new control group");
                replica.clone().snapshot_after_bootstrap();
            } else if cfg.peers.is_empty() {
                return Err(ControlError::InvalidArgument(
                    "this replica has no Raft state: start it with --peers (to join a group) \
                     or --bootstrap (to start one)"
                        .into(),
                ));
            } else {
                replica.clone().join(cfg.peers.clone(), network);
            }
        }
        tracing::info!(replica = id, addr = %cfg.advertise, "control replica started");
        Ok(replica)
    }

    /// A store that already held metadata before it was replicated (a
    /// single server turned replica) is not the result of its log: the
    /// first snapshot, taken at once, is what new replicas start from.
    fn snapshot_after_bootstrap(self: Rc<Self>) {
        tokio::task::spawn_local(async move {
            if self.raft.ensure_linearizable().await.is_err() {
                return;
            }
            let _ = self.raft.trigger().snapshot().await;
            let mut metrics = self.raft.metrics();
            let _ = tokio::time::timeout(
                Duration::from_secs(60),
                metrics.wait_for(|m| m.snapshot.is_some()),
            )
            .await;
            if let Some(s) = self.raft.metrics().borrow().snapshot {
                let _ = self.raft.trigger().purge_log(s.index).await;
            }
        });
    }

    /// Asks the group (through `peers`) to add this replica, until it is a
    /// member.
    fn join(self: Rc<Self>, peers: Vec<String>, network: Network) {
        tokio::task::spawn_local(async move {
            let mut next = 0usize;
            let mut hint: Option<String> = None;
            let mut wait = Duration::from_millis(100);
            loop {
                let addr = hint.take().unwrap_or_else(|| {
                    next += 1;
                    peers[(next - 1) % peers.len()].clone()
                });
                match super::network::add_replica(&addr, &network, self.id, &self.addr).await {
                    Ok(()) => {
                        tracing::info!(replica = self.id, via = %addr, "joined the control group");
                        return;
                    }
                    Err(super::network::AddFailure::Leader(l)) => {
                        hint = l;
                        if hint.is_some() {
                            continue;
                        }
                    }
                    Err(super::network::AddFailure::Other(e)) => {
                        tracing::warn!(via = %addr, "asking to join the control group: {e}");
                    }
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
        });
    }

    /// Follows leadership changes: a new leader serves once it has applied
    /// all that was committed before its term.
    pub fn follow(self: &Rc<Self>, state: Weak<State>) {
        let me = self.clone();
        tokio::task::spawn_local(async move {
            let mut metrics = me.raft.metrics();
            let mut leading = false;
            loop {
                let (now_leading, hint) = {
                    let m = metrics.borrow_and_update();
                    let hint = m
                        .current_leader
                        .and_then(|l| m.membership_config.membership().get_node(&l).cloned())
                        .map(|n| {
                            format!(
                                "the leader is {} (replica {})",
                                n.addr,
                                m.current_leader.unwrap_or(0)
                            )
                        })
                        .unwrap_or_default();
                    (m.state == ServerState::Leader, hint)
                };
                if now_leading && !leading {
                    // Serve only after everything committed before this
                    // term is applied here.
                    match me.raft.ensure_linearizable().await {
                        Ok(_) => {
                            let Some(state) = state.upgrade() else { return };
                            // Nodes may call from now on (they rebuild the
                            // leader's membership); clients once the state
                            // is rebuilt (nodes presumed up, see
                            // `Membership::new`) and the new epoch committed.
                            me.gate.set_leader(true, String::new());
                            if let Err(e) = state.lead().await {
                                tracing::error!(error = %e, "taking over as leader failed");
                                me.gate.set_leader(false, String::new());
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                continue;
                            }
                            me.gate.set_serving(true);
                            leading = true;
                            tracing::info!(replica = me.id, "leading the control group");
                        }
                        Err(e) => {
                            tracing::info!(error = %e, "elected, but leadership not confirmed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    }
                } else if !now_leading {
                    me.gate.set_leader(false, hint);
                    if leading {
                        leading = false;
                        tracing::warn!(replica = me.id, "no longer leading the control group");
                        if let Some(state) = state.upgrade() {
                            state.follow();
                        }
                    }
                }
                if metrics.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    /// Returns once a read here sees every write acknowledged before the
    /// call: this replica confirmed with a majority that it still leads
    /// (read index) and applied up to that point. Concurrent reads share
    /// one confirmation that started after they arrived.
    pub async fn read_barrier(self: &Rc<Self>) -> Result<()> {
        self.gate.check_serving()?;
        let (tx, rx) = oneshot::channel();
        self.barrier_waiters.borrow_mut().push(tx);
        if !self.barrier_running.replace(true) {
            let me = self.clone();
            tokio::task::spawn_local(async move {
                loop {
                    let waiters = std::mem::take(&mut *me.barrier_waiters.borrow_mut());
                    if waiters.is_empty() {
                        break;
                    }
                    let r = me
                        .raft
                        .ensure_linearizable()
                        .await
                        .map(drop)
                        .map_err(not_leader);
                    for w in waiters {
                        let _ = w.send(r.clone());
                    }
                }
                me.barrier_running.set(false);
            });
        }
        rx.await
            .map_err(|_| ControlError::Unavailable("the read barrier stopped".into()))?
    }

    /// Adds replica `id` at `addr`: as a learner first (it catches up, from
    /// a snapshot if the log was compacted), then as a voter. Leader only.
    pub async fn add_replica(&self, id: u64, addr: String) -> Result<()> {
        self.gate.check_leader()?;
        let (voters, _) = self.membership(id);
        if voters.contains(&id) {
            return Ok(());
        }
        self.raft
            .add_learner(id, BasicNode { addr }, true)
            .await
            .map_err(write_error)?;
        self.raft
            .change_membership(ChangeMembers::AddVoterIds([id].into()), false)
            .await
            .map_err(write_error)?;
        tracing::info!(replica = id, "replica added to the voters");
        Ok(())
    }

    /// Removes replica `id` from the group (a replica that is no member is
    /// not an error: a removal sent again after a failover finds it gone).
    /// Leader only.
    pub async fn remove_replica(&self, id: u64) -> Result<()> {
        self.gate.check_leader()?;
        let (voters, member) = self.membership(id);
        if !member {
            return Ok(());
        }
        if voters.contains(&id) && voters.len() == 1 {
            return Err(ControlError::InvalidArgument(
                "cannot remove the last voter of the group".into(),
            ));
        }
        self.raft
            .change_membership(ChangeMembers::RemoveVoters([id].into()), false)
            .await
            .map_err(write_error)?;
        tracing::info!(replica = id, "replica removed from the group");
        Ok(())
    }

    /// The voters of the group as this replica knows it, and whether
    /// replica `id` is a member (voter or learner).
    fn membership(&self, id: u64) -> (BTreeSet<u64>, bool) {
        let m = self.raft.metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        (
            membership.voter_ids().collect(),
            membership.get_node(&id).is_some(),
        )
    }

    /// Index of the last log entry.
    pub fn last_log_index(&self) -> u64 {
        self.log.last_index()
    }

    /// The leader's RPC address as this replica knows it (empty if none).
    pub fn leader_address(&self) -> String {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.current_leader
            .and_then(|l| m.membership_config.membership().get_node(&l).cloned())
            .map(|n| n.addr)
            .unwrap_or_default()
    }

    /// Builds a snapshot now and returns its file, the last log index it
    /// covers and its size.
    pub async fn snapshot_now(&self) -> Result<(std::path::PathBuf, u64, u64)> {
        let before = self.raft.metrics().borrow().snapshot;
        let stopped =
            |e: openraft::error::Fatal<u64>| ControlError::Unavailable(format!("Raft: {e}"));
        self.raft.trigger().snapshot().await.map_err(stopped)?;
        let mut metrics = self.raft.metrics();
        let built = tokio::time::timeout(
            Duration::from_secs(120),
            metrics.wait_for(|m| m.snapshot.is_some() && m.snapshot != before),
        )
        .await;
        // Nothing new applied since the last snapshot: that one is current.
        if built.is_err() && before.is_none() {
            return Err(ControlError::Unavailable(
                "no snapshot was built in time".into(),
            ));
        }
        let index = self
            .raft
            .metrics()
            .borrow()
            .snapshot
            .map(|s| s.index)
            .unwrap_or(0);
        let path = self.dir.join(super::state_machine::SNAPSHOT_FILE);
        let bytes = std::fs::metadata(&path)
            .map_err(|e| ControlError::io(format!("reading {}", path.display()), e))?
            .len();
        Ok((path, index, bytes))
    }

    /// This replica's view of the group, for `Control.replication`.
    pub fn fill_status(
        &self,
        mut s: ringfs_schema::control_capnp::replication_status::Builder<'_>,
    ) {
        let m = self.raft.metrics();
        let m = m.borrow();
        s.set_replicated(true);
        s.set_replica_id(self.id);
        s.set_state(match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        });
        s.set_leader_id(m.current_leader.unwrap_or(0));
        s.set_leader_address(self.leader_address().as_str());
        s.set_term(m.current_term);
        s.set_last_log_index(m.last_log_index.unwrap_or(0));
        s.set_applied_index(m.last_applied.map(|l| l.index).unwrap_or(0));
        s.set_snapshot_index(m.snapshot.map(|l| l.index).unwrap_or(0));
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let nodes: Vec<_> = membership.nodes().collect();
        let mut list = s.init_replicas(nodes.len() as u32);
        for (i, (id, node)) in nodes.into_iter().enumerate() {
            let mut b = list.reborrow().get(i as u32);
            b.set_replica_id(*id);
            b.set_address(node.addr.as_str());
            b.set_voter(voters.contains(id));
            let matched = m
                .replication
                .as_ref()
                .and_then(|r| r.get(id).cloned().flatten())
                .map(|l| l.index)
                .unwrap_or(if *id == self.id {
                    m.last_log_index.unwrap_or(0)
                } else {
                    0
                });
            b.set_matched_index(matched);
        }
    }

    /// The figures metrics export.
    pub fn figures(&self) -> crate::metrics::RaftFigures {
        let m = self.raft.metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        crate::metrics::RaftFigures {
            leader: u64::from(self.gate.is_leader()),
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            snapshot_index: m.snapshot.map(|l| l.index).unwrap_or(0),
            replicas: membership.nodes().count() as u64,
            voters: membership.voter_ids().count() as u64,
        }
    }
}
