//! A typed client of the control server's RPC (`schema/control.capnp`).
//!
//! Must be used inside a tokio `LocalSet`: the RPC connection runs as a
//! local task. Dropping the [`ControlClient`] and every [`FileHandle`] made
//! from it closes the connection, which releases the handles' leases on the
//! server.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use capnp::capability::Rc as CapRc;
use ringfs_ops::tls::Tls;
use ringfs_ops::transport::{self, ConnectError};
use ringfs_schema::common_capnp::capacity;
use ringfs_schema::control_capnp::{
    attr, chunk_record, cluster_map, control, create_options, file_handle, map_watcher,
    subscription, FileKind, OpenMode,
};
pub use ringfs_schema::Version;
use ringfs_schema::{read_chunk_id, write_chunk_id};
use tokio::sync::mpsc;

use crate::error::{Error, Result};

mod handle;
mod types;
pub use handle::FileHandle;
pub use ringfs_ops::auth::Credential;
pub use ringfs_ops::capability::Capability;
pub use types::*;

/// A capability with less than this left is renewed before it is used: a
/// request may wait for a lock and cross a loaded network before the node
/// checks it.
pub const CAPABILITY_MARGIN: Duration = Duration::from_secs(60);

/// The [`FileHandle`] of an `open` or `openNew` answer `$r` (the two
/// answers have the same fields, in different generated types).
macro_rules! file_handle {
    ($r:expr, $conn:expr) => {{
        let r = $r;
        let guid: [u8; 16] = r
            .get_guid()?
            .try_into()
            .map_err(|_| Error::internal("the server sent a handle id that is not 16 bytes"))?;
        Ok(FileHandle {
            cap: r.get_handle()?,
            guid,
            attr: read_attr(r.get_attr()?)?,
            write_epoch: r.get_write_epoch(),
            reserve_capability: std::cell::Cell::new(Capability::from_wire(
                r.get_reserve_capability()?,
            )),
            _conn: $conn.clone(),
        })
    }};
}

