//! Node metrics (Prometheus, via `prometheus-client`) and the monitoring
//! endpoint (`--metrics ADDR`: `/metrics`, `/healthz`, `/readyz`).
//!
//! Invariants:
//! - The data path touches only its own shard's handles: each shard gets a
//!   [`ShardMetrics`] with counters and histograms pre-created for its
//!   `shard` label, so recording is an atomic add (a histogram observation
//!   takes that histogram's own lock, contended only by a scrape). No
//!   metric is shared between shards.
//! - Capacity and chunk counts are not mirrored into gauges: a scrape asks
//!   every shard through its command channel, as the heartbeat does.
//! - Units: bytes, seconds.

use crate::shard::ShardCommand;
use futures::channel::{mpsc, oneshot};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use ringfs_schema::frame::Op;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Every data-plane op, indexed by its wire value.
pub const OPS: [Op; 10] = [
    Op::Lock,
    Op::Unlock,
    Op::Reserve,
    Op::Write,
    Op::Read,
    Op::ChunkInfo,
    Op::Delete,
    Op::CopyTo,
    Op::LockGranted,
    Op::Digest,
];

/// The `op` label of an op.
pub fn op_name(op: Op) -> &'static str {
    match op {
        Op::Lock => "lock",
        Op::Unlock => "unlock",
        Op::Reserve => "reserve",
        Op::Write => "write",
        Op::Read => "read",
        Op::ChunkInfo => "chunk_info",
        Op::Delete => "delete",
        Op::CopyTo => "copy_to",
        Op::LockGranted => "lock_granted",
        Op::Digest => "digest",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    shard: u32,
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShardLabel {
    shard: u32,
}

/// One shard's metric handles (clones share the registered values).
#[derive(Clone, Debug)]
pub struct ShardMetrics {
    requests: Vec<Counter>,
    errors: Vec<Counter>,
    latency: Vec<Histogram>,
    bytes_read: Counter,
    bytes_written: Counter,
    lock_waits: Counter,
    lock_timeouts: Counter,
    reservations_refused: Counter,
    connections_refused: Counter,
    tls_refused: Counter,
    capabilities_refused: Counter,
    replay_dropped: Counter,
}

impl ShardMetrics {
    /// A request was refused for its capability (missing, forged, foreign,
    /// expired): the data plane's authentication failures.
    pub fn capability_refused(&self) {
        self.capabilities_refused.inc();
    }

    /// A new connection was closed at once: the shard's connection limit.
    pub fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    /// A new connection failed its TLS handshake (not TLS, a certificate
    /// not from the cluster CA, or too slow) and was closed.
    pub fn tls_refused(&self) {
        self.tls_refused.inc();
    }

    /// A lock request (explicit or implicit) had to queue.
    pub fn lock_waited(&self) {
        self.lock_waits.inc();
    }

    /// A queued lock request timed out.
    pub fn lock_timed_out(&self) {
        self.lock_timeouts.inc();
    }

    /// A reservation was refused for lack of space.
    pub fn reservation_refused(&self) {
        self.reservations_refused.inc();
    }

    /// The journal's replay, when the shard opened, dropped `n` direct
    /// writes whose blocks did not verify.
    pub fn replay_dropped(&self, n: u64) {
        self.replay_dropped.inc_by(n);
    }

    /// Records one answered request: its op, whether it succeeded, how long
    /// it took, and the payload bytes read from or written to the store.
    pub fn record(&self, op: Op, ok: bool, elapsed: Duration, read: u64, written: u64) {
        let i = op as usize;
        self.requests[i].inc();
        if !ok {
            self.errors[i].inc();
        }
        self.latency[i].observe(elapsed.as_secs_f64());
        if read > 0 {
            self.bytes_read.inc_by(read);
        }
        if written > 0 {
            self.bytes_written.inc_by(written);
        }
    }
}

/// The node's metrics and readiness.
pub struct NodeMetrics {
    registry: Registry,
    shards: Vec<ShardMetrics>,
    /// Set by the control link while it is joined to the control server.
    pub joined: Arc<AtomicBool>,
    /// The shards' command channels, once every shard listens.
    pub commands: OnceLock<Vec<mpsc::UnboundedSender<ShardCommand>>>,
}

impl NodeMetrics {
    /// Registers the metrics of `shards` shards.
    pub fn new(shards: usize) -> Self {
        let mut registry = Registry::default();
        let requests = Family::<OpLabels, Counter>::default();
        let errors = Family::<OpLabels, Counter>::default();
        let latency = Family::<OpLabels, Histogram>::new_with_constructor(|| {
            // 10 µs .. ~5 s
            Histogram::new(exponential_buckets(1e-5, 2.0, 20))
        });
        let bytes_read = Family::<ShardLabel, Counter>::default();
        let bytes_written = Family::<ShardLabel, Counter>::default();
        let lock_waits = Family::<ShardLabel, Counter>::default();
        let lock_timeouts = Family::<ShardLabel, Counter>::default();
        let refused = Family::<ShardLabel, Counter>::default();
        let conns_refused = Family::<ShardLabel, Counter>::default();
        let caps_refused = Family::<ShardLabel, Counter>::default();
        let replay_dropped = Family::<ShardLabel, Counter>::default();
        registry.register(
            "ringfs_node_replay_dropped_writes",
            "Direct writes the journal's replay dropped at start because their blocks did not \
             verify (torn, or damaged before a checkpoint confirmed them)",
            replay_dropped.clone(),
        );
        registry.register(
            "ringfs_node_auth_failures",
            "Requests refused for their capability (missing, forged, foreign, expired)",
            caps_refused.clone(),
        );
        registry.register(
            "ringfs_node_connections_refused",
            "New connections closed at once because the shard's connection limit was reached",
            conns_refused.clone(),
        );
        let tls_refused = Family::<ShardLabel, Counter>::default();
        registry.register(
            "ringfs_node_tls_handshakes_failed",
            "New connections closed because their TLS handshake failed or timed out",
            tls_refused.clone(),
        );
        registry.register(
            "ringfs_node_lock_waits",
            "Lock requests that had to queue behind a holder",
            lock_waits.clone(),
        );
        registry.register(
            "ringfs_node_lock_timeouts",
            "Queued lock requests that timed out",
            lock_timeouts.clone(),
        );
        registry.register(
            "ringfs_node_reservations_refused",
            "Reservations refused for lack of space",
            refused.clone(),
        );
        registry.register(
            "ringfs_node_requests",
            "Data-plane requests answered, by shard and op",
            requests.clone(),
        );
        registry.register(
            "ringfs_node_errors",
            "Data-plane requests answered with an error status, by shard and op",
            errors.clone(),
        );
        registry.register(
            "ringfs_node_request_duration_seconds",
            "Time from a request's arrival (payload read) to its answer",
            latency.clone(),
        );
        registry.register(
            "ringfs_node_read_bytes",
            "Chunk payload bytes read and sent to clients",
            bytes_read.clone(),
        );
        registry.register(
            "ringfs_node_written_bytes",
            "Chunk payload bytes written durably on this node",
            bytes_written.clone(),
        );
        let shards = (0..shards as u32)
            .map(|shard| {
                let per_op = |f: &Family<OpLabels, Counter>| {
                    OPS.iter()
                        .map(|&op| {
                            f.get_or_create(&OpLabels {
                                shard,
                                op: op_name(op),
                            })
                            .clone()
                        })
                        .collect()
                };
                ShardMetrics {
                    requests: per_op(&requests),
                    errors: per_op(&errors),
                    latency: OPS
                        .iter()
                        .map(|&op| {
                            latency
                                .get_or_create(&OpLabels {
                                    shard,
                                    op: op_name(op),
                                })
                                .clone()
                        })
                        .collect(),
                    bytes_read: bytes_read.get_or_create(&ShardLabel { shard }).clone(),
                    bytes_written: bytes_written.get_or_create(&ShardLabel { shard }).clone(),
                    lock_waits: lock_waits.get_or_create(&ShardLabel { shard }).clone(),
                    lock_timeouts: lock_timeouts.get_or_create(&ShardLabel { shard }).clone(),
                    reservations_refused: refused.get_or_create(&ShardLabel { shard }).clone(),
                    connections_refused: conns_refused.get_or_create(&ShardLabel { shard }).clone(),
                    tls_refused: tls_refused.get_or_create(&ShardLabel { shard }).clone(),
                    capabilities_refused: caps_refused.get_or_create(&ShardLabel { shard }).clone(),
                    replay_dropped: replay_dropped.get_or_create(&ShardLabel { shard }).clone(),
                }
            })
            .collect();
        NodeMetrics {
            registry,
            shards,
            joined: Arc::new(AtomicBool::new(false)),
            commands: OnceLock::new(),
        }
    }

    /// The handles of shard `index`.
    pub fn shard(&self, index: usize) -> ShardMetrics {
        self.shards[index].clone()
    }

    /// Ready: every shard listens and the node is joined to the control
    /// server.
    pub fn ready(&self) -> Result<(), &'static str> {
        if self.commands.get().is_none() {
            return Err("shards are starting");
        }
        if !self.joined.load(Ordering::Acquire) {
            return Err("not joined to the control server");
        }
        Ok(())
    }

    /// The exposition text: the registered metrics plus capacity gauges
    /// asked from every shard now.
    pub async fn render(&self) -> String {
        let mut text = String::new();
        let _ = prometheus_client::encoding::text::encode_registry(&mut text, &self.registry);
        let mut dynamic = Registry::default();
        let gauge = |name: &str, help: &str, dynamic: &mut Registry| {
            let f = Family::<ShardLabel, Gauge>::default();
            dynamic.register(name, help, f.clone());
            f
        };
        let total = gauge(
            "ringfs_node_capacity_bytes",
            "Capacity offered, bytes",
            &mut dynamic,
        );
        let used = gauge(
            "ringfs_node_used_bytes",
            "Bytes used by chunks",
            &mut dynamic,
        );
        let reserved = gauge(
            "ringfs_node_reserved_bytes",
            "Bytes reserved for chunks not yet written",
            &mut dynamic,
        );
        let chunks = gauge("ringfs_node_chunks", "Chunks stored", &mut dynamic);
        let joined = Gauge::<i64>::default();
        joined.set(self.joined.load(Ordering::Acquire) as i64);
        dynamic.register(
            "ringfs_node_joined",
            "1 while joined to the control server",
            joined,
        );
        for (i, cmd) in self.commands.get().into_iter().flatten().enumerate() {
            let (tx, rx) = oneshot::channel();
            if cmd.unbounded_send(ShardCommand::Capacity(tx)).is_err() {
                continue;
            }
            let Ok(Ok(c)) = tokio::time::timeout(Duration::from_secs(2), rx).await else {
                continue;
            };
            let l = ShardLabel { shard: i as u32 };
            let set = |f: &Family<ShardLabel, Gauge>, v: u64| {
                f.get_or_create(&l).set(v.min(i64::MAX as u64) as i64);
            };
            set(&total, c.total);
            set(&used, c.used);
            set(&reserved, c.reserved);
            set(&chunks, c.chunks);
        }
        let _ = prometheus_client::encoding::text::encode_registry(&mut text, &dynamic);
        let _ = prometheus_client::encoding::text::encode_eof(&mut text);
        text
    }
}

