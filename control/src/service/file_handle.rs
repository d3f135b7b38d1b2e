//! An open file's handle: attributes, chunk records, and for a write handle
//! (which holds the file's write lease and its write epoch) commits and
//! truncation. A commit is answered with the replicas its writer should add
//! (repair of a file being written is the writer's: it orders the copies
//! with its own writes).

use std::cell::Cell;
use std::rc::Rc;
use std::time::Instant;

use capnp::capability::Rc as CapRc;
use ringfs_ops::capability::{self, Lease, Rights, CAPABILITY_LEN};
use ringfs_schema::control_capnp::{chunk_record, file_handle};
use ringfs_schema::read_chunk_id;

use super::convert::{fill_attr, fill_chunk_record, now_ns, read_chunk_record, wire};
use super::session::Session;
use super::MAX_CHUNKS_PER_CALL;
use crate::cluster_state::State;
use crate::error::{ControlError, Result};
use crate::leases::Guid;
use crate::store::{Mutation, Outcome, Request};

/// An open file. Holds the write lease for write handles until closed or
/// dropped (the client disconnected).
pub(super) struct FileHandleImpl {
    pub(super) state: Rc<State>,
    pub(super) guid: Guid,
    pub(super) inode: u64,
    pub(super) write: bool,
    /// The write epoch of this handle's lease (0 for read handles).
    pub(super) epoch: u64,
    pub(super) closed: Cell<bool>,
    /// The session of the connection that opened it: once its user is
    /// removed, the handle's next call is refused and its lease released
    /// (docs/architecture.md, "Authentication and authorization").
    pub(super) session: Rc<Session>,
}

impl FileHandleImpl {
    fn check_open(&self) -> Result<()> {
        if self.closed.get() {
            return Err(ControlError::StaleHandle("the handle is closed".into()));
        }
        if let Err(e) = self.session.principal(&self.state) {
            // Its user was removed: no more chunk records or commits, and
            // other writers need not wait for this connection to end.
            self.release();
            return Err(e);
        }
        Ok(())
    }

    fn check_writer(&self) -> Result<()> {
        self.check_open()?;
        if !self.write {
            return Err(ControlError::NoLease("the file is open for reading".into()));
        }
        if !self.state.leases.borrow().holds(self.inode, &self.guid) {
            return Err(ControlError::NoLease(
                "this handle no longer holds the write lease".into(),
            ));
        }
        Ok(())
    }

    /// The lease this handle's capabilities are bound to (none for a read
    /// handle).
    fn lease(&self) -> Lease {
        if self.write {
            Lease {
                inode: self.inode,
                epoch: self.epoch,
            }
        } else {
            Lease::NONE
        }
    }

    /// A capability for `chunk` of this file: read, and write for a write
    /// handle, bound to its lease.
    fn chunk_capability(&self, chunk: u128) -> [u8; CAPABILITY_LEN] {
        let rights = if self.write {
            Rights::READ_WRITE
        } else {
            Rights::READ
        };
        self.state.capabilities.issue(
            rights,
            chunk.to_be_bytes(),
            self.lease(),
            capability::now_ms() + capability::LIFETIME_MS,
        )
    }

    /// The capability a storage node mints new chunk ids of this lease with.
    pub(super) fn new_reserve_capability(&self) -> [u8; CAPABILITY_LEN] {
        self.state.capabilities.issue(
            Rights::RESERVE,
            [0; 16],
            self.lease(),
            capability::now_ms() + capability::LIFETIME_MS,
        )
    }

    /// See [`check_commit_capabilities`].
    fn check_commit_capabilities(
        &self,
        list: capnp::struct_list::Reader<chunk_record::Owned>,
    ) -> Result<()> {
        check_commit_capabilities(&self.state, self.lease(), list)
    }

    fn release(&self) {
        if !self.closed.replace(true) && self.write {
            self.state
                .leases
                .borrow_mut()
                .release(self.inode, &self.guid);
            // Chunks this lease wrote and did not commit are orphans now.
            self.state.live_epochs.borrow_mut().remove(&self.epoch);
            self.state.write_handles.borrow_mut().remove(&self.guid);
            self.state.rescan.set(true);
        }
    }
}

