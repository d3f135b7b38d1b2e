//! The file system behind the mount: each FUSE operation as an async call
//! on the client library, run on the client's `LocalSet` thread (see
//! `bridge.rs` for how requests get there). This file holds the state and
//! the namespace operations; `files.rs` the open files, `dirs.rs` the
//! directory listings.
//!
//! Consistency (written down for users in docs/client.md):
//! - Attributes and entries are cached by the kernel for `attr_ttl` and
//!   `entry_ttl`; every open asks the control server (the open call) and,
//!   when the file's version differs from the one the kernel's attributes
//!   or pages belong to, makes the kernel drop them before the open
//!   returns: close-to-open consistency, as NFS gives.
//! - Unlinking a file this mount holds open renames it to a hidden name
//!   and unlinks that at the last close, so open descriptors keep working
//!   (NFS's "silly rename").

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::Write;
use std::rc::Rc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{Errno, FileAttr, FileType, INodeNo, Notifier, RenameFlags, TimeOrNow};

use super::dirs::DirHandle;
use super::errno::{chain, errno, is_cluster_failure};
use super::files::Writer;
use super::inodes::{Inodes, HIDDEN_PREFIX};
use crate::client::{Client, Fd};
use crate::control::{Attr, CreateOptions, Kind};
use crate::error::Error;

/// A FUSE operation's outcome.
pub type Res<T> = std::result::Result<T, Errno>;

/// Longest name the control server accepts (bytes).
pub const NAME_MAX: usize = 255;
/// Longest path the control server accepts (bytes).
const PATH_MAX: usize = 4096;
/// `st_blksize` of files: programs size their I/O by it (cp, stdio), and
/// one FUSE request carries at most 1 MiB.
const FILE_BLKSIZE: u32 = 1 << 20;

/// How the mount behaves; see `MountArgs` for each knob.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How long the kernel may use attributes it was given.
    pub attr_ttl: Duration,
    /// How long the kernel may use a name it looked up.
    pub entry_ttl: Duration,
    /// Layout of files created through the mount (zeros: the server's).
    pub layout: CreateOptions,
    /// How long a write open waits for another client's write lease.
    pub lease_wait: Duration,
    /// Owner shown for every file (ringfs has no users yet).
    pub uid: u32,
    /// Group shown for every file.
    pub gid: u32,
}

/// An open handle of the kernel (`fh`).
pub enum Handle {
    File {
        ino: u64,
        /// Our own read descriptor, or the inode's shared writer.
        fd: Fd,
        write: bool,
    },
    Dir(Rc<RefCell<DirHandle>>),
}

/// Capacity figures for `statfs`, in bytes.
pub struct Capacity {
    pub total: u64,
    pub free: u64,
}

/// What `setattr` asks for.
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub mtime: Option<TimeOrNow>,
    pub fh: Option<u64>,
}

pub struct Fs {
    pub(super) client: Client,
    pub(super) s: Settings,
    pub(super) inodes: RefCell<Inodes>,
    pub(super) handles: RefCell<HashMap<u64, Handle>>,
    next_fh: Cell<u64>,
    /// Per inode, the write descriptor all write opens of this mount share:
    /// a write lease belongs to a client, so a second one of the same
    /// mount would wait for the first.
    pub(super) writers: RefCell<HashMap<u64, Rc<tokio::sync::Mutex<Writer>>>>,
    /// Set once the kernel session exists (after the mount).
    notifier: Arc<OnceLock<Notifier>>,
    /// Read buffers, reused: a 1 MiB buffer per read request would be an
    /// allocation (and page faults) on the hot path.
    buffers: RefCell<Vec<Vec<u8>>>,
    hidden: Cell<u64>,
}

/// Bytes of each pooled read buffer: the largest FUSE request.
pub const READ_BUF: usize = 1 << 20;
/// Read buffers kept for reuse.
const POOLED_BUFFERS: usize = 64;

impl Fs {
    pub fn new(client: Client, s: Settings, notifier: Arc<OnceLock<Notifier>>) -> Self {
        Fs {
            client,
            s,
            inodes: RefCell::default(),
            handles: RefCell::default(),
            next_fh: Cell::new(1),
            writers: RefCell::default(),
            notifier,
            buffers: RefCell::default(),
            hidden: Cell::new(0),
        }
    }

