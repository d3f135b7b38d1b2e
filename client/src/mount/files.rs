//! Open files of the mount: open, create, read, write, fsync, release,
//! truncate.
//!
//! - A read-only open gets its own client descriptor (one control round
//!   trip, which is also the close-to-open check).
//! - Every write-capable open of one inode shares one client descriptor,
//!   the [`Writer`]: the write lease is the mount's, and a second
//!   descriptor of the same mount would wait for the first one's lease.
//!   The lease is released when the last write handle is released, so
//!   another mount's write open waits (up to `lease_wait`, then `EBUSY`)
//!   until this mount has closed the file.
//! - Writes go through the client library's `pwrite` straight from the
//!   kernel's request buffer, and return once durable on W replicas;
//!   `flush` (every close(2)) and `fsync` are commit points (see
//!   docs/client.md); reads use pooled buffers.

use fuser::{Errno, FileAttr, FopenFlags};

use super::fs::{Fs, Handle, Res};
use crate::client::{Fd, OpenOptions};
use crate::control::{Attr, CreateOptions, Kind};

/// The write descriptor of one inode, shared by this mount's write opens.
#[derive(Debug, Default)]
pub struct Writer {
    pub fd: Option<Fd>,
    /// Write handles using `fd`.
    pub opens: u32,
}

/// Whether open flags ask for writing.
fn writes(flags: i32) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY
}

impl Fs {
    fn writer(&self, ino: u64) -> std::rc::Rc<tokio::sync::Mutex<Writer>> {
        self.writers.borrow_mut().entry(ino).or_default().clone()
    }

    /// Drops the writer entry of `ino` once no open uses it.
    fn forget_writer(&self, ino: u64, w: &Writer) {
        if w.fd.is_none() && w.opens == 0 {
            self.writers.borrow_mut().remove(&ino);
        }
    }

    fn write_options(&self, truncate: bool) -> OpenOptions {
        OpenOptions {
            // The kernel may read through a write handle (partial pages).
            read: true,
            write: true,
            truncate,
            wait: self.s.lease_wait,
            ..OpenOptions::default()
        }
    }

    /// Decides, for an open that found `a`, whether the kernel may keep
    /// its cached pages, and drops its cached attributes if they belong to
    /// another version (close-to-open consistency).
    fn revalidate(&self, a: &Attr) -> FopenFlags {
        let (keep, stale_attr) = {
            let mut t = self.inodes.borrow_mut();
            let Some(node) = t.get_mut(a.inode) else {
                return FopenFlags::empty();
            };
            let keep = node.cache_version == Some(a.version);
            let stale = node.attr_version.is_some_and(|v| v != a.version);
            node.cache_version = Some(a.version);
            node.attr_version = Some(a.version);
            (keep, stale)
        };
        if stale_attr {
            self.invalidate_attr(a.inode);
        }
        if keep {
            FopenFlags::FOPEN_KEEP_CACHE
        } else {
            FopenFlags::empty()
        }
    }

    pub async fn open(&self, ino: u64, flags: i32) -> Res<(u64, FopenFlags)> {
        let path = self.path(ino)?;
        let write = writes(flags);
        let truncate = write && flags & libc::O_TRUNC != 0;
        let (fd, fopen) = if write {
            let slot = self.writer(ino);
            let mut w = slot.lock().await;
            match w.fd {
                Some(fd) => {
                    // This mount holds the lease: nobody else changed the
                    // data, so the kernel's pages are current.
                    if truncate {
                        self.client
                            .set_len(fd, 0)
                            .await
                            .map_err(|e| self.fail("truncate", &path, e))?;
                    }
                    w.opens += 1;
                    (fd, FopenFlags::FOPEN_KEEP_CACHE)
                }
                None => {
                    let opened = self
                        .client
                        .open_with_attr(&path, &self.write_options(truncate))
                        .await;
                    let (fd, a) = match opened {
                        Ok(x) => x,
                        Err(e) => {
                            self.forget_writer(ino, &w);
                            return Err(self.fail("open", &path, e));
                        }
                    };
                    if a.inode != ino {
                        let _ = self.client.close(fd).await;
                        self.forget_writer(ino, &w);
                        return Err(Errno::ESTALE);
                    }
                    w.fd = Some(fd);
                    w.opens = 1;
                    (fd, self.revalidate(&a))
                }
            }
        } else {
            let (fd, a) = self
                .client
                .open_with_attr(&path, &OpenOptions::read())
                .await
                .map_err(|e| self.fail("open", &path, e))?;
            if a.inode != ino {
                let _ = self.client.close(fd).await;
                return Err(Errno::ESTALE);
            }
            (fd, self.revalidate(&a))
        };
        self.inodes.borrow_mut().opened(ino);
        Ok((self.new_fh(Handle::File { ino, fd, write }), fopen))
    }

