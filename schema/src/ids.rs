//! Chunk ids and the chunk-to-shard mapping.

use std::fmt;

/// A 128-bit chunk id: the minting node's id in `hi`, the minting shard's
/// persistent counter in the upper 48 bits of `lo` and the shard index in its
/// lower 16 bits (so ids minted by different shards never collide).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ChunkId {
    /// The id of the node that minted it.
    pub hi: u64,
    /// The minting shard's counter (upper 48 bits) and shard index (lower 16).
    pub lo: u64,
}

impl ChunkId {
    /// The id with halves `hi` and `lo`.
    pub const fn new(hi: u64, lo: u64) -> Self {
        Self { hi, lo }
    }

    /// Big-endian bytes `hi ++ lo` (the input of token MACs).
    pub fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.hi.to_be_bytes());
        b[8..].copy_from_slice(&self.lo.to_be_bytes());
        b
    }

    /// File name stem: 32 lowercase hex digits.
    pub fn file_stem(self) -> String {
        format!("{:016x}{:016x}", self.hi, self.lo)
    }

    /// Inverse of [`ChunkId::file_stem`].
    pub fn from_file_stem(s: &str) -> Option<Self> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let hi = u64::from_str_radix(&s[..16], 16).ok()?;
        let lo = u64::from_str_radix(&s[16..], 16).ok()?;
        Some(Self { hi, lo })
    }

    /// The shard (0-based) owning this chunk on a node with `shards` shards:
    /// `mix64(hi ^ mix64(lo)) % shards`, where mix64 is the SplitMix64
    /// finalizer. Clients compute the same function to route requests
    /// straight to the owning shard (see docs/protocol.md, "Endpoints and routing").
    pub fn shard(self, shards: usize) -> usize {
        (mix64(self.hi ^ mix64(self.lo)) % shards.max(1) as u64) as usize
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}{:016x}", self.hi, self.lo)
    }
}

/// SplitMix64 finalizer: a cheap, well-distributed 64-bit mixer.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stem_round_trips() {
        let id = ChunkId::new(7, 0xdead_beef_0000_0001);
        assert_eq!(ChunkId::from_file_stem(&id.file_stem()), Some(id));
        assert_eq!(ChunkId::from_file_stem("xyz"), None);
    }

    #[test]
    fn shards_spread() {
        let mut counts = [0usize; 4];
        for lo in 0..4000u64 {
            counts[ChunkId::new(1, lo << 16).shard(4)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }
}
