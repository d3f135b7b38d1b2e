//! The node's control-plane client: joins the control server (Cap'n Proto
//! RPC), heartbeats with a capacity report, sends chunk reports, and keeps
//! retrying with exponential backoff while the server is away. It runs on its
//! own thread with a tokio current-thread runtime (capnp-rpc is
//! single-threaded) and reaches the shards only through [`ShardCommand`]s.
//!
//! When the node stops, [`LeaveHandle::leave`] ends the heartbeats and
//! tells the control server the node is leaving, on the session's own
//! connection when there is one (so it is ordered after every heartbeat
//! sent) or on a fresh one.
//!
//! With a replicated control plane, `control_addr` lists every replica
//! (comma-separated): each session connects to the one that leads (asked
//! with `hello`, following the leader a replica names), so heartbeats,
//! joins and chunk reports reach the leader, which rebuilds membership from
//! them after a failover; the join of each session passes the node's
//! `NodeCommands` again, so only the current leader pushes commands. A
//! replica that stops leading answers `not_leader`; the session ends and
//! the next one finds the new leader at once, without backing off.
//!
//! Commands (delete a chunk, copy a chunk to another node) run as tasks of
//! their own on the owning shard. They arrive two ways: pushed by the
//! control server through the [`NodeCommands`](control_capnp::node_commands)
//! capability the node offers with its join, the outcome being the call's
//! answer (so a command does not wait for a heartbeat); or, from a control
//! server that does not push, in heartbeat replies, their outcomes going
//! back with the next heartbeat after they finish, each exactly once per
//! session (a lost session loses them, and the control server times the
//! commands out and plans again). Chunks that failed a checksum go with
//! every heartbeat until they are deleted.

use crate::identity::Identity;
use crate::shard::{CapacityReport, ShardCommand};
use futures::channel::{mpsc, oneshot};
use ringfs_ops::transport;
use ringfs_schema::control_capnp::CommandKind;
use ringfs_schema::control_capnp::{self as control_capnp, command_result, control, node_command};
use ringfs_schema::{read_chunk_id, write_chunk_id, ChunkId, Version};
use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Chunk reports are sent in pages of this many chunks.
const REPORT_PAGE: usize = 1000;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// The least time between two map fetches a shard asked for.
const MAP_REFRESH_MIN: Duration = Duration::from_millis(100);
/// Least time a heartbeat may take to be answered before the session is
/// considered dead.
const HEARTBEAT_ANSWER_MIN: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot reach the control server at {0}: {1}")]
    Connect(String, String),
    #[error("control server: {0}")]
    Rpc(String),
    /// The replica reached does not lead; the leader's address if it knew.
    #[error("control replica {0} is not the leader")]
    NotLeader(String, Option<String>),
    #[error("a shard stopped answering")]
    ShardGone,
    #[error("{0}")]
    Identity(#[from] crate::identity::IdentityError),
}

impl From<capnp::Error> for LinkError {
    fn from(e: capnp::Error) -> Self {
        let (code, msg) = ringfs_schema::wire_error::decode(&e);
        if code == ringfs_schema::control_capnp::ErrorCode::NotLeader {
            return LinkError::NotLeader(msg, None);
        }
        LinkError::Rpc(format!(
            "[{}] {msg}",
            ringfs_schema::wire_error::code_name(code)
        ))
    }
}

/// A command's outcome: the (version, length) a copy verified, or why it
/// failed.
type Outcome = Result<(Version, u64), String>;

/// A finished command's outcome, waiting for the next heartbeat.
struct Done {
    id: u64,
    result: Outcome,
}

/// Fills a `CommandResult` with an outcome.
fn fill_result(mut b: command_result::Builder<'_>, id: u64, result: &Outcome) {
    b.set_id(id);
    match result {
        Ok((version, length)) => {
            b.set_ok(true);
            b.set_version_epoch(version.epoch);
            b.set_version_seq(version.seq);
            b.set_length(*length);
        }
        Err(msg) => b.set_message(msg.as_str()),
    }
}

