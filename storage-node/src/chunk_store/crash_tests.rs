//! Crash-image tests of the chunk store on the simulated disk
//! ([`crate::disk::sim`]): power loss at every sync point of a seeded random
//! write workload (overwrites, unaligned writes, appends through the journal
//! and straight to the chunk file, gaps; a journal small enough that
//! checkpoints run in the middle), with lost, kept and torn unsynced sectors.
//!
//! The guarantee checked (the module docs of `chunk_store.rs` and
//! `chunk_store/journaled.rs`): after recovery,
//! - every chunk with an acknowledged write exists, at the acknowledged
//!   version and length, or at the version and length of the write that was
//!   in flight;
//! - every 4 KiB block reads back (its CRC verifies: no checksum error, no
//!   other error) and holds its acknowledged content, or, if the in-flight
//!   write covered it, that write's content;
//! - the recovered store takes new writes (one that leaves a gap after the
//!   recovered end reads back zeros there).
//!
//! A failure names the seed, the sync point and the image; to replay only
//! that workload, run with `RINGFS_CRASH_SEED=<seed>`.

use super::tests::{read, write};
use super::*;
use crate::disk::sim::{CrashStats, SimDir, SimDisk};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use ringfs_tests::on_glommio;

/// Chunks written concurrently (so group commits batch several files).
const CHUNKS: u64 = 3;
/// Writes per chunk, one after the other.
const WRITES: usize = 8;
/// A journal this small checkpoints every few writes.
const JOURNAL: JournalConfig = JournalConfig {
    checkpoint_bytes: 64 << 10,
    direct_min: 16 << 10,
};
/// Crash images checked per crash point.
const IMAGES: u64 = 3;
/// Workload seeds run by default.
const SEEDS: u64 = 4;

/// One write of the workload.
#[derive(Clone, Debug)]
struct Op {
    offset: u64,
    data: Vec<u8>,
}

impl Op {
    /// `content` with this write applied.
    fn apply(&self, content: &[u8]) -> Vec<u8> {
        let end = self.offset as usize + self.data.len();
        let mut out = content.to_vec();
        if out.len() < end {
            out.resize(end, 0);
        }
        out[self.offset as usize..end].copy_from_slice(&self.data);
        out
    }

    /// The 4 KiB blocks the write touches on disk.
    fn blocks(&self) -> std::ops::Range<u64> {
        let end = self.offset + self.data.len() as u64;
        self.offset / CRC_BLOCK..end.div_ceil(CRC_BLOCK)
    }
}

/// Per chunk, the writes to do in order: unaligned and aligned, inside the
/// chunk, extending it, and past its end (leaving a gap of zeros).
fn workload(seed: u64) -> Vec<Vec<Op>> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..CHUNKS)
        .map(|_| {
            (0..WRITES)
                .map(|_| {
                    let (offset, len) = if rng.random_bool(0.5) {
                        (
                            rng.random_range(0..48) * CRC_BLOCK,
                            rng.random_range(1..8) * CRC_BLOCK,
                        )
                    } else {
                        (rng.random_range(0..200_000), rng.random_range(1..40_000))
                    };
                    let mut data = vec![0u8; len as usize];
                    rng.fill_bytes(&mut data);
                    Op { offset, data }
                })
                .collect()
        })
        .collect()
}

fn chunk_id(i: u64) -> ChunkId {
    ChunkId::new(7, i)
}

/// What the workload saw of one chunk up to the crash.
#[derive(Clone, Debug, Default)]
struct Seen {
    /// Content after the last acknowledged write.
    acked: Vec<u8>,
    /// Acknowledged writes (= the acknowledged version).
    acked_version: u64,
    /// The write that failed (was in flight at the crash), if one did.
    in_flight: Option<Op>,
}

