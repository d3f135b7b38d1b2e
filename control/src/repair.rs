//! Replica health and re-replication planning.
//!
//! A replica (a node listed in a chunk record) is **good** when its node is
//! up and the replica is current and verified: the node's latest chunk
//! report, taken after the record was committed, shows the chunk with at
//! least the record's version and length (or the record was committed after
//! that report by a write the node acknowledged), and the node does not
//! report it as failing its checksum. A replica is **lost** when its node has
//! been down longer than TTL + grace, or it is stale (older version, shorter,
//! or missing from a report newer than the record), or corrupt.
//!
//! Planning: every chunk with fewer good replicas than its file's
//! replication R, at least one good replica, and nothing that may still turn
//! good (a node within its grace, a report not yet in) gets one copy from a
//! good replica to another node, chosen by free space. Chunks with the
//! fewest good replicas go first; at most `max_copies` copies run at once in
//! the cluster and `PER_NODE_COPIES` per node (as source or target), which
//! is the throttle that keeps repair from starving client traffic. The
//! record changes only when the target reports the copy durable and
//! verified (see `store::Mutation::ReplicaCopied`).
//!
//! Units: durations as `Duration`, sizes in bytes.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use ringfs_schema::ChunkId;

use crate::commands::{Commands, Work};
use crate::membership::Membership;
use crate::records::{Chunk, Kind};
use crate::store::MapEntry;

/// Copies one node takes part in at once, as source or as target.
pub const PER_NODE_COPIES: usize = 2;

/// Timing and throttling of repair and garbage collection.
#[derive(Clone, Copy, Debug)]
pub struct RepairConfig {
    /// How long a down node's replicas wait before they are re-replicated.
    pub grace: Duration,
    /// Copies in flight in the whole cluster.
    pub max_copies: usize,
    /// How long a chunk that no record references must stay so before it
    /// is deleted (covers writes between their node write and their commit).
    pub orphan_grace: Duration,
    /// How often nodes send a full chunk report.
    pub report_interval: Duration,
    /// How long a node has to report a command's outcome.
    pub command_timeout: Duration,
    /// Node TTL (a node is down after this silence).
    pub node_ttl: Duration,
}

/// What one replica is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replica {
    Good,
    /// Its node has not sent a complete report since the server started.
    Unverified,
    /// Its node is down, but for less than TTL + grace.
    DownInGrace,
    /// Gone: down past the grace, stale or corrupt.
    Lost(&'static str),
}

/// The replicas of one chunk.
#[derive(Clone, Debug)]
pub struct Assessment {
    pub replicas: Vec<(u64, Replica)>,
    pub good: usize,
    /// Replicas that may still turn good (unverified, down within grace).
    pub pending: usize,
    pub wanted: usize,
}

impl Assessment {
    pub fn lost(&self) -> Vec<u64> {
        self.replicas
            .iter()
            .filter(|(_, r)| matches!(r, Replica::Lost(_)))
            .map(|(n, _)| *n)
            .collect()
    }

    pub fn good_nodes(&self) -> Vec<u64> {
        self.replicas
            .iter()
            .filter(|(_, r)| *r == Replica::Good)
            .map(|(n, _)| *n)
            .collect()
    }

