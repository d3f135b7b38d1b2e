//! The client's link to the cluster: the control-server connection
//! (reconnected when the server restarts), how calls run over it, and the
//! cluster map it keeps current.
//!
//! - The control plane may be one server or a group of replicas: the
//!   client is given every address and talks to the one that serves
//!   (the single server, or the Raft leader), found with `hello`
//!   ([`connect_leader`]); a replica that stopped leading answers
//!   `not_leader` and the client finds the new leader.
//! - Reads ([`Cluster::retry`]) are run again on the new connection when
//!   the connection dropped or the replica no longer leads. Mutations
//!   ([`Cluster::mutate`]) carry a request id and are sent again with the
//!   same id, which the control server answers from its record of the
//!   first application instead of applying twice; they fail with
//!   [`Error::OutcomeUnknown`] only when no server could be reached again
//!   within [`RECONNECT_FOR`].
//! - The map follows the server's pushes (nodes up and down); capacities
//!   are fetched again when older than [`MAP_MAX_AGE`] before chunks are
//!   placed, and the bytes this client reserved since are counted against
//!   each node's free space.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::control::{ClusterMap, ControlClient, MapSubscription, NodeInfo};
use crate::error::{Error, Result};
use ringfs_ops::auth::Credential;
use ringfs_ops::tls::Tls;

/// A cluster map older than this is fetched again before placing chunks
/// (the subscription pushes up/down changes, not capacity changes).
pub(crate) const MAP_MAX_AGE: Duration = Duration::from_secs(1);
/// How long a client keeps trying to reach a control server that went
/// away (or a leader while an election runs). Well below the time the
/// control server remembers request ids (120 s), so a mutation sent again
/// within it is never applied twice.
pub(crate) const RECONNECT_FOR: Duration = Duration::from_secs(30);

struct MapState {
    map: ClusterMap,
    fetched: Instant,
    /// Bytes this client reserved per node since `map` was fetched.
    claimed: HashMap<u64, u64>,
}

impl MapState {
    fn replace(&mut self, map: ClusterMap) {
        self.map = map;
        self.fetched = Instant::now();
        self.claimed.clear();
    }
}

/// The control connection and the cluster map. Must live on a tokio
/// `LocalSet` (the map watcher is a local task).
pub(crate) struct Cluster {
    /// Replaced by a new connection when the control server went away
    /// (see [`Cluster::reconnect`]).
    control: RefCell<ControlClient>,
    /// Every control address the client was given.
    control_addrs: Vec<SocketAddr>,
    /// What every (re)connection authenticates with.
    cred: Credential,
    /// TLS for every connection (control and data plane), if configured.
    pub(crate) tls: Option<Tls>,
    map: Rc<RefCell<MapState>>,
    watcher: RefCell<tokio::task::JoinHandle<()>>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.watcher.borrow().abort();
    }
}

/// Follows the map pushed by the control server into `map`.
fn watch_map(map: Rc<RefCell<MapState>>, mut sub: MapSubscription) -> tokio::task::JoinHandle<()> {
    tokio::task::spawn_local(async move {
        while let Some(m) = sub.next().await {
            let mut st = map.borrow_mut();
            if m.epoch >= st.map.epoch {
                st.replace(m);
            }
        }
    })
}

