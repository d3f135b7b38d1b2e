//! A simulated disk for crash tests (in the manner of redb's
//! `tests/crash_consistency.rs` and TigerBeetle's `src/testing/storage.zig`):
//! one directory of in-memory files behind the [`crate::disk`] interface
//! that keeps what was written apart from what is durable, and can crash.
//!
//! Model:
//! - every file has a *written* image (what reads see) and a *durable* one;
//!   each 4 KiB sector written since the file's last fdatasync is *dirty*
//!   and remembers every version written to it since then;
//! - `fdatasync` makes the file's written image (content and size) durable;
//! - directory changes (create, remove, rename) are logged; `sync` of the
//!   directory makes them durable;
//! - every `fdatasync` and directory `sync` is a *sync point*, counted
//!   from one. With [`SimDisk::crash_at`]`(n)` the disk loses power when sync
//!   point `n` starts: that sync and every later operation fail with EIO.
//!   [`SimDisk::syncs`] after a run without a crash counts the points (the
//!   probe pass of a crash test);
//! - [`SimDisk::crash_image`] is what a restart finds: the durable image of
//!   every file plus a random subset of its dirty sectors, each either one
//!   of the versions written to it whole or *torn*, each 512-byte piece
//!   from the durable image or any written version independently; the file
//!   size either stays the durable one or becomes the written one; and the
//!   directory as of its last sync plus a random prefix of the changes since.
//!
//! Everything random comes from a seed, so every failure replays exactly.

use super::{DiskDir, DiskFile};
use crate::chunk_file::ALIGN;
use glommio::io::DmaBuffer;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Unit of durability and of the dirty bookkeeping, bytes.
const SECTOR: usize = ALIGN as usize;
/// Unit of a torn write, bytes.
const PIECE: usize = 512;

#[derive(Default)]
struct FileState {
    written: Vec<u8>,
    durable: Vec<u8>,
    /// Sector index -> every version written to it since the last sync,
    /// oldest first.
    dirty: BTreeMap<usize, Vec<Vec<u8>>>,
}

enum DirOp {
    Link(String, u64),
    Unlink(String),
    Rename(String, String),
}

/// What [`SimDisk::crash_image`] did to the dirty sectors, for tests that
/// must not pass vacuously.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CrashStats {
    /// Dirty sectors dropped (the durable content stays).
    pub(crate) lost: u64,
    /// Dirty sectors kept whole, as one of their written versions.
    pub(crate) kept: u64,
    /// Dirty sectors kept torn (mixed 512-byte pieces).
    pub(crate) torn: u64,
}

#[derive(Default)]
struct State {
    files: HashMap<u64, FileState>,
    next_inode: u64,
    names: BTreeMap<String, u64>,
    durable_names: BTreeMap<String, u64>,
    /// Directory changes since the last directory sync, in order.
    dir_log: Vec<DirOp>,
    syncs: u64,
    crash_at: Option<u64>,
    crashed: bool,
}

impl State {
    fn check_alive(&self) -> io::Result<()> {
        if self.crashed {
            Err(io::Error::other("simulated power loss: the disk is gone"))
        } else {
            Ok(())
        }
    }

    /// Counts a sync point; crashes if it is the chosen one.
    fn sync_point(&mut self) -> io::Result<()> {
        self.check_alive()?;
        self.syncs += 1;
        if self.crash_at == Some(self.syncs) {
            self.crashed = true;
            return Err(io::Error::other(format!(
                "simulated power loss at sync point {}",
                self.syncs
            )));
        }
        Ok(())
    }
}

fn check_aligned(pos: u64, len: usize) -> io::Result<()> {
    if !pos.is_multiple_of(ALIGN) || !len.is_multiple_of(SECTOR) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    Ok(())
}

/// A simulated disk holding one directory ([`SimDisk::dir`]).
#[derive(Clone, Default)]
pub(crate) struct SimDisk {
    state: Rc<RefCell<State>>,
}

impl SimDisk {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// The directory, as a [`DiskDir`].
    pub(crate) fn dir(&self) -> SimDir {
        SimDir {
            disk: self.clone(),
            path: PathBuf::from("sim:/shard"),
        }
    }

    /// Loses power when sync point `n` (counted from 1) starts.
    pub(crate) fn crash_at(&self, n: u64) {
        self.state.borrow_mut().crash_at = Some(n);
    }

