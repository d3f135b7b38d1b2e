//! Data-plane connections to storage-node shards ("Data plane" in docs/protocol.md) on
//! tokio.
//!
//! A [`NodeConn`] is one TCP connection to one shard endpoint. Requests are
//! pipelined: every call gets a fresh request id, is written under the
//! connection's write lock, and its response is matched by id by the reader
//! task, in whatever order the node answers. A `lock` answered `wait` stays
//! pending until the node pushes the `lockGranted` frame.
//!
//! Cancel-safe: a send that does not complete (the call's future is dropped
//! mid-frame: its timeout, or a caller that gave up on the write) breaks the
//! connection for good: it is shut down at once, every call pending on it
//! fails, and it is never written to again (the pool opens a new one). So
//! the bytes of a later frame can never complete a cut one, and a node never
//! applies a partial payload.
//!
//! Must run inside a tokio `LocalSet` (the reader is a local task).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

use ringfs_ops::tls::Tls;
use ringfs_ops::transport::{self, Stream};
use ringfs_schema::frame::{check_header_len, decode_header, encode_header, Header, Op, Status};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::oneshot;

use crate::error::{Error, Result};

/// How long connecting to a shard may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A response header and its payload (read data; empty for other ops).
pub type Reply = (Header, Vec<u8>);

/// One connection to one storage-node shard.
pub struct NodeConn {
    addr: String,
    /// The socket, to shut down when a send is cut.
    fd: RawFd,
    writer: tokio::sync::Mutex<WriteHalf<Stream>>,
    pending: Rc<RefCell<HashMap<u64, oneshot::Sender<Result<Reply>>>>>,
    /// Set (to the failure) once the connection failed; every later call
    /// fails with it.
    broken: Rc<RefCell<Option<Error>>>,
    next_id: Cell<u64>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for NodeConn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl NodeConn {
    /// Connects to the shard endpoint `addr` (`ip:port`), over `tls` if
    /// given, within 5 s: [`Error::Timeout`] after that,
    /// [`Error::Unavailable`] (with the I/O error as source) if refused,
    /// [`Error::Unauthenticated`] if the TLS handshake fails.
    pub async fn connect(addr: &str, tls: Option<&Tls>) -> Result<Rc<Self>> {
        let stream = transport::connect(addr, CONNECT_TIMEOUT, tls)
            .await
            .map_err(crate::control::connect_error)?;
        let fd = match &stream {
            Stream::Left(s) => s.as_raw_fd(),
            Stream::Right(s) => s.get_ref().0.as_raw_fd(),
        };
        let (rd, wr) = tokio::io::split(stream);
        let pending: Rc<RefCell<HashMap<u64, oneshot::Sender<Result<Reply>>>>> = Rc::default();
        let broken: Rc<RefCell<Option<Error>>> = Rc::default();
        let reader = tokio::task::spawn_local(read_loop(
            addr.to_string(),
            rd,
            pending.clone(),
            broken.clone(),
        ));
        Ok(Rc::new(Self {
            addr: addr.to_string(),
            fd,
            writer: tokio::sync::Mutex::new(wr),
            pending,
            broken,
            next_id: Cell::new(1),
            reader,
        }))
    }

    /// The shard endpoint.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Whether the connection failed (every call on it fails; the pool
    /// replaces it).
    pub fn is_broken(&self) -> bool {
        self.broken.borrow().is_some()
    }

    /// Requests sent and not yet answered: this client's view of the load.
    pub fn in_flight(&self) -> usize {
        self.pending.borrow().len()
    }

    fn closed_error(&self) -> Error {
        Error::unavailable(format!("storage node {}: connection closed", self.addr))
    }

    /// Sends `h` (its request id and payload length are set here) with
    /// `payload`, and waits up to `timeout` for the final response: for a
    /// `lock` answered `wait`, that is the pushed `lockGranted` frame. A
    /// timeout after the request was sent whole leaves the connection
    /// usable (a late answer is dropped); one that cuts the send breaks it.
    pub async fn call(&self, h: Header, payload: &[u8], timeout: Duration) -> Result<Reply> {
        self.call_then(h, payload, timeout, || {}).await
    }

    /// Like [`NodeConn::call`], running `sent` once the frame is written
    /// whole (or the call failed before that): calls whose `sent` starts
    /// the next call reach the node in that order, which pipelined writes
    /// of one chunk rely on (the node applies them in arrival order).
    pub async fn call_then(
        &self,
        mut h: Header,
        payload: &[u8],
        timeout: Duration,
        sent: impl FnOnce(),
    ) -> Result<Reply> {
        let mut sent = Some(sent);
        let mut sent = move || {
            if let Some(f) = sent.take() {
                f()
            }
        };
        let r = self.call_inner(&mut h, payload, timeout, &mut sent).await;
        sent();
        r
    }

    async fn call_inner(
        &self,
        h: &mut Header,
        payload: &[u8],
        timeout: Duration,
        sent: &mut impl FnMut(),
    ) -> Result<Reply> {
        if let Some(e) = self.broken.borrow().clone() {
            return Err(e);
        }
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        h.request_id = id;
        h.payload_length = u32::try_from(payload.len())
            .map_err(|_| Error::InvalidArgument("payload over 4 GiB".into()))?;
        let (tx, rx) = oneshot::channel();
        self.pending.borrow_mut().insert(id, tx);
        let op = h.op;
        let result = tokio::time::timeout(timeout, async {
            self.send(h, payload).await?;
            sent();
            rx.await.unwrap_or_else(|_| Err(self.closed_error()))
        })
        .await;
        match result {
            Ok(r) => r,
            Err(_) => {
                self.pending.borrow_mut().remove(&id);
                Err(Error::Timeout(format!(
                    "storage node {} did not answer {op:?} within {timeout:?}",
                    self.addr
                )))
            }
        }
    }

    async fn send(&self, h: &Header, payload: &[u8]) -> Result<()> {
        let head = encode_header(h);
        let mut w = self.writer.lock().await;
        // Checked under the writer: a cut send of another call may have
        // broken the connection while this one waited.
        if let Some(e) = self.broken.borrow().clone() {
            return Err(e);
        }
        let mut armed = Armed {
            conn: self,
            done: false,
        };
        let r = async {
            #[cfg(feature = "failpoints")]
            stall_mid_frame(&mut w, &head, payload).await;
            if payload.len() <= 16 * 1024 {
                // One send for small frames.
                let mut frame = head;
                frame.extend_from_slice(payload);
                w.write_all(&frame).await
            } else {
                // Large payloads go straight from the caller's buffer.
                w.write_all(&head).await?;
                w.write_all(payload).await
            }
        }
        .await;
        armed.done = true;
        if let Err(e) = r {
            // A half-written frame loses the framing: the connection is done.
            return Err(self.fail(Error::unavailable_from(
                format!("storage node {}: send failed", self.addr),
                e,
            )));
        }
        Ok(())
    }

    /// Breaks the connection for good: shut down, every pending call
    /// failed with `why`, never written to again.
    fn fail(&self, why: Error) -> Error {
        *self.broken.borrow_mut() = Some(why.clone());
        // SAFETY: `fd` is this connection's socket, open as long as `self`
        // is (its halves live in `self` and its reader task, which `self`
        // aborts only when dropped); shutdown does not close it.
        unsafe { libc::shutdown(self.fd, libc::SHUT_RDWR) };
        for (_, tx) in self.pending.borrow_mut().drain() {
            let _ = tx.send(Err(why.clone()));
        }
        why
    }
}

/// Breaks its connection if dropped before the send it guards completed:
/// the call was cancelled mid-frame.
struct Armed<'a> {
    conn: &'a NodeConn,
    done: bool,
}

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.conn.fail(Error::unavailable(format!(
                "storage node {}: a send was cancelled mid-frame; the connection is not used again",
                self.conn.addr
            )));
        }
    }
}