/// Runs the workload on `disk` until it is done or the disk crashed.
async fn run(disk: &SimDisk, ops: &[Vec<Op>]) -> Vec<Seen> {
    each_chunk(disk, ops, |store, i, ops| async move {
        let mut seen = Seen::default();
        for op in ops {
            match write(&store, chunk_id(i as u64), op.offset, &op.data).await {
                Ok(version) => {
                    seen.acked = op.apply(&seen.acked);
                    seen.acked_version += 1;
                    assert_eq!(version, seen.acked_version);
                }
                Err(StoreError::Io { .. } | StoreError::Broken(..)) => {
                    seen.in_flight = Some(op);
                    break;
                }
                Err(e) => panic!("write failed with {e} before any crash"),
            }
        }
        seen
    })
    .await
    .unwrap_or_else(|| vec![Seen::default(); ops.len()])
}

/// Opens a store on `disk` and runs `each(store, i, ops[i])` for every
/// chunk `i` at once; their outputs in chunk order, or `None` if the power
/// was lost while the empty store was set up (nothing was written).
async fn each_chunk<T, Fut>(
    disk: &SimDisk,
    ops: &[Vec<Op>],
    each: impl Fn(Rc<ChunkStore<SimDir>>, usize, Vec<Op>) -> Fut,
) -> Option<Vec<T>>
where
    T: 'static,
    Fut: Future<Output = T> + 'static,
{
    let store = match ChunkStore::open_with(disk.dir(), JOURNAL).await {
        Ok(store) => Rc::new(store),
        Err(_) if disk.crashed() => return None,
        Err(e) => panic!("opening an empty store: {e}"),
    };
    let tasks: Vec<_> = ops
        .iter()
        .enumerate()
        .map(|(i, ops)| glommio::spawn_local(each(store.clone(), i, ops.clone())))
        .collect();
    Some(futures::future::join_all(tasks).await)
}

/// What the checks of one image met, summed over a test.
#[derive(Debug, Default)]
struct Met {
    /// In-flight blocks that read back as acknowledged, or as written.
    old: u64,
    new: u64,
    crash: CrashStats,
}

/// Recovers a store from `image` and checks it against what the workload
/// saw (see the module doc).
async fn check(image: SimDisk, seen: &[Seen], met: &mut Met, ctx: &str) {
    let store = ChunkStore::open_with(image.dir(), JOURNAL)
        .await
        .unwrap_or_else(|e| panic!("{ctx}: recovery failed: {e}"));
    for (i, s) in seen.iter().enumerate() {
        let id = chunk_id(i as u64);
        let ctx = format!("{ctx}, chunk {i}");
        let new = s.in_flight.as_ref().map(|op| op.apply(&s.acked));
        let info = match store.info(id) {
            Ok(info) => info,
            Err(StoreError::NotFound(_)) if s.acked_version == 0 => continue,
            Err(e) => panic!("{ctx}: acknowledged chunk lost: {e}"),
        };
        let content = if (info.version.seq, info.length) == (s.acked_version, s.acked.len() as u64)
        {
            &s.acked
        } else {
            match &new {
                Some(new) if (info.version.seq, info.length) == (s.acked_version + 1, new.len() as u64) => new,
                _ => panic!(
                    "{ctx}: recovered version {} length {}, acknowledged {} length {} (in flight: {:?})",
                    info.version,
                    info.length,
                    s.acked_version,
                    s.acked.len(),
                    s.in_flight.as_ref().map(|op| (op.offset, op.data.len()))
                ),
            }
        };
        // Blocks holding acknowledged bytes (the last one perhaps partly).
        let acked_blocks = blocks(s.acked.len() as u64) as u64;
        for b in 0..blocks(info.length) as u64 {
            let in_flight = s
                .in_flight
                .as_ref()
                .is_some_and(|op| op.blocks().contains(&b))
                || b >= acked_blocks;
            let (from, to) = (b * CRC_BLOCK, ((b + 1) * CRC_BLOCK).min(info.length));
            let block = |c: &[u8]| -> Vec<u8> {
                let mut v = c[(from as usize).min(c.len())..(to as usize).min(c.len())].to_vec();
                v.resize((to - from) as usize, 0);
                v
            };
            match read(&store, id, from, to - from).await {
                Ok(got) if !in_flight => {
                    assert!(
                        got == block(content),
                        "{ctx}: block {b} reads other bytes than acknowledged"
                    );
                }
                Ok(got) if got == block(&s.acked) => met.old += 1,
                Ok(got) if new.as_ref().is_some_and(|n| got == block(n)) => met.new += 1,
                Ok(_) => {
                    panic!("{ctx}: block {b} (in flight) reads neither the old nor the new bytes")
                }
                Err(e) => panic!("{ctx}: block {b} fails: {e}"),
            }
        }
        // The recovered chunk takes a write past its end, leaving a gap
        // that must read as zeros (bytes of a lost write past the
        // recovered length were cleared).
        let extra = Op {
            offset: info.length + 5000,
            data: vec![0xa5; 3000],
        };
        let after = extra.apply(content);
        write(&store, id, extra.offset, &extra.data)
            .await
            .unwrap_or_else(|e| panic!("{ctx}: a write after recovery fails: {e}"));
        let got = read(&store, id, 0, after.len() as u64).await;
        assert!(
            got.as_ref().is_ok_and(|g| *g == after),
            "{ctx}: the chunk after a write past its recovered end: {:?}",
            got.err()
        );
    }
}

