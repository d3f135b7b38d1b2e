//! Chunk store on real O_DIRECT files against an in-memory model: aligned
//! and unaligned writes and reads, gaps, checksum failure after a flipped
//! byte, restart recovery, group commit.

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

/// Writes `data` at `off` (creating the chunk); returns the new version.
pub(super) async fn write<D: DiskDir>(
    store: &ChunkStore<D>,
    id: ChunkId,
    off: u64,
    data: &[u8],
) -> Result<u64, StoreError>
where
    D::File: 'static,
{
    let mut wb = WriteBuf::new(off, data.len() as u64)?;
    wb.payload_mut().copy_from_slice(data);
    let (r, _) = store.write(id, wb, 0, true, |_, _| async {}).await;
    r.map(|i| i.version)
}

/// Reads `len` bytes at `off` into a vector.
pub(super) async fn read<D: DiskDir>(
    store: &ChunkStore<D>,
    id: ChunkId,
    off: u64,
    len: u64,
) -> Result<Vec<u8>, StoreError>
where
    D::File: 'static,
{
    store.read(id, off, len).await.map(|(r, _)| r.to_vec())
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
            assert_eq!((version, length), (*v, model.len() as u64));
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
    });
    flip_byte(&path, id, 70_000); // in CRC block B
    let p = path.clone();
    run(move || async move {
        let store = open(&p).await;
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
fn stale_versions_and_bad_ranges_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().to_path_buf();
    run(move || async move {
        let store = open(&p).await;
        let id = ChunkId::new(3, 1);
        let mut wb = WriteBuf::new(0, 10).unwrap();
        wb.payload_mut().copy_from_slice(&[1; 10]);
        let (r, _) = store.write(id, wb, 7, true, |_, _| async {}).await;
        assert_eq!(r.unwrap().version, 7);
        let mut wb = WriteBuf::new(0, 10).unwrap();
        wb.payload_mut().copy_from_slice(&[1; 10]);
        let (r, _) = store.write(id, wb, 7, true, |_, _| async {}).await;
        assert!(matches!(
            r,
            Err(StoreError::StaleVersion { current: 7, .. })
        ));
        assert!(WriteBuf::new(64 << 20, 1).is_err());
        assert!(matches!(
            read(&store, ChunkId::new(9, 9), 0, 1).await,
            Err(StoreError::NotFound(_))
        ));
        let wb = WriteBuf::new(0, 1).unwrap();
        let (r, _) = store
            .write(ChunkId::new(9, 9), wb, 0, false, |_, _| async {})
            .await;
        assert!(matches!(r, Err(StoreError::NotFound(_))));
        store.delete(id).await.unwrap();
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
