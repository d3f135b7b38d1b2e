//! SIGTERM on the servers.
//!
//! A storage node during a write workload stops taking requests, answers
//! those in flight, tells the control server it is leaving (the map shows
//! it down at once, long before its TTL) and exits 0; every write
//! acknowledged before it stopped reads back intact after a restart.
//!
//! The control server refuses new calls, answers those in flight (a writer
//! waiting for a lease is told the server is stopping), closes its store
//! and exits 0; no create it acknowledged is lost.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ringfs_client::{BlockingClient, ControlClient, CreateOptions, Error, OpenOptions};
use ringfs_tests::{Cluster, ControlProcess};

fn content(i: usize) -> Vec<u8> {
    (0..40_000 + i * 37).map(|j| (j * 7 + i) as u8).collect()
}

#[test]
fn node_sigterm_during_writes_leaves_exits_0_and_loses_no_acknowledged_write() {
    // A node TTL far beyond the test: only the node's leave can mark it down.
    let mut cluster = Cluster::start_with(
        1,
        &["--heartbeat-ms", "200", "--node-ttl-ms", "600000"],
        &[],
    );
    let control = cluster.control.addr;
    let stop = Arc::new(AtomicBool::new(false));
    // Writers: each file counts as acknowledged once close returned Ok.
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let client = BlockingClient::connect(control, &ringfs_tests::admin()).unwrap();
                let layout = CreateOptions {
                    chunk_size: 1 << 20,
                    replication: 1,
                    ..Default::default()
                };
                let mut acked = Vec::new();
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let n = w * 100_000 + i;
                    let path = format!("/w{n}");
                    let r = client.create(&path, layout).and_then(|fd| {
                        client.write(fd, &content(n))?;
                        client.close(fd)
                    });
                    match r {
                        Ok(()) => acked.push(n),
                        Err(_) => break,
                    }
                }
                acked
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let exit = cluster.nodes[0].as_mut().unwrap().terminate();
    stop.store(true, Ordering::Relaxed);
    assert_eq!(exit.code(), Some(0), "node exit status: {exit}");
    // The node waited for the control server to take its leave before it
    // exited: the map says so already.
    let client = BlockingClient::connect(control, &ringfs_tests::admin()).unwrap();
    let map = client.cluster_map().unwrap();
    assert!(
        map.nodes.iter().all(|n| !n.up),
        "a node that left is down at once: {map:?}"
    );
    let acked: Vec<usize> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert!(acked.len() >= 3, "the workload ran: {} files", acked.len());

    // Restart on the same data: every acknowledged file reads back.
    cluster.nodes[0] = None;
    cluster.start_node(0, &[]);
    cluster.wait_up(1);
    for &n in &acked {
        let want = content(n);
        let fd = client
            .open(&format!("/w{n}"), &OpenOptions::read())
            .unwrap();
        let mut got = vec![0u8; want.len() + 1];
        let len = client.pread(fd, 0, &mut got).unwrap();
        client.close(fd).unwrap();
        assert_eq!(len, want.len(), "/w{n} length");
        assert!(got[..len] == want[..], "/w{n} content");
    }
    eprintln!("{} acknowledged files intact", acked.len());
}

#[test]
fn control_sigterm_answers_a_waiting_writer_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let mut control = ControlProcess::start(dir.path(), "127.0.0.1:0", &[]);
    let addr = control.addr;
    let (queued_tx, queued_rx) = std::sync::mpsc::channel();
    let clients = std::thread::spawn(move || {
        ringfs_client::local(async move {
            let holder = ControlClient::connect(addr, &ringfs_tests::admin())
                .await
                .unwrap();
            holder.create("/f", CreateOptions::default()).await.unwrap();
            let _lease = holder.open("/f", true, Duration::ZERO).await.unwrap();
            // A second writer queues for the lease, for up to a minute.
            let waiter = ControlClient::connect(addr, &ringfs_tests::admin())
                .await
                .unwrap();
            let wait = tokio::task::spawn_local(async move {
                waiter
                    .open("/f", true, Duration::from_secs(60))
                    .await
                    .map(|_| ())
            });
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(!wait.is_finished(), "the second writer waits for the lease");
            queued_tx.send(()).unwrap();
            wait.await.unwrap()
        })
    });
    queued_rx.recv().unwrap();
    let exit = control.terminate();
    assert_eq!(exit.code(), Some(0), "control exit status: {exit}");
    match clients.join().unwrap() {
        Err(Error::Unavailable { message: msg, .. }) => {
            assert!(msg.contains("stopping"), "answered, not cut off: {msg}")
        }
        other => panic!("the waiting writer got {other:?}"),
    }
}

#[test]
fn control_sigterm_during_creates_exits_0_and_loses_no_acknowledged_create() {
    let dir = tempfile::tempdir().unwrap();
    let mut control = ControlProcess::start(dir.path(), "127.0.0.1:0", &[]);
    let addr = control.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let creators: Vec<_> = (0..4)
        .map(|w| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                ringfs_client::local(async move {
                    let c = ControlClient::connect(addr, &ringfs_tests::admin())
                        .await
                        .unwrap();
                    let mut acked = Vec::new();
                    let mut failure = None;
                    for i in 0.. {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let path = format!("/c{w}-{i}");
                        match c.create(&path, CreateOptions::default()).await {
                            Ok(_) => acked.push(path),
                            Err(e) => {
                                failure = Some(e);
                                break;
                            }
                        }
                    }
                    (acked, failure)
                })
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1000));
    let exit = control.terminate();
    stop.store(true, Ordering::Relaxed);
    assert_eq!(exit.code(), Some(0), "control exit status: {exit}");
    let mut acked = Vec::new();
    for c in creators {
        let (paths, failure) = c.join().unwrap();
        // How each creator's run ended: refused as stopping, or its
        // connection closed; never a wrong answer.
        if let Some(e) = failure {
            assert!(
                matches!(
                    e,
                    Error::Unavailable { .. } | Error::Internal { .. } | Error::Timeout(_)
                ),
                "{e:?}"
            );
        }
        acked.extend(paths);
    }
    assert!(
        acked.len() >= 10,
        "the workload ran: {} creates",
        acked.len()
    );

    let addr = control.addr.to_string();
    drop(control);
    let control = ControlProcess::start(dir.path(), &addr, &[]);
    let addr = control.addr;
    let missing = ringfs_client::local(async move {
        let c = ControlClient::connect(addr, &ringfs_tests::admin())
            .await
            .unwrap();
        let mut missing = Vec::new();
        for p in &acked {
            if c.stat(p).await.is_err() {
                missing.push(p.clone());
            }
        }
        eprintln!("{} acknowledged creates checked", acked.len());
        missing
    });
    assert!(missing.is_empty(), "acknowledged and lost: {missing:?}");
}
