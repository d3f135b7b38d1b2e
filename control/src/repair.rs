//! Replica health and re-replication planning.
//!
//! A replica (a node listed in a chunk record) is **good** when its node is
//! up and the replica is current and verified: the version it is known to
//! hold (its node's latest chunk report, or the record's version when the
//! record was committed after that report by a write the node acknowledged)
//! is at least the record's, its length at least the record's, it is not
//! behind another replica of the record (for a file without a writer: a
//! replica below the newest version among the record's replicas missed a
//! write that never reached the record, e.g. of a writer that died), and its
//! node does not report it as failing its checksum. A replica is **lost**
//! when its node has been down longer than TTL + grace (or is down and known
//! to be stale), or it is stale, behind, missing, shorter, or corrupt.
//! (While a file has a writer, that writer keeps its replicas in step and
//! is told which to add when it commits; see `docs/architecture.md`.)
//!
//! Planning: every chunk with fewer good replicas than its file's
//! replication R, at least one good replica, and nothing that may still turn
//! good (a node within its grace, a report not yet in) gets one copy from a
//! good replica, at exactly the version that replica holds, to a node known
//! alive (up and heard from recently): the stale replica's own node when it
//! is stale or behind (caught up in place, fenced on the version it holds),
//! otherwise another node, by free space. Chunks with the fewest good
//! replicas go first; at most `max_copies` copies run at once in the
//! cluster and `PER_NODE_COPIES` per node (as source or target), which is
//! the throttle that keeps repair from starving client traffic. The record
//! changes only when the target reports the copy durable and verified (see
//! `store::Mutation::ReplicaCopied`).
//!
//! Units: durations as `Duration`, sizes in bytes.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use ringfs_schema::{ChunkId, Version};

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

/// How long a chunk a writer was told to repair is left to that writer.
const HINT_HOLD: Duration = Duration::from_secs(5);

/// Why a lost replica is lost, when its own node can be caught up in place
/// (a copy over the old replica, fenced on the version it holds).
const STALE: &str = "stale version";
const BEHIND: &str = "behind another replica";

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
    /// The version and length each replica is known to hold (its report,
    /// or the record's when a commit vouched for it since), if known.
    pub known: Vec<(u64, Option<(Version, u32)>)>,
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

    /// The version `node` is known to hold, if any.
    pub fn version_of(&self, node: u64) -> Option<Version> {
        self.known
            .iter()
            .find(|(n, _)| *n == node)
            .and_then(|(_, k)| k.map(|(v, _)| v))
    }

    /// Whether `node`'s replica is lost but may be caught up in place.
    fn catch_up_in_place(&self, node: u64) -> bool {
        self.replicas
            .iter()
            .any(|(n, r)| *n == node && matches!(r, Replica::Lost(STALE | BEHIND)))
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
    /// Chunks whose writer was told (in a commit answer) to add a replica,
    /// and when: node-driven copies leave them to it for a while.
    pub hinted: HashMap<u128, Instant>,
}

impl Repair {
    pub fn new(cfg: RepairConfig) -> Self {
        Repair {
            cfg,
            committed_at: HashMap::new(),
            suspects: HashSet::new(),
            copies_done: 0,
            copies_failed: 0,
            backlog: Default::default(),
            bad_reports: 0,
            scans: Default::default(),
            hinted: HashMap::new(),
        }
    }