/// The RPC connection; aborting its task closes the socket.
struct Conn {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a control server said about itself when the connection opened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerInfo {
    /// Its version string.
    pub version: String,
    /// It serves every call: a single control server, or the Raft leader
    /// of a replicated control plane (when the connection opened).
    pub is_leader: bool,
    /// The leader's address as this replica knew it (empty when unknown,
    /// or when this is the leader).
    pub leader_address: String,
    /// The control plane is replicated.
    pub replicated: bool,
}

/// A connection to the control server.
#[derive(Clone)]
pub struct ControlClient {
    control: control::Client,
    conn: Rc<Conn>,
    info: Rc<ServerInfo>,
}

/// A 16-byte request id on the wire (empty: none).
fn id_bytes(id: Option<u128>) -> Vec<u8> {
    id.map(|i| i.to_le_bytes().to_vec()).unwrap_or_default()
}

fn read_attr(a: attr::Reader) -> Result<Attr> {
    Ok(Attr {
        inode: a.get_inode(),
        kind: match a.get_kind()? {
            FileKind::File => Kind::File,
            FileKind::Directory => Kind::Directory,
        },
        size: a.get_size(),
        mode: a.get_mode(),
        mtime_ns: a.get_mtime_ns(),
        chunk_size: a.get_chunk_size(),
        replication: a.get_replication(),
        write_quorum: a.get_write_quorum(),
        version: a.get_version(),
        uid: a.get_uid(),
        gid: a.get_gid(),
    })
}

fn fill_capacity(mut b: capacity::Builder, c: &Capacity) {
    b.set_total_bytes(c.total);
    b.set_used_bytes(c.used);
    b.set_reserved_bytes(c.reserved);
    b.set_chunk_count(c.chunks);
}

/// Decodes a cluster map.
pub fn read_map(m: cluster_map::Reader) -> Result<ClusterMap> {
    let mut nodes = Vec::new();
    for n in m.get_nodes()? {
        let c = n.get_capacity()?;
        let mut shards = Vec::new();
        for s in n.get_shards()? {
            shards.push(s.get_address()?.to_str()?.to_string());
        }
        nodes.push(NodeInfo {
            node_id: n.get_node_id(),
            up: n.get_up(),
            shards,
            capacity: Capacity {
                total: c.get_total_bytes(),
                used: c.get_used_bytes(),
                reserved: c.get_reserved_bytes(),
                chunks: c.get_chunk_count(),
            },
            last_heartbeat_ago_ms: n.get_last_heartbeat_ago_ms(),
        });
    }
    Ok(ClusterMap {
        epoch: m.get_epoch(),
        nodes,
    })
}

fn read_chunk(r: chunk_record::Reader) -> Result<ChunkRecord> {
    Ok(ChunkRecord {
        index: r.get_index(),
        chunk_id: read_chunk_id(r.get_chunk_id()?),
        replicas: r.get_replicas()?.iter().collect(),
        length: r.get_length(),
        version: Version::new(r.get_version_epoch(), r.get_version_seq()),
        capability: Capability::from_wire(r.get_capability()?),
    })
}

fn fill_chunk(mut b: chunk_record::Builder, c: &ChunkRecord) {
    b.set_index(c.index);
    write_chunk_id(b.reborrow().init_chunk_id(), c.chunk_id);
    b.set_length(c.length);
    b.set_version_epoch(c.version.epoch);
    b.set_version_seq(c.version.seq);
    if let Some(cap) = &c.capability {
        b.set_capability(&cap.0);
    }
    let mut reps = b.init_replicas(c.replicas.len() as u32);
    for (i, r) in c.replicas.iter().enumerate() {
        reps.set(i as u32, *r);
    }
}

/// How long connecting to a control server (TCP and TLS) may take.
const CONNECT_WITHIN: Duration = Duration::from_secs(5);

/// The client error for a failed connection: a timeout or refusal is
/// [`Error::Timeout`] or [`Error::Unavailable`] (worth retrying), a TLS
/// failure [`Error::Unauthenticated`] (retrying will not fix it).
pub(crate) fn connect_error(e: ConnectError) -> Error {
    match e {
        ConnectError::Timeout { .. } => Error::Timeout(e.to_string()),
        ConnectError::Connect { addr, source } => {
            Error::unavailable_from(format!("cannot connect to {addr}"), source)
        }
        // The message carries rustls's reason (its Display includes it).
        other => Error::Unauthenticated(other.to_string()),
    }
}

impl ControlClient {
    /// Connects, checks that both sides speak the same protocol version,
    /// and authenticates as `cred`'s user (docs/protocol.md): every later
    /// call runs as it. Plaintext: see [`ControlClient::connect_tls`].
    pub async fn connect(addr: SocketAddr, cred: &Credential) -> Result<Self> {
        Self::connect_tls(addr, cred, None).await
    }

    /// [`ControlClient::connect`] over TLS when `tls` is given (the server
    /// is verified against the cluster CA and `addr`'s IP address).
    /// [`Error::Unauthenticated`] if the TLS handshake fails (either side
    /// refused the other's certificate, or the server does not speak TLS);
    /// a plaintext connection that a TLS server closes fails with
    /// [`Error::Unavailable`] naming TLS as the likely cause.
    pub async fn connect_tls(
        addr: SocketAddr,
        cred: &Credential,
        tls: Option<&Tls>,
    ) -> Result<Self> {
        let stream = transport::connect(&addr.to_string(), CONNECT_WITHIN, tls)
            .await
            .map_err(connect_error)?;
        let (control, task) = transport::rpc_client::<control::Client>(stream);
        let mut client = ControlClient {
            control,
            conn: Rc::new(Conn { task }),
            info: Rc::default(),
        };
        let (info, challenge) = client.hello().await.map_err(|e| match e {
            // A transport failure (a typed error the server sent has no
            // source): what a TLS-only server does to a plaintext hello.
            Error::Unavailable {
                source: Some(_), ..
            }
            | Error::Internal {
                source: Some(_), ..
            } if tls.is_none() => Error::unavailable_from(
                format!(
                    "{addr} closed the connection before answering hello \
                         (does the cluster require TLS? see --tls-ca)"
                ),
                e,
            ),
            e => e,
        })?;
        client.info = Rc::new(info);
        client.authenticate(cred, &challenge).await?;
        Ok(client)
    }

