//! Chunk store on real O_DIRECT files against an in-memory model: aligned
//! and unaligned writes and reads, gaps, checksum failure after a flipped
//! byte, restart recovery, group commit; strict versions, stored CRCs equal
//! to the writer's, fences, copy-then-swap replaces, fenced deletes.

use super::*;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use ringfs_tests::on_glommio as run;
use std::collections::HashMap;
use std::path::Path;

/// The CRC block holding byte 70 000.
const B: u64 = 70_000 / CRC_BLOCK;

async fn open(dir: &Path) -> ChunkStore {
    ChunkStore::open(DmaDir::open(dir).await.unwrap())
        .await
        .unwrap()
}

/// Writes `data` at `off` (creating the chunk) on top of whatever version
/// the chunk holds, as version (1, its seq + 1); returns the new seq.
pub(super) async fn write<D: DiskDir>(
    store: &ChunkStore<D>,
    id: ChunkId,
    off: u64,
    data: &[u8],
) -> Result<u64, StoreError>
where
    D::File: 'static,
{
    let current = store.info(id).map(|i| i.version).unwrap_or(Version::NONE);
    let cas = Cas {
        expected: current,
        version: Version::new(1, current.seq + 1),
    };
    write_cas(store, id, off, data, cas).await.map(|v| v.seq)
}

/// Writes `data` at `off` with `cas` (creating the chunk).
pub(super) async fn write_cas<D: DiskDir>(
    store: &ChunkStore<D>,
    id: ChunkId,
    off: u64,
    data: &[u8],
    cas: Cas,
) -> Result<Version, StoreError>
where
    D::File: 'static,
{
    let mut wb = WriteBuf::new(off, data.len() as u64)?;
    wb.payload_mut().copy_from_slice(data);
    let crcs = ringfs_schema::crc::piece_crcs(off, data);
    let (r, ()) = store
        .write(id, wb, &crcs, cas, true, &no_fence, |_, _| async {})
        .await;
    r.map(|i| i.version)
}

/// Reads `len` bytes at `off` into a vector (the store answers whole
/// blocks; their CRCs are checked here as a reader does).
pub(super) async fn read<D: DiskDir>(
    store: &ChunkStore<D>,
    id: ChunkId,
    off: u64,
    len: u64,
) -> Result<Vec<u8>, StoreError>
where
    D::File: 'static,
{
    let out = store.read(id, off, len, &no_fence).await?;
    let data: &[u8] = &out.data;
    assert!(data.is_empty() || out.offset % CRC_BLOCK == 0);
    assert_eq!(out.crcs.len(), data.len().div_ceil(CRC_BLOCK as usize));
    for (block, crc) in data.chunks(CRC_BLOCK as usize).zip(&out.crcs) {
        assert_eq!(crc32c::crc32c(block), *crc, "a stored CRC does not match");
    }
    let skip = (off.saturating_sub(out.offset) as usize).min(data.len());
    let n = (data.len() - skip).min(len as usize);
    Ok(data[skip..skip + n].to_vec())
}

fn model_read(m: &[u8], off: u64, len: u64) -> Vec<u8> {
    let s = (off as usize).min(m.len());
    let e = ((off + len) as usize).min(m.len());
    m[s..e].to_vec()
}

