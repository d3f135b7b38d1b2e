//! The write path of [`Client`]: `write` and `pwrite`, one try of a write
//! under the descriptor's lease (and again under a new lease after a leader
//! change), and the descriptor's commit points.

use super::*;

impl Client {
    /// Writes all of `data` at the descriptor's position (at the end of the
    /// file for append opens) and advances the position past it; returns
    /// `data.len()`. Several writes (and [`Client::pwrite`]s) may be in
    /// flight through one descriptor: each takes its place (its position,
    /// for appends the end of every write issued before it) when it is
    /// first polled, and they are applied on every replica in that order
    /// (see [`crate::write_pipeline`]).
    ///
    /// When it returns `Ok`, the bytes are durable on at least the file's
    /// write quorum of replicas. Whether it is committed (visible to
    /// readers through the chunk records) when it returns, and what a
    /// reader may see before: docs/client.md, "When a write is visible".
    /// In short: a write that grows the file, creates a chunk, or finds a
    /// replica that did not take it is committed before it returns; an
    /// overwrite inside the file on replicas all in sync is committed at
    /// the descriptor's next commit point ([`Client::fsync`],
    /// [`Client::close`], [`Client::set_len`], or a write that commits),
    /// and readers see its bytes before that (they are in place on every
    /// replica the record lists).
    ///
    /// On failure the position is unchanged (unless a later write moved
    /// it) and the descriptor stays usable. A write issued after the
    /// failed one on the same chunk while it was in flight fails too,
    /// unsent. The file's size and chunk records are as before the call,
    /// except after [`Error::OutcomeUnknown`] (the control connection
    /// dropped while a commit was in flight): then either all of that
    /// commit is applied or none of it. What the storage nodes hold may
    /// differ:
    /// - Chunks the write created are never visible. Their copies are
    ///   deleted when their own chunk write failed; otherwise they stay on
    ///   their nodes as orphans until the control server's garbage
    ///   collection deletes them (after its orphan grace).
    /// - Chunks that already existed are overwritten in place: replicas
    ///   that took the write hold the new bytes (at a higher version),
    ///   others may still hold the old. Until a later write of that range
    ///   succeeds, reads of it may return the old or the new bytes,
    ///   depending on the replica that serves them (never a mix within one
    ///   replica's answer).
    pub async fn write(&self, fd: Fd, data: &[u8]) -> Result<usize> {
        let len = data.len() as u64;
        let (pos, append) = self.with_file_mut(fd, |f| {
            let pos = f.pos;
            if !f.append {
                f.pos = pos.saturating_add(len);
            }
            Ok((pos, f.append))
        })?;
        let at = if append { None } else { Some(pos) };
        let r = self.write_at(fd, at, data).await;
        self.with_file_mut(fd, |f| {
            match &r {
                Ok(end) if append => f.pos = *end,
                Err(_) if !append && f.pos == pos.saturating_add(len) => f.pos = pos,
                _ => {}
            }
            Ok(())
        })?;
        r.map(|_| data.len())
    }

    /// Writes all of `data` at byte `offset` without moving the position;
    /// returns `data.len()`. Writing past the end extends the file (a gap
    /// reads as zeros). What success guarantees and what a failure leaves
    /// behind: as for [`Client::write`].
    pub async fn pwrite(&self, fd: Fd, offset: u64, data: &[u8]) -> Result<usize> {
        self.write_at(fd, Some(offset), data).await?;
        Ok(data.len())
    }

    /// Writes `data` at `offset` (`None`: at the end of file, after every
    /// write issued before); returns the end offset. Commits before
    /// returning only what must be (see [`Client::write`]).
    async fn write_at(&self, fd: Fd, offset: Option<u64>, data: &[u8]) -> Result<u64> {
        let mut v = self.with_file(fd, |f| {
            if !f.write {
                return Err(Error::BadDescriptor(format!(
                    "{fd} is not open for writing"
                )));
            }
            Ok(self.view(f))
        })?;
        if data.is_empty() {
            return Ok(offset.unwrap_or(v.size));
        }
        let mut at = offset;
        let mut again = false;
        loop {
            let writer = v
                .writer
                .clone()
                .ok_or_else(|| Error::BadDescriptor(format!("{fd} is not open for writing")))?;
            let was_connected = v.handle.is_connected();
            let (off, attempt) = self.write_once(fd, &v, &writer, at, data).await;
            let e = match attempt {
                Ok(end) => return Ok(end),
                Err(e) => e,
            };
            at = off.or(at);
            // The chunks may have changed whatever the outcome.
            v.records.borrow_mut().clear();
            let call = || {
                let path = self.path_of(fd).unwrap_or_default();
                format!("write of {} bytes to {path}", data.len())
            };
            // Another call of this descriptor (a commit point) may have
            // taken the lease again meanwhile.
            let current = self.with_file(fd, |f| Ok(f.handle.clone()))?;
            let relet = !Rc::ptr_eq(&current, &v.handle);
            if again || !(relet || Self::lease_lost(&v.handle, &e)) {
                return Err(handle_call_error(&v.handle, was_connected, call(), e));
            }
            // The lease ended with its control server (a leader change).
            // Chunks written under it can no longer be committed (a
            // commit's new chunks carry the handle's epoch), so the whole
            // write is done again under a new lease: writing the same bytes
            // at the same offset twice leaves what writing them once does,
            // and the old chunks, never committed, are garbage.
            if !relet && self.lease_again(fd, v.handle.attr.inode).await.is_err() {
                return Err(handle_call_error(&v.handle, was_connected, call(), e));
            }
            again = true;
            v = self.with_file(fd, |f| Ok(self.view(f)))?;
        }
    }

