//! Transactions across files (docs/client.md, "Transactions"): readers see
//! every file of a transaction before it or every file after it, two
//! transactions naming the same files in opposite orders do not deadlock, a
//! transaction that cannot take its leases in time leaves nothing behind,
//! and a crash of the client, a node or the control server at any point
//! leaves all or nothing, the shadow chunks of what did not commit
//! collected. Real processes on loopback.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ringfs_client::{Client, Error, OpenOptions, TransactionOptions};
use ringfs_tests::files::{get, layout, pattern, put, read_write};
use ringfs_tests::{binary, wait_until, with_client, Cluster, ControlProcess, QUICK};

const CHUNK: usize = 64 * 1024;
const FILES: [&str; 3] = ["/t/a", "/t/b", "/t/c"];

/// The content of every file at `round`: its size changes from round to
/// round (1 to 3 chunks and a bit, so some rounds shrink the files) and
/// every byte says the round.
fn content(round: u64) -> Vec<u8> {
    vec![round as u8; CHUNK * (1 + round as usize % 3) + 1000 + round as usize]
}

/// The round `data` was written at, if it is the whole content of one.
fn round_of(data: &[u8]) -> Option<u64> {
    let round = *data.first()? as u64;
    (data == content(round).as_slice()).then_some(round)
}

fn opts(wait: Duration) -> TransactionOptions {
    TransactionOptions {
        lease_wait: wait,
        create: Some(layout(CHUNK, 2, 2)),
    }
}

async fn commit_round(c: &Client, round: u64) -> Result<(), Error> {
    let mut tx = c.transaction(&FILES, opts(Duration::from_secs(10))).await?;
    for f in FILES {
        tx.replace(f, &content(round)).await?;
    }
    tx.commit().await.map(drop)
}

/// The whole content of `path` as of one commit: read in one call (one
/// fetch of its records), and `None` if the file's version moved between
/// the open and the end of the read (its size, from the open, and its
/// records, fetched later, may then be of different commits: a reader of
/// one file is not isolated from a commit between its calls).
async fn read_whole(c: &Client, path: &str) -> Option<Vec<u8>> {
    let fd = c.open(path, &OpenOptions::read()).await.ok()?;
    let first = c.fstat(fd).await.ok()?;
    let mut buf = vec![0u8; first.size as usize];
    let n = c.pread(fd, 0, &mut buf).await;
    let last = c.fstat(fd).await;
    c.close(fd).await.ok()?;
    (n.ok()? == buf.len() && last.ok()?.version == first.version).then_some(buf)
}

async fn rounds_now(c: &Client) -> Vec<Option<u64>> {
    let mut out = Vec::new();
    for f in FILES {
        out.push(get(c, f).await.ok().and_then(|d| round_of(&d)));
    }
    out
}

/// The round whose content has `size` bytes (sizes differ from round to
/// round).
fn round_of_size(size: u64) -> Option<u64> {
    (1..=255).find(|&r| content(r).len() as u64 == size)
}