/// Failpoint `node_conn::stall_send=return(N)` (frames with a payload):
/// writes the first N bytes of the frame, then never finishes, as a send stuck behind a node that
/// stopped reading does; the call's timeout cuts it.
#[cfg(feature = "failpoints")]
async fn stall_mid_frame(w: &mut WriteHalf<Stream>, head: &[u8], payload: &[u8]) {
    // Frames with a payload (writes) only.
    if payload.is_empty() {
        return;
    }
    let Some(Some(at)) = fail::eval("node_conn::stall_send", |a| {
        a.and_then(|a| a.parse::<usize>().ok())
    }) else {
        return;
    };
    let mut frame = head.to_vec();
    frame.extend_from_slice(payload);
    let n = at.min(frame.len().saturating_sub(1));
    let _ = w.write_all(&frame[..n]).await;
    let _ = w.flush().await;
    std::future::pending::<()>().await;
}

async fn read_loop(
    addr: String,
    rd: ReadHalf<Stream>,
    pending: Rc<RefCell<HashMap<u64, oneshot::Sender<Result<Reply>>>>>,
    broken: Rc<RefCell<Option<Error>>>,
) {
    let mut rd = BufReader::with_capacity(64 * 1024, rd);
    let why = loop {
        match read_frame(&addr, &mut rd).await {
            Ok((h, payload)) => {
                // `wait` is an interim answer to a lock: the grant follows.
                if h.op == Op::Lock && h.status == Status::Wait {
                    continue;
                }
                if h.status == Status::Malformed && h.request_id == 0 {
                    break Error::unavailable(format!(
                        "storage node {addr}: node refused a frame as malformed: {}",
                        h.message
                    ));
                }
                if let Some(tx) = pending.borrow_mut().remove(&h.request_id) {
                    let _ = tx.send(Ok((h, payload)));
                }
            }
            Err(e) => break e,
        }
    };
    *broken.borrow_mut() = Some(why.clone());
    for (_, tx) in pending.borrow_mut().drain() {
        let _ = tx.send(Err(why.clone()));
    }
}