    /// One try of [`Client::write_at`] with `v`'s lease: takes the write's
    /// place in each chunk's queue at once (the issue order), writes, and
    /// commits if the write needs it (a new chunk, a changed replica set or
    /// length, growth of the file). Returns the offset written at (once
    /// known) and the end offset.
    async fn write_once(
        &self,
        fd: Fd,
        v: &FileView,
        writer: &Rc<Writer>,
        offset: Option<u64>,
        data: &[u8],
    ) -> (Option<u64>, Result<u64>) {
        let cs = v.layout.chunk_size;
        let len = data.len() as u64;
        let Some((offset, turns)) = writer.issue(offset, len, cs, v.size) else {
            let e = Error::InvalidArgument("write past the largest offset".into());
            return (None, Err(e));
        };
        let r = async {
            let _io = v.io.read().await;
            let end = offset + len;
            // Records of the chunks this writer knows nothing of, below the
            // committed size (past it there are none).
            // Also those whose write capability is missing or about to
            // expire: a fetch brings fresh ones (a lease that keeps its
            // records would otherwise write with an expired one).
            let unknown: Vec<u64> = turns
                .iter()
                .map(|(i, _)| *i)
                .filter(|&i| {
                    i * cs < v.size
                        && writer
                            .record(i)
                            .is_none_or(|r| !self.io.may_write(chunk_id(r.chunk_id)))
                })
                .collect();
            if let (Some(&first), Some(&last)) = (unknown.first(), unknown.last()) {
                for r in self.records(&v.handle, first, last).await?.values() {
                    writer.know(r);
                }
            }
            writer.set_reserve_capability(v.handle.reserve_capability().await?);
            let records = self
                .io
                .write_range(&v.layout, offset, data, writer, turns)
                .await?;
            let size = self.with_file(fd, |f| Ok(f.size))?;
            let needs = end > size || records.iter().any(|r| writer.needs_commit(r));
            let gen = writer.acknowledged(&records, end);
            if needs {
                self.commit_point(fd, Some(gen)).await?;
            }
            Ok(end)
        }
        .await;
        (Some(offset), r)
    }

    /// A commit point: commits what this descriptor's writes acknowledged
    /// (through generation `through`, or all of it), unless a commit since
    /// covered it; one commit at a time. Afterwards readers fetching
    /// records see it. On success the descriptor's size is the committed
    /// one; chunks with fewer than R replicas get the replicas the control
    /// server names (best effort).
    pub(super) async fn commit_point(&self, fd: Fd, through: Option<u64>) -> Result<()> {
        let v = self.with_file(fd, |f| Ok(self.view(f)))?;
        let Some(writer) = v.writer.clone() else {
            return Ok(());
        };
        let _commit = writer.commit.lock().await;
        let (gen, records, end) = writer.snapshot();
        if writer.committed_through(through.unwrap_or(gen)) {
            return Ok(());
        }
        let size = self.with_file(fd, |f| Ok(f.size))?.max(end);
        let mut committed = None;
        let mut parts: Vec<&[ChunkRecord]> = records.chunks(COMMIT_PART).collect();
        if parts.is_empty() {
            parts.push(&[]);
        }
        for part in parts {
            // After a leader change: sent again under a new lease, where
            // chunks new under the old one are refused (their writes are
            // done again, see `write_at`) and overwrites are not.
            let call = || {
                let path = self.path_of(fd).unwrap_or_default();
                format!("commit of {} chunks of {path}", part.len())
            };
            let c = self
                .handle_call(fd, &v.handle, call, |h, id| async move {
                    h.commit_chunks_as(Some(id), part, size).await
                })
                .await?;
            committed = Some(c);
        }
        writer.committed(gen, &records);
        v.records.borrow_mut().clear();
        let Some(committed) = committed else {
            return Ok(());
        };
        self.with_file_mut(fd, |f| {
            f.size = f.size.max(committed.attr.size);
            Ok(())
        })?;
        if !committed.repairs.is_empty() {
            // Chunks with fewer than R replicas: this writer adds the nodes
            // the control server named, in step with its own writes. The
            // commit itself is done; this is repair, best effort.
            let added = self
                .io
                .add_replicas(&committed.repairs, &v.layout, &writer)
                .await;
            if !added.is_empty()
                && v.handle
                    .commit_chunks(&added, committed.attr.size)
                    .await
                    .is_ok()
            {
                writer.committed(0, &added);
            }
        }
        Ok(())
    }
}
