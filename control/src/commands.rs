//! Commands for storage nodes (delete a chunk, copy a chunk to another
//! node), queued here until they go out (pushed at once through the
//! node's `NodeCommands` capability, or in its next heartbeat reply), and
//! tracked until the node reports their outcome. Every command is version
//! fenced on the node (see `NodeCommand` in `schema/control.capnp`).
//!
//! Invariants:
//! - A command is in exactly one state: queued (not yet sent) or sent at an
//!   instant. Its id is unique for the life of the process.
//! - A sent command whose outcome has not come back within the timeout is
//!   forgotten (its effect is then unknown, which every planner tolerates:
//!   deletes are idempotent, a copy that did land is an unreferenced chunk
//!   that garbage collection removes, one that did not is planned again).
//! - Commands of a node that went down or rejoined are dropped, sent or
//!   not: a restarted node forgot them and their outcomes. They are planned
//!   again from the current state.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ringfs_schema::Version;

/// What a node is asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Work {
    /// Copy the executing node's replica of `chunk`, at exactly `version`,
    /// to `target`, where the chunk is at `target_version` ((0, 0): none).
    Copy {
        inode: u64,
        index: u64,
        chunk: u128,
        version: Version,
        length: u32,
        target: u64,
        target_addr: String,
        /// The target's copy (stale or corrupt), replaced only if it is
        /// still at this version; (0, 0): the target has none.
        target_version: Version,
        /// Replicas to leave the record once the copy is in, with the
        /// version each was last seen at (its delete is fenced on it).
        drop: Vec<(u64, Version)>,
    },
    /// Delete `chunk` on the executing node unless its replica is newer
    /// than `newest`. `garbage`: it is in the garbage table (else an
    /// orphan or a dropped replica).
    Delete {
        chunk: u128,
        garbage: bool,
        newest: Version,
    },
}

/// One command and its state.
#[derive(Clone, Debug)]
pub struct Command {
    pub id: u64,
    /// The node that executes it.
    pub node: u64,
    pub work: Work,
    /// When it went out in a heartbeat reply; `None` while queued.
    pub sent: Option<Instant>,
}

/// All commands not yet finished.
#[derive(Default)]
pub struct Commands {
    next_id: u64,
    open: BTreeMap<u64, Command>,
}

impl Commands {
    /// Queues `work` for `node`; returns its id.
    pub fn queue(&mut self, node: u64, work: Work) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        self.open.insert(
            id,
            Command {
                id,
                node,
                work,
                sent: None,
            },
        );
        id
    }

    /// Nodes with commands not yet sent.
    pub fn queued_nodes(&self) -> Vec<u64> {
        let mut nodes: Vec<u64> = self
            .open
            .values()
            .filter(|c| c.sent.is_none())
            .map(|c| c.node)
            .collect();
        nodes.dedup();
        nodes.sort_unstable();
        nodes.dedup();
        nodes
    }

    /// Marks command `id` not sent again (a push that failed): the next
    /// heartbeat or push carries it.
    pub fn unsend(&mut self, id: u64) {
        if let Some(c) = self.open.get_mut(&id) {
            c.sent = None;
        }
    }

    /// The queued commands of `node`, now marked sent.
    pub fn take_for(&mut self, node: u64, now: Instant) -> Vec<Command> {
        let mut out = Vec::new();
        for c in self.open.values_mut() {
            if c.node == node && c.sent.is_none() {
                c.sent = Some(now);
                out.push(c.clone());
            }
        }
        out
    }

    /// Command `id` if `node` executes it.
    pub fn get(&self, node: u64, id: u64) -> Option<Command> {
        self.open.get(&id).filter(|c| c.node == node).cloned()
    }

    /// Removes and returns command `id` if `node` executes it (a node cannot
    /// finish another node's command).
    pub fn finish(&mut self, node: u64, id: u64) -> Option<Command> {
        match self.open.get(&id) {
            Some(c) if c.node == node => self.open.remove(&id),
            _ => None,
        }
    }

    /// Forgets sent commands older than `timeout` and every command of
    /// nodes for which `is_down` holds; returns what was forgotten.
    pub fn expire(
        &mut self,
        now: Instant,
        timeout: Duration,
        is_down: impl Fn(u64) -> bool,
    ) -> Vec<Command> {
        let gone: Vec<u64> = self
            .open
            .values()
            .filter(|c| {
                is_down(c.node)
                    || c.sent
                        .is_some_and(|t| now.saturating_duration_since(t) > timeout)
            })
            .map(|c| c.id)
            .collect();
        gone.iter().filter_map(|id| self.open.remove(id)).collect()
    }

    /// Forgets every command `node` executes (it rejoined: a new session
    /// knows nothing of the old one's commands).
    pub fn forget_node(&mut self, node: u64) -> usize {
        let before = self.open.len();
        self.open.retain(|_, c| c.node != node);
        before - self.open.len()
    }

    /// Every open command.
    pub fn iter(&self) -> impl Iterator<Item = &Command> {
        self.open.values()
    }

    /// Copies in flight (queued or sent).
    pub fn copies(&self) -> usize {
        self.iter()
            .filter(|c| matches!(c.work, Work::Copy { .. }))
            .count()
    }

    /// Whether a delete of `chunk` on `node` is open.
    pub fn deleting(&self, node: u64, chunk: u128) -> bool {
        self.iter().any(|c| {
            c.node == node && matches!(c.work, Work::Delete { chunk: k, .. } if k == chunk)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_go_out_once_and_finish_only_by_their_node() {
        let mut c = Commands::default();
        let now = Instant::now();
        let id = c.queue(
            1,
            Work::Delete {
                chunk: 5,
                garbage: true,
                newest: Version::MAX,
            },
        );
        assert!(c.take_for(2, now).is_empty());
        assert_eq!(c.take_for(1, now).len(), 1);
        assert!(c.take_for(1, now).is_empty(), "sent once");
        assert!(c.deleting(1, 5));
        assert!(c.finish(2, id).is_none(), "not node 2's command");
        assert!(c.finish(1, id).is_some());
        assert!(c.finish(1, id).is_none());
    }

    #[test]
    fn lost_commands_expire() {
        let mut c = Commands::default();
        let now = Instant::now();
        c.queue(
            1,
            Work::Delete {
                chunk: 5,
                garbage: false,
                newest: Version::MAX,
            },
        );
        c.queue(
            2,
            Work::Delete {
                chunk: 6,
                garbage: false,
                newest: Version::MAX,
            },
        );
        c.take_for(1, now);
        let t = Duration::from_secs(1);
        assert!(c.expire(now, t, |_| false).is_empty());
        // Node 2 went down with a queued command; node 1 never answered.
        let gone = c.expire(now + Duration::from_secs(2), t, |n| n == 2);
        assert_eq!(gone.len(), 2);
        assert_eq!(c.iter().count(), 0);
        // A sent command of a node that went down or rejoined is gone too.
        c.queue(
            3,
            Work::Delete {
                chunk: 7,
                garbage: false,
                newest: Version::MAX,
            },
        );
        c.take_for(3, now);
        assert_eq!(c.expire(now, t, |n| n == 3).len(), 1);
        c.queue(
            3,
            Work::Delete {
                chunk: 7,
                garbage: false,
                newest: Version::MAX,
            },
        );
        assert_eq!(c.forget_node(3), 1);
    }
}