    /// Logs failures of the cluster (the errno cannot say what happened)
    /// and returns the errno.
    pub(super) fn fail(&self, op: &str, path: &str, e: Error) -> Errno {
        if is_cluster_failure(&e) {
            log(format_args!("{op} {path}: {}", chain(&e)));
        }
        errno(&e)
    }

    pub(super) fn new_fh(&self, h: Handle) -> u64 {
        let fh = self.next_fh.get();
        self.next_fh.set(fh + 1);
        self.handles.borrow_mut().insert(fh, h);
        fh
    }

    /// The attributes the kernel gets for `a`.
    pub fn file_attr(&self, a: &Attr) -> FileAttr {
        let t = if a.mtime_ns >= 0 {
            UNIX_EPOCH + Duration::from_nanos(a.mtime_ns as u64)
        } else {
            UNIX_EPOCH - Duration::from_nanos(a.mtime_ns.unsigned_abs())
        };
        let dir = a.kind == Kind::Directory;
        FileAttr {
            ino: INodeNo(a.inode),
            size: a.size,
            blocks: a.size.div_ceil(512),
            // Only the modification time is stored.
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            kind: if dir {
                FileType::Directory
            } else {
                FileType::RegularFile
            },
            perm: (a.mode & 0o7777) as u16,
            nlink: if dir { 2 } else { 1 },
            uid: self.s.uid,
            gid: self.s.gid,
            rdev: 0,
            blksize: if dir { 4096 } else { FILE_BLKSIZE },
            flags: 0,
        }
    }

    /// `a` is about to be handed to the kernel: remember its version.
    pub(super) fn observed(&self, a: &Attr) -> FileAttr {
        if let Some(node) = self.inodes.borrow_mut().get_mut(a.inode) {
            node.attr_version = Some(a.version);
        }
        self.file_attr(a)
    }

    /// Tells the kernel to drop its cached attributes of `ino` (its pages
    /// are dropped by the open itself, which does not keep the cache).
    pub(super) fn invalidate_attr(&self, ino: u64) {
        if let Some(n) = self.notifier.get() {
            // Offset -1: attributes only. A failure leaves the attributes
            // to expire after attr_ttl.
            if let Err(e) = n.inval_inode(INodeNo(ino), -1, 0) {
                log(format_args!("invalidating inode {ino}: {e}"));
            }
        }
    }

    /// A buffer of at least `len` bytes from the pool.
    pub(super) fn buffer(&self, len: usize) -> Vec<u8> {
        let mut b = self.buffers.borrow_mut().pop().unwrap_or_default();
        if b.len() < len {
            b.resize(len.max(READ_BUF), 0);
        }
        b
    }

    pub fn recycle(&self, b: Vec<u8>) {
        let mut pool = self.buffers.borrow_mut();
        if pool.len() < POOLED_BUFFERS && b.len() <= READ_BUF {
            pool.push(b);
        }
    }

    /// `name` as the control server takes it.
    pub(super) fn name(name: &OsStr) -> Res<&str> {
        let s = name.to_str().ok_or(Errno::EINVAL)?;
        if s.len() > NAME_MAX {
            return Err(Errno::ENAMETOOLONG);
        }
        Ok(s)
    }

    pub(super) fn child_path(&self, parent: u64, name: &str) -> Res<String> {
        let p = self.inodes.borrow().child_path(parent, name)?;
        if p.len() > PATH_MAX {
            return Err(Errno::ENAMETOOLONG);
        }
        Ok(p)
    }

    pub(super) fn path(&self, ino: u64) -> Res<String> {
        self.inodes.borrow().path(ino)
    }

    /// The attributes of `ino` from the control server, by its path; ESTALE
    /// if that path now holds another inode (renamed or replaced by
    /// another client: the kernel looks the name up again).
    pub(super) async fn stat_ino(&self, ino: u64) -> Res<Attr> {
        let path = self.path(ino)?;
        let a = self
            .client
            .stat(&path)
            .await
            .map_err(|e| self.fail("stat", &path, e))?;
        if a.inode != ino {
            return Err(Errno::ESTALE);
        }
        Ok(a)
    }

