//! One data-plane connection of a shard: reading frames (payloads straight
//! into aligned write buffers), the bounds on what a connection may hold,
//! running each request as its own task, and the writer task that sends the
//! answers back, coalesced.
//!
//! Invariants:
//! - memory is bounded ([`crate::shard::Limits`]): a request's budget (its
//!   payload, or the response a read will make) is taken from the
//!   connection's and the shard's before its payload is read, and given
//!   back only when its response has been written to the socket; past
//!   either budget, or past the requests a connection may have in flight,
//!   the connection is not read from (TCP back-pressure). A response the
//!   peer does not take within the send timeout closes the connection, so
//!   a peer that stops reading stalls only itself;
//! - a write payload is checked against its CRCs before anything is done
//!   with it: a mismatch is answered `payloadChecksum`, nothing applied;
//! - a malformed frame gets one `malformed` error frame, then the connection
//!   (only that one) closes;
//! - when the connection ends, its explicit locks and lock waiters go with
//!   it ([`crate::lock_table::LockTable::drop_owner`]);
//! - on a drain, a request not yet read whole is dropped (it was never
//!   acknowledged) and every request already read is answered before the
//!   connection closes.

use crate::chunk_store::WriteBuf;
use crate::ops::OpError;
use crate::shard::{stopped, Shard, StopSignal};
use crate::write_order::{Ticket, WriteOrder};
use futures::channel::{mpsc, oneshot};
use futures::io::WriteHalf;
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use glommio::io::ReadResult;
use glommio::net::TcpStream;
use glommio::sync::{Semaphore, StaticPermit};
use ringfs_ops::transport::{accept_io, IoStream, HANDSHAKE_WITHIN};
use ringfs_schema::frame::{encode_header, Header, Op, Status, MAX_PAYLOAD_LEN};
use ringfs_schema::wire::{read_header, skip, WireError};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// A data-plane connection: a glommio socket, plaintext or TLS.
pub(crate) type Stream = IoStream<TcpStream>;

/// Responses are coalesced into sends of up to this many bytes.
const BATCH_BYTES: usize = 256 * 1024;
/// Payloads up to this size are copied into the coalesced send buffer.
const SMALL_PAYLOAD: usize = 16 * 1024;
/// Read buffer per connection, bytes.
const READ_BUFFER: usize = 64 * 1024;

/// A response on its way to the connection's writer.
pub(crate) struct Outgoing {
    pub(crate) header: Header,
    pub(crate) payload: Payload,
    /// The request's budget, given back once this is written.
    budget: Option<Budget>,
}

impl Outgoing {
    /// A response without payload.
    pub(crate) fn header(header: Header) -> Self {
        Self::new(header, Payload::None)
    }

    pub(crate) fn new(header: Header, payload: Payload) -> Self {
        Self {
            header,
            payload,
            budget: None,
        }
    }
}

/// The payload of a response, sent from its own buffer.
pub(crate) enum Payload {
    None,
    Read(ReadResult),
    /// A buffer of the node's own (tests' failpoints only).
    #[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
    Owned(glommio::io::DmaBuffer),
}

impl Payload {
    fn bytes(&self) -> &[u8] {
        match self {
            Payload::None => &[],
            Payload::Read(r) => r,
            Payload::Owned(b) => b.as_bytes(),
        }
    }
}

/// What one request holds of its connection's and its shard's bounds
/// until its response is sent: a request slot and its bytes.
struct Budget {
    _request: StaticPermit,
    _conn_bytes: StaticPermit,
    _shard_bytes: StaticPermit,
}

/// Where a request's task sends its response(s).
pub(crate) type Tx = mpsc::UnboundedSender<Outgoing>;

/// What a request brought besides its header: the filled write buffer of a
/// write, or why its payload was refused (and skipped).
type RequestPayload = Result<Option<WriteBuf>, OpError>;

/// The bytes a request may make the node hold: its payload, or the
/// response a read or a copy will build (whole blocks, so up to two blocks
/// more than asked for).
fn budget_bytes(h: &Header) -> u64 {
    let block = ringfs_schema::crc::CRC_BLOCK;
    match h.op {
        Op::Write => h.payload_length as u64,
        Op::Read => (h.length as u64).min(MAX_PAYLOAD_LEN as u64) + 2 * block,
        Op::CopyTo => MAX_PAYLOAD_LEN as u64,
        _ => 0,
    }
}

/// Counts a shard's open connections while alive.
struct Counted<'a>(&'a Shard);

