//! The mount's inode table.
//!
//! FUSE inode numbers are the control server's inode numbers (the root is
//! 1 on both sides; the server never reuses a number). The control RPC is
//! addressed by path, so the table remembers the parent and name under
//! which each inode the kernel knows was last seen, and builds its path
//! from them.
//!
//! Invariants:
//! - A node lives while the kernel holds lookups on it (every answered
//!   lookup, create, mkdir and readdirplus entry counts one; `forget` gives
//!   them back) or this mount has it open; the root lives forever.
//! - `names` maps (parent, name) to the inode last seen there. Another
//!   client's rename is noticed when a lookup finds an inode under a new
//!   name (the node moves); until then the old path is tried, and the
//!   caller checks the inode the server answers for it (`ESTALE` if it is
//!   another one).

use std::collections::HashMap;

use fuser::Errno;

use crate::control::Kind;

/// The root directory's inode, on the server and in FUSE.
pub const ROOT: u64 = 1;

/// Deepest path the table builds (the control server refuses paths over
/// 4096 bytes, so a deeper chain can only be a corrupt table).
const MAX_DEPTH: usize = 2048;

/// One inode the kernel knows.
#[derive(Debug)]
pub struct Node {
    pub parent: u64,
    pub name: String,
    pub kind: Kind,
    lookups: u64,
    /// Open handles of this mount on it.
    pub opens: u32,
    /// The version the kernel's cached attributes belong to.
    pub attr_version: Option<u64>,
    /// The version the kernel's cached pages belong to (set at each open
    /// that let the kernel keep or fill its page cache).
    pub cache_version: Option<u64>,
    /// Gone from the namespace; while open it lives on under a hidden name
    /// (see `Fs::unlink`).
    pub unlinked: bool,
}

/// Inodes by number, and by (parent, name).
#[derive(Debug)]
pub struct Inodes {
    nodes: HashMap<u64, Node>,
    names: HashMap<(u64, String), u64>,
}

impl Default for Inodes {
    fn default() -> Self {
        let root = Node {
            parent: ROOT,
            name: String::new(),
            kind: Kind::Directory,
            lookups: 0,
            opens: 0,
            attr_version: None,
            cache_version: None,
            unlinked: false,
        };
        Inodes {
            nodes: HashMap::from([(ROOT, root)]),
            names: HashMap::new(),
        }
    }
}

impl Inodes {
    pub fn get(&self, ino: u64) -> Option<&Node> {
        self.nodes.get(&ino)
    }

    pub fn get_mut(&mut self, ino: u64) -> Option<&mut Node> {
        self.nodes.get_mut(&ino)
    }

    /// The inode last seen as `name` in `parent`.
    pub fn child(&self, parent: u64, name: &str) -> Option<u64> {
        self.names.get(&(parent, name.to_string())).copied()
    }

    /// The path of `ino`; `ESTALE` if it (or a parent) is not known.
    pub fn path(&self, ino: u64) -> Result<String, Errno> {
        let mut names = Vec::new();
        let mut cur = ino;
        while cur != ROOT {
            let node = self.nodes.get(&cur).ok_or(Errno::ESTALE)?;
            names.push(node.name.as_str());
            cur = node.parent;
            if names.len() > MAX_DEPTH {
                return Err(Errno::ESTALE);
            }
        }
        if names.is_empty() {
            return Ok("/".into());
        }
        let mut path = String::with_capacity(names.iter().map(|n| n.len() + 1).sum());
        for name in names.iter().rev() {
            path.push('/');
            path.push_str(name);
        }
        Ok(path)
    }

    /// The path of `name` in directory `parent`.
    pub fn child_path(&self, parent: u64, name: &str) -> Result<String, Errno> {
        let mut p = self.path(parent)?;
        if p.len() > 1 {
            p.push('/');
        }
        p.push_str(name);
        Ok(p)
    }

    /// Records that `name` in `parent` is inode `ino` (a lookup's answer),
    /// counting one kernel lookup if `count`. An inode seen under another
    /// name moved; an inode that was here before was replaced.
    pub fn learn(&mut self, parent: u64, name: &str, ino: u64, kind: Kind, count: bool) {
        if ino == ROOT {
            return;
        }
        let key = (parent, name.to_string());
        if let Some(old) = self.names.insert(key.clone(), ino) {
            if old != ino {
                self.detach(old);
            }
        }
        match self.nodes.get_mut(&ino) {
            Some(node) => {
                if (node.parent, node.name.as_str()) != (parent, name) {
                    let before = (node.parent, std::mem::replace(&mut node.name, name.into()));
                    node.parent = parent;
                    if self.names.get(&before) == Some(&ino) {
                        self.names.remove(&before);
                    }
                }
                // Seen under a real name again; a hidden name stays
                // marked for removal at the last close.
                if !is_hidden(name) {
                    node.unlinked = false;
                }
                node.lookups += u64::from(count);
            }
            None => {
                self.nodes.insert(
                    ino,
                    Node {
                        parent,
                        name: name.into(),
                        kind,
                        lookups: u64::from(count),
                        opens: 0,
                        attr_version: None,
                        cache_version: None,
                        unlinked: false,
                    },
                );
            }
        }
    }

