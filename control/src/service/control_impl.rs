//! The `Control` bootstrap capability: namespace calls, opens, and the
//! storage nodes' join, heartbeat, chunk reports and leave.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use capnp::capability::Rc as CapRc;
use ringfs_schema::control_capnp::{attr, control, OpenMode};
use ringfs_schema::{read_chunk_id, PROTOCOL_VERSION};

use super::convert::{
    fill_attr, fill_command, fill_health, node_key, now_ns, read_capacity, read_command_result,
    read_create_options, text, wire,
};
use super::file_handle::FileHandleImpl;
use super::session::{Principal, Session};
use super::subscription::SubscriptionImpl;
use super::{DEFAULT_LIST, MAX_LIST, MAX_PROBLEMS, MAX_WAIT};
use crate::call_gate::CallGate;
use crate::cluster_state::State;
use crate::error::{ControlError, Result};
use crate::leases::{Acquire, Guid};
use crate::records::Kind;
use crate::store::access::{READ, WRITE};
use crate::store::{AttrChange, Mutation, Outcome, Request};

/// The `Control` capability of one connection.
pub(super) struct ControlImpl {
    pub(super) state: Rc<State>,
    /// Whether this connection's `hello` succeeded (every other call is
    /// refused until then, so a peer of another protocol version cannot
    /// get anything done by skipping it), and who it authenticated as.
    pub(super) session: Rc<Session>,
}

impl ControlImpl {
    /// The connection's principal (see [`Session::principal`]).
    fn principal(&self) -> Result<Rc<Principal>> {
        self.session.principal(&self.state)
    }

    /// The principal, if it is an administrator.
    fn admin(&self, what: &str) -> Result<Rc<Principal>> {
        let p = self.principal()?;
        p.require_admin(what)?;
        Ok(p)
    }

    /// The principal, if it is the nodes' and replicas'.
    fn cluster(&self, what: &str) -> Result<Rc<Principal>> {
        let p = self.principal()?;
        p.require_cluster(what)?;
        Ok(p)
    }

    async fn mutate_attr(
        &self,
        id: Option<u128>,
        m: Mutation,
        out: attr::Builder<'_>,
    ) -> Result<()> {
        match self.submit(id, m).await? {
            Outcome::Attr(ino, a) => {
                fill_attr(out, ino, &a);
                Ok(())
            }
            other => Err(ControlError::Internal(format!(
                "unexpected outcome {other:?}"
            ))),
        }
    }

    /// Applies `mutation` under the client's request id `id`.
    async fn submit(&self, id: Option<u128>, mutation: Mutation) -> Result<Outcome> {
        self.state
            .committer
            .submit_request(Request { id, mutation })
            .await
    }

    /// The replica, for calls that exist only on a replicated control
    /// plane.
    fn replica(&self) -> Result<&Rc<crate::raft::Replica>> {
        self.state.replica.as_ref().ok_or_else(|| {
            ControlError::InvalidArgument("this control server is not replicated".into())
        })
    }

    /// Takes the write lease of `ino` for handle `guid` of user `uid`
    /// (waiting up to `wait`), draws its write epoch and registers the
    /// write handle (which unregisters them when it ends: chunks written
    /// under this epoch are never collected meanwhile). The epoch.
    async fn take_write(&self, ino: u64, guid: Guid, uid: u32, wait: Duration) -> Result<u64> {
        self.acquire_write(ino, guid, wait).await?;
        let epoch = match self.state.write_epoch().await {
            Ok(e) => e,
            Err(e) => {
                self.state.leases.borrow_mut().release(ino, &guid);
                return Err(e);
            }
        };
        self.state.live_epochs.borrow_mut().insert(epoch, ino);
        let handle = crate::leases::WriteHandle {
            inode: ino,
            epoch,
            uid,
        };
        self.state.write_handles.borrow_mut().insert(guid, handle);
        Ok(epoch)
    }

