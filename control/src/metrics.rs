//! Control-server metrics (Prometheus, via `prometheus-client`) and the
//! monitoring endpoint (`--metrics ADDR`: `/metrics`, `/healthz`,
//! `/readyz`).
//!
//! RPCs on the bootstrap `Control` capability and on the file handles that
//! `open` returns are counted and timed by [`Metered`], a wrapper around
//! their dispatchers, so the RPC methods themselves carry no metrics code.
//! File handles find the metrics through a thread-local set by the server
//! (capnp-rpc is single-threaded: every capability lives on that thread).
//! Units: seconds.

use std::time::Instant;

use crate::call_gate::CallGate;

use capnp::capability::{DispatchCallResult, FromServer, Params, Results, Server};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use ringfs_schema::control_capnp::{control, file_handle};
use std::cell::RefCell;
use std::rc::Rc;

/// Method names of the `Control` interface, by method id (schema order).
const CONTROL_METHODS: [&str; 29] = [
    "hello",
    "create",
    "mkdir",
    "unlink",
    "rmdir",
    "rename",
    "stat",
    "list",
    "open",
    "join",
    "heartbeat",
    "report_chunks",
    "cluster_map",
    "subscribe",
    "report_bad_replica",
    "chunk_health",
    "leave",
    "set_attr",
    "raft",
    "replication",
    "add_replica",
    "remove_replica",
    "take_snapshot",
    "authenticate",
    "add_user",
    "remove_user",
    "list_users",
    "commit_transaction",
    "open_new",
];

/// What a call needs of a replica's leadership (see
/// [`CallGate::check_serving`]).
#[derive(Clone, Copy)]
pub enum Needs {
    /// Nothing: any replica answers (or the method checks for itself).
    Nothing,
    /// The leader: storage nodes' calls, which rebuild its state.
    Leader,
    /// A leader that serves clients.
    Serving,
}

/// What `Control` method `id` needs: nodes' calls (join, heartbeat,
/// reportChunks, leave) the leader; `hello`, `authenticate`, the reads
/// that may be stale (`stat`, `list`, which check for themselves) and the
/// replication calls (which check for themselves) nothing; every other
/// (the users' calls too) a serving leader.
fn control_needs(id: u16) -> Needs {
    match id {
        0 | 6 | 7 | 18..=23 => Needs::Nothing,
        9 | 10 | 11 | 16 => Needs::Leader,
        _ => Needs::Serving,
    }
}

/// Method names of the `FileHandle` interface, by method id.
const FILE_HANDLE_METHODS: [&str; 6] = [
    "file_attr",
    "get_chunks",
    "commit_chunks",
    "set_size",
    "close",
    "reserve_capability",
];

thread_local! {
    /// The metrics and call gate of the control server running on this
    /// thread.
    static CURRENT: RefCell<Option<(Rc<ControlMetrics>, Rc<CallGate>)>> = const { RefCell::new(None) };
}

/// Makes `metrics` the ones file handles created on this thread record to,
/// and `gate` the one their calls pass.
pub fn set_current(current: Option<(Rc<ControlMetrics>, Rc<CallGate>)>) {
    CURRENT.with(|c| *c.borrow_mut() = current);
}

