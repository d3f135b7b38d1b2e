//! Transactions across files: writes to several files that readers see all
//! at once or not at all.
//!
//! [`Client::transaction`] takes the write lease of every file, in byte
//! order of the paths (one global order: two transactions never wait for
//! each other in a cycle), within [`TransactionOptions::lease_wait`] in
//! all. Writes then go to **new chunks only** (shadow copies): no
//! committed record names them, so no reader sees them. A write that
//! covers part of a chunk the file already holds first copies the rest of
//! that chunk into the new one (read-modify-write: one chunk read per
//! chunk first touched in part). [`Transaction::commit`] sends the records
//! and sizes of every file in one `commitTransaction` call, which the
//! control server applies as one mutation: every file or none. The old
//! chunks go to garbage collection as any replaced chunk does; the new
//! chunks of a transaction that never commits are orphans of leases that
//! ended, which garbage collection deletes (docs/client.md,
//! "Transactions across files").
//!
//! Files it creates and files it unlinks are part of the same commit: a
//! missing file (with [`TransactionOptions::create`]) is opened with
//! `openNew`, a write handle on an inode number reserved for it and linked
//! nowhere, and the commit links it; [`Transaction::unlink`] names files
//! the commit removes. Before the commit no reader sees a created file,
//! and every unlinked one is still there.

use std::time::{Duration, Instant};

use ringfs_schema::MAX_CHUNK_SIZE;

use crate::chunk_io::Layout;
use crate::client::Client;
use crate::control::{Attr, CreateOptions, FileHandle, Kind, TransactionPart};
use crate::error::{Error, Result};
use crate::write_pipeline::Writer;

/// Most files in one transaction (the control server's limit).
pub const MAX_TRANSACTION_FILES: usize = 64;
/// Most chunk records one transaction commits (the control server's limit).
pub const MAX_TRANSACTION_RECORDS: usize = 4096;

/// How a transaction takes its files.
#[derive(Clone, Copy, Debug)]
pub struct TransactionOptions {
    /// How long taking every file's write lease may take in all; past it
    /// the transaction gives up with [`Error::Busy`], holding nothing.
    pub lease_wait: Duration,
    /// Create a file that does not exist, with this layout, by the commit
    /// (nobody sees it before; another client creating the path meanwhile
    /// makes the commit fail with [`Error::Exists`]). `None`: a missing
    /// file is [`Error::NotFound`].
    pub create: Option<CreateOptions>,
}

impl Default for TransactionOptions {
    fn default() -> Self {
        Self {
            lease_wait: Duration::from_secs(30),
            create: None,
        }
    }
}

/// Writes to several files, visible all at once at [`Transaction::commit`].
/// Dropping it without a commit aborts it: its leases end with their
/// handles and its new chunks become garbage.
pub struct Transaction<'c> {
    client: &'c Client,
    /// By path, ascending.
    files: Vec<TxFile>,
    /// Files the commit unlinks.
    unlinks: Vec<String>,
}

struct TxFile {
    path: String,
    handle: FileHandle,
    /// The commit creates the file, with this layout (its handle is on a
    /// reserved inode).
    create: Option<CreateOptions>,
    /// Mints new chunks only: it never learns the file's records.
    writer: Writer,
    layout: Layout,
    /// The committed size when the lease was taken: nobody else changes
    /// the file while it is held.
    base_size: u64,
    /// The old content survives below this (the base size, lowered by
    /// truncations of this transaction).
    keep_old: u64,
    /// The size the commit sets.
    size: u64,
}

impl Client {
    /// Starts a transaction on `paths` (1 to [`MAX_TRANSACTION_FILES`]
    /// distinct files): takes their write leases in byte order of the
    /// paths, waiting [`TransactionOptions::lease_wait`] at most in all
    /// (a file to create is checked as an exclusive create and gets a
    /// reserved inode instead). [`Error::Busy`] if a lease was not granted
    /// in time (another writer holds it); then every lease taken is
    /// released: nothing is left behind.
    pub async fn transaction(
        &self,
        paths: &[&str],
        options: TransactionOptions,
    ) -> Result<Transaction<'_>> {
        let mut sorted: Vec<&str> = paths.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != paths.len() || paths.is_empty() || paths.len() > MAX_TRANSACTION_FILES {
            return Err(Error::InvalidArgument(format!(
                "a transaction takes 1 to {MAX_TRANSACTION_FILES} distinct files"
            )));
        }
        let mut tx = Transaction {
            client: self,
            files: Vec::with_capacity(sorted.len()),
            unlinks: Vec::new(),
        };
        let deadline = Instant::now() + options.lease_wait;
        for &path in &sorted {
            match tx.take(path, deadline, options.create).await {
                Ok(f) => tx.files.push(f),
                Err(e) => {
                    // Releases the leases taken so far.
                    let _ = tx.abort().await;
                    return Err(match e {
                        Error::Busy(m) => Error::Busy(format!(
                            "transaction aborted, nothing changed: the write lease of {path} \
                             was not granted within {:?} ({m})",
                            options.lease_wait
                        )),
                        e => e,
                    });
                }
            }
        }
        Ok(tx)
    }
}