    // ------------------------------------------------------------ namespace

    pub async fn lookup(&self, parent: u64, name: &OsStr) -> Res<FileAttr> {
        let name = Self::name(name)?;
        let path = self.child_path(parent, name)?;
        let a = self
            .client
            .stat(&path)
            .await
            .map_err(|e| self.fail("lookup", &path, e))?;
        self.inodes
            .borrow_mut()
            .learn(parent, name, a.inode, a.kind, true);
        Ok(self.observed(&a))
    }

    pub fn forget(&self, ino: u64, n: u64) {
        self.inodes.borrow_mut().forget(ino, n);
    }

    pub async fn getattr(&self, ino: u64, fh: Option<u64>) -> Res<FileAttr> {
        let fd = fh.and_then(|fh| match self.handles.borrow().get(&fh) {
            Some(Handle::File { fd, .. }) => Some(*fd),
            _ => None,
        });
        let a = match fd {
            // Through the open handle: right even if renamed or unlinked.
            Some(fd) => self
                .client
                .fstat(fd)
                .await
                .map_err(|e| self.fail("getattr", &ino.to_string(), e))?,
            None => self.stat_ino(ino).await?,
        };
        Ok(self.observed(&a))
    }

    pub async fn setattr(&self, ino: u64, req: SetAttr) -> Res<FileAttr> {
        // No users yet (see docs/client.md): the owner cannot change.
        if req.uid.is_some_and(|u| u != self.s.uid) || req.gid.is_some_and(|g| g != self.s.gid) {
            return Err(Errno::EPERM);
        }
        let mut attr = None;
        if let Some(size) = req.size {
            attr = Some(self.truncate(ino, req.fh, size).await?);
        }
        let mtime_ns = req.mtime.map(|t| {
            let t = match t {
                TimeOrNow::SpecificTime(t) => t,
                TimeOrNow::Now => SystemTime::now(),
            };
            match t.duration_since(UNIX_EPOCH) {
                Ok(d) => d.as_nanos().min(i64::MAX as u128) as i64,
                Err(e) => -(e.duration().as_nanos().min(i64::MAX as u128) as i64),
            }
        });
        let mode = req.mode.map(|m| m & 0o7777);
        if mode.is_some() || mtime_ns.is_some() {
            let path = self.path(ino)?;
            let a = self
                .client
                .set_attr(&path, mode, mtime_ns)
                .await
                .map_err(|e| self.fail("setattr", &path, e))?;
            if a.inode != ino {
                return Err(Errno::ESTALE);
            }
            attr = Some(a);
        }
        let a = match attr {
            Some(a) => a,
            // Only the access time, which is not stored.
            None => self.stat_ino(ino).await?,
        };
        Ok(self.observed(&a))
    }

    pub async fn mkdir(&self, parent: u64, name: &OsStr, mode: u32) -> Res<FileAttr> {
        let name = Self::name(name)?;
        let path = self.child_path(parent, name)?;
        let mode = mode & 0o7777;
        let mut a = self
            .client
            .mkdir(&path, mode)
            .await
            .map_err(|e| self.fail("mkdir", &path, e))?;
        if mode == 0 {
            // The server reads 0 as "its default".
            a = self
                .client
                .set_attr(&path, Some(0), None)
                .await
                .map_err(|e| self.fail("chmod", &path, e))?;
        }
        self.inodes
            .borrow_mut()
            .learn(parent, name, a.inode, a.kind, true);
        Ok(self.observed(&a))
    }

    /// Removes `name`; a file this mount still has open is renamed to a
    /// hidden name instead and removed at its last close.
    pub async fn unlink(&self, parent: u64, name: &OsStr) -> Res<()> {
        let name = Self::name(name)?;
        let path = self.child_path(parent, name)?;
        let open = {
            let t = self.inodes.borrow();
            t.child(parent, name)
                .filter(|&ino| t.get(ino).is_some_and(|n| n.opens > 0))
        };
        let Some(ino) = open else {
            self.client
                .unlink(&path)
                .await
                .map_err(|e| self.fail("unlink", &path, e))?;
            self.inodes.borrow_mut().removed(parent, name);
            return Ok(());
        };
        let hidden = self.hide(parent, name, ino).await?;
        // Released while we renamed: nobody will remove it but us.
        let still_open = self.inodes.borrow().get(ino).is_some_and(|n| n.opens > 0);
        if !still_open {
            self.remove_hidden(parent, &hidden).await;
        }
        Ok(())
    }