    /// The server object of a new handle on `ino` (a write handle holds
    /// what [`Self::take_write`] registered, and releases it).
    fn handle(&self, guid: Guid, ino: u64, write: bool, epoch: u64) -> FileHandleImpl {
        FileHandleImpl {
            state: self.state.clone(),
            guid,
            inode: ino,
            write,
            epoch,
            closed: Cell::new(false),
            session: self.session.clone(),
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
            r.set_challenge(&self.session.hello());
            r.set_protocol_version(PROTOCOL_VERSION);
            r.set_server_version(concat!("ringfs-control ", env!("CARGO_PKG_VERSION")));
            r.set_is_leader(self.state.gate.is_serving());
            r.set_replicated(self.state.replica.is_some());
            if let Some(replica) = &self.state.replica {
                if !self.state.gate.is_serving() {
                    r.set_leader_address(replica.leader_address().as_str());
                }
            }
            Ok(())
        })
    }

    fn create(
        self: CapRc<Self>,
        params: control::CreateParams,
        mut results: control::CreateResults,
    ) -> impl std::future::Future<Output = Result<(), capnp::Error>> + 'static {
        wire(async move {
            let who = self.principal()?.caller.clone();
            let p = params.get()?;
            let path = text(p.get_path())?;
            let options = read_create_options(p.get_options()?);
            let m = Mutation::Create {
                who,
                path,
                options,
                now_ns: now_ns(),
            };
            let id = request_id(p.get_request_id())?;
            self.mutate_attr(id, m, results.get().init_attr()).await
        })
    }

    fn mkdir(
        self: CapRc<Self>,
        params: control::MkdirParams,
        mut results: control::MkdirResults,
    ) -> impl std::future::Future<Output = Result<(), capnp::Error>> + 'static {
        wire(async move {
            let who = self.principal()?.caller.clone();
            let p = params.get()?;
            let m = Mutation::Mkdir {
                who,
                path: text(p.get_path())?,
                mode: p.get_mode(),
                now_ns: now_ns(),
            };
            let id = request_id(p.get_request_id())?;
            self.mutate_attr(id, m, results.get().init_attr()).await
        })
    }

    fn unlink(
        self: CapRc<Self>,
        params: control::UnlinkParams,
        _: control::UnlinkResults,
    ) -> impl std::future::Future<Output = Result<(), capnp::Error>> + 'static {
        wire(async move {
            let who = self.principal()?.caller.clone();
            let p = params.get()?;
            let m = Mutation::Unlink {
                who,
                path: text(p.get_path())?,
                now_ns: now_ns(),
            };
            self.submit(request_id(p.get_request_id())?, m)
                .await
                .map(drop)
        })
    }

    fn rmdir(
        self: CapRc<Self>,
        params: control::RmdirParams,
        _: control::RmdirResults,
    ) -> impl std::future::Future<Output = Result<(), capnp::Error>> + 'static {
        wire(async move {
            let who = self.principal()?.caller.clone();
            let p = params.get()?;
            let m = Mutation::Rmdir {
                who,
                path: text(p.get_path())?,
                now_ns: now_ns(),
            };
            self.submit(request_id(p.get_request_id())?, m)
                .await
                .map(drop)
        })
    }

    fn rename(
        self: CapRc<Self>,
        params: control::RenameParams,
        _: control::RenameResults,
    ) -> impl std::future::Future<Output = Result<(), capnp::Error>> + 'static {
        wire(async move {
            let who = self.principal()?.caller.clone();
            let p = params.get()?;
            let m = Mutation::Rename {
                who,
                from: text(p.get_from())?,
                to: text(p.get_to())?,
                now_ns: now_ns(),
            };
            self.submit(request_id(p.get_request_id())?, m)
                .await
                .map(drop)
        })
    }

    fn set_attr(
        self: CapRc<Self>,
        params: control::SetAttrParams,
        mut results: control::SetAttrResults,
    ) -> impl std::future::Future<Output = Result<(), capnp::Error>> + 'static {
        wire(async move {
            let who = self.principal()?.caller.clone();
            let p = params.get()?;
            // With replication this goes through the Raft log like every
            // mutation (the committer is the proposer); the mtime is the
            // caller's, carried in the entry.
            let m = Mutation::SetAttr {
                who,
                path: text(p.get_path())?,
                change: AttrChange {
                    mode: p.get_set_mode().then(|| p.get_mode()),
                    mtime_ns: p.get_set_mtime().then(|| p.get_mtime_ns()),
                    uid: p.get_set_uid().then(|| p.get_uid()),
                    gid: p.get_set_gid().then(|| p.get_gid()),
                },
            };
            let id = request_id(p.get_request_id())?;
            self.mutate_attr(id, m, results.get().init_attr()).await
        })
    }

    fn stat(
        self: CapRc<Self>,
        params: control::StatParams,
        mut results: control::StatResults,
    ) -> impl std::future::Future<Output = Result<(), capnp::Error>> + 'static {
        wire(async move {
            let who = self.principal()?;
            let p = params.get()?;
            let path = text(p.get_path())?;
            self.state.read_barrier(p.get_stale()).await?;
            let (ino, a) = self.state.store.stat_as(&who.caller, &path)?;
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
            let who = self.principal()?;
            let p = params.get()?;
            let path = text(p.get_path())?;
            let after = text(p.get_after())?;
            let limit = match p.get_limit() {
                0 => DEFAULT_LIST,
                n => n.min(MAX_LIST),
            };
            self.state.read_barrier(p.get_stale()).await?;
            let (entries, more) =
                self.state
                    .store
                    .list_as(&who.caller, &path, &after, limit as usize)?;
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
            let who = self.principal()?;
            let p = params.get()?;
            let path = text(p.get_path())?;
            let write = p.get_mode()? == OpenMode::Write;
            let wait = Duration::from_millis(p.get_wait_ms() as u64).min(MAX_WAIT);
            self.state.read_barrier(false).await?;
            let (ino, a) = self.state.store.stat_as(&who.caller, &path)?;
            if a.kind == Kind::Directory {
                return Err(ControlError::IsDirectory(path));
            }
            who.caller
                .require(&a, if write { WRITE } else { READ }, &path)?;
            let guid: Guid = rand::random();
            let epoch = if write {
                self.take_write(ino, guid, who.caller.uid, wait).await?
            } else {
                0
            };
            let handle = self.handle(guid, ino, write, epoch);
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
            r.set_write_epoch(epoch);
            if write {
                r.set_reserve_capability(&handle.new_reserve_capability());
            }
            fill_attr(r.reborrow().init_attr(), ino, &attr_now);
            r.set_handle(crate::metrics::file_handle_client(handle));
            Ok(())
        })
    }

    fn open_new(
        self: CapRc<Self>,
        params: control::OpenNewParams,
        mut results: control::OpenNewResults,
    ) -> impl std::future::Future<Output = Result<(), capnp::Error>> + 'static {
        wire(async move {
            let who = self.principal()?;
            let p = params.get()?;
            let m = Mutation::ReserveInode {
                who: who.caller.clone(),
                path: text(p.get_path())?,
                options: read_create_options(p.get_options()?),
                now_ns: now_ns(),
            };
            let Outcome::Attr(ino, attr) = self.submit(None, m).await? else {
                return Err(ControlError::Internal(
                    "reserveInode answered no inode".into(),
                ));
            };
            // Nobody else knows the number: granted at once.
            let guid: Guid = rand::random();
            let epoch = self
                .take_write(ino, guid, who.caller.uid, Duration::ZERO)
                .await?;
            let handle = self.handle(guid, ino, true, epoch);
            let mut r = results.get();
            r.set_guid(&guid);
            r.set_write_epoch(epoch);
            r.set_reserve_capability(&handle.new_reserve_capability());
            fill_attr(r.reborrow().init_attr(), ino, &attr);
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
            self.cluster("join")?;
            let p = params.get()?;
            no_secret(p.get_secret())?;
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
                return Err(ControlError::Internal("unexpected join outcome".into()));
            };
            self.state.epoch.set(self.state.epoch.get().max(epoch));
            self.state
                .membership
                .borrow_mut()
                .joined(node_id, key, shards, capacity);
            // A (re)joining node starts a new session: commands sent to the
            // old one will never report back.
            self.state.commands.borrow_mut().forget_node(node_id);
            // Its commands go through the capability it offered, at once.
            let mut pushers = self.state.pushers.borrow_mut();
            match p.get_commands() {
                Ok(cap) if p.has_commands() => {
                    pushers.insert(node_id, cap);
                }
                _ => {
                    pushers.remove(&node_id);
                }
            }
            drop(pushers);
            tracing::info!(node_id, "node joined");
            self.state.notify_watchers();
            self.state.kick.notify_one();
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
            self.cluster("heartbeat")?;
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
                .map(read_command_result)
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
            self.cluster("reportChunks")?;
            let p = params.get()?;
            let chunks = p
                .get_chunks()?
                .iter()
                .map(|c| {
                    Ok((
                        read_chunk_id(c.get_chunk_id()?),
                        ringfs_schema::Version::new(c.get_version_epoch(), c.get_version_seq()),
                        c.get_length(),
                    ))
                })
                .collect::<Result<Vec<_>>>()?;
            let last = p.get_last();
            self.state.membership.borrow_mut().report_chunks(
                p.get_node_id(),
                p.get_node_key()?,
                chunks,
                last,
            )?;
            if last {
                // A fresh inventory may show what to repair: plan now.
                self.state.rescan.set(true);
                self.state.kick.notify_one();
            }
            Ok(())
        })
    }

    fn cluster_map(
        self: CapRc<Self>,
        _: control::ClusterMapParams,
        mut results: control::ClusterMapResults,
    ) -> impl std::future::Future<Output = Result<(), capnp::Error>> + 'static {
        if let Err(e) = self.principal() {
            return std::future::ready(Err(e.into()));
        }
        self.state.fill_map(results.get().init_map());
        std::future::ready(Ok(()))
    }

    fn report_bad_replica(
        self: CapRc<Self>,
        params: control::ReportBadReplicaParams,
        _: control::ReportBadReplicaResults,
    ) -> impl std::future::Future<Output = Result<(), capnp::Error>> + 'static {
        wire(async move {
            self.principal()?;
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
                "a client found a damaged replica (a read failed its checksum, or a verified read outvoted it)"
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
            self.cluster("leave")?;
            let p = params.get()?;
            let id = p.get_node_id();
            let was_up = self
                .state
                .membership
                .borrow_mut()
                .left(id, p.get_node_key()?)?;
            tracing::info!(node_id = id, "node is leaving: marked down");
            self.state.pushers.borrow_mut().remove(&id);
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
            let who = self.principal()?;
            let limit = params.get()?.get_problem_limit().min(MAX_PROBLEMS) as usize;
            // Counts are for anyone; problems name files: the administrator's.
            if limit > 0 {
                who.require_admin("chunkHealth with problems (paths of any file)")?;
            }
            let map = self.state.store.chunk_map()?;
            let paths = if limit > 0 {
                self.state.store.paths()?
            } else {
                Default::default()
            };
            let garbage = self.state.store.garbage()?;
            let writer = |inode| self.state.has_writer(inode);
            let mut h = crate::repair::health(
                &self.state.repair.borrow(),
                &map,
                &self.state.membership.borrow(),
                &self.state.commands.borrow(),
                &paths,
                limit,
                Instant::now(),
                &writer,
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
            self.principal()?;
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

    fn raft(
        self: CapRc<Self>,
        params: control::RaftParams,
        mut results: control::RaftResults,
    ) -> impl std::future::Future<Output = Result<(), capnp::Error>> + 'static {
        wire(async move {
            self.cluster("raft")?;
            let p = params.get()?;
            no_secret(p.get_secret())?;
            let replica = self.replica()?;
            results
                .get()
                .set_peer(capnp_rpc::new_client(crate::raft::peer::PeerImpl {
                    raft: replica.raft.clone(),
                    from: p.get_from_replica(),
                }));
            Ok(())
        })
    }

    fn replication(
        self: CapRc<Self>,
        _: control::ReplicationParams,
        mut results: control::ReplicationResults,
    ) -> impl std::future::Future<Output = Result<(), capnp::Error>> + 'static {
        if let Err(e) = self.principal() {
            return std::future::ready(Err(e.into()));
        }
        let mut s = results.get().init_status();
        match &self.state.replica {
            None => {
                s.set_replicated(false);
                s.set_state("leader");
            }
            Some(r) => r.fill_status(s),
        }
        std::future::ready(Ok(()))
    }

    fn add_replica(
        self: CapRc<Self>,
        params: control::AddReplicaParams,
        _: control::AddReplicaResults,
    ) -> impl std::future::Future<Output = Result<(), capnp::Error>> + 'static {
        wire(async move {
            self.admin("addReplica")?;
            let p = params.get()?;
            no_secret(p.get_secret())?;
            let replica = self.replica()?.clone();
            let id = p.get_replica_id();
            let addr = text(p.get_address())?;
            ringfs_ops::config_file::check_host_port(&addr)
                .map_err(ControlError::InvalidArgument)?;
            if id == 0 {
                return Err(ControlError::InvalidArgument("replica id 0".into()));
            }
            replica.add_replica(id, addr).await
        })
    }

    fn remove_replica(
        self: CapRc<Self>,
        params: control::RemoveReplicaParams,
        _: control::RemoveReplicaResults,
    ) -> impl std::future::Future<Output = Result<(), capnp::Error>> + 'static {
        wire(async move {
            self.admin("removeReplica")?;
            let p = params.get()?;
            no_secret(p.get_secret())?;
            let replica = self.replica()?.clone();
            replica.remove_replica(p.get_replica_id()).await
        })
    }

    fn take_snapshot(
        self: CapRc<Self>,
        params: control::TakeSnapshotParams,
        mut results: control::TakeSnapshotResults,
    ) -> impl std::future::Future<Output = Result<(), capnp::Error>> + 'static {
        wire(async move {
            self.admin("takeSnapshot")?;
            no_secret(params.get()?.get_secret())?;
            let (path, index, bytes) = match &self.state.replica {
                Some(r) => r.snapshot_now().await?,
                None => {
                    let store = self.state.store.clone();
                    let dir = self.state.data_dir.clone();
                    tokio::task::spawn_blocking(move || crate::backup::write(&store, &dir))
                        .await
                        .map_err(|e| ControlError::Internal(format!("snapshot task: {e}")))??
                }
            };
            let mut r = results.get();
            r.set_path(path.to_string_lossy().as_ref());
            r.set_last_index(index);
            r.set_bytes(bytes);
            Ok(())
        })
    }
    fn authenticate(
        self: CapRc<Self>,
        params: control::AuthenticateParams,
        mut results: control::AuthenticateResults,
    ) -> impl std::future::Future<Output = Result<(), capnp::Error>> + 'static {
        wire(async move {
            let p = params.get()?;
            let user = text(p.get_user())?;
            let principal = self
                .session
                .authenticate(&self.state, &user, p.get_proof()?)?;
            let mut r = results.get();
            r.set_uid(principal.caller.uid);
            r.set_admin(principal.caller.admin);
            let gids = &principal.caller.gids;
            let mut list = r.init_gids(gids.len() as u32);
            for (i, g) in gids.iter().enumerate() {
                list.set(i as u32, *g);
            }
            Ok(())
        })
    }

    fn add_user(
        self: CapRc<Self>,
        params: control::AddUserParams,
        mut results: control::AddUserResults,
    ) -> impl std::future::Future<Output = Result<(), capnp::Error>> + 'static {
        wire(async move {
            self.admin("addUser")?;
            let p = params.get()?;
            let gids = p.get_gids()?;
            if gids.len() as usize > crate::records::MAX_GROUPS {
                return Err(ControlError::InvalidArgument(format!(
                    "{} groups: at most {}",
                    gids.len(),
                    crate::records::MAX_GROUPS
                )));
            }
            let m = Mutation::AddUser {
                name: text(p.get_name())?,
                uid: p.get_uid(),
                gids: gids.iter().collect(),
                admin: p.get_admin(),
                salt: rand::random(),
            };
            match self.submit(None, m).await? {
                Outcome::User(name, user) => {
                    tracing::info!(user = name, uid = user.uid, "user added");
                    fill_user(results.get().init_user(), &name, &user);
                    Ok(())
                }
                other => Err(ControlError::Internal(format!(
                    "unexpected outcome {other:?}"
                ))),
            }
        })
    }

    fn remove_user(
        self: CapRc<Self>,
        params: control::RemoveUserParams,
        _: control::RemoveUserResults,
    ) -> impl std::future::Future<Output = Result<(), capnp::Error>> + 'static {
        wire(async move {
            self.admin("removeUser")?;
            let name = text(params.get()?.get_name())?;
            self.submit(None, Mutation::RemoveUser { name: name.clone() })
                .await?;
            tracing::info!(user = name, "user removed");
            Ok(())
        })
    }

    fn commit_transaction(
        self: CapRc<Self>,
        params: control::CommitTransactionParams,
        results: control::CommitTransactionResults,
    ) -> impl std::future::Future<Output = Result<(), capnp::Error>> + 'static {
        wire(async move {
            let who = self.principal()?;
            super::transaction::commit(&self.state, &who, params, results).await
        })
    }

    fn list_users(
        self: CapRc<Self>,
        _: control::ListUsersParams,
        mut results: control::ListUsersResults,
    ) -> impl std::future::Future<Output = Result<(), capnp::Error>> + 'static {
        wire(async move {
            self.admin("listUsers")?;
            self.state.read_barrier(false).await?;
            let users = self.state.store.users()?;
            let mut list = results.get().init_users(users.len() as u32);
            for (i, (name, user)) in users.iter().enumerate() {
                fill_user(list.reborrow().get(i as u32), name, user);
            }
            Ok(())
        })
    }
}