/// Refuses a commit unless every record carries a capability of `lease`
/// with write on its chunk: one this handle's `getChunks` gave (a chunk of
/// this file), or one a node gave when it minted the chunk under this
/// lease's reserve capability. So a writer cannot commit another file's
/// chunk id (and have it collected with this file). The expiry does not
/// matter here: the lease, checked live, is the scope.
pub(super) fn check_commit_capabilities(
    state: &State,
    lease: Lease,
    list: capnp::struct_list::Reader<chunk_record::Owned>,
) -> Result<()> {
    for r in list.iter() {
        let id = read_chunk_id(r.get_chunk_id()?);
        let refuse = |why: String| {
            ControlError::PermissionDenied(format!(
                "commit of chunk {id:032x} at index {}: {why}",
                r.get_index()
            ))
        };
        let cap = capability::from_wire(r.get_capability()?)
            .map_err(|e| refuse(e.to_string()))?
            .ok_or_else(|| refuse("the record carries no capability".into()))?;
        let claims = state
            .capabilities
            .authenticate(&cap)
            .map_err(|e| refuse(e.to_string()))?;
        if claims.chunk != id.to_be_bytes() {
            return Err(refuse("its capability is for another chunk".into()));
        }
        if !claims.rights.contains(Rights::WRITE) || claims.lease != lease {
            return Err(refuse(
                "its capability is not one of this write lease (a chunk of another file?)".into(),
            ));
        }
    }
    Ok(())
}

/// Notes that `chunks` are being committed now, before the commit becomes
/// visible: the planner must never judge the new records by reports taken
/// before these writes.
pub(super) fn note_committed(state: &State, chunks: &[(u64, crate::records::Chunk)]) {
    let now = Instant::now();
    let mut repair = state.repair.borrow_mut();
    for (_, c) in chunks {
        repair.committed_at.insert(c.id, now);
    }
}

impl FileHandleImpl {
    /// For each committed chunk with fewer than `wanted` replicas, a node
    /// known alive to add; such chunks are left to the writer by the
    /// planner for a while.
    fn repair_hints(
        &self,
        chunks: &[(u64, crate::records::Chunk)],
        wanted: usize,
    ) -> Vec<(u64, u64)> {
        let now = Instant::now();
        let state = &self.state;
        let mut repair = state.repair.borrow_mut();
        let membership = state.membership.borrow();
        let commands = state.commands.borrow();
        let mut hints = Vec::new();
        for (index, c) in chunks {
            if let Some(node) =
                repair.hint_target(c, wanted, &membership, &commands, now, state.alive_within())
            {
                repair.hinted.insert(c.id, now);
                hints.push((*index, node));
            }
        }
        repair
            .hinted
            .retain(|_, t| now.saturating_duration_since(*t) < std::time::Duration::from_secs(60));
        hints
    }
}

impl Drop for FileHandleImpl {
    fn drop(&mut self) {
        self.release();
    }
}