    /// Classifies every replica of `chunk` for a file of replication
    /// `wanted`; `writer`: the file has a write lease (its writer keeps its
    /// replicas in step, so a replica ahead of the record is not taken to
    /// make the others behind).
    pub fn assess(
        &self,
        chunk: &Chunk,
        wanted: usize,
        m: &Membership,
        now: Instant,
        writer: bool,
    ) -> Assessment {
        let committed = self.committed_at.get(&chunk.id).copied();
        let known: Vec<(u64, Option<(Version, u32)>)> = chunk
            .replicas
            .iter()
            .map(|&n| (n, self.known(chunk, n, committed, m)))
            .collect();
        // The newest version a replica that still counts holds.
        let newest = if writer {
            chunk.version
        } else {
            known
                .iter()
                .filter(|(n, _)| self.counts(*n, m, now))
                .filter_map(|(_, k)| k.map(|(v, _)| v))
                .max()
                .unwrap_or(chunk.version)
                .max(chunk.version)
        };
        let replicas: Vec<(u64, Replica)> = known
            .iter()
            .map(|&(n, k)| (n, self.replica(chunk, n, k, newest, m, now)))
            .collect();
        let good = replicas.iter().filter(|(_, r)| *r == Replica::Good).count();
        let pending = replicas
            .iter()
            .filter(|(_, r)| matches!(r, Replica::Unverified | Replica::DownInGrace))
            .count();
        Assessment {
            replicas,
            known,
            good,
            pending,
            wanted,
        }
    }

    /// The version and length `node` is known to hold of `chunk`: a write
    /// the node acknowledged after its last report (the commit listed it)
    /// vouches for the record's; otherwise its report says.
    fn known(
        &self,
        chunk: &Chunk,
        node: u64,
        committed: Option<Instant>,
        m: &Membership,
    ) -> Option<(Version, u32)> {
        let n = m.get(node)?;
        if !n.report_complete && n.up {
            return None;
        }
        if let (Some(c), Some(r)) = (committed, n.report_time) {
            if c >= r {
                return Some((chunk.version, chunk.length));
            }
        }
        n.chunks.get(&chunk.id).copied()
    }

    /// Whether `node`'s replicas still count: up, or down within its grace.
    fn counts(&self, node: u64, m: &Membership, now: Instant) -> bool {
        m.get(node).is_some_and(|n| {
            n.up || now.saturating_duration_since(m.last_heard(n))
                < self.cfg.node_ttl + self.cfg.grace
        })
    }