    /// Proves `cred` against the challenge of this connection's hello.
    async fn authenticate(&self, cred: &Credential, challenge: &[u8]) -> Result<Principal> {
        let mut req = self.control.authenticate_request();
        req.get().set_user(cred.user.as_str());
        req.get().set_proof(&cred.proof(challenge));
        let reply = req.send().promise.await?;
        let r = reply.get()?;
        Ok(Principal {
            uid: r.get_uid(),
            gids: r.get_gids()?.iter().collect(),
            admin: r.get_admin(),
        })
    }

    /// What the server said about itself when this connection opened.
    pub fn server_info(&self) -> &ServerInfo {
        &self.info
    }

    /// Whether the connection still runs (false once the server closed it
    /// or went away).
    pub fn is_connected(&self) -> bool {
        !self.conn.task.is_finished()
    }

    async fn hello(&self) -> Result<(ServerInfo, Vec<u8>)> {
        let mut req = self.control.hello_request();
        req.get()
            .set_protocol_version(ringfs_schema::PROTOCOL_VERSION);
        let reply = req.send().promise.await?;
        let r = reply.get()?;
        let info = ServerInfo {
            version: r.get_server_version()?.to_str()?.to_string(),
            // A single server leads; a replica says whether it does.
            is_leader: r.get_is_leader() || !r.get_replicated(),
            leader_address: r.get_leader_address()?.to_str()?.to_string(),
            replicated: r.get_replicated(),
        };
        Ok((info, r.get_challenge()?.to_vec()))
    }

    /// Creates a file entry (no data) and returns its attributes; an
    /// existing file is returned unchanged unless `options.exclusive`.
    pub async fn create(&self, path: &str, options: CreateOptions) -> Result<Attr> {
        self.create_as(None, path, options).await
    }

    /// [`ControlClient::create`] with request id `id`: sent again with the
    /// same id, it is not applied twice.
    pub async fn create_as(
        &self,
        id: Option<u128>,
        path: &str,
        options: CreateOptions,
    ) -> Result<Attr> {
        let mut req = self.control.create_request();
        let mut p = req.get();
        p.set_request_id(&id_bytes(id));
        p.set_path(path);
        fill_create_options(p.init_options(), &options);
        let reply = req.send().promise.await?;
        read_attr(reply.get()?.get_attr()?)
    }