/// Hands commands to the shard owning their chunk.
#[derive(Clone)]
struct Runner {
    shards: Vec<mpsc::UnboundedSender<ShardCommand>>,
}

impl Runner {
    /// Starts command `c` on its shard; the outcome comes through the
    /// receiver when it finished.
    fn start(&self, c: node_command::Reader<'_>) -> Result<oneshot::Receiver<Outcome>, LinkError> {
        let raw = read_chunk_id(c.get_chunk_id()?);
        let chunk = ChunkId::new((raw >> 64) as u64, raw as u64);
        let shard = &self.shards[chunk.shard(self.shards.len())];
        let version = Version::new(c.get_version_epoch(), c.get_version_seq());
        let (tx, rx) = oneshot::channel();
        match c.get_kind() {
            Ok(CommandKind::Delete) => {
                let (dtx, drx) = oneshot::channel();
                shard
                    .unbounded_send(ShardCommand::Delete(chunk, version, dtx))
                    .map_err(|_| LinkError::ShardGone)?;
                tokio::task::spawn_local(async move {
                    let r = drx.await.unwrap_or_else(|_| Err("shard gone".into()));
                    let _ = tx.send(r.map(|()| (Version::NONE, 0)));
                });
            }
            Ok(CommandKind::Copy) => {
                let target = c
                    .get_target_address()?
                    .to_string()
                    .map_err(|_| LinkError::Rpc("target address is not UTF-8".into()))?;
                shard
                    .unbounded_send(ShardCommand::Copy {
                        id: chunk,
                        version,
                        target,
                        target_version: Version::new(c.get_target_epoch(), c.get_target_seq()),
                        reply: tx,
                    })
                    .map_err(|_| LinkError::ShardGone)?;
            }
            // A command kind from a newer control server: refuse it.
            Err(_) => {
                let _ = tx.send(Err("unknown command kind".into()));
            }
        }
        Ok(rx)
    }
}

/// The capability a node offers with its join: the control server runs
/// commands through it at once.
struct PushedCommands(Runner);

impl control_capnp::node_commands::Server for PushedCommands {
    fn run(
        self: capnp::capability::Rc<Self>,
        params: control_capnp::node_commands::RunParams,
        mut results: control_capnp::node_commands::RunResults,
    ) -> impl std::future::Future<Output = Result<(), capnp::Error>> + 'static {
        let started = params
            .get()
            .and_then(|p| p.get_command())
            .map_err(LinkError::from)
            .and_then(|c| Ok((c.get_id(), self.0.start(c)?)));
        async move {
            let (id, rx) = started.map_err(|e| capnp::Error::failed(e.to_string()))?;
            let result = rx.await.unwrap_or_else(|_| Err("shard gone".into()));
            if let Err(e) = &result {
                tracing::warn!("command {id} failed: {e}");
            }
            fill_result(results.get().init_result(), id, &result);
            Ok(())
        }
    }
}

/// A joined session's connection and credentials.
#[derive(Clone)]
struct Session {
    control: control::Client,
    node_id: u64,
    key: Vec<u8>,
}

/// Sender half of a leave request: where the outcome goes.
type LeaveReply = std::sync::mpsc::Sender<Result<u64, LinkError>>;

/// Asks a running [`ControlLink`] to report that the node is leaving.
pub struct LeaveHandle(mpsc::UnboundedSender<LeaveReply>);

impl LeaveHandle {
    /// Stops the heartbeats and tells the control server that this node is
    /// leaving; returns the epoch of the map that shows it down. Waits at
    /// most `within` (the control server may be away).
    pub fn leave(&self, within: Duration) -> Result<u64, LinkError> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.0
            .unbounded_send(tx)
            .map_err(|_| LinkError::Rpc("the control link has stopped".into()))?;
        rx.recv_timeout(within)
            .map_err(|_| LinkError::Rpc(format!("no answer within {within:?}")))?
    }
}

