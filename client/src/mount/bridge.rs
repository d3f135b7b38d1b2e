//! From fuser's request threads to the client's `LocalSet` thread.
//!
//! fuser calls [`Bridge`]'s methods on its threads (one per cloned
//! `/dev/fuse` descriptor). Each call becomes a job sent to the `LocalSet`
//! thread, which runs it as a task on the client; the task answers the
//! kernel itself (fuser's reply objects may be sent from any thread). So
//! the request thread goes back to the kernel at once and many requests
//! are in flight on one client.
//!
//! Writes are the exception: their data lives in the request thread's
//! buffer, which fuser reuses for the next request. Rather than copy it,
//! the request thread lends it to the task and waits until the task has
//! finished with it; the other request threads keep serving meanwhile.

use std::ffi::OsStr;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use fuser::{
    Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig,
    LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request,
    TimeOrNow, WriteFlags,
};

use super::fs::{Fs, SetAttr, NAME_MAX, READ_BUF};
use crate::control::Kind;

/// Work for the `LocalSet` thread: builds the task that serves one request.
pub type Job = Box<dyn FnOnce(Rc<Fs>) -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// Kernel-side settings negotiated at INIT.
#[derive(Clone, Copy, Debug)]
pub struct KernelSettings {
    /// Buffer writes in the kernel (FUSE writeback cache).
    pub writeback_cache: bool,
    pub attr_ttl: Duration,
    pub entry_ttl: Duration,
}

/// fuser's `Filesystem`: forwards every request to the `LocalSet` thread.
pub struct Bridge {
    jobs: tokio::sync::mpsc::UnboundedSender<Job>,
    k: KernelSettings,
}

/// A write's data, lent by the request thread that blocks until the job
/// using it is dropped.
struct Lent {
    ptr: *const u8,
    len: usize,
}

// SAFETY: the pointer is only dereferenced by the job, while the thread
// that owns the memory waits for that job to be dropped (see
// `Bridge::write`).
unsafe impl Send for Lent {}

