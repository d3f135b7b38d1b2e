//! A pipelined data-plane client on glommio TCP: used by a node to forward
//! chain writes and copies to other nodes, and by tests. Requests get fresh
//! request ids; responses are matched by id, in any order.
//!
//! Cancel-safe: a send that does not complete (the caller's future is
//! dropped mid-frame, e.g. by a timeout, or the socket fails) breaks the
//! connection for good: it is shut down at once, every request pending on
//! it fails, and it is never written to again (the pool opens a new one).
//! So the bytes of a later frame can never complete a cut one, and a
//! partial payload is never applied.

use crate::conn::Stream;
use futures::channel::oneshot;
use futures::io::{ReadHalf, WriteHalf};
use futures::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use ringfs_ops::capability::{self, CapabilityKeys, Lease, Rights};
use ringfs_ops::tls::Tls;
use ringfs_schema::frame::{encode_header, Header, Op, Status};
use ringfs_schema::ids::ChunkId;
use ringfs_schema::wire::{read_header, write_frame, WireError};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

/// Why a request over a [`Peer`] got no answer.
#[derive(Debug, thiserror::Error, Clone)]
pub enum PeerError {
    /// The connection could not be opened within 5 s: (address, why).
    #[error("cannot connect to {0}: {1}")]
    Connect(String, String),
    /// The connection failed; every request pending on it fails with this,
    /// and so does every later one: (address, why).
    #[error("connection to {0} failed: {1}")]
    Broken(String, String),
}

/// Payloads up to this size are queued and coalesced with other frames.
const SMALL_PAYLOAD: usize = 16 * 1024;

type Reply = Result<(Header, Vec<u8>), PeerError>;

struct Pending {
    /// For `lock` requests answered `wait`: where the `wait` frame goes.
    on_wait: Option<oneshot::Sender<Header>>,
    done: oneshot::Sender<Reply>,
}

/// One connection to a node shard.
pub struct Peer {
    addr: String,
    /// The socket, to shut down when a send is cut.
    fd: RawFd,
    writer: futures::lock::Mutex<WriteHalf<Stream>>,
    /// Encoded small frames waiting for the writer.
    queue: RefCell<Vec<u8>>,
    pending: Rc<RefCell<HashMap<u64, Pending>>>,
    broken: Rc<RefCell<Option<PeerError>>>,
    next_id: Cell<u64>,
    /// Stamps requests sent without a capability ([`Peer::connect_issuing`]).
    issuer: Option<CapabilityKeys>,
    _reader: glommio::task::JoinHandle<()>,
}

impl Peer {
    /// Connects to the shard at `addr` (`ip:port`) in plaintext: see
    /// [`Peer::connect_tls`].
    pub async fn connect(addr: &str) -> Result<Rc<Self>, PeerError> {
        Self::open(addr, None, None).await
    }

    /// Connects to the shard at `addr` (`ip:port`), with `tls` if given
    /// (the node is verified against the cluster CA and `addr`'s host),
    /// giving up after 5 s for the TCP connection and 5 s more for the
    /// handshake. Must run on a glommio executor (the connection is its
    /// TCP).
    pub async fn connect_tls(addr: &str, tls: Option<&Tls>) -> Result<Rc<Self>, PeerError> {
        Self::open(addr, tls, None).await
    }

    /// Like [`Peer::connect`], for a tool that holds the cluster secret
    /// (the bench's node benchmark, tests): every request sent without a
    /// capability gets one issued with `keys` (read and write on its
    /// chunk; a reserve capability for a `reserve` minting an id), as the
    /// control server would hand a client. The node's own connections
    /// never do this: forwards carry the writer's capability.
    pub async fn connect_issuing(addr: &str, keys: CapabilityKeys) -> Result<Rc<Self>, PeerError> {
        Self::open(addr, None, Some(keys)).await
    }

    async fn open(
        addr: &str,
        tls: Option<&Tls>,
        issuer: Option<CapabilityKeys>,
    ) -> Result<Rc<Self>, PeerError> {
        let within = Duration::from_secs(5);
        let failed =
            |e: &dyn std::fmt::Display| PeerError::Connect(addr.to_string(), e.to_string());
        let stream = TcpStream::connect_timeout(addr, within)
            .await
            .map_err(|e| failed(&e))?;
        let _ = stream.set_nodelay(true);
        let fd = stream.as_raw_fd();
        let handshake = async { Ok(ringfs_ops::transport::connect_io(stream, addr, tls).await) };
        let stream = glommio::timer::timeout(within, handshake)
            .await
            .map_err(|e| failed(&e))?
            .map_err(|e| failed(&e))?;
        let (rd, wr) = stream.split();
        let pending: Rc<RefCell<HashMap<u64, Pending>>> = Rc::default();
        let broken: Rc<RefCell<Option<PeerError>>> = Rc::default();
        let rd = futures::io::BufReader::with_capacity(64 * 1024, rd);
        let reader = glommio::spawn_local(Self::read_loop(
            addr.to_string(),
            rd,
            pending.clone(),
            broken.clone(),
        ))
        .detach();
        Ok(Rc::new(Self {
            addr: addr.to_string(),
            fd,
            writer: futures::lock::Mutex::new(wr),
            queue: RefCell::new(Vec::new()),
            pending,
            broken,
            next_id: Cell::new(1),
            issuer,
            _reader: reader,
        }))
    }

