//! Lock tokens: a BLAKE3 keyed hash over (chunk id, client id, generation)
//! with a node-local secret key, so a forged, foreign (another node's) or
//! altered token is refused. Staleness (a released or expired generation) is
//! checked by the lock table, which only honours generations it holds.

use ringfs_schema::frame::Token;
use ringfs_schema::ids::ChunkId;

/// MAC length in bytes.
pub const MAC_LEN: usize = 32;

/// The node's token key. Generated at start from the OS RNG: locks do not
/// survive a restart, so neither need their tokens.
#[derive(Clone)]
pub struct TokenKey([u8; 32]);

impl TokenKey {
    #[cfg(test)]
    pub fn from_bytes(key: [u8; 32]) -> Self {
        Self(key)
    }

    /// A fresh random key from `/dev/urandom`.
    pub fn random() -> std::io::Result<Self> {
        use std::io::Read;
        let mut key = [0u8; 32];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut key)?;
        Ok(Self(key))
    }

    fn mac(&self, chunk: ChunkId, client_id: u64, generation: u64) -> blake3::Hash {
        let mut input = [0u8; 32];
        input[..16].copy_from_slice(&chunk.to_bytes());
        input[16..24].copy_from_slice(&client_id.to_be_bytes());
        input[24..].copy_from_slice(&generation.to_be_bytes());
        blake3::keyed_hash(&self.0, &input)
    }

    /// The token for a lock generation granted to `client_id` on `chunk`.
    pub fn issue(&self, chunk: ChunkId, client_id: u64, generation: u64) -> Token {
        Token {
            client_id,
            generation,
            mac: self.mac(chunk, client_id, generation).as_bytes().to_vec(),
        }
    }

    /// Whether `token`'s MAC is authentic for `chunk` (constant time).
    pub fn verify(&self, chunk: ChunkId, token: &Token) -> bool {
        let Ok(mac) = <[u8; MAC_LEN]>::try_from(token.mac.as_slice()) else {
            return false;
        };
        self.mac(chunk, token.client_id, token.generation) == blake3::Hash::from(mac)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authentic_tokens_verify_and_forgeries_do_not() {
        let key = TokenKey::from_bytes([7; 32]);
        let other = TokenKey::from_bytes([8; 32]);
        let c = ChunkId::new(1, 2);
        let t = key.issue(c, 10, 3);
        assert!(key.verify(c, &t));
        assert!(!other.verify(c, &t), "foreign node's token");
        assert!(!key.verify(ChunkId::new(1, 3), &t), "other chunk");
        let mut forged = t.clone();
        forged.generation = 4;
        assert!(!key.verify(c, &forged));
        let mut forged = t.clone();
        forged.client_id = 11;
        assert!(!key.verify(c, &forged));
        let mut short = t;
        short.mac.pop();
        assert!(!key.verify(c, &short));
    }
}