    /// Sync points reached so far.
    pub(crate) fn syncs(&self) -> u64 {
        self.state.borrow().syncs
    }

    /// Whether the disk lost power.
    pub(crate) fn crashed(&self) -> bool {
        self.state.borrow().crashed
    }

    /// What a restart after a power loss now would find (see the module
    /// doc), chosen by `seed`: a fresh disk, plus what was done to the
    /// dirty sectors.
    pub(crate) fn crash_image(&self, seed: u64) -> (SimDisk, CrashStats) {
        let mut rng = StdRng::seed_from_u64(seed);
        let st = self.state.borrow();
        let mut names = st.durable_names.clone();
        let applied = rng.random_range(0..=st.dir_log.len());
        for op in &st.dir_log[..applied] {
            match op {
                DirOp::Link(name, inode) => {
                    names.insert(name.clone(), *inode);
                }
                DirOp::Unlink(name) => {
                    names.remove(name);
                }
                DirOp::Rename(from, to) => {
                    if let Some(inode) = names.remove(from) {
                        names.insert(to.clone(), inode);
                    }
                }
            }
        }
        let mut stats = CrashStats::default();
        let mut files = HashMap::new();
        // Inodes in name order, so the image depends on the seed only.
        let mut inodes: Vec<u64> = names.values().copied().collect();
        inodes.sort_unstable();
        inodes.dedup();
        for inode in inodes {
            let f = &st.files[&inode];
            let image = crash_file(f, &mut rng, &mut stats);
            files.insert(
                inode,
                FileState {
                    written: image.clone(),
                    durable: image,
                    dirty: BTreeMap::new(),
                },
            );
        }
        let state = State {
            files,
            next_inode: st.next_inode,
            durable_names: names.clone(),
            names,
            ..State::default()
        };
        (
            SimDisk {
                state: Rc::new(RefCell::new(state)),
            },
            stats,
        )
    }
}

/// One file's content after a power loss.
fn crash_file(f: &FileState, rng: &mut StdRng, stats: &mut CrashStats) -> Vec<u8> {
    let len = if f.written.len() != f.durable.len() && rng.random_bool(0.5) {
        f.written.len()
    } else {
        f.durable.len()
    };
    let mut image = f.durable.clone();
    image.resize(len, 0);
    for (&sector, versions) in &f.dirty {
        let at = sector * SECTOR;
        let durable_piece = |p: usize| -> Vec<u8> {
            let mut piece = vec![0u8; PIECE];
            let (s, e) = (at + p * PIECE, at + (p + 1) * PIECE);
            if s < f.durable.len() {
                piece[..e.min(f.durable.len()) - s]
                    .copy_from_slice(&f.durable[s..e.min(f.durable.len())]);
            }
            piece
        };
        let content: Vec<u8> = match rng.random_range(0..3) {
            0 => {
                stats.lost += 1;
                continue;
            }
            1 => {
                stats.kept += 1;
                versions[rng.random_range(0..versions.len())].clone()
            }
            _ => {
                stats.torn += 1;
                (0..SECTOR / PIECE)
                    .flat_map(|p| {
                        let pick = rng.random_range(0..=versions.len());
                        if pick == versions.len() {
                            durable_piece(p)
                        } else {
                            versions[pick][p * PIECE..(p + 1) * PIECE].to_vec()
                        }
                    })
                    .collect()
            }
        };
        if at < image.len() {
            let n = (image.len() - at).min(SECTOR);
            image[at..at + n].copy_from_slice(&content[..n]);
        }
    }
    image
}

/// The simulated disk's directory.
pub(crate) struct SimDir {
    disk: SimDisk,
    path: PathBuf,
}

impl SimDir {
    fn file(&self, inode: u64) -> SimFile {
        SimFile {
            disk: self.disk.clone(),
            inode,
        }
    }
}

impl DiskDir for SimDir {
    type File = SimFile;

    fn path(&self) -> &Path {
        &self.path
    }

    async fn create(&self, name: &str) -> io::Result<SimFile> {
        let mut st = self.disk.state.borrow_mut();
        st.check_alive()?;
        if let Some(&inode) = st.names.get(name) {
            return Ok(self.file(inode));
        }
        st.next_inode += 1;
        let inode = st.next_inode;
        st.files.insert(inode, FileState::default());
        st.names.insert(name.to_string(), inode);
        st.dir_log.push(DirOp::Link(name.to_string(), inode));
        Ok(self.file(inode))
    }