    pub async fn create(
        &self,
        parent: u64,
        name: &std::ffi::OsStr,
        mode: u32,
        flags: i32,
    ) -> Res<(FileAttr, u64, FopenFlags)> {
        let name = Self::name(name)?;
        let path = self.child_path(parent, name)?;
        let mode = mode & 0o7777;
        let opts = OpenOptions {
            create: true,
            exclusive: flags & libc::O_EXCL != 0,
            layout: CreateOptions {
                mode,
                ..self.s.layout
            },
            ..self.write_options(flags & libc::O_TRUNC != 0)
        };
        let (fd, mut a) = self
            .client
            .open_with_attr(&path, &opts)
            .await
            .map_err(|e| self.fail("create", &path, e))?;
        if mode == 0 && a.mode != 0 {
            // The server reads 0 as "its default".
            match self.client.set_attr(&path, Some(0), None).await {
                Ok(x) => a = x,
                Err(e) => {
                    let _ = self.client.close(fd).await;
                    return Err(self.fail("chmod", &path, e));
                }
            }
        }
        let ino = a.inode;
        self.inodes
            .borrow_mut()
            .learn(parent, name, ino, Kind::File, true);
        let slot = self.writer(ino);
        let fd = {
            let mut w = slot.lock().await;
            w.opens += 1;
            match w.fd {
                // Opened for writing here meanwhile: share that one.
                Some(shared) => {
                    let _ = self.client.close(fd).await;
                    shared
                }
                None => *w.fd.insert(fd),
            }
        };
        let fopen = self.revalidate(&a);
        self.inodes.borrow_mut().opened(ino);
        let fh = self.new_fh(Handle::File {
            ino,
            fd,
            write: true,
        });
        Ok((self.observed(&a), fh, fopen))
    }

    fn file(&self, fh: u64) -> Res<(u64, Fd, bool)> {
        match self.handles.borrow().get(&fh) {
            Some(Handle::File { ino, fd, write }) => Ok((*ino, *fd, *write)),
            _ => Err(Errno::EBADF),
        }
    }

    /// Reads into a pooled buffer; returns it with the bytes read (fewer
    /// than `size` only at the end of the file). Give the buffer back with
    /// [`Fs::recycle`].
    pub async fn read(&self, fh: u64, offset: u64, size: usize) -> Res<(Vec<u8>, usize)> {
        let (ino, fd, _) = self.file(fh)?;
        let mut buf = self.buffer(size);
        match self.client.pread(fd, offset, &mut buf[..size]).await {
            Ok(n) => Ok((buf, n)),
            Err(e) => {
                self.recycle(buf);
                Err(self.fail("read", &format!("inode {ino}"), e))
            }
        }
    }

    /// Writes `data` at `offset`; returns once the client library has it
    /// durable on W replicas (committed at the next commit point).
    pub async fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Res<u32> {
        let (ino, fd, write) = self.file(fh)?;
        if !write {
            return Err(Errno::EBADF);
        }
        self.client
            .pwrite(fd, offset, data)
            .await
            .map_err(|e| self.fail("write", &format!("inode {ino}"), e))?;
        Ok(data.len() as u32)
    }

    pub async fn fsync(&self, fh: u64) -> Res<()> {
        let (ino, fd, _) = self.file(fh)?;
        self.client
            .fsync(fd)
            .await
            .map_err(|e| self.fail("fsync", &format!("inode {ino}"), e))
    }

    pub async fn release(&self, fh: u64) {
        let Some(Handle::File { ino, fd, write }) = self.handles.borrow_mut().remove(&fh) else {
            return;
        };
        let closing = if write {
            let slot = self.writer(ino);
            let mut w = slot.lock().await;
            w.opens = w.opens.saturating_sub(1);
            let last = if w.opens == 0 { w.fd.take() } else { None };
            self.forget_writer(ino, &w);
            last
        } else {
            Some(fd)
        };
        if let Some(fd) = closing {
            if let Err(e) = self.client.close(fd).await {
                self.fail("close", &format!("inode {ino}"), e);
            }
        }
        let hidden = self.inodes.borrow_mut().released(ino);
        if let Some((parent, name)) = hidden {
            self.remove_hidden(parent, &name).await;
        }
    }

    /// Truncates or extends `ino` through the write handle `fh`, else
    /// through this mount's writer (opened for the call if needed).
    pub(super) async fn truncate(&self, ino: u64, fh: Option<u64>, size: u64) -> Res<Attr> {
        let path = self.path(ino).unwrap_or_else(|_| format!("inode {ino}"));
        let by_handle = fh
            .and_then(|fh| self.file(fh).ok())
            .filter(|(_, _, write)| *write)
            .map(|(_, fd, _)| fd);
        let slot = self.writer(ino);
        let w = slot.lock().await;
        let (fd, temporary) = match by_handle.or(w.fd) {
            Some(fd) => (fd, false),
            None => {
                let (fd, a) = self
                    .client
                    .open_with_attr(&self.path(ino)?, &self.write_options(false))
                    .await
                    .map_err(|e| self.fail("truncate", &path, e))?;
                if a.inode != ino {
                    let _ = self.client.close(fd).await;
                    self.forget_writer(ino, &w);
                    return Err(Errno::ESTALE);
                }
                (fd, true)
            }
        };
        let attr = match self.client.set_len(fd, size).await {
            Ok(()) => self.client.fstat(fd).await,
            Err(e) => Err(e),
        };
        if temporary {
            let _ = self.client.close(fd).await;
        }
        self.forget_writer(ino, &w);
        drop(w);
        attr.map_err(|e| self.fail("truncate", &path, e))
    }
}
