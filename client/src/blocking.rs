//! A synchronous wrapper of [`Client`] for simple programs: it owns a
//! current-thread tokio runtime and the `LocalSet` the client lives on, and
//! runs each call to completion. Not `Send`: use it from one thread.
//!
//! Every call blocks until the [`Client`] call of the same name returns and
//! has exactly its guarantees and failure outcomes; see there.

use std::net::SocketAddr;

use tokio::runtime::Runtime;
use tokio::task::LocalSet;

use crate::client::{Client, Fd, OpenOptions, SeekFrom};
use crate::control::{Attr, ClusterMap, CreateOptions};
use crate::error::{Error, Result};

/// A [`Client`] for synchronous code (see the module documentation).
pub struct BlockingClient {
    // Field order: the client (and its local tasks) go before the runtime.
    client: Client,
    local: LocalSet,
    rt: Runtime,
}

impl BlockingClient {
    /// Builds its runtime and connects: [`Client::connect`]. Fails with
    /// [`Error::Internal`] if the runtime cannot be built.
    pub fn connect(control_addr: SocketAddr, cred: &crate::Credential) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::internal_from("building a tokio runtime", e))?;
        let local = LocalSet::new();
        let client = local.block_on(&rt, Client::connect(control_addr, cred))?;
        Ok(Self { client, local, rt })
    }

    fn run<F: std::future::Future>(&self, f: F) -> F::Output {
        self.local.block_on(&self.rt, f)
    }

    /// The async client, for calls this wrapper does not cover.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// [`Client::create`]: creates or truncates `path`, open for writing.
    pub fn create(&self, path: &str, layout: CreateOptions) -> Result<Fd> {
        self.run(self.client.create(path, layout))
    }

    /// [`Client::open`]: opens `path` as `opts` says.
    pub fn open(&self, path: &str, opts: &OpenOptions) -> Result<Fd> {
        self.run(self.client.open(path, opts))
    }

    /// [`Client::read`]: reads at the position and advances it; 0 at end
    /// of file.
    pub fn read(&self, fd: Fd, buf: &mut [u8]) -> Result<usize> {
        self.run(self.client.read(fd, buf))
    }

    /// [`Client::write`]: writes all of `data` at the position, durable and
    /// committed on return; see there for what a failure leaves behind.
    pub fn write(&self, fd: Fd, data: &[u8]) -> Result<usize> {
        self.run(self.client.write(fd, data))
    }

    /// [`Client::pread`]: reads at byte `offset`; short only at end of file.
    pub fn pread(&self, fd: Fd, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.run(self.client.pread(fd, offset, buf))
    }

    /// [`Client::pwrite`]: writes all of `data` at byte `offset`, durable
    /// and committed on return; failures as for [`Client::write`].
    pub fn pwrite(&self, fd: Fd, offset: u64, data: &[u8]) -> Result<usize> {
        self.run(self.client.pwrite(fd, offset, data))
    }

    /// [`Client::seek`]: moves the position (no I/O).
    pub fn seek(&self, fd: Fd, to: SeekFrom) -> Result<u64> {
        self.client.seek(fd, to)
    }

    /// [`Client::fsync`]: nothing to do (writes are durable on return).
    pub fn fsync(&self, fd: Fd) -> Result<()> {
        self.run(self.client.fsync(fd))
    }

    /// [`Client::close`]: releases the descriptor and its write lease.
    pub fn close(&self, fd: Fd) -> Result<()> {
        self.run(self.client.close(fd))
    }

    /// [`Client::stat`]: attributes of `path`.
    pub fn stat(&self, path: &str) -> Result<Attr> {
        self.run(self.client.stat(path))
    }

    /// [`Client::mkdir`]: creates a directory (not retried after a dropped
    /// connection: [`Error::OutcomeUnknown`]).
    pub fn mkdir(&self, path: &str, mode: u32) -> Result<Attr> {
        self.run(self.client.mkdir(path, mode))
    }

    /// [`Client::rmdir`]: removes an empty directory.
    pub fn rmdir(&self, path: &str) -> Result<()> {
        self.run(self.client.rmdir(path))
    }

    /// [`Client::unlink`]: removes a file.
    pub fn unlink(&self, path: &str) -> Result<()> {
        self.run(self.client.unlink(path))
    }

    /// [`Client::rename`]: moves `from` to `to` atomically.
    pub fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.run(self.client.rename(from, to))
    }

    /// [`Client::list`]: the entries of a directory in name order.
    pub fn list(&self, path: &str) -> Result<Vec<(String, Attr)>> {
        self.run(self.client.list(path))
    }

    /// [`Client::cluster_map`]: the cluster map, fetched fresh.
    pub fn cluster_map(&self) -> Result<ClusterMap> {
        self.run(self.client.cluster_map())
    }
}