    async fn open(&self, name: &str) -> io::Result<SimFile> {
        let st = self.disk.state.borrow();
        st.check_alive()?;
        match st.names.get(name) {
            Some(&inode) => Ok(self.file(inode)),
            None => Err(io::Error::from(io::ErrorKind::NotFound)),
        }
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        let mut st = self.disk.state.borrow_mut();
        st.check_alive()?;
        st.names
            .remove(name)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        st.dir_log.push(DirOp::Unlink(name.to_string()));
        Ok(())
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut st = self.disk.state.borrow_mut();
        st.check_alive()?;
        let inode = st
            .names
            .remove(from)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        st.names.insert(to.to_string(), inode);
        st.dir_log
            .push(DirOp::Rename(from.to_string(), to.to_string()));
        Ok(())
    }

    fn list(&self) -> io::Result<Vec<String>> {
        let st = self.disk.state.borrow();
        st.check_alive()?;
        Ok(st.names.keys().cloned().collect())
    }

    fn sync(&self) -> io::Result<()> {
        let mut st = self.disk.state.borrow_mut();
        st.sync_point()?;
        st.durable_names = st.names.clone();
        st.dir_log.clear();
        Ok(())
    }
}

/// A file on the simulated disk (its handle stays valid after its name is
/// removed, as an open file does).
pub(crate) struct SimFile {
    disk: SimDisk,
    inode: u64,
}

impl SimFile {
    fn write(&self, bytes: &[u8], pos: u64) -> io::Result<usize> {
        check_aligned(pos, bytes.len())?;
        let mut st = self.disk.state.borrow_mut();
        st.check_alive()?;
        let f = st.files.get_mut(&self.inode).expect("open file");
        let pos = pos as usize;
        if f.written.len() < pos + bytes.len() {
            f.written.resize(pos + bytes.len(), 0);
        }
        f.written[pos..pos + bytes.len()].copy_from_slice(bytes);
        for (i, sector) in bytes.chunks(SECTOR).enumerate() {
            f.dirty
                .entry(pos / SECTOR + i)
                .or_default()
                .push(sector.to_vec());
        }
        Ok(bytes.len())
    }
}

/// The bytes of a read from the simulated disk.
#[derive(Clone, Default)]
pub(crate) struct SimRead {
    bytes: Rc<[u8]>,
    start: usize,
    len: usize,
}

impl Deref for SimRead {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes[self.start..self.start + self.len]
    }
}

impl DiskFile for SimFile {
    type Read = SimRead;

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<SimRead> {
        check_aligned(pos, len)?;
        glommio::executor().yield_now().await;
        let st = self.disk.state.borrow();
        st.check_alive()?;
        let f = &st.files[&self.inode];
        let s = (pos as usize).min(f.written.len());
        let e = (pos as usize + len).min(f.written.len());
        Ok(SimRead {
            bytes: f.written[s..e].into(),
            start: 0,
            len: e - s,
        })
    }

    fn slice(read: &SimRead, offset: usize, len: usize) -> Option<SimRead> {
        (offset.checked_add(len)? <= read.len).then(|| SimRead {
            bytes: read.bytes.clone(),
            start: read.start + offset,
            len,
        })
    }

    async fn write_at(&self, buf: DmaBuffer, pos: u64) -> io::Result<usize> {
        glommio::executor().yield_now().await;
        self.write(buf.as_bytes(), pos)
    }

    async fn write_rc_at(&self, buf: Rc<DmaBuffer>, pos: u64) -> io::Result<usize> {
        glommio::executor().yield_now().await;
        self.write(buf.as_bytes(), pos)
    }

    async fn fdatasync(&self) -> io::Result<()> {
        // A sync takes a while on a real disk: other tasks go on (and
        // issue their writes) before it starts, so the tests see what runs
        // concurrently with a sync, as the store's own writes do (reads
        // and writes yield the same way).
        glommio::executor().yield_now().await;
        let mut st = self.disk.state.borrow_mut();
        st.sync_point()?;
        let f = st.files.get_mut(&self.inode).expect("open file");
        f.durable.clone_from(&f.written);
        f.dirty.clear();
        Ok(())
    }