/// Everything the link needs.
pub struct ControlLink {
    /// The control server's address, or every control replica's,
    /// comma-separated.
    pub control_addr: String,
    /// The cluster principal's credential (derived from the cluster
    /// secret), proved at every connection.
    pub cred: ringfs_ops::auth::Credential,
    /// TLS for the connections to the control server, if configured.
    pub tls: Option<ringfs_ops::tls::Tls>,
    pub identity_path: PathBuf,
    pub node_id: Arc<AtomicU64>,
    /// "ip:port" of each shard's listener, by shard index.
    pub endpoints: Vec<String>,
    pub shards: Vec<mpsc::UnboundedSender<ShardCommand>>,
    /// A shard asks for the cluster map now (see
    /// [`crate::shard::ShardConfig::map_wanted`]); fetched at most once
    /// per [`MAP_REFRESH_MIN`] (asks meanwhile are one), so requests naming
    /// unknown addresses cannot turn into a stream of map fetches.
    pub map_wanted: Arc<tokio::sync::Notify>,
    /// True while a session is joined (the node's readiness).
    pub joined: Arc<std::sync::atomic::AtomicBool>,
    /// Which address the next connection tries (replicas in turn), and
    /// the leader a replica named, tried first.
    pub(crate) next: std::cell::Cell<usize>,
    pub(crate) leader_hint: RefCell<Option<String>>,
}

impl ControlLink {
    /// Runs the link on a new thread until the node leaves.
    pub fn spawn(self) -> std::io::Result<LeaveHandle> {
        let (leave_tx, leave_rx) = mpsc::unbounded();
        crate::tokio_thread::spawn("ringfs-control-link", "control link", move || {
            self.run(leave_rx)
        })?;
        Ok(LeaveHandle(leave_tx))
    }