impl<'a> Counted<'a> {
    fn new(shard: &'a Shard) -> Self {
        shard.connections.set(shard.connections.get() + 1);
        Self(shard)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.connections.set(self.0.connections.get() - 1);
    }
}

impl Shard {
    /// Serves one connection until it closes, its writer fails, or `stop`
    /// (then the requests already read are answered before it closes).
    pub(crate) async fn serve_conn(self: Rc<Self>, stream: TcpStream, stop: StopSignal) {
        let _counted = Counted::new(&self);
        let conn = self.next_conn.get();
        self.next_conn.set(conn + 1);
        let limits = self.cfg.limits;
        let _ = stream.set_nodelay(true);
        let peer = stream.peer_addr().ok();
        // With TLS, nothing but a handshake that proves a certificate of the
        // cluster CA gets this connection read.
        let handshake = async { Ok(accept_io(stream, self.cfg.tls.as_ref()).await) };
        let stream = match glommio::timer::timeout(HANDSHAKE_WITHIN, handshake).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                self.cfg.metrics.tls_refused();
                tracing::debug!(shard = self.cfg.index, ?peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                self.cfg.metrics.tls_refused();
                return;
            }
        };
        let (rd, wr) = stream.split();
        // Buffered reads: a header costs one syscall for many pipelined
        // frames; payloads larger than the buffer bypass it (read straight
        // into the DMA buffer).
        let mut rd = futures::io::BufReader::with_capacity(READ_BUFFER, rd);
        let (tx, rx) = mpsc::unbounded::<Outgoing>();
        let (writer_done, writer_gone) = oneshot::channel::<()>();
        let writer = glommio::spawn_local(async move {
            write_responses(wr, rx, limits.send_timeout).await;
            let _ = writer_done.send(());
        });
        let requests = Rc::new(Semaphore::new(limits.conn_requests));
        let write_order = WriteOrder::default();
        let conn_bytes = Rc::new(Semaphore::new(limits.conn_bytes));
        // The connection ends on a drain or when its writer gave up.
        let stopping = std::pin::pin!(stopped(stop));
        let mut ended = std::pin::pin!(futures::future::select(stopping, writer_gone));
        loop {
            let next = async {
                let h = read_header(&mut rd).await?;
                let bytes = budget_bytes(&h).min(limits.conn_bytes);
                let closed = || WireError::Io(std::io::ErrorKind::BrokenPipe.into());
                let budget = Budget {
                    _request: requests
                        .clone()
                        .acquire_static_permit(1)
                        .await
                        .map_err(|_| closed())?,
                    _conn_bytes: conn_bytes
                        .clone()
                        .acquire_static_permit(bytes)
                        .await
                        .map_err(|_| closed())?,
                    _shard_bytes: self
                        .bytes_in_flight
                        .clone()
                        .acquire_static_permit(bytes)
                        .await
                        .map_err(|_| closed())?,
                };
                let payload = read_payload(&h, &mut rd).await?;
                Ok::<_, WireError>((h, payload, budget))
            };
            let next = match futures::future::select(ended.as_mut(), std::pin::pin!(next)).await {
                // A request not read whole is dropped: it was not acknowledged.
                futures::future::Either::Left(_) => break,
                futures::future::Either::Right((r, _)) => r,
            };
            let (h, payload, budget) = match next {
                Ok(r) => r,
                Err(WireError::Frame(e)) => {
                    let mut r = Header::request(0, Op::Lock);
                    r.status = Status::Malformed;
                    r.message = format!("malformed frame, closing the connection: {e}");
                    let _ = tx.unbounded_send(Outgoing::header(r));
                    break;
                }
                Err(_) => break,
            };
            // In the order the frames arrived, before any task runs.
            let ticket = (h.op == Op::Write).then(|| write_order.ticket(h.chunk_id));
            let me = self.clone();
            let tx = tx.clone();
            glommio::spawn_local(async move {
                me.handle(h, payload, &tx, (conn, ticket), budget).await;
            })
            .detach();
        }
        // Locks follow their holder: what this connection held or waited
        // for goes now, not when a lease lapses.
        let changes = self.locks.borrow_mut().drop_owner(conn, Instant::now());
        self.apply(changes);
        drop(tx);
        let _ = writer.await;
    }

    /// Runs one request and queues its response with the request's budget;
    /// records its metrics.
    async fn handle(
        &self,
        h: Header,
        payload: RequestPayload,
        tx: &Tx,
        (conn, ticket): (u64, Option<Ticket>),
        budget: Budget,
    ) {
        let started = Instant::now();
        let result = match payload {
            Err(e) => Err(e),
            Ok(wb) => match check_crcs(&h, wb.as_ref()) {
                Err(e) => Err(e),
                Ok(()) => self.dispatch(&h, wb, tx, conn, ticket).await,
            },
        };
        let mut out = match result {
            Ok(Some(out)) => out,
            Ok(None) => {
                self.cfg.metrics.record(h.op, true, started.elapsed(), 0, 0);
                return;
            }
            Err(OpError(status, msg)) => Outgoing::header(Header::error_to(&h, status, msg)),
        };
        let status = out.header.status;
        let read = match (h.op, status) {
            (Op::Read, Status::Ok) => out.header.payload_length as u64,
            _ => 0,
        };
        let written = match (h.op, status) {
            (Op::Write, Status::Ok | Status::Quorum) if out.header.durable_mask & 1 == 1 => {
                h.payload_length as u64
            }
            _ => 0,
        };
        self.cfg
            .metrics
            .record(h.op, status == Status::Ok, started.elapsed(), read, written);
        out.budget = Some(budget);
        let _ = tx.unbounded_send(out);
    }
}