    /// Commits the records and sizes of several files in one mutation,
    /// creating the files of `files` opened with [`Self::open_new`] and
    /// unlinking the files at `unlinks`: all or none
    /// (`commitTransaction`, docs/protocol.md). Answers the
    /// files' attributes afterwards, in the order of `files`. Sent again
    /// with the same `id`, it is answered as the first time and applied at
    /// most once, even when the handles died with the first connection.
    pub async fn commit_transaction_as(
        &self,
        id: Option<u128>,
        files: &[TransactionPart<'_>],
        unlinks: &[&str],
    ) -> Result<Vec<Attr>> {
        let mut req = self.control.commit_transaction_request();
        req.get().set_request_id(&id_bytes(id));
        let mut list = req.get().init_unlinks(unlinks.len() as u32);
        for (i, path) in unlinks.iter().enumerate() {
            list.set(i as u32, *path);
        }
        let mut list = req.get().init_files(files.len() as u32);
        for (i, f) in files.iter().enumerate() {
            let mut b = list.reborrow().get(i as u32);
            b.set_guid(&f.guid);
            b.set_truncate_to(f.truncate_to);
            b.set_file_size(f.file_size);
            if let Some((path, options)) = f.create {
                b.set_create_at(path);
                fill_create_options(b.reborrow().init_create_options(), &options);
            }
            let mut chunks = b.init_chunks(f.chunks.len() as u32);
            for (k, c) in f.chunks.iter().enumerate() {
                fill_chunk(chunks.reborrow().get(k as u32), c);
            }
        }
        let reply = req.send().promise.await?;
        reply.get()?.get_attrs()?.iter().map(read_attr).collect()
    }

    /// Creates a directory (`mode` 0: 0o755).
    pub async fn mkdir(&self, path: &str, mode: u32) -> Result<Attr> {
        self.mkdir_as(None, path, mode).await
    }

    /// [`ControlClient::mkdir`] with request id `id`.
    pub async fn mkdir_as(&self, id: Option<u128>, path: &str, mode: u32) -> Result<Attr> {
        let mut req = self.control.mkdir_request();
        req.get().set_request_id(&id_bytes(id));
        req.get().set_path(path);
        req.get().set_mode(mode);
        let reply = req.send().promise.await?;
        read_attr(reply.get()?.get_attr()?)
    }

    /// Removes a file.
    pub async fn unlink(&self, path: &str) -> Result<()> {
        self.unlink_as(None, path).await
    }

    /// [`ControlClient::unlink`] with request id `id`.
    pub async fn unlink_as(&self, id: Option<u128>, path: &str) -> Result<()> {
        let mut req = self.control.unlink_request();
        req.get().set_request_id(&id_bytes(id));
        req.get().set_path(path);
        req.send().promise.await?;
        Ok(())
    }

    /// Removes an empty directory.
    pub async fn rmdir(&self, path: &str) -> Result<()> {
        self.rmdir_as(None, path).await
    }

    /// [`ControlClient::rmdir`] with request id `id`.
    pub async fn rmdir_as(&self, id: Option<u128>, path: &str) -> Result<()> {
        let mut req = self.control.rmdir_request();
        req.get().set_request_id(&id_bytes(id));
        req.get().set_path(path);
        req.send().promise.await?;
        Ok(())
    }

    /// Moves `from` to `to` (see [`crate::Client::rename`]).
    pub async fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.rename_as(None, from, to).await
    }

    /// [`ControlClient::rename`] with request id `id`.
    pub async fn rename_as(&self, id: Option<u128>, from: &str, to: &str) -> Result<()> {
        let mut req = self.control.rename_request();
        req.get().set_request_id(&id_bytes(id));
        req.get().set_from(from);
        req.get().set_to(to);
        req.send().promise.await?;
        Ok(())
    }

    /// chmod and/or utimes (`None`: unchanged); returns the new attributes.
    pub async fn set_attr(
        &self,
        path: &str,
        mode: Option<u32>,
        mtime_ns: Option<i64>,
    ) -> Result<Attr> {
        self.set_attr_as(None, path, mode, mtime_ns).await
    }

    /// [`ControlClient::set_attr`] with request id `id`.
    pub async fn set_attr_as(
        &self,
        id: Option<u128>,
        path: &str,
        mode: Option<u32>,
        mtime_ns: Option<i64>,
    ) -> Result<Attr> {
        self.set_attrs(id, path, mode, mtime_ns, None, None).await
    }

    /// chown: the owner (the administrator only) and/or the group (the
    /// owner, to one of its groups, or the administrator).
    pub async fn chown(&self, path: &str, uid: Option<u32>, gid: Option<u32>) -> Result<Attr> {
        self.chown_as(None, path, uid, gid).await
    }

