//! Chunk-file header slots ([`crate::chunk_file`]): what recovery decodes
//! from a disk that may hold anything.

use crate::chunk_file::{blocks, ChunkMeta, MAX_BLOCKS, MAX_CHUNK_SIZE, SLOT_LEN};
use arbitrary::{Arbitrary, Unstructured};
use ringfs_schema::Version;

/// The CRC32C field of a slot (see `chunk_file.rs`).
const CRC_AT: usize = 40;
/// Where the CRC table starts.
const CRCS_AT: usize = 48;

/// The fields a slot image is built from.
#[derive(Arbitrary, Debug)]
struct Fields {
    seq: u64,
    epoch: u64,
    version: u64,
    /// Often in range, sometimes not.
    length: Length,
    crcs: Vec<u32>,
}

#[derive(Arbitrary, Debug)]
enum Length {
    InRange(u32),
    Any(u64),
}

#[derive(Arbitrary, Debug)]
enum Case {
    /// The bytes themselves as a slot (most are rejected).
    Raw(Vec<u8>),
    /// A slot image with these fields written raw and a correct CRC, so
    /// decoding gets past the checksum to the field checks.
    Forged(Fields),
    /// A slot encoded from these fields, then one byte changed.
    Damaged(Fields, u32, u8),
    /// Two slots encoded from these fields: the newer valid one wins.
    Pair(Fields, Fields, bool),
}

impl Fields {
    fn length(&self) -> u64 {
        match self.length {
            Length::InRange(l) => l as u64 % (MAX_CHUNK_SIZE + 1),
            Length::Any(l) => l,
        }
    }

    /// A header with these fields (length in range, one CRC per block).
    fn meta(&self) -> ChunkMeta {
        let length = self.length() % (MAX_CHUNK_SIZE + 1);
        let mut crcs = self.crcs.clone();
        crcs.resize(blocks(length), 0xdead_beef);
        ChunkMeta {
            seq: self.seq,
            version: Version::new(self.epoch, self.version),
            length,
            crcs: crcs.into_iter().collect(),
        }
    }

    /// The fields written into a slot as they are, the CRC made valid.
    fn forged(&self) -> Vec<u8> {
        let mut slot = vec![0u8; SLOT_LEN];
        slot[..8].copy_from_slice(b"RFSCHNK2");
        slot[8..16].copy_from_slice(&self.seq.to_le_bytes());
        slot[16..24].copy_from_slice(&self.epoch.to_le_bytes());
        slot[24..32].copy_from_slice(&self.version.to_le_bytes());
        slot[32..40].copy_from_slice(&self.length().to_le_bytes());
        for (i, c) in self.crcs.iter().take(MAX_BLOCKS).enumerate() {
            slot[CRCS_AT + 4 * i..CRCS_AT + 4 * i + 4].copy_from_slice(&c.to_le_bytes());
        }
        let crc = crc32c::crc32c(&slot);
        slot[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
        slot
    }
}

fn encoded(m: &ChunkMeta) -> Vec<u8> {
    let mut slot = vec![0u8; SLOT_LEN];
    m.encode(&mut slot);
    slot
}

/// Decoding a slot never panics; what decodes is a header whose CRC table
/// fits its length and which encodes back to the same slot; a header
/// round-trips; a changed byte is always detected; of two slots the valid
/// one with the larger sequence number wins.
pub fn chunk_header(data: &[u8]) {
    let Ok(case) = Case::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    match case {
        Case::Raw(mut bytes) => {
            // Both the exact slot size and any other size.
            assert!(ChunkMeta::decode(&bytes).is_none() || bytes.len() == SLOT_LEN);
            bytes.resize(SLOT_LEN, 0);
            check_decoded(&bytes);
        }
        Case::Forged(f) => {
            let decoded = check_decoded(&f.forged());
            assert_eq!(decoded.is_some(), f.length() <= MAX_CHUNK_SIZE, "{f:?}");
        }
        Case::Damaged(f, at, xor) => {
            let meta = f.meta();
            let mut slot = encoded(&meta);
            assert_eq!(ChunkMeta::decode(&slot), Some(meta));
            if xor != 0 {
                slot[at as usize % SLOT_LEN] ^= xor;
                assert_eq!(ChunkMeta::decode(&slot), None, "a changed byte went unseen");
            }
        }
        Case::Pair(a, b, b_valid) => {
            let (a, b) = (a.meta(), b.meta());
            let sa = encoded(&a);
            let mut sb = encoded(&b);
            if !b_valid {
                sb[0] ^= 1;
            }
            let want = match b_valid {
                true if b.seq > a.seq => &b,
                _ => &a,
            };
            let got = ChunkMeta::from_slots(&sa, &sb).expect("slot a is valid");
            assert_eq!(&got, want);
        }
    }
}

/// Decodes `slot`; checks what decodes.
fn check_decoded(slot: &[u8]) -> Option<ChunkMeta> {
    let meta = ChunkMeta::decode(slot)?;
    assert!(meta.length <= MAX_CHUNK_SIZE);
    assert_eq!(meta.crcs.len(), blocks(meta.length));
    assert!(meta.slot_offset() == 0 || meta.slot_offset() == SLOT_LEN as u64);
    // A decoded slot is the encoding of what it decoded to, except for
    // table entries past its length, which encoding zeroes.
    let again = encoded(&meta);
    assert_eq!(ChunkMeta::decode(&again).as_ref(), Some(&meta));
    let table_end = CRCS_AT + 4 * meta.crcs.len();
    assert_eq!(again[..CRC_AT], slot[..CRC_AT]);
    assert_eq!(again[CRCS_AT..table_end], slot[CRCS_AT..table_end]);
    Some(meta)
}