/// Counts a failed TLS handshake in the metrics of the control server
/// running on this thread.
pub fn tls_handshake_failed() {
    CURRENT.with(|c| {
        if let Some((m, _)) = &*c.borrow() {
            m.tls_failures.inc();
        }
    });
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

/// Cluster figures read from membership at scrape time.
#[derive(Clone, Copy, Debug, Default)]
pub struct ClusterFigures {
    pub epoch: u64,
    pub nodes_up: u64,
    pub nodes_down: u64,
    /// Summed over the nodes that are up.
    pub capacity: crate::membership::Capacity,
    /// Chunks waiting for a re-replication copy at the last planning round.
    pub repair_backlog: u64,
    /// Re-replication copies commanded and not yet finished.
    pub repair_copies_in_flight: u64,
    /// Copies finished and failed since the server started.
    pub repair_copies_done: u64,
    pub repair_copies_failed: u64,
    /// RPCs admitted and not yet answered.
    pub requests_in_flight: u64,
    /// Planning rounds that scanned the whole chunk map, since start.
    pub repair_scans: u64,
    /// Replication figures, for a control replica.
    pub raft: Option<RaftFigures>,
}

/// A control replica's Raft figures at scrape time.
#[derive(Clone, Copy, Debug, Default)]
pub struct RaftFigures {
    /// 1 while this replica serves as the leader.
    pub leader: u64,
    pub term: u64,
    pub last_log_index: u64,
    pub applied_index: u64,
    pub snapshot_index: u64,
    /// Replicas in the group (voters and learners).
    pub replicas: u64,
    pub voters: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeStateLabel {
    state: &'static str,
}

/// The control server's metrics.
pub struct ControlMetrics {
    registry: Registry,
    requests: Family<OpLabel, Counter>,
    errors: Family<OpLabel, Counter>,
    latency: Family<OpLabel, Histogram>,
    auth_failures: Counter,
    /// 1 once the RPC listener is bound and serving.
    pub serving: Gauge,
    /// Accepted connections closed because their TLS handshake failed.
    tls_failures: Counter,
}

impl Default for ControlMetrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<OpLabel, Counter>::default();
        let errors = Family::<OpLabel, Counter>::default();
        let latency = Family::<OpLabel, Histogram>::new_with_constructor(|| {
            // 10 µs .. ~5 s
            Histogram::new(exponential_buckets(1e-5, 2.0, 20))
        });
        let serving = Gauge::default();
        let auth_failures = Counter::default();
        registry.register(
            "ringfs_control_auth_failures",
            "RPCs refused as unauthenticated or not permitted (a failed authenticate, a \
             call without one, a permission check, a commit of a chunk without its \
             capability)",
            auth_failures.clone(),
        );
        registry.register(
            "ringfs_control_requests",
            "RPCs answered (Control and FileHandle interfaces), by op",
            requests.clone(),
        );
        registry.register(
            "ringfs_control_errors",
            "RPCs answered with an error (Control and FileHandle interfaces), by op",
            errors.clone(),
        );
        registry.register(
            "ringfs_control_request_duration_seconds",
            "Time to answer an RPC (Control and FileHandle interfaces)",
            latency.clone(),
        );
        registry.register(
            "ringfs_control_serving",
            "1 while the RPC listener is serving",
            serving.clone(),
        );
        let tls_failures = Counter::default();
        registry.register(
            "ringfs_control_tls_handshakes_failed",
            "Connections closed because their TLS handshake failed or timed out \
             (not TLS, or a certificate not from the cluster CA)",
            tls_failures.clone(),
        );
        ControlMetrics {
            registry,
            requests,
            errors,
            latency,
            auth_failures,
            serving,
            tls_failures,
        }
    }
}