impl Lent {
    /// # Safety
    /// The lender must keep the memory alive and unchanged meanwhile.
    unsafe fn slice(&self) -> &[u8] {
        // SAFETY: by the caller's promise.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Bridge {
    pub fn new(jobs: tokio::sync::mpsc::UnboundedSender<Job>, k: KernelSettings) -> Self {
        Bridge { jobs, k }
    }

    /// Runs `f` on the `LocalSet` thread. If that thread is gone (the
    /// mount is ending), the job and its reply are dropped, and fuser
    /// answers a dropped reply with EIO.
    fn run<F, Fut>(&self, f: F)
    where
        F: FnOnce(Rc<Fs>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let job: Job = Box::new(move |fs| Box::pin(f(fs)));
        let _ = self.jobs.send(job);
    }
}

/// Answers the kernel: `$ok` with the value on success, else the errno.
macro_rules! answer {
    ($result:expr, $reply:ident, |$v:pat_param| $ok:expr) => {
        match $result {
            Ok($v) => $ok,
            Err(e) => $reply.error(e),
        }
    };
}

impl Filesystem for Bridge {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // One request carries up to 1 MiB (max_pages 256, the kernel's
        // default limit).
        let _ = config.set_max_write(READ_BUF as u32);
        let _ = config.set_max_readahead(READ_BUF as u32);
        // Async requests (readahead, writeback) in flight per mount.
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        let mut wanted = InitFlags::FUSE_ASYNC_READ
            | InitFlags::FUSE_BIG_WRITES
            | InitFlags::FUSE_ATOMIC_O_TRUNC
            | InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_AUTO_INVAL_DATA
            | InitFlags::FUSE_ASYNC_DIO
            | InitFlags::FUSE_MAX_PAGES;
        if self.k.writeback_cache {
            wanted |= InitFlags::FUSE_WRITEBACK_CACHE;
        }
        // Take what this kernel offers of it.
        let offered = config.capabilities() & wanted;
        config
            .add_capabilities(offered)
            .map_err(|f| std::io::Error::other(format!("FUSE capabilities {f:?} refused")))?;
        if self.k.writeback_cache && !offered.contains(InitFlags::FUSE_WRITEBACK_CACHE) {
            return Err(std::io::Error::other(
                "this kernel does not offer the FUSE writeback cache",
            ));
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = name.to_owned();
        let k = self.k;
        self.run(move |fs| async move {
            answer!(fs.lookup(parent.0, &name).await, reply, |a| reply
                .entry_with_ttls(&k.attr_ttl, &k.entry_ttl, &a, Generation(0)))
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.run(move |fs| async move { fs.forget(ino.0, nlookup) });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let ttl = self.k.attr_ttl;
        self.run(move |fs| async move {
            answer!(fs.getattr(ino.0, fh.map(|f| f.0)).await, reply, |a| reply
                .attr(&ttl, &a))
        });
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let ttl = self.k.attr_ttl;
        let req = SetAttr {
            mode,
            uid,
            gid,
            size,
            mtime,
            fh: fh.map(|f| f.0),
        };
        self.run(move |fs| async move {
            answer!(fs.setattr(ino.0, req).await, reply, |a| reply
                .attr(&ttl, &a))
        });
    }

    fn readlink(&self, _req: &Request, _ino: INodeNo, reply: ReplyData) {
        // No symbolic links exist.
        reply.error(Errno::EINVAL);
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        // Only regular files exist: no devices, FIFOs or sockets.
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        let name = name.to_owned();
        let k = self.k;
        self.run(move |fs| async move {
            let created = fs
                .create(
                    parent.0,
                    &name,
                    mode & !umask,
                    libc::O_WRONLY | libc::O_EXCL,
                )
                .await;
            match created {
                Ok((a, fh, _)) => {
                    fs.release(fh).await;
                    reply.entry_with_ttls(&k.attr_ttl, &k.entry_ttl, &a, Generation(0))
                }
                Err(e) => reply.error(e),
            }
        });
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let name = name.to_owned();
        let k = self.k;
        self.run(move |fs| async move {
            answer!(fs.mkdir(parent.0, &name, mode & !umask).await, reply, |a| {
                reply.entry_with_ttls(&k.attr_ttl, &k.entry_ttl, &a, Generation(0))
            })
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.to_owned();
        self.run(move |fs| async move {
            answer!(fs.unlink(parent.0, &name).await, reply, |()| reply.ok())
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.to_owned();
        self.run(move |fs| async move {
            answer!(fs.rmdir(parent.0, &name).await, reply, |()| reply.ok())
        });
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EPERM);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (name, newname) = (name.to_owned(), newname.to_owned());
        self.run(move |fs| async move {
            answer!(
                fs.rename(parent.0, &name, newparent.0, &newname, flags)
                    .await,
                reply,
                |()| reply.ok()
            )
        });
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        // No hard links: every inode has one parent.
        reply.error(Errno::EPERM);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.run(move |fs| async move {
            answer!(fs.open(ino.0, flags.0).await, reply, |(fh, fl)| reply
                .opened(FileHandle(fh), fl))
        });
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let size = (size as usize).min(READ_BUF);
        self.run(move |fs| async move {
            match fs.read(fh.0, offset, size).await {
                Ok((buf, n)) => {
                    reply.data(&buf[..n]);
                    fs.recycle(buf);
                }
                Err(e) => reply.error(e),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let lent = Lent {
            ptr: data.as_ptr(),
            len: data.len(),
        };
        let (done, finished) = std::sync::mpsc::sync_channel::<()>(0);
        self.run(move |fs| async move {
            // Dropped with this task (finished or cancelled): that wakes
            // the request thread, after the last use of `lent`.
            let _done = done;
            // SAFETY: the request thread keeps `data` alive and unchanged
            // until `_done` is dropped, after this task's last use of it.
            let data = unsafe { lent.slice() };
            answer!(fs.write(fh.0, offset, data).await, reply, |n| reply
                .written(n))
        });
        // Returns when the job is dropped: run, cancelled, or never sent.
        let _ = finished.recv();
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2): a commit point, so the next open anywhere sees every
        // write made through this handle (close-to-open).
        self.run(move |fs| async move { answer!(fs.fsync(fh.0).await, reply, |()| reply.ok()) });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.run(move |fs| async move {
            fs.release(fh.0).await;
            reply.ok();
        });
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.run(move |fs| async move { answer!(fs.fsync(fh.0).await, reply, |()| reply.ok()) });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.run(move |fs| async move {
            answer!(fs.opendir(ino.0).await, reply, |fh| reply
                .opened(FileHandle(fh), FopenFlags::empty()))
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.run(move |fs| async move {
            let r = fs
                .readdir(fh.0, offset, false, |e| {
                    !reply.add(INodeNo(e.ino), e.next, file_type(e.kind), &e.name)
                })
                .await;
            answer!(r, reply, |()| reply.ok())
        });
    }

    fn readdirplus(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let k = self.k;
        self.run(move |fs| async move {
            let r = fs
                .readdir(fh.0, offset, true, |e| match &e.attr {
                    Some(a) => !reply.add(
                        INodeNo(e.ino),
                        e.next,
                        &e.name,
                        &k.entry_ttl,
                        a,
                        Generation(0),
                    ),
                    // "." and "..": the kernel takes only the name and
                    // inode of these.
                    None => !reply.add(
                        INodeNo(e.ino),
                        e.next,
                        &e.name,
                        &Duration::ZERO,
                        &fs.file_attr(&crate::control::Attr {
                            inode: e.ino,
                            kind: Kind::Directory,
                            size: 0,
                            mode: 0o755,
                            mtime_ns: 0,
                            chunk_size: 0,
                            replication: 0,
                            write_quorum: 0,
                            version: 0,
                            uid: 0,
                            gid: 0,
                        }),
                        Generation(0),
                    ),
                })
                .await;
            answer!(r, reply, |()| reply.ok())
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.run(move |fs| async move {
            fs.releasedir(fh.0);
            reply.ok();
        });
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Namespace changes are durable when they are answered.
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.run(move |fs| async move {
            const BSIZE: u64 = 4096;
            answer!(fs.statfs().await, reply, |c| {
                reply.statfs(
                    c.total / BSIZE,
                    c.free / BSIZE,
                    c.free / BSIZE,
                    0,
                    0,
                    BSIZE as u32,
                    NAME_MAX as u32,
                    BSIZE as u32,
                )
            })
        });
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let name = name.to_owned();
        let ttl = self.k.entry_ttl;
        self.run(move |fs| async move {
            answer!(
                fs.create(parent.0, &name, mode & !umask, flags).await,
                reply,
                |(a, fh, fl)| reply.created(&ttl, &a, Generation(0), FileHandle(fh), fl)
            )
        });
    }

    // Not implemented, on purpose: extended attributes (ENOSYS makes the
    // kernel answer EOPNOTSUPP from then on without asking), locks (not
    // offered at INIT, so the kernel keeps fcntl/flock locks local to this
    // mount), fallocate, lseek with SEEK_DATA/SEEK_HOLE, copy_file_range
    // (the kernel falls back to reads and writes), ioctl, poll, bmap.
}

fn file_type(k: Kind) -> fuser::FileType {
    match k {
        Kind::File => fuser::FileType::RegularFile,
        Kind::Directory => fuser::FileType::Directory,
    }
}
