//! One shard: a glommio executor pinned to a core that owns a slice of the
//! chunks (`ChunkId::shard`), their directory, lock table, reservations and
//! its own TCP listener. Nothing here is shared with other shards; the
//! control-plane thread talks to a shard only through [`ShardCommand`]s.

use crate::chunk_store::{ChunkStore, SharedPayload, StoreError, WriteBuf};
use crate::frame::encode_header;
use crate::frame::{Header, LockMode, Op, Status, Token};
use crate::ids::ChunkId;
use crate::lock_table::{Acquire, Changes, Grant, LockError, LockTable, Mode};
use crate::peer::PeerPool;
use crate::reservations::{IdMinter, Reservation, Reservations};
use crate::token::TokenKey;
use crate::wire::{read_header, skip, WireError};
use futures::channel::{mpsc, oneshot};
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use glommio::io::ReadResult;
use glommio::net::{TcpListener, TcpStream};
use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Requests in flight per connection before the node stops reading from it.
const MAX_INFLIGHT: u64 = 256;
/// How long a chain hop may take to acknowledge a forwarded write.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);
/// Responses are coalesced into sends of up to this many bytes.
const BATCH_BYTES: usize = 256 * 1024;
/// Payloads up to this size are copied into the coalesced send buffer.
const SMALL_PAYLOAD: usize = 16 * 1024;
/// Read buffer per connection, bytes.
const READ_BUFFER: usize = 64 * 1024;
/// Payload bytes a connection may have in flight before the node stops
/// reading from it (at least the largest payload).
const MAX_INFLIGHT_BYTES: u64 = 256 << 20;
/// How often lapsed leases and waiter deadlines are swept.
const SWEEP_EVERY: Duration = Duration::from_millis(20);

/// Tunables of a shard.
#[derive(Clone, Debug)]
pub struct ShardConfig {
    pub index: usize,
    pub shards: usize,
    /// The shard's chunk directory.
    pub dir: PathBuf,
    /// Capacity share of this shard in bytes (0 = a share of the filesystem).
    pub capacity_bytes: u64,
    pub default_lease: Duration,
    pub max_lease: Duration,
    /// Lease of implicit locks (they are released right after the operation).
    pub implicit_lease: Duration,
    /// Bytes per second the scrubber re-reads (0 = no scrubbing).
    pub scrub_bytes_per_sec: u64,
    /// This shard's metric handles (touched by this shard only).
    pub metrics: crate::metrics::ShardMetrics,
}

/// A shard's capacity report, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CapacityReport {
    pub total: u64,
    pub used: u64,
    pub reserved: u64,
    pub chunks: u64,
}

/// What the control-plane thread may ask a shard.
pub enum ShardCommand {
    Capacity(oneshot::Sender<CapacityReport>),
    /// (id, version, length) of every chunk.
    Inventory(oneshot::Sender<Vec<(ChunkId, u64, u64)>>),
    /// Chunks that failed a checksum (scrubber or a read) and are still here.
    Bad(oneshot::Sender<Vec<ChunkId>>),
    /// Delete a chunk (garbage collection); a missing chunk is fine.
    Delete(ChunkId, oneshot::Sender<Result<(), String>>),
    /// Copy a chunk at a version to another node's shard (re-replication);
    /// answers the verified (version, length).
    Copy {
        id: ChunkId,
        version: u64,
        target: String,
        replace: bool,
        reply: oneshot::Sender<Result<(u64, u64), String>>,
    },
    /// Graceful stop (SIGTERM): stop accepting connections and reading
    /// requests, answer every request already read, then return from
    /// [`Shard::serve`].
    Drain,
}

/// Resolves once a drain was asked for (never if the asker went away).
type StopSignal = futures::future::Shared<oneshot::Receiver<()>>;

async fn stopped(stop: StopSignal) {
    if stop.await.is_err() {
        std::future::pending::<()>().await;
    }
}

type LockWaiter = oneshot::Sender<Option<Grant>>;

