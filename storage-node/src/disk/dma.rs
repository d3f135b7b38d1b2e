//! Production disk I/O: glommio DMA files (O_DIRECT through io_uring) in a
//! real directory. Every method is the glommio call itself; the directory
//! operations are the plain system calls (they are rare: chunk creation,
//! deletion and recovery).

use super::{DiskDir, DiskFile};
use crate::chunk_file::ALIGN;
use glommio::io::{DmaBuffer, DmaFile, OpenOptions, ReadResult};
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// A real directory whose files are opened with O_DIRECT.
pub(crate) struct DmaDir {
    path: PathBuf,
}

impl DmaDir {
    /// Opens (creating it if needed) the directory `path`.
    pub(crate) async fn open(path: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(path)?;
        probe_iopoll(path).await?;
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    async fn open_rw(&self, name: &str, create: bool) -> io::Result<DmaFile> {
        let path = self.path.join(name);
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .dma_open(&path)
            .await
            .map_err(|e| io::Error::other(format!("{}: {e}", path.display())))
    }
}

/// glommio decides once per device whether O_DIRECT reads may use the
/// io_uring poll ring, by reading the first block of the first DmaFile opened
/// there. If that file is empty the probe read "succeeds" at EOF and every
/// later read on a device without iopoll fails with EOPNOTSUPP. Opening a
/// file that has a full block first makes the probe see the real answer.
async fn probe_iopoll(dir: &Path) -> io::Result<()> {
    let path = dir.join(".iopoll-probe");
    std::fs::write(&path, [0u8; ALIGN as usize])?;
    let f = DmaFile::open(&path).await?;
    let _ = f.close().await;
    let _ = std::fs::remove_file(&path);
    Ok(())
}

impl DiskDir for DmaDir {
    type File = DmaFile;

    fn path(&self) -> &Path {
        &self.path
    }

    async fn create(&self, name: &str) -> io::Result<DmaFile> {
        self.open_rw(name, true).await
    }

    async fn open(&self, name: &str) -> io::Result<DmaFile> {
        self.open_rw(name, false).await
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        std::fs::remove_file(self.path.join(name))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        std::fs::rename(self.path.join(from), self.path.join(to))
    }

    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.path)? {
            // Names that are not UTF-8 are none of ours.
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn sync(&self) -> io::Result<()> {
        std::fs::File::open(&self.path)?.sync_all()
    }
}

impl DiskFile for DmaFile {
    type Read = ReadResult;

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<ReadResult> {
        Ok(self.read_at_aligned(pos, len).await?)
    }

    fn slice(read: &ReadResult, offset: usize, len: usize) -> Option<ReadResult> {
        ReadResult::slice(read, offset, len)
    }

    async fn write_at(&self, buf: DmaBuffer, pos: u64) -> io::Result<usize> {
        Ok(DmaFile::write_at(self, buf, pos).await?)
    }

    async fn write_rc_at(&self, buf: Rc<DmaBuffer>, pos: u64) -> io::Result<usize> {
        Ok(DmaFile::write_rc_at(self, buf, pos).await?)
    }

    async fn fdatasync(&self) -> io::Result<()> {
        Ok(DmaFile::fdatasync(self).await?)
    }

    async fn size(&self) -> io::Result<u64> {
        Ok(self.file_size().await?)
    }
}