#[test]
fn random_writes_and_reads_match_the_model_and_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let p2 = path.clone();
    let models = run(move || async move {
        let store = open(&path).await;
        let mut rng = StdRng::seed_from_u64(0x9e37_79b9_7f4a_7c15);
        let mut models = HashMap::<ChunkId, (Vec<u8>, u64)>::new();
        for i in 0..3u64 {
            models.insert(ChunkId::new(1, i), (Vec::new(), 0));
        }
        for step in 0..300 {
            let id = ChunkId::new(1, rng.random_range(0..3));
            let (model, version) = models.get_mut(&id).unwrap();
            let aligned = rng.random_range(0..2) == 0;
            let (off, len) = if aligned {
                (
                    rng.random_range(0..64) * 4096,
                    (1 + rng.random_range(0..40)) * 4096,
                )
            } else {
                (
                    rng.random_range(0..600_000),
                    1 + rng.random_range(0..200_000),
                )
            };
            let data: Vec<u8> = {
                let mut d = vec![0u8; len as usize];
                rng.fill_bytes(&mut d);
                d
            };
            let v = write(&store, id, off, &data).await.unwrap();
            *version += 1;
            assert_eq!(v, *version);
            let end = (off + len) as usize;
            if model.len() < end {
                model.resize(end, 0);
            }
            model[off as usize..end].copy_from_slice(&data);
            // Reads of random ranges, including past the end.
            for _ in 0..3 {
                let (ro, rl) = (
                    rng.random_range(0..800_000),
                    1 + rng.random_range(0..300_000),
                );
                assert_eq!(
                    read(&store, id, ro, rl).await.unwrap(),
                    model_read(model, ro, rl),
                    "step {step}"
                );
            }
        }
        for (id, (model, _)) in models.iter() {
            assert_eq!(read(&store, *id, 0, 1 << 24).await.unwrap(), *model);
        }
        models
    });
    // Restart: a fresh store finds every chunk with its length and version.
    run(move || async move {
        let store = open(&p2).await;
        let inv = store.inventory();
        assert_eq!(inv.len(), models.len());
        for (id, version, length) in inv {
            let (model, v) = &models[&id];
            assert_eq!((version.seq, length), (*v, model.len() as u64));
            assert_eq!(read(&store, id, 0, length).await.unwrap(), *model);
        }
    });
}

fn flip_byte(dir: &Path, id: ChunkId, chunk_offset: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.join(format!("{}.chunk", id.file_stem())))
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, DATA_OFFSET + chunk_offset).unwrap();
    b[0] ^= 0x40;
    f.write_all_at(&b, DATA_OFFSET + chunk_offset).unwrap();
    f.sync_all().unwrap();
}

#[test]
fn flipped_byte_yields_checksum_error_not_wrong_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let id = ChunkId::new(2, 5);
    let p = path.clone();
    run(move || async move {
        let store = open(&p).await;
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        write(&store, id, 0, &data).await.unwrap();
        // A direct write: confirmed by a checkpoint once it has applied
        // CONFIRM_AFTER ago (the shard asks periodically), not before; from
        // then on damage is a checksum error (before it, see
        // `damage_to_an_unconfirmed_direct_write_drops_the_whole_write`).
        store.confirm_direct_writes(CONFIRM_AFTER).await.unwrap();
        assert!(store.journal.used() > 0, "confirmed too early");
        glommio::timer::sleep(CONFIRM_AFTER).await;
        store.confirm_direct_writes(CONFIRM_AFTER).await.unwrap();
        assert_eq!(store.journal.used(), 0, "not confirmed");
    });
    flip_byte(&path, id, 70_000); // in CRC block B
    let p = path.clone();
    run(move || async move {
        let store = open(&p).await;
        assert_eq!(store.dropped_at_replay(), 0);
        // Block 0 is intact and still readable.
        assert_eq!(read(&store, id, 0, 1000).await.unwrap().len(), 1000);
        match read(&store, id, 69_000, 2000).await {
            Err(StoreError::Checksum(c, b)) => assert_eq!((c, b), (id, B)),
            other => panic!("expected a checksum error, got {other:?}"),
        }
        // A partial write into the corrupt block must not launder it...
        assert!(matches!(
            write(&store, id, 70_001, b"xy").await,
            Err(StoreError::Checksum(_, B))
        ));
        // ...but overwriting the whole block repairs it.
        write(&store, id, B * CRC_BLOCK, &[9u8; CRC_BLOCK as usize])
            .await
            .unwrap();
        assert_eq!(read(&store, id, 70_000, 10).await.unwrap(), vec![9u8; 10]);
        assert_eq!(read(&store, id, 0, 300_000).await.unwrap().len(), 300_000);
    });
}

