//! Crash and failure guarantees of the metadata store and its group-commit
//! writer, driven through failpoints (the `failpoints` feature, which this
//! crate's tests always enable):
//!
//! - A storage error in the middle of a batch aborts the whole batch: every
//!   mutation in it fails and none is visible afterwards, not even those
//!   applied before the error in the same transaction; later batches work.
//! - A crash at any point of any write loses nothing acknowledged and leaves
//!   a consistent store: the writer runs on a redb backend that keeps the
//!   written and the durable image apart (only a completed sync makes data
//!   durable, in the manner of redb's own `tests/crash_consistency.rs`); the
//!   image a crash leaves (the durable one plus a random subset of the
//!   unsynced writes, some torn) must reopen as the state after some whole
//!   batch no earlier than the last acknowledged one.
//!
//! The crash test is seeded: `RINGFS_CRASH_SEED=N` replays one run,
//! `RINGFS_CRASH_RUNS=N` changes how many run.

#![cfg(feature = "failpoints")]

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{mpsc, Arc, Mutex};
use std::task::Context;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redb::backends::InMemoryBackend;
use redb::StorageBackend;
use ringfs_control::group_commit::Committer;
use ringfs_control::records::{Chunk, Inode, Kind, Node};
use ringfs_control::store::{CreateOptions, FileDefaults, MapEntry, MetaStore, Mutation, Outcome};
use ringfs_control::ControlError;

type Reply = Pin<Box<dyn Future<Output = Result<Outcome, ControlError>>>>;

/// Submits `m` and returns at once (the request is in the writer's queue
/// when this returns); await the reply later.
fn send_now(c: &Committer, m: Mutation) -> Reply {
    let c = c.clone();
    let mut reply: Reply = Box::pin(async move { c.submit(m).await });
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    assert!(reply.as_mut().poll(&mut cx).is_pending());
    reply
}

fn answer(reply: Reply) -> Result<Outcome, ControlError> {
    futures::executor::block_on(reply)
}

/// Holds the writer thread at a failpoint until the test lets it go, so
/// that the test decides what forms a batch.
struct Gate {
    reached: mpsc::Receiver<()>,
    release: mpsc::Sender<()>,
}

impl Gate {
    /// Every pass of the writer through `failpoint` waits for a release.
    fn every_pass(failpoint: &str) -> Self {
        let (reached_tx, reached) = mpsc::channel();
        let (release, release_rx) = mpsc::channel::<()>();
        let inside = Mutex::new((reached_tx, release_rx));
        fail::cfg_callback(failpoint, move || {
            let inside = inside.lock().unwrap();
            let _ = inside.0.send(());
            let _ = inside.1.recv();
        })
        .unwrap();
        Gate { reached, release }
    }

    /// Waits until the writer is held at the failpoint.
    fn wait(&self) {
        self.reached
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("the writer reaches the failpoint");
    }

    fn release(&self) {
        self.release.send(()).unwrap();
    }
}

fn mkdir(path: &str) -> Mutation {
    Mutation::Mkdir {
        who: ringfs_control::store::Caller::admin(),
        path: path.into(),
        mode: 0,
        now_ns: 1,
    }
}

fn is_missing(store: &MetaStore, path: &str) -> bool {
    matches!(store.stat(path), Err(ControlError::NotFound(_)))
}