/// Readers running while transactions commit never see a mix. A reader
/// reads A, B, A: rounds only go up, so if both reads of A show round r,
/// B was read while A was at r, and a transaction that wrote B but not
/// yet A (or the reverse) would show B at another round. Two readers read
/// whole contents (every file's content must be one round's: no mix
/// inside a file); two more `stat` A, B, A back to back (one control call
/// each, the size says the round), tight enough to land inside a window
/// of a few milliseconds between files applied one by one (this test
/// fails with the files of a commit applied 5 ms apart).
#[test]
fn readers_never_see_a_mix_of_transactions() {
    let cl = Cluster::start(2);
    let addr = cl.control.addr;
    with_client(addr, async |c| {
        c.mkdir("/t", 0).await.unwrap();
        commit_round(c, 1).await.unwrap();
    });
    let done = AtomicBool::new(false);
    let decisive = AtomicUsize::new(0);
    let stat_decisive = AtomicUsize::new(0);
    let rounds = 15;
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                with_client(addr, async |c| {
                    let round = async |path| round_of_size(c.stat(path).await.unwrap().size);
                    while !done.load(Ordering::Relaxed) {
                        let a1 = round(FILES[0]).await;
                        let b = round(FILES[1]).await;
                        let a2 = round(FILES[0]).await;
                        let (Some(a1), Some(b), Some(a2)) = (a1, b, a2) else {
                            panic!("a size of no round: {a1:?} {b:?} {a2:?}");
                        };
                        if a1 == a2 {
                            assert_eq!(b, a1, "B at another round than A, stat between");
                            stat_decisive.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            });
        }
        for _ in 0..2 {
            s.spawn(|| {
                with_client(addr, async |c| {
                    while !done.load(Ordering::Relaxed) {
                        let (Some(a1), Some(b), Some(a2)) = (
                            read_whole(c, FILES[0]).await,
                            read_whole(c, FILES[1]).await,
                            read_whole(c, FILES[0]).await,
                        ) else {
                            // A commit during a read (or an old chunk
                            // collected under it): read again.
                            continue;
                        };
                        let (a1, b, a2) = (round_of(&a1), round_of(&b), round_of(&a2));
                        let (Some(a1), Some(b), Some(a2)) = (a1, b, a2) else {
                            panic!("a file holds no single round: {a1:?} {b:?} {a2:?}");
                        };
                        if a1 == a2 {
                            assert_eq!(b, a1, "B at another round than A, read between");
                            decisive.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            });
        }
        with_client(addr, async |c| {
            for round in 2..=rounds {
                commit_round(c, round).await.unwrap();
            }
        });
        done.store(true, Ordering::Relaxed);
    });
    let all = with_client(addr, rounds_now);
    assert_eq!(all, vec![Some(rounds); 3]);
    println!(
        "{rounds} rounds: {} decisive reads, {} decisive stats",
        decisive.load(Ordering::Relaxed),
        stat_decisive.load(Ordering::Relaxed)
    );
    assert!(
        decisive.load(Ordering::Relaxed) >= 20,
        "too few decisive reads ({}) to judge",
        decisive.load(Ordering::Relaxed)
    );
    assert!(
        stat_decisive.load(Ordering::Relaxed) >= 200,
        "too few decisive stats ({}) to judge",
        stat_decisive.load(Ordering::Relaxed)
    );
}

/// Two transactions on the same files named in opposite orders ([A, B]
/// and [B, A]) both finish, one after the other, well within their
/// lease wait: the leases are taken in one global order. The order of
/// events is forced: a writer holds A; the first transaction queues for A;
/// the second then starts. Taken in the order given, the second would
/// hold B and queue for A behind the first, which would get A and wait
/// for B: each waiting for the other until the lease wait ends.
#[test]
fn transactions_naming_files_in_opposite_orders_do_not_deadlock() {
    let cl = Cluster::start(2);
    let addr = cl.control.addr;
    let (a, b) = ("/t/a", "/t/b");
    with_client(addr, async |c| {
        c.mkdir("/t", 0).await.unwrap();
        put(c, a, b"a0", layout(CHUNK, 2, 2)).await.unwrap();
        put(c, b, b"b0", layout(CHUNK, 2, 2)).await.unwrap();
    });
    let wait = Duration::from_secs(5);
    let tx = |order: [&'static str; 2], what: &'static [u8]| {
        with_client(addr, async move |c| {
            let mut tx = c.transaction(&order, opts(wait)).await?;
            for f in order {
                tx.replace(f, what).await?;
            }
            tx.commit().await.map(drop)
        })
    };
    let (held, holding) = std::sync::mpsc::channel();
    let started = std::thread::scope(|s| {
        s.spawn(|| {
            with_client(addr, async |c| {
                let fd = c.open(a, &read_write()).await.unwrap();
                held.send(()).unwrap();
                tokio::time::sleep(Duration::from_millis(600)).await;
                c.close(fd).await.unwrap();
            })
        });
        holding.recv().unwrap();
        let started = Instant::now();
        let first = s.spawn(|| tx([a, b], b"first"));
        // Let the first queue for A before the second starts (if it has
        // not by then, the test cannot fail, it does not pass wrongly).
        std::thread::sleep(Duration::from_millis(300));
        let second = s.spawn(|| tx([b, a], b"second"));
        first.join().unwrap().expect("the first transaction");
        second.join().unwrap().expect("the second transaction");
        started
    });
    assert!(
        started.elapsed() < wait,
        "the transactions took {:?}, past their lease wait",
        started.elapsed()
    );
    with_client(addr, async |c| {
        // Both committed, whole: the second one last.
        assert_eq!(get(c, a).await.unwrap(), b"second");
        assert_eq!(get(c, b).await.unwrap(), b"second");
    });
}

/// A transaction that cannot take one file's lease in time (another
/// writer holds it) aborts with a clear error and leaves nothing behind:
/// the other files unchanged, a file it created removed, no lease held
/// (a writer gets every one at once).
#[test]
fn a_transaction_that_waits_too_long_for_a_lease_aborts_leaving_nothing() {
    let cl = Cluster::start(2);
    with_client(cl.control.addr, async |c| {
        c.mkdir("/t", 0).await.unwrap();
        put(c, "/t/a", b"old a", layout(CHUNK, 2, 2)).await.unwrap();
        put(c, "/t/b", b"old b", layout(CHUNK, 2, 2)).await.unwrap();
        let holder = c.open("/t/b", &read_write()).await.unwrap();
        let started = Instant::now();
        let Err(e) = c
            .transaction(
                &["/t/new", "/t/b", "/t/a"],
                opts(Duration::from_millis(500)),
            )
            .await
        else {
            panic!("the transaction got a lease another writer holds");
        };
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(matches!(e, Error::Busy(_)), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains("/t/b") && msg.contains("nothing changed"),
            "{msg}"
        );
        c.close(holder).await.unwrap();
        assert_eq!(get(c, "/t/a").await.unwrap(), b"old a");
        assert_eq!(get(c, "/t/b").await.unwrap(), b"old b");
        assert!(matches!(c.stat("/t/new").await, Err(Error::NotFound(_))));
        // No lease left behind: every file's lease is granted at once.
        let now = TransactionOptions {
            lease_wait: Duration::ZERO,
            create: None,
        };
        let tx = c.transaction(&["/t/a", "/t/b"], now).await.unwrap();
        tx.abort().await.unwrap();
    });
}

/// Partial overwrites in a transaction copy the rest of the old chunk
/// (read-modify-write), truncation and extension inside a transaction
/// read as zeros, and a transaction's writes are invisible until its
/// commit.
#[test]
fn partial_writes_and_truncation_in_a_transaction() {
    let cl = Cluster::start(2);
    let old = pattern(3 * CHUNK + 500, 1);
    with_client(cl.control.addr, async |c| {
        put(c, "/a", &old, layout(CHUNK, 2, 2)).await.unwrap();
        put(c, "/b", &old, layout(CHUNK, 2, 2)).await.unwrap();
        let mut tx = c
            .transaction(&["/a", "/b"], TransactionOptions::default())
            .await
            .unwrap();
        // /a: a write across a chunk boundary, in the middle of old data.
        let patch = pattern(CHUNK / 2, 2);
        let at = CHUNK + CHUNK * 3 / 4;
        tx.write("/a", at as u64, &patch).await.unwrap();
        // /b: cut inside chunk 1, then extended: the cut bytes read as zeros.
        let cut = CHUNK + 100;
        tx.set_len("/b", cut as u64).await.unwrap();
        tx.write("/b", (2 * CHUNK) as u64, b"tail").await.unwrap();
        assert_eq!(get(c, "/a").await.unwrap(), old, "visible before commit");
        assert_eq!(get(c, "/b").await.unwrap(), old, "visible before commit");
        tx.commit().await.unwrap();
        let mut want_a = old.clone();
        want_a[at..at + patch.len()].copy_from_slice(&patch);
        assert!(get(c, "/a").await.unwrap() == want_a, "/a after commit");
        let mut want_b = old[..cut].to_vec();
        want_b.resize(2 * CHUNK, 0);
        want_b.extend_from_slice(b"tail");
        assert!(get(c, "/b").await.unwrap() == want_b, "/b after commit");
    });
}

/// Files a transaction creates and unlinks change with its commit, in the
/// same mutation: before it no reader sees a created file and every
/// unlinked one is still whole; an abort or a transaction dropped
/// without a commit creates nothing and unlinks nothing; a commit the
/// server refuses (an unlinked file gone meanwhile, a created path taken
/// meanwhile) changes nothing at all.
#[test]
fn creates_and_unlinks_are_part_of_the_commit() {
    let cl = Cluster::start(2);
    with_client(cl.control.addr, async |c| {
        let lay = layout(CHUNK, 2, 2);
        c.mkdir("/t", 0).await.unwrap();
        put(c, "/t/a", b"old a", lay).await.unwrap();
        put(c, "/t/gone", b"doomed", lay).await.unwrap();
        let gone = async || matches!(c.stat("/t/gone").await, Err(Error::NotFound(_)));
        let no_new = async || matches!(c.stat("/t/new").await, Err(Error::NotFound(_)));
        let wait = Duration::from_secs(10);
        let start = async || {
            let mut tx = c.transaction(&["/t/new", "/t/a"], opts(wait)).await?;
            tx.replace("/t/new", &pattern(CHUNK + 7, 3)).await?;
            tx.replace("/t/a", b"new a").await?;
            tx.unlink("/t/gone")?;
            Ok::<_, Error>(tx)
        };
        // Aborted, and dropped without a commit.
        start().await.unwrap().abort().await.unwrap();
        drop(start().await.unwrap());
        assert!(no_new().await, "an aborted transaction created its file");
        assert_eq!(get(c, "/t/gone").await.unwrap(), b"doomed");
        assert_eq!(get(c, "/t/a").await.unwrap(), b"old a");
        // Misuse is refused at once.
        let mut tx = start().await.unwrap();
        assert!(matches!(tx.unlink("/t/a"), Err(Error::InvalidArgument(_))));
        assert!(matches!(
            tx.unlink("/t/gone"),
            Err(Error::InvalidArgument(_))
        ));
        // Before the commit: nothing created, nothing unlinked.
        assert!(no_new().await, "a created file visible before the commit");
        assert_eq!(get(c, "/t/gone").await.unwrap(), b"doomed");
        let attrs = tx.commit().await.unwrap();
        assert_eq!(attrs.len(), 2);
        assert_eq!(get(c, "/t/new").await.unwrap(), pattern(CHUNK + 7, 3));
        assert_eq!(get(c, "/t/a").await.unwrap(), b"new a");
        assert!(gone().await, "the unlinked file is still there");
        // Refused commits change nothing: the file to unlink is gone...
        let mut tx = c.transaction(&["/t/a", "/t/x"], opts(wait)).await.unwrap();
        tx.replace("/t/a", b"never").await.unwrap();
        tx.unlink("/t/gone").unwrap();
        let e = tx.commit().await.unwrap_err();
        assert!(matches!(e, Error::NotFound(_)), "{e:?}");
        // ... or the path to create was taken meanwhile.
        let mut tx = c.transaction(&["/t/a", "/t/y"], opts(wait)).await.unwrap();
        tx.replace("/t/a", b"never").await.unwrap();
        tx.replace("/t/y", b"never").await.unwrap();
        put(c, "/t/y", b"first", lay).await.unwrap();
        let e = tx.commit().await.unwrap_err();
        assert!(matches!(e, Error::Exists(_)), "{e:?}");
        assert_eq!(get(c, "/t/a").await.unwrap(), b"new a");
        assert_eq!(get(c, "/t/y").await.unwrap(), b"first");
        assert!(matches!(c.stat("/t/x").await, Err(Error::NotFound(_))));
        // A create where the caller may not create is refused before any
        // write: the parent does not exist.
        let e = c
            .transaction(&["/nodir/f"], opts(wait))
            .await
            .err()
            .expect("a transaction creating in a missing directory");
        assert!(matches!(e, Error::NotFound(_)), "{e:?}");
    });
}

/// `ringfs put --atomic LOCAL REMOTE ...` as a child process with a
/// failpoint armed.
fn put_atomic(
    cl: &Cluster,
    pairs: &[(&std::path::Path, &str)],
    failpoints: Option<&str>,
) -> std::process::Child {
    let mut cmd = std::process::Command::new(binary("ringfs-client", "ringfs"));
    cmd.arg("put")
        .arg("--atomic")
        .args(["--chunk-size", "64K", "-r", "2", "-w", "2"]);
    for (local, remote) in pairs {
        cmd.arg(local).arg(remote);
    }
    cmd.env("RINGFS_CONTROL", cl.control.addr.to_string())
        .env("RINGFS_CREDENTIAL", cl.admin_credential())
        .env("RUST_LOG", "warn")
        .env_remove("FAILPOINTS")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    if let Some(f) = failpoints {
        cmd.env("FAILPOINTS", f);
    }
    cmd.spawn().expect("starting ringfs put --atomic")
}

/// Local files holding round `round`'s content of each file.
fn locals(dir: &std::path::Path, round: u64) -> Vec<std::path::PathBuf> {
    FILES
        .iter()
        .enumerate()
        .map(|(i, _)| {
            let p = dir.join(format!("local{i}-{round}"));
            std::fs::write(&p, content(round)).unwrap();
            p
        })
        .collect()
}

fn pairs(locals: &[std::path::PathBuf]) -> Vec<(&std::path::Path, &str)> {
    locals.iter().map(|p| p.as_path()).zip(FILES).collect()
}

/// Waits until the nodes hold `n` chunk files more than `before` (a
/// transaction's shadow chunks are written), then a little longer.
fn wait_chunk_files(cl: &Cluster, at_least: usize) {
    wait_until(
        Duration::from_secs(20),
        || cl.chunk_files().len() >= at_least,
        || {
            format!(
                "{} chunk files, waiting for {at_least}",
                cl.chunk_files().len()
            )
        },
    );
    std::thread::sleep(Duration::from_millis(500));
}

/// Starts a cluster whose orphans are collected 1 s after they are seen,
/// with /t holding round 1 in every file.
fn cluster_at_round_1() -> Cluster {
    let flags = [
        QUICK,
        &["--report-interval-ms", "500", "--orphan-grace-ms", "1000"],
    ]
    .concat();
    let cl = Cluster::start_with(2, &flags, &[]);
    with_client(cl.control.addr, async |c| {
        c.mkdir("/t", 0).await.unwrap();
        commit_round(c, 1).await.unwrap();
    });
    cl
}

/// Chunk files of round 2's content on two nodes, R = 2.
fn round_2_chunks() -> usize {
    FILES.len() * content(2).len().div_ceil(CHUNK) * 2
}

/// kill -9 of the client inside `put --atomic`, its shadow chunks all
/// written and the commit not sent: every file stays at round 1, the
/// file it was to create does not exist, and the shadow chunks are
/// collected (the nodes hold only round 1's chunks).
#[test]
fn a_client_killed_before_its_commit_changes_nothing_and_its_chunks_are_collected() {
    let cl = cluster_at_round_1();
    let before = cl.chunk_files();
    let local = locals(cl.dir.path(), 2);
    let mut pairs = pairs(&local);
    pairs.push((local[0].as_path(), "/t/new"));
    let mut child = put_atomic(&cl, &pairs, Some("client::tx_before_commit=sleep(30000)"));
    // The new file's chunks too (it has round 2's content).
    wait_chunk_files(&cl, before.len() + round_2_chunks() * 4 / 3);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(with_client(cl.control.addr, rounds_now), vec![Some(1); 3]);
    with_client(cl.control.addr, async |c| {
        let new = c.stat("/t/new").await;
        assert!(matches!(new, Err(Error::NotFound(_))), "{new:?}");
    });
    wait_until(
        Duration::from_secs(20),
        || cl.chunk_files() == before,
        || format!("shadow chunks left: {:?} vs {:?}", cl.chunk_files(), before),
    );
}

/// kill -9 of the control server inside the commit, before the mutation
/// (the client, reconnected, is told nothing was changed: its handles
/// died with the server) and after it, before the answer (the client,
/// sending again under the same request id, is told it committed): every
/// file is all round 1 or all round 2 accordingly, and what did not
/// commit is collected.
#[test]
fn a_control_server_killed_inside_a_commit_leaves_all_or_nothing() {
    for (failpoint, committed) in [
        ("control::tx_before_commit=sleep(30000)", false),
        ("control::tx_after_commit=sleep(30000)", true),
    ] {
        let mut cl = cluster_at_round_1();
        let before = cl.chunk_files();
        let addr = cl.control.addr.to_string();
        let flags = [
            QUICK,
            &["--report-interval-ms", "500", "--orphan-grace-ms", "1000"],
        ]
        .concat();
        cl.control.kill9();
        cl.control = ControlProcess::start_with(cl.dir.path(), &addr, &flags, Some(failpoint));
        cl.wait_up(2);
        let local = locals(cl.dir.path(), 2);
        let child = put_atomic(&cl, &pairs(&local), None);
        wait_chunk_files(&cl, before.len() + round_2_chunks());
        cl.restart_control(&flags);
        cl.wait_up(2);
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if committed {
            assert!(out.status.success(), "{failpoint}: {stderr}");
        } else {
            assert_eq!(out.status.code(), Some(1), "{failpoint}: {stderr}");
            assert!(stderr.contains("nothing was changed"), "{stderr}");
        }
        let round = if committed { 2 } else { 1 };
        assert_eq!(
            with_client(cl.control.addr, rounds_now),
            vec![Some(round); 3],
            "{failpoint}"
        );
        if !committed {
            wait_until(
                Duration::from_secs(20),
                || cl.chunk_files() == before,
                || format!("shadow chunks left: {:?} vs {:?}", cl.chunk_files(), before),
            );
        }
    }
}

/// kill -9 of a storage node: inside the commit (every shadow chunk
/// written, the commit not yet sent) the transaction commits every file,
/// served by the replica left; with the node down before the writes
/// (W = R = 2 cannot be met) it fails and changes nothing.
#[test]
fn a_node_killed_during_a_transaction_leaves_all_or_nothing() {
    let mut cl = cluster_at_round_1();
    let before = cl.chunk_files();
    let local = locals(cl.dir.path(), 2);
    let child = put_atomic(
        &cl,
        &pairs(&local),
        Some("client::tx_before_commit=sleep(2000)"),
    );
    wait_chunk_files(&cl, before.len() + round_2_chunks());
    cl.kill9(1);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(with_client(cl.control.addr, rounds_now), vec![Some(2); 3]);
    // Node 1 is down: no chunk can get its two replicas.
    let local = locals(cl.dir.path(), 3);
    let out = put_atomic(&cl, &pairs(&local), None)
        .wait_with_output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("nothing was changed"), "{stderr}");
    assert_eq!(with_client(cl.control.addr, rounds_now), vec![Some(2); 3]);
}