    fn replica(
        &self,
        chunk: &Chunk,
        node: u64,
        known: Option<(Version, u32)>,
        newest: Version,
        m: &Membership,
        now: Instant,
    ) -> Replica {
        let Some(n) = m.get(node) else {
            return Replica::Lost("node not registered");
        };
        if !n.up {
            // Known to be behind: waiting for it to return gains nothing.
            if known.is_some_and(|(v, _)| v < chunk.version) {
                return Replica::Lost(STALE);
            }
            return if self.counts(node, m, now) {
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
        match known {
            None => Replica::Lost("missing from the node's report"),
            Some((v, _)) if v < chunk.version => Replica::Lost(STALE),
            Some((_, l)) if l < chunk.length => Replica::Lost("shorter than the record"),
            Some((v, _)) if v < newest => Replica::Lost(BEHIND),
            Some(_) => Replica::Good,
        }
    }

    /// Queues copies for under-replicated chunks in `map`, most endangered
    /// first, within the throttle. `writer(inode)`: the file has a write
    /// lease. `alive`: how recently a target must have been heard from.
    pub fn plan(
        &self,
        map: &[MapEntry],
        m: &Membership,
        cmds: &mut Commands,
        now: Instant,
        writer: &dyn Fn(u64) -> bool,
        alive: Duration,
    ) {
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
        let hinted = |id: &u128| {
            self.hinted
                .get(id)
                .is_some_and(|t| now.saturating_duration_since(*t) < HINT_HOLD)
        };
        let mut candidates: Vec<(usize, &MapEntry, Assessment)> = map
            .iter()
            .filter_map(|e| {
                let file = e.file.as_ref()?;
                if file.kind != Kind::File
                    || busy_chunks.contains(&e.chunk.id)
                    || hinted(&e.chunk.id)
                {
                    return None;
                }
                let a = self.assess(&e.chunk, file.replication as usize, m, now, writer(e.inode));
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
            let Some(version) = a.version_of(source) else {
                continue;
            };
            let in_record: HashSet<u64> = e.chunk.replicas.iter().copied().collect();
            let lost = a.lost();
            // A stale or behind replica on a live node is caught up in
            // place; a node without a copy comes next; a corrupt replica
            // is replaced in place only if nothing else can take it. Then
            // most free space. Only nodes known alive.
            let target = m
                .iter()
                .filter(|(id, n)| {
                    m.alive(**id, now, alive)
                        && n.report_complete
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
                .min_by_key(|(id, _, free)| {
                    let rank = if a.catch_up_in_place(*id) {
                        0
                    } else if !in_record.contains(id) {
                        1
                    } else {
                        2
                    };
                    (rank, std::cmp::Reverse(*free))
                });
            let Some((target, tn, _)) = target else {
                continue;
            };
            let cid = ChunkId::new((e.chunk.id >> 64) as u64, e.chunk.id as u64);
            let Some(addr) = tn.shards.get(cid.shard(tn.shards.len())) else {
                continue;
            };
            // The copy replaces what the target holds only if it still is
            // what the control server last saw there.
            let target_version = a
                .version_of(target)
                .or_else(|| tn.chunks.get(&e.chunk.id).map(|(v, _)| *v))
                .unwrap_or(Version::NONE);
            if target_version > version {
                continue;
            }
            let drop = lost
                .iter()
                .filter(|n| **n != target)
                .map(|n| (*n, a.version_of(*n).unwrap_or(Version::NONE)))
                .collect();
            tracing::info!(
                inode = e.inode,
                index = e.index,
                chunk = %cid,
                source,
                target,
                %version,
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
                    version,
                    length: e.chunk.length,
                    target,
                    target_addr: addr.clone(),
                    target_version,
                    drop,
                },
            );
            *busy_nodes.entry(source).or_default() += 1;
            *busy_nodes.entry(target).or_default() += 1;
            *planned_bytes.entry(target).or_default() += e.chunk.length as u64;
            room -= 1;
        }
    }

    /// A node to add as a replica of `chunk` (which lists fewer than
    /// `wanted`), for its writer to copy to: known alive, not a replica,
    /// not busy deleting it, with room, most free space first.
    pub fn hint_target(
        &self,
        chunk: &Chunk,
        wanted: usize,
        m: &Membership,
        cmds: &Commands,
        now: Instant,
        alive: Duration,
    ) -> Option<u64> {
        if chunk.replicas.len() >= wanted {
            return None;
        }
        m.iter()
            .filter(|(id, n)| {
                m.alive(**id, now, alive)
                    && n.report_complete
                    && !chunk.replicas.contains(id)
                    && !cmds.deleting(**id, chunk.id)
            })
            .map(|(id, n)| {
                let free = n
                    .capacity
                    .total
                    .saturating_sub(n.capacity.used)
                    .saturating_sub(n.capacity.reserved);
                (*id, free)
            })
            .filter(|(_, free)| *free >= chunk.length as u64)
            .max_by_key(|(id, free)| (*free, std::cmp::Reverse(*id)))
            .map(|(id, _)| id)
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
#[allow(clippy::too_many_arguments)]
pub fn health(
    repair: &Repair,
    map: &[MapEntry],
    m: &Membership,
    cmds: &Commands,
    paths: &HashMap<u64, String>,
    limit: usize,
    now: Instant,
    writer: &dyn Fn(u64) -> bool,
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
        let a = repair.assess(&e.chunk, file.replication as usize, m, now, writer(e.inode));
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
    const V1: Version = Version::new(1, 1);
    /// Targets must have been heard from within this (the tests' clock
    /// runs ahead of the heartbeats).
    const ALIVE: Duration = Duration::from_secs(3600);
    const NO_WRITER: &dyn Fn(u64) -> bool = &|_| false;

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
            uid: 0,
            gid: 0,
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
                version: V1,
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
                .map(|(_, c)| (*c, V1, 4096))
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
                } => Some((
                    c.node,
                    *chunk,
                    *target,
                    drop.iter().map(|(n, _)| *n).collect(),
                )),
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
        m.report_chunks(3, &[3; 16], [(10, Version::new(0, 9), 4096)], true)
            .unwrap();
        let map = vec![entry(0, 10, &[1, 2, 3]), entry(1, 11, &[1, 2, 3])];
        let r = Repair::new(cfg(1));
        let now = Instant::now();
        assert_eq!(r.assess(&map[0].chunk, 3, &m, now, false).good, 2);
        assert_eq!(r.assess(&map[1].chunk, 3, &m, now, false).good, 1);
        let mut cmds = Commands::default();
        r.plan(&map, &m, &mut cmds, now, NO_WRITER, ALIVE);
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
        r.plan(&map, &m, &mut cmds, later, NO_WRITER, ALIVE);
        assert!(copies(&cmds).is_empty(), "repaired within the grace");
        let a = r.assess(&map[0].chunk, 3, &m, later, false);
        assert_eq!((a.good, a.pending), (2, 1));
        r.plan(&map, &m, &mut cmds, later + GRACE, NO_WRITER, ALIVE);
        let c = copies(&cmds);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].2, 4, "copied to the only node without a copy");
        assert_eq!(c[0].3, vec![3], "the down replica leaves the record");
        // In flight: not planned twice.
        r.plan(&map, &m, &mut cmds, later + GRACE, NO_WRITER, ALIVE);
        assert_eq!(copies(&cmds).len(), 1);
    }

    /// A server taking over (a restart, a new leader) presumes every
    /// registered node up: a node that never comes back holds its replicas
    /// unverified, then down within its grace, so the takeover itself
    /// copies nothing, and it is repaired TTL + grace after the takeover.
    #[test]
    fn a_takeover_copies_nothing_before_a_silent_node_s_grace() {
        let registered = (1..=4u64)
            .map(|id| {
                let shards = vec![format!("127.0.0.1:{id}")];
                (
                    id,
                    crate::records::Node {
                        key: [id as u8; 16],
                        shards,
                    },
                )
            })
            .collect();
        let mut m = Membership::new(registered);
        let took_over = m.last_heard(m.get(3).unwrap());
        assert!(m.iter().all(|(_, n)| n.up), "every node presumed up");
        // Nodes 1, 2 and 4 rejoin and report; node 3 never does.
        for (id, holds) in [(1u64, vec![10u128]), (2, vec![10]), (4, vec![])] {
            let shards = vec![format!("127.0.0.1:{id}")];
            m.joined(id, [id as u8; 16], shards, Capacity::default());
            let chunks = holds.into_iter().map(|c| (c, V1, 4096));
            m.report_chunks(id, &[id as u8; 16], chunks, true).unwrap();
        }
        let map = vec![entry(0, 10, &[1, 2, 3])];
        let r = Repair::new(cfg(4));
        let mut cmds = Commands::default();
        r.plan(&map, &m, &mut cmds, took_over, NO_WRITER, ALIVE);
        let a = r.assess(&map[0].chunk, 3, &m, took_over, false);
        assert_eq!((a.good, a.pending), (2, 1), "node 3 unverified");
        // One TTL later node 3 is down (the others heartbeat meanwhile).
        let down_at = took_over + TTL + Duration::from_millis(1);
        assert!(m.sweep(down_at, TTL).contains(&3), "down one TTL after");
        for id in [1u64, 2, 4] {
            let cap = Capacity {
                total: id << 30,
                ..Default::default()
            };
            m.heartbeat(id, &[id as u8; 16], cap, GRACE * 10).unwrap();
        }
        r.plan(&map, &m, &mut cmds, down_at, NO_WRITER, ALIVE);
        assert!(copies(&cmds).is_empty(), "repaired within the grace");
        r.plan(
            &map,
            &m,
            &mut cmds,
            took_over + TTL + GRACE,
            NO_WRITER,
            ALIVE,
        );
        let c = copies(&cmds);
        assert_eq!(c.len(), 1, "repaired once the grace ended");
        assert_eq!((c[0].2, c[0].3.clone()), (4, vec![3]));
    }

    #[test]
    fn a_chunk_without_good_replicas_is_lost_not_copied() {
        let m = members(3, &[]);
        let map = vec![entry(0, 10, &[1, 2, 3])];
        let r = Repair::new(cfg(4));
        let mut cmds = Commands::default();
        r.plan(&map, &m, &mut cmds, Instant::now(), NO_WRITER, ALIVE);
        assert!(copies(&cmds).is_empty());
        let h = health(
            &r,
            &map,
            &m,
            &cmds,
            &HashMap::from([(2, "/f".to_string())]),
            10,
            Instant::now(),
            NO_WRITER,
        );
        assert_eq!((h.chunks, h.lost, h.healthy), (1, 1, 0));
        assert_eq!(h.problems[0].path, "/f");
    }

    #[test]
    fn a_replica_behind_another_is_caught_up_in_place_unless_the_file_has_a_writer() {
        // Nodes 2 and 3 hold a version above the record's (a writer that
        // died before committing it); node 1 holds the record's.
        let mut m = members(4, &[(1, 10)]);
        let v2 = Version::new(1, 2);
        for id in [2u64, 3] {
            m.report_chunks(id, &[id as u8; 16], [(10, v2, 4096)], true)
                .unwrap();
        }
        let map = vec![entry(0, 10, &[1, 2, 3])];
        let r = Repair::new(cfg(4));
        let now = Instant::now();
        let a = r.assess(&map[0].chunk, 3, &m, now, false);
        assert_eq!(a.good, 2);
        assert_eq!(a.lost(), vec![1]);
        let mut cmds = Commands::default();
        r.plan(&map, &m, &mut cmds, now, NO_WRITER, ALIVE);
        let c: Vec<_> = cmds.iter().cloned().collect();
        assert_eq!(c.len(), 1);
        match &c[0].work {
            Work::Copy {
                version,
                target,
                target_version,
                ..
            } => {
                assert_eq!(*version, v2, "the newest version is copied");
                assert_eq!(*target, 1, "caught up in place");
                assert_eq!(*target_version, V1, "fenced on what it holds");
            }
            w => panic!("{w:?}"),
        }
        // While the file has a writer, its replicas are the writer's to
        // keep in step: node 1 at the record's version is good.
        let a = r.assess(&map[0].chunk, 3, &m, now, true);
        assert_eq!(a.good, 3);
    }

    #[test]
    fn targets_and_hints_are_nodes_heard_from_recently() {
        let mut m = members(4, &[(1, 10), (2, 10)]);
        let map = vec![entry(0, 10, &[1, 2])];
        let r = Repair::new(cfg(4));
        // Node 4 (most space) was last heard 300 ms ago; 1..3 just now.
        std::thread::sleep(Duration::from_millis(300));
        for id in [1u64, 2, 3] {
            let cap = Capacity {
                total: id << 30,
                ..Default::default()
            };
            m.heartbeat(id, &[id as u8; 16], cap, GRACE).unwrap();
        }
        let recent = Duration::from_millis(200);
        let now = Instant::now();
        let cmds = Commands::default();
        let later = now + Duration::from_secs(5);
        assert_eq!(
            r.hint_target(&map[0].chunk, 3, &m, &cmds, later, recent),
            None
        );
        assert_eq!(
            r.hint_target(&map[0].chunk, 3, &m, &cmds, now, recent),
            Some(3)
        );
        let mut cmds = Commands::default();
        r.plan(&map, &m, &mut cmds, now, NO_WRITER, recent);
        assert_eq!(copies(&cmds)[0].2, 3, "not node 4, silent for 300 ms");
        // A chunk with all its replicas needs no hint.
        let full = entry(0, 11, &[1, 2, 3]);
        assert_eq!(r.hint_target(&full.chunk, 3, &m, &cmds, now, recent), None);
    }
}
