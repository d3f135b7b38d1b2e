//! Test data and whole-file helpers over the client library.

use ringfs_client::{ChunkRecord, Client, CreateOptions, Error, OpenOptions};
use std::time::Duration;

/// `len` bytes that differ from seed to seed and never repeat with a short
/// period (an xorshift stream), so a byte out of place, a block from
/// another file or a stale chunk never compares equal by accident.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A file layout: `chunk_size` bytes per chunk, `r` replicas, write quorum `w`.
pub fn layout(chunk_size: usize, r: u8, w: u8) -> CreateOptions {
    CreateOptions {
        chunk_size: chunk_size as u32,
        replication: r,
        write_quorum: w,
        ..Default::default()
    }
}

/// Creates (or truncates) `path` with `layout` and writes `data` to it,
/// in pieces of an uneven size (2⅓ chunks), so pieces straddle chunk
/// boundaries.
pub async fn put(c: &Client, path: &str, data: &[u8], layout: CreateOptions) -> Result<(), Error> {
    let chunk = layout.chunk_size.max(1) as usize;
    let piece = 2 * chunk + chunk / 3 + 1;
    let fd = c.create(path, layout).await?;
    for p in data.chunks(piece) {
        c.write(fd, p).await?;
    }
    c.close(fd).await
}

/// The whole content of `path`, read front to back with `read`; it must be
/// as long as the file's size said at open.
pub async fn get(c: &Client, path: &str) -> Result<Vec<u8>, Error> {
    let fd = c.open(path, &OpenOptions::read()).await?;
    let size = c.fstat(fd).await?.size as usize;
    let mut out = Vec::with_capacity(size);
    // Uneven, so reads straddle chunk boundaries too.
    let mut buf = vec![0u8; 1_000_003];
    loop {
        let n = c.read(fd, &mut buf).await?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    c.close(fd).await?;
    assert_eq!(
        out.len(),
        size,
        "{path}: read {} of {size} bytes",
        out.len()
    );
    Ok(out)
}

/// Open for reading and writing (which takes the file's write lease).
pub fn read_write() -> OpenOptions {
    OpenOptions {
        write: true,
        ..OpenOptions::read()
    }
}

/// Writes `data` at `offset` of the existing file `path` (open, pwrite,
/// close).
pub async fn overwrite(c: &Client, path: &str, offset: u64, data: &[u8]) -> Result<(), Error> {
    let fd = c.open(path, &read_write()).await?;
    c.pwrite(fd, offset, data).await?;
    c.close(fd).await
}

/// Every chunk record of `path`, from the control server.
pub async fn records(c: &Client, path: &str) -> Vec<ChunkRecord> {
    let h = c
        .control()
        .open(path, false, Duration::ZERO)
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    let recs = h.get_chunks(0, u32::MAX).await.unwrap();
    h.close().await.unwrap();
    recs
}

/// Flips `bytes` bytes, `at` bytes into the data of a chunk file that
/// holds `data_starts_with` (found by searching the file, whatever its
/// header layout), as silent disk corruption would.
pub fn corrupt_chunk_file(
    path: &std::path::Path,
    data_starts_with: &[u8],
    at: usize,
    bytes: usize,
) {
    let mut content = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let start = content
        .windows(data_starts_with.len())
        .position(|w| w == data_starts_with)
        .expect("chunk data in its file");
    for b in &mut content[start + at..start + at + bytes] {
        *b ^= 0x5a;
    }
    std::fs::write(path, &content).unwrap();
}

/// Rewrites 4 KiB block `block` of the chunk file at `path` with `fill`
/// bytes *and* its CRC in the header, so the node reads it as valid: a
/// replica that differs from the others at the same version, which no
/// correct node ever makes (only `fsck --verify` finds it). The node must
/// not be running (it keeps the header in memory), and its journal must
/// hold no write of the chunk (every start checkpoints: start and stop the
/// node once after the chunk's last write). Knows the chunk-file
/// layout of format 2 (`storage-node/src/chunk_file.rs`).
pub fn diverge_chunk_file(path: &std::path::Path, block: usize, fill: u8) {
    const SLOT: usize = 68 * 1024;
    const CRC_AT: usize = 40;
    const CRCS_AT: usize = 48;
    const BLOCK: usize = 4096;
    let mut f = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let u64_at = |f: &[u8], i: usize| u64::from_le_bytes(f[i..i + 8].try_into().unwrap());
    let valid = |f: &[u8], at: usize| {
        let slot = &f[at..at + SLOT];
        let mut copy = slot.to_vec();
        copy[CRC_AT..CRC_AT + 4].fill(0);
        &slot[..8] == b"RFSCHNK2" && crc32c::crc32c(&copy).to_le_bytes() == slot[CRC_AT..CRC_AT + 4]
    };
    // The newer valid slot is the chunk's header.
    let slot = [0, SLOT]
        .into_iter()
        .filter(|&at| valid(&f, at))
        .max_by_key(|&at| u64_at(&f, at + 8))
        .expect("a valid header slot");
    let length = u64_at(&f, slot + 32) as usize;
    let (start, end) = (block * BLOCK, ((block + 1) * BLOCK).min(length));
    assert!(
        start < end,
        "block {block} is past the chunk's {length} bytes"
    );
    let data = 2 * SLOT;
    f[data + start..data + end].fill(fill);
    let crc = crc32c::crc32c(&f[data + start..data + end]);
    let entry = slot + CRCS_AT + 4 * block;
    f[entry..entry + 4].copy_from_slice(&crc.to_le_bytes());
    f[slot + CRC_AT..slot + CRC_AT + 4].fill(0);
    let slot_crc = crc32c::crc32c(&f[slot..slot + SLOT]);
    f[slot + CRC_AT..slot + CRC_AT + 4].copy_from_slice(&slot_crc.to_le_bytes());
    std::fs::write(path, &f).unwrap();
}

/// How many different (version, length, digest of stored CRCs) the
/// replicas of `path`'s chunks hold, over all its chunks: 1 for a one-chunk
/// file whose replicas agree.
pub async fn distinct_contents(c: &Client, path: &str) -> usize {
    let mut seen = Vec::new();
    for (_, replicas) in c.replica_digests(path).await.unwrap() {
        for (n, d) in replicas {
            let d = d.unwrap_or_else(|e| panic!("{path}: node {n}: {e}"));
            if !seen.contains(&d) {
                seen.push(d);
            }
        }
    }
    seen.len()
}

/// Waits (up to `limit`) until the replicas of `path`'s chunks all hold one
/// content ([`distinct_contents`] is 1); panics naming `what` otherwise.
pub async fn wait_replicas_agree(c: &Client, path: &str, limit: Duration, what: &str) {
    let start = std::time::Instant::now();
    while distinct_contents(c, path).await != 1 {
        assert!(start.elapsed() < limit, "{path}: {what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