/// Binds `addr` and serves the monitoring endpoint on a thread of its own
/// (a tokio current-thread runtime, like the control link's). Returns the
/// bound address.
pub fn spawn_endpoint(addr: SocketAddr, metrics: Arc<NodeMetrics>) -> std::io::Result<SocketAddr> {
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    let local = std_listener.local_addr()?;
    crate::tokio_thread::spawn("ringfs-metrics", "metrics endpoint", move || async move {
        let listener = match tokio::net::TcpListener::from_std(std_listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("metrics endpoint: {e}");
                return;
            }
        };
        ringfs_ops::http::serve(listener, move |path: String| {
            let metrics = metrics.clone();
            async move { route(&metrics, &path).await }
        })
        .await
    })?;
    Ok(local)
}

async fn route(metrics: &NodeMetrics, path: &str) -> ringfs_ops::http::Response {
    use ringfs_ops::http::Response;
    match path {
        "/metrics" => Response {
            status: 200,
            content_type: ringfs_ops::http::OPENMETRICS,
            body: metrics.render().await,
        },
        "/healthz" => Response::text(200, "ok\n"),
        "/readyz" => match metrics.ready() {
            Ok(()) => Response::text(200, "ready\n"),
            Err(why) => Response::text(503, format!("not ready: {why}\n")),
        },
        _ => Response::text(404, "not found: try /metrics, /healthz or /readyz\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_shard_records_under_its_own_label() {
        let m = NodeMetrics::new(2);
        let s1 = m.shard(1);
        s1.record(Op::Write, true, Duration::from_millis(3), 0, 4096);
        s1.record(Op::Read, false, Duration::from_micros(50), 0, 0);
        s1.lock_waited();
        s1.lock_timed_out();
        m.shard(0).reservation_refused();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let text = rt.block_on(m.render());
        for want in [
            "ringfs_node_requests_total{shard=\"1\",op=\"write\"} 1\n",
            "ringfs_node_requests_total{shard=\"0\",op=\"write\"} 0\n",
            "ringfs_node_errors_total{shard=\"1\",op=\"read\"} 1\n",
            "ringfs_node_errors_total{shard=\"1\",op=\"write\"} 0\n",
            "ringfs_node_written_bytes_total{shard=\"1\"} 4096\n",
            "ringfs_node_request_duration_seconds_count{shard=\"1\",op=\"write\"} 1\n",
            "ringfs_node_lock_waits_total{shard=\"1\"} 1\n",
            "ringfs_node_lock_timeouts_total{shard=\"1\"} 1\n",
            "ringfs_node_reservations_refused_total{shard=\"0\"} 1\n",
            "ringfs_node_reservations_refused_total{shard=\"1\"} 0\n",
            "ringfs_node_joined 0\n",
        ] {
            assert!(text.contains(want), "{want:?} missing in:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
        assert_eq!(m.ready(), Err("shards are starting"));
    }
}
