//! Node start-up: limits, shard executors (one pinned per core), then the
//! control-plane link.

use crate::config::NodeConfig;
use crate::control_link::ControlLink;
use crate::identity::Identity;
use crate::shard::{Shard, ShardConfig};
use crate::token::TokenKey;
use anyhow::{bail, Context};
use futures::channel::mpsc;
use glommio::{LocalExecutorBuilder, Placement};
use ringfs_schema::ids::ChunkId;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

/// How long a stopping node waits for the control server to acknowledge
/// that it is leaving before it exits anyway.
const LEAVE_WITHIN: Duration = Duration::from_secs(5);

/// Locked memory glommio needs per executor beyond its I/O memory (rings).
const RING_OVERHEAD: u64 = 512 * 1024;
/// Least I/O memory per shard worth registering.
const MIN_IO_MEMORY: u64 = 256 * 1024;

/// Makes sure RLIMIT_MEMLOCK covers the shards' registered I/O memory,
/// raising it if allowed; otherwise shrinks the I/O memory to fit, or fails
/// with what to raise. Returns the I/O memory per shard, bytes.
pub fn prepare_memlock(shards: usize, want: usize) -> anyhow::Result<usize> {
    let shards = shards as u64;
    let need = shards * (want as u64 + RING_OVERHEAD);
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0 {
        bail!(
            "getrlimit(RLIMIT_MEMLOCK): {}",
            std::io::Error::last_os_error()
        );
    }
    if lim.rlim_cur == libc::RLIM_INFINITY || lim.rlim_cur >= need {
        return Ok(want);
    }
    let raised = libc::rlimit {
        rlim_cur: need,
        rlim_max: if lim.rlim_max == libc::RLIM_INFINITY {
            lim.rlim_max
        } else {
            lim.rlim_max.max(need)
        },
    };
    // SAFETY: valid pointer to an initialized rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raised) } == 0 {
        tracing::info!(
            "raised RLIMIT_MEMLOCK from {} to {need} bytes",
            lim.rlim_cur
        );
        return Ok(want);
    }
    let fit = (lim.rlim_cur / shards).saturating_sub(RING_OVERHEAD);
    if fit >= MIN_IO_MEMORY {
        tracing::warn!(
            "RLIMIT_MEMLOCK is {} bytes and cannot be raised: using {fit} bytes of I/O memory per shard instead of {want} \
             (raise `ulimit -l` to {} KiB, or LimitMEMLOCK= in the systemd unit, for full performance)",
            lim.rlim_cur,
            need.div_ceil(1024)
        );
        return Ok(fit as usize);
    }
    bail!(
        "RLIMIT_MEMLOCK is {} bytes, too low for {shards} io_uring shards: raise it to at least {} KiB \
         (`ulimit -l {}`, or LimitMEMLOCK={} in the systemd unit)",
        lim.rlim_cur,
        need.div_ceil(1024),
        need.div_ceil(1024),
        need
    )
}

/// Raises RLIMIT_NOFILE to its hard limit (a file per open chunk).
fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointers.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

pub fn shard_dir(data: &Path, shard: usize) -> PathBuf {
    data.join(format!("shard-{shard}"))
}

/// Moves chunk files into the directory of the shard owning them, in case
/// the shard count changed since they were written.
fn rehome_chunks(data: &Path, shards: usize) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(data)? {
        let dir = entry?.path();
        let Some(name) = dir.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if !dir.is_dir() || !name.starts_with("shard-") {
            continue;
        }
        for f in std::fs::read_dir(&dir)? {
            let path = f?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("chunk") {
                continue;
            }
            let Some(id) = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(ChunkId::from_file_stem)
            else {
                continue;
            };
            let home = shard_dir(data, id.shard(shards));
            if home != dir {
                std::fs::create_dir_all(&home)?;
                std::fs::rename(&path, home.join(path.file_name().expect("file name")))?;
                tracing::info!("moved chunk {id} to {}", home.display());
            }
        }
    }
    Ok(())
}

/// Blocks SIGTERM and SIGINT in the calling thread, and so in every thread
/// it starts afterwards: they are then received only by [`wait_for_stop`].
fn block_stop_signals() -> anyhow::Result<libc::sigset_t> {
    // SAFETY: plain libc calls on a zeroed, then initialized, sigset_t.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            bail!(
                "blocking SIGTERM: {}",
                std::io::Error::from_raw_os_error(rc)
            );
        }
        Ok(set)
    }
}

/// On a thread of its own: the first SIGTERM or SIGINT drains every shard
/// (they stop accepting, answer what they read, and return, so the node
/// exits 0); a second one exits at once.
fn wait_for_stop(
    set: libc::sigset_t,
    shards: Vec<mpsc::UnboundedSender<crate::shard::ShardCommand>>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("ringfs-signals".into())
        .spawn(move || {
            let mut first = true;
            loop {
                let mut sig: libc::c_int = 0;
                // SAFETY: `set` is initialized and `sig` a valid out-pointer.
                if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                    continue;
                }
                if !first {
                    tracing::warn!(signal = sig, "second stop signal: exiting now");
                    std::process::exit(1);
                }
                first = false;
                tracing::info!(signal = sig, "stopping: draining every shard");
                for s in &shards {
                    let _ = s.unbounded_send(crate::shard::ShardCommand::Drain);
                }
            }
        })
        .map(|_| ())
}