/// The workload seeds to run: `RINGFS_CRASH_SEED` alone, or the defaults.
fn seeds() -> Vec<u64> {
    match std::env::var("RINGFS_CRASH_SEED") {
        Ok(s) => vec![s.parse().expect("RINGFS_CRASH_SEED is a number")],
        Err(_) => (0..SEEDS).collect(),
    }
}

#[test]
fn acknowledged_writes_survive_power_loss_at_every_sync_point() {
    let met = on_glommio(|| async {
        let mut met = Met::default();
        for seed in seeds() {
            let ops = workload(seed);
            // Probe pass: count the sync points of an undisturbed run.
            let probe = SimDisk::new();
            let seen = run(&probe, &ops).await;
            assert!(seen.iter().all(|s| s.in_flight.is_none()), "seed {seed}");
            let points = probe.syncs();
            // One crash at each sync point, and one after the last.
            for k in 1..=points + 1 {
                let disk = SimDisk::new();
                disk.crash_at(k);
                let seen = run(&disk, &ops).await;
                assert_eq!(
                    disk.crashed(),
                    k <= points,
                    "seed {seed}: the run is deterministic"
                );
                for i in 0..IMAGES {
                    let image_seed = seed << 32 | k << 8 | i;
                    let (image, stats) = disk.crash_image(image_seed);
                    met.crash.lost += stats.lost;
                    met.crash.kept += stats.kept;
                    met.crash.torn += stats.torn;
                    let ctx = format!(
                        "RINGFS_CRASH_SEED={seed}, crash at sync point {k} of {points}, image {i}"
                    );
                    check(image, &seen, &mut met, &ctx).await;
                }
            }
        }
        met
    });
    // Not vacuous: every kind of unsynced sector and every allowed outcome
    // of an in-flight block occurred.
    let c = met.crash;
    assert!(c.lost > 0 && c.kept > 0 && c.torn > 0, "{met:?}");
    assert!(met.old > 0 && met.new > 0, "{met:?}");
}

