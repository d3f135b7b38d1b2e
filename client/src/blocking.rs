//! A synchronous wrapper of [`Client`] for simple programs: it owns a
//! current-thread tokio runtime and the `LocalSet` the client lives on, and
//! runs each call to completion. Not `Send`: use it from one thread.

use std::net::SocketAddr;

use tokio::runtime::Runtime;
use tokio::task::LocalSet;

use crate::client::{Client, Fd, OpenOptions, SeekFrom};
use crate::control::{Attr, ClusterMap, CreateOptions};
use crate::error::{Error, Result};

pub struct BlockingClient {
    // Field order: the client (and its local tasks) go before the runtime.
    client: Client,
    local: LocalSet,
    rt: Runtime,
}

impl BlockingClient {
    pub fn connect(control_addr: SocketAddr) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Internal(format!("building a tokio runtime: {e}")))?;
        let local = LocalSet::new();
        let client = local.block_on(&rt, Client::connect(control_addr))?;
        Ok(Self { client, local, rt })
    }

    fn run<F: std::future::Future>(&self, f: F) -> F::Output {
        self.local.block_on(&self.rt, f)
    }

    /// The async client, for calls this wrapper does not cover.
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn create(&self, path: &str, layout: CreateOptions) -> Result<Fd> {
        self.run(self.client.create(path, layout))
    }

    pub fn open(&self, path: &str, opts: &OpenOptions) -> Result<Fd> {
        self.run(self.client.open(path, opts))
    }

    pub fn read(&self, fd: Fd, buf: &mut [u8]) -> Result<usize> {
        self.run(self.client.read(fd, buf))
    }

    pub fn write(&self, fd: Fd, data: &[u8]) -> Result<usize> {
        self.run(self.client.write(fd, data))
    }

    pub fn pread(&self, fd: Fd, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.run(self.client.pread(fd, offset, buf))
    }

    pub fn pwrite(&self, fd: Fd, offset: u64, data: &[u8]) -> Result<usize> {
        self.run(self.client.pwrite(fd, offset, data))
    }

    pub fn seek(&self, fd: Fd, to: SeekFrom) -> Result<u64> {
        self.client.seek(fd, to)
    }

    pub fn fsync(&self, fd: Fd) -> Result<()> {
        self.run(self.client.fsync(fd))
    }

    pub fn close(&self, fd: Fd) -> Result<()> {
        self.run(self.client.close(fd))
    }

    pub fn stat(&self, path: &str) -> Result<Attr> {
        self.run(self.client.stat(path))
    }

    pub fn mkdir(&self, path: &str, mode: u32) -> Result<Attr> {
        self.run(self.client.mkdir(path, mode))
    }

    pub fn rmdir(&self, path: &str) -> Result<()> {
        self.run(self.client.rmdir(path))
    }

    pub fn unlink(&self, path: &str) -> Result<()> {
        self.run(self.client.unlink(path))
    }

    pub fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.run(self.client.rename(from, to))
    }

    pub fn list(&self, path: &str) -> Result<Vec<(String, Attr)>> {
        self.run(self.client.list(path))
    }

    pub fn cluster_map(&self) -> Result<ClusterMap> {
        self.run(self.client.cluster_map())
    }
}