/// The state of one shard (lives on its executor only).
pub struct Shard {
    pub(crate) cfg: ShardConfig,
    pub(crate) node_id: Arc<AtomicU64>,
    pub(crate) store: ChunkStore,
    locks: RefCell<LockTable<LockWaiter>>,
    reservations: RefCell<Reservations>,
    minter: RefCell<IdMinter>,
    key: TokenKey,
    pub(crate) peers: PeerPool,
    /// Chunks that failed a checksum here; reported to the control server
    /// with every heartbeat until the chunk is deleted (replaced).
    pub(crate) bad: RefCell<std::collections::HashSet<ChunkId>>,
}

/// A response on its way to the connection's writer.
struct Outgoing {
    header: Header,
    payload: Payload,
}

enum Payload {
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

type Tx = mpsc::UnboundedSender<Outgoing>;

/// Why an operation failed: a status and a message for the error frame.
pub(crate) struct OpError(pub(crate) Status, pub(crate) String);

impl From<StoreError> for OpError {
    fn from(e: StoreError) -> Self {
        let status = match &e {
            StoreError::NotFound(_) => Status::NotFound,
            StoreError::Checksum(..) => Status::Checksum,
            StoreError::InvalidArgument(_) => Status::InvalidArgument,
            StoreError::StaleVersion { .. } => Status::StaleVersion,
            StoreError::Io(..) | StoreError::Setup(_) => Status::Io,
        };
        OpError(status, e.to_string())
    }
}

fn mode_of(m: LockMode) -> Option<Mode> {
    match m {
        LockMode::None => None,
        LockMode::Read => Some(Mode::Read),
        LockMode::Write => Some(Mode::Write),
    }
}

fn lock_mode(m: Mode) -> LockMode {
    match m {
        Mode::Read => LockMode::Read,
        Mode::Write => LockMode::Write,
    }
}

/// How a request is authorized: by a held lock, or by an implicit lock to
/// release after the operation.
enum Auth {
    Token,
    Implicit { client: u64, generation: u64 },
}

impl Shard {
    /// Opens the shard's store (recovering its chunks) and id counter.
    pub async fn open(
        cfg: ShardConfig,
        node_id: Arc<AtomicU64>,
        key: TokenKey,
    ) -> anyhow::Result<Rc<Self>> {
        let store = ChunkStore::open(&cfg.dir).await?;
        let minter = IdMinter::open(&cfg.dir.join("id-counter"))?;
        tracing::info!(
            shard = cfg.index,
            chunks = store.chunk_count(),
            "shard recovered"
        );
        Ok(Rc::new(Self {
            cfg,
            node_id,
            store,
            locks: RefCell::new(LockTable::new()),
            reservations: RefCell::new(Reservations::new()),
            minter: RefCell::new(minter),
            key,
            peers: PeerPool::default(),
            bad: RefCell::default(),
        }))
    }

    pub fn store(&self) -> &ChunkStore {
        &self.store
    }