#[test]
fn damage_to_an_unconfirmed_direct_write_drops_the_whole_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let id = ChunkId::new(2, 6);
    let first = vec![5u8; 8192];
    let (p, f) = (path.clone(), first.clone());
    run(move || async move {
        let store = open(&p).await;
        write(&store, id, 0, &f).await.unwrap();
        // Past the end and large: straight to the chunk file.
        write(&store, id, 8192, &vec![7u8; 300_000]).await.unwrap();
    });
    // Before any checkpoint confirmed it: replay cannot tell this from a
    // torn write that was never acknowledged.
    flip_byte(&path, id, 70_000);
    run(move || async move {
        let store = open(&path).await;
        assert_eq!(store.dropped_at_replay(), 1);
        let info = store.info(id).unwrap();
        assert_eq!((info.version.seq, info.length), (1, 8192));
        assert_eq!(read(&store, id, 0, 8192).await.unwrap(), first);
        // The dropped write's region reads as past the end, not damaged.
        write(&store, id, 8192, &[1u8; 10]).await.unwrap();
        assert_eq!(read(&store, id, 8192, 10).await.unwrap(), vec![1u8; 10]);
    });
}

fn cas(expected: Version, version: Version) -> Cas {
    Cas { expected, version }
}

#[test]
fn a_write_applies_only_on_top_of_the_exact_version_it_expects() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().to_path_buf();
    run(move || async move {
        let store = open(&p).await;
        let id = ChunkId::new(3, 1);
        let (v1, v2, v3) = (Version::new(7, 1), Version::new(7, 2), Version::new(8, 1));
        assert_eq!(
            write_cas(&store, id, 0, &[1; 10], cas(Version::NONE, v1))
                .await
                .unwrap(),
            v1
        );
        // Not on a version it did not expect, lower or higher...
        for wrong in [Version::NONE, v2, v3] {
            let r = write_cas(&store, id, 0, &[2; 10], cas(wrong, Version::new(9, 9))).await;
            assert!(
                matches!(r, Err(StoreError::StaleVersion { current, .. }) if current == v1),
                "{r:?}"
            );
        }
        // ...nor to a version not above it.
        for not_above in [v1, Version::new(6, 9)] {
            let r = write_cas(&store, id, 0, &[2; 10], cas(v1, not_above)).await;
            assert!(matches!(r, Err(StoreError::InvalidArgument(_))), "{r:?}");
        }
        assert_eq!(
            read(&store, id, 0, 10).await.unwrap(),
            vec![1; 10],
            "nothing applied"
        );
        assert_eq!(
            write_cas(&store, id, 5, &[3; 10], cas(v1, v3))
                .await
                .unwrap(),
            v3
        );
        assert_eq!(store.info(id).unwrap().version, v3);
        // A missing chunk is created only by a write expecting (0, 0).
        let other = ChunkId::new(3, 2);
        let r = write_cas(&store, other, 0, &[1; 10], cas(v1, v2)).await;
        assert!(matches!(r, Err(StoreError::StaleVersion { .. })), "{r:?}");
        assert!(!store.contains(other));
        assert!(WriteBuf::new(64 << 20, 1).is_err());
        assert!(matches!(
            read(&store, ChunkId::new(9, 9), 0, 1).await,
            Err(StoreError::NotFound(_))
        ));
        let mut wb = WriteBuf::new(0, 1).unwrap();
        wb.payload_mut()[0] = 1;
        let crcs = ringfs_schema::crc::piece_crcs(0, &[1]);
        let (r, ()) = store
            .write(
                ChunkId::new(9, 9),
                wb,
                &crcs,
                cas(Version::NONE, v1),
                false,
                &no_fence,
                |_, _| async {},
            )
            .await;
        assert!(matches!(r, Err(StoreError::NotFound(_))));
        // A delete names the newest version it may delete.
        assert!(matches!(
            store.delete(id, v1).await,
            Err(StoreError::StaleVersion { current, .. }) if current == v3
        ));
        assert!(store.contains(id), "a newer replica is kept");
        store.delete(id, v3).await.unwrap();
        assert!(matches!(
            read(&store, id, 0, 1).await,
            Err(StoreError::NotFound(_))
        ));
        assert!(store.inventory().is_empty());
    });
}