/// Checks a write payload against the CRCs its sender computed, before the
/// node does anything with it.
fn check_crcs(h: &Header, wb: Option<&WriteBuf>) -> Result<(), OpError> {
    let Some(wb) = wb else {
        return Ok(());
    };
    ringfs_schema::crc::verify_pieces(wb.offset(), wb.payload(), &h.crcs).map_err(|piece| {
        OpError(
            Status::PayloadChecksum,
            format!(
                "write payload of {} bytes at offset {} does not match its CRCs \
                 ({} sent, piece {piece} differs or is missing): nothing was applied",
                wb.payload().len(),
                wb.offset(),
                h.crcs.len()
            ),
        )
    })
}

/// Reads a request's payload: straight into the aligned write buffer for
/// writes; refused requests have it skipped. The outer error is the
/// connection's (it closes), the inner one the request's.
async fn read_payload<R: futures::AsyncRead + Unpin>(
    h: &Header,
    rd: &mut R,
) -> Result<RequestPayload, WireError> {
    let n = h.payload_length as u64;
    if h.op != Op::Write {
        skip(rd, n).await?;
        return Ok(if n > 0 {
            Err(OpError(
                Status::InvalidArgument,
                format!("{:?} takes no payload", h.op),
            ))
        } else {
            Ok(None)
        });
    }
    match WriteBuf::new(h.offset, n) {
        Ok(mut wb) => {
            rd.read_exact(wb.payload_mut()).await?;
            Ok(Ok(Some(wb)))
        }
        Err(e) => {
            skip(rd, n).await?;
            Ok(Err(e.into()))
        }
    }
}

/// The connection's writer: responses queued while the previous send was in
/// flight go out together (one send for many small frames); large payloads
/// are sent from their buffers without a copy. Ends when every sender is
/// gone, the socket fails, or one send does not complete within
/// `send_timeout` (a peer that stops reading); then closes the write side.
async fn write_responses(
    mut wr: WriteHalf<Stream>,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    send_timeout: Duration,
) {
    let mut batch = Vec::with_capacity(BATCH_BYTES);
    'conn: while let Some(first) = rx.next().await {
        let mut next = Some(first);
        while let Some(out) = next.take() {
            let payload = out.payload.bytes();
            batch.extend_from_slice(&encode_header(&out.header));
            if payload.len() > SMALL_PAYLOAD {
                if !send(&mut wr, &batch, send_timeout).await
                    || !send(&mut wr, payload, send_timeout).await
                {
                    break 'conn;
                }
                batch.clear();
            } else {
                batch.extend_from_slice(payload);
            }
            // Sent (or copied into the batch): its budget goes back.
            drop(out);
            if batch.len() < BATCH_BYTES {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            if !send(&mut wr, &batch, send_timeout).await {
                break;
            }
            batch.clear();
        }
    }
    let _ = wr.close().await;
}

/// Writes all of `bytes`; false if the socket failed or did not take them
/// within `within`.
async fn send(wr: &mut WriteHalf<Stream>, bytes: &[u8], within: Duration) -> bool {
    glommio::timer::timeout(within, async { Ok(wr.write_all(bytes).await.is_ok()) })
        .await
        .unwrap_or(false)
}
