//! End-to-end CRCs of the data plane: a write payload's CRC32C per piece of
//! the chunk's 4 KiB block grid, computed by the writer, verified by every
//! node before it applies the write and stored as sent; read responses carry
//! the stored CRC of each whole block they return, which the reader checks.
//!
//! Pieces: a payload of `len` bytes at chunk offset `offset` is cut at every
//! multiple of [`CRC_BLOCK`]; the first and the last piece may be partial.
//! An empty payload has no pieces.

/// Bytes per CRC block of a chunk.
pub const CRC_BLOCK: u64 = 4096;

/// Most CRCs one frame carries: one per block of the largest chunk.
pub const MAX_CRCS: usize = (crate::MAX_CHUNK_SIZE / CRC_BLOCK) as usize;

/// The pieces of a payload of `len` bytes at chunk `offset`, as ranges of
/// the payload (not of the chunk).
pub fn pieces(offset: u64, len: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        if at >= len {
            return None;
        }
        let chunk_at = offset + at as u64;
        let to_boundary = (CRC_BLOCK - chunk_at % CRC_BLOCK) as usize;
        let end = (at + to_boundary).min(len);
        let r = at..end;
        at = end;
        Some(r)
    })
}

/// Number of pieces of a payload of `len` bytes at chunk `offset`.
pub fn piece_count(offset: u64, len: usize) -> usize {
    if len == 0 {
        return 0;
    }
    let first = offset / CRC_BLOCK;
    let last = (offset + len as u64 - 1) / CRC_BLOCK;
    (last - first + 1) as usize
}

/// The CRC32C of each piece of `payload`, written at chunk `offset`.
pub fn piece_crcs(offset: u64, payload: &[u8]) -> Vec<u32> {
    pieces(offset, payload.len())
        .map(|r| crc32c::crc32c(&payload[r]))
        .collect()
}

/// Checks `payload`, written at chunk `offset`, against the CRCs its sender
/// computed; on a mismatch returns the index of the first bad piece (or of
/// the first missing or extra CRC).
pub fn verify_pieces(offset: u64, payload: &[u8], crcs: &[u32]) -> Result<(), usize> {
    let n = piece_count(offset, payload.len());
    if crcs.len() != n {
        return Err(n.min(crcs.len()));
    }
    for (i, r) in pieces(offset, payload.len()).enumerate() {
        if crc32c::crc32c(&payload[r]) != crcs[i] {
            return Err(i);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_follow_the_block_grid() {
        let p: Vec<_> = pieces(4000, 10_000).collect();
        assert_eq!(p, vec![0..96, 96..4192, 4192..8288, 8288..10_000]);
        assert_eq!(piece_count(4000, 10_000), 4);
        assert_eq!(pieces(8192, 4096).collect::<Vec<_>>(), vec![0..4096]);
        assert_eq!(piece_count(8192, 4096), 1);
        assert_eq!(piece_count(0, 0), 0);
        assert_eq!(pieces(5, 0).count(), 0);
        assert_eq!(piece_count(4095, 2), 2);
    }

    #[test]
    fn a_flipped_bit_or_a_wrong_count_is_found() {
        let data: Vec<u8> = (0..9000u32).map(|i| i as u8).collect();
        let crcs = piece_crcs(100, &data);
        assert_eq!(verify_pieces(100, &data, &crcs), Ok(()));
        let mut bad = data.clone();
        bad[5000] ^= 4;
        assert_eq!(verify_pieces(100, &bad, &crcs), Err(1));
        assert!(verify_pieces(100, &data, &crcs[1..]).is_err());
        assert!(verify_pieces(0, &data, &crcs).is_err(), "another grid");
    }
}