    /// Sessions, one after another, until a leave request; then the leave.
    async fn run(self, mut leave_rx: mpsc::UnboundedReceiver<LeaveReply>) {
        use futures::StreamExt;
        let current: RefCell<Option<Session>> = RefCell::new(None);
        let sessions = async {
            let mut backoff = BACKOFF_MIN;
            let addresses = self.control_addr.split(',').count();
            // Failed attempts since the last pause: with several replicas,
            // the next one is tried at once, and the link pauses (and backs
            // off) only after every one failed.
            let mut failed = 0usize;
            loop {
                match self.session(&mut backoff, &current).await {
                    Ok(()) => failed = 0,
                    Err(LinkError::NotLeader(at, hint)) => {
                        // Leadership moved: find the leader now.
                        tracing::info!(
                            "control link: {at} does not lead; trying {}",
                            hint.as_deref().unwrap_or("the next replica")
                        );
                        *self.leader_hint.borrow_mut() = hint;
                        backoff = BACKOFF_MIN;
                        failed = 0;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    Err(e @ LinkError::Connect(..)) if addresses > 1 => {
                        failed += 1;
                        if failed < addresses {
                            tracing::debug!("control link: {e}; trying the next replica");
                            continue;
                        }
                        failed = 0;
                        backoff = backoff.min(Duration::from_millis(500));
                        tracing::warn!(
                            "control link: {e}; no replica answered, retrying in {backoff:?}"
                        );
                    }
                    Err(e) => tracing::warn!("control link: {e}; retrying in {backoff:?}"),
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        };
        let reply = tokio::select! {
            () = sessions => return,
            reply = leave_rx.next() => match reply {
                Some(reply) => reply,
                None => return,
            },
        };
        // The session loop is gone: no heartbeat follows the leave. Its
        // connection lives on in `current` (the RPC task is detached).
        let session = current.borrow_mut().take();
        let _ = reply.send(self.leave(session).await);
    }

    /// Reports leaving on `session`'s connection, or on a new one.
    async fn leave(&self, session: Option<Session>) -> Result<u64, LinkError> {
        let session = match session {
            Some(s) => s,
            None => {
                let identity = Identity::load(&self.identity_path)?;
                if identity.node_id == 0 {
                    return Err(LinkError::Rpc("this node never joined".into()));
                }
                let (control, _rpc_task) = self.connect().await?;
                Session {
                    control,
                    node_id: identity.node_id,
                    key: identity.key_bytes(),
                }
            }
        };
        let mut req = session.control.leave_request();
        req.get().set_node_id(session.node_id);
        req.get().set_node_key(&session.key);
        let reply = req.send().promise.await?;
        self.joined.store(false, Ordering::Release);
        Ok(reply.get()?.get_epoch())
    }

    /// A connection to the control server (TLS if configured), said hello
    /// to; the RPC system runs as a local task until the handle is aborted.
    async fn connect(&self) -> Result<(control::Client, tokio::task::JoinHandle<()>), LinkError> {
        let addr = &self.next_addr();
        let stream = transport::connect(addr, Duration::from_secs(5), self.tls.as_ref())
            .await
            .map_err(|e| LinkError::Connect(addr.clone(), e.to_string()))?;
        let (control, rpc_task) = transport::rpc_client::<control::Client>(stream);
        let mut hello = control.hello_request();
        hello
            .get()
            .set_protocol_version(ringfs_schema::PROTOCOL_VERSION);
        let leads = match hello.send().promise.await {
            Ok(reply) => reply.get().map(|r| {
                let hint = r
                    .get_leader_address()
                    .ok()
                    .and_then(|a| a.to_str().ok())
                    .filter(|a| !a.is_empty())
                    .map(str::to_string);
                let challenge = r.get_challenge().map(<[u8]>::to_vec).unwrap_or_default();
                (r.get_is_leader() || !r.get_replicated(), hint, challenge)
            }),
            Err(e) => Err(e),
        };
        match leads {
            Ok((true, _, challenge)) => {
                // As the cluster principal: a key derived from the secret,
                // never the secret itself, crosses the wire.
                let mut auth = control.authenticate_request();
                auth.get().set_user(self.cred.user.as_str());
                auth.get().set_proof(&self.cred.proof(&challenge));
                match auth.send().promise.await {
                    Ok(_) => Ok((control, rpc_task)),
                    Err(e) => {
                        rpc_task.abort();
                        Err(e.into())
                    }
                }
            }
            Ok((false, hint, _)) => {
                rpc_task.abort();
                Err(LinkError::NotLeader(addr.clone(), hint))
            }
            Err(e) => {
                rpc_task.abort();
                Err(e.into())
            }
        }
    }

    /// The address to connect to: the leader a replica named, else the
    /// next of the configured addresses in turn.
    fn next_addr(&self) -> String {
        if let Some(hint) = self.leader_hint.borrow_mut().take() {
            return hint;
        }
        let addrs: Vec<&str> = self.control_addr.split(',').map(str::trim).collect();
        let i = self.next.get();
        self.next.set(i.wrapping_add(1));
        addrs[i % addrs.len()].to_string()
    }

    /// Fetches the cluster map and hands every shard its members (shard
    /// endpoint -> node id): the only addresses a shard forwards writes
    /// and copies to. Returns the map's epoch.
    async fn push_members(&self, control: &control::Client) -> Result<u64, LinkError> {
        let reply = control.cluster_map_request().send().promise.await?;
        let map = reply.get()?.get_map()?;
        let mut members = crate::shard::Members::new();
        for n in map.get_nodes()? {
            for s in n.get_shards()? {
                let addr = s
                    .get_address()?
                    .to_string()
                    .map_err(|_| LinkError::Rpc("a shard address is not UTF-8".into()))?;
                members.insert(addr, n.get_node_id());
            }
        }
        let members = Arc::new(members);
        for s in &self.shards {
            s.unbounded_send(ShardCommand::Members(members.clone()))
                .map_err(|_| LinkError::ShardGone)?;
        }
        Ok(map.get_epoch())
    }

    async fn capacity(&self) -> Result<CapacityReport, LinkError> {
        let mut total = CapacityReport::default();
        for s in &self.shards {
            let (tx, rx) = oneshot::channel();
            s.unbounded_send(ShardCommand::Capacity(tx))
                .map_err(|_| LinkError::ShardGone)?;
            let c = rx.await.map_err(|_| LinkError::ShardGone)?;
            total.total += c.total;
            total.used += c.used;
            total.reserved += c.reserved;
            total.chunks += c.chunks;
        }
        Ok(total)
    }

    /// One connection: join, report chunks, heartbeat until something
    /// fails. `current` holds the session while it is joined.
    async fn session(
        &self,
        backoff: &mut Duration,
        current: &RefCell<Option<Session>>,
    ) -> Result<(), LinkError> {
        let (control, rpc_task) = self.connect().await?;
        let r = self.drive(&control, backoff, current).await;
        current.borrow_mut().take();
        self.joined.store(false, Ordering::Release);
        rpc_task.abort();
        r
    }

    async fn drive(
        &self,
        control: &control::Client,
        backoff: &mut Duration,
        current: &RefCell<Option<Session>>,
    ) -> Result<(), LinkError> {
        let identity = Identity::load(&self.identity_path)?;
        let cap = self.capacity().await?;
        let runner = Runner {
            shards: self.shards.clone(),
        };
        let mut req = control.join_request();
        {
            let mut p = req.get();
            p.set_commands(capnp_rpc::new_client(PushedCommands(runner.clone())));
            p.set_node_id(identity.node_id);
            p.set_node_key(&identity.key_bytes());
            let mut shards = p.reborrow().init_shards(self.endpoints.len() as u32);
            for (i, ep) in self.endpoints.iter().enumerate() {
                let mut s = shards.reborrow().get(i as u32);
                s.set_shard(i as u16);
                s.set_address(ep.as_str());
            }
            set_capacity(p.init_capacity(), &cap);
        }
        let reply = req.send().promise.await?;
        let r = reply.get()?;
        let joined = Identity {
            node_id: r.get_node_id(),
            node_key: Identity::key_hex(r.get_node_key()?),
        };
        let heartbeat = Duration::from_millis(r.get_heartbeat_ms().max(50) as u64);
        // A heartbeat unanswered for this long means the connection is dead
        // (a partition leaves TCP hanging, not reset): start a new session.
        // Generous, so that a slow metadata commit never causes a rejoin.
        let answer_within =
            (Duration::from_millis(r.get_ttl_ms() as u64) * 3).max(HEARTBEAT_ANSWER_MIN);
        if joined != identity {
            joined.store(&self.identity_path)?;
        }
        self.node_id.store(joined.node_id, Ordering::Release);
        self.joined.store(true, Ordering::Release);
        tracing::info!(
            node_id = joined.node_id,
            "joined the control server at {}",
            self.control_addr
        );
        *backoff = BACKOFF_MIN;
        let key = joined.key_bytes();
        *current.borrow_mut() = Some(Session {
            control: control.clone(),
            node_id: joined.node_id,
            key: key.clone(),
        });
        let mut map_epoch = self.push_members(control).await?;
        self.report(control, joined.node_id, &key).await?;
        let done: Rc<RefCell<Vec<Done>>> = Rc::default();
        let mut next_beat = tokio::time::Instant::now() + heartbeat;
        let mut map_fetched = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next_beat) => next_beat += heartbeat,
                _ = self.map_wanted.notified() => {
                    tokio::time::sleep_until(map_fetched + MAP_REFRESH_MIN).await;
                    map_epoch = self.push_members(control).await?;
                    map_fetched = tokio::time::Instant::now();
                    continue;
                }
            }
            let cap = self.capacity().await?;
            // Outcomes first, then the bad list: a copy that replaced a
            // bad chunk must not be followed by that chunk reported bad.
            let finished = std::mem::take(&mut *done.borrow_mut());
            let bad = self.bad_chunks().await?;
            let mut req = control.heartbeat_request();
            {
                let mut p = req.get();
                p.set_node_id(joined.node_id);
                p.set_node_key(&key);
                set_capacity(p.reborrow().init_capacity(), &cap);
                let mut list = p.reborrow().init_bad_chunks(bad.len() as u32);
                for (i, id) in bad.iter().enumerate() {
                    write_chunk_id(list.reborrow().get(i as u32), id_u128(*id));
                }
                let mut list = p.init_done(finished.len() as u32);
                for (i, d) in finished.iter().enumerate() {
                    fill_result(list.reborrow().get(i as u32), d.id, &d.result);
                }
            }
            let reply = tokio::time::timeout(answer_within, req.send().promise)
                .await
                .map_err(|_| {
                    LinkError::Rpc(format!("no heartbeat answer within {answer_within:?}"))
                })??;
            let r = reply.get()?;
            if r.get_epoch() != map_epoch {
                map_epoch = self.push_members(control).await?;
                map_fetched = tokio::time::Instant::now();
            }
            for c in r.get_commands()? {
                let id = c.get_id();
                let rx = runner.start(c)?;
                let done = done.clone();
                tokio::task::spawn_local(async move {
                    let result = rx.await.unwrap_or_else(|_| Err("shard gone".into()));
                    if let Err(e) = &result {
                        tracing::warn!("command {id} failed: {e}");
                    }
                    done.borrow_mut().push(Done { id, result });
                });
            }
            if r.get_report_wanted() {
                self.report(control, joined.node_id, &key).await?;
            }
        }
    }