    /// Whether the connection failed (a new one is needed).
    pub fn is_broken(&self) -> bool {
        self.broken.borrow().is_some()
    }

    async fn read_loop(
        addr: String,
        mut rd: futures::io::BufReader<ReadHalf<Stream>>,
        pending: Rc<RefCell<HashMap<u64, Pending>>>,
        broken: Rc<RefCell<Option<PeerError>>>,
    ) {
        let err = loop {
            let h = match read_header(&mut rd).await {
                Ok(h) => h,
                Err(e) => break e,
            };
            let mut payload = vec![0u8; h.payload_length as usize];
            if let Err(e) = rd.read_exact(&mut payload).await {
                break WireError::Io(e);
            }
            let mut p = pending.borrow_mut();
            if h.status == Status::Wait && h.op == Op::Lock {
                if let Some(entry) = p.get_mut(&h.request_id) {
                    if let Some(tx) = entry.on_wait.take() {
                        let _ = tx.send(h);
                    }
                }
                continue;
            }
            if let Some(entry) = p.remove(&h.request_id) {
                let _ = entry.done.send(Ok((h, payload)));
            }
        };
        let e = PeerError::Broken(addr, err.to_string());
        *broken.borrow_mut() = Some(e.clone());
        for (_, p) in pending.borrow_mut().drain() {
            let _ = p.done.send(Err(e.clone()));
        }
    }

    fn register(
        &self,
        h: &mut Header,
        on_wait: Option<oneshot::Sender<Header>>,
    ) -> Result<oneshot::Receiver<Reply>, PeerError> {
        if let Some(e) = self.broken.borrow().clone() {
            return Err(e);
        }
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        h.request_id = id;
        let (tx, rx) = oneshot::channel();
        self.pending
            .borrow_mut()
            .insert(id, Pending { on_wait, done: tx });
        Ok(rx)
    }

    /// Writes a frame. Small frames are appended to a shared queue first;
    /// whoever holds the writer next sends everything queued in one go, so
    /// pipelined small requests share sends. A send that fails or is cut
    /// breaks the connection ([`Peer::fail`]).
    async fn send(&self, h: &Header, payload: &[u8]) -> Result<(), PeerError> {
        let small = payload.len() <= SMALL_PAYLOAD;
        if small {
            let mut q = self.queue.borrow_mut();
            q.extend_from_slice(&encode_header(h));
            q.extend_from_slice(payload);
        }
        let mut w = self.writer.lock().await;
        // Checked under the writer: a cut send of another caller may have
        // broken the connection while this one waited.
        if let Some(e) = self.broken.borrow().clone() {
            return Err(e);
        }
        let mut armed = Armed {
            peer: self,
            done: false,
        };
        let r = async {
            let queued = std::mem::take(&mut *self.queue.borrow_mut());
            #[cfg(feature = "failpoints")]
            if let Some(at) = crate::failpoint::value("peer::stall_send") {
                stall_mid_frame(&mut w, &queued, h, payload, small, at).await;
            }
            if !queued.is_empty() {
                w.write_all(&queued).await?;
            }
            if !small {
                write_frame(&mut *w, h, payload).await?;
            }
            w.flush().await?;
            Ok::<(), WireError>(())
        }
        .await;
        armed.done = true;
        // Frames of other callers may have been in the failed send.
        r.map_err(|e| self.fail(e.to_string()))
    }

    /// Closes the connection: shut down now (the node sees it end), every
    /// pending request failed.
    pub fn close(&self) {
        self.fail("closed".into());
    }

    /// Breaks the connection for good: shut down, every pending request
    /// failed, never written to again.
    fn fail(&self, why: String) -> PeerError {
        let e = PeerError::Broken(self.addr.clone(), why);
        *self.broken.borrow_mut() = Some(e.clone());
        // SAFETY: `fd` is this peer's socket, open as long as `self` is
        // (the stream's halves live in `self`); shutdown does not close it.
        unsafe { libc::shutdown(self.fd, libc::SHUT_RDWR) };
        for (_, p) in self.pending.borrow_mut().drain() {
            let _ = p.done.send(Err(e.clone()));
        }
        e
    }

