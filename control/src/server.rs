//! The control server process: opens the store, starts the group-commit
//! writer, serves Cap'n Proto RPC on a TCP listener and sweeps membership.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use ringfs_ops::tls::Tls;
use ringfs_ops::transport;
use ringfs_schema::control_capnp::control;
use ringfs_schema::wire_error::describe;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use crate::cluster_state::{MembershipTiming, State};
use crate::config::Config;
use crate::error::{ControlError, Result};
use crate::group_commit::Committer;
use crate::metrics::{ControlMetrics, FiguresSource};
use crate::store::MetaStore;

/// Largest batch one group commit applies.
const MAX_BATCH: usize = 1024;
/// How long a node has to report a command's outcome (a 64 MiB copy with
/// read-back takes well under this on any working network).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a stopping server waits for the calls it admitted to be
/// answered before it closes their connections anyway.
const DRAIN_WITHIN: Duration = Duration::from_secs(10);
/// How long it then waits for the metadata writer to commit what it holds
/// and close the store.
const CLOSE_WITHIN: Duration = Duration::from_secs(10);

/// Serves until `shutdown` resolves, then stops in order: stop accepting,
/// refuse new calls, answer those in flight (lease waits are answered
/// `unavailable` at once), close the connections, let the metadata writer
/// commit what it holds and close the store. Everything acknowledged is
/// durable already; the order makes every call that was admitted get its
/// answer, and the store close cleanly.
pub async fn run(config: Config, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    run_reporting(config, |_| {}, shutdown).await
}