/// A user as the wire shows it (the salt is not a secret: the key needs
/// the cluster secret too).
fn fill_user(
    mut b: ringfs_schema::control_capnp::user_info::Builder<'_>,
    name: &str,
    u: &crate::records::User,
) {
    b.set_name(name);
    b.set_uid(u.uid);
    b.set_admin(u.admin);
    b.set_salt(&u.salt);
    let mut gids = b.init_gids(u.gids.len() as u32);
    for (i, g) in u.gids.iter().enumerate() {
        gids.set(i as u32, *g);
    }
}

/// Refuses a non-empty obsolete `secret` parameter: the caller
/// authenticates instead, and no secret is sent.
fn no_secret(r: capnp::Result<capnp::data::Reader<'_>>) -> Result<()> {
    if r?.is_empty() {
        return Ok(());
    }
    Err(ControlError::InvalidArgument(
        "the secret parameter is obsolete and must be empty: authenticate instead \
         (docs/protocol.md)"
            .into(),
    ))
}

/// A request id from the wire: empty is none, 16 bytes an id.
pub(super) fn request_id(r: capnp::Result<capnp::data::Reader<'_>>) -> Result<Option<u128>> {
    let bytes = r?;
    match bytes.len() {
        0 => Ok(None),
        16 => Ok(Some(u128::from_le_bytes(
            bytes.try_into().expect("16 bytes"),
        ))),
        n => Err(ControlError::InvalidArgument(format!(
            "a request id is 16 bytes, not {n}"
        ))),
    }
}