/// Most bytes of free payload buffers one client thread keeps.
const PAYLOAD_POOL_BYTES: usize = 256 << 20;

thread_local! {
    /// Payload buffers returned by [`recycle_payload`], per client thread
    /// (the client runs on one thread, so nothing is shared).
    static PAYLOADS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer of exactly `n` bytes: a recycled one if any is large enough,
/// so big reads do not fault in and zero fresh pages every time.
fn take_payload_buffer(n: usize) -> Vec<u8> {
    let reused = PAYLOADS.with(|p| {
        let mut p = p.borrow_mut();
        let i = p
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= n)
            .min_by_key(|(_, b)| b.capacity())?
            .0;
        Some(p.swap_remove(i))
    });
    let mut buf = reused.unwrap_or_default();
    buf.resize(n, 0);
    buf
}

/// Hands a payload back for reuse once its bytes have been consumed.
pub fn recycle_payload(buf: Vec<u8>) {
    if buf.capacity() < 64 * 1024 || buf.capacity() > PAYLOAD_POOL_BYTES {
        return;
    }
    PAYLOADS.with(|p| {
        let mut p = p.borrow_mut();
        let held: usize = p.iter().map(Vec::capacity).sum();
        if held + buf.capacity() <= PAYLOAD_POOL_BYTES {
            p.push(buf);
        }
    });
}

/// Reads one frame from shard `addr`; the payload is read into a buffer of
/// exactly its size. Every failure loses the framing: the connection is
/// done.
async fn read_frame(addr: &str, rd: &mut BufReader<ReadHalf<Stream>>) -> Result<Reply> {
    let failed = |what: &str, e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Error::unavailable(format!("storage node {addr}: connection closed{what}"))
        } else {
            Error::unavailable_from(format!("storage node {addr}: read failed"), e)
        }
    };
    let bad_frame = |e| Error::unavailable_from(format!("storage node {addr}: bad frame"), e);
    let len = rd.read_u32_le().await.map_err(|e| failed("", e))? as usize;
    check_header_len(len).map_err(bad_frame)?;
    let mut head = vec![0u8; len];
    rd.read_exact(&mut head)
        .await
        .map_err(|e| failed(" inside a header", e))?;
    let h = decode_header(&head).map_err(bad_frame)?;
    let n = h.payload_length as usize;
    let mut payload = take_payload_buffer(n);
    rd.read_exact(&mut payload)
        .await
        .map_err(|e| failed(" inside a payload", e))?;
    Ok((h, payload))
}

/// Connections by shard endpoint, reconnected when broken.
#[derive(Default)]
pub struct NodePool {
    conns: RefCell<HashMap<String, Rc<NodeConn>>>,
    /// TLS for every connection, if configured.
    tls: Option<Tls>,
}

impl NodePool {
    /// A pool whose connections use `tls` if given.
    pub fn new(tls: Option<Tls>) -> Self {
        Self {
            conns: RefCell::default(),
            tls,
        }
    }

    /// The connection to `addr`, made (see [`NodeConn::connect`]) if there
    /// is none or the last one broke.
    pub async fn get(&self, addr: &str) -> Result<Rc<NodeConn>> {
        if let Some(c) = self.conns.borrow().get(addr) {
            if !c.is_broken() {
                return Ok(c.clone());
            }
        }
        let c = NodeConn::connect(addr, self.tls.as_ref()).await?;
        self.conns.borrow_mut().insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// Requests in flight to `addr` (0 without a connection).
    pub fn in_flight(&self, addr: &str) -> usize {
        self.conns.borrow().get(addr).map_or(0, |c| c.in_flight())
    }
}

/// The client error for a non-`ok` response status from shard `addr`.
pub fn status_error(h: &Header, addr: &str) -> Error {
    let msg = format!("storage node {addr}: {:?}: {}", h.op, h.message);
    match h.status {
        Status::NotFound => Error::NotFound(msg),
        Status::NoSpace => Error::NoSpace(msg),
        Status::Checksum => Error::Corrupt(msg),
        Status::Timeout => Error::Timeout(msg),
        Status::Busy => Error::Busy(msg),
        Status::Exists => Error::Exists(msg),
        Status::InvalidArgument => Error::InvalidArgument(msg),
        Status::Unavailable | Status::Io | Status::WrongShard => Error::unavailable(msg),
        Status::Quorum => Error::Quorum(msg),
        Status::StaleVersion => Error::StaleVersion(msg),
        Status::PayloadChecksum => Error::Corrupt(msg),
        Status::Denied => Error::PermissionDenied(msg),
        Status::CapabilityExpired => Error::CapabilityExpired(msg),
        _ => Error::internal(msg),
    }
}