/// [`run`], calling `listening` with the bound RPC address once the server
/// accepts connections (for in-process users such as the fuzz targets,
/// which listen on port 0 and cannot read the "listening" line).
pub async fn run_reporting(
    config: Config,
    listening: impl FnOnce(SocketAddr),
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let metrics = Rc::new(ControlMetrics::default());
    let figures = FiguresSource::default();
    let endpoint = match config.metrics {
        None => None,
        Some(addr) => Some(start_metrics_endpoint(addr, &metrics, &figures).await?),
    };
    let (state, writer, listener) = start(&config).await?;
    if let Ok(addr) = listener.local_addr() {
        listening(addr);
    }
    if let Some(r) = &state.replica {
        r.follow(Rc::downgrade(&state));
    }
    crate::metrics::set_current(Some((metrics.clone(), state.gate.clone())));
    let background = [
        spawn_sweeper(&state, &config),
        spawn_planner(&state, &config),
    ];
    *figures.borrow_mut() = Some(Rc::downgrade(&state));
    let bootstrap = || crate::service::bootstrap_metered(&state, metrics.clone());
    metrics.serving.set(1);

    let mut connections = JoinSet::new();
    tokio::select! {
        _ = accept_loop(&listener, config.tls.as_ref(), &mut connections, &bootstrap) => {}
        _ = shutdown => {}
    }

    drop(listener);
    metrics.serving.set(0);
    drain(&state, &background).await;
    // The connections' capabilities hold the state, and the state holds
    // the writer's queue: close them so that the writer can finish.
    connections.shutdown().await;
    crate::metrics::set_current(None);
    if let Some(e) = endpoint {
        e.abort();
    }
    drop(state);
    close_store(writer).await;
    Ok(())
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr`.
async fn start_metrics_endpoint(
    addr: SocketAddr,
    metrics: &Rc<ControlMetrics>,
    figures: &FiguresSource,
) -> Result<JoinHandle<()>> {
    let l = TcpListener::bind(addr)
        .await
        .map_err(|e| ControlError::io(format!("cannot serve metrics on {addr}"), e))?;
    if let Ok(local) = l.local_addr() {
        println!("ringfs-control metrics listening on {local}");
    }
    Ok(tokio::task::spawn_local(crate::metrics::serve_endpoint(
        l,
        metrics.clone(),
        figures.clone(),
    )))
}

/// Opens the store, starts its writer thread (and with replication, the
/// replica), listens, and builds the shared state; prints the "listening"
/// line launchers wait for.
async fn start(config: &Config) -> Result<(Rc<State>, std::thread::JoinHandle<()>, TcpListener)> {
    std::fs::create_dir_all(&config.data).map_err(|e| {
        ControlError::io(
            format!("cannot create data dir {}", config.data.display()),
            e,
        )
    })?;
    let store = Arc::new(MetaStore::open(
        &config.data.join("meta.redb"),
        config.defaults,
    )?);
    write_admin_credential(config)?;
    // The local writer also serves a replica: it is idle there (mutations
    // go through Raft), and it keeps one shutdown path for both.
    let (committer, writer) = Committer::start(store.clone(), MAX_BATCH);
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| ControlError::io(format!("cannot listen on {}", config.listen), e))?;
    let local = listener
        .local_addr()
        .map_err(|e| ControlError::io("cannot read the listening address", e))?;
    let timing = MembershipTiming {
        heartbeat: config.heartbeat,
        node_ttl: config.node_ttl,
    };
    let repair = crate::repair::RepairConfig {
        grace: config.repair_grace,
        max_copies: config.repair_copies,
        orphan_grace: config.orphan_grace,
        report_interval: config.report_interval,
        command_timeout: COMMAND_TIMEOUT,
        node_ttl: config.node_ttl,
    };
    let gate: Rc<crate::call_gate::CallGate> = Rc::default();
    // A data directory with a Raft log belongs to a replica, whatever the
    // flags say: started as a single server it would serve a second,
    // diverging history. Its group is in its log, so no flag is needed.
    let replication = config.replication.clone().or_else(|| {
        config
            .data
            .join(crate::raft::log_store::FILE)
            .exists()
            .then(|| crate::config::Replication::restart_only(config.replication_defaults()))
    });
    let (proposer, replica) = match &replication {
        None => (crate::proposer::Proposer::Local(committer), None),
        Some(r) => {
            let cfg = crate::raft::ReplicaConfig {
                bootstrap: r.bootstrap,
                peers: r.peers.clone(),
                advertise: r.advertise.clone().unwrap_or_else(|| local.to_string()),
                heartbeat: r.heartbeat,
                election: r.election,
                snapshot_every: r.snapshot_every,
                logs_kept: r.logs_kept,
                tls: config.tls.clone(),
            };
            drop(committer);
            let replica = crate::raft::Replica::start(
                cfg,
                &config.data,
                store.clone(),
                gate.clone(),
                config.secret.clone().into(),
                config.defaults,
            )
            .await?;
            (
                crate::proposer::Proposer::Raft(replica.proposer.clone()),
                Some(replica),
            )
        }
    };
    let state = State::new(
        store,
        proposer,
        replica,
        config.secret.clone(),
        timing,
        repair,
        gate,
        config.data.clone(),
        config.capability_key_id,
    )?;
    // Tests and launchers wait for this line to know the port.
    println!("ringfs-control listening on {local}");
    tracing::info!(%local, data = %config.data.display(), "control server started");
    Ok((state, writer, listener))
}

/// Name of the built-in administrator's credential file in the data
/// directory.
pub const ADMIN_CREDENTIAL: &str = "admin.credential";

/// Writes the built-in administrator's credential (derived from the
/// cluster secret) into the data directory, owner-only, unless it exists:
/// the cluster's first credential, from which `ringfs admin user add`
/// issues the others (docs/operations.md).
fn write_admin_credential(config: &Config) -> Result<()> {
    let path = config.data.join(ADMIN_CREDENTIAL);
    if path.exists() {
        return Ok(());
    }
    ringfs_ops::auth::Credential::admin(&config.secret)
        .save(&path)
        .map_err(|e| {
            ControlError::io(
                format!("cannot write {}", path.display()),
                std::io::Error::other(e.to_string()),
            )
        })?;
    tracing::info!(path = %path.display(), "wrote the administrator's credential");
    Ok(())
}

/// Marks silent nodes down every TTL/4.
fn spawn_sweeper(state: &Rc<State>, config: &Config) -> JoinHandle<()> {
    let state = state.clone();
    let period = (config.node_ttl / 4).max(Duration::from_millis(10));
    tokio::task::spawn_local(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            if let Err(e) = state.sweep().await {
                tracing::error!(error = %describe(&e), "membership sweep failed");
            }
        }
    })
}

/// Repair and garbage collection: plans a round every half heartbeat (at
/// most 250 ms: a down node's grace ends without any event), and at once
/// when something it waits for happened (a command finished, a node joined
/// or reported), so that repair does not wait for ticks. A round that finds
/// nothing due does not scan the chunk map.
fn spawn_planner(state: &Rc<State>, config: &Config) -> JoinHandle<()> {
    let state = state.clone();
    let period =
        (config.heartbeat / 2).clamp(Duration::from_millis(20), Duration::from_millis(250));
    tokio::task::spawn_local(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let kick = state.kick.clone();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = kick.notified() => {}
            }
            if let Err(e) = state.plan_round().await {
                tracing::error!(error = %describe(&e), "repair round failed");
            }
        }
    })
}

/// Accepts connections until dropped.
async fn accept_loop(
    listener: &TcpListener,
    tls: Option<&Tls>,
    connections: &mut JoinSet<()>,
    bootstrap: &dyn Fn() -> control::Client,
) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                while connections.try_join_next().is_some() {}
                serve_connection(connections, stream, peer, tls.cloned(), bootstrap());
            }
            Err(e) => {
                // Out of descriptors and the like: back off, keep serving.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Refuses new calls, stops the periodic tasks and waits (up to
/// [`DRAIN_WITHIN`]) for the calls in flight to be answered.
async fn drain(state: &State, background: &[JoinHandle<()>]) {
    state.gate.stop();
    for task in background {
        task.abort();
    }
    tracing::info!(
        in_flight = state.gate.in_flight(),
        "stopping: refusing new calls, answering those in flight"
    );
    if tokio::time::timeout(DRAIN_WITHIN, state.gate.idle())
        .await
        .is_err()
    {
        tracing::warn!(
            in_flight = state.gate.in_flight(),
            "calls still unanswered after {DRAIN_WITHIN:?}: closing their connections"
        );
    }
}

/// Waits (up to [`CLOSE_WITHIN`]) for the metadata writer to commit what it
/// received and stop. It stops once every sender is gone (background tasks
/// finishing a command outcome hold one briefly); the store closes with its
/// last reference.
async fn close_store(writer: std::thread::JoinHandle<()>) {
    let closing = std::time::Instant::now();
    while !writer.is_finished() {
        if closing.elapsed() > CLOSE_WITHIN {
            tracing::warn!("the metadata writer did not stop within {CLOSE_WITHIN:?}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = writer.join();
    tracing::info!("control server stopped: metadata store closed");
}

/// Serves one accepted connection as its own task: with `tls`, its
/// handshake first (a peer that fails it is closed and never read as RPC).
fn serve_connection(
    connections: &mut JoinSet<()>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    tls: Option<Tls>,
    bootstrap: control::Client,
) {
    connections.spawn_local(async move {
        let stream = match transport::accept(stream, tls.as_ref()).await {
            Ok(s) => s,
            Err(e) => {
                crate::metrics::tls_handshake_failed();
                tracing::debug!(%peer, error = %e, "TLS handshake failed: connection closed");
                return;
            }
        };
        if let Err(e) = transport::rpc_server(stream, bootstrap.client).await {
            tracing::debug!(%peer, error = %e, "connection ended");
        }
    });
}
