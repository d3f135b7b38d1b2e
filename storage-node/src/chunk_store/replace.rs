//! A replace: a whole chunk installed at once (a copy from another
//! replica, or a repair), written aside, synced and swapped in, so a
//! failure at any point leaves the old replica as it was.

use super::*;
impl<D: DiskDir> ChunkStore<D>
where
    D::File: 'static,
{
    /// Replaces chunk `id` (or creates it, with `create`) by exactly `data`
    /// (a whole chunk: offset 0), whose blocks carry `crcs`, at
    /// `cas.version`, if the replica is at `cas.expected` (the version may
    /// equal the expected one: same content, a damaged replica repaired).
    /// Copy-then-swap: the new chunk is written to a file aside and made
    /// durable; only then, after the `fence`, is it renamed over the old
    /// one. Any failure leaves the old replica untouched.
    pub(crate) async fn replace(
        &self,
        id: ChunkId,
        data: WriteBuf,
        crcs: &[u32],
        cas: Cas,
        create: bool,
        fence: Fence<'_>,
    ) -> Result<ChunkInfo, StoreError> {
        if data.offset != 0 {
            return Err(StoreError::InvalidArgument(
                "a replace writes the whole chunk: offset must be 0".into(),
            ));
        }
        if crcs.len() != blocks(data.len) {
            return Err(StoreError::InvalidArgument(format!(
                "a replace of {} bytes needs {} CRCs, got {}",
                data.len,
                blocks(data.len),
                crcs.len()
            )));
        }
        loop {
            match self.get(id) {
                Some(old) => {
                    let Some(_guards) = quiesce(&old).await else {
                        return Err(StoreError::NotFound(id));
                    };
                    if !self.is_current(&old) {
                        continue;
                    }
                    let current = old.meta.borrow().version;
                    check_cas(id, current, &cas, true)?;
                    let next_seq = old.meta.borrow().seq + 1;
                    return self.swap_in(id, data, crcs, cas, next_seq, fence).await;
                }
                None if !create => return Err(StoreError::NotFound(id)),
                None => {
                    check_cas(id, Version::NONE, &cas, true)?;
                    return self.swap_in(id, data, crcs, cas, 0, fence).await;
                }
            }
        }
    }

    /// The copy-then-swap of [`ChunkStore::replace`], under the old chunk's
    /// write lock if there is one. `seq` picks the header slot.
    async fn swap_in(
        &self,
        id: ChunkId,
        mut data: WriteBuf,
        crcs: &[u32],
        cas: Cas,
        seq: u64,
        fence: Fence<'_>,
    ) -> Result<ChunkInfo, StoreError> {
        let io = StoreError::io(id, "replacing");
        let len = data.len;
        // Bytes past the length up to the block's end are zero on disk.
        let end = (align_up(len, CRC_BLOCK).max(ALIGN)) as usize;
        data.buf.as_bytes_mut()[len as usize..end].fill(0);
        data.buf
            .trim_to_size(align_up(len, ALIGN).max(ALIGN) as usize);
        let meta = ChunkMeta {
            seq,
            version: cas.version,
            length: len,
            crcs: crcs.into(),
        };
        let aside = aside_name(id);
        let _ = self.dir.remove(&aside);
        let file = self.dir.create(&aside).await.map_err(io)?;
        let written = async {
            let (d, h) = futures::join!(
                file.write_at(data.buf, DATA_OFFSET),
                write_header(&file, &meta)
            );
            d?;
            h?;
            failpoint!("chunk_store::before_swap", |_| Err(
                crate::failpoint::injected("chunk_store::before_swap")
            ));
            file.fdatasync().await
        }
        .await;
        if let Err(e) = written.map_err(io).and_then(|()| fence()) {
            let _ = self.dir.remove(&aside);
            return Err(e);
        }
        // The swap: from here on the new chunk is the replica.
        self.dir
            .rename(&aside, &file_name(id))
            .map_err(StoreError::io(id, "swapping the new chunk in"))?;
        let info = ChunkInfo {
            version: meta.version,
            length: meta.length,
        };
        self.chunks
            .borrow_mut()
            .insert(id, Rc::new(Chunk::new(id, file, meta)));
        self.dir
            .sync()
            .map_err(StoreError::io(id, "syncing the directory"))?;
        Ok(info)
    }
}