impl ControlMetrics {
    /// The exposition text, with `cluster`'s figures as gauges.
    pub fn render(&self, cluster: Option<ClusterFigures>) -> String {
        let mut text = String::new();
        let _ = prometheus_client::encoding::text::encode_registry(&mut text, &self.registry);
        if let Some(c) = cluster {
            let mut dynamic = Registry::default();
            let gauge = |dynamic: &mut Registry, name: &str, help: &str, v: u64| {
                let g = Gauge::<i64>::default();
                g.set(v.min(i64::MAX as u64) as i64);
                dynamic.register(name, help, g);
            };
            let nodes = Family::<NodeStateLabel, Gauge>::default();
            nodes
                .get_or_create(&NodeStateLabel { state: "up" })
                .set(c.nodes_up as i64);
            nodes
                .get_or_create(&NodeStateLabel { state: "down" })
                .set(c.nodes_down as i64);
            dynamic.register(
                "ringfs_control_nodes",
                "Registered storage nodes by state",
                nodes,
            );
            gauge(
                &mut dynamic,
                "ringfs_control_map_epoch",
                "Cluster-map epoch",
                c.epoch,
            );
            gauge(
                &mut dynamic,
                "ringfs_control_cluster_capacity_bytes",
                "Capacity reported by the nodes that are up",
                c.capacity.total,
            );
            gauge(
                &mut dynamic,
                "ringfs_control_cluster_used_bytes",
                "Bytes used, as reported by the nodes that are up",
                c.capacity.used,
            );
            gauge(
                &mut dynamic,
                "ringfs_control_cluster_reserved_bytes",
                "Bytes reserved, as reported by the nodes that are up",
                c.capacity.reserved,
            );
            gauge(
                &mut dynamic,
                "ringfs_control_cluster_chunks",
                "Chunk replicas, as reported by the nodes that are up",
                c.capacity.chunks,
            );
            gauge(
                &mut dynamic,
                "ringfs_control_requests_in_flight",
                "RPCs admitted and not yet answered",
                c.requests_in_flight,
            );
            gauge(
                &mut dynamic,
                "ringfs_control_repair_backlog_chunks",
                "Chunks with fewer than R good replicas waiting for a copy (last planning round)",
                c.repair_backlog,
            );
            gauge(
                &mut dynamic,
                "ringfs_control_repair_copies_in_flight",
                "Re-replication copies commanded and not yet finished",
                c.repair_copies_in_flight,
            );
            gauge(
                &mut dynamic,
                "ringfs_control_repair_copies_done",
                "Re-replication copies verified and recorded since start",
                c.repair_copies_done,
            );
            gauge(
                &mut dynamic,
                "ringfs_control_repair_copies_failed",
                "Re-replication copies that failed since start",
                c.repair_copies_failed,
            );
            gauge(
                &mut dynamic,
                "ringfs_control_repair_scans",
                "Planning rounds that scanned the whole chunk map since start (only when something may need repair or collection, and every report interval)",
                c.repair_scans,
            );
            if let Some(r) = c.raft {
                for (name, help, v) in [
                    (
                        "ringfs_control_raft_leader",
                        "1 while this control replica serves as the Raft leader",
                        r.leader,
                    ),
                    ("ringfs_control_raft_term", "Current Raft term", r.term),
                    (
                        "ringfs_control_raft_last_log_index",
                        "Index of the last entry in this replica's Raft log",
                        r.last_log_index,
                    ),
                    (
                        "ringfs_control_raft_applied_index",
                        "Index of the last Raft entry applied to this replica's metadata",
                        r.applied_index,
                    ),
                    (
                        "ringfs_control_raft_snapshot_index",
                        "Last Raft index this replica's latest snapshot covers",
                        r.snapshot_index,
                    ),
                    (
                        "ringfs_control_raft_replicas",
                        "Control replicas in the group (voters and learners)",
                        r.replicas,
                    ),
                    (
                        "ringfs_control_raft_voters",
                        "Voting control replicas in the group",
                        r.voters,
                    ),
                ] {
                    gauge(&mut dynamic, name, help, v);
                }
            }
            let _ = prometheus_client::encoding::text::encode_registry(&mut text, &dynamic);
        }
        let _ = prometheus_client::encoding::text::encode_eof(&mut text);
        text
    }

    /// Counts `r` if it is an authentication or authorization refusal.
    fn record_auth(&self, r: &Result<(), capnp::Error>) {
        use ringfs_schema::control_capnp::ErrorCode;
        if let Err(e) = r {
            if matches!(
                ringfs_schema::wire_error::decode(e).0,
                ErrorCode::Unauthenticated | ErrorCode::PermissionDenied
            ) {
                self.auth_failures.inc();
            }
        }
    }

    fn record(&self, op: &'static str, ok: bool, started: Instant) {
        let l = OpLabel { op };
        self.requests.get_or_create(&l).inc();
        if !ok {
            self.errors.get_or_create(&l).inc();
        }
        self.latency
            .get_or_create(&l)
            .observe(started.elapsed().as_secs_f64());
    }
}

/// A server wrapped so that every call is counted and timed under the
/// name of its method, and passes the server's [`CallGate`] (refused with
/// `unavailable` once the server is stopping).
pub struct Metered<D> {
    inner: D,
    metrics: Rc<ControlMetrics>,
    gate: Rc<CallGate>,
    /// The interface whose methods `names` lists, by method id.
    interface: u64,
    names: &'static [&'static str],
    /// What a method (by id) needs of the replica's leadership.
    needs: fn(u16) -> Needs,
}

/// The dispatcher capnp-rpc calls for a [`Metered`] server.
pub struct MeteredDispatch<D>(Rc<Metered<D>>);

impl<D> Clone for MeteredDispatch<D> {
    fn clone(&self) -> Self {
        MeteredDispatch(self.0.clone())
    }
}

impl<D> std::ops::Deref for MeteredDispatch<D> {
    type Target = Metered<D>;
    fn deref(&self) -> &Metered<D> {
        &self.0
    }
}

