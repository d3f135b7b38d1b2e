//! Raft messages to other replicas, over Cap'n Proto RPC: a connection to
//! the target's control port, authenticated as the cluster principal
//! (`@cluster`, a key derived from the cluster secret: the secret itself
//! is never sent), whose `raft` call hands out its
//! `RaftPeer` capability; every message is openraft's own, encoded with
//! postcard ([`super::encode`]).
//!
//! One connection per target replica, shared by every sender (openraft
//! makes a new client for each leadership confirmation of a read, and a
//! TCP and Cap'n Proto handshake each time would cost more than the
//! confirmation); Cap'n Proto multiplexes their calls. A connection that
//! fails is dropped and made again at the next message; an unreachable
//! target makes openraft back off before it retries.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use ringfs_ops::auth::Credential;
use ringfs_ops::tls::Tls;
use ringfs_ops::transport;
use ringfs_schema::control_capnp::{control, raft_peer};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{decode, encode, TypeConfig};

/// Longest a connection attempt to another replica may take.
const CONNECT_WITHIN: Duration = Duration::from_secs(2);

/// Open connections by target replica.
type Pool = Rc<RefCell<HashMap<u64, Rc<Open>>>>;

/// Makes a [`PeerConn`] per target replica.
#[derive(Clone)]
pub struct Network {
    /// The cluster principal's credential, proved to the targets.
    pub cred: Rc<Credential>,
    /// This replica's id.
    pub from: u64,
    /// TLS for every connection, if configured.
    pub tls: Option<Tls>,
    pool: Pool,
}