#[test]
fn concurrent_writes_share_group_commits() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().to_path_buf();
    run(move || async move {
        let store = std::rc::Rc::new(open(&p).await);
        let mut tasks = Vec::new();
        for i in 0..32u64 {
            let store = store.clone();
            tasks.push(glommio::spawn_local(async move {
                write(&store, ChunkId::new(5, i), 0, &[i as u8; 8192])
                    .await
                    .unwrap();
            }));
        }
        for t in tasks {
            t.await;
        }
        // Small writes go through the journal: 32 records, fewer syncs.
        let (syncs, records) = store.journal.stats();
        assert_eq!(records, 32);
        assert!(
            syncs < records,
            "{syncs} journal syncs for {records} writes"
        );
        // Large appends go to their chunk files, synced in groups.
        let mut tasks = Vec::new();
        for i in 0..32u64 {
            let store = store.clone();
            tasks.push(glommio::spawn_local(async move {
                write(&store, ChunkId::new(5, i), 8192, &vec![i as u8; 256 << 10])
                    .await
                    .unwrap();
            }));
        }
        for t in tasks {
            t.await;
        }
        let (batches, syncs) = store.group_commit().stats();
        assert_eq!(syncs, 32);
        assert!(batches < syncs, "{batches} batches for {syncs} syncs");
        for i in 0..32u64 {
            assert_eq!(
                read(&store, ChunkId::new(5, i), 0, 8192).await.unwrap(),
                vec![i as u8; 8192]
            );
        }
    });
}

/// A chunk's writes in flight together, each expecting the version the
/// one before it creates, are admitted without waiting for each other's
/// sync (so they share journal syncs: one at a time they cannot), and
/// land in order: aligned overwrites, unaligned ones (whose edges wait for
/// the pending writes they overlap) and large appends past the end.
#[test]
fn writes_of_one_chunk_pipeline_and_land_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().to_path_buf();
    run(move || async move {
        let store = std::rc::Rc::new(open(&p).await);
        let id = ChunkId::new(6, 1);
        let mut model = vec![3u8; 64 << 10];
        write(&store, id, 0, &model).await.unwrap();
        let (syncs0, records0) = store.journal.stats();
        let mut rng = StdRng::seed_from_u64(18);
        let mut tasks = Vec::new();
        for k in 1..=48u64 {
            let (off, len) = match k % 6 {
                0 => (model.len() as u64, 256 << 10),
                1 => (rng.random_range(0..model.len() as u64 - 5000), 5000),
                _ => (rng.random_range(0..model.len() as u64 / 4096) * 4096, 4096),
            };
            let mut data = vec![0u8; len as usize];
            rng.fill_bytes(&mut data);
            let end = (off + len) as usize;
            if model.len() < end {
                model.resize(end, 0);
            }
            model[off as usize..end].copy_from_slice(&data);
            let store = store.clone();
            let c = cas(Version::new(1, k), Version::new(1, k + 1));
            tasks.push(glommio::spawn_local(async move {
                write_cas(&store, id, off, &data, c).await
            }));
        }
        for (k, t) in tasks.into_iter().enumerate() {
            assert_eq!(t.await.unwrap(), Version::new(1, k as u64 + 2), "write {k}");
        }
        let (syncs, records) = store.journal.stats();
        let (syncs, records) = (syncs - syncs0, records - records0);
        assert_eq!(records, 48);
        assert!(
            syncs < records / 2,
            "{syncs} journal syncs for {records} pipelined writes of one chunk"
        );
        let info = store.info(id).unwrap();
        assert_eq!(
            (info.version, info.length),
            (Version::new(1, 49), model.len() as u64)
        );
        assert!(read(&store, id, 0, model.len() as u64).await.unwrap() == model);
        // And after a restart (journal replay).
        drop(store);
        let store = open(&p).await;
        assert!(read(&store, id, 0, model.len() as u64).await.unwrap() == model);
    });
}