    /// Renames `name` (inode `ino`, open here) to a hidden name in the same
    /// directory and marks it unlinked; returns the hidden name.
    async fn hide(&self, parent: u64, name: &str, ino: u64) -> Res<String> {
        let n = self.hidden.get();
        self.hidden.set(n + 1);
        let hidden = format!("{HIDDEN_PREFIX}{ino}-{n}");
        let (from, to) = (
            self.child_path(parent, name)?,
            self.child_path(parent, &hidden)?,
        );
        self.client
            .rename(&from, &to)
            .await
            .map_err(|e| self.fail("unlink (hiding an open file)", &from, e))?;
        let mut t = self.inodes.borrow_mut();
        t.renamed((parent, name), (parent, &hidden));
        if let Some(node) = t.get_mut(ino) {
            node.unlinked = true;
        }
        Ok(hidden)
    }

    /// Removes a hidden file whose last handle closed (best effort: one
    /// left behind, e.g. by a crash, is an ordinary file to delete).
    pub(super) async fn remove_hidden(&self, parent: u64, name: &str) {
        let Ok(path) = self.child_path(parent, name) else {
            return;
        };
        match self.client.unlink(&path).await {
            Ok(()) | Err(Error::NotFound(_)) => {
                self.inodes.borrow_mut().removed(parent, name);
            }
            Err(e) => log(format_args!(
                "removing {path}, unlinked while open: {}",
                chain(&e)
            )),
        }
    }

    pub async fn rmdir(&self, parent: u64, name: &OsStr) -> Res<()> {
        let name = Self::name(name)?;
        let path = self.child_path(parent, name)?;
        self.client
            .rmdir(&path)
            .await
            .map_err(|e| self.fail("rmdir", &path, e))?;
        self.inodes.borrow_mut().removed(parent, name);
        Ok(())
    }

    pub async fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> Res<()> {
        let (name, newname) = (Self::name(name)?, Self::name(newname)?);
        let from = self.child_path(parent, name)?;
        let to = self.child_path(newparent, newname)?;
        if flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT) {
            return Err(Errno::EINVAL);
        }
        if flags.contains(RenameFlags::RENAME_NOREPLACE) {
            // Checked, then renamed: not atomic against another client.
            match self.client.stat(&to).await {
                Ok(_) => return Err(Errno::EEXIST),
                Err(Error::NotFound(_)) => {}
                Err(e) => return Err(self.fail("rename", &to, e)),
            }
        }
        // A replaced file this mount has open lives on under a hidden name.
        let open_target = {
            let t = self.inodes.borrow();
            t.child(newparent, newname)
                .filter(|&ino| t.get(ino).is_some_and(|n| n.opens > 0))
        };
        if let Some(ino) = open_target {
            self.hide(newparent, newname, ino).await?;
        }
        self.client
            .rename(&from, &to)
            .await
            .map_err(|e| self.fail("rename", &from, e))?;
        self.inodes
            .borrow_mut()
            .renamed((parent, name), (newparent, newname));
        Ok(())
    }

    /// The cluster's raw capacity (all replicas count).
    pub async fn statfs(&self) -> Res<Capacity> {
        let map = self
            .client
            .cluster_map()
            .await
            .map_err(|e| self.fail("statfs", "/", e))?;
        let (mut total, mut free) = (0u64, 0u64);
        for n in map.nodes.iter().filter(|n| n.up) {
            total = total.saturating_add(n.capacity.total);
            free = free.saturating_add(crate::placement::free_bytes(n));
        }
        Ok(Capacity { total, free })
    }
}

/// One line on stderr for the operator; never fails (a closed stderr must
/// not take the mount down).
pub fn log(args: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr().lock(), "ringfs mount: {args}");
}
