//! SIGTERM on a storage node during a write workload: the node stops
//! taking requests, answers those in flight and exits 0, and every write
//! acknowledged before it stopped reads back intact after a restart.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringfs_client::{BlockingClient, CreateOptions, OpenOptions};
use ringfs_tests::{Cluster, NodeProcess};

fn content(i: usize) -> Vec<u8> {
    (0..40_000 + i * 37).map(|j| (j * 7 + i) as u8).collect()
}

#[test]
fn sigterm_during_writes_exits_0_and_loses_no_acknowledged_write() {
    let mut cluster = Cluster::start(1);
    let control = cluster.control.addr;
    let stop = Arc::new(AtomicBool::new(false));
    // Writers: each file counts as acknowledged once close returned Ok.
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let client = BlockingClient::connect(control).unwrap();
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
    let node = cluster.nodes[0].as_mut().unwrap();
    let status = Command::new("kill")
        .args(["-TERM", &node.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let start = Instant::now();
    let exit = loop {
        if let Some(s) = node.exit_status() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "node did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    stop.store(true, Ordering::Relaxed);
    assert_eq!(exit.code(), Some(0), "node exit status: {exit}");
    let acked: Vec<usize> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert!(acked.len() >= 3, "the workload ran: {} files", acked.len());

    // Restart on the same data: every acknowledged file reads back.
    cluster.nodes[0] = None;
    let node = NodeProcess::start(
        cluster.dir.path(),
        "n0",
        control,
        &["--capacity-bytes", "1073741824"],
    );
    let new_endpoint = node.addr.to_string();
    cluster.nodes[0] = Some(node);
    // The map may still list the stopped node's old endpoint as up until
    // the TTL passes: wait for the restarted node's own.
    let start = Instant::now();
    let client = loop {
        let client = BlockingClient::connect(control).unwrap();
        let map = client.cluster_map().unwrap();
        if map
            .nodes
            .iter()
            .any(|n| n.up && n.shards.contains(&new_endpoint))
        {
            break client;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "node never rejoined: {map:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
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
