//! Garbage collection: deleting chunk copies that no file needs, through
//! commands in heartbeat replies.
//!
//! Two sources:
//! - The **garbage table**: chunks of unlinked files, truncated tails and
//!   replaced chunks, each with the nodes that held it. Every listed node
//!   gets a delete as soon as it is up; a node's entry leaves the table only
//!   when that node confirms the delete (a missing chunk counts as deleted),
//!   so a node that was down during the unlink still gets its copy deleted
//!   when it returns, even across control-server restarts (the table is
//!   durable).
//! - **Orphans**: chunks a node reports that no record lists on that node
//!   (abandoned writes whose client died before committing, copies that a
//!   failed repair left, replicas dropped from a record while their node was
//!   down). A chunk whose reported version carries the epoch of a write
//!   lease still open is never an orphan: that lease wrote it and may still
//!   commit it (garbage collection by state, not by clock). Any other is
//!   deleted once it has stayed unreferenced for `orphan_grace` (a margin
//!   for reports racing commits and copies), and only at the version it was
//!   reported at: a replica written since is kept (the delete is fenced on
//!   the node). Reservations themselves lapse on the nodes with their
//!   lease.
//!
//! Units: durations as `Duration`.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use ringfs_schema::Version;

use crate::commands::{Commands, Work};
use crate::membership::Membership;
use crate::records::Chunk;
use crate::store::MapEntry;

/// Most deletes queued per node and round (a heartbeat reply stays small).
const DELETES_PER_ROUND: usize = 1000;

/// Unreferenced chunks seen on nodes, and since when.
#[derive(Default)]
pub struct Gc {
    orphan_seen: HashMap<(u64, u128), Instant>,
}

impl Gc {
    /// Queues deletes for garbage chunks on every up node that held them
    /// and for orphans older than `orphan_grace`; `live_epoch(e)`: a write
    /// lease of epoch `e` is open.
    #[allow(clippy::too_many_arguments)]
    pub fn plan(
        &mut self,
        map: &[MapEntry],
        garbage: &[Chunk],
        m: &Membership,
        cmds: &mut Commands,
        orphan_grace: Duration,
        now: Instant,
        live_epoch: &dyn Fn(u64) -> bool,
    ) {
        let mut queued: HashMap<u64, usize> = HashMap::new();
        let mut budget = |node: u64| {
            let q = queued.entry(node).or_default();
            *q += 1;
            *q <= DELETES_PER_ROUND
        };
        let garbage_ids: HashSet<u128> = garbage.iter().map(|g| g.id).collect();
        for g in garbage {
            for &node in &g.replicas {
                let up = m.get(node).is_some_and(|n| n.up);
                if up && !cmds.deleting(node, g.id) && budget(node) {
                    cmds.queue(
                        node,
                        Work::Delete {
                            chunk: g.id,
                            garbage: true,
                            newest: Version::MAX,
                        },
                    );
                }
            }
        }

        let mut referenced: HashMap<u128, Vec<u64>> = HashMap::new();
        for e in map {
            referenced
                .entry(e.chunk.id)
                .or_default()
                .extend(&e.chunk.replicas);
        }
        let copying: HashSet<(u64, u128)> = cmds
            .iter()
            .filter_map(|c| match c.work {
                Work::Copy { chunk, target, .. } => Some((target, chunk)),
                _ => None,
            })
            .collect();
        let mut seen_now = HashSet::new();
        for (&node, n) in m.iter() {
            if !n.up || !n.report_complete {
                continue;
            }
            for (&chunk, &(version, _)) in &n.chunks {
                let listed = referenced.get(&chunk).is_some_and(|r| r.contains(&node));
                if listed
                    || garbage_ids.contains(&chunk)
                    || copying.contains(&(node, chunk))
                    || live_epoch(version.epoch)
                {
                    continue;
                }
                seen_now.insert((node, chunk));
                let first = *self.orphan_seen.entry((node, chunk)).or_insert(now);
                if now.saturating_duration_since(first) >= orphan_grace
                    && !cmds.deleting(node, chunk)
                    && budget(node)
                {
                    tracing::info!(
                        node,
                        chunk = format!("{chunk:032x}"),
                        "deleting an orphan chunk"
                    );
                    cmds.queue(
                        node,
                        Work::Delete {
                            chunk,
                            garbage: false,
                            newest: version,
                        },
                    );
                }
            }
        }
        self.orphan_seen.retain(|k, _| seen_now.contains(k));
    }

    /// Orphan copies currently tracked (for status).
    pub fn orphans(&self) -> usize {
        self.orphan_seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::Capacity;

    /// Node 1 reports chunk 10 at (`epoch`, 1), which no record lists.
    fn reporting(epoch: u64) -> Membership {
        let mut m = Membership::default();
        m.joined(1, [1; 16], vec!["127.0.0.1:1".into()], Capacity::default());
        m.report_chunks(1, &[1; 16], [(10, Version::new(epoch, 1), 4096)], true)
            .unwrap();
        m
    }

    fn deletes(cmds: &Commands) -> Vec<(u128, Version)> {
        cmds.iter()
            .filter_map(|c| match c.work {
                Work::Delete { chunk, newest, .. } => Some((chunk, newest)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_chunk_an_open_lease_wrote_is_never_an_orphan_and_others_go_at_their_version() {
        let grace = Duration::from_secs(1);
        let (t0, later) = (Instant::now(), Instant::now() + grace * 10);
        // Written under epoch 7, whose lease is open: kept, however long.
        let m = reporting(7);
        let (mut gc, mut cmds) = (Gc::default(), Commands::default());
        let live = |e| e == 7;
        gc.plan(&[], &[], &m, &mut cmds, grace, t0, &live);
        gc.plan(&[], &[], &m, &mut cmds, grace, later, &live);
        assert!(deletes(&cmds).is_empty());
        // Once the lease ended, an orphan past its grace, deleted only at
        // the version it was seen at.
        let ended = |_| false;
        gc.plan(&[], &[], &m, &mut cmds, grace, later, &ended);
        assert!(deletes(&cmds).is_empty(), "first seen now");
        gc.plan(&[], &[], &m, &mut cmds, grace, later + grace, &ended);
        assert_eq!(deletes(&cmds), vec![(10, Version::new(7, 1))]);
    }
}
