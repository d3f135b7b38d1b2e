//! Data-plane capabilities (docs/protocol.md, "Capabilities"): what the
//! control server hands a client with the chunk records it may use, and
//! what a storage node demands with every chunk operation.
//!
//! A capability is [`CAPABILITY_LEN`] bytes, big-endian throughout:
//!
//! | bytes | field |
//! | --- | --- |
//! | 0..4 | key id (`u32`) |
//! | 4 | rights ([`Rights`] bits: read 1, write 2, reserve 4) |
//! | 5..8 | zero |
//! | 8..16 | expiry, milliseconds since the Unix epoch (`u64`) |
//! | 16..32 | chunk id (`hi`, `lo`); zero in a reserve capability |
//! | 32..48 | lease: the file's inode and its write lease's epoch (`u64` each); zero for none |
//! | 48..80 | `HMAC-SHA256(data_key(key id), "ringfs capability v1" 0x00 bytes[0..48])` |
//!
//! `data_key(id) = HMAC-SHA256(S, "ringfs data key v1" 0x00 id)` with `S`
//! the cluster secret: the control server and every node derive it alone,
//! so it never travels. A node accepts the key id it is configured with
//! and the one before it ([`CapabilityKeys::verify`]), which is how the key
//! is rotated (docs/operations.md).
//!
//! Verification allocates nothing: the keys are kept as keyed HMAC states
//! (cloned, not re-derived, per check), the MAC input has a fixed size and
//! the comparison is constant-time (`hmac`'s `verify_slice`).

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Bytes of a capability.
pub use ringfs_schema::frame::CAPABILITY_LEN;
/// Bytes covered by the MAC (everything before it).
const SIGNED_LEN: usize = 48;
const KEY_LABEL: &[u8] = b"ringfs data key v1";
const MAC_LABEL: &[u8] = b"ringfs capability v1";

/// How long the control server's capabilities are valid: long enough that
/// a client refetches its records rarely, short enough that a revoked
/// access (a closed lease, a removed user) ends soon.
pub const LIFETIME_MS: u64 = 5 * 60 * 1000;

/// The rights a capability grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rights(u8);

impl Rights {
    /// Read the chunk: `read`, `chunkInfo`, `digest`, a read lock, the
    /// source side of `copyTo`.
    pub const READ: Rights = Rights(1);
    /// Write or delete the chunk, take its write lock, reserve its id on a
    /// node (a replica), be the target of a copy.
    pub const WRITE: Rights = Rights(2);
    /// Mint a new chunk id (a `reserve` without an id) for the lease.
    pub const RESERVE: Rights = Rights(4);
    /// Read and write.
    pub const READ_WRITE: Rights = Rights(3);

    /// The rights of a capability's rights byte.
    pub fn from_byte(b: u8) -> Rights {
        Rights(b)
    }

    /// Whether every right of `need` is granted.
    pub fn contains(self, need: Rights) -> bool {
        self.0 & need.0 == need.0
    }
}

/// A write lease: the file's inode and the lease's write epoch (unique per
/// lease). `Lease::NONE` for capabilities of read handles.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lease {
    /// The file.
    pub inode: u64,
    /// The lease's write epoch.
    pub epoch: u64,
}

impl Lease {
    /// No lease.
    pub const NONE: Lease = Lease { inode: 0, epoch: 0 };
}

/// What an authentic capability says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claims {
    /// The key id it was MACed with.
    pub key_id: u32,
    /// Its rights.
    pub rights: Rights,
    /// Milliseconds since the Unix epoch after which it is refused.
    pub expires_ms: u64,
    /// The chunk (big-endian `hi ++ lo`); zero for a reserve capability.
    pub chunk: [u8; 16],
    /// The lease it was issued for.
    pub lease: Lease,
}