    /// [`ControlClient::chown`] with request id `id`.
    pub async fn chown_as(
        &self,
        id: Option<u128>,
        path: &str,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> Result<Attr> {
        self.set_attrs(id, path, None, None, uid, gid).await
    }

    async fn set_attrs(
        &self,
        id: Option<u128>,
        path: &str,
        mode: Option<u32>,
        mtime_ns: Option<i64>,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> Result<Attr> {
        let mut req = self.control.set_attr_request();
        let mut p = req.get();
        p.set_request_id(&id_bytes(id));
        p.set_path(path);
        p.set_set_mode(mode.is_some());
        p.set_mode(mode.unwrap_or(0));
        p.set_set_mtime(mtime_ns.is_some());
        p.set_mtime_ns(mtime_ns.unwrap_or(0));
        p.set_set_uid(uid.is_some());
        p.set_uid(uid.unwrap_or(0));
        p.set_set_gid(gid.is_some());
        p.set_gid(gid.unwrap_or(0));
        let reply = req.send().promise.await?;
        read_attr(reply.get()?.get_attr()?)
    }

    /// Attributes of `path`.
    pub async fn stat(&self, path: &str) -> Result<Attr> {
        self.stat_with(path, false).await
    }

    /// Attributes of `path`; `stale`: a replica that does not lead may
    /// answer from its own, possibly older, state.
    pub async fn stat_with(&self, path: &str, stale: bool) -> Result<Attr> {
        let mut req = self.control.stat_request();
        req.get().set_stale(stale);
        req.get().set_path(path);
        let reply = req.send().promise.await?;
        read_attr(reply.get()?.get_attr()?)
    }

    /// One page of a directory: entries after `after`, at most `limit`
    /// (0 = the server's default), and whether more follow.
    pub async fn list_page(
        &self,
        path: &str,
        after: &str,
        limit: u32,
    ) -> Result<(Vec<(String, Attr)>, bool)> {
        self.list_page_with(path, after, limit, false).await
    }

    /// [`ControlClient::list_page`]; `stale` as for
    /// [`ControlClient::stat_with`].
    pub async fn list_page_with(
        &self,
        path: &str,
        after: &str,
        limit: u32,
        stale: bool,
    ) -> Result<(Vec<(String, Attr)>, bool)> {
        let mut req = self.control.list_request();
        req.get().set_stale(stale);
        req.get().set_path(path);
        req.get().set_after(after);
        req.get().set_limit(limit);
        let reply = req.send().promise.await?;
        let r = reply.get()?;
        let mut out = Vec::new();
        for e in r.get_entries()? {
            out.push((
                e.get_name()?.to_str()?.to_string(),
                read_attr(e.get_attr()?)?,
            ));
        }
        Ok((out, r.get_more()))
    }

    /// The whole directory, page by page.
    pub async fn list(&self, path: &str) -> Result<Vec<(String, Attr)>> {
        self.list_with(path, false).await
    }

    /// The whole directory, page by page; `stale` as for
    /// [`ControlClient::stat_with`].
    pub async fn list_with(&self, path: &str, stale: bool) -> Result<Vec<(String, Attr)>> {
        let mut all: Vec<(String, Attr)> = Vec::new();
        loop {
            let after = all.last().map(|(n, _)| n.clone()).unwrap_or_default();
            let (page, more) = self.list_page_with(path, &after, 0, stale).await?;
            all.extend(page);
            if !more {
                return Ok(all);
            }
        }
    }

    /// Opens a file; a write open waits up to `wait` for the write lease.
    pub async fn open(&self, path: &str, write: bool, wait: Duration) -> Result<FileHandle> {
        let mut req = self.control.open_request();
        req.get().set_path(path);
        req.get().set_mode(if write {
            OpenMode::Write
        } else {
            OpenMode::Read
        });
        req.get()
            .set_wait_ms(wait.as_millis().min(u32::MAX as u128) as u32);
        let reply = req.send().promise.await?;
        file_handle!(reply.get()?, self.conn)
    }

    /// A write handle on a file not created yet (`openNew`): checked as an
    /// exclusive create of `path` now, created only by a
    /// [`Self::commit_transaction_as`] that names the handle with
    /// [`TransactionPart::create`]; its `attr` is what the file will be.
    /// Nothing is left behind if it is closed without such a commit.
    pub async fn open_new(&self, path: &str, options: CreateOptions) -> Result<FileHandle> {
        let mut req = self.control.open_new_request();
        req.get().set_path(path);
        fill_create_options(req.get().init_options(), &options);
        let reply = req.send().promise.await?;
        file_handle!(reply.get()?, self.conn)
    }

    /// Registers a storage node (node_id 0 and a zero key for a new one).
    pub async fn join(
        &self,
        node_id: u64,
        node_key: &[u8; 16],
        shards: &[String],
        capacity: Capacity,
    ) -> Result<Joined> {
        let mut req = self.control.join_request();
        let mut p = req.get();
        p.set_node_id(node_id);
        p.set_node_key(if node_id == 0 { &[] } else { node_key });
        let mut list = p.reborrow().init_shards(shards.len() as u32);
        for (i, s) in shards.iter().enumerate() {
            let mut e = list.reborrow().get(i as u32);
            e.set_shard(i as u16);
            e.set_address(s.as_str());
        }
        fill_capacity(p.init_capacity(), &capacity);
        let reply = req.send().promise.await?;
        let r = reply.get()?;
        Ok(Joined {
            node_id: r.get_node_id(),
            node_key: r
                .get_node_key()?
                .try_into()
                .map_err(|_| Error::internal("node key is not 16 bytes"))?,
            heartbeat: Duration::from_millis(r.get_heartbeat_ms() as u64),
            ttl: Duration::from_millis(r.get_ttl_ms() as u64),
        })
    }

    /// Sends a heartbeat; returns the map epoch and whether the server wants
    /// a chunk report.
    pub async fn heartbeat(
        &self,
        node_id: u64,
        node_key: &[u8; 16],
        capacity: Capacity,
    ) -> Result<(u64, bool)> {
        let mut req = self.control.heartbeat_request();
        req.get().set_node_id(node_id);
        req.get().set_node_key(node_key);
        fill_capacity(req.get().init_capacity(), &capacity);
        let reply = req.send().promise.await?;
        let r = reply.get()?;
        Ok((r.get_epoch(), r.get_report_wanted()))
    }

    /// Tells the control server that node `node_id`'s replica of `chunk_id`
    /// failed its checksum; `repaired` if this client already replaced it.
    pub async fn report_bad_replica(
        &self,
        chunk_id: u128,
        node_id: u64,
        repaired: bool,
    ) -> Result<()> {
        let mut req = self.control.report_bad_replica_request();
        write_chunk_id(req.get().init_chunk_id(), chunk_id);
        req.get().set_node_id(node_id);
        req.get().set_repaired(repaired);
        req.send().promise.await?;
        Ok(())
    }

    /// Replica health of every chunk, with up to `problem_limit` problems.
    pub async fn chunk_health(&self, problem_limit: u32) -> Result<ChunkHealth> {
        use ringfs_schema::control_capnp::ProblemKind as K;
        let mut req = self.control.chunk_health_request();
        req.get().set_problem_limit(problem_limit);
        let reply = req.send().promise.await?;
        let h = reply.get()?.get_health()?;
        let mut problems = Vec::new();
        for p in h.get_problems()? {
            problems.push(ChunkProblem {
                path: p.get_path()?.to_str()?.to_string(),
                index: p.get_index(),
                chunk_id: read_chunk_id(p.get_chunk_id()?),
                kind: match p.get_kind()? {
                    K::UnderReplicated => ProblemKind::UnderReplicated,
                    K::Lost => ProblemKind::Lost,
                    K::BeingRepaired => ProblemKind::BeingRepaired,
                    K::Unverified => ProblemKind::Unverified,
                    K::Namespace => ProblemKind::Namespace,
                },
                good_replicas: p.get_good_replicas(),
                wanted: p.get_wanted(),
                detail: p.get_detail()?.to_str()?.to_string(),
            });
        }
        Ok(ChunkHealth {
            chunks: h.get_chunks(),
            healthy: h.get_healthy(),
            under_replicated: h.get_under_replicated(),
            being_repaired: h.get_being_repaired(),
            lost: h.get_lost(),
            unverified: h.get_unverified(),
            namespace_errors: h.get_namespace_errors(),
            copies_in_flight: h.get_copies_in_flight(),
            deletes_pending: h.get_deletes_pending(),
            problems,
        })
    }

    /// The current cluster map.
    pub async fn cluster_map(&self) -> Result<ClusterMap> {
        let reply = self.control.cluster_map_request().send().promise.await?;
        read_map(reply.get()?.get_map()?)
    }

    /// Subscribes to the cluster map: returns the current map and a stream
    /// of every later one. Dropping the [`MapSubscription`] ends it.
    pub async fn subscribe(&self) -> Result<(ClusterMap, MapSubscription)> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut req = self.control.subscribe_request();
        req.get().set_watcher(capnp_rpc::new_client(Watcher { tx }));
        let reply = req.send().promise.await?;
        let r = reply.get()?;
        let map = read_map(r.get_map()?)?;
        Ok((
            map,
            MapSubscription {
                _sub: r.get_subscription()?,
                rx,
                _conn: self.conn.clone(),
            },
        ))
    }
}

/// One control replica, as the replica asked knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaInfo {
    /// Its id.
    pub replica_id: u64,
    /// Its RPC address.
    pub address: String,
    /// It votes (otherwise a learner catching up).
    pub voter: bool,
    /// On the leader: the highest log index known replicated there.
    pub matched_index: u64,
}

/// A control replica's view of the replicated control plane.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicationStatus {
    /// The control plane is replicated (otherwise the rest is empty).
    pub replicated: bool,
    /// The replica asked.
    pub replica_id: u64,
    /// Its Raft state: leader, follower, candidate, learner or shutdown.
    pub state: String,
    /// The leader's id (0: unknown) and address.
    pub leader_id: u64,
    /// The leader's RPC address.
    pub leader_address: String,
    /// The current term.
    pub term: u64,
    /// Its last log index.
    pub last_log_index: u64,
    /// The last index applied to its metadata store.
    pub applied_index: u64,
    /// The last index its latest snapshot covers.
    pub snapshot_index: u64,
    /// Every replica of the group.
    pub replicas: Vec<ReplicaInfo>,
}