    /// Sends a request (its request id is assigned here; `payload_length` is
    /// set from `payload`) and returns the final response and its payload.
    /// For a `lock` answered `wait`, this is the later `lockGranted` frame.
    pub async fn call(&self, h: Header, payload: &[u8]) -> Reply {
        self.send_request(h, payload).await?.await
    }

    /// [`Peer::call`] in two steps: returns once the request's frame is
    /// written (so requests sent one after the other through this reach
    /// the node in that order), with the future of its response.
    pub(crate) async fn send_request(
        &self,
        mut h: Header,
        payload: &[u8],
    ) -> Result<impl std::future::Future<Output = Reply> + '_, PeerError> {
        h.payload_length = payload.len() as u32;
        self.stamp(&mut h);
        let rx = self.register(&mut h, None)?;
        self.send(&h, payload).await?;
        Ok(async move {
            rx.await.unwrap_or_else(|_| {
                Err(PeerError::Broken(self.addr.clone(), "reader ended".into()))
            })
        })
    }

    /// Gives `h` a capability of the issuer's, if this peer has one and `h`
    /// carries none.
    fn stamp(&self, h: &mut Header) {
        let Some(keys) = &self.issuer else { return };
        if h.capability.is_some() || h.op == Op::Unlock {
            return;
        }
        let rights = if h.op == Op::Reserve && h.chunk_id == ChunkId::default() {
            Rights::RESERVE
        } else {
            Rights::READ_WRITE
        };
        h.capability = Some(keys.issue(
            rights,
            h.chunk_id.to_bytes(),
            Lease::NONE,
            capability::now_ms() + capability::LIFETIME_MS,
        ));
    }

    /// Like [`Peer::call`] for a `lock`, also returning the interim `wait`
    /// frame if there was one.
    pub async fn lock(&self, mut h: Header) -> Result<(Option<Header>, Header), PeerError> {
        h.payload_length = 0;
        self.stamp(&mut h);
        let (wtx, mut wrx) = oneshot::channel();
        let rx = self.register(&mut h, Some(wtx))?;
        self.send(&h, &[]).await?;
        let (fin, _) = rx
            .await
            .unwrap_or_else(|_| Err(PeerError::Broken(self.addr.clone(), "reader ended".into())))?;
        Ok((wrx.try_recv().ok().flatten(), fin))
    }
}

/// Breaks its peer's connection if dropped before the send it guards
/// completed: the future was cancelled mid-frame.
struct Armed<'a> {
    peer: &'a Peer,
    done: bool,
}

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.peer.fail("a send was cancelled mid-frame".into());
        }
    }
}

/// Failpoint `peer::stall_send=return(N)`: writes the first N bytes of what
/// this send would write, then never finishes, as a send stuck behind a
/// peer that stopped reading does; the caller's timeout cuts it.
#[cfg(feature = "failpoints")]
async fn stall_mid_frame(
    w: &mut WriteHalf<Stream>,
    queued: &[u8],
    h: &Header,
    payload: &[u8],
    small: bool,
    at: u64,
) {
    let mut bytes = queued.to_vec();
    if !small {
        bytes.extend_from_slice(&encode_header(h));
        bytes.extend_from_slice(payload);
    }
    let n = (at as usize).min(bytes.len().saturating_sub(1));
    let _ = w.write_all(&bytes[..n]).await;
    let _ = w.flush().await;
    std::future::pending::<()>().await;
}

/// Connections of one shard to other nodes, by address, reconnected when broken.
pub(crate) struct PeerPool {
    peers: RefCell<HashMap<String, Rc<Peer>>>,
    /// TLS for every connection, if configured.
    tls: Option<Tls>,
}

impl PeerPool {
    pub(crate) fn new(tls: Option<Tls>) -> Self {
        Self {
            peers: RefCell::default(),
            tls,
        }
    }

    /// The pooled connection to `addr`, opening a new one if there is none
    /// or it broke.
    pub(crate) async fn get(&self, addr: &str) -> Result<Rc<Peer>, PeerError> {
        if let Some(p) = self.peers.borrow().get(addr) {
            if !p.is_broken() {
                return Ok(p.clone());
            }
        }
        let p = Peer::connect_tls(addr, self.tls.as_ref()).await?;
        self.peers.borrow_mut().insert(addr.to_string(), p.clone());
        Ok(p)
    }

    /// Keeps the connections to the addresses `keep` says, closing the
    /// others (their nodes left the cluster map).
    pub(crate) fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.peers.borrow_mut().retain(|addr, p| {
            let kept = keep(addr);
            if !kept {
                p.close();
            }
            kept
        });
    }
}
