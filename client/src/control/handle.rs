//! A handle on one open file ([`FileHandle`]): its attributes and chunk
//! records, and for a write handle (which holds the file's write lease) its
//! commits, truncation and reserve capability.

use super::*;

/// An open file on the control server.
pub struct FileHandle {
    pub(super) cap: file_handle::Client,
    /// The server's id of this handle.
    pub guid: [u8; 16],
    /// Attributes when opened.
    pub attr: Attr,
    /// Write handles: the epoch of every chunk version this handle's
    /// writes create (0 for read handles).
    pub write_epoch: u64,
    /// Write handles: the capability nodes mint new chunk ids of this
    /// lease with (see [`FileHandle::reserve_capability`]).
    pub(super) reserve_capability: std::cell::Cell<Option<Capability>>,
    pub(super) _conn: Rc<Conn>,
}

impl std::fmt::Debug for FileHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileHandle")
            .field("guid", &self.guid)
            .field("attr", &self.attr)
            .finish_non_exhaustive()
    }
}

impl FileHandle {
    /// Whether the connection the handle was opened on still runs: a handle
    /// outlives neither its connection nor a control-server restart.
    pub fn is_connected(&self) -> bool {
        !self._conn.task.is_finished()
    }

    /// The file's attributes now.
    pub async fn attr(&self) -> Result<Attr> {
        let reply = self.cap.attr_request().send().promise.await?;
        read_attr(reply.get()?.get_attr()?)
    }

    /// Records of chunks `first..first + count` that exist (holes are
    /// absent), all of them: asks page after page while the server says
    /// it has `more`.
    pub async fn get_chunks(&self, first: u64, count: u32) -> Result<Vec<ChunkRecord>> {
        let end = first.saturating_add(count as u64);
        let mut out = Vec::new();
        let mut at = first;
        loop {
            let (page, more) = self.get_chunk_page(at, (end - at) as u32).await?;
            let last = page.last().map(|r| r.index);
            out.extend(page);
            match last {
                Some(last) if more && last + 1 < end => at = last + 1,
                _ => return Ok(out),
            }
        }
    }

    /// One `getChunks` call: at most 4096 records of chunks `first..first
    /// + count`, and whether the range holds more past the last one.
    pub async fn get_chunk_page(&self, first: u64, count: u32) -> Result<(Vec<ChunkRecord>, bool)> {
        let mut req = self.cap.get_chunks_request();
        req.get().set_first_index(first);
        req.get().set_count(count);
        let reply = req.send().promise.await?;
        let r = reply.get()?;
        let chunks = r
            .get_chunks()?
            .iter()
            .map(read_chunk)
            .collect::<Result<_>>()?;
        Ok((chunks, r.get_more()))
    }

    /// Makes `chunks` visible and sets the file size (write handles);
    /// answers with the replicas the writer should add.
    pub async fn commit_chunks(&self, chunks: &[ChunkRecord], file_size: u64) -> Result<Committed> {
        self.commit_chunks_as(None, chunks, file_size).await
    }

    /// [`FileHandle::commit_chunks`] with request id `id`.
    pub async fn commit_chunks_as(
        &self,
        id: Option<u128>,
        chunks: &[ChunkRecord],
        file_size: u64,
    ) -> Result<Committed> {
        let mut req = self.cap.commit_chunks_request();
        req.get().set_request_id(&id_bytes(id));
        req.get().set_file_size(file_size);
        let mut list = req.get().init_chunks(chunks.len() as u32);
        for (i, c) in chunks.iter().enumerate() {
            fill_chunk(list.reborrow().get(i as u32), c);
        }
        let reply = req.send().promise.await?;
        let r = reply.get()?;
        Ok(Committed {
            attr: read_attr(r.get_attr()?)?,
            repairs: r
                .get_repairs()?
                .iter()
                .map(|h| (h.get_index(), h.get_node_id()))
                .collect(),
        })
    }

    /// Truncates or extends the file (write handles).
    pub async fn set_size(&self, size: u64) -> Result<Attr> {
        self.set_size_as(None, size).await
    }

    /// [`FileHandle::set_size`] with request id `id`.
    pub async fn set_size_as(&self, id: Option<u128>, size: u64) -> Result<Attr> {
        let mut req = self.cap.set_size_request();
        req.get().set_request_id(&id_bytes(id));
        req.get().set_size(size);
        let reply = req.send().promise.await?;
        read_attr(reply.get()?.get_attr()?)
    }

    /// A reserve capability of this write handle's lease with at least
    /// [`CAPABILITY_MARGIN`] left: the one `open` answered, or a renewed
    /// one.
    pub async fn reserve_capability(&self) -> Result<Capability> {
        let now = ringfs_ops::capability::now_ms();
        if let Some(c) = self.reserve_capability.get() {
            if c.expires_ms() > now + CAPABILITY_MARGIN.as_millis() as u64 {
                return Ok(c);
            }
        }
        let reply = self.cap.reserve_capability_request().send().promise.await?;
        let c = Capability::from_wire(reply.get()?.get_capability()?)
            .ok_or_else(|| Error::internal("the server sent a malformed reserve capability"))?;
        self.reserve_capability.set(Some(c));
        Ok(c)
    }

    /// Releases the handle (and its lease) now rather than at drop.
    pub async fn close(self) -> Result<()> {
        self.cap.close_request().send().promise.await?;
        Ok(())
    }
}