#[test]
fn stored_crcs_are_the_writers_and_edges_combine_them_with_the_old_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().to_path_buf();
    run(move || async move {
        let store = open(&p).await;
        let id = ChunkId::new(4, 1);
        let mut model = vec![0u8; 0];
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..40 {
            let off = rng.random_range(0..40_000u64);
            let len = rng.random_range(1..12_000usize);
            let mut data = vec![0u8; len];
            rng.fill_bytes(&mut data);
            write(&store, id, off, &data).await.unwrap();
            let end = off as usize + len;
            if model.len() < end {
                model.resize(end, 0);
            }
            model[off as usize..end].copy_from_slice(&data);
            // Every block's stored CRC is that of the model's bytes.
            let meta = store.get(id).unwrap().meta.borrow().clone();
            for (b, block) in model.chunks(CRC_BLOCK as usize).enumerate() {
                assert_eq!(meta.crcs[b], crc32c::crc32c(block), "block {b}");
            }
        }
        // A payload whose CRCs the connection verified but a bit of which
        // flipped afterwards is stored with the writer's CRC: the next read
        // reports it instead of serving it.
        let data = vec![5u8; 8192];
        let crcs = ringfs_schema::crc::piece_crcs(0, &data);
        let mut wb = WriteBuf::new(0, 8192).unwrap();
        wb.payload_mut().copy_from_slice(&data);
        wb.payload_mut()[5000] ^= 1;
        let v = store.info(id).unwrap().version;
        let (r, ()) = store
            .write(
                id,
                wb,
                &crcs,
                cas(v, Version::new(2, 1)),
                true,
                &no_fence,
                |_, _| async {},
            )
            .await;
        r.unwrap();
        assert!(matches!(
            read(&store, id, 4096, 10).await,
            Err(StoreError::Checksum(_, 1))
        ));
        assert_eq!(read(&store, id, 0, 10).await.unwrap(), vec![5u8; 10]);
    });
}

#[test]
fn a_lapsed_fence_refuses_a_write_before_it_touches_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().to_path_buf();
    run(move || async move {
        let store = open(&p).await;
        let id = ChunkId::new(4, 2);
        write(&store, id, 0, &[1; 100]).await.unwrap();
        let mut wb = WriteBuf::new(0, 100).unwrap();
        wb.payload_mut().copy_from_slice(&[2; 100]);
        let crcs = ringfs_schema::crc::piece_crcs(0, &[2; 100]);
        let v = store.info(id).unwrap().version;
        let fenced = || Err(StoreError::Fenced("lapsed".into()));
        let forwarded = std::cell::Cell::new(false);
        let (r, ()) = store
            .write(
                id,
                wb,
                &crcs,
                cas(v, Version::new(1, 9)),
                true,
                &fenced,
                |_, _| async { forwarded.set(true) },
            )
            .await;
        assert!(matches!(r, Err(StoreError::Fenced(_))), "{r:?}");
        assert!(forwarded.get(), "the next replica decides for itself");
        assert_eq!(store.info(id).unwrap().version, v);
        assert_eq!(read(&store, id, 0, 100).await.unwrap(), vec![1; 100]);
        assert!(matches!(
            store.read(id, 0, 10, &fenced).await,
            Err(StoreError::Fenced(_))
        ));
    });
}

