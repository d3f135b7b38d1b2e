//! Several writes of one chunk in flight on a node (issue 18): a write
//! whose expected version is the version an earlier write of the chunk
//! creates is admitted as soon as that one is admitted, without waiting for
//! its fdatasync, and goes to the journal right behind it.
//!
//! A chunk's writes pass three points in the order they were admitted:
//! 1. **admission** (under the chunk's `admit` lock, one at a time): the
//!    version check against the *tip* (the version the last admitted write
//!    creates, or the applied one when none is pending), the edge merge,
//!    the fence, and the start of the forward (the lock is held until the
//!    forward's frame is on the wire, so the next replica receives the
//!    chunk's writes in this order too);
//! 2. **reservation** of the journal record, after the previous write's
//!    (a journaled write right away; a direct write after its blocks are
//!    synced): the journal makes records durable as a prefix, so a write
//!    is durable only when every earlier write of its chunk is;
//! 3. **apply** (in-place blocks for a journaled write, then the chunk's
//!    metadata), after the previous write's apply: what reads see and what
//!    the checkpoint writes moves forward one write at a time, and only
//!    over durable writes.
//!
//! A write that fails anywhere fails every later write of its chunk that
//! waits on it (their signals are dropped unsent) and marks the chunk
//! failed; none of them is acknowledged. What a restart keeps is what the
//! journal's replay keeps: a prefix of the records, each applied only on
//! top of its base version, so a later write never survives an earlier one
//! of the same chunk.
//!
//! Reads see the applied metadata only: never a write whose record is not
//! durable.

use super::*;
use futures::channel::oneshot;
use futures::future::{FutureExt, Shared};
use std::cell::Cell;
use std::collections::VecDeque;
use std::ops::Range;

/// Fires once (sent) when a point is passed; dropped unsent when the write
/// failed before it.
type Signal = Shared<oneshot::Receiver<()>>;

/// One admitted write, as later writes of its chunk see it.
pub(super) struct Stage {
    /// The chunk bytes whose blocks the write changes (4 KiB aligned).
    blocks: Range<u64>,
    reserved: Signal,
    applied: Signal,
}

/// A chunk's admitted, unapplied writes.
#[derive(Default)]
pub(super) struct Pipe {
    /// In admission order.
    pending: VecDeque<Rc<Stage>>,
    /// The metadata the last pending write leaves (`None`: none pending).
    tip: Option<Rc<ChunkMeta>>,
}

/// A write's own place in its chunk's pipe: its stage, the signals it
/// fires and the stage before it.
pub(super) struct Staged {
    stage: Rc<Stage>,
    reserved: Cell<Option<oneshot::Sender<()>>>,
    applied: Option<oneshot::Sender<()>>,
    prev: Option<Rc<Stage>>,
    /// The metadata the write leaves (shared with the pipe's tip until a
    /// later write is admitted or this one retires).
    meta: Option<Rc<ChunkMeta>>,
}

impl<F> Chunk<F> {
    /// The chunk as the last admitted write leaves it.
    pub(super) fn tip(&self) -> Rc<ChunkMeta> {
        match &self.pipe.borrow().tip {
            Some(m) => m.clone(),
            None => self.meta.borrow().clone(),
        }
    }

    /// Whether a pending write changes blocks of `range` (chunk bytes).
    pub(super) fn pending_in(&self, range: Range<u64>) -> bool {
        self.pipe
            .borrow()
            .pending
            .iter()
            .any(|s| s.blocks.start < range.end && range.start < s.blocks.end)
    }

    /// Waits until no write of the chunk is pending (the caller holds the
    /// admission lock, so none is added). Whether every one that was
    /// pending applied.
    pub(super) async fn drained(&self) -> bool {
        let mut all = true;
        loop {
            let last = self.pipe.borrow().pending.back().cloned();
            let Some(last) = last else {
                return all;
            };
            all &= last.applied.clone().await.is_ok();
        }
    }

    /// Admits a write changing `blocks` that leaves the chunk as `meta`.
    pub(super) fn stage(&self, blocks: Range<u64>, meta: ChunkMeta) -> Staged {
        let (rtx, rrx) = oneshot::channel();
        let (atx, arx) = oneshot::channel();
        let stage = Rc::new(Stage {
            blocks,
            reserved: rrx.shared(),
            applied: arx.shared(),
        });
        let meta = Rc::new(meta);
        let mut pipe = self.pipe.borrow_mut();
        let prev = pipe.pending.back().cloned();
        pipe.pending.push_back(stage.clone());
        pipe.tip = Some(meta.clone());
        Staged {
            stage,
            reserved: Cell::new(Some(rtx)),
            applied: Some(atx),
            prev,
            meta: Some(meta),
        }
    }

    /// Removes a finished write from the pipe (its signals fire or drop
    /// after this, so whoever they wake sees it gone).
    fn retire(&self, stage: &Rc<Stage>) {
        let mut pipe = self.pipe.borrow_mut();
        pipe.pending.retain(|s| !Rc::ptr_eq(s, stage));
        if pipe.pending.is_empty() {
            pipe.tip = None;
        }
    }
}