/// Why a capability is refused. Messages say what is wrong, never a key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CapabilityError {
    /// None was sent.
    #[error("the request carries no capability")]
    Missing,
    /// Not [`CAPABILITY_LEN`] bytes.
    #[error("a capability is {CAPABILITY_LEN} bytes, this one {0}")]
    Length(usize),
    /// The MAC does not match (forged or altered, or another cluster's).
    #[error("the capability is not authentic (forged, altered or of another cluster)")]
    Forged,
    /// Its key id is neither the current nor the previous one.
    #[error("the capability's key id {got} is not accepted (current {current}): fetch the records again")]
    KeyRetired {
        /// The capability's key id.
        got: u32,
        /// The current key id.
        current: u32,
    },
    /// Authentic but past its expiry.
    #[error("the capability expired {0} ms ago: fetch the records again")]
    Expired(u64),
    /// For another chunk.
    #[error("the capability is for another chunk")]
    OtherChunk,
    /// Without a right the operation needs.
    #[error("the capability does not grant {0}")]
    Right(&'static str),
}

impl CapabilityError {
    /// Whether fetching a fresh capability may cure it (expired, or a
    /// rotated key), as opposed to a capability that was never valid.
    pub fn is_expiry(&self) -> bool {
        matches!(
            self,
            CapabilityError::Expired(_) | CapabilityError::KeyRetired { .. }
        )
    }
}

/// The data-plane keys derived from the cluster secret: the current key id
/// (what [`CapabilityKeys::issue`] uses) and the previous one (still
/// accepted), as keyed HMAC states.
#[derive(Clone)]
pub struct CapabilityKeys {
    current_id: u32,
    current: Hmac<Sha256>,
    previous: Option<Hmac<Sha256>>,
}

impl std::fmt::Debug for CapabilityKeys {
    /// Never prints a key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CapabilityKeys")
            .field("current_id", &self.current_id)
            .finish_non_exhaustive()
    }
}

fn keyed(key: &[u8]) -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length")
}