    /// Serves `listener` and `commands` forever.
    pub async fn serve(
        self: Rc<Self>,
        listener: TcpListener,
        mut commands: mpsc::UnboundedReceiver<ShardCommand>,
    ) {
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let stop: StopSignal = futures::FutureExt::shared(stop_rx);
        {
            let me = self.clone();
            glommio::spawn_local(async move {
                loop {
                    glommio::timer::sleep(SWEEP_EVERY).await;
                    let changes = me.locks.borrow_mut().expire(Instant::now());
                    me.apply(changes);
                }
            })
            .detach();
        }
        {
            let me = self.clone();
            let mut stop_tx = Some(stop_tx);
            glommio::spawn_local(async move {
                while let Some(cmd) = commands.next().await {
                    match cmd {
                        ShardCommand::Capacity(tx) => {
                            let _ = tx.send(me.capacity());
                        }
                        ShardCommand::Inventory(tx) => {
                            let _ = tx.send(me.store.inventory());
                        }
                        ShardCommand::Bad(tx) => {
                            let mut bad: Vec<_> = me.bad.borrow().iter().copied().collect();
                            bad.sort();
                            let _ = tx.send(bad);
                        }
                        // Long-running commands get their own tasks so that
                        // capacity and inventory requests never wait on them.
                        ShardCommand::Delete(id, tx) => {
                            let me = me.clone();
                            glommio::spawn_local(async move {
                                let _ = tx.send(me.delete_command(id).await);
                            })
                            .detach();
                        }
                        ShardCommand::Copy {
                            id,
                            version,
                            target,
                            replace,
                            reply,
                        } => {
                            let me = me.clone();
                            glommio::spawn_local(async move {
                                let r = me.copy_command(id, version, &target, replace).await;
                                let _ = reply.send(r);
                            })
                            .detach();
                        }
                        ShardCommand::Drain => {
                            if let Some(tx) = stop_tx.take() {
                                let _ = tx.send(());
                            }
                        }
                    }
                }
                // Keep the stop signal pending (not cancelled) forever.
                std::future::pending::<()>().await;
            })
            .detach();
        }
        if self.cfg.scrub_bytes_per_sec > 0 {
            glommio::spawn_local(crate::scrubber::run(self.clone())).detach();
        }
        // Connections run through the gate so that a drain can wait for them.
        let gate = glommio::sync::Gate::new();
        loop {
            let accepted = {
                let stop = std::pin::pin!(stopped(stop.clone()));
                let accept = std::pin::pin!(listener.accept());
                match futures::future::select(stop, accept).await {
                    futures::future::Either::Left(_) => break,
                    futures::future::Either::Right((r, _)) => r,
                }
            };
            match accepted {
                Ok(stream) => match gate.spawn(self.clone().serve_conn(stream, stop.clone())) {
                    Ok(task) => {
                        task.detach();
                    }
                    Err(e) => tracing::warn!(shard = self.cfg.index, "connection refused: {e}"),
                },
                Err(e) => {
                    tracing::warn!(shard = self.cfg.index, "accept failed: {e}");
                    glommio::timer::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        drop(listener);
        tracing::info!(
            shard = self.cfg.index,
            "draining: no new requests, finishing those in flight"
        );
        let _ = gate.close().await;
        tracing::info!(shard = self.cfg.index, "drained");
    }

    /// Capacity of this shard: its share of the configured capacity (or of
    /// the filesystem), bounded by the filesystem's free space.
    pub fn capacity(&self) -> CapacityReport {
        let (fs_total, _) = fs_space(&self.cfg.dir).unwrap_or((0, 0));
        let shards = self.cfg.shards as u64;
        let total = if self.cfg.capacity_bytes > 0 {
            self.cfg.capacity_bytes
        } else {
            fs_total / shards
        };
        let used = self.store.used_bytes();
        let reserved = self
            .reservations
            .borrow()
            .outstanding(|id| self.store.info(id).map(|i| on_disk(i.length)).unwrap_or(0));
        CapacityReport {
            total,
            used,
            reserved,
            chunks: self.store.chunk_count() as u64,
        }
    }

    fn free_bytes(&self) -> u64 {
        let c = self.capacity();
        let (_, fs_avail) = fs_space(&self.cfg.dir).unwrap_or((0, 0));
        c.total
            .saturating_sub(c.used)
            .min(fs_avail / self.cfg.shards as u64)
    }

    /// Notifies granted and timed-out waiters and drops reservations whose
    /// lock is gone. A grant whose requester vanished is released again.
    fn apply(&self, changes: Changes<LockWaiter>) {
        let mut work = vec![changes];
        while let Some(ch) = work.pop() {
            for (chunk, client, generation) in ch.released {
                self.reservations
                    .borrow_mut()
                    .lock_released(chunk, client, generation);
            }
            for w in ch.timed_out {
                let _ = w.send(None);
            }
            for (w, chunk, client, grant) in ch.granted {
                if w.send(Some(grant)).is_err() {
                    if let Ok(more) = self.locks.borrow_mut().release(
                        chunk,
                        client,
                        grant.generation,
                        Instant::now(),
                    ) {
                        work.push(more);
                    }
                }
            }
        }
    }

    pub(crate) fn release(
        &self,
        chunk: ChunkId,
        client: u64,
        generation: u64,
    ) -> Result<(), LockError> {
        let changes = self
            .locks
            .borrow_mut()
            .release(chunk, client, generation, Instant::now())?;
        self.reservations
            .borrow_mut()
            .lock_released(chunk, client, generation);
        self.apply(changes);
        Ok(())
    }

    fn lease(&self, ms: u32) -> Duration {
        if ms == 0 {
            self.cfg.default_lease
        } else {
            Duration::from_millis(ms as u64).min(self.cfg.max_lease)
        }
    }

    /// Takes a lock, waiting up to `timeout` (FIFO) if it is not free.
    pub(crate) async fn acquire(
        &self,
        chunk: ChunkId,
        client: u64,
        mode: Mode,
        lease: Duration,
        timeout: Duration,
    ) -> Result<Grant, OpError> {
        let now = Instant::now();
        let (tx, rx) = oneshot::channel();
        let wait = (!timeout.is_zero()).then(|| (now + timeout, tx));
        let r = self
            .locks
            .borrow_mut()
            .acquire(chunk, client, mode, lease, now, wait);
        match r {
            Acquire::Granted(g) => Ok(g),
            Acquire::Busy => Err(OpError(Status::Busy, format!("chunk {chunk} is locked"))),
            Acquire::Queued(_) => {
                self.cfg.metrics.lock_waited();
                match rx.await {
                    Ok(Some(g)) => Ok(g),
                    _ => {
                        self.cfg.metrics.lock_timed_out();
                        Err(OpError(
                            Status::Timeout,
                            format!(
                                "timed out after {} ms waiting for the lock on chunk {chunk}",
                                timeout.as_millis()
                            ),
                        ))
                    }
                }
            }
        }
    }

    fn check_token(&self, chunk: ChunkId, token: &Token, need: Mode) -> Result<Grant, OpError> {
        if !self.key.verify(chunk, token) {
            return Err(OpError(
                Status::BadToken,
                format!("lock token for chunk {chunk} is not authentic (forged, altered or from another node)"),
            ));
        }
        self.locks
            .borrow()
            .validate(
                chunk,
                token.client_id,
                token.generation,
                need,
                Instant::now(),
            )
            .map_err(|e| {
                OpError(
                    Status::BadToken,
                    format!("lock token for chunk {chunk}: {e}"),
                )
            })
    }

    /// Authorizes a chunk operation needing `need`: a valid token, or an
    /// implicit lock taken now.
    async fn authorize(&self, h: &Header, need: Mode) -> Result<Auth, OpError> {
        if h.token.is_present() {
            self.check_token(h.chunk_id, &h.token, need)?;
            return Ok(Auth::Token);
        }
        match mode_of(h.implicit_lock) {
            None => Err(OpError(
                Status::BadToken,
                "request carries neither a lock token nor an implicit lock".into(),
            )),
            Some(m) if !m.permits(need) => Err(OpError(
                Status::InvalidArgument,
                "implicit read lock does not permit this operation".into(),
            )),
            Some(m) => {
                let g = self
                    .acquire(
                        h.chunk_id,
                        h.client_id,
                        m,
                        self.cfg.implicit_lease,
                        Duration::from_millis(h.timeout_ms as u64),
                    )
                    .await?;
                Ok(Auth::Implicit {
                    client: h.client_id,
                    generation: g.generation,
                })
            }
        }
    }

    fn end_auth(&self, chunk: ChunkId, auth: Auth) {
        if let Auth::Implicit { client, generation } = auth {
            let _ = self.release(chunk, client, generation);
        }
    }

    fn check_shard(&self, chunk: ChunkId) -> Result<(), OpError> {
        let owner = chunk.shard(self.cfg.shards);
        if owner != self.cfg.index {
            return Err(OpError(
                Status::WrongShard,
                format!(
                    "chunk {chunk} belongs to shard {owner}, this is shard {}",
                    self.cfg.index
                ),
            ));
        }
        Ok(())
    }

    /// Serves one connection until it closes or `stop` (then the requests
    /// already read are answered before it closes).
    async fn serve_conn(self: Rc<Self>, stream: TcpStream, stop: StopSignal) {
        let _ = stream.set_nodelay(true);
        let (rd, mut wr) = stream.split();
        // Buffered reads: a header costs one syscall for many pipelined
        // frames; payloads larger than the buffer bypass it (read straight
        // into the DMA buffer).
        let mut rd = futures::io::BufReader::with_capacity(READ_BUFFER, rd);
        let (tx, mut rx) = mpsc::unbounded::<Outgoing>();
        let writer = glommio::spawn_local(async move {
            // Responses queued while the previous send was in flight go out
            // together: one send for many small frames; large payloads are
            // sent from their buffers without a copy.
            let mut batch = Vec::with_capacity(BATCH_BYTES);
            'conn: while let Some(first) = rx.next().await {
                let mut next = Some(first);
                while let Some(out) = next.take() {
                    let payload = out.payload.bytes();
                    batch.extend_from_slice(&encode_header(&out.header));
                    if payload.len() > SMALL_PAYLOAD {
                        if wr.write_all(&batch).await.is_err()
                            || wr.write_all(payload).await.is_err()
                        {
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
        });
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
                    let _ = tx.unbounded_send(Outgoing {
                        header: r,
                        payload: Payload::None,
                    });
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
            let payload = match self.read_payload(&h, &mut rd).await {
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

    /// Reads a request's payload: straight into the aligned write buffer for
    /// writes; refused requests have it skipped.
    async fn read_payload<R: futures::AsyncRead + Unpin>(
        &self,
        h: &Header,
        rd: &mut R,
    ) -> Result<Result<Option<WriteBuf>, OpError>, WireError> {
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

    async fn handle(&self, h: Header, payload: Result<Option<WriteBuf>, OpError>, tx: &Tx) {
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
            Err(OpError(status, msg)) => Outgoing {
                header: Header::error_to(&h, status, msg),
                payload: Payload::None,
            },
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

    /// Runs one request; `Ok(None)` when the response was already sent.
    async fn dispatch(
        &self,
        h: &Header,
        wb: Option<WriteBuf>,
        tx: &Tx,
    ) -> Result<Option<Outgoing>, OpError> {
        let ok = |header| {
            Ok(Some(Outgoing {
                header,
                payload: Payload::None,
            }))
        };
        match h.op {
            Op::Lock => self.op_lock(h, tx).await,
            Op::Unlock => {
                self.check_shard(h.chunk_id)?;
                if !self.key.verify(h.chunk_id, &h.token) {
                    return Err(OpError(
                        Status::BadToken,
                        "lock token is not authentic".into(),
                    ));
                }
                self.release(h.chunk_id, h.token.client_id, h.token.generation)
                    .map_err(|e| OpError(Status::BadToken, e.to_string()))?;
                ok(Header::response_to(h, Status::Ok))
            }
            Op::Reserve => ok(self.op_reserve(h)?),
            Op::Write => {
                let wb = wb.unwrap_or(WriteBuf::new(h.offset, 0)?);
                ok(self.op_write(h, wb).await?)
            }
            Op::Read => {
                self.check_shard(h.chunk_id)?;
                if h.length as u64 > crate::frame::MAX_PAYLOAD_LEN as u64 {
                    return Err(OpError(
                        Status::InvalidArgument,
                        format!("read length {} over the limit", h.length),
                    ));
                }
                let auth = self.authorize(h, Mode::Read).await?;
                let r = self.store.read(h.chunk_id, h.offset, h.length as u64).await;
                self.end_auth(h.chunk_id, auth);
                if let Err(StoreError::Checksum(..)) = &r {
                    // Reported to the control server, which has it repaired.
                    self.bad.borrow_mut().insert(h.chunk_id);
                }
                let (data, info) = r?;
                let mut resp = Header::response_to(h, Status::Ok);
                resp.offset = h.offset;
                resp.payload_length = data.len() as u32;
                resp.version = info.version;
                resp.chunk_length = info.length;
                Ok(Some(Outgoing {
                    header: resp,
                    payload: Payload::Read(data),
                }))
            }
            Op::ChunkInfo => {
                self.check_shard(h.chunk_id)?;
                let mut resp = Header::response_to(h, Status::Ok);
                match self.store.info(h.chunk_id) {
                    Ok(info) => {
                        resp.version = info.version;
                        resp.chunk_length = info.length;
                    }
                    // A reserved, not yet written chunk is empty.
                    Err(_) if self.reservations.borrow().get(h.chunk_id).is_some() => {}
                    Err(e) => return Err(e.into()),
                }
                ok(resp)
            }
            Op::Delete => {
                self.check_shard(h.chunk_id)?;
                let auth = self.authorize(h, Mode::Write).await?;
                let r = self.store.delete(h.chunk_id).await;
                self.end_auth(h.chunk_id, auth);
                r?;
                self.bad.borrow_mut().remove(&h.chunk_id);
                ok(Header::response_to(h, Status::Ok))
            }
            Op::CopyTo => ok(self.op_copy_to(h).await?),
            Op::LockGranted => Err(OpError(
                Status::InvalidArgument,
                "lockGranted is sent by nodes only".into(),
            )),
        }
    }

    async fn op_lock(&self, h: &Header, tx: &Tx) -> Result<Option<Outgoing>, OpError> {
        self.check_shard(h.chunk_id)?;
        let mode = mode_of(h.lock_mode).ok_or_else(|| {
            OpError(
                Status::InvalidArgument,
                "lock needs lockMode read or write".into(),
            )
        })?;
        let lease = self.lease(h.lease_ms);
        let grant_frame = |op: Op, client: u64, g: Grant| {
            let mut r = Header::response_to(h, Status::Ok);
            r.op = op;
            r.token = self.key.issue(h.chunk_id, client, g.generation);
            r.lock_mode = lock_mode(g.mode);
            r.lease_ms = g
                .expires
                .saturating_duration_since(Instant::now())
                .as_millis() as u32;
            r
        };
        if h.token.is_present() {
            // Renewal of a held lock.
            self.check_token(h.chunk_id, &h.token, mode)?;
            let g = self
                .locks
                .borrow_mut()
                .renew(
                    h.chunk_id,
                    h.token.client_id,
                    h.token.generation,
                    lease,
                    Instant::now(),
                )
                .map_err(|e| OpError(Status::BadToken, e.to_string()))?;
            return Ok(Some(Outgoing {
                header: grant_frame(Op::Lock, h.token.client_id, g),
                payload: Payload::None,
            }));
        }
        let now = Instant::now();
        let timeout = Duration::from_millis(h.timeout_ms as u64);
        let (wtx, wrx) = oneshot::channel();
        let wait = (!timeout.is_zero()).then(|| (now + timeout, wtx));
        let r = self
            .locks
            .borrow_mut()
            .acquire(h.chunk_id, h.client_id, mode, lease, now, wait);
        match r {
            Acquire::Granted(g) => Ok(Some(Outgoing {
                header: grant_frame(Op::Lock, h.client_id, g),
                payload: Payload::None,
            })),
            Acquire::Busy => Err(OpError(
                Status::Busy,
                format!("chunk {} is locked", h.chunk_id),
            )),
            Acquire::Queued(_) => {
                self.cfg.metrics.lock_waited();
                let _ = tx.unbounded_send(Outgoing {
                    header: Header::response_to(h, Status::Wait),
                    payload: Payload::None,
                });
                let header = match wrx.await {
                    Ok(Some(g)) => grant_frame(Op::LockGranted, h.client_id, g),
                    _ => {
                        self.cfg.metrics.lock_timed_out();
                        let mut r = Header::error_to(
                            h,
                            Status::Timeout,
                            format!(
                                "timed out after {} ms waiting for the lock",
                                timeout.as_millis()
                            ),
                        );
                        r.op = Op::LockGranted;
                        r
                    }
                };
                Ok(Some(Outgoing {
                    header,
                    payload: Payload::None,
                }))
            }
        }
    }

    fn op_reserve(&self, h: &Header) -> Result<Header, OpError> {
        let bytes = h.reserve_bytes;
        if bytes == 0 || bytes > crate::chunk_file::MAX_CHUNK_SIZE {
            return Err(OpError(
                Status::InvalidArgument,
                format!(
                    "reserveBytes {bytes} must be in 1..={}",
                    crate::chunk_file::MAX_CHUNK_SIZE
                ),
            ));
        }
        let id = if h.chunk_id == ChunkId::default() {
            let node_id = self.node_id.load(Ordering::Acquire);
            if node_id == 0 {
                return Err(OpError(
                    Status::Unavailable,
                    "node has not joined the control server yet (no node id to mint chunk ids)"
                        .into(),
                ));
            }
            None
        } else {
            // A replica's reservation of an id minted elsewhere.
            self.check_shard(h.chunk_id)?;
            if self.store.contains(h.chunk_id) {
                return Err(OpError(
                    Status::Exists,
                    format!("chunk {} already exists", h.chunk_id),
                ));
            }
            if self.reservations.borrow().get(h.chunk_id).is_some()
                || self.locks.borrow().is_busy(h.chunk_id)
            {
                return Err(OpError(
                    Status::Busy,
                    format!("chunk {} is already reserved or locked", h.chunk_id),
                ));
            }
            Some(h.chunk_id)
        };
        let free = self.free_bytes();
        let outstanding = self.capacity().reserved;
        // What the chunk will occupy on disk: its header (two slots with
        // the CRC tables) and its data in 4 KiB units, as `used` counts it.
        let disk_bytes = on_disk(bytes);
        self.reservations
            .borrow()
            .check(disk_bytes, free, outstanding)
            .map_err(|e| {
                self.cfg.metrics.reservation_refused();
                OpError(Status::NoSpace, e.to_string())
            })?;
        let id = match id {
            Some(id) => id,
            None => self
                .minter
                .borrow_mut()
                .mint(
                    self.node_id.load(Ordering::Acquire),
                    self.cfg.index,
                    self.cfg.shards,
                )
                .map_err(|e| OpError(Status::Io, e.to_string()))?,
        };
        let lease = self.lease(h.lease_ms);
        let g = match self.locks.borrow_mut().acquire(
            id,
            h.client_id,
            Mode::Write,
            lease,
            Instant::now(),
            None,
        ) {
            Acquire::Granted(g) => g,
            _ => {
                return Err(OpError(
                    Status::Internal,
                    format!("fresh chunk {id} is locked"),
                ))
            }
        };
        self.reservations.borrow_mut().insert(
            id,
            Reservation {
                bytes: disk_bytes,
                client: h.client_id,
                generation: g.generation,
            },
        );
        let mut r = Header::response_to(h, Status::Ok);
        r.chunk_id = id;
        r.token = self.key.issue(id, h.client_id, g.generation);
        r.lock_mode = LockMode::Write;
        r.lease_ms = lease.as_millis() as u32;
        r.reserve_bytes = bytes;
        Ok(r)
    }

    async fn op_write(&self, h: &Header, wb: WriteBuf) -> Result<Header, OpError> {
        self.check_shard(h.chunk_id)?;
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
        if me != 0 && h.chain.iter().any(|hop| hop.node_id == me) {
            // Forwarding to ourselves would wait on the chunk lock we hold.
            return Err(OpError(
                Status::InvalidArgument,
                format!("the chain lists this node ({me}) again"),
            ));
        }
        let auth = self.authorize(h, Mode::Write).await?;
        let create = self.reservations.borrow().get(h.chunk_id).is_some();
        if !create && !self.store.contains(h.chunk_id) {
            self.end_auth(h.chunk_id, auth);
            return Err(OpError(
                Status::NotFound,
                format!(
                    "chunk {} does not exist and has no reservation here (reserve it first)",
                    h.chunk_id
                ),
            ));
        }
        let forward = |payload: SharedPayload, version: u64| self.forward(h, payload, version);
        let (local, downstream) = self
            .store
            .write(h.chunk_id, wb, h.version, create, forward)
            .await;
        self.end_auth(h.chunk_id, auth);
        let info = local?;
        let (down_ok, down_msg) = match downstream {
            None | Some(Ok(0)) if h.chain.is_empty() => (0, String::new()),
            Some(Ok(n)) => (n, String::new()),
            Some(Err(msg)) => (0, msg),
            None => (0, "not forwarded".into()),
        };
        let durable = 1 + down_ok;
        let mut r = Header::response_to(h, Status::Ok);
        r.version = info.version;
        r.chunk_length = info.length;
        r.durable_replicas = durable.min(255) as u8;
        if durable < quorum {
            r.status = Status::Quorum;
            r.message =
                format!("write durable on {durable} of {quorum} required replicas: {down_msg}");
        }
        Ok(r)
    }

    /// Forwards a write to the next hop of its chain; returns the number of
    /// durable replicas downstream, or why none.
    async fn forward(
        &self,
        h: &Header,
        payload: SharedPayload,
        version: u64,
    ) -> Result<usize, String> {
        let Some(next) = h.chain.first() else {
            return Ok(0);
        };
        let peer = self
            .peers
            .get(&next.address)
            .await
            .map_err(|e| e.to_string())?;
        let mut fh = Header::request(0, Op::Write);
        fh.chunk_id = h.chunk_id;
        fh.offset = h.offset;
        fh.version = version;
        fh.chain = h.chain[1..].to_vec();
        fh.write_quorum = 0;
        if next.token.is_present() {
            fh.token = next.token.clone();
        } else {
            fh.implicit_lock = h.implicit_lock;
            fh.client_id = h.client_id;
            fh.timeout_ms = h.timeout_ms;
        }
        // A hung next hop must not hold this chunk's write lock forever.
        let call = async { Ok(peer.call(fh, payload.as_bytes()).await) };
        let (resp, _) = glommio::timer::timeout(FORWARD_TIMEOUT, call)
            .await
            .map_err(|_| format!("{} did not answer within {FORWARD_TIMEOUT:?}", next.address))?
            .map_err(|e| e.to_string())?;
        match resp.status {
            Status::Ok => Ok(resp.durable_replicas as usize),
            Status::Quorum if resp.durable_replicas > 0 => Ok(resp.durable_replicas as usize),
            s => Err(format!("{} replied {s:?}: {}", next.address, resp.message)),
        }
    }

    async fn op_copy_to(&self, h: &Header) -> Result<Header, OpError> {
        self.check_shard(h.chunk_id)?;
        let Some(target) = h.chain.first() else {
            return Err(OpError(
                Status::InvalidArgument,
                "copyTo needs the target in chain[0]".into(),
            ));
        };
        let auth = self.authorize(h, Mode::Read).await?;
        let r = async {
            let info = self.store.info(h.chunk_id)?;
            let (data, _) = self.store.read(h.chunk_id, 0, info.length).await?;
            Ok::<_, OpError>((info, data))
        }
        .await;
        self.end_auth(h.chunk_id, auth);
        let (info, data) = r?;
        let peer = self
            .peers
            .get(&target.address)
            .await
            .map_err(|e| OpError(Status::Unavailable, e.to_string()))?;
        let mut fh = Header::request(0, Op::Write);
        fh.chunk_id = h.chunk_id;
        fh.version = info.version;
        fh.token = target.token.clone();
        fh.chain = h.chain[1..].to_vec();
        let (resp, _) = peer
            .call(fh, &data)
            .await
            .map_err(|e| OpError(Status::Unavailable, e.to_string()))?;
        let mut r = Header::response_to(h, resp.status);
        r.message = resp.message;
        r.version = info.version;
        r.chunk_length = info.length;
        r.durable_replicas = resp.durable_replicas;
        Ok(r)
    }
}

/// Bytes a chunk of `length` data bytes occupies on disk (header included),
/// as [`ChunkStore::used_bytes`] counts it.
fn on_disk(length: u64) -> u64 {
    use crate::chunk_file::{align_up, ALIGN, DATA_OFFSET};
    DATA_OFFSET + align_up(length, ALIGN)
}

/// (total, available) bytes of the filesystem holding `dir`.
pub fn fs_space(dir: &std::path::Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let frsize = st.f_frsize as u64;
    Ok((st.f_blocks as u64 * frsize, st.f_bavail as u64 * frsize))
}