impl Staged {
    /// Waits for the previous write's reservation: `false` if it failed.
    async fn prev_reserved(&self) -> bool {
        match &self.prev {
            Some(p) => p.reserved.clone().await.is_ok(),
            None => true,
        }
    }

    /// Waits for the previous write's apply: `false` if it failed.
    async fn prev_applied(&self) -> bool {
        match &self.prev {
            Some(p) => p.applied.clone().await.is_ok(),
            None => true,
        }
    }

    fn reserved(&self) {
        if let Some(tx) = self.reserved.take() {
            let _ = tx.send(());
        }
    }
}

impl<D: DiskDir> ChunkStore<D>
where
    D::File: 'static,
{
    /// Makes an admitted write durable and applies it, in its chunk's
    /// order (see the module doc):
    /// - with its data in the journal: after the previous write's
    ///   reservation the record is reserved and written, and once it is
    ///   durable and the previous write applied, the blocks are written in
    ///   place (not synced: a checkpoint does that before the journal is
    ///   emptied) and the metadata applied; a crash leaves every block old
    ///   (record lost) or replayable (record durable);
    /// - straight to the chunk file (a fresh region past the tip's end):
    ///   the blocks are written and synced (group commit of chunk files)
    ///   while the record with their CRCs is reserved behind the previous
    ///   write's and made durable, and the write applies once both are. A
    ///   crash before both leaves either no record (the region is past the
    ///   recovered length, which recovery clears) or a record whose blocks
    ///   may be torn; the next write of the chunk reserves its record only
    ///   after these blocks are synced, so replay checks the blocks of a
    ///   direct record only when no record of its chunk follows it, and
    ///   keeps it if they verify (`journaled.rs`).
    ///
    /// After a failure (its own, or of the write before it) the chunk
    /// refuses later writes ([`Chunk::failed`]; the journal itself refuses
    /// every append after an error of its own, see `journal.rs`) and the
    /// write is not applied.
    pub(super) async fn pipelined(
        &self,
        chunk: &Rc<Chunk<D::File>>,
        data: &SharedPayload,
        rec: &Record,
        mut staged: Staged,
    ) -> Result<ChunkInfo, StoreError> {
        let id = chunk.id;
        let io = StoreError::io(id, "writing");
        let earlier = || {
            StoreError::Broken(
                id,
                "an earlier write of this chunk, which this one was built on, failed",
            )
        };
        let in_place = || {
            chunk
                .file
                .write_rc_at(data.buf.clone(), DATA_OFFSET + data.io_start)
        };
        let r = async {
            crate::failpoint::delay("chunk_store::slow_persist").await;
            let journaled = rec.flags & FLAG_DATA != 0;
            // The next write of the chunk reserves its record once this
            // one's is reserved and, for a direct write, its blocks are
            // synced: replay trusts a direct record's blocks when a later
            // record of its chunk follows it (`journaled.rs`).
            let waiting = Cell::new(if journaled { 1 } else { 2 });
            let passed = || {
                if waiting.replace(waiting.get() - 1) == 1 {
                    staged.reserved();
                }
            };
            let direct = async {
                if !journaled {
                    in_place().await.map_err(io)?;
                    failpoint!("chunk_store::before_sync", |_| Err(io(
                        crate::failpoint::injected("chunk_store::before_sync")
                    )));
                    self.commit.sync(chunk.file.clone()).await.map_err(io)?;
                    passed();
                }
                Ok(())
            };
            let record = async {
                if !staged.prev_reserved().await {
                    return Err(earlier());
                }
                let slot = self.journal.reserve(rec).map_err(io)?;
                passed();
                let blocks = journaled.then(|| data.buf.clone());
                self.journal.write(slot, rec, blocks).await.map_err(io)
            };
            let (direct, record) = futures::join!(direct, record);
            direct.and(record)?;
            if !staged.prev_applied().await {
                return Err(earlier());
            }
            let _io = chunk
                .io_lock
                .write()
                .await
                .map_err(|_| StoreError::NotFound(id))?;
            if journaled {
                failpoint!("chunk_store::before_apply", |_| Err(io(
                    crate::failpoint::injected("chunk_store::before_apply")
                )));
                in_place().await.map_err(io)?;
            }
            self.dirty.borrow_mut().insert(id, chunk.clone());
            if !journaled && self.unconfirmed.get().is_none() {
                self.unconfirmed.set(Some(std::time::Instant::now()));
            }
            chunk.retire(&staged.stage);
            let meta = staged.meta.take().expect("applied once");
            Ok(apply(chunk, meta))
        }
        .await;
        if r.is_err() {
            chunk.failed.set(true);
        }
        chunk.retire(&staged.stage);
        if r.is_ok() {
            if let Some(tx) = staged.applied.take() {
                let _ = tx.send(());
            }
        }
        r
    }
}