/// The data-plane key of `key_id` under the cluster secret.
fn data_key(secret: &[u8], key_id: u32) -> Hmac<Sha256> {
    let mut m = keyed(secret);
    m.update(KEY_LABEL);
    m.update(&[0]);
    m.update(&key_id.to_be_bytes());
    let key: [u8; 32] = m.finalize().into_bytes().into();
    let mut state = keyed(&key);
    state.update(MAC_LABEL);
    state.update(&[0]);
    state
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl CapabilityKeys {
    /// The keys of the cluster whose secret is `secret`, issuing with
    /// `key_id` and accepting it and `key_id - 1`.
    pub fn new(secret: &[u8], key_id: u32) -> Self {
        CapabilityKeys {
            current_id: key_id,
            current: data_key(secret, key_id),
            previous: key_id.checked_sub(1).map(|id| data_key(secret, id)),
        }
    }

    /// The key id capabilities are issued with.
    pub fn key_id(&self) -> u32 {
        self.current_id
    }

    /// A capability for `chunk` (zero for a reserve capability) with
    /// `rights`, bound to `lease`, valid until `expires_ms`.
    pub fn issue(
        &self,
        rights: Rights,
        chunk: [u8; 16],
        lease: Lease,
        expires_ms: u64,
    ) -> [u8; CAPABILITY_LEN] {
        let mut cap = [0u8; CAPABILITY_LEN];
        cap[0..4].copy_from_slice(&self.current_id.to_be_bytes());
        cap[4] = rights.0;
        cap[8..16].copy_from_slice(&expires_ms.to_be_bytes());
        cap[16..32].copy_from_slice(&chunk);
        cap[32..40].copy_from_slice(&lease.inode.to_be_bytes());
        cap[40..48].copy_from_slice(&lease.epoch.to_be_bytes());
        let mut m = self.current.clone();
        m.update(&cap[..SIGNED_LEN]);
        cap[SIGNED_LEN..].copy_from_slice(&m.finalize().into_bytes());
        cap
    }

    /// The claims of `cap` if its MAC is authentic under the current or
    /// the previous key (constant time); expiry and scope are not checked.
    pub fn authenticate(&self, cap: &[u8; CAPABILITY_LEN]) -> Result<Claims, CapabilityError> {
        let u64_at = |i: usize| u64::from_be_bytes(cap[i..i + 8].try_into().expect("8 bytes"));
        let key_id = u32::from_be_bytes(cap[0..4].try_into().expect("4 bytes"));
        let state = if key_id == self.current_id {
            &self.current
        } else {
            match &self.previous {
                Some(p) if key_id.checked_add(1) == Some(self.current_id) => p,
                _ => {
                    return Err(CapabilityError::KeyRetired {
                        got: key_id,
                        current: self.current_id,
                    })
                }
            }
        };
        let mut m = state.clone();
        m.update(&cap[..SIGNED_LEN]);
        m.verify_slice(&cap[SIGNED_LEN..])
            .map_err(|_| CapabilityError::Forged)?;
        Ok(Claims {
            key_id,
            rights: Rights(cap[4]),
            expires_ms: u64_at(8),
            chunk: cap[16..32].try_into().expect("16 bytes"),
            lease: Lease {
                inode: u64_at(32),
                epoch: u64_at(40),
            },
        })
    }

    /// Checks that `cap` is authentic, unexpired at `now_ms`, for `chunk`
    /// and grants `need`; answers its claims.
    pub fn verify(
        &self,
        cap: Option<&[u8; CAPABILITY_LEN]>,
        chunk: [u8; 16],
        need: Rights,
        now_ms: u64,
    ) -> Result<Claims, CapabilityError> {
        let cap = cap.ok_or(CapabilityError::Missing)?;
        let claims = self.authenticate(cap)?;
        // The scope before the expiry: a foreign capability is refused as
        // such, never as "expired" (which would make a client refetch).
        if claims.chunk != chunk {
            return Err(CapabilityError::OtherChunk);
        }
        if !claims.rights.contains(need) {
            return Err(CapabilityError::Right(right_name(need)));
        }
        if now_ms > claims.expires_ms {
            return Err(CapabilityError::Expired(now_ms - claims.expires_ms));
        }
        Ok(claims)
    }
}

fn right_name(r: Rights) -> &'static str {
    match r {
        Rights::READ => "read",
        Rights::WRITE => "write",
        Rights::RESERVE => "reserve",
        _ => "read and write",
    }
}

/// A capability as a client holds it: opaque bytes (a bearer credential
/// until it expires, so `Debug` shows only its key id, rights and expiry).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Capability(pub [u8; CAPABILITY_LEN]);

impl Capability {
    /// The expiry it states, milliseconds since the Unix epoch (read
    /// without checking the MAC: for deciding when to fetch a new one).
    pub fn expires_ms(&self) -> u64 {
        u64::from_be_bytes(self.0[8..16].try_into().expect("8 bytes"))
    }

    /// A capability from wire bytes (`None` when empty or malformed: a
    /// node refuses the request then, with a clear message).
    pub fn from_wire(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Capability)
    }
}

impl std::fmt::Debug for Capability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capability")
            .field(
                "key_id",
                &u32::from_be_bytes(self.0[0..4].try_into().expect("4 bytes")),
            )
            .field("rights", &self.0[4])
            .field("expires_ms", &self.expires_ms())
            .finish_non_exhaustive()
    }
}

