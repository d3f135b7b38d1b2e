//! On-disk layout of a chunk file (pure encoding, no I/O).
//!
//! ```text
//! offset 0       header slot A (68 KiB)
//! offset 68 KiB  header slot B (68 KiB)
//! offset 136 KiB chunk data, byte i of the chunk at 136 KiB + i
//! ```
//! A header slot (68 KiB) holds: magic `RFSCHNK2` (8 bytes), `seq` u64,
//! the version's `epoch` u64 and `seq` u64, `length` u64 (bytes), `crc` u32
//! (CRC32C of the slot with this field zeroed), 4 reserved bytes, then one
//! little-endian CRC32C per [`CRC_BLOCK`] of data (over the block's valid
//! bytes, i.e. up to `length`), as the writer computed it for the bytes it
//! sent (see `ringfs_schema::crc`).
//!
//! Format 1 (magic `RFSCHNK1`, a single `u64` version) is refused, never
//! read: [`slot_format`] tells it apart so that the node can say so.
//!
//! Why 4 KiB CRC blocks rather than 64 KiB: every read verifies the CRC of
//! each block it touches, so a 4 KiB random read of a 64 KiB-block chunk reads
//! 64 KiB from disk. Measured on the 2-core dev VM (node benchmark, 4 KiB
//! random reads, 64 in flight): 64 KiB blocks gave ~11k IOPS (25% of raw,
//! disk-bandwidth bound); 4 KiB blocks ~20-27k IOPS (41-55%). The price is a
//! 64 KiB CRC table per slot, written at each journal checkpoint for every
//! chunk written since (not per write: the per-shard journal holds each
//! write's CRCs until then). Each update writes the
//! slot `seq % 2` with `seq + 1`, so a torn header write leaves the other slot
//! intact; recovery takes the valid slot with the larger `seq`.
//!
//! Invariant: data bytes past `length` up to the next 4 KiB boundary are zero
//! on disk (holes read as zeros), so a block's CRC can be extended with zeros.

use crate::crc_table::CrcTable;
use ringfs_schema::Version;

/// Alignment of every O_DIRECT I/O, in bytes.
pub const ALIGN: u64 = 4096;
/// Bytes covered by one CRC32C (see the module doc for why 4 KiB).
pub const CRC_BLOCK: u64 = 4 * 1024;
/// Largest chunk, in bytes.
pub const MAX_CHUNK_SIZE: u64 = ringfs_schema::MAX_CHUNK_SIZE;
/// Bytes per header slot.
pub const SLOT_LEN: usize = 68 * 1024;
/// File offset of chunk data.
pub const DATA_OFFSET: u64 = 2 * SLOT_LEN as u64;
/// CRC entries per header (one per block of a maximal chunk).
pub(crate) const MAX_BLOCKS: usize = (MAX_CHUNK_SIZE / CRC_BLOCK) as usize;
const MAGIC: &[u8; 8] = b"RFSCHNK2";
/// The magic of format 1 (before versions had epochs).
const MAGIC_V1: &[u8; 8] = b"RFSCHNK1";
const CRC_AT: usize = 40;
const CRCS_AT: usize = 48;
const _: () = assert!(CRCS_AT + 4 * MAX_BLOCKS <= SLOT_LEN);

/// The durable metadata of a chunk.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub(crate) struct ChunkMeta {
    /// Header update counter (selects the slot).
    pub(crate) seq: u64,
    /// The chunk version this content carries.
    pub(crate) version: Version,
    /// Valid bytes.
    pub(crate) length: u64,
    /// One CRC32C per [`CRC_BLOCK`]; `len == blocks(length)`.
    pub(crate) crcs: CrcTable,
}

/// The format of a header slot image, by its magic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SlotFormat {
    /// This build's (`RFSCHNK2`).
    Current,
    /// Format 1 (`RFSCHNK1`), written before versions had epochs.
    V1,
    /// Neither: an empty or damaged slot.
    Unknown,
}

/// The format a slot image claims.
pub(crate) fn slot_format(slot: &[u8]) -> SlotFormat {
    match slot.get(..8) {
        Some(m) if m == MAGIC => SlotFormat::Current,
        Some(m) if m == MAGIC_V1 => SlotFormat::V1,
        _ => SlotFormat::Unknown,
    }
}

/// Number of CRC blocks covering `length` bytes.
pub(crate) fn blocks(length: u64) -> usize {
    length.div_ceil(CRC_BLOCK) as usize
}

pub(crate) fn align_down(v: u64, a: u64) -> u64 {
    v / a * a
}

pub(crate) fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

impl ChunkMeta {
    /// File offset of the slot this meta is written to.
    pub(crate) fn slot_offset(&self) -> u64 {
        (self.seq % 2) * SLOT_LEN as u64
    }