#[test]
fn a_storage_error_aborts_the_whole_batch() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store =
        Arc::new(MetaStore::open(&dir.path().join("meta.redb"), FileDefaults::default()).unwrap());
    let (committer, writer) = Committer::start(store.clone(), 1024);

    // Hold the writer inside a first batch while the second one queues up,
    // so that the five mutations below form one batch.
    let gate = Gate::every_pass("group_commit::before_commit");
    let first = send_now(&committer, mkdir("/first"));
    gate.wait();
    let batch = vec![
        mkdir("/a"),
        Mutation::Create {
            who: ringfs_control::store::Caller::admin(),
            path: "/a/f".into(),
            options: CreateOptions::default(),
            now_ns: 1,
        },
        mkdir("/b"),
        mkdir("/c"),
        Mutation::Rename {
            who: ringfs_control::store::Caller::admin(),
            from: "/first".into(),
            to: "/moved".into(),
            now_ns: 1,
        },
    ];
    // `store::apply` runs before each mutation: the first batch passes it
    // once, the second twice (/a, /a/f are then applied in its
    // transaction), and the third pass, before /b, fails.
    fail::cfg("store::apply", "3*off->1*return->off").unwrap();
    let replies: Vec<Reply> = batch
        .iter()
        .map(|m| send_now(&committer, m.clone()))
        .collect();
    gate.release();
    assert!(answer(first).is_ok());
    gate.wait();
    gate.release();
    for (m, reply) in batch.iter().zip(replies) {
        match answer(reply) {
            Err(e) if e.is_storage_failure() => {}
            other => panic!("{m:?} of the failed batch answered {other:?}"),
        }
    }
    for path in ["/a", "/a/f", "/b", "/c", "/moved"] {
        assert!(
            is_missing(&store, path),
            "{path} is visible after its batch failed"
        );
    }
    assert!(store.stat("/first").is_ok());
    assert_eq!(store.consistency_problems().unwrap(), Vec::<String>::new());

    // Later batches work, the same mutations included.
    fail::remove("group_commit::before_commit");
    for m in &batch {
        assert!(answer(send_now(&committer, m.clone())).is_ok(), "{m:?}");
    }
    for path in ["/a", "/a/f", "/b", "/c", "/moved"] {
        assert!(store.stat(path).is_ok(), "{path}");
    }
    drop(committer);
    writer.join().unwrap();
    drop(scenario);
}

#[test]
fn a_failed_commit_applies_nothing() {
    let scenario = fail::FailScenario::setup();
    let store = MetaStore::with_backend(InMemoryBackend::new(), FileDefaults::default()).unwrap();
    fail::cfg("store::before_commit", "1*return->off").unwrap();
    let batch = [mkdir("/a"), mkdir("/a/b")];
    let e = store.apply_batch(&batch).unwrap_err();
    assert!(e.is_storage_failure(), "{e}");
    assert!(is_missing(&store, "/a"));
    let results = store.apply_batch(&batch).unwrap();
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    drop(scenario);
}

// --------------------------------------------------------------- crashes

/// One mutating call on the simulated disk, not yet covered by a sync.
#[derive(Debug, Clone)]
enum Pending {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

#[derive(Debug, Default)]
struct Disk {
    /// What reads see: every write applied.
    written: Vec<u8>,
    /// What a crash keeps for certain: the image as of the last sync.
    durable: Vec<u8>,
    /// Writes and resizes since the last sync, in order.
    pending: Vec<Pending>,
    /// Mutating calls (write, set_len, sync) so far.
    calls: u64,
    /// The call at which power fails; it and every later call fail.
    crash_at: Option<u64>,
    crashed: bool,
}

/// A redb storage backend that keeps the written and the durable image
/// apart, and fails every call from its crash point on.
#[derive(Debug, Clone, Default)]
struct CrashDisk(Arc<Mutex<Disk>>);

fn power_lost() -> io::Error {
    io::Error::other("simulated power loss")
}

fn apply(image: &mut Vec<u8>, op: &Pending) {
    match op {
        Pending::Write(offset, data) => {
            let offset = *offset as usize;
            if image.len() < offset + data.len() {
                image.resize(offset + data.len(), 0);
            }
            image[offset..offset + data.len()].copy_from_slice(data);
        }
        Pending::SetLen(len) => image.resize(*len as usize, 0),
    }
}

/// Bytes a disk writes atomically; a torn write keeps some sectors of a
/// write and loses others.
const SECTOR: usize = 512;

impl CrashDisk {
    fn crash_at(&self, call: u64) {
        self.0.lock().unwrap().crash_at = Some(call);
    }

    /// Mutating calls so far.
    fn calls(&self) -> u64 {
        self.0.lock().unwrap().calls
    }

    /// Power fails now (if it did not already).
    fn crash_now(&self) {
        self.0.lock().unwrap().crashed = true;
    }

    /// Counts a mutating call; fails it from the crash point on.
    fn call(disk: &mut Disk) -> io::Result<()> {
        disk.calls += 1;
        if disk.crash_at.is_some_and(|at| disk.calls >= at) {
            disk.crashed = true;
        }
        if disk.crashed {
            return Err(power_lost());
        }
        Ok(())
    }