#[test]
fn a_replace_is_copy_then_swap_and_never_replaces_a_newer_replica() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().to_path_buf();
    let p2 = p.clone();
    let id = ChunkId::new(4, 3);
    let whole = |fill: u8, len: usize| {
        let data = vec![fill; len];
        let crcs = ringfs_schema::crc::piece_crcs(0, &data);
        let mut wb = WriteBuf::new(0, len as u64).unwrap();
        wb.payload_mut().copy_from_slice(&data);
        (wb, crcs)
    };
    run(move || async move {
        let store = open(&p).await;
        // A longer stale replica at (1, 1).
        write(&store, id, 0, &[1; 20_000]).await.unwrap();
        let v1 = Version::new(1, 1);
        // A replace fenced on another version changes nothing.
        let (wb, crcs) = whole(7, 9000);
        let r = store
            .replace(
                id,
                wb,
                &crcs,
                cas(Version::new(1, 2), Version::new(3, 1)),
                false,
                &no_fence,
            )
            .await;
        assert!(matches!(r, Err(StoreError::StaleVersion { .. })), "{r:?}");
        // Nor does one refused by its fence after the copy was written aside.
        let (wb, crcs) = whole(7, 9000);
        let fenced = || Err(StoreError::Fenced("lapsed".into()));
        let r = store
            .replace(id, wb, &crcs, cas(v1, Version::new(3, 1)), false, &fenced)
            .await;
        assert!(matches!(r, Err(StoreError::Fenced(_))), "{r:?}");
        assert_eq!(read(&store, id, 0, 20_000).await.unwrap(), vec![1; 20_000]);
        // A replace that goes through: the chunk is exactly the copy, its
        // length included (shorter than the stale one).
        let (wb, crcs) = whole(7, 9000);
        let info = store
            .replace(id, wb, &crcs, cas(v1, Version::new(3, 1)), false, &no_fence)
            .await
            .unwrap();
        assert_eq!((info.version, info.length), (Version::new(3, 1), 9000));
        assert_eq!(read(&store, id, 0, 20_000).await.unwrap(), vec![7; 9000]);
        // The same version again repairs in place; an older one is refused.
        let (wb, crcs) = whole(7, 9000);
        store
            .replace(
                id,
                wb,
                &crcs,
                cas(Version::new(3, 1), Version::new(3, 1)),
                false,
                &no_fence,
            )
            .await
            .unwrap();
        let (wb, crcs) = whole(8, 10);
        let r = store
            .replace(
                id,
                wb,
                &crcs,
                cas(Version::new(3, 1), Version::new(2, 9)),
                false,
                &no_fence,
            )
            .await;
        assert!(matches!(r, Err(StoreError::InvalidArgument(_))), "{r:?}");
        // A chunk that does not exist is created only with `create`.
        let (wb, crcs) = whole(9, 5000);
        let fresh = ChunkId::new(4, 4);
        assert!(matches!(
            store
                .replace(fresh, wb, &crcs, cas(Version::NONE, v1), false, &no_fence)
                .await,
            Err(StoreError::NotFound(_))
        ));
        let (wb, crcs) = whole(9, 5000);
        store
            .replace(fresh, wb, &crcs, cas(Version::NONE, v1), true, &no_fence)
            .await
            .unwrap();
    });
    // After a restart: the swapped chunks, nothing left aside.
    run(move || async move {
        let store = open(&p2).await;
        assert_eq!(store.info(id).unwrap().version, Version::new(3, 1));
        assert_eq!(read(&store, id, 0, 20_000).await.unwrap(), vec![7; 9000]);
        assert_eq!(
            read(&store, ChunkId::new(4, 4), 0, 9000).await.unwrap(),
            vec![9; 5000]
        );
        let names: Vec<String> = std::fs::read_dir(&p2)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".new")), "{names:?}");
    });
}

#[test]
fn a_chunk_file_of_the_old_format_is_refused_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().to_path_buf();
    let id = ChunkId::new(4, 5);
    let p1 = p.clone();
    run(move || async move {
        let store = open(&p1).await;
        write(&store, id, 0, &[1; 100]).await.unwrap();
    });
    // Rewrite the magic of both slots as format 1 wrote it.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(p.join(format!("{}.chunk", id.file_stem())))
            .unwrap();
        f.write_all_at(b"RFSCHNK1", 0).unwrap();
    }
    let e = run(move || async move {
        ChunkStore::open(DmaDir::open(&p).await.unwrap())
            .await
            .err()
            .map(|e| e.to_string())
    });
    let e = e.expect("the old format is refused");
    assert!(e.contains("format 1") && e.contains("no migration"), "{e}");
}
