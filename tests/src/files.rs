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
