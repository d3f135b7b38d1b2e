//! The narrow I/O interface between a shard and its files: a directory
//! ([`DiskDir`]: create, open, remove, rename, list, sync) and its files
//! ([`DiskFile`]: aligned positional reads and writes, fdatasync, size).
//!
//! Production is [`dma::DmaDir`] with glommio's `DmaFile` itself as the
//! file (O_DIRECT through io_uring): the store is generic over the
//! interface, so this costs no indirection, no boxing and no copy (reads
//! return glommio's own buffers, writes take its DMA buffers). Tests put the
//! simulated disk of [`sim`] behind the same interface, which keeps what was
//! written apart from what is durable and can crash, so crash consistency is
//! tested against lost and torn writes that kill -9 never produces (the page
//! cache survives a killed process).
//!
//! Contract (what the simulated disk enforces and the store may rely on):
//! - positions and lengths of file I/O are multiples of 4 KiB
//!   ([`crate::chunk_file::ALIGN`]); a read past the end of a file is short;
//! - a write is durable only after a later [`DiskFile::fdatasync`] of that
//!   file returned `Ok`; until then a crash may keep it, lose it, or keep
//!   only some of its 512-byte sectors;
//! - a created, removed or renamed entry is durable only after a later
//!   [`DiskDir::sync`] returned `Ok`; until then a crash keeps the entries
//!   as of some earlier moment (directory changes persist in order);
//! - an error of `fdatasync` means nothing about what became durable.

pub(crate) mod dma;
#[cfg(test)]
pub(crate) mod sim;

use glommio::io::DmaBuffer;
use std::io;
use std::ops::Deref;
use std::path::Path;
use std::rc::Rc;

/// A directory of files on one disk (a shard's chunk directory).
pub(crate) trait DiskDir {
    /// Its files.
    type File: DiskFile;

    /// Where it is, for messages.
    fn path(&self) -> &Path;

    /// Opens `name` for reading and writing, creating it empty if it does
    /// not exist.
    async fn create(&self, name: &str) -> io::Result<Self::File>;

    /// Opens the existing file `name` for reading and writing.
    async fn open(&self, name: &str) -> io::Result<Self::File>;

    /// Removes the entry `name` (an open file stays usable).
    fn remove(&self, name: &str) -> io::Result<()>;

    /// Renames `from` to `to`, replacing `to` if it exists.
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;

    /// The names of the directory's files, in no particular order.
    fn list(&self) -> io::Result<Vec<String>>;

    /// Makes every create, remove and rename so far durable.
    fn sync(&self) -> io::Result<()>;
}

/// A file opened through a [`DiskDir`].
pub(crate) trait DiskFile {
    /// The bytes a read returns (glommio's `ReadResult` in production, which
    /// goes to the socket without a copy).
    type Read: Deref<Target = [u8]> + Default;

    /// `len` bytes at `pos` (both 4 KiB aligned); short at the end of file.
    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Self::Read>;

    /// `len` bytes of `read` from `offset` on, without a copy; `None` if
    /// that is out of its range.
    fn slice(read: &Self::Read, offset: usize, len: usize) -> Option<Self::Read>;

    /// Writes all of `buf` at `pos` (4 KiB aligned, as is `buf`'s length).
    async fn write_at(&self, buf: DmaBuffer, pos: u64) -> io::Result<usize>;

    /// Like [`DiskFile::write_at`], leaving the buffer shared with others
    /// (a write payload is also forwarded to the next replica).
    async fn write_rc_at(&self, buf: Rc<DmaBuffer>, pos: u64) -> io::Result<usize>;

    /// Returns once every write to this file completed before the call is
    /// durable, with the file's size.
    async fn fdatasync(&self) -> io::Result<()>;

    /// The file's size in bytes. (The chunk store does not need it; tests
    /// and the per-shard journal the small-write work adds do.)
    #[cfg_attr(not(test), allow(dead_code))]
    async fn size(&self) -> io::Result<u64>;
}
