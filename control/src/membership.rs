//! Cluster membership as the control server sees it: every registered node,
//! whether it is up, its endpoints, its last capacity report and its last
//! chunk inventory.
//!
//! Registration (id, key, endpoints) is durable in the metadata store;
//! liveness, capacity and chunk reports live in memory and are rebuilt from
//! heartbeats after a restart or a leader change. A control server taking
//! over (starting, or elected leader) presumes every registered node up, as
//! if each had just heartbeated it: nodes rejoin it within a heartbeat or
//! so, and until then a map of down nodes would fail every placement. A
//! node that is really gone is marked down one TTL after the takeover, as
//! one that died just before it would be.
//!
//! Invariant: a node is `up` iff it was last heard from (heartbeat, join,
//! or, never heard since, the takeover: [`Membership::last_heard`]) within
//! the TTL and has not left since, as of the last [`Membership::sweep`].
//!
//! Chunk reports are snapshots: `report_time` is a lower bound of the
//! instant the node took the snapshot (the moment the control server asked
//! for it), so a chunk committed before `report_time` must appear in the
//! report with at least the committed version, and one committed later may
//! not appear yet. Reports are refreshed every `report_interval` so that
//! garbage collection and fsck work from a recent inventory.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use ringfs_schema::Version;

use crate::error::{ControlError, Result};
use crate::records::Node;
use crate::store::constant_time_eq;

/// A capacity report; sizes in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capacity {
    pub total: u64,
    pub used: u64,
    pub reserved: u64,
    pub chunks: u64,
}

/// What the control server knows of one node.
#[derive(Debug)]
pub struct NodeState {
    pub key: [u8; 16],
    pub shards: Vec<String>,
    pub capacity: Capacity,
    /// The node's last heartbeat, join or leave here; `None` if none since
    /// this server took over.
    pub last_heartbeat: Option<Instant>,
    /// See the module's invariant.
    pub up: bool,
    /// Chunk id -> (version, length), from the node's last complete report.
    pub chunks: HashMap<u128, (Version, u32)>,
    /// Pages of a report in progress.
    pending_report: HashMap<u128, (Version, u32)>,
    /// Whether `chunks` holds a complete report received since start.
    pub report_complete: bool,
    /// Lower bound of when the snapshot in `chunks` was taken.
    pub report_time: Option<Instant>,
    /// When the report in progress was first asked for.
    asked_at: Option<Instant>,
    /// Chunks the node says failed a checksum (its latest heartbeat).
    pub bad: std::collections::HashSet<u128>,
}

impl NodeState {
    fn new(key: [u8; 16], shards: Vec<String>, capacity: Capacity) -> Self {
        NodeState {
            key,
            shards,
            capacity,
            last_heartbeat: None,
            up: true,
            chunks: HashMap::new(),
            pending_report: HashMap::new(),
            report_complete: false,
            report_time: None,
            asked_at: None,
            bad: Default::default(),
        }
    }

    /// See [`Membership::last_heard`].
    fn last_heard(&self, took_over: Instant) -> Instant {
        self.last_heartbeat.unwrap_or(took_over)
    }
}

/// All nodes, by id.
pub struct Membership {
    nodes: BTreeMap<u64, NodeState>,
    /// When this server took over (started, or was elected leader): a node
    /// not heard from since counts as heard from then.
    took_over: Instant,
}

impl Default for Membership {
    /// No node, taken over now.
    fn default() -> Self {
        Membership::new(Vec::new())
    }
}

impl Membership {
    /// The membership of a server taking over now: the registered nodes,
    /// every one presumed up (as if it had just heartbeated) until the TTL
    /// passes without a word from it, and no chunk report yet (so none of
    /// its replicas counts as verified before it reports).
    pub fn new(registered: Vec<(u64, Node)>) -> Self {
        let nodes = registered
            .into_iter()
            .map(|(id, n)| (id, NodeState::new(n.key, n.shards, Capacity::default())))
            .collect();
        Membership {
            nodes,
            took_over: Instant::now(),
        }
    }

    /// When node `n` was last heard from: its last heartbeat, join or
    /// leave, or the takeover if none came since. Its downtime (TTL, repair
    /// grace) counts from there.
    pub fn last_heard(&self, n: &NodeState) -> Instant {
        n.last_heard(self.took_over)
    }