impl Transaction<'_> {
    /// The write lease of `path`, waiting until `deadline` at most; with
    /// `create`, a reserved inode if `path` does not exist.
    async fn take(
        &self,
        path: &str,
        deadline: Instant,
        create: Option<CreateOptions>,
    ) -> Result<TxFile> {
        let wait = deadline.saturating_duration_since(Instant::now());
        let cluster = &self.client.cluster;
        let opened = cluster
            .retry(|c| async move { c.open(path, true, wait).await })
            .await;
        let (handle, create) = match (opened, create) {
            (Ok(handle), _) => (handle, None),
            (Err(Error::NotFound(_)), Some(layout)) => {
                let layout = CreateOptions {
                    exclusive: true,
                    ..layout
                };
                let handle = cluster
                    .retry(|c| async move { c.open_new(path, layout).await })
                    .await?;
                (handle, Some(layout))
            }
            (Err(e), _) => return Err(e),
        };
        let attr = handle.attr.clone();
        if attr.kind == Kind::Directory {
            return Err(Error::IsDirectory(path.to_string()));
        }
        if attr.chunk_size as u64 > MAX_CHUNK_SIZE || attr.chunk_size == 0 {
            return Err(Error::InvalidArgument(format!(
                "{path}: chunk size {} is not one this client writes",
                attr.chunk_size
            )));
        }
        Ok(TxFile {
            path: path.to_string(),
            create,
            writer: Writer::new(handle.write_epoch, attr.size),
            layout: Layout {
                chunk_size: attr.chunk_size as u64,
                replication: attr.replication,
                write_quorum: attr.write_quorum,
            },
            base_size: attr.size,
            keep_old: attr.size,
            size: attr.size,
            handle,
        })
    }

    fn file(&mut self, path: &str) -> Result<&mut TxFile> {
        match self.files.binary_search_by(|f| f.path.as_str().cmp(path)) {
            Ok(i) => Ok(&mut self.files[i]),
            Err(_) => Err(Error::InvalidArgument(format!(
                "{path} is not a file of this transaction"
            ))),
        }
    }

    /// The paths of the transaction's files, ascending.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.files.iter().map(|f| f.path.as_str())
    }

    /// Writes `data` at byte `offset` of `path` (a file of the
    /// transaction), into new chunks; past the end extends the file (a gap
    /// reads as zeros). Visible to nobody until the commit; a failed write
    /// leaves the transaction unusable for that file's chunks it touched
    /// (abort it).
    pub async fn write(&mut self, path: &str, offset: u64, data: &[u8]) -> Result<()> {
        let client = self.client;
        let f = self.file(path)?;
        let cs = f.layout.chunk_size;
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or_else(|| Error::InvalidArgument("write past the largest offset".into()))?;
        let mut at = offset;
        while at < end {
            let index = at / cs;
            let start = index * cs;
            let piece_end = end.min(start + cs);
            let piece = &data[(at - offset) as usize..(piece_end - offset) as usize];
            let shadowed = f.writer.record(index).is_some();
            // Old bytes of this chunk the new chunk must carry over.
            let old_end = f.keep_old.min(start + cs);
            if shadowed || old_end <= start {
                f.write_chunk(client, at, piece).await?;
            } else {
                // Read-modify-write: the new chunk holds the old bytes of
                // the chunk it replaces, with this piece laid over them.
                let mut buf = vec![0u8; (old_end.max(piece_end) - start) as usize];
                f.read_old(client, start, &mut buf[..(old_end - start) as usize])
                    .await?;
                buf[(at - start) as usize..(piece_end - start) as usize].copy_from_slice(piece);
                f.write_chunk(client, start, &buf).await?;
            }
            at = piece_end;
        }
        f.size = f.size.max(end);
        Ok(())
    }

    /// Sets the size of `path` to `size` bytes at the commit (truncates or
    /// extends; an extension reads as zeros).
    pub async fn set_len(&mut self, path: &str, size: u64) -> Result<()> {
        let client = self.client;
        let f = self.file(path)?;
        if size >= f.size {
            f.size = size;
            return Ok(());
        }
        let cs = f.layout.chunk_size;
        let index = size / cs;
        // New chunks from the one holding the new end on are cut off. The
        // kept head of that one moves to a fresh chunk, so no byte past the
        // new end survives in a chunk that a later extension would show.
        let head = match f.writer.record(index) {
            Some(rec) if !size.is_multiple_of(cs) => {
                let mut buf = vec![0u8; (size % cs) as usize];
                let records = std::collections::HashMap::from([(index, rec)]);
                client
                    .io
                    .read_range(&records, cs, index * cs, &mut buf, false)
                    .await?;
                Some(buf)
            }
            _ => None,
        };
        f.writer.discard_from(index);
        f.keep_old = f.keep_old.min(size);
        f.size = size;
        if let Some(buf) = head {
            f.write_chunk(client, index * cs, &buf).await?;
        }
        Ok(())
    }

    /// Unlinks `path` at the commit (a file, not one of the transaction's,
    /// named once). Checked by the commit as an unlink: if it is gone by
    /// then, or the caller may not remove it, the whole commit is refused.
    /// Until the commit every reader still sees it.
    pub fn unlink(&mut self, path: &str) -> Result<()> {
        if self.file(path).is_ok() || self.unlinks.iter().any(|p| p == path) {
            return Err(Error::InvalidArgument(format!(
                "{path} is written by this transaction or already unlinked by it"
            )));
        }
        if self.unlinks.len() == MAX_TRANSACTION_FILES {
            return Err(Error::InvalidArgument(format!(
                "a transaction unlinks at most {MAX_TRANSACTION_FILES} files"
            )));
        }
        self.unlinks.push(path.to_string());
        Ok(())
    }

    /// Replaces the whole content of `path` with `data` at the commit.
    pub async fn replace(&mut self, path: &str, data: &[u8]) -> Result<()> {
        self.set_len(path, 0).await?;
        self.write(path, 0, data).await
    }

    /// Commits every file at once: afterwards readers that fetch chunk
    /// records see every write of the transaction, before it none. Answers
    /// the files' attributes, by path ascending. The leases are released
    /// either way. A failure means nothing was applied, except
    /// [`Error::OutcomeUnknown`] (no control server answered again within
    /// the client's reconnect time: look before trying again).
    pub async fn commit(mut self) -> Result<Vec<Attr>> {
        let files = std::mem::take(&mut self.files);
        let snapshots: Vec<_> = files.iter().map(|f| f.writer.snapshot().1).collect();
        let records: usize = snapshots.iter().map(Vec::len).sum();
        if records > MAX_TRANSACTION_RECORDS {
            self.files = files;
            let _ = self.abort().await;
            return Err(Error::InvalidArgument(format!(
                "a transaction commits at most {MAX_TRANSACTION_RECORDS} chunks, not {records}"
            )));
        }
        let parts: Vec<TransactionPart<'_>> = files
            .iter()
            .zip(&snapshots)
            .map(|(f, chunks)| TransactionPart {
                guid: f.handle.guid,
                chunks,
                truncate_to: if f.keep_old < f.base_size {
                    f.keep_old
                } else {
                    u64::MAX
                },
                file_size: f.size,
                create: f.create.map(|o| (f.path.as_str(), o)),
            })
            .collect();
        let unlinks: Vec<&str> = self.unlinks.iter().map(String::as_str).collect();
        #[cfg(feature = "failpoints")]
        fail::fail_point!("client::tx_before_commit");
        let (parts, unlinks) = (&parts, &unlinks);
        // Sent again under the same id after a lost connection: the server
        // answers what the first one did (its handles are gone by then).
        let committed = self
            .client
            .cluster
            .mutate(
                || format!("commit of a transaction on {} files", parts.len()),
                |c, id| async move { c.commit_transaction_as(Some(id), parts, unlinks).await },
            )
            .await;
        for f in &files {
            self.client
                .record_cache(f.handle.attr.inode)
                .borrow_mut()
                .clear();
        }
        for f in files {
            // Best effort: the lease ends with the handle anyway.
            let _ = f.handle.close().await;
        }
        committed
    }

    /// Gives up the transaction: releases its leases. Nothing was
    /// created or unlinked; its new chunks become garbage.
    pub async fn abort(mut self) -> Result<()> {
        let mut first_error = None;
        for f in std::mem::take(&mut self.files) {
            if let Err(e) = f.handle.close().await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl TxFile {
    /// Writes `data` at `offset`, all in one chunk, into the new chunk of
    /// that index (minted at its first write).
    async fn write_chunk(&self, client: &Client, offset: u64, data: &[u8]) -> Result<()> {
        let cs = self.layout.chunk_size;
        let Some((offset, turns)) =
            self.writer
                .issue(Some(offset), data.len() as u64, cs, self.size)
        else {
            return Err(Error::InvalidArgument(
                "write past the largest offset".into(),
            ));
        };
        self.writer
            .set_reserve_capability(self.handle.reserve_capability().await?);
        let records = client
            .io
            .write_range(&self.layout, offset, data, &self.writer, turns)
            .await?;
        self.writer
            .acknowledged(&records, offset + data.len() as u64);
        Ok(())
    }

    /// Reads the committed bytes at `offset` into `buf` (within one chunk).
    async fn read_old(&self, client: &Client, offset: u64, buf: &mut [u8]) -> Result<()> {
        let index = offset / self.layout.chunk_size;
        let records = client.records(&self.handle, index, index).await?;
        client
            .io
            .read_range(&records, self.layout.chunk_size, offset, buf, false)
            .await
    }
}