impl<D: Server + Clone + 'static> Server for MeteredDispatch<D> {
    fn dispatch_call(
        self,
        interface_id: u64,
        method_id: u16,
        params: Params<capnp::any_pointer::Owned>,
        results: Results<capnp::any_pointer::Owned>,
    ) -> DispatchCallResult {
        let op = match self.0.names.get(method_id as usize) {
            Some(name) if interface_id == self.0.interface => name,
            _ => "unknown",
        };
        let started = Instant::now();
        let leading = match (self.0.needs)(method_id) {
            Needs::Nothing => Ok(()),
            Needs::Leader => self.0.gate.check_leader(),
            Needs::Serving => self.0.gate.check_serving(),
        };
        let admitted = match leading.and_then(|()| self.0.gate.enter()) {
            Ok(a) => a,
            Err(e) => {
                self.0.metrics.record(op, false, started);
                return DispatchCallResult::new(capnp::capability::Promise::err(e.into()), false);
            }
        };
        let inner = self
            .0
            .inner
            .clone()
            .dispatch_call(interface_id, method_id, params, results);
        let metrics = self.0.metrics.clone();
        let promise = inner.promise;
        DispatchCallResult::new(
            capnp::capability::Promise::from_future(async move {
                let r = promise.await;
                metrics.record(op, r.is_ok(), started);
                metrics.record_auth(&r);
                drop(admitted);
                r
            }),
            inner.is_streaming,
        )
    }

    fn as_ptr(&self) -> usize {
        self.0.inner.as_ptr()
    }
}

impl<D: Server + Clone + 'static> FromServer<Metered<D>> for control::Client {
    type Dispatch = MeteredDispatch<D>;
    fn from_server(s: Rc<Metered<D>>) -> MeteredDispatch<D> {
        MeteredDispatch(s)
    }
}

impl<D: Server + Clone + 'static> FromServer<Metered<D>> for file_handle::Client {
    type Dispatch = MeteredDispatch<D>;
    fn from_server(s: Rc<Metered<D>>) -> MeteredDispatch<D> {
        MeteredDispatch(s)
    }
}

/// Wraps a `Control` implementation into a metered client.
pub fn metered_client<S: control::Server + 'static>(
    server: S,
    metrics: Rc<ControlMetrics>,
    gate: Rc<CallGate>,
) -> control::Client {
    let dispatch = <control::Client as FromServer<S>>::from_server(Rc::new(server));
    capnp_rpc::new_client(Metered {
        inner: dispatch,
        metrics,
        gate,
        interface: <control::Client as capnp::traits::HasTypeId>::TYPE_ID,
        names: &CONTROL_METHODS,
        needs: control_needs,
    })
}

/// A client of a `FileHandle` implementation, metered when this thread has
/// a control server's metrics ([`set_current`]).
pub fn file_handle_client<S: file_handle::Server + 'static>(server: S) -> file_handle::Client {
    match CURRENT.with(|c| c.borrow().clone()) {
        None => capnp_rpc::new_client(server),
        Some((metrics, gate)) => {
            let dispatch = <file_handle::Client as FromServer<S>>::from_server(Rc::new(server));
            capnp_rpc::new_client(Metered {
                inner: dispatch,
                metrics,
                gate,
                interface: <file_handle::Client as capnp::traits::HasTypeId>::TYPE_ID,
                names: &FILE_HANDLE_METHODS,
                // A handle (and its lease) belongs to the leader that
                // granted it: a deposed one refuses its calls.
                needs: |_| Needs::Serving,
            })
        }
    }
}

/// Where a scrape reads the cluster figures from, once the server runs.
pub type FiguresSource = Rc<std::cell::RefCell<Option<std::rc::Weak<crate::cluster_state::State>>>>;

/// Serves the monitoring endpoint on `listener` (inside the server's
/// `LocalSet`) until dropped.
pub async fn serve_endpoint(
    listener: tokio::net::TcpListener,
    metrics: Rc<ControlMetrics>,
    figures: FiguresSource,
) {
    ringfs_ops::http::serve(listener, move |path: String| {
        let metrics = metrics.clone();
        let state = figures.borrow().as_ref().and_then(|w| w.upgrade());
        let cluster = state.as_ref().map(|s| s.cluster_figures());
        let stopping = state.is_some_and(|s| s.gate.is_stopping());
        async move {
            use ringfs_ops::http::Response;
            match path.as_str() {
                "/metrics" => Response {
                    status: 200,
                    content_type: ringfs_ops::http::OPENMETRICS,
                    body: metrics.render(cluster),
                },
                "/healthz" => Response::text(200, "ok\n"),
                "/readyz" if metrics.serving.get() == 1 => Response::text(200, "ready\n"),
                "/readyz" if stopping => Response::text(503, "not ready: stopping\n"),
                "/readyz" => Response::text(503, "not ready: starting\n"),
                _ => Response::text(404, "not found: try /metrics, /healthz or /readyz\n"),
            }
        }
    })
    .await
}