    /// Records a (re)join that the store has made durable; the node is up.
    pub fn joined(&mut self, id: u64, key: [u8; 16], shards: Vec<String>, capacity: Capacity) {
        let now = Instant::now();
        let state = self
            .nodes
            .entry(id)
            .or_insert_with(|| NodeState::new(key, Vec::new(), capacity));
        state.key = key;
        state.shards = shards;
        state.capacity = capacity;
        state.last_heartbeat = Some(now);
        state.up = true;
        // A join starts a new inventory: the node sends a full report next,
        // snapshotted after this moment.
        state.pending_report.clear();
        state.report_complete = false;
        state.asked_at = Some(now);
    }

    /// Checks that `key` is the key of node `id`.
    pub fn authenticate(&self, id: u64, key: &[u8]) -> Result<&NodeState> {
        match self.nodes.get(&id) {
            Some(n) if constant_time_eq(&n.key, key) => Ok(n),
            Some(_) => Err(ControlError::PermissionDenied(format!(
                "wrong node key for node {id}"
            ))),
            None => Err(ControlError::NotFound(format!(
                "node {id} (not registered; join first)"
            ))),
        }
    }

    /// Records a heartbeat. Returns whether the node came back up (the map
    /// changed) and whether a chunk report is wanted: none complete since
    /// the control server started, or the last one older than `refresh`.
    pub fn heartbeat(
        &mut self,
        id: u64,
        key: &[u8],
        capacity: Capacity,
        refresh: Duration,
    ) -> Result<(bool, bool)> {
        self.authenticate(id, key)?;
        let n = self.nodes.get_mut(&id).expect("authenticated above");
        let now = Instant::now();
        n.capacity = capacity;
        n.last_heartbeat = Some(now);
        let came_up = !n.up;
        n.up = true;
        let due = n
            .report_time
            .is_none_or(|t| now.saturating_duration_since(t) >= refresh);
        let wanted = !n.report_complete || due;
        if wanted && n.asked_at.is_none() {
            n.asked_at = Some(now);
        }
        Ok((came_up, wanted))
    }

    /// Replaces the set of chunks node `id` reports as failing checksums.
    pub fn set_bad(&mut self, id: u64, bad: impl IntoIterator<Item = u128>) {
        if let Some(n) = self.nodes.get_mut(&id) {
            n.bad = bad.into_iter().collect();
        }
    }

    /// Updates node `id`'s inventory after a command it confirmed: `Some`
    /// a chunk it now holds (version, length), `None` one it deleted.
    pub fn note_chunk(&mut self, id: u64, chunk: u128, held: Option<(Version, u32)>) {
        if let Some(n) = self.nodes.get_mut(&id) {
            match held {
                Some(v) => {
                    // A verified copy replaced whatever was there.
                    n.chunks.insert(chunk, v);
                    n.pending_report.insert(chunk, v);
                    n.bad.remove(&chunk);
                }
                None => {
                    n.chunks.remove(&chunk);
                    n.pending_report.remove(&chunk);
                    n.bad.remove(&chunk);
                }
            }
        }
    }

    /// One node's state.
    pub fn get(&self, id: u64) -> Option<&NodeState> {
        self.nodes.get(&id)
    }

    /// Adds a page of a chunk report; the last page replaces the inventory.
    pub fn report_chunks(
        &mut self,
        id: u64,
        key: &[u8],
        chunks: impl IntoIterator<Item = (u128, Version, u32)>,
        last: bool,
    ) -> Result<()> {
        self.authenticate(id, key)?;
        let n = self.nodes.get_mut(&id).expect("authenticated above");
        n.pending_report
            .extend(chunks.into_iter().map(|(c, v, l)| (c, (v, l))));
        if last {
            n.chunks = std::mem::take(&mut n.pending_report);
            n.report_complete = true;
            // A report nobody asked for (an old node) dates from now at the
            // latest; an asked-for one from the ask at the earliest.
            n.report_time = Some(n.asked_at.take().unwrap_or_else(Instant::now));
        }
        Ok(())
    }

    /// Records that node `id` is stopping: it is down from now on (its
    /// repair grace counts from now), until it joins or heartbeats again.
    /// Returns whether it was up (the map changed).
    pub fn left(&mut self, id: u64, key: &[u8]) -> Result<bool> {
        self.authenticate(id, key)?;
        let n = self.nodes.get_mut(&id).expect("authenticated above");
        n.last_heartbeat = Some(Instant::now());
        let was_up = n.up;
        n.up = false;
        Ok(was_up)
    }

    /// Marks down every up node silent for longer than `ttl`; returns their ids.
    pub fn sweep(&mut self, now: Instant, ttl: Duration) -> Vec<u64> {
        let mut down = Vec::new();
        for (id, n) in &mut self.nodes {
            let silent = now.saturating_duration_since(n.last_heard(self.took_over)) > ttl;
            if n.up && silent {
                n.up = false;
                down.push(*id);
            }
        }
        down
    }