impl ControlClient {
    /// This replica's view of the replicated control plane.
    pub async fn replication(&self) -> Result<ReplicationStatus> {
        let reply = self.control.replication_request().send().promise.await?;
        let s = reply.get()?.get_status()?;
        let mut replicas = Vec::new();
        for r in s.get_replicas()? {
            replicas.push(ReplicaInfo {
                replica_id: r.get_replica_id(),
                address: r.get_address()?.to_str()?.to_string(),
                voter: r.get_voter(),
                matched_index: r.get_matched_index(),
            });
        }
        Ok(ReplicationStatus {
            replicated: s.get_replicated(),
            replica_id: s.get_replica_id(),
            state: s.get_state()?.to_str()?.to_string(),
            leader_id: s.get_leader_id(),
            leader_address: s.get_leader_address()?.to_str()?.to_string(),
            term: s.get_term(),
            last_log_index: s.get_last_log_index(),
            applied_index: s.get_applied_index(),
            snapshot_index: s.get_snapshot_index(),
            replicas,
        })
    }

    /// Adds control replica `replica_id` at `address` (leader only; an
    /// administrator's call). Returns once it votes.
    pub async fn add_replica(&self, replica_id: u64, address: &str) -> Result<()> {
        let mut req = self.control.add_replica_request();
        req.get().set_replica_id(replica_id);
        req.get().set_address(address);
        req.send().promise.await?;
        Ok(())
    }