    async fn size(&self) -> io::Result<u64> {
        let st = self.disk.state.borrow();
        st.check_alive()?;
        Ok(st.files[&self.inode].written.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringfs_tests::on_glommio;

    /// The first four sectors of file `name` on `disk`.
    async fn read_all(disk: &SimDisk, name: &str) -> SimRead {
        let f = disk.dir().open(name).await.unwrap();
        f.read_at(0, 4 * SECTOR).await.unwrap()
    }

    fn buf(byte: u8, len: usize) -> DmaBuffer {
        let mut b = glommio::allocate_dma_buffer(len);
        b.as_bytes_mut().fill(byte);
        b
    }

    /// The model itself: synced data survives every crash image, unsynced
    /// data may or may not, torn sectors mix 512-byte pieces, unsynced
    /// names may vanish, and the same seed gives the same image.
    #[test]
    fn crash_images_keep_what_was_synced_and_vary_the_rest() {
        on_glommio(|| async {
            let disk = SimDisk::new();
            let dir = disk.dir();
            let f = dir.create("a").await.unwrap();
            f.write_at(buf(1, 2 * SECTOR), 0).await.unwrap();
            f.fdatasync().await.unwrap();
            dir.sync().unwrap();
            f.write_at(buf(2, SECTOR), 0).await.unwrap();
            f.write_at(buf(3, SECTOR), SECTOR as u64).await.unwrap();
            f.write_at(buf(4, SECTOR), 2 * SECTOR as u64).await.unwrap();
            let g = dir.create("b").await.unwrap();
            g.write_at(buf(5, SECTOR), 0).await.unwrap();
            g.fdatasync().await.unwrap();
            assert_eq!(disk.syncs(), 3);
            assert_eq!(f.size().await.unwrap(), 3 * SECTOR as u64);

            let mut seen = CrashStats::default();
            let (mut b_kept, mut b_lost) = (false, false);
            for seed in 0..200 {
                let (image, stats) = disk.crash_image(seed);
                let (again, same) = disk.crash_image(seed);
                assert_eq!(stats, same, "seed {seed} replays");
                seen.lost += stats.lost;
                seen.kept += stats.kept;
                seen.torn += stats.torn;
                let d = image.dir();
                let a = read_all(&image, "a").await;
                assert_eq!(*a, *read_all(&again, "a").await, "seed {seed} replays");
                assert!(a.len() == 2 * SECTOR || a.len() == 3 * SECTOR);
                for (s, new) in [(0, 2u8), (1, 3)] {
                    for piece in a[s * SECTOR..(s + 1) * SECTOR].chunks(PIECE) {
                        assert!(piece.iter().all(|&x| x == piece[0]), "seed {seed}");
                        assert!(piece[0] == 1 || piece[0] == new, "seed {seed}");
                    }
                }
                if a.len() == 3 * SECTOR {
                    assert!(a[2 * SECTOR..].iter().all(|&x| x == 0 || x == 4));
                }
                match d.open("b").await {
                    Ok(b) => {
                        b_kept = true;
                        assert_eq!(&*b.read_at(0, SECTOR).await.unwrap(), &[5u8; SECTOR][..]);
                    }
                    Err(_) => b_lost = true,
                }
            }
            assert!(seen.lost > 0 && seen.kept > 0 && seen.torn > 0, "{seen:?}");
            assert!(b_kept && b_lost, "an unsynced name sometimes survives");
        });
    }

    #[test]
    fn a_crash_at_a_sync_point_fails_it_and_everything_after() {
        on_glommio(|| async {
            let disk = SimDisk::new();
            disk.crash_at(2);
            let dir = disk.dir();
            let f = dir.create("a").await.unwrap();
            assert!(f.write_at(buf(1, 100), 0).await.is_err(), "unaligned");
            assert!(f.write_at(buf(1, SECTOR), 512).await.is_err(), "unaligned");
            f.write_at(buf(1, SECTOR), 0).await.unwrap();
            f.fdatasync().await.unwrap();
            f.write_at(buf(2, SECTOR), 0).await.unwrap();
            assert!(f.fdatasync().await.is_err());
            assert!(disk.crashed());
            assert!(f.read_at(0, SECTOR).await.is_err());
            assert!(f.write_at(buf(3, SECTOR), 0).await.is_err());
            assert!(dir.sync().is_err());
        });
    }
}