impl file_handle::Server for FileHandleImpl {
    fn attr(
        self: CapRc<Self>,
        _: file_handle::AttrParams,
        mut results: file_handle::AttrResults,
    ) -> impl std::future::Future<Output = Result<(), capnp::Error>> + 'static {
        wire(async move {
            self.check_open()?;
            let a = self.state.store.inode(self.inode)?.ok_or_else(|| {
                ControlError::StaleHandle("the file was removed while open".into())
            })?;
            fill_attr(results.get().init_attr(), self.inode, &a);
            Ok(())
        })
    }

    fn get_chunks(
        self: CapRc<Self>,
        params: file_handle::GetChunksParams,
        mut results: file_handle::GetChunksResults,
    ) -> impl std::future::Future<Output = Result<(), capnp::Error>> + 'static {
        wire(async move {
            self.check_open()?;
            let p = params.get()?;
            // Capped by records, not by indexes, with `more` saying so: a
            // cut answer must not read as holes.
            let (chunks, more) = self.state.store.chunk_page(
                self.inode,
                p.get_first_index(),
                p.get_count() as u64,
                MAX_CHUNKS_PER_CALL as usize,
            )?;
            let mut r = results.get();
            r.set_more(more);
            let mut list = r.init_chunks(chunks.len() as u32);
            for (i, (index, c)) in chunks.iter().enumerate() {
                let mut b = list.reborrow().get(i as u32);
                b.set_capability(&self.chunk_capability(c.id));
                fill_chunk_record(b, *index, c);
            }
            Ok(())
        })
    }

    fn commit_chunks(
        self: CapRc<Self>,
        params: file_handle::CommitChunksParams,
        mut results: file_handle::CommitChunksResults,
    ) -> impl std::future::Future<Output = Result<(), capnp::Error>> + 'static {
        wire(async move {
            self.check_writer()?;
            let p = params.get()?;
            let list = p.get_chunks()?;
            if list.len() > MAX_CHUNKS_PER_CALL {
                return Err(ControlError::InvalidArgument(format!(
                    "at most {MAX_CHUNKS_PER_CALL} chunks per commit"
                )));
            }
            self.check_commit_capabilities(list)?;
            let chunks = list
                .iter()
                .map(read_chunk_record)
                .collect::<Result<Vec<_>>>()?;
            note_committed(&self.state, &chunks);
            let fewest_replicas = chunks.iter().map(|(_, c)| c.replicas.len()).min();
            let m = Mutation::CommitChunks {
                inode: self.inode,
                epoch: self.epoch,
                chunks: chunks.clone(),
                file_size: p.get_file_size(),
                now_ns: now_ns(),
            };
            let request = Request {
                id: super::control_impl::request_id(p.get_request_id())?,
                mutation: m,
            };
            let (ino, a) = match self.state.committer.submit_request(request).await? {
                Outcome::Attr(ino, a) => (ino, a),
                other => return Err(ControlError::Internal(format!("unexpected {other:?}"))),
            };
            let mut r = results.get();
            fill_attr(r.reborrow().init_attr(), ino, &a);
            if fewest_replicas.is_some_and(|n| n < a.replication as usize) {
                // A write that reached fewer than R replicas (W < R, a
                // replica out of step): its writer adds one.
                self.state.rescan.set(true);
                let hints = self.repair_hints(&chunks, a.replication as usize);
                let mut list = r.init_repairs(hints.len() as u32);
                for (i, (index, node)) in hints.iter().enumerate() {
                    let mut h = list.reborrow().get(i as u32);
                    h.set_index(*index);
                    h.set_node_id(*node);
                }
            }
            Ok(())
        })
    }

    fn set_size(
        self: CapRc<Self>,
        params: file_handle::SetSizeParams,
        mut results: file_handle::SetSizeResults,
    ) -> impl std::future::Future<Output = Result<(), capnp::Error>> + 'static {
        wire(async move {
            self.check_writer()?;
            let p = params.get()?;
            let m = Mutation::SetSize {
                inode: self.inode,
                size: p.get_size(),
                now_ns: now_ns(),
            };
            let request = Request {
                id: super::control_impl::request_id(p.get_request_id())?,
                mutation: m,
            };
            match self.state.committer.submit_request(request).await? {
                Outcome::Attr(ino, a) => fill_attr(results.get().init_attr(), ino, &a),
                other => return Err(ControlError::Internal(format!("unexpected {other:?}"))),
            }
            Ok(())
        })
    }

    fn reserve_capability(
        self: CapRc<Self>,
        _: file_handle::ReserveCapabilityParams,
        mut results: file_handle::ReserveCapabilityResults,
    ) -> impl std::future::Future<Output = Result<(), capnp::Error>> + 'static {
        wire(async move {
            self.check_writer()?;
            results.get().set_capability(&self.new_reserve_capability());
            Ok(())
        })
    }

    fn close(
        self: CapRc<Self>,
        _: file_handle::CloseParams,
        _: file_handle::CloseResults,
    ) -> impl std::future::Future<Output = Result<(), capnp::Error>> + 'static {
        self.release();
        std::future::ready(Ok(()))
    }
}
