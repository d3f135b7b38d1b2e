//! A randomized soak: one writer overwrites random ranges of a file (R = 3,
//! W = 2, small chunks) while storage nodes are killed with -9 and
//! restarted one after another, and every node fails a few percent of its
//! chunk writes before writing anything (failpoint
//! `chunk_store::before_persist`, so replicas that are alive miss writes
//! too); a write that fails (the initial content's too) is repeated until
//! it succeeds, so the model of the file is exact. At the end every node
//! runs again, repair settles,
//! `ringfs fsck --verify` finds every replica of every chunk identical, and
//! every byte equals the model.
//!
//! Sized for CI (about 20 s of load); `RINGFS_SOAK_SECS` runs it longer and
//! `RINGFS_SOAK_SEED` replays one (the seed is printed).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use ringfs_client::{Client, ClientOptions, Fd};
use ringfs_tests::files::{get, layout, pattern, read_write, records};
use ringfs_tests::{local, Cluster, NodeOptions, FAST_REPAIR};

const CHUNK: usize = 256 * 1024;
const SIZE: usize = 16 * CHUNK;
const NODES: usize = 4;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// A client that gives up on a dead node quickly.
async fn client(addr: std::net::SocketAddr) -> Client {
    let options = ClientOptions {
        request_timeout: Duration::from_secs(5),
        lock_wait: Duration::from_secs(2),
        record_cache: Duration::ZERO,
        ..ClientOptions::default()
    };
    Client::connect_with(addr, &ringfs_tests::admin(), options)
        .await
        .unwrap()
}

/// Writes `data` at `at`, repeating a write that fails (it may have reached
/// some replicas) until it is acknowledged, so the model stays exact;
/// returns the failed attempts.
async fn write_until_acknowledged(c: &Client, fd: Fd, at: usize, data: &[u8]) -> u64 {
    let since = Instant::now();
    let mut failed = 0;
    loop {
        match c.pwrite(fd, at as u64, data).await {
            Ok(_) => return failed,
            Err(e) => {
                failed += 1;
                assert!(
                    since.elapsed() < Duration::from_secs(30),
                    "a write of {} bytes at {at} kept failing: {e}",
                    data.len()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[test]
fn random_overwrites_while_nodes_die_and_return_leave_identical_replicas_equal_to_the_model() {
    let secs = env_u64("RINGFS_SOAK_SECS").unwrap_or(20);
    let seed = env_u64("RINGFS_SOAK_SEED").unwrap_or_else(rand::random);
    eprintln!("soak: {secs} s, seed {seed} (RINGFS_SOAK_SEED={seed} replays it)");
    let opts = NodeOptions {
        flags: &["--forward-timeout-ms", "3000"],
        failpoints: Some("chunk_store::before_persist=3%return"),
        ..NodeOptions::default()
    };
    let mut cl = Cluster::start_custom(NODES, FAST_REPAIR, &opts);
    let addr = cl.control.addr;
    let initial = pattern(SIZE, seed);
    local(async {
        // Written like the overwrites below: the failpoint is armed from
        // the start, and two replicas of one piece fail now and then.
        let c = client(addr).await;
        let fd = c.create("/soak", layout(CHUNK, 3, 2)).await.unwrap();
        let piece = 2 * CHUNK + CHUNK / 3 + 1;
        for (i, p) in initial.chunks(piece).enumerate() {
            write_until_acknowledged(&c, fd, i * piece, p).await;
        }
        c.close(fd).await.unwrap();
    });
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let mut model = initial.clone();
        std::thread::spawn(move || {
            local(async move {
                let c = client(addr).await;
                let fd = c.open("/soak", &read_write()).await.unwrap();
                let mut rng = StdRng::seed_from_u64(seed);
                let (mut writes, mut retries) = (0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let len = rng.random_range(1..=64 * 1024);
                    let at = rng.random_range(0..=SIZE - len);
                    let mut data = vec![0u8; len];
                    rng.fill_bytes(&mut data);
                    retries += write_until_acknowledged(&c, fd, at, &data).await;
                    model[at..at + len].copy_from_slice(&data);
                    writes += 1;
                }
                c.close(fd).await.unwrap();
                eprintln!("soak: {writes} writes acknowledged, {retries} failed attempts repeated");
                model
            })
        })
    };
    // Kill and restart nodes one after another while the writer runs.
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut kills = 0;
    while Instant::now() < deadline && !writer.is_finished() {
        let victim = rng.random_range(0..NODES);
        std::thread::sleep(Duration::from_millis(rng.random_range(500..1500)));
        cl.kill9(victim);
        kills += 1;
        std::thread::sleep(Duration::from_millis(rng.random_range(500..2500)));
        cl.start_node_with(victim, &opts);
    }
    stop.store(true, Ordering::Relaxed);
    let model = writer.join().expect("the writer failed");
    eprintln!("soak: {kills} nodes killed and restarted");
    cl.wait_up(NODES);
    let healed = cl.wait_clean(Duration::from_secs(90));
    eprintln!("soak: every chunk had 3 good replicas {healed:?} after the last restart");
    let fsck = cl.ringfs(&["fsck", "--verify"]);
    assert_eq!(fsck.code, Some(0), "fsck --verify: {fsck:#?}");
    local(async {
        let c = client(addr).await;
        assert!(
            get(&c, "/soak").await.unwrap() == model,
            "the file differs from the model"
        );
        for r in records(&c, "/soak").await {
            assert_eq!(r.replicas.len(), 3, "chunk {}: {:?}", r.index, r.replicas);
        }
    });
}