    /// Chunks every shard found failing their checksums.
    async fn bad_chunks(&self) -> Result<Vec<ChunkId>, LinkError> {
        let mut all = Vec::new();
        for s in &self.shards {
            let (tx, rx) = oneshot::channel();
            s.unbounded_send(ShardCommand::Bad(tx))
                .map_err(|_| LinkError::ShardGone)?;
            all.extend(rx.await.map_err(|_| LinkError::ShardGone)?);
        }
        Ok(all)
    }

    /// Sends the full chunk inventory in pages.
    async fn report(
        &self,
        control: &control::Client,
        node_id: u64,
        key: &[u8],
    ) -> Result<(), LinkError> {
        let mut all = Vec::new();
        for s in &self.shards {
            let (tx, rx) = oneshot::channel();
            s.unbounded_send(ShardCommand::Inventory(tx))
                .map_err(|_| LinkError::ShardGone)?;
            all.extend(rx.await.map_err(|_| LinkError::ShardGone)?);
        }
        let pages: Vec<_> = if all.is_empty() {
            vec![&all[..]]
        } else {
            all.chunks(REPORT_PAGE).collect()
        };
        let n = pages.len();
        for (i, page) in pages.into_iter().enumerate() {
            let mut req = control.report_chunks_request();
            let mut p = req.get();
            p.set_node_id(node_id);
            p.set_node_key(key);
            p.set_last(i + 1 == n);
            let mut list = p.init_chunks(page.len() as u32);
            for (j, (id, version, length)) in page.iter().enumerate() {
                let mut c = list.reborrow().get(j as u32);
                c.set_version_epoch(version.epoch);
                c.set_version_seq(version.seq);
                c.set_length(*length as u32);
                let mut cid = c.init_chunk_id();
                cid.set_hi(id.hi);
                cid.set_lo(id.lo);
            }
            req.send().promise.await?;
        }
        tracing::info!(chunks = all.len(), "chunk report sent");
        Ok(())
    }
}

fn id_u128(id: ChunkId) -> u128 {
    ((id.hi as u128) << 64) | id.lo as u128
}

fn set_capacity(mut c: ringfs_schema::common_capnp::capacity::Builder<'_>, cap: &CapacityReport) {
    c.set_total_bytes(cap.total);
    c.set_used_bytes(cap.used);
    c.set_reserved_bytes(cap.reserved);
    c.set_chunk_count(cap.chunks);
}