    /// A one-line description of the replicas that are not good.
    pub fn detail(&self) -> String {
        self.replicas
            .iter()
            .filter(|(_, r)| *r != Replica::Good)
            .map(|(n, r)| match r {
                Replica::Lost(why) => format!("node {n}: {why}"),
                Replica::Unverified => format!("node {n}: no chunk report yet"),
                Replica::DownInGrace => format!("node {n}: down (within grace)"),
                Replica::Good => String::new(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// What repair knows beyond the store and membership.
pub struct Repair {
    pub cfg: RepairConfig,
    /// When the server started: nodes never heard from count as down since.
    pub started: Instant,
    /// When each chunk's record was last committed by a client (since start).
    pub committed_at: HashMap<u128, Instant>,
    /// Replicas clients reported as failing checksums and did not repair.
    pub suspects: HashSet<(u128, u64)>,
    pub copies_done: u64,
    pub copies_failed: u64,
    /// Chunks that were waiting for a copy (not yet in flight) at the last
    /// planning round: the re-replication backlog.
    pub backlog: std::cell::Cell<u64>,
    pub bad_reports: u64,
    /// Planning rounds that scanned the chunk map, since start.
    pub scans: std::cell::Cell<u64>,
}

impl Repair {
    pub fn new(cfg: RepairConfig) -> Self {
        Repair {
            cfg,
            started: Instant::now(),
            committed_at: HashMap::new(),
            suspects: HashSet::new(),
            copies_done: 0,
            copies_failed: 0,
            backlog: Default::default(),
            bad_reports: 0,
            scans: Default::default(),
        }
    }

    /// Classifies every replica of `chunk` for a file of replication `wanted`.
    pub fn assess(&self, chunk: &Chunk, wanted: usize, m: &Membership, now: Instant) -> Assessment {
        let committed = self.committed_at.get(&chunk.id).copied();
        let replicas: Vec<(u64, Replica)> = chunk
            .replicas
            .iter()
            .map(|&n| (n, self.replica(chunk, n, committed, m, now)))
            .collect();
        let good = replicas.iter().filter(|(_, r)| *r == Replica::Good).count();
        let pending = replicas
            .iter()
            .filter(|(_, r)| matches!(r, Replica::Unverified | Replica::DownInGrace))
            .count();
        Assessment {
            replicas,
            good,
            pending,
            wanted,
        }
    }

    fn replica(
        &self,
        chunk: &Chunk,
        node: u64,
        committed: Option<Instant>,
        m: &Membership,
        now: Instant,
    ) -> Replica {
        let Some(n) = m.get(node) else {
            return Replica::Lost("node not registered");
        };
        if !n.up {
            let since = n.last_heartbeat.unwrap_or(self.started);
            return if now.saturating_duration_since(since) < self.cfg.node_ttl + self.cfg.grace {
                Replica::DownInGrace
            } else {
                Replica::Lost("node down")
            };
        }
        if n.bad.contains(&chunk.id) || self.suspects.contains(&(chunk.id, node)) {
            return Replica::Lost("checksum failure");
        }
        if !n.report_complete {
            return Replica::Unverified;
        }
        // A write the node acknowledged after its last report vouches for it.
        if let (Some(c), Some(r)) = (committed, n.report_time) {
            if c >= r {
                return Replica::Good;
            }
        }
        match n.chunks.get(&chunk.id) {
            Some(&(v, l)) if v >= chunk.version && l >= chunk.length => Replica::Good,
            Some(&(v, _)) if v < chunk.version => Replica::Lost("stale version"),
            Some(_) => Replica::Lost("shorter than the record"),
            None => Replica::Lost("missing from the node's report"),
        }
    }

    /// Queues copies for under-replicated chunks in `map`, most endangered
    /// first, within the throttle.
    pub fn plan(&self, map: &[MapEntry], m: &Membership, cmds: &mut Commands, now: Instant) {
        let mut busy_nodes: HashMap<u64, usize> = HashMap::new();
        let mut busy_chunks = HashSet::new();
        let mut planned_bytes: HashMap<u64, u64> = HashMap::new();
        for c in cmds.iter() {
            if let Work::Copy {
                chunk,
                target,
                length,
                ..
            } = &c.work
            {
                *busy_nodes.entry(c.node).or_default() += 1;
                *busy_nodes.entry(*target).or_default() += 1;
                *planned_bytes.entry(*target).or_default() += *length as u64;
                busy_chunks.insert(*chunk);
            }
        }
        let mut candidates: Vec<(usize, &MapEntry, Assessment)> = map
            .iter()
            .filter_map(|e| {
                let file = e.file.as_ref()?;
                if file.kind != Kind::File || busy_chunks.contains(&e.chunk.id) {
                    return None;
                }
                let a = self.assess(&e.chunk, file.replication as usize, m, now);
                (a.good >= 1 && a.good < a.wanted && a.good + a.pending < a.wanted)
                    .then_some((a.good, e, a))
            })
            .collect();
        self.backlog.set(candidates.len() as u64);
        let mut room = self.cfg.max_copies.saturating_sub(cmds.copies());
        if room == 0 {
            return;
        }
        candidates.sort_by_key(|(good, e, _)| (*good, e.inode, e.index));
        for (_, e, a) in candidates {
            if room == 0 {
                break;
            }
            let good = a.good_nodes();
            let Some(&source) = good
                .iter()
                .filter(|n| busy_nodes.get(n).copied().unwrap_or(0) < PER_NODE_COPIES)
                .min_by_key(|n| busy_nodes.get(n).copied().unwrap_or(0))
            else {
                continue;
            };
            let in_record: HashSet<u64> = e.chunk.replicas.iter().copied().collect();
            let lost = a.lost();
            // Prefer a node without any copy; a node whose copy is lost
            // (stale or corrupt, but up) is repaired in place if no other
            // node can take it. Then most free space.
            let target = m
                .iter()
                .filter(|(id, n)| {
                    n.up && n.report_complete
                        && !good.contains(id)
                        && (!in_record.contains(id) || lost.contains(id))
                        && busy_nodes.get(id).copied().unwrap_or(0) < PER_NODE_COPIES
                        && !cmds.deleting(**id, e.chunk.id)
                })
                .map(|(id, n)| {
                    let free = n
                        .capacity
                        .total
                        .saturating_sub(n.capacity.used)
                        .saturating_sub(n.capacity.reserved)
                        .saturating_sub(planned_bytes.get(id).copied().unwrap_or(0));
                    (*id, n, free)
                })
                .filter(|(_, _, free)| *free >= e.chunk.length as u64)
                .min_by_key(|(id, _, free)| (in_record.contains(id), std::cmp::Reverse(*free)));
            let Some((target, tn, _)) = target else {
                continue;
            };
            let cid = ChunkId::new((e.chunk.id >> 64) as u64, e.chunk.id as u64);
            let Some(addr) = tn.shards.get(cid.shard(tn.shards.len())) else {
                continue;
            };
            let replace = in_record.contains(&target) || tn.chunks.contains_key(&e.chunk.id);
            tracing::info!(
                inode = e.inode,
                index = e.index,
                chunk = %cid,
                source,
                target,
                good = a.good,
                wanted = a.wanted,
                "re-replicating chunk"
            );
            cmds.queue(
                source,
                Work::Copy {
                    inode: e.inode,
                    index: e.index,
                    chunk: e.chunk.id,
                    version: e.chunk.version,
                    length: e.chunk.length,
                    target,
                    target_addr: addr.clone(),
                    replace,
                    drop: lost,
                },
            );
            *busy_nodes.entry(source).or_default() += 1;
            *busy_nodes.entry(target).or_default() += 1;
            *planned_bytes.entry(target).or_default() += e.chunk.length as u64;
            room -= 1;
        }
    }
}

/// The kinds of problem fsck and status report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProblemKind {
    UnderReplicated,
    Lost,
    BeingRepaired,
    Unverified,
    Namespace,
}

/// One problem, with the file's path.
#[derive(Clone, Debug)]
pub struct Problem {
    pub path: String,
    pub index: u64,
    pub chunk: u128,
    pub kind: ProblemKind,
    pub good: usize,
    pub wanted: usize,
    pub detail: String,
}

/// Replica health of the whole chunk map.
#[derive(Clone, Debug, Default)]
pub struct Health {
    pub chunks: u64,
    pub healthy: u64,
    pub under_replicated: u64,
    pub being_repaired: u64,
    pub lost: u64,
    pub unverified: u64,
    pub namespace_errors: u64,
    pub copies_in_flight: usize,
    pub deletes_pending: u64,
    pub problems: Vec<Problem>,
}

/// Checks every record of `map` against the namespace and the replicas;
/// keeps at most `limit` problems (with paths from `paths`).
pub fn health(
    repair: &Repair,
    map: &[MapEntry],
    m: &Membership,
    cmds: &Commands,
    paths: &HashMap<u64, String>,
    limit: usize,
    now: Instant,
) -> Health {
    let copying: HashSet<u128> = cmds
        .iter()
        .filter_map(|c| match c.work {
            Work::Copy { chunk, .. } => Some(chunk),
            _ => None,
        })
        .collect();
    let mut h = Health {
        copies_in_flight: copying.len(),
        ..Default::default()
    };
    let path_of = |ino: u64| {
        paths
            .get(&ino)
            .cloned()
            .unwrap_or_else(|| format!("<inode {ino}>"))
    };
    for e in map {
        h.chunks += 1;
        let mut problem = |kind, good, wanted, detail: String| {
            if h.problems.len() < limit {
                h.problems.push(Problem {
                    path: path_of(e.inode),
                    index: e.index,
                    chunk: e.chunk.id,
                    kind,
                    good,
                    wanted,
                    detail,
                });
            }
        };
        let Some(file) = e.file.as_ref().filter(|f| f.kind == Kind::File) else {
            h.namespace_errors += 1;
            problem(
                ProblemKind::Namespace,
                0,
                0,
                "record of a missing file or of a directory".into(),
            );
            continue;
        };
        let end = e.index as u128 * file.chunk_size as u128 + e.chunk.length as u128;
        if end > file.size as u128 || e.chunk.length > file.chunk_size {
            h.namespace_errors += 1;
            problem(
                ProblemKind::Namespace,
                0,
                0,
                format!(
                    "record ends at byte {end}, past the file size {}",
                    file.size
                ),
            );
            continue;
        }
        let a = repair.assess(&e.chunk, file.replication as usize, m, now);
        if a.good >= a.wanted {
            h.healthy += 1;
            continue;
        }
        let (kind, counter) = if a.good == 0 && a.pending == 0 {
            (ProblemKind::Lost, &mut h.lost)
        } else if copying.contains(&e.chunk.id) {
            (ProblemKind::BeingRepaired, &mut h.being_repaired)
        } else if a.good + a.pending >= a.wanted
            && a.replicas.iter().any(|(_, r)| *r == Replica::Unverified)
        {
            (ProblemKind::Unverified, &mut h.unverified)
        } else {
            (ProblemKind::UnderReplicated, &mut h.under_replicated)
        };
        *counter += 1;
        problem(kind, a.good, a.wanted, a.detail());
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::Capacity;
    use crate::records::Inode;

    const TTL: Duration = Duration::from_secs(1);
    const GRACE: Duration = Duration::from_secs(10);

    fn cfg(max_copies: usize) -> RepairConfig {
        RepairConfig {
            grace: GRACE,
            max_copies,
            orphan_grace: Duration::from_secs(60),
            report_interval: Duration::from_secs(60),
            command_timeout: Duration::from_secs(60),
            node_ttl: TTL,
        }
    }

    fn file() -> Inode {
        Inode {
            kind: Kind::File,
            parent: 1,
            size: 1 << 30,
            mode: 0o644,
            mtime_ns: 0,
            chunk_size: 1 << 20,
            replication: 3,
            write_quorum: 2,
            version: 1,
        }
    }

    fn entry(index: u64, id: u128, replicas: &[u64]) -> MapEntry {
        MapEntry {
            inode: 2,
            index,
            chunk: Chunk {
                id,
                replicas: replicas.to_vec(),
                length: 4096,
                version: 1,
            },
            file: Some(file()),
        }
    }

    /// Nodes 1..=n, up, each reporting `holds` chunks (id, version 1),
    /// node i with i GiB free.
    fn members(n: u64, holds: &[(u64, u128)]) -> Membership {
        let mut m = Membership::default();
        for id in 1..=n {
            let cap = Capacity {
                total: id << 30,
                ..Default::default()
            };
            m.joined(id, [id as u8; 16], vec![format!("127.0.0.1:{id}")], cap);
            let chunks: Vec<_> = holds
                .iter()
                .filter(|(node, _)| *node == id)
                .map(|(_, c)| (*c, 1, 4096))
                .collect();
            m.report_chunks(id, &[id as u8; 16], chunks, true).unwrap();
        }
        m
    }

    fn copies(cmds: &Commands) -> Vec<(u64, u128, u64, Vec<u64>)> {
        cmds.iter()
            .filter_map(|c| match &c.work {
                Work::Copy {
                    chunk,
                    target,
                    drop,
                    ..
                } => Some((c.node, *chunk, *target, drop.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn one_replica_left_is_repaired_before_two_left() {
        // Chunk 10 lost one replica (node 3 stale), chunk 11 two (nodes 2
        // and 3 stale); one copy allowed at a time.
        let m = members(4, &[(1, 10), (2, 10), (3, 10), (1, 11)]);
        let mut m = m;
        m.report_chunks(3, &[3; 16], [(10, 0, 4096)], true).unwrap();
        let map = vec![entry(0, 10, &[1, 2, 3]), entry(1, 11, &[1, 2, 3])];
        let r = Repair::new(cfg(1));
        let now = Instant::now();
        assert_eq!(r.assess(&map[0].chunk, 3, &m, now).good, 2);
        assert_eq!(r.assess(&map[1].chunk, 3, &m, now).good, 1);
        let mut cmds = Commands::default();
        r.plan(&map, &m, &mut cmds, now);
        let c = copies(&cmds);
        assert_eq!(c.len(), 1);
        // Chunk 11 first; target: node 4 (no copy, most free space).
        assert_eq!(c[0], (1, 11, 4, vec![2, 3]));
    }

    #[test]
    fn a_down_node_waits_for_its_grace() {
        let m0 = members(4, &[(1, 10), (2, 10), (3, 10)]);
        let mut m = m0;
        let map = vec![entry(0, 10, &[1, 2, 3])];
        let r = Repair::new(cfg(4));
        // Node 3 silent: down after the TTL; the others heartbeat.
        let later = Instant::now() + TTL * 2;
        m.sweep(later, TTL);
        for id in [1u64, 2, 4] {
            m.heartbeat(
                id,
                &[id as u8; 16],
                Capacity {
                    total: id << 30,
                    ..Default::default()
                },
                GRACE * 10,
            )
            .unwrap();
        }
        let mut cmds = Commands::default();
        r.plan(&map, &m, &mut cmds, later);
        assert!(copies(&cmds).is_empty(), "repaired within the grace");
        let a = r.assess(&map[0].chunk, 3, &m, later);
        assert_eq!((a.good, a.pending), (2, 1));
        r.plan(&map, &m, &mut cmds, later + GRACE);
        let c = copies(&cmds);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].2, 4, "copied to the only node without a copy");
        assert_eq!(c[0].3, vec![3], "the down replica leaves the record");
        // In flight: not planned twice.
        r.plan(&map, &m, &mut cmds, later + GRACE);
        assert_eq!(copies(&cmds).len(), 1);
    }

    #[test]
    fn a_chunk_without_good_replicas_is_lost_not_copied() {
        let m = members(3, &[]);
        let map = vec![entry(0, 10, &[1, 2, 3])];
        let r = Repair::new(cfg(4));
        let mut cmds = Commands::default();
        r.plan(&map, &m, &mut cmds, Instant::now());
        assert!(copies(&cmds).is_empty());
        let h = health(
            &r,
            &map,
            &m,
            &cmds,
            &HashMap::from([(2, "/f".to_string())]),
            10,
            Instant::now(),
        );
        assert_eq!((h.chunks, h.lost, h.healthy), (1, 1, 0));
        assert_eq!(h.problems[0].path, "/f");
    }
}
