//! Who a namespace call runs as ([`Caller`]) and the POSIX permission
//! checks on owner, group and mode bits.
//!
//! As in POSIX: reaching a path needs search (x) permission on every
//! directory on the way; listing a directory needs read; creating,
//! removing or renaming an entry needs write and search on its directory,
//! and in a sticky directory (mode 0o1000) removing or replacing an entry
//! needs to own it or the directory. Reading or writing a file needs r or
//! w. The class that applies is the owner's if the caller owns the inode,
//! else the group's if the caller is in its group, else others'. An
//! administrator passes every check.

use crate::error::{ControlError, Result};
use crate::records::Inode;

/// Read permission.
pub const READ: u32 = 4;
/// Write permission.
pub const WRITE: u32 = 2;
/// Search (directories) or execute permission.
pub const SEARCH: u32 = 1;
/// The sticky bit: only owners remove entries of the directory.
pub const STICKY: u32 = 0o1000;

/// The principal a mutation or read runs as: carried in the mutation, so
/// every replica applies the same checks.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Caller {
    /// User id: owner of what it creates.
    pub uid: u32,
    /// Groups, the primary one (group of what it creates) first; may be
    /// empty (then the primary group is the uid).
    pub gids: Vec<u32>,
    /// Passes every permission check.
    pub admin: bool,
}

impl Caller {
    /// The administrator (uid 0, group 0).
    pub fn admin() -> Self {
        Caller {
            uid: 0,
            gids: vec![0],
            admin: true,
        }
    }

    /// The group of what it creates.
    pub fn primary_gid(&self) -> u32 {
        self.gids.first().copied().unwrap_or(self.uid)
    }

    /// Whether it is a member of group `gid`.
    pub fn in_group(&self, gid: u32) -> bool {
        self.gids.contains(&gid) || (self.gids.is_empty() && gid == self.uid)
    }

    /// Whether it owns `attr` (or is the administrator).
    pub fn owns(&self, attr: &Inode) -> bool {
        self.admin || self.uid == attr.uid
    }

    /// Whether `attr`'s mode bits grant it every permission in `want` (a
    /// combination of [`READ`], [`WRITE`], [`SEARCH`]).
    pub fn may(&self, attr: &Inode, want: u32) -> bool {
        if self.admin {
            return true;
        }
        let class = if self.uid == attr.uid {
            attr.mode >> 6
        } else if self.in_group(attr.gid) {
            attr.mode >> 3
        } else {
            attr.mode
        };
        class & want == want
    }

    /// [`Caller::may`] as a `permission_denied` naming `path`.
    pub fn require(&self, attr: &Inode, want: u32, path: &str) -> Result<()> {
        if self.may(attr, want) {
            return Ok(());
        }
        Err(ControlError::PermissionDenied(format!(
            "{path}: {} permission denied",
            describe(want)
        )))
    }

    /// May it remove or replace `entry` from directory `dir` (sticky bit)?
    pub fn require_unsticky(&self, dir: &Inode, entry: &Inode, path: &str) -> Result<()> {
        if dir.mode & STICKY == 0 || self.owns(entry) || self.owns(dir) {
            return Ok(());
        }
        Err(ControlError::PermissionDenied(format!(
            "{path}: the directory is sticky and the caller owns neither it nor the entry"
        )))
    }
}

fn describe(want: u32) -> &'static str {
    match want {
        READ => "read",
        WRITE => "write",
        SEARCH => "search",
        x if x == WRITE | SEARCH => "write and search",
        _ => "access",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::Kind;

    fn inode(uid: u32, gid: u32, mode: u32) -> Inode {
        Inode {
            kind: Kind::File,
            parent: 1,
            size: 0,
            mode,
            mtime_ns: 0,
            chunk_size: 0,
            replication: 0,
            write_quorum: 0,
            version: 1,
            uid,
            gid,
        }
    }

    #[test]
    fn the_owner_group_or_other_class_applies_alone() {
        let alice = Caller {
            uid: 1000,
            gids: vec![1000, 50],
            admin: false,
        };
        // The owner class applies to the owner even when others may more.
        assert!(!alice.may(&inode(1000, 1, 0o077), READ));
        assert!(alice.may(&inode(1000, 1, 0o400), READ));
        assert!(alice.may(&inode(1, 50, 0o040), READ));
        assert!(!alice.may(&inode(1, 50, 0o004), READ));
        assert!(alice.may(&inode(1, 2, 0o004), READ));
        assert!(!alice.may(&inode(1, 2, 0o004), WRITE));
        assert!(!alice.may(&inode(1, 2, 0o005), WRITE | SEARCH));
        assert!(alice.may(&inode(1, 2, 0o003), WRITE | SEARCH));
        assert!(Caller::admin().may(&inode(1, 2, 0), READ | WRITE));
    }
}