/// Connects to the control server among `addrs` that serves every call
/// (the single server, or the replicas' leader): asks each in turn, going
/// straight to the leader a replica names, until one leads or `within`
/// passed. A protocol-version mismatch fails at once.
pub(crate) async fn connect_leader(
    addrs: &[SocketAddr],
    cred: &Credential,
    tls: Option<&Tls>,
    within: Duration,
) -> Result<ControlClient> {
    let start = Instant::now();
    let mut wait = Duration::from_millis(20);
    let mut last: Option<Error> = None;
    // Once a replica answered, a leader is only an election away: wait for
    // one even when the caller would not wait for unreachable servers.
    let mut within = within;
    loop {
        // Each round asks every address once, and a leader named on the
        // way at once (also one not among `addrs`).
        let mut queue: std::collections::VecDeque<SocketAddr> = addrs.iter().copied().collect();
        let mut asked: Vec<SocketAddr> = Vec::new();
        while let Some(a) = queue.pop_front() {
            if asked.contains(&a) {
                continue;
            }
            asked.push(a);
            match ControlClient::connect_tls(a, cred, tls).await {
                Ok(c) if c.server_info().is_leader => return Ok(c),
                Ok(c) => {
                    within = within.max(RECONNECT_FOR);
                    let hint: Option<SocketAddr> = c.server_info().leader_address.parse().ok();
                    last = Some(Error::NotLeader(format!(
                        "{a} is not the leader ({})",
                        match &hint {
                            Some(h) => format!("it names {h}"),
                            None => "no leader known".into(),
                        }
                    )));
                    if let Some(h) = hint {
                        queue.push_front(h);
                    }
                }
                Err(e @ (Error::VersionMismatch(_) | Error::Unauthenticated(_))) => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        if start.elapsed() >= within {
            return Err(last.unwrap_or_else(|| Error::unavailable("no control address given")));
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_millis(100));
    }
}

impl Cluster {
    /// Connects to the control server (among `control_addrs`, the one that
    /// serves) and subscribes to the cluster map.
    pub(crate) async fn connect(
        control_addrs: &[SocketAddr],
        cred: Credential,
        tls: Option<Tls>,
    ) -> Result<Self> {
        let control = connect_leader(control_addrs, &cred, tls.as_ref(), Duration::ZERO).await?;
        let (map, sub) = control.subscribe().await?;
        let map = Rc::new(RefCell::new(MapState {
            map,
            fetched: Instant::now(),
            claimed: HashMap::new(),
        }));
        let watcher = watch_map(map.clone(), sub);
        Ok(Self {
            control: RefCell::new(control),
            control_addrs: control_addrs.to_vec(),
            cred,
            tls,
            map,
            watcher: RefCell::new(watcher),
        })
    }

    /// The current control connection.
    pub(crate) fn ctl(&self) -> ControlClient {
        self.control.borrow().clone()
    }

    /// See [`crate::Client::reconnect`].
    pub(crate) async fn reconnect(&self) -> Result<bool> {
        if self.ctl().is_connected() {
            return Ok(false);
        }
        self.reconnect_within(RECONNECT_FOR).await?;
        Ok(true)
    }

    /// Connects anew to whichever control server serves (trying for up to
    /// `within`) and resubscribes to the map.
    async fn reconnect_within(&self, within: Duration) -> Result<()> {
        let control =
            connect_leader(&self.control_addrs, &self.cred, self.tls.as_ref(), within).await?;
        let (map, sub) = control.subscribe().await?;
        self.map.borrow_mut().replace(map);
        let watcher = watch_map(self.map.clone(), sub);
        self.watcher.replace(watcher).abort();
        self.control.replace(control);
        Ok(())
    }

    /// Whether a call that failed with `e` should run again on a new
    /// connection: the connection dropped, the replica no longer leads, or
    /// the server could not serve it now (stopping, or a replica that could
    /// not get a majority to commit it).
    fn lost_server(&self, e: &Error) -> bool {
        matches!(e, Error::NotLeader(_) | Error::Unavailable { .. }) || !self.ctl().is_connected()
    }

    /// A server that answered `unavailable` on a live connection is asked
    /// again only after a pause (another replica may lead by then).
    async fn pause_after(&self, e: &Error, left: Duration) {
        if self.ctl().is_connected() && matches!(e, Error::Unavailable { .. }) {
            tokio::time::sleep(Duration::from_millis(100).min(left)).await;
        }
    }

    /// Runs a control call that is safe to repeat; while it fails because
    /// the connection dropped or the replica no longer leads, reconnects
    /// (to the leader) and runs it again, for up to [`RECONNECT_FOR`].
    pub(crate) async fn retry<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: Fn(ControlClient) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let start = Instant::now();
        loop {
            match f(self.ctl()).await {
                Err(e) if self.lost_server(&e) && start.elapsed() < RECONNECT_FOR => {
                    let left = RECONNECT_FOR.saturating_sub(start.elapsed());
                    self.pause_after(&e, left).await;
                    self.reconnect_within(left).await?;
                }
                r => return r,
            }
        }
    }

    /// Runs a mutation under a request id of its own (`f` gets the id):
    /// while it fails because the connection dropped or the replica no
    /// longer leads, reconnects and sends it again with the same id, which
    /// the control server applies at most once. If no server serves again
    /// within [`RECONNECT_FOR`], fails with [`Error::OutcomeUnknown`]
    /// naming `call`. Any other failure is the server's answer.
    pub(crate) async fn mutate<T, F, Fut>(&self, call: impl FnOnce() -> String, f: F) -> Result<T>
    where
        F: Fn(ControlClient, u128) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let id: u128 = rand::random();
        let start = Instant::now();
        loop {
            let e = match f(self.ctl(), id).await {
                Err(e) if self.lost_server(&e) => e,
                r => return r,
            };
            let left = RECONNECT_FOR.saturating_sub(start.elapsed());
            self.pause_after(&e, left).await;
            if left.is_zero() || self.reconnect_within(left).await.is_err() {
                return Err(Error::OutcomeUnknown {
                    message: format!(
                        "{}: no control server answered again within {RECONNECT_FOR:?}; \
                         it may or may not have been applied",
                        call()
                    ),
                    source: Box::new(e),
                });
            }
        }
    }

    /// The current cluster map, fetched fresh (capacities included).
    pub(crate) async fn fetch_map(&self) -> Result<ClusterMap> {
        let m = self.retry(|c| async move { c.cluster_map().await }).await?;
        self.map.borrow_mut().replace(m.clone());
        Ok(m)
    }

    /// The cluster map, fetched again if its capacities are older than
    /// [`MAP_MAX_AGE`], with the bytes this client reserved on each node
    /// since that fetch.
    pub(crate) async fn map_for_placement(&self) -> Result<(ClusterMap, HashMap<u64, u64>)> {
        let stale = self.map.borrow().fetched.elapsed() > MAP_MAX_AGE;
        if stale {
            self.fetch_map().await?;
        }
        let st = self.map.borrow();
        Ok((st.map.clone(), st.claimed.clone()))
    }

    /// Counts `bytes` this client reserved on `node_id` against its free
    /// space until the next map fetch.
    pub(crate) fn claim(&self, node_id: u64, bytes: u64) {
        *self.map.borrow_mut().claimed.entry(node_id).or_default() += bytes;
    }

    /// `node_id` as the map last showed it.
    pub(crate) fn node(&self, node_id: u64) -> Option<NodeInfo> {
        self.map
            .borrow()
            .map
            .nodes
            .iter()
            .find(|n| n.node_id == node_id)
            .cloned()
    }

    /// Tells the control server about a replica that failed its checksum
    /// (best effort: the node reports it too, and the read already has its
    /// answer).
    pub(crate) async fn report_bad(&self, chunk: u128, node: u64, repaired: bool) {
        // A failure changes nothing: the node reports the bad chunk itself.
        let _ = self.ctl().report_bad_replica(chunk, node, repaired).await;
    }
}