/// Runs the node until it fails, or until SIGTERM/SIGINT and every shard
/// has drained.
pub fn run(cfg: NodeConfig) -> anyhow::Result<()> {
    let stop_signals = block_stop_signals()?;
    let shards = cfg.cores.len();
    let io_memory = prepare_memlock(shards, cfg.io_memory)?;
    raise_nofile();
    ringfs_ops::auth::check_private(&cfg.secret_file)?;
    let secret = std::fs::read(&cfg.secret_file)
        .with_context(|| format!("reading the cluster secret {}", cfg.secret_file.display()))?;
    let secret = String::from_utf8_lossy(&secret).trim().as_bytes().to_vec();
    let tls = cfg.tls.clone();
    std::fs::create_dir_all(&cfg.data)
        .with_context(|| format!("creating {}", cfg.data.display()))?;
    let identity_path = cfg.data.join("node-identity");
    let identity = Identity::load(&identity_path)?;
    let node_id = Arc::new(AtomicU64::new(identity.node_id));
    rehome_chunks(&cfg.data, shards)?;
    let key = TokenKey::random().context("generating the token key")?;
    let capabilities = ringfs_ops::capability::CapabilityKeys::new(&secret, cfg.capability_key_id);
    let metrics = Arc::new(crate::metrics::NodeMetrics::new(shards));
    if let Some(addr) = cfg.metrics {
        let local = crate::metrics::spawn_endpoint(addr, metrics.clone())
            .with_context(|| format!("serving metrics on {addr}"))?;
        println!("ringfs-node: metrics listening on {local}");
    }

    let map_wanted = Arc::new(tokio::sync::Notify::new());
    let mut handles = Vec::new();
    let mut endpoints = Vec::new();
    let mut commands = Vec::new();
    for (index, &core) in cfg.cores.iter().enumerate() {
        let (cmd_tx, cmd_rx) = mpsc::unbounded();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel::<Result<SocketAddr, String>>();
        let scfg = ShardConfig {
            index,
            shards,
            dir: shard_dir(&cfg.data, index),
            capacity_bytes: cfg.capacity_bytes / shards as u64,
            default_lease: Duration::from_millis(cfg.lease_ms),
            max_lease: Duration::from_secs(600),
            implicit_lease: Duration::from_secs(60),
            scrub_bytes_per_sec: cfg.scrub_bytes_per_sec,
            forward_timeout: Duration::from_millis(cfg.forward_timeout_ms),
            limits: crate::shard::Limits::default(),
            metrics: metrics.shard(index),
            tls: tls.clone(),
            capabilities: capabilities.clone(),
            map_wanted: map_wanted.clone(),
        };
        let port = if cfg.base_port == 0 {
            0
        } else {
            cfg.base_port + index as u16
        };
        let bind = SocketAddr::new(cfg.listen, port);
        let node_id = node_id.clone();
        let key = key.clone();
        let handle = LocalExecutorBuilder::new(Placement::Fixed(core))
            .name(&format!("ringfs-shard-{index}"))
            .io_memory(io_memory)
            .spawn(move || async move {
                let shard = match Shard::open(scfg, node_id, key).await {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = addr_tx.send(Err(format!("{e:#}")));
                        return;
                    }
                };
                let listener = match glommio::net::TcpListener::bind(bind) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = addr_tx.send(Err(format!("binding {bind}: {e}")));
                        return;
                    }
                };
                let _ = addr_tx.send(listener.local_addr().map_err(|e| e.to_string()));
                shard.serve(listener, cmd_rx).await;
            })
            .map_err(|e| anyhow::anyhow!("starting shard {index} on core {core}: {e}"))?;
        let addr = addr_rx
            .recv()
            .map_err(|_| anyhow::anyhow!("shard {index} died during start-up"))?
            .map_err(|e| anyhow::anyhow!("shard {index}: {e}"))?;
        endpoints.push(addr.to_string());
        commands.push(cmd_tx);
        handles.push(handle);
    }
    let _ = metrics.commands.set(commands.clone());
    // Announced only now that every shard serves: launchers and tests that
    // wait for these lines then find the node past "shards are starting".
    for (index, (core, addr)) in cfg.cores.iter().zip(&endpoints).enumerate() {
        println!("ringfs-node: shard {index} on core {core} listening on {addr}");
    }
    wait_for_stop(stop_signals, commands.clone()).context("starting the signal thread")?;
    let link = ControlLink {
        joined: metrics.joined.clone(),
        control_addr: cfg.control.clone(),
        cred: ringfs_ops::auth::Credential::cluster(&secret),
        tls,
        identity_path,
        node_id,
        endpoints,
        shards: commands,
        map_wanted,
        next: Default::default(),
        leader_hint: Default::default(),
    }
    .spawn()?;
    for (i, h) in handles.into_iter().enumerate() {
        if let Err(e) = h.join() {
            bail!("shard {i} failed: {e}");
        }
    }
    tracing::info!("every shard drained");
    // Shards return only after a drain, so the node is stopping: say so,
    // so that clients and placement stop using it now rather than after
    // the node TTL.
    match link.leave(LEAVE_WITHIN) {
        Ok(epoch) => tracing::info!(epoch, "left the cluster: exiting"),
        Err(e) => tracing::warn!(
            "could not report leaving ({e}); the control server marks this node down after its TTL"
        ),
    }
    Ok(())
}