    /// Removes control replica `replica_id` from the group (leader only).
    pub async fn remove_replica(&self, replica_id: u64) -> Result<()> {
        let mut req = self.control.remove_replica_request();
        req.get().set_replica_id(replica_id);
        req.send().promise.await?;
        Ok(())
    }

    /// Has the server write a consistent metadata snapshot into its data
    /// directory; returns its path there, the last log index it covers and
    /// its size in bytes.
    pub async fn take_snapshot(&self) -> Result<(String, u64, u64)> {
        let req = self.control.take_snapshot_request();
        let reply = req.send().promise.await?;
        let r = reply.get()?;
        Ok((
            r.get_path()?.to_str()?.to_string(),
            r.get_last_index(),
            r.get_bytes(),
        ))
    }
}

impl ControlClient {
    /// Registers user `name` (administrators only; `uid` 0: the next free
    /// one from 1000; no `gids`: a group of its uid). Its key derives from
    /// the cluster secret and the returned salt
    /// ([`Credential::derive`]); no key crosses the wire.
    pub async fn add_user(
        &self,
        name: &str,
        uid: u32,
        gids: &[u32],
        admin: bool,
    ) -> Result<UserInfo> {
        let mut req = self.control.add_user_request();
        req.get().set_name(name);
        req.get().set_uid(uid);
        req.get().set_admin(admin);
        let mut list = req.get().init_gids(gids.len() as u32);
        for (i, g) in gids.iter().enumerate() {
            list.set(i as u32, *g);
        }
        let reply = req.send().promise.await?;
        read_user(reply.get()?.get_user()?)
    }