/// A capability from its wire bytes: `None` when empty, an error when not
/// [`CAPABILITY_LEN`] bytes.
pub fn from_wire(bytes: &[u8]) -> Result<Option<[u8; CAPABILITY_LEN]>, CapabilityError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    bytes
        .try_into()
        .map(Some)
        .map_err(|_| CapabilityError::Length(bytes.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: [u8; 16] = [7; 16];
    const L: Lease = Lease { inode: 5, epoch: 9 };

    /// What authentication adds to the data and control paths, as figures
    /// for docs/benchmarks.md (never a timed assertion): a node's check of
    /// one capability (one HMAC-SHA256 over its 48 signed bytes, constant
    /// time compare, scope and expiry), and the control server's check of
    /// one connection's proof.
    /// `cargo test --release -p ringfs-ops --lib capability_cost -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement, run by hand"]
    fn capability_cost() {
        use std::hint::black_box;
        const N: u32 = 200_000;
        let keys = CapabilityKeys::new(b"secret-0123456789", 3);
        let cap = keys.issue(Rights::READ_WRITE, C, L, u64::MAX);
        let start = std::time::Instant::now();
        for _ in 0..N {
            let c = keys.verify(Some(black_box(&cap)), black_box(C), Rights::WRITE, 1);
            black_box(c.unwrap());
        }
        let verify = start.elapsed() / N;
        let key = [7u8; 32];
        let challenge = [9u8; 32];
        let proof = crate::auth::proof(&key, &challenge, "alice");
        let start = std::time::Instant::now();
        for _ in 0..N {
            assert!(crate::auth::verify(
                black_box(&key),
                &challenge,
                "alice",
                black_box(&proof)
            ));
        }
        let auth = start.elapsed() / N;
        println!("capability verify: {verify:?} per chunk operation");
        println!("connection proof check: {auth:?} per connection");
    }

    #[test]
    fn a_capability_verifies_only_for_its_chunk_right_key_and_time() {
        let keys = CapabilityKeys::new(b"secret-0123456789", 3);
        let cap = keys.issue(Rights::READ, C, L, 1000);
        let c = keys.verify(Some(&cap), C, Rights::READ, 999).unwrap();
        assert_eq!((c.lease, c.key_id, c.expires_ms), (L, 3, 1000));
        assert_eq!(
            keys.verify(None, C, Rights::READ, 0),
            Err(CapabilityError::Missing)
        );
        assert_eq!(
            keys.verify(Some(&cap), [8; 16], Rights::READ, 0),
            Err(CapabilityError::OtherChunk)
        );
        assert_eq!(
            keys.verify(Some(&cap), C, Rights::WRITE, 0),
            Err(CapabilityError::Right("write"))
        );
        assert_eq!(
            keys.verify(Some(&cap), C, Rights::READ, 1001),
            Err(CapabilityError::Expired(1))
        );
        for i in 0..CAPABILITY_LEN {
            let mut forged = cap;
            forged[i] ^= 1;
            assert!(
                keys.verify(Some(&forged), C, Rights::READ, 0).is_err(),
                "byte {i}"
            );
        }
        let other_cluster = CapabilityKeys::new(b"secret-other-cluster", 3);
        assert_eq!(
            other_cluster.verify(Some(&cap), C, Rights::READ, 0),
            Err(CapabilityError::Forged)
        );
    }

    #[test]
    fn rotation_accepts_the_previous_key_id_only() {
        let s = b"secret-0123456789";
        let old = CapabilityKeys::new(s, 1).issue(Rights::READ_WRITE, C, L, u64::MAX);
        let rotated = CapabilityKeys::new(s, 2);
        assert!(rotated.verify(Some(&old), C, Rights::WRITE, 0).is_ok());
        let twice = CapabilityKeys::new(s, 3);
        let e = twice.verify(Some(&old), C, Rights::WRITE, 0).unwrap_err();
        assert!(e.is_expiry(), "{e}");
        // The key id is signed: relabelling an old capability is a forgery.
        let mut relabelled = old;
        relabelled[0..4].copy_from_slice(&3u32.to_be_bytes());
        assert_eq!(
            twice.verify(Some(&relabelled), C, Rights::WRITE, 0),
            Err(CapabilityError::Forged)
        );
        assert_eq!(from_wire(&old[..79]), Err(CapabilityError::Length(79)));
        assert_eq!(from_wire(&[]), Ok(None));
    }
}