    /// Encodes into a slot image (exactly [`SLOT_LEN`] bytes).
    pub(crate) fn encode(&self, out: &mut [u8]) {
        assert_eq!(out.len(), SLOT_LEN);
        assert!(self.crcs.len() <= MAX_BLOCKS);
        out.fill(0);
        out[..8].copy_from_slice(MAGIC);
        out[8..16].copy_from_slice(&self.seq.to_le_bytes());
        out[16..24].copy_from_slice(&self.version.epoch.to_le_bytes());
        out[24..32].copy_from_slice(&self.version.seq.to_le_bytes());
        out[32..40].copy_from_slice(&self.length.to_le_bytes());
        for (i, c) in self.crcs.iter().enumerate() {
            out[CRCS_AT + 4 * i..CRCS_AT + 4 * i + 4].copy_from_slice(&c.to_le_bytes());
        }
        let crc = crc32c::crc32c(out);
        out[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
    }

    /// Decodes a slot image; `None` if it is not a valid, intact slot.
    pub(crate) fn decode(slot: &[u8]) -> Option<Self> {
        if slot.len() != SLOT_LEN || &slot[..8] != MAGIC {
            return None;
        }
        let u64_at = |i: usize| u64::from_le_bytes(slot[i..i + 8].try_into().expect("8 bytes"));
        let stored = u32::from_le_bytes(slot[CRC_AT..CRC_AT + 4].try_into().expect("4 bytes"));
        let mut copy = slot.to_vec();
        copy[CRC_AT..CRC_AT + 4].fill(0);
        if crc32c::crc32c(&copy) != stored {
            return None;
        }
        let length = u64_at(32);
        if length > MAX_CHUNK_SIZE {
            return None;
        }
        let crcs = (0..blocks(length))
            .map(|i| {
                u32::from_le_bytes(
                    slot[CRCS_AT + 4 * i..CRCS_AT + 4 * i + 4]
                        .try_into()
                        .expect("4 bytes"),
                )
            })
            .collect();
        Some(Self {
            seq: u64_at(8),
            version: Version::new(u64_at(16), u64_at(24)),
            length,
            crcs,
        })
    }

    /// BLAKE3 of the length (u64 LE) and the CRC table (u32 LE each): what
    /// replicas compare to find out whether they hold the same bytes
    /// without reading them (`fsck --verify`, verified reads). The table
    /// goes to the hasher 4 KiB at a time through a stack buffer: one
    /// `update` per CRC (16,384 of them for a 64 MiB chunk) made a verified
    /// 4 KiB read cost ~100 times a plain one (docs/benchmarks.md).
    pub(crate) fn digest(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        h.update(&self.length.to_le_bytes());
        const GROUP: usize = 1024;
        let mut buf = [0u8; 4 * GROUP];
        for group in self.crcs.slices().flat_map(|s| s.chunks(GROUP)) {
            for (out, c) in buf.chunks_exact_mut(4).zip(group) {
                out.copy_from_slice(&c.to_le_bytes());
            }
            h.update(&buf[..4 * group.len()]);
        }
        *h.finalize().as_bytes()
    }

    /// The newer valid slot of the two at the head of a chunk file.
    pub(crate) fn from_slots(a: &[u8], b: &[u8]) -> Option<Self> {
        match (Self::decode(a), Self::decode(b)) {
            (Some(x), Some(y)) => Some(if x.seq >= y.seq { x } else { y }),
            (x, y) => x.or(y),
        }
    }
}

/// CRC32C of `n` zero bytes appended to `crc`.
pub(crate) fn extend_with_zeros(mut crc: u32, mut n: u64) -> u32 {
    const Z: [u8; 4096] = [0; 4096];
    while n > 0 {
        let k = n.min(Z.len() as u64) as usize;
        crc = crc32c::crc32c_append(crc, &Z[..k]);
        n -= k as u64;
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_round_trip_and_damage_detection() {
        let m = ChunkMeta {
            seq: 3,
            version: Version::new(2, 9),
            length: 16_000,
            crcs: [1, 2, 3, 4].into_iter().collect(),
        };
        let mut slot = vec![0u8; SLOT_LEN];
        m.encode(&mut slot);
        assert_eq!(ChunkMeta::decode(&slot), Some(m.clone()));
        slot[100] ^= 1;
        assert_eq!(ChunkMeta::decode(&slot), None);
        let mut newer = m.clone();
        newer.seq = 4;
        let mut s2 = vec![0u8; SLOT_LEN];
        newer.encode(&mut s2);
        assert_eq!(ChunkMeta::from_slots(&slot, &s2), Some(newer.clone()));
        let mut s1 = vec![0u8; SLOT_LEN];
        m.encode(&mut s1);
        assert_eq!(ChunkMeta::from_slots(&s2, &s1), Some(newer));
        assert_eq!(slot_format(&s1), SlotFormat::Current);
        s1[..8].copy_from_slice(b"RFSCHNK1");
        assert_eq!(slot_format(&s1), SlotFormat::V1);
        assert_eq!(ChunkMeta::decode(&s1), None, "format 1 is never read");
        assert_eq!(slot_format(&[0; 64]), SlotFormat::Unknown);
    }

    #[test]
    fn digest_is_blake3_of_the_length_and_the_table_in_le_bytes() {
        // 2,500 CRCs: a full 4 KiB group and a partial one.
        let m = ChunkMeta {
            seq: 1,
            version: Version::new(1, 1),
            length: 2_500 * 4096 - 7,
            crcs: (0..2_500u32).map(|i| i.wrapping_mul(0x9e37_79b9)).collect(),
        };
        let mut bytes = m.length.to_le_bytes().to_vec();
        bytes.extend(m.crcs.iter().flat_map(|c| c.to_le_bytes()));
        assert_eq!(m.digest(), *blake3::hash(&bytes).as_bytes());
    }

    #[test]
    fn zero_extension_matches_direct_crc() {
        let mut data = vec![7u8; 1000];
        let c = crc32c::crc32c(&data);
        data.resize(70_000, 0);
        assert_eq!(extend_with_zeros(c, 69_000), crc32c::crc32c(&data));
    }
}