    /// The kernel dropped `n` lookups of `ino`.
    pub fn forget(&mut self, ino: u64, n: u64) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.lookups = node.lookups.saturating_sub(n);
        }
        self.collect(ino);
    }

    /// `name` in `parent` is gone (unlinked, or replaced by a rename);
    /// returns the inode that was there.
    pub fn removed(&mut self, parent: u64, name: &str) -> Option<u64> {
        let ino = self.names.remove(&(parent, name.to_string()))?;
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.unlinked = true;
        }
        self.collect(ino);
        Some(ino)
    }

    /// `from` was renamed to `to` (replacing whatever was there).
    pub fn renamed(&mut self, from: (u64, &str), to: (u64, &str)) {
        let Some(ino) = self.names.remove(&(from.0, from.1.to_string())) else {
            self.removed(to.0, to.1);
            return;
        };
        let kind = self.nodes.get(&ino).map_or(Kind::File, |n| n.kind);
        self.learn(to.0, to.1, ino, kind, false);
    }

    /// A handle of this mount opened `ino`.
    pub fn opened(&mut self, ino: u64) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.opens += 1;
        }
    }

    /// A handle of `ino` was released; returns the node's (parent, name)
    /// if it was the last one of an unlinked inode still present under a
    /// hidden name.
    pub fn released(&mut self, ino: u64) -> Option<(u64, String)> {
        let node = self.nodes.get_mut(&ino)?;
        node.opens = node.opens.saturating_sub(1);
        let hidden = (node.opens == 0 && node.unlinked && is_hidden(&node.name))
            .then(|| (node.parent, node.name.clone()));
        self.collect(ino);
        hidden
    }

    /// The entry of a node replaced under its name: it is no longer there.
    fn detach(&mut self, ino: u64) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.unlinked = true;
        }
        self.collect(ino);
    }

    /// Drops a node nobody refers to any more.
    fn collect(&mut self, ino: u64) {
        let Some(node) = self.nodes.get(&ino) else {
            return;
        };
        if ino == ROOT || node.lookups > 0 || node.opens > 0 {
            return;
        }
        let key = (node.parent, node.name.clone());
        if self.names.get(&key) == Some(&ino) {
            self.names.remove(&key);
        }
        self.nodes.remove(&ino);
    }
}

/// The prefix of the names under which unlinked files that are still open
/// live on (as NFS's `.nfsXXXX`).
pub const HIDDEN_PREFIX: &str = ".ringfs-unlinked-";

pub fn is_hidden(name: &str) -> bool {
    name.starts_with(HIDDEN_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_learned_names_and_renames() {
        let mut t = Inodes::default();
        assert_eq!(t.path(ROOT).unwrap(), "/");
        t.learn(ROOT, "d", 2, Kind::Directory, true);
        t.learn(2, "f", 3, Kind::File, true);
        assert_eq!(t.path(3).unwrap(), "/d/f");
        assert_eq!(t.child_path(2, "g").unwrap(), "/d/g");
        t.renamed((2, "f"), (ROOT, "g"));
        assert_eq!(t.path(3).unwrap(), "/g");
        assert_eq!(t.child(2, "f"), None);
        assert_eq!(t.child(ROOT, "g"), Some(3));
        // Another client moved d: a lookup finds inode 2 under a new name.
        t.learn(ROOT, "e", 2, Kind::Directory, true);
        assert_eq!(t.child(ROOT, "d"), None);
        assert_eq!(t.path(2).unwrap(), "/e");
        assert_eq!(t.path(99), Err(Errno::ESTALE));
    }

    #[test]
    fn nodes_live_while_looked_up_or_open() {
        let mut t = Inodes::default();
        t.learn(ROOT, "f", 5, Kind::File, true);
        t.learn(ROOT, "f", 5, Kind::File, true);
        t.opened(5);
        t.forget(5, 2);
        assert!(t.get(5).is_some(), "still open");
        assert_eq!(t.released(5), None, "not unlinked");
        assert!(t.get(5).is_none(), "collected");
        assert_eq!(t.nodes.len(), 1, "only the root");
        t.forget(ROOT, 10);
        assert!(t.get(ROOT).is_some());
    }

    #[test]
    fn an_open_file_unlinked_under_a_hidden_name_is_reported_at_last_release() {
        let mut t = Inodes::default();
        t.learn(ROOT, "f", 5, Kind::File, true);
        t.opened(5);
        let hidden = format!("{HIDDEN_PREFIX}5");
        t.renamed((ROOT, "f"), (ROOT, &hidden));
        t.get_mut(5).unwrap().unlinked = true;
        // A listing shows it under that name: still to be removed.
        t.learn(ROOT, &hidden, 5, Kind::File, true);
        assert_eq!(t.released(5), Some((ROOT, hidden)));
    }

    #[test]
    fn a_replaced_entry_is_marked_unlinked() {
        let mut t = Inodes::default();
        t.learn(ROOT, "a", 5, Kind::File, true);
        t.learn(ROOT, "a", 6, Kind::File, true);
        assert!(t.get(5).unwrap().unlinked);
        assert_eq!(t.child(ROOT, "a"), Some(6));
        assert_eq!(t.removed(ROOT, "a"), Some(6));
        assert!(t.get(6).unwrap().unlinked);
    }
}
