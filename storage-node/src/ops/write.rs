//! `write`: a chunk write on this node and its forward to the rest of the
//! chain, concurrently; and the `replace` form of a write, which installs a
//! whole chunk (a copy).
//!
//! A write carries the version it creates and the version the replica must
//! hold (compare-and-set, [`crate::chunk_store::Cas`]), and the writer's
//! CRCs of its payload, which the connection verified already. Every hop
//! decides for itself: the payload goes on to the next hop even when this
//! node refuses it (stale, unauthorized, fenced) or fails to write it, so
//! one bad replica does not cut the chain. The answer says exactly which
//! replicas of the chain hold the write durably (`durableMask`), and is
//! `ok` when they are at least the write quorum, `quorum` when fewer but
//! some, or this node's own error when none.

use super::{store_error_frame, OpError};
use crate::chunk_store::{Cas, Sent, SharedPayload, StoreError, WriteBuf};
use crate::failpoint;
use crate::lock_table::Mode;
use crate::shard::Shard;
use crate::write_order::Ticket;
use futures::channel::oneshot;
use ringfs_schema::frame::{Header, Op, Status};
use std::sync::atomic::Ordering;

/// What the rest of the chain did with a forwarded write.
struct Downstream {
    /// Bit i: chain[i] holds the write durably.
    mask: u16,
    /// Why some did not (empty when all did).
    message: String,
}

impl Shard {
    pub(super) async fn op_write(
        &self,
        h: &Header,
        wb: WriteBuf,
        conn: u64,
        ticket: Option<Ticket>,
    ) -> Result<Header, OpError> {
        self.check_shard(h.chunk_id)?;
        // The connection's writes of the chunk ask its lock, and are
        // admitted, in the order their frames arrived (write_order.rs).
        let (lock_turn, admit_place) = match ticket {
            Some(t) => (Some(t.lock.turn().await), Some(t.admit)),
            None => (None, None),
        };
        if h.replace {
            return self.op_replace(h, wb, conn).await;
        }
        let quorum = if h.write_quorum == 0 {
            h.chain.len() + 1
        } else {
            h.write_quorum as usize
        };
        if quorum > h.chain.len() + 1 {
            return Err(OpError(
                Status::InvalidArgument,
                format!(
                    "writeQuorum {quorum} exceeds the {} replicas of the chain",
                    h.chain.len() + 1
                ),
            ));
        }
        let me = self.node_id.load(Ordering::Acquire);
        // Forwarding to ourselves would wait on the chunk lock we hold. By
        // the hop's address as the cluster map resolves it, not by the
        // node id the request claims.
        let listed_again = h
            .chain
            .iter()
            .any(|hop| hop.node_id == me || self.member_id(&hop.address) == Some(me));
        if me != 0 && listed_again {
            return Err(OpError(
                Status::InvalidArgument,
                format!("the chain lists this node ({me}) again"),
            ));
        }
        let auth = self.request_auth(h, Mode::Write, conn);
        // The request holds its place in the lock queue: the connection's
        // next write of the chunk may ask.
        drop(lock_turn);
        let auth = self.authorized(auth).await;
        let turn = match admit_place {
            Some(p) => Some(p.turn().await),
            None => None,
        };
        // Called once the write is admitted or refused; the turn passes on
        // with `sent`, once the forward's frame is on the wire, so the
        // next hop receives this connection's writes of the chunk in order
        // also when this node refused one without taking the chunk's
        // admission (its lock check failed).
        let forward = |payload: SharedPayload, sent: Sent| self.forward(h, payload, (sent, turn));
        let (local, down) = match auth {
            Err(OpError(status, msg)) => {
                let payload = wb.share();
                let down = forward(payload.clone(), oneshot::channel().0).await;
                payload.recycle();
                (Err(LocalError::Op(status, msg)), down)
            }
            Ok(auth) => {
                failpoint::delay("ops::write::after_authorize").await;
                let create = self.reservations.borrow().get(h.chunk_id).is_some();
                let cas = Cas {
                    expected: h.expected,
                    version: h.version,
                };
                let fence = || self.fence(h.chunk_id, &auth, Mode::Write);
                let (local, down) = self
                    .store
                    .write(h.chunk_id, wb, &h.crcs, cas, create, &fence, forward)
                    .await;
                self.end_auth(h.chunk_id, auth);
                (local.map_err(LocalError::Store), down)
            }
        };
        let mask = u16::from(local.is_ok()) | (down.mask << 1);
        let durable = mask.count_ones() as usize;
        if durable == 0 {
            return Ok(match local {
                Err(LocalError::Store(e)) => store_error_frame(h, e),
                Err(LocalError::Op(status, msg)) => Header::error_to(h, status, msg),
                Ok(_) => unreachable!("a local success counts"),
            });
        }
        let mut r = Header::response_to(h, Status::Ok);
        r.version = h.version;
        r.durable_mask = mask;
        r.durable_replicas = durable as u8;
        if let Ok(info) = &local {
            r.chunk_length = info.length;
        }
        if durable < quorum {
            r.status = Status::Quorum;
            let local_msg = match &local {
                Ok(_) => String::new(),
                Err(e) => format!("this node: {e}; "),
            };
            r.message = format!(
                "write durable on {durable} of {quorum} required replicas: {local_msg}{}",
                down.message
            );
        }
        Ok(r)
    }

