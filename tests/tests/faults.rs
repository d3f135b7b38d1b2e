//! Fault injection: real `ringfs-control` and `ringfs-node` processes on
//! loopback, broken on purpose (kill -9, corrupted chunk files, a full node,
//! a partitioned node, garbage on the wire), each test asserting on the
//! data itself. Timing flags are short (`FAST_REPAIR`: 200 ms heartbeats,
//! 1 s TTL, 1 s repair grace, 1 s chunk reports, 5 s orphan grace) so the
//! suite stays bounded; every wait has a deadline.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringfs_client::{Client, OpenOptions};
use ringfs_tests::files::{
    corrupt_chunk_file, get, layout, overwrite, pattern, put, read_write, records,
};
use ringfs_tests::{
    local, with_client, Cluster, ControlProcess, Netns, NodeOptions, NodeProcess, FAST_REPAIR,
};

const MIB: usize = 1 << 20;

/// 1. 256 MiB with R=3, kill -9 one node: everything still reads back
///    byte-identical, and within grace + repair time every chunk has 3 good
///    replicas again (on the two survivors plus a fourth node).
#[test]
fn a_killed_node_loses_nothing_and_its_chunks_are_re_replicated() {
    const FILES: u64 = 4;
    const SIZE: usize = 64 * MIB;
    let mut cl = Cluster::start_with(3, FAST_REPAIR, &[]);
    let addr = cl.control.addr;
    let t = Instant::now();
    with_client(addr, async |c| {
        for f in 0..FILES {
            put(
                c,
                &format!("/f{f}"),
                &pattern(SIZE, f),
                layout(4 * MIB, 3, 3),
            )
            .await
            .unwrap();
        }
    });
    eprintln!("wrote 256 MiB in {:?}", t.elapsed());
    cl.wait_clean(Duration::from_secs(30));

    let victim = cl.node_id(1);
    cl.kill9(1);
    cl.start_node(3, &[]);
    let killed = Instant::now();
    with_client(addr, async |c| {
        for f in 0..FILES {
            assert!(get(c, &format!("/f{f}")).await.unwrap() == pattern(SIZE, f));
        }
    });
    let repaired = cl.wait_clean(Duration::from_secs(150));
    eprintln!(
        "256 MiB re-replicated {:?} after the kill (grace 1 s + TTL 1 s included)",
        killed.elapsed()
    );
    let _ = repaired;
    with_client(addr, async |c| {
        for f in 0..FILES {
            let path = format!("/f{f}");
            for r in records(c, &path).await {
                assert_eq!(r.replicas.len(), 3, "{path} chunk {}", r.index);
                assert!(
                    !r.replicas.contains(&victim),
                    "{path} still lists the dead node"
                );
            }
        }
    });
    // Only the copies remain readable from the survivors and the new node:
    // kill one more original and read everything again.
    cl.kill9(0);
    cl.wait_up(2);
    with_client(addr, async |c| {
        for f in 0..FILES {
            assert!(get(c, &format!("/f{f}")).await.unwrap() == pattern(SIZE, f));
        }
    });
}