/// Runs the workload with every chunk's writes after its first in flight
/// together (each expecting the version the one before it creates), until
/// done or the disk crashed; per chunk, how many writes were acknowledged.
/// Checks that they are a prefix: no write succeeds after one failed.
async fn run_pipelined(disk: &SimDisk, ops: &[Vec<Op>]) -> Vec<usize> {
    each_chunk(disk, ops, |store, i, ops| async move {
        let id = chunk_id(i as u64);
        // The first write creates the chunk (as a client's does,
        // it ends before the next is sent).
        if write(&store, id, ops[0].offset, &ops[0].data)
            .await
            .is_err()
        {
            return 0;
        }
        let writes: Vec<_> = ops[1..]
            .iter()
            .enumerate()
            .map(|(k, op)| {
                let (store, op) = (store.clone(), op.clone());
                let k = k as u64 + 1;
                let cas = Cas {
                    expected: Version::new(1, k),
                    version: Version::new(1, k + 1),
                };
                glommio::spawn_local(async move {
                    super::tests::write_cas(&store, id, op.offset, &op.data, cas).await
                })
            })
            .collect();
        let mut acked = 1;
        for (k, w) in writes.into_iter().enumerate() {
            match w.await {
                Ok(_) => {
                    assert_eq!(
                        acked,
                        k + 1,
                        "write {} acknowledged after a failed one",
                        k + 1
                    );
                    acked += 1;
                }
                Err(StoreError::Io { .. } | StoreError::Broken(..)) => {}
                // Built on an earlier write that failed before it
                // was staged (its edge read failed at the crash).
                Err(StoreError::StaleVersion { .. }) if acked < k + 1 => {}
                Err(e) => panic!("write {} failed with {e} before any crash", k + 1),
            }
        }
        acked
    })
    .await
    .unwrap_or_else(|| vec![0; ops.len()])
}

/// Recovers a store from `image` and checks each chunk is exactly the
/// chunk after a prefix of its writes, at least as long as the
/// acknowledged one.
async fn check_pipelined(image: SimDisk, ops: &[Vec<Op>], acked: &[usize], ctx: &str) {
    let store = ChunkStore::open_with(image.dir(), JOURNAL)
        .await
        .unwrap_or_else(|e| panic!("{ctx}: recovery failed: {e}"));
    for (i, (ops, &acked)) in ops.iter().zip(acked).enumerate() {
        let ctx = format!("{ctx}, chunk {i}");
        let mut states = vec![Vec::new()];
        for op in ops {
            let next = op.apply(states.last().unwrap());
            states.push(next);
        }
        let v = match store.info(chunk_id(i as u64)) {
            Ok(info) => info.version.seq as usize,
            Err(StoreError::NotFound(_)) if acked == 0 => continue,
            Err(e) => panic!("{ctx}: acknowledged chunk lost: {e}"),
        };
        assert!(
            acked <= v && v <= ops.len(),
            "{ctx}: recovered version {v}, {acked} of {} writes acknowledged",
            ops.len()
        );
        let want = &states[v];
        let got = read(&store, chunk_id(i as u64), 0, want.len() as u64 + 1).await;
        assert!(
            got.as_ref().is_ok_and(|g| g == want),
            "{ctx}: the chunk at version {v} is not the chunk after its first {v} writes ({:?})",
            got.err()
        );
    }
}

/// A chain of pipelined writes to each chunk, power lost at every sync
/// point: every chunk recovers to exactly the chunk after a prefix of its
/// writes (a later write never survives an earlier one), never shorter
/// than the acknowledged prefix.
#[test]
fn pipelined_writes_of_a_chunk_survive_power_loss_as_a_prefix() {
    let stats = on_glommio(|| async {
        let mut stats = CrashStats::default();
        // One seed by default (CI time): `RINGFS_CRASH_SEED` picks others.
        for seed in seeds() {
            let ops = workload(seed + 100);
            let probe = SimDisk::new();
            let acked = run_pipelined(&probe, &ops).await;
            assert!(acked.iter().all(|&a| a == WRITES), "seed {seed}: {acked:?}");
            let points = probe.syncs();
            for k in 1..=points + 1 {
                let disk = SimDisk::new();
                disk.crash_at(k);
                let acked = run_pipelined(&disk, &ops).await;
                for i in 0..2 {
                    let (image, s) = disk.crash_image(seed << 32 | k << 8 | i);
                    stats.lost += s.lost;
                    stats.kept += s.kept;
                    stats.torn += s.torn;
                    let ctx = format!(
                        "pipelined, RINGFS_CRASH_SEED={seed}, crash at sync point {k} of {points}, image {i}"
                    );
                    check_pipelined(image, &ops, &acked, &ctx).await;
                }
            }
        }
        stats
    });
    assert!(
        stats.lost > 0 && stats.kept > 0 && stats.torn > 0,
        "{stats:?}"
    );
}