    /// Every node, ascending id.
    pub fn iter(&self) -> impl Iterator<Item = (&u64, &NodeState)> {
        self.nodes.iter()
    }

    /// Whether node `id` is known alive: up, and heartbeated within
    /// `recent` (a node killed a moment ago stays "up" until its TTL, and
    /// one only presumed up since a takeover may be gone: a copy to either
    /// would fail).
    pub fn alive(&self, id: u64, now: Instant, recent: Duration) -> bool {
        self.nodes.get(&id).is_some_and(|n| {
            n.up && n
                .last_heartbeat
                .is_some_and(|t| now.saturating_duration_since(t) <= recent)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: Duration = Duration::from_secs(3600);

    fn member() -> Membership {
        let mut m = Membership::default();
        m.joined(1, [1; 16], vec!["127.0.0.1:1".into()], Capacity::default());
        m
    }

    #[test]
    fn heartbeat_needs_the_right_key() {
        let mut m = member();
        assert!(matches!(
            m.heartbeat(1, &[2; 16], Capacity::default(), H),
            Err(ControlError::PermissionDenied(_))
        ));
        assert!(matches!(
            m.heartbeat(9, &[1; 16], Capacity::default(), H),
            Err(ControlError::NotFound(_))
        ));
        assert_eq!(
            m.heartbeat(1, &[1; 16], Capacity::default(), H).unwrap(),
            (false, true)
        );
    }

    #[test]
    fn silent_node_goes_down_and_comes_back() {
        let mut m = member();
        let ttl = Duration::from_millis(100);
        assert!(m.sweep(Instant::now(), ttl).is_empty());
        let later = Instant::now() + Duration::from_millis(200);
        assert_eq!(m.sweep(later, ttl), vec![1]);
        assert!(m.sweep(later, ttl).is_empty(), "reported down once");
        let (came_up, _) = m.heartbeat(1, &[1; 16], Capacity::default(), H).unwrap();
        assert!(came_up);
    }

    #[test]
    fn a_takeover_presumes_registered_nodes_up_for_one_ttl() {
        let node = |id: u8| {
            let shards = vec![format!("127.0.0.1:{id}")];
            (
                u64::from(id),
                Node {
                    key: [id; 16],
                    shards,
                },
            )
        };
        let mut m = Membership::new(vec![node(1), node(2)]);
        let ttl = Duration::from_millis(100);
        let took_over = m.last_heard(m.get(2).unwrap());
        assert!(m.iter().all(|(_, n)| n.up && n.last_heartbeat.is_none()));
        assert!(m.sweep(took_over + ttl, ttl).is_empty());
        // Node 1 rejoins the new leader a little later; node 2 never does.
        std::thread::sleep(ttl / 2);
        m.heartbeat(1, &[1; 16], Capacity::default(), H).unwrap();
        let later = took_over + ttl + Duration::from_millis(1);
        assert_eq!(m.sweep(later, ttl), vec![2], "down one TTL after");
        assert!(m.get(1).unwrap().up);
        assert!(!m.alive(2, took_over, H), "presumed up is not known alive");
    }

    #[test]
    fn a_leaving_node_is_down_at_once_until_it_heartbeats() {
        let mut m = member();
        assert!(matches!(
            m.left(1, &[2; 16]),
            Err(ControlError::PermissionDenied(_))
        ));
        assert!(m.get(1).unwrap().up, "a wrong key changes nothing");
        assert!(m.left(1, &[1; 16]).unwrap());
        assert!(!m.get(1).unwrap().up);
        assert!(!m.left(1, &[1; 16]).unwrap(), "leaving twice is no change");
        assert!(
            m.sweep(Instant::now() + H, Duration::from_millis(1))
                .is_empty(),
            "a node that left is not reported down again"
        );
        let (came_up, _) = m.heartbeat(1, &[1; 16], Capacity::default(), H).unwrap();
        assert!(came_up);
    }

    #[test]
    fn report_pages_replace_the_inventory_at_the_last_page() {
        let mut m = member();
        m.report_chunks(1, &[1; 16], [(10, Version::new(1, 1), 4096)], false)
            .unwrap();
        assert!(m.iter().next().unwrap().1.chunks.is_empty());
        m.report_chunks(1, &[1; 16], [(11, Version::new(1, 2), 8192)], true)
            .unwrap();
        let n = m.iter().next().unwrap().1;
        assert_eq!(n.chunks.len(), 2);
        assert!(n.report_complete);
        let (_, report_wanted) = m.heartbeat(1, &[1; 16], Capacity::default(), H).unwrap();
        assert!(!report_wanted);
    }
}