/// 2. kill -9 a node in the middle of a large overwrite: the write either
///    succeeds (W=2 of R=3) or fails with an error; a concurrent reader sees
///    every chunk either wholly old or wholly new; after recovery fsck is
///    clean.
#[test]
fn a_node_killed_mid_write_never_mixes_bytes_inside_a_chunk() {
    const SIZE: usize = 48 * MIB;
    const CHUNK: usize = MIB;
    let mut cl = Cluster::start_with(3, FAST_REPAIR, &[]);
    let addr = cl.control.addr;
    let old = pattern(SIZE, 1);
    let new = pattern(SIZE, 2);
    with_client(addr, async |c| {
        put(c, "/big", &old, layout(CHUNK, 3, 2)).await.unwrap();
    });
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (old, new, stop) = (old.clone(), new.clone(), stop.clone());
        std::thread::spawn(move || {
            with_client(addr, async |c| {
                let mut chunks_checked = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let fd = c.open("/big", &OpenOptions::read()).await.unwrap();
                    let mut buf = vec![0u8; CHUNK];
                    for i in 0..SIZE / CHUNK {
                        let at = i * CHUNK;
                        // A read may fail while a node dies; it must never
                        // return a mixture.
                        if c.pread(fd, at as u64, &mut buf).await.is_ok() {
                            let o = buf[..] == old[at..at + CHUNK];
                            let n = buf[..] == new[at..at + CHUNK];
                            assert!(o || n, "chunk {i} mixes old and new bytes");
                            chunks_checked += 1;
                        }
                    }
                    let _ = c.close(fd).await;
                }
                chunks_checked
            })
        })
    };
    let writer = {
        let new = new.clone();
        std::thread::spawn(move || {
            with_client(addr, async |c| {
                let fd = c.open("/big", &read_write()).await?;
                for piece in new.chunks(4 * MIB) {
                    c.write(fd, piece).await?;
                }
                c.close(fd).await
            })
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    cl.kill9(2);
    let outcome = writer.join().unwrap();
    match &outcome {
        Ok(()) => eprintln!("the overwrite completed with a node killed"),
        Err(e) => {
            let msg = e.to_string();
            eprintln!("the overwrite failed cleanly: {msg}");
            assert!(!msg.is_empty());
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let checked = reader.join().unwrap();
    assert!(checked > 0, "the reader read nothing");
    if outcome.is_ok() {
        with_client(addr, async |c| {
            assert!(get(c, "/big").await.unwrap() == new);
            for r in records(c, "/big").await {
                assert!(
                    r.replicas.len() >= 2,
                    "chunk {} below W: {:?}",
                    r.index,
                    r.replicas
                );
            }
        });
    }
    cl.start_node(3, &[]);
    cl.wait_clean(Duration::from_secs(90));
    // After recovery every chunk is wholly old or wholly new, on every
    // path a reader may take (all replicas good).
    with_client(addr, async |c| {
        let data = get(c, "/big").await.unwrap();
        for (i, chunk) in data.chunks(CHUNK).enumerate() {
            let at = i * CHUNK;
            assert!(chunk == &old[at..at + CHUNK] || chunk == &new[at..at + CHUNK]);
        }
        if outcome.is_ok() {
            assert!(data == new);
        }
    });
}

/// 3. kill -9 the control server during a stream of creates and writes and
///    restart it: every acknowledged operation is there, the one in flight
///    failed with an error, nodes and the same client reconnect by
///    themselves, and the cluster serves again.
#[test]
fn a_control_server_crash_loses_nothing_acknowledged() {
    let mut cl = Cluster::start_with(3, FAST_REPAIR, &[]);
    let addr = cl.control.addr;
    let acked: Arc<Mutex<Vec<u64>>> = Arc::default();
    let failed: Arc<Mutex<Option<String>>> = Arc::default();
    let restarted = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, failed, restarted) = (acked.clone(), failed.clone(), restarted.clone());
        std::thread::spawn(move || {
            with_client(addr, async |c| {
                c.mkdir("/s", 0).await.unwrap();
                let start = Instant::now();
                for i in 0u64.. {
                    assert!(start.elapsed() < Duration::from_secs(90), "never resumed");
                    let data = pattern(100_000 + i as usize, i);
                    let r = put(c, &format!("/s/f{i}"), &data, layout(64 * 1024, 3, 2)).await;
                    match r {
                        Ok(()) => {
                            acked.lock().unwrap().push(i);
                            if restarted.load(Ordering::Relaxed) {
                                // The same client works again: done.
                                return;
                            }
                        }
                        Err(e) => {
                            failed.lock().unwrap().get_or_insert(e.to_string());
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            })
        })
    };
    std::thread::sleep(Duration::from_millis(2000));
    let before = acked.lock().unwrap().len();
    assert!(before >= 3, "too few operations before the crash");
    cl.kill_control9();
    // Down for a while: the operation in flight fails (or, if the crash
    // fell between operations, the next one waits for the reconnect).
    std::thread::sleep(Duration::from_millis(1500));
    cl.restart_control(FAST_REPAIR);
    restarted.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    match failed.lock().unwrap().as_ref() {
        Some(e) => eprintln!("the operation in flight failed: {e}"),
        None => eprintln!("the crash fell between operations; the client reconnected"),
    }
    // Nodes rejoined by themselves.
    cl.wait_up(3);
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > before,
        "nothing acknowledged after the restart"
    );
    with_client(addr, async |c| {
        for &i in &acked {
            let data = pattern(100_000 + i as usize, i);
            assert!(
                get(c, &format!("/s/f{i}")).await.unwrap() == data,
                "acknowledged file /s/f{i} differs after the restart"
            );
        }
    });
    cl.wait_clean(Duration::from_secs(30));
}

/// 4. A node restarted after missing writes is never served from: its copy
///    is older than the record, reads go elsewhere (or fail when only it is
///    left) and never return the old bytes; repair then brings it up to date.
#[test]
fn a_node_that_missed_writes_is_not_served_stale_data_from() {
    const SIZE: usize = 512 * 1024;
    let mut cl = Cluster::start_with(3, FAST_REPAIR, &[]);
    let addr = cl.control.addr;
    let old = pattern(SIZE, 3);
    let new = pattern(SIZE, 4);
    with_client(addr, async |c| {
        put(c, "/f", &old, layout(64 * 1024, 3, 2)).await.unwrap();
    });
    cl.wait_clean(Duration::from_secs(20));
    cl.kill9(0);
    cl.wait_up(2);
    with_client(addr, async |c| {
        overwrite(c, "/f", 0, &new).await.unwrap();
    });
    cl.start_node(0, &[]);
    cl.wait_up(3);
    let read = move || {
        local(async move {
            get(
                &Client::connect(addr, &ringfs_tests::admin()).await.unwrap(),
                "/f",
            )
            .await
        })
    };
    assert!(read().unwrap() == new);
    // Only the stale node and one good one: still the new bytes.
    cl.kill9(1);
    cl.wait_up(2);
    assert!(read().unwrap() == new);
    // Only the stale node: an error, never the old bytes.
    cl.kill9(2);
    cl.wait_up(1);
    match read() {
        Ok(data) => assert!(data == new, "stale bytes served"),
        Err(e) => eprintln!("with only the stale node up, reads fail: {e}"),
    }
    cl.start_node(1, &[]);
    cl.start_node(2, &[]);
    cl.wait_up(3);
    cl.wait_clean(Duration::from_secs(60));
    // Repaired: the once-stale node alone serves the new bytes.
    cl.kill9(1);
    cl.kill9(2);
    cl.wait_up(1);
    assert!(read().unwrap() == new);
}

/// 5. Flip bytes in a chunk file: the scrubber finds it without any client
///    read, the control server has it repaired from another replica, and the
///    repaired replica alone serves the right bytes.
#[test]
fn a_corrupt_chunk_file_is_found_by_the_scrubber_and_repaired() {
    let mut cl = Cluster::start_with(3, FAST_REPAIR, &["--scrub-bytes-per-sec", "67108864"]);
    let addr = cl.control.addr;
    let data = pattern(2 * MIB, 5);
    let (chunk, first) = with_client(addr, async |c| {
        put(c, "/c", &data, layout(256 * 1024, 3, 3)).await.unwrap();
        let r = records(c, "/c").await.remove(0);
        (r.chunk_id, r.replicas[0])
    });
    cl.wait_clean(Duration::from_secs(20));
    let bad = cl.index_of(first);
    let file = cl.node(bad).chunk_file(chunk);
    corrupt_chunk_file(&file, &data[..64], 5000, 16);
    // Repaired with no client read: the bad replica's file holds the right
    // bytes again (copied from another replica on the control server's
    // command), then the map is clean. Watching the map turn unhealthy
    // instead missed repairs that finished between two polls.
    let chunk_len = 256 * 1024;
    let intact = || {
        let f = std::fs::read(&file).unwrap_or_default();
        f.windows(64)
            .position(|w| w == &data[..64])
            .is_some_and(|p| f.len() >= p + chunk_len && f[p..p + chunk_len] == data[..chunk_len])
    };
    assert!(!intact(), "the corruption did not take");
    let start = Instant::now();
    while !intact() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "corruption never repaired"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let repaired = start.elapsed();
    let t = cl.wait_clean(Duration::from_secs(30));
    eprintln!("corruption repaired after {repaired:?}, the map clean {t:?} later");
    cl.keep_only(bad);
    with_client(addr, async |c| {
        assert!(get(c, "/c").await.unwrap() == data);
        assert_eq!(c.repairs(), 0, "the replica was already good");
    });
}

/// 6. A full node (capacity limit): its reservations are refused, writes go
///    to the other nodes, and what it already stored stays intact.
#[test]
fn a_full_node_refuses_reservations_and_writes_go_elsewhere() {
    let mut cl = Cluster::start_with(3, FAST_REPAIR, &[]);
    let addr = cl.control.addr;
    // A fourth node with room for about three 4 MiB chunks.
    cl.start_node(3, &["--capacity-bytes", "13000000"]);
    cl.wait_up(4);
    let small = cl.node_id(3);
    let first = pattern(4 * MIB, 6);
    let second = pattern(40 * MIB, 7);
    with_client(addr, async |c| {
        // R=4: every chunk wants the small node until it is full.
        put(c, "/first", &first, layout(4 * MIB, 4, 3))
            .await
            .unwrap();
        let recs = records(c, "/first").await;
        assert!(
            recs[0].replicas.contains(&small),
            "the small node took the first file"
        );
        put(c, "/second", &second, layout(4 * MIB, 4, 3))
            .await
            .unwrap();
        let recs = records(c, "/second").await;
        let on_small = recs.iter().filter(|r| r.replicas.contains(&small)).count();
        assert!(on_small < recs.len(), "the full node took every chunk");
        for r in &recs {
            assert!(
                r.replicas.len() >= 3,
                "chunk {} has {:?}",
                r.index,
                r.replicas
            );
        }
        let map = c.cluster_map().await.unwrap();
        let n = map.nodes.iter().find(|n| n.node_id == small).unwrap();
        assert!(
            n.capacity.used <= 13_000_000,
            "over quota: {:?}",
            n.capacity
        );
        assert!(get(c, "/first").await.unwrap() == first);
        assert!(get(c, "/second").await.unwrap() == second);
    });
    // What the full node stored is intact: read /first from it alone.
    cl.keep_only(3);
    with_client(addr, async |c| {
        assert!(get(c, "/first").await.unwrap() == pattern(4 * MIB, 6));
    });
}

/// A TCP proxy whose traffic can be cut: connections are forwarded to
/// `to` while open; cutting closes every connection and refuses new ones.
struct Partition {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
}

impl Partition {
    fn start(to: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let c = cut.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(a) = conn else { continue };
                if c.load(Ordering::Relaxed) {
                    continue; // dropped: refused
                }
                let Ok(b) = TcpStream::connect(to) else {
                    continue;
                };
                for (mut from, mut into) in
                    [(a.try_clone().unwrap(), b.try_clone().unwrap()), (b, a)]
                {
                    let c = c.clone();
                    from.set_read_timeout(Some(Duration::from_millis(50)))
                        .unwrap();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16384];
                        while !c.load(Ordering::Relaxed) {
                            match from.read(&mut buf) {
                                Ok(0) => break,
                                Ok(n) => {
                                    if into.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock
                                            | std::io::ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => break,
                            }
                        }
                        let _ = into.shutdown(std::net::Shutdown::Both);
                        let _ = from.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Partition { addr, cut }
    }
}

/// How test 7 cuts a node off.
enum Cut {
    /// A real partition: the node runs in its own network namespace.
    Netns(Netns),
    /// Fallback where namespaces are not allowed: only the node's control
    /// link goes through a proxy that drops it.
    Proxy(Partition),
}

impl Cut {
    fn set(&self, cut: bool) {
        match self {
            Cut::Netns(ns) => ns.set(!cut),
            Cut::Proxy(p) => p.cut.store(cut, Ordering::Relaxed),
        }
    }
}

/// 7. A partitioned node behaves like a down node (down in the map, its
///    chunks re-replicated, a file unlinked meanwhile) and heals: it rejoins
///    under its id and its copies that no file needs any more, including
///    those of the unlinked file, are deleted. Uses a network namespace
///    where the machine allows it (the node loses all traffic), else a
///    proxy on its control link.
#[test]
fn a_partitioned_node_is_treated_as_down_and_heals() {
    let dir = tempfile::tempdir().unwrap();
    let big = ["--capacity-bytes", "2147483648"];
    let small = ["--capacity-bytes", "1073741824"];
    let (cut, control, nodes, cut_off) = match Netns::create() {
        Some(ns) => {
            eprintln!("partition: network namespace {}", ns.name);
            let control = ControlProcess::start(dir.path(), "0.0.0.0:0", FAST_REPAIR);
            let ctl: SocketAddr = format!("{}:{}", ns.host_ip, control.addr.port())
                .parse()
                .unwrap();
            let nodes = (0..3)
                .map(|i| {
                    let name = format!("n{i}");
                    let opts = NodeOptions {
                        listen: &ns.host_ip,
                        flags: &small,
                        ..NodeOptions::default()
                    };
                    Some(NodeProcess::start_with(dir.path(), &name, ctl, &opts))
                })
                .collect();
            let opts = NodeOptions {
                listen: &ns.ns_ip,
                netns: Some(&ns.name),
                flags: &big,
                ..NodeOptions::default()
            };
            let p = NodeProcess::start_with(dir.path(), "p", ctl, &opts);
            (Cut::Netns(ns), control, nodes, p)
        }
        None => {
            eprintln!("partition: network namespaces not allowed here, proxy on the control link");
            let control = ControlProcess::start(dir.path(), "127.0.0.1:0", FAST_REPAIR);
            let proxy = Partition::start(control.addr);
            let nodes = (0..3)
                .map(|i| {
                    Some(NodeProcess::start(
                        dir.path(),
                        &format!("n{i}"),
                        control.addr,
                        &small,
                    ))
                })
                .collect();
            let p = NodeProcess::start(dir.path(), "p", proxy.addr, &big);
            (Cut::Proxy(proxy), control, nodes, p)
        }
    };
    let mut cut_off = cut_off;
    let cl = Cluster {
        control,
        nodes,
        dir,
    };
    let addr = cl.control.addr;
    cl.wait_up(4);
    let p_id = cl.node_id_at(cut_off.addr);
    let data = pattern(2 * MIB, 8);
    let (keep, gone) = with_client(addr, async |c| {
        // The partitioned node has the most free space: it holds every chunk.
        put(c, "/keep", &data, layout(256 * 1024, 3, 3))
            .await
            .unwrap();
        put(c, "/gone", &data, layout(256 * 1024, 3, 3))
            .await
            .unwrap();
        (records(c, "/keep").await, records(c, "/gone").await)
    });
    assert!(keep.iter().all(|r| r.replicas.contains(&p_id)));
    cut.set(true);
    cl.wait_up(3);
    with_client(addr, async |c| {
        c.unlink("/gone").await.unwrap();
        assert!(get(c, "/keep").await.unwrap() == data);
        // New writes avoid the partitioned node.
        put(c, "/during", &data, layout(256 * 1024, 3, 3))
            .await
            .unwrap();
        for r in records(c, "/during").await {
            assert!(!r.replicas.contains(&p_id));
        }
    });
    let t = cl.wait_clean(Duration::from_secs(30));
    eprintln!("partitioned node's chunks re-replicated in {t:?}");
    with_client(addr, async |c| {
        for r in records(c, "/keep").await {
            assert!(!r.replicas.contains(&p_id));
        }
    });
    // Heal.
    cut.set(false);
    cl.wait_up(4);
    assert_eq!(cl.node_id_at(cut_off.addr), p_id, "rejoined under its id");
    let start = Instant::now();
    loop {
        let left = keep
            .iter()
            .chain(&gone)
            .filter(|r| cut_off.chunk_file(r.chunk_id).exists())
            .count();
        if left == 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "{left} unneeded copies still on the healed node"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(cut_off.is_running());
    cl.wait_clean(Duration::from_secs(20));
    with_client(addr, async |c| {
        assert!(get(c, "/keep").await.unwrap() == data);
    });
}

/// A small deterministic PRNG for fuzz inputs (xorshift64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Inputs for both servers: random bytes, truncated and mutated Cap'n
/// Proto messages, frames with bad lengths.
fn corpus() -> Vec<Vec<u8>> {
    use ringfs_schema::frame::{encode_header, Header, Op};
    let mut rng = Rng(0x5eed_1234_5678_9abc);
    let mut out = Vec::new();
    let mut valid = Header::request(7, Op::Read);
    valid.length = 4096;
    valid.chunk_id = ringfs_schema::ChunkId::new(1, 2);
    let frame = encode_header(&valid);
    for n in [0, 1, 3, 4, 7, 8, 9, 64, 1000, 70_000] {
        out.push(rng.bytes(n));
    }
    for cut in [2, 4, 5, 12, frame.len() - 1] {
        out.push(frame[..cut.min(frame.len())].to_vec());
    }
    for _ in 0..40 {
        let mut f = frame.clone();
        for _ in 0..1 + rng.next() % 6 {
            let i = (rng.next() as usize) % f.len();
            f[i] ^= 1 << (rng.next() % 8);
        }
        out.push(f);
    }
    // Length prefixes: zero, not a multiple of 8, enormous; a segment table
    // announcing far more than follows.
    out.push(vec![0, 0, 0, 0]);
    out.push(vec![13, 0, 0, 0, 1, 2, 3]);
    out.push(vec![0xff, 0xff, 0xff, 0x7f]);
    out.push(vec![0, 0, 0, 0, 0xff, 0xff, 0xff, 0x0f, 1, 2, 3]);
    out.push(vec![0xfe, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
    out
}

/// Cap'n Proto RPC traffic for the control server: a bootstrap followed by
/// calls of every method of `Control` with random parameter structs, each
/// serialized, then truncated or bit-flipped. These get past the framing
/// into the RPC layer and the method decoders.
fn rpc_corpus() -> Vec<Vec<u8>> {
    use ringfs_schema::control_capnp::control;
    use ringfs_schema::raw_rpc;
    let mut rng = Rng(0xc0ff_ee00_dead_beef);
    // A valid hello first: every other call is refused before one.
    let mut boot = raw_rpc::bootstrap(0);
    boot.extend(raw_rpc::hello_on_bootstrap(0, 100));
    let mut out = Vec::new();
    for method in 0..20u16 {
        // Parameters of the wrong shape or junk: create's struct with a
        // random path for every method, or a blob where a struct belongs.
        let call = raw_rpc::call_on_bootstrap(0, 1 + method as u32, method, |content| {
            if method % 2 == 0 {
                let mut p = content.init_as::<control::create_params::Builder>();
                let path: String = (0..rng.next() % 40)
                    .map(|_| char::from(b'!' + (rng.next() % 90) as u8))
                    .collect();
                p.set_path(format!("/{path}").as_str());
                p.init_options().set_chunk_size(rng.next() as u32);
            } else {
                let blob = content.initn_as::<capnp::data::Builder>(rng.next() as u32 % 64);
                for b in blob.iter_mut() {
                    *b = rng.next() as u8;
                }
            }
        });
        let mut msg = boot.clone();
        msg.extend_from_slice(&call);
        out.push(msg.clone());
        for _ in 0..3 {
            let mut m = msg.clone();
            for _ in 0..1 + rng.next() % 8 {
                let i = boot.len() + (rng.next() as usize) % call.len();
                m[i] ^= 1 << (rng.next() % 8);
            }
            out.push(m);
        }
        out.push(msg[..boot.len() + (rng.next() as usize) % call.len()].to_vec());
    }
    out
}

/// 8. Garbage against both servers: random and truncated frames and
///    Cap'n Proto messages, connections opened and dropped, slow clients
///    holding half a message. Both keep serving everyone else and lose
///    nothing.
#[test]
fn both_servers_survive_bad_input_and_keep_serving() {
    let mut cl = Cluster::start_with(3, FAST_REPAIR, &[]);
    let addr = cl.control.addr;
    let data = pattern(MIB, 9);
    with_client(addr, async |c| {
        put(c, "/before", &data, layout(256 * 1024, 3, 3))
            .await
            .unwrap();
    });
    let node = cl.nodes[0].as_ref().unwrap().addr;
    let targets = [addr, node];
    // Slow clients: half a message each, held open through the test.
    let mut slow = Vec::new();
    for t in targets {
        let mut s = TcpStream::connect(t).unwrap();
        s.write_all(&[64, 0, 0, 0, 0, 0]).unwrap();
        slow.push(s);
    }
    let inputs = corpus().into_iter().map(|i| (i, true));
    let rpc = rpc_corpus().into_iter().map(|i| (i, false));
    for (input, to_node) in inputs.chain(rpc) {
        for t in targets.into_iter().filter(|t| to_node || *t == addr) {
            let Ok(mut s) = TcpStream::connect(t) else {
                panic!("{t} stopped accepting connections");
            };
            let _ = s.write_all(&input);
            let _ = s.shutdown(std::net::Shutdown::Write);
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let mut sink = [0u8; 4096];
            while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
        }
    }
    // Opened and dropped.
    for _ in 0..50 {
        for t in targets {
            drop(TcpStream::connect(t).unwrap());
        }
    }
    assert!(cl.control.is_running(), "the control server died");
    assert!(cl.nodes[0].as_mut().unwrap().is_running(), "the node died");
    with_client(addr, async |c| {
        assert!(get(c, "/before").await.unwrap() == data);
        put(c, "/after", &data, layout(256 * 1024, 3, 3))
            .await
            .unwrap();
        assert!(get(c, "/after").await.unwrap() == data);
        let map = c.cluster_map().await.unwrap();
        assert_eq!(map.nodes.iter().filter(|n| n.up).count(), 3);
    });
    drop(slow);
    cl.wait_clean(Duration::from_secs(20));
}

/// Garbage collection end to end: chunks of an unlinked file, of a
/// truncated tail and of a write whose client never committed (an
/// abandoned reservation, written) disappear from the nodes' disks, and
/// exactly the referenced chunk files remain.
#[test]
fn unlinked_truncated_and_abandoned_chunks_are_deleted_from_disk() {
    use ringfs_client::node_conn::NodeConn;
    use ringfs_schema::frame::{Header, LockMode, Op, Status};
    let cl = Cluster::start_with(3, FAST_REPAIR, &[]);
    let addr = cl.control.addr;
    let node = cl.nodes[0].as_ref().unwrap().addr.to_string();
    let kept = with_client(addr, async |c| {
        put(c, "/unlinked", &pattern(MIB, 10), layout(256 * 1024, 3, 3))
            .await
            .unwrap();
        put(c, "/truncated", &pattern(MIB, 11), layout(256 * 1024, 3, 3))
            .await
            .unwrap();
        c.unlink("/unlinked").await.unwrap();
        let fd = c.open("/truncated", &read_write()).await.unwrap();
        c.set_len(fd, 300_000).await.unwrap();
        c.close(fd).await.unwrap();
        // An abandoned write: reserved and written on a node, never committed.
        let conn = NodeConn::connect(&node, None).await.unwrap();
        let mut h = Header::request(0, Op::Reserve);
        h.client_id = 77;
        h.reserve_bytes = 4096;
        h.lease_ms = 1000;
        // As a writer whose lease ended: its reserve capability (standing
        // in for the control server's) is still good.
        h.capability = Some(ringfs_tests::capability_keys().issue(
            ringfs_ops::capability::Rights::RESERVE,
            [0; 16],
            ringfs_ops::capability::Lease::NONE,
            ringfs_ops::capability::now_ms() + 60_000,
        ));
        let (r, _) = conn.call(h, &[], Duration::from_secs(5)).await.unwrap();
        assert_eq!(r.status, Status::Ok, "{}", r.message);
        let mut w = Header::request(0, Op::Write);
        w.chunk_id = r.chunk_id;
        w.capability = r.capability;
        w.token = r.token.clone();
        w.implicit_lock = LockMode::None;
        // Under an epoch no open write lease has.
        w.version = ringfs_client::Version::new(1_000_000, 1);
        w.crcs = ringfs_schema::crc::piece_crcs(0, b"abandoned");
        let (r, _) = conn
            .call(w, b"abandoned", Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(r.status, Status::Ok, "{}", r.message);
        let recs = records(c, "/truncated").await;
        assert_eq!(recs.len(), 2, "300000 bytes in 256 KiB chunks");
        let mut files: Vec<String> = recs
            .iter()
            .flat_map(|r| {
                r.replicas
                    .iter()
                    .map(move |_| format!("{:032x}.chunk", r.chunk_id))
            })
            .collect();
        files.sort();
        files
    });
    assert!(cl.chunk_files().len() > kept.len());
    let start = Instant::now();
    loop {
        let on_disk = cl.chunk_files();
        if on_disk == kept {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{} chunk files on disk, {} referenced",
            on_disk.len(),
            kept.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    with_client(addr, async |c| {
        assert!(get(c, "/truncated").await.unwrap() == pattern(MIB, 11)[..300_000]);
        let h = c.control().chunk_health(0).await.unwrap();
        assert_eq!(h.deletes_pending, 0, "{h:?}");
    });
}
