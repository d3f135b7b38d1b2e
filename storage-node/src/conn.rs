//! One data-plane connection of a shard: reading frames (payloads straight
//! into aligned write buffers), the per-connection bounds on requests and
//! payload bytes in flight, running each request as its own task, and the
//! writer task that sends the answers back, coalesced.
//!
//! Invariants:
//! - at most [`MAX_INFLIGHT`] requests and [`MAX_INFLIGHT_BYTES`] payload
//!   bytes of one connection are in flight; past either the connection is
//!   not read from (TCP back-pressure), so a client cannot pin unbounded
//!   memory;
//! - a malformed frame gets one `malformed` error frame, then the connection
//!   (only that one) closes;
//! - on a drain, a header half read is dropped (it was never acknowledged)
//!   and every request already read is answered before the connection closes.

use crate::chunk_store::WriteBuf;
use crate::ops::OpError;
use crate::shard::{stopped, Shard, StopSignal};
use futures::channel::mpsc;
use futures::io::WriteHalf;
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use glommio::io::ReadResult;
use glommio::net::TcpStream;
use ringfs_schema::frame::{encode_header, Header, Op, Status};
use ringfs_schema::wire::{read_header, skip, WireError};
use std::rc::Rc;
use std::time::Instant;

/// Requests in flight per connection before the node stops reading from it.
const MAX_INFLIGHT: u64 = 256;
/// Payload bytes a connection may have in flight before the node stops
/// reading from it (at least the largest payload).
const MAX_INFLIGHT_BYTES: u64 = 256 << 20;
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
}

impl Outgoing {
    /// A response without payload.
    pub(crate) fn header(header: Header) -> Self {
        Self {
            header,
            payload: Payload::None,
        }
    }
}

/// The payload of a response, sent from its own buffer.
pub(crate) enum Payload {
    None,
    Read(ReadResult),
}

impl Payload {
    fn bytes(&self) -> &[u8] {
        match self {
            Payload::None => &[],
            Payload::Read(r) => r,
        }
    }
}

/// Where a request's task sends its response(s).
pub(crate) type Tx = mpsc::UnboundedSender<Outgoing>;

/// What a request brought besides its header: the filled write buffer of a
/// write, or why its payload was refused (and skipped).
type RequestPayload = Result<Option<WriteBuf>, OpError>;

impl Shard {
    /// Serves one connection until it closes or `stop` (then the requests
    /// already read are answered before it closes).
    pub(crate) async fn serve_conn(self: Rc<Self>, stream: TcpStream, stop: StopSignal) {
        let _ = stream.set_nodelay(true);
        let (rd, wr) = stream.split();
        // Buffered reads: a header costs one syscall for many pipelined
        // frames; payloads larger than the buffer bypass it (read straight
        // into the DMA buffer).
        let mut rd = futures::io::BufReader::with_capacity(READ_BUFFER, rd);
        let (tx, rx) = mpsc::unbounded::<Outgoing>();
        let writer = glommio::spawn_local(write_responses(wr, rx));
        let inflight = Rc::new(glommio::sync::Semaphore::new(MAX_INFLIGHT));
        let inflight_bytes = Rc::new(glommio::sync::Semaphore::new(MAX_INFLIGHT_BYTES));
        loop {
            let next = {
                let stop = std::pin::pin!(stopped(stop.clone()));
                let read = std::pin::pin!(read_header(&mut rd));
                match futures::future::select(stop, read).await {
                    // A header half read is dropped: it was not acknowledged.
                    futures::future::Either::Left(_) => break,
                    futures::future::Either::Right((r, _)) => r,
                }
            };
            let h = match next {
                Ok(h) => h,
                Err(WireError::Frame(e)) => {
                    let mut r = Header::request(0, Op::Lock);
                    r.status = Status::Malformed;
                    r.message = format!("malformed frame, closing the connection: {e}");
                    let _ = tx.unbounded_send(Outgoing::header(r));
                    break;
                }
                Err(_) => break,
            };
            // Bound the payload memory a connection can pin before it is
            // allocated (a payload is at most 64 MiB, below the budget).
            let Ok(bytes_permit) = inflight_bytes
                .clone()
                .acquire_static_permit(h.payload_length as u64)
                .await
            else {
                break;
            };
            let payload = match read_payload(&h, &mut rd).await {
                Ok(p) => p,
                Err(_) => break,
            };
            let Ok(permit) = inflight.clone().acquire_static_permit(1).await else {
                break;
            };
            let me = self.clone();
            let tx = tx.clone();
            glommio::spawn_local(async move {
                me.handle(h, payload, &tx).await;
                drop(permit);
                drop(bytes_permit);
            })
            .detach();
        }
        drop(tx);
        writer.await;
    }

    /// Runs one request and queues its response; records its metrics.
    async fn handle(&self, h: Header, payload: RequestPayload, tx: &Tx) {
        let started = Instant::now();
        let result = match payload {
            Err(e) => Err(e),
            Ok(wb) => self.dispatch(&h, wb, tx).await,
        };
        let out = match result {
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
            (Op::Write, Status::Ok | Status::Quorum) => h.payload_length as u64,
            _ => 0,
        };
        self.cfg
            .metrics
            .record(h.op, status == Status::Ok, started.elapsed(), read, written);
        let _ = tx.unbounded_send(out);
    }
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
/// gone or the socket fails, then closes the write side.
async fn write_responses(mut wr: WriteHalf<TcpStream>, mut rx: mpsc::UnboundedReceiver<Outgoing>) {
    let mut batch = Vec::with_capacity(BATCH_BYTES);
    'conn: while let Some(first) = rx.next().await {
        let mut next = Some(first);
        while let Some(out) = next.take() {
            let payload = out.payload.bytes();
            batch.extend_from_slice(&encode_header(&out.header));
            if payload.len() > SMALL_PAYLOAD {
                if wr.write_all(&batch).await.is_err() || wr.write_all(payload).await.is_err() {
                    break 'conn;
                }
                batch.clear();
            } else {
                batch.extend_from_slice(payload);
            }
            if batch.len() < BATCH_BYTES {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            if wr.write_all(&batch).await.is_err() {
                break;
            }
            batch.clear();
        }
    }
    let _ = wr.close().await;
}