    /// A replace: the chunk becomes exactly the payload (see
    /// [`crate::chunk_store::ChunkStore::replace`]). Never chained.
    async fn op_replace(&self, h: &Header, wb: WriteBuf, conn: u64) -> Result<Header, OpError> {
        if !h.chain.is_empty() {
            return Err(OpError(
                Status::InvalidArgument,
                "a replace goes to one replica: no chain".into(),
            ));
        }
        let auth = self.authorize(h, Mode::Write, conn).await?;
        let create = self.reservations.borrow().get(h.chunk_id).is_some();
        let cas = Cas {
            expected: h.expected,
            version: h.version,
        };
        let fence = || self.fence(h.chunk_id, &auth, Mode::Write);
        let r = self
            .store
            .replace(h.chunk_id, wb, &h.crcs, cas, create, &fence)
            .await;
        self.end_auth(h.chunk_id, auth);
        match r {
            Ok(info) => {
                self.bad.borrow_mut().remove(&h.chunk_id);
                let mut r = Header::response_to(h, Status::Ok);
                r.version = info.version;
                r.chunk_length = info.length;
                r.durable_mask = 1;
                r.durable_replicas = 1;
                Ok(r)
            }
            Err(e) => Ok(store_error_frame(h, e)),
        }
    }

    /// Forwards a write to the next hop of its chain, unchanged but for the
    /// chain's tail and the hop's token. `sent` is dropped once the frame is
    /// on the wire (or the forward gave up): a chunk's next write is
    /// forwarded only after that, on the same pooled connection, so the
    /// next hop receives the chunk's writes in this node's order.
    async fn forward<S>(&self, h: &Header, payload: SharedPayload, sent: S) -> Downstream {
        let Some(next) = h.chain.first() else {
            return Downstream {
                mask: 0,
                message: String::new(),
            };
        };
        let failed = |message: String| Downstream { mask: 0, message };
        // Only to a node of the cluster map, whatever address the request
        // names.
        if let Err(OpError(_, why)) = self.member_at(&next.address).await {
            return failed(why);
        }
        let peer = match self.peers.get(&next.address).await {
            Ok(p) => p,
            Err(e) => return failed(e.to_string()),
        };
        let mut fh = Header::request(0, Op::Write);
        fh.chunk_id = h.chunk_id;
        fh.offset = h.offset;
        fh.version = h.version;
        fh.expected = h.expected;
        fh.crcs = h.crcs.clone();
        fh.chain = h.chain[1..].to_vec();
        fh.write_quorum = 0;
        // The writer's capability is for the chunk, not for a node: every
        // hop checks the same one.
        fh.capability = h.capability;
        if next.token.is_present() {
            fh.token = next.token.clone();
        } else {
            fh.implicit_lock = h.implicit_lock;
            fh.client_id = h.client_id;
            fh.timeout_ms = h.timeout_ms;
        }
        // A hung next hop must not hold this chunk's write lock forever;
        // a send cut by the timeout never reuses its connection.
        let timeout = self.cfg.forward_timeout;
        let call = async {
            let reply = peer.send_request(fh, payload.as_bytes()).await;
            drop(sent);
            Ok(match reply {
                Ok(reply) => reply.await,
                Err(e) => Err(e),
            })
        };
        let resp = match glommio::timer::timeout(timeout, call).await {
            Err(_) => {
                return failed(format!(
                    "{} did not answer within {timeout:?}",
                    next.address
                ))
            }
            Ok(Err(e)) => return failed(e.to_string()),
            Ok(Ok((resp, _))) => resp,
        };
        // The next hop answers for itself and the hops after it: at most
        // the chain's length of bits.
        let hops = h.chain.len() as u32;
        let mask = resp.durable_mask & ((1u32 << hops) - 1) as u16;
        let message = match resp.status {
            Status::Ok => String::new(),
            s => format!("{} replied {s:?}: {}", next.address, resp.message),
        };
        Downstream { mask, message }
    }
}

/// Why this node did not apply a write: refused before the store (by the
/// lock), or by the store.
enum LocalError {
    Op(Status, String),
    Store(StoreError),
}

impl std::fmt::Display for LocalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LocalError::Op(s, m) => write!(f, "{s:?}: {m}"),
            LocalError::Store(e) => write!(f, "{e}"),
        }
    }
}
