//! The client's link to the cluster: the control-server connection
//! (reconnected when the server restarts), how calls run over it, and the
//! cluster map it keeps current.
//!
//! - Idempotent calls ([`Cluster::retry`]) reconnect and run once more if
//!   the connection dropped; calls that are not safe to repeat
//!   ([`Cluster::once`]) reconnect for later calls and fail with
//!   [`Error::OutcomeUnknown`].
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

/// A cluster map older than this is fetched again before placing chunks
/// (the subscription pushes up/down changes, not capacity changes).
pub(crate) const MAP_MAX_AGE: Duration = Duration::from_secs(1);
/// How long a client keeps trying to reach a control server that went away.
const RECONNECT_FOR: Duration = Duration::from_secs(30);

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
    control_addr: SocketAddr,
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

impl Cluster {
    /// Connects to the control server and subscribes to the cluster map.
    pub(crate) async fn connect(control_addr: SocketAddr) -> Result<Self> {
        let control = ControlClient::connect(control_addr).await?;
        let (map, sub) = control.subscribe().await?;
        let map = Rc::new(RefCell::new(MapState {
            map,
            fetched: Instant::now(),
            claimed: HashMap::new(),
        }));
        let watcher = watch_map(map.clone(), sub);
        Ok(Self {
            control: RefCell::new(control),
            control_addr,
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
        let start = Instant::now();
        let mut wait = Duration::from_millis(50);
        let control = loop {
            match ControlClient::connect(self.control_addr).await {
                Ok(c) => break c,
                Err(e) if start.elapsed() >= RECONNECT_FOR => return Err(e),
                Err(_) => {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(1));
                }
            }
        };
        let (map, sub) = control.subscribe().await?;
        self.map.borrow_mut().replace(map);
        let watcher = watch_map(self.map.clone(), sub);
        self.watcher.replace(watcher).abort();
        self.control.replace(control);
        Ok(true)
    }

    /// Runs an idempotent control call; if it failed because the control
    /// connection dropped, reconnects and runs it once more.
    pub(crate) async fn retry<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: Fn(ControlClient) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        match f(self.ctl()).await {
            Err(e) if !self.ctl().is_connected() => {
                if self.reconnect().await? {
                    f(self.ctl()).await
                } else {
                    Err(e)
                }
            }
            r => r,
        }
    }

    /// Runs a control call that is not safe to repeat (it may have been
    /// applied before the connection dropped): if it failed with the
    /// connection gone, reconnects for later calls and fails with
    /// [`Error::OutcomeUnknown`] naming `call`. Any other failure is the
    /// server's answer: nothing was applied.
    pub(crate) async fn once<T, F, Fut>(&self, call: impl FnOnce() -> String, f: F) -> Result<T>
    where
        F: FnOnce(ControlClient) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let r = f(self.ctl()).await;
        match r {
            Err(e) if !self.ctl().is_connected() => {
                // Best effort: a failed reconnect is tried again by the
                // next call; this one's answer stays "unknown".
                let _ = self.reconnect().await;
                Err(Error::OutcomeUnknown {
                    message: format!(
                        "{}: the control-server connection dropped during the call; \
                         it may or may not have been applied",
                        call()
                    ),
                    source: Box::new(e),
                })
            }
            r => r,
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