impl Network {
    /// Connections to other replicas, authenticated with the cluster
    /// secret's key, as replica `from`, over TLS if `tls` is given.
    pub fn new(secret: &[u8], from: u64, tls: Option<Tls>) -> Self {
        Network {
            cred: Rc::new(Credential::cluster(secret)),
            from,
            tls,
            pool: Pool::default(),
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConn;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerConn {
        PeerConn {
            target,
            addr: node.addr.clone(),
            cred: self.cred.clone(),
            tls: self.tls.clone(),
            from: self.from,
            pool: self.pool.clone(),
        }
    }
}

/// An open connection: the peer capability and the RPC task.
struct Open {
    addr: String,
    peer: raft_peer::Client,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The messages to one target replica.
pub struct PeerConn {
    target: u64,
    addr: String,
    cred: Rc<Credential>,
    tls: Option<Tls>,
    from: u64,
    pool: Pool,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Failure(String);

type RpcErr<E = openraft::error::Infallible> = RPCError<u64, BasicNode, RaftError<u64, E>>;

enum Method {
    Append,
    Vote,
    Snapshot,
}

impl PeerConn {
    async fn connect(&self) -> Result<Open, Failure> {
        let (control, task) = dial(&self.addr, self.tls.as_ref()).await.map_err(Failure)?;
        if let Err(e) = greet(&control, &self.cred).await {
            task.abort();
            return Err(Failure(format!("hello to {}: {e}", self.addr)));
        }
        let mut req = control.raft_request();
        req.get().set_from_replica(self.from);
        // Pipelined: the first message goes out with the Raft request.
        let peer = req.send().pipeline.get_peer();
        Ok(Open {
            addr: self.addr.clone(),
            peer,
            task,
        })
    }

    /// The shared connection to the target, made if there is none (or it
    /// ended, or the target moved).
    async fn open(&self) -> Result<Rc<Open>, Failure> {
        let pooled = self.pool.borrow().get(&self.target).cloned();
        if let Some(o) = pooled.filter(|o| !o.task.is_finished() && o.addr == self.addr) {
            return Ok(o);
        }
        let o = Rc::new(self.connect().await?);
        self.pool.borrow_mut().insert(self.target, o.clone());
        Ok(o)
    }

    /// Drops `conn` from the pool (if it is still the pooled one).
    fn forget(&self, conn: &Rc<Open>) {
        let mut pool = self.pool.borrow_mut();
        if pool.get(&self.target).is_some_and(|o| Rc::ptr_eq(o, conn)) {
            pool.remove(&self.target);
        }
    }

    /// Sends one message and returns the target's answer, or why it could
    /// not be had: `Err(Ok(..))` a transport failure (`unreachable`: the
    /// target could not be reached at all), `Err(Err(..))` never here.
    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &mut self,
        method: Method,
        req: &Req,
        ttl: Duration,
    ) -> Result<Resp, (bool, Failure)> {
        let conn = self.open().await.map_err(|e| (true, e))?;
        let peer = &conn.peer;
        let bytes = encode(req);
        let answer = async {
            let reply = match method {
                Method::Append => {
                    let mut r = peer.append_entries_request();
                    r.get().set_request(&bytes);
                    r.send().promise.await?.get()?.get_response()?.to_vec()
                }
                Method::Vote => {
                    let mut r = peer.vote_request();
                    r.get().set_request(&bytes);
                    r.send().promise.await?.get()?.get_response()?.to_vec()
                }
                Method::Snapshot => {
                    let mut r = peer.install_snapshot_request();
                    r.get().set_request(&bytes);
                    r.send().promise.await?.get()?.get_response()?.to_vec()
                }
            };
            Ok::<_, capnp::Error>(reply)
        };
        let reply = match tokio::time::timeout(ttl, answer).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                self.forget(&conn);
                let (_, message) = ringfs_schema::wire_error::decode(&e);
                return Err((
                    false,
                    Failure(format!("replica {}: {message}", self.target)),
                ));
            }
            Err(_) => {
                self.forget(&conn);
                return Err((false, Failure(format!("replica {} timed out", self.target))));
            }
        };
        decode(&reply).map_err(|e| (false, Failure(format!("malformed answer: {e}"))))
    }

    /// Sends `rpc` as `method` within the option's hard TTL: the target's
    /// answer, its Raft error as a remote error, or the transport failure.
    async fn send<Req: Serialize, Resp: DeserializeOwned, E>(
        &mut self,
        method: Method,
        rpc: &Req,
        option: RPCOption,
    ) -> Result<Resp, RPCError<u64, BasicNode, RaftError<u64, E>>>
    where
        E: std::error::Error + DeserializeOwned,
    {
        let r: Result<Resp, RaftError<u64, E>> = self
            .call(method, rpc, option.hard_ttl())
            .await
            .map_err(|e| self.fail(e))?;
        r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    fn fail<E: std::error::Error>(
        &self,
        (unreachable, f): (bool, Failure),
    ) -> RPCError<u64, BasicNode, E> {
        if unreachable {
            RPCError::Unreachable(Unreachable::new(&f))
        } else {
            RPCError::Network(NetworkError::new(&f))
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerConn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RpcErr> {
        self.send(Method::Append, &rpc, option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RpcErr<InstallSnapshotError>> {
        self.send(Method::Snapshot, &rpc, option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RpcErr> {
        self.send(Method::Vote, &rpc, option).await
    }
}

/// Connects to the control replica at `addr` (within `CONNECT_WITHIN`,
/// over `tls` if given) and bootstraps its `Control` capability; the task
/// runs the connection until it ends or is aborted. The error says what
/// failed, with the address.
async fn dial(
    addr: &str,
    tls: Option<&Tls>,
) -> Result<(control::Client, tokio::task::JoinHandle<()>), String> {
    let stream = transport::connect(addr, CONNECT_WITHIN, tls)
        .await
        .map_err(|e| e.to_string())?;
    Ok(transport::rpc_client(stream))
}

/// Why asking a replica to add this one failed.
pub enum AddFailure {
    /// The replica asked is not the leader; the leader's address if known.
    Leader(Option<String>),
    /// Anything else (unreachable, refused).
    Other(String),
}

/// Asks the replica at `via` to add replica `id` (at `addr`) to the group;
/// returns once it is a voter.
pub async fn add_replica(
    via: &str,
    network: &Network,
    id: u64,
    addr: &str,
) -> Result<(), AddFailure> {
    let (control, task) = dial(via, network.tls.as_ref())
        .await
        .map_err(AddFailure::Other)?;
    let _task = scopeguard(task);
    let rpc_err = |e: capnp::Error| {
        let (code, message) = ringfs_schema::wire_error::decode(&e);
        if code == ringfs_schema::control_capnp::ErrorCode::NotLeader {
            AddFailure::Leader(None)
        } else {
            AddFailure::Other(message)
        }
    };
    let (is_leader, leader) = greet(&control, &network.cred).await.map_err(rpc_err)?;
    if !is_leader {
        return Err(AddFailure::Leader(leader));
    }
    let mut req = control.add_replica_request();
    req.get().set_replica_id(id);
    req.get().set_address(addr);
    req.send().promise.await.map_err(rpc_err)?;
    Ok(())
}

/// Says hello on a new connection and authenticates with `cred` (every
/// Control call needs both, docs/protocol.md); returns whether the server
/// leads and the leader's address if it named one.
async fn greet(
    control: &control::Client,
    cred: &Credential,
) -> Result<(bool, Option<String>), capnp::Error> {
    let mut hello = control.hello_request();
    hello
        .get()
        .set_protocol_version(ringfs_schema::PROTOCOL_VERSION);
    let reply = hello.send().promise.await?;
    let r = reply.get()?;
    let leader = r
        .get_leader_address()
        .ok()
        .and_then(|t| t.to_str().ok())
        .filter(|a| !a.is_empty())
        .map(str::to_string);
    let mut auth = control.authenticate_request();
    auth.get().set_user(cred.user.as_str());
    auth.get().set_proof(&cred.proof(r.get_challenge()?));
    auth.send().promise.await?;
    Ok((r.get_is_leader(), leader))
}

/// Aborts the RPC task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn scopeguard(task: tokio::task::JoinHandle<()>) -> AbortOnDrop {
    AbortOnDrop(task)
}