    /// Revokes user `name`: its connections are refused from their next
    /// call (administrators only).
    pub async fn remove_user(&self, name: &str) -> Result<()> {
        let mut req = self.control.remove_user_request();
        req.get().set_name(name);
        req.send().promise.await?;
        Ok(())
    }

    /// Every registered user (administrators only).
    pub async fn list_users(&self) -> Result<Vec<UserInfo>> {
        let reply = self.control.list_users_request().send().promise.await?;
        reply.get()?.get_users()?.iter().map(read_user).collect()
    }
}

fn read_user(u: ringfs_schema::control_capnp::user_info::Reader) -> Result<UserInfo> {
    Ok(UserInfo {
        name: u.get_name()?.to_str()?.to_string(),
        uid: u.get_uid(),
        gids: u.get_gids()?.iter().collect(),
        admin: u.get_admin(),
        salt: u.get_salt()?.to_vec(),
    })
}

/// Receives the cluster map on every change.
pub struct MapSubscription {
    _sub: subscription::Client,
    rx: mpsc::UnboundedReceiver<ClusterMap>,
    _conn: Rc<Conn>,
}

impl MapSubscription {
    /// The next map pushed by the server; `None` once the connection ended.
    pub async fn next(&mut self) -> Option<ClusterMap> {
        self.rx.recv().await
    }
}

struct Watcher {
    tx: mpsc::UnboundedSender<ClusterMap>,
}

impl map_watcher::Server for Watcher {
    fn update(
        self: CapRc<Self>,
        params: map_watcher::UpdateParams,
        _: map_watcher::UpdateResults,
    ) -> impl std::future::Future<Output = Result<(), capnp::Error>> + 'static {
        let result = params
            .get()
            .and_then(|p| p.get_map())
            .map_err(Error::from)
            .and_then(read_map);
        std::future::ready(match result {
            Ok(map) => {
                let _ = self.tx.send(map);
                Ok(())
            }
            Err(e) => Err(capnp::Error::failed(e.to_string())),
        })
    }
}

fn fill_create_options(mut o: create_options::Builder<'_>, options: &CreateOptions) {
    o.set_mode(options.mode);
    o.set_chunk_size(options.chunk_size);
    o.set_replication(options.replication);
    o.set_write_quorum(options.write_quorum);
    o.set_exclusive(options.exclusive);
}
