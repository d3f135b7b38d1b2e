//! Directory listings: `readdir` and `readdirplus` read a directory from
//! the control server one page at a time as the kernel advances, so a
//! directory of millions of entries costs one page of memory.
//!
//! Offsets: entry `k` of the listing (0 = ".", 1 = "..", then the names in
//! byte order) is answered with offset `k + 1`, the kernel's cookie for
//! "continue after it". A seek back before the current page lists again
//! from the start.

use std::cell::RefCell;
use std::rc::Rc;

use fuser::{Errno, FileAttr};

use super::fs::{Fs, Handle, Res};
use crate::control::{Attr, Kind};

/// One open directory: a window of its listing.
#[derive(Debug)]
pub struct DirHandle {
    pub ino: u64,
    path: String,
    /// Entries `base..base + window.len()` of the listing (not counting
    /// "." and "..").
    window: Vec<(String, Attr)>,
    base: u64,
    more: bool,
}

/// An entry handed to the kernel.
pub struct DirEntry {
    pub ino: u64,
    /// Offset of the next entry.
    pub next: u64,
    pub name: String,
    pub kind: Kind,
    /// With readdirplus (not for "." and ".."): attributes to hand over.
    pub attr: Option<FileAttr>,
    version: u64,
}

impl DirHandle {
    fn restart(&mut self) {
        self.window.clear();
        self.base = 0;
        self.more = true;
    }
}

impl Fs {
    pub async fn opendir(&self, ino: u64) -> Res<u64> {
        let a = self.stat_ino(ino).await?;
        if a.kind != Kind::Directory {
            return Err(Errno::ENOTDIR);
        }
        let path = self.path(ino)?;
        let h = DirHandle {
            ino,
            path,
            window: Vec::new(),
            base: 0,
            more: true,
        };
        Ok(self.new_fh(Handle::Dir(Rc::new(RefCell::new(h)))))
    }

    pub fn releasedir(&self, fh: u64) {
        self.handles.borrow_mut().remove(&fh);
    }

    /// Entry `i` of the listing (not counting "." and ".."), fetching pages
    /// as needed; `None` past the end.
    async fn listing_entry(&self, h: &RefCell<DirHandle>, i: u64) -> Res<Option<(String, Attr)>> {
        loop {
            let (path, after) = {
                let mut d = h.borrow_mut();
                if i < d.base {
                    d.restart();
                }
                if let Some(e) = d.window.get((i - d.base) as usize) {
                    return Ok(Some(e.clone()));
                }
                if !d.more {
                    return Ok(None);
                }
                let after = d.window.last().map(|(n, _)| n.clone()).unwrap_or_default();
                (d.path.clone(), after)
            };
            let (page, more) = self
                .client
                .control()
                .list_page(&path, &after, 0)
                .await
                .map_err(|e| self.fail("readdir", &path, e))?;
            let mut d = h.borrow_mut();
            d.base += d.window.len() as u64;
            d.window = page;
            d.more = more && !d.window.is_empty();
        }
    }

    /// Entries from offset `offset` on, for as long as `take` accepts them
    /// (it returns false when the kernel's buffer is full). With `plus`,
    /// each named entry carries its attributes and counts as a lookup.
    pub async fn readdir(
        &self,
        fh: u64,
        offset: u64,
        plus: bool,
        mut take: impl FnMut(&DirEntry) -> bool,
    ) -> Res<()> {
        let h = match self.handles.borrow().get(&fh) {
            Some(Handle::Dir(h)) => h.clone(),
            _ => return Err(Errno::EBADF),
        };
        let ino = h.borrow().ino;
        let mut k = offset;
        loop {
            let entry = match k {
                0 => DirEntry {
                    ino,
                    next: 1,
                    name: ".".into(),
                    kind: Kind::Directory,
                    attr: None,
                    version: 0,
                },
                1 => {
                    let parent = self.inodes.borrow().get(ino).map_or(ino, |n| n.parent);
                    DirEntry {
                        ino: parent,
                        next: 2,
                        name: "..".into(),
                        kind: Kind::Directory,
                        attr: None,
                        version: 0,
                    }
                }
                _ => match self.listing_entry(&h, k - 2).await? {
                    None => return Ok(()),
                    Some((name, a)) => DirEntry {
                        ino: a.inode,
                        next: k + 1,
                        kind: a.kind,
                        attr: plus.then(|| self.file_attr(&a)),
                        version: a.version,
                        name,
                    },
                },
            };
            if !take(&entry) {
                return Ok(());
            }
            if plus && entry.attr.is_some() {
                // The kernel now holds a lookup of it.
                let mut t = self.inodes.borrow_mut();
                t.learn(ino, &entry.name, entry.ino, entry.kind, true);
                if let Some(node) = t.get_mut(entry.ino) {
                    node.attr_version = Some(entry.version);
                }
            }
            k += 1;
        }
    }
}