    /// The image the crash left: the durable one with a random subset of
    /// the unsynced calls applied in order, some writes torn.
    fn crash_image(&self, rng: &mut StdRng) -> Vec<u8> {
        let disk = self.0.lock().unwrap();
        let mut image = disk.durable.clone();
        for op in &disk.pending {
            match (rng.random_range(0..4), op) {
                (0, _) => {}
                (1, Pending::Write(offset, data)) => {
                    for (i, sector) in data.chunks(SECTOR).enumerate() {
                        if rng.random_bool(0.5) {
                            let at = offset + (i * SECTOR) as u64;
                            apply(&mut image, &Pending::Write(at, sector.to_vec()));
                        }
                    }
                }
                _ => apply(&mut image, op),
            }
        }
        image
    }
}

impl StorageBackend for CrashDisk {
    fn len(&self) -> Result<u64, io::Error> {
        Ok(self.0.lock().unwrap().written.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        let disk = self.0.lock().unwrap();
        let offset = offset as usize;
        match disk.written.get(offset..offset + out.len()) {
            Some(bytes) => {
                out.copy_from_slice(bytes);
                Ok(())
            }
            None => Err(io::ErrorKind::UnexpectedEof.into()),
        }
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        let mut disk = self.0.lock().unwrap();
        Self::call(&mut disk)?;
        let op = Pending::SetLen(len);
        apply(&mut disk.written, &op);
        disk.pending.push(op);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        let mut disk = self.0.lock().unwrap();
        Self::call(&mut disk)?;
        let disk = &mut *disk;
        for op in disk.pending.drain(..) {
            apply(&mut disk.durable, &op);
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let mut disk = self.0.lock().unwrap();
        Self::call(&mut disk)?;
        let op = Pending::Write(offset, data.to_vec());
        apply(&mut disk.written, &op);
        disk.pending.push(op);
        Ok(())
    }
}

/// Everything the store holds, read through its public API.
#[derive(Debug, PartialEq)]
struct Snapshot {
    paths: BTreeMap<u64, String>,
    inodes: BTreeMap<u64, Inode>,
    chunks: Vec<MapEntry>,
    nodes: Vec<(u64, Node)>,
    epoch: u64,
    garbage: Vec<Chunk>,
}

fn snapshot(store: &MetaStore) -> Snapshot {
    let paths: BTreeMap<u64, String> = store.paths().unwrap().into_iter().collect();
    let inodes = paths
        .keys()
        .map(|&ino| (ino, store.inode(ino).unwrap().unwrap()))
        .collect();
    Snapshot {
        paths,
        inodes,
        chunks: store.chunk_map().unwrap(),
        nodes: store.nodes().unwrap(),
        epoch: store.epoch().unwrap(),
        garbage: store.garbage().unwrap(),
    }
}

const NAMES: [&str; 3] = ["a", "b", "c"];

fn random_path(rng: &mut StdRng) -> String {
    let depth = rng.random_range(1..4);
    (0..depth)
        .map(|_| format!("/{}", NAMES[rng.random_range(0..NAMES.len())]))
        .collect()
}

/// A random mutation that has a fair chance to succeed on `reference`'s
/// current state (file inodes, chunk versions and nodes are taken from it).
fn random_mutation(rng: &mut StdRng, reference: &MetaStore, now_ns: i64) -> Mutation {
    let nodes = reference.nodes().unwrap();
    // In inode order: the run must not depend on a HashMap's order.
    let files: Vec<(u64, Inode)> = snapshot(reference)
        .inodes
        .into_iter()
        .filter(|(_, a)| a.kind == Kind::File)
        .collect();
    match rng.random_range(0..20) {
        0..=3 => Mutation::Create {
            who: ringfs_control::store::Caller::admin(),
            path: random_path(rng),
            options: CreateOptions {
                chunk_size: 4096,
                replication: 2,
                write_quorum: 1,
                exclusive: rng.random_bool(0.3),
                ..Default::default()
            },
            now_ns,
        },
        4..=6 => Mutation::Mkdir {
            who: ringfs_control::store::Caller::admin(),
            path: random_path(rng),
            mode: 0,
            now_ns,
        },
        7 => Mutation::Unlink {
            who: ringfs_control::store::Caller::admin(),
            path: random_path(rng),
            now_ns,
        },
        8 => Mutation::Rmdir {
            who: ringfs_control::store::Caller::admin(),
            path: random_path(rng),
            now_ns,
        },
        9 | 10 => Mutation::Rename {
            who: ringfs_control::store::Caller::admin(),
            from: random_path(rng),
            to: random_path(rng),
            now_ns,
        },
        11 => Mutation::BumpEpoch,
        12 | 13 => {
            let known = (!nodes.is_empty() && rng.random_bool(0.3))
                .then(|| &nodes[rng.random_range(0..nodes.len())]);
            Mutation::Join {
                node_id: known.map_or(0, |(id, _)| *id),
                key: known.map_or([0; 16], |(_, n)| n.key),
                new_key: rng.random(),
                shards: vec![format!("127.0.0.1:{}", rng.random_range(1..65535))],
            }
        }
        14 => {
            let garbage = reference.garbage().unwrap();
            match garbage.get(rng.random_range(0..garbage.len().max(1))) {
                Some(g) => Mutation::GarbageDone {
                    id: g.id,
                    nodes: g.replicas.iter().take(1).copied().collect(),
                },
                None => Mutation::BumpEpoch,
            }
        }
        _ if files.is_empty() || nodes.is_empty() => Mutation::BumpEpoch,
        15 => {
            let (ino, attr) = &files[rng.random_range(0..files.len())];
            Mutation::SetSize {
                inode: *ino,
                size: rng.random_range(0..=attr.size + 8192),
                now_ns,
            }
        }
        _ => {
            let (ino, attr) = &files[rng.random_range(0..files.len())];
            let mut chunks = Vec::new();
            let mut end = attr.size;
            for index in 0..rng.random_range(1..4u64) {
                let old = reference.chunks(*ino, index, 1).unwrap().pop();
                let replicas: Vec<u64> = nodes
                    .iter()
                    .map(|(id, _)| *id)
                    .filter(|_| rng.random_bool(0.5))
                    .take(2)
                    .collect();
                let length = rng.random_range(0..=4096);
                end = end.max(index * 4096 + length as u64);
                chunks.push((
                    index,
                    Chunk {
                        id: match &old {
                            Some(o) if rng.random_bool(0.5) => o.1.id,
                            _ => rng.random(),
                        },
                        replicas,
                        length,
                        version: ringfs_schema::Version::new(
                            1,
                            old.map_or(1, |o| o.1.version.seq + 1),
                        ),
                    },
                ));
            }
            Mutation::CommitChunks {
                inode: *ino,
                epoch: 1,
                chunks,
                file_size: end,
                now_ns,
            }
        }
    }
}

/// How a run ended, for the checks.
struct Run {
    /// The state after each batch; index 0: before the first.
    states: Vec<Snapshot>,
    /// Batches answered before the first storage failure.
    acknowledged: usize,
    /// The image the crash left.
    image: Vec<u8>,
    /// Mutating calls on the disk after the store was created.
    calls: u64,
}

/// Runs a first batch and then `batches` random ones through the real
/// group-commit writer on a [`CrashDisk`] that loses power at its
/// `crash_at`-th mutating call after the store was created (never: `None`),
/// then crashes it and returns the image left. Every mutation is applied to
/// an in-memory reference store too, in the same order, which gives the
/// expected answers and the state after each batch. The same seed and crash
/// point give the same run: the test decides what forms each batch (see
/// [`Gate`]).
fn crash_run(seed: u64, batches: usize, crash_at: Option<u64>) -> Run {
    let mut rng = StdRng::seed_from_u64(seed);
    let disk = CrashDisk::default();
    let store = Arc::new(MetaStore::with_backend(disk.clone(), FileDefaults::default()).unwrap());
    let created = disk.calls();
    if let Some(at) = crash_at {
        disk.crash_at(created + at);
    }
    let reference =
        MetaStore::with_backend(InMemoryBackend::new(), FileDefaults::default()).unwrap();
    let mut states = vec![snapshot(&reference)];
    let (committer, writer) = Committer::start(store.clone(), 1024);
    let queue = |m: Mutation, replies: &mut Vec<(Reply, String)>| {
        let expected = reference
            .apply_batch(std::slice::from_ref(&m))
            .unwrap()
            .remove(0);
        replies.push((send_now(&committer, m), format!("{expected:?}")));
    };

    // After each batch, the writer waits (before answering it) until the
    // next batch is queued whole; the first batch is one mutation, queued
    // while the writer is idle.
    let gate = Gate::every_pass("group_commit::before_answer");
    let mut previous = Vec::new();
    queue(Mutation::BumpEpoch, &mut previous);
    states.push(snapshot(&reference));
    gate.wait();
    let mut acknowledged = 0;
    let mut failed = false;
    for batch in 1..=batches + 1 {
        let mut replies = Vec::new();
        if batch <= batches {
            for i in 0..rng.random_range(1..8) {
                let m = random_mutation(&mut rng, &reference, (batch * 100 + i) as i64);
                queue(m, &mut replies);
            }
            states.push(snapshot(&reference));
        }
        gate.release();
        for (reply, expected) in previous.drain(..) {
            match answer(reply) {
                Err(e) if e.is_storage_failure() => failed = true,
                // After a storage failure the writer's answers no longer
                // follow the reference (which applied that batch).
                got if !failed => assert_eq!(
                    format!("{got:?}"),
                    expected,
                    "seed {seed}: the writer and the reference disagree"
                ),
                _ => {}
            }
        }
        if !failed {
            acknowledged = batch;
        }
        if batch <= batches {
            gate.wait();
        }
        previous = replies;
    }
    drop(committer);
    writer.join().unwrap();
    // Whatever did not happen before the crash point happens never.
    disk.crash_now();
    let calls = disk.calls() - created;
    drop(store);
    Run {
        states,
        acknowledged,
        image: disk.crash_image(&mut rng),
        calls,
    }
}

/// Reopens the image `run` left and checks it: it opens, it is consistent,
/// and it is the state after a whole batch, at least every acknowledged one
/// and at most the first one that failed.
fn check_crash_image(seed: u64, run: Run) {
    let recovered = InMemoryBackend::new();
    recovered.set_len(run.image.len() as u64).unwrap();
    recovered.write(0, &run.image).unwrap();
    let store = MetaStore::with_backend(recovered, FileDefaults::default())
        .unwrap_or_else(|e| panic!("seed {seed}: the crash image does not open: {e:?}"));
    let problems = store.consistency_problems().unwrap();
    assert!(problems.is_empty(), "seed {seed}: {problems:#?}");
    let got = snapshot(&store);
    let last = (run.acknowledged + 1).min(run.states.len() - 1);
    assert!(
        run.states[run.acknowledged..=last].contains(&got),
        "seed {seed}: after a crash, the store is not the state after batch {} \
         (the last acknowledged) or {last}:\n{got:#?}\nexpected:\n{:#?}",
        run.acknowledged,
        run.states[run.acknowledged],
    );
}

#[test]
fn a_crash_loses_nothing_acknowledged_and_leaves_a_consistent_store() {
    let scenario = fail::FailScenario::setup();
    let env = |name: &str| std::env::var(name).ok().map(|v| v.parse::<u64>().unwrap());
    const BATCHES: usize = 24;
    let seeds: Vec<u64> = match env("RINGFS_CRASH_SEED") {
        Some(seed) => vec![seed],
        None => {
            let base: u64 = rand::random();
            (0..env("RINGFS_CRASH_RUNS").unwrap_or(12))
                .map(|i| base.wrapping_add(i))
                .collect()
        }
    };
    for seed in seeds {
        // The crash point: any mutating call of the run without a crash
        // (which is the same run up to that point).
        let calls = crash_run(seed, BATCHES, None).calls;
        let crash_at = StdRng::seed_from_u64(seed ^ 0x5eed).random_range(1..=calls);
        eprintln!("crash run: seed {seed}, power fails at call {crash_at} of {calls}");
        let run = crash_run(seed, BATCHES, Some(crash_at));
        check_crash_image(seed, run);
    }
    drop(scenario);
}
