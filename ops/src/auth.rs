//! Credentials and the proofs of the control plane's challenge-response
//! authentication (docs/protocol.md, "Authentication").
//!
//! Every key derives from the cluster secret with HMAC-SHA256, so that no
//! key is ever sent: `key(user, salt) = HMAC-SHA256(secret, "ringfs user
//! key v1" 0x00 user 0x00 salt)`. The built-in users [`ADMIN`] and
//! [`CLUSTER`] have an empty salt; users registered with `addUser` have
//! the 16-byte salt the control server drew for them (revoking and adding
//! a user again gives it a new key). A connection proves a key with
//! `proof = HMAC-SHA256(key, "ringfs auth v1" 0x00 challenge user)` over the
//! 32-byte challenge of the connection's `hello`.
//!
//! Credential and secret files must not be readable or writable by group
//! or others ([`check_private`]): a server or client refuses them.

use std::fmt;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Bytes of a key and of a proof (HMAC-SHA256).
pub const KEY_LEN: usize = 32;
/// Bytes of a `hello` challenge.
pub const CHALLENGE_LEN: usize = 32;
/// Bytes of a registered user's salt.
pub const SALT_LEN: usize = 16;
/// The built-in administrator: uid 0, may do everything.
pub const ADMIN: &str = "admin";
/// The built-in principal of storage nodes and control replicas (join,
/// Raft); an administrator too.
pub const CLUSTER: &str = "@cluster";

const KEY_LABEL: &[u8] = b"ringfs user key v1";
const PROOF_LABEL: &[u8] = b"ringfs auth v1";

/// Why a credential or secret file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The file could not be read or written.
    #[error("credential file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// Group or others may read or write it.
    #[error(
        "{path} is accessible by group or others (mode {mode:04o}); it holds a secret: \
         chmod 600 it"
    )]
    NotPrivate {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// It is not a credential file (the message says what is wrong, never
    /// its key).
    #[error("credential file {path}: {problem}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
}

/// A user name and its key: what a client authenticates with.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    /// The user.
    pub user: String,
    key: [u8; KEY_LEN],
}

impl fmt::Debug for Credential {
    /// Never prints the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialFile {
    user: String,
    key: String,
}

impl Credential {
    /// A credential of `user` with `key`.
    pub fn new(user: impl Into<String>, key: [u8; KEY_LEN]) -> Self {
        Credential {
            user: user.into(),
            key,
        }
    }

    /// The credential of `user` (registered with `salt`; empty for the
    /// built-in users) in the cluster whose secret is `secret`.
    pub fn derive(secret: &[u8], user: &str, salt: &[u8]) -> Self {
        Self::new(user, derive_key(secret, user, salt))
    }

    /// The built-in administrator's credential.
    pub fn admin(secret: &[u8]) -> Self {
        Self::derive(secret, ADMIN, &[])
    }

    /// The credential of storage nodes and control replicas.
    pub fn cluster(secret: &[u8]) -> Self {
        Self::derive(secret, CLUSTER, &[])
    }

    /// The key (for the server's verification).
    pub fn key(&self) -> &[u8; KEY_LEN] {
        &self.key
    }

    /// The answer to `challenge`.
    pub fn proof(&self, challenge: &[u8]) -> [u8; KEY_LEN] {
        proof(&self.key, challenge, &self.user)
    }

    /// Reads a credential file, refusing one that group or others may
    /// access.
    pub fn load(path: &Path) -> Result<Self, CredentialError> {
        check_private(path)?;
        let text = std::fs::read_to_string(path).map_err(|source| CredentialError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let malformed = |problem: String| CredentialError::Malformed {
            path: path.to_path_buf(),
            problem,
        };
        // toml's errors quote the offending line, which may be the key:
        // say only where it failed.
        let file: CredentialFile = toml::from_str(&text).map_err(|e| {
            malformed(format!(
                "not a credential file (TOML with `user` and `key`){}",
                e.span()
                    .map(|s| format!(" at byte {}", s.start))
                    .unwrap_or_default()
            ))
        })?;
        let key = decode_hex(&file.key)
            .ok_or_else(|| malformed(format!("the key is not {KEY_LEN} bytes in hex")))?;
        if file.user.is_empty() {
            return Err(malformed("the user is empty".into()));
        }
        Ok(Self::new(file.user, key))
    }

    /// Writes the credential to a new file at `path` readable by its owner
    /// only (mode 0600); an existing file is not overwritten.
    pub fn save(&self, path: &Path) -> Result<(), CredentialError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let text = toml::to_string(&CredentialFile {
            user: self.user.clone(),
            key: encode_hex(&self.key),
        })
        .expect("a credential serializes");
        let io = |source| CredentialError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        f.write_all(format!("# ringfs credential: a secret, keep it mode 0600\n{text}").as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(io)
    }
}

/// Refuses a file that group or others may read or write (it holds a
/// secret), with a message that says how to fix it.
pub fn check_private(path: &Path) -> Result<(), CredentialError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|source| CredentialError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(CredentialError::NotPrivate {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

fn hmac(key: &[u8]) -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length")
}

/// The key of `user` registered with `salt` under the cluster secret.
pub fn derive_key(secret: &[u8], user: &str, salt: &[u8]) -> [u8; KEY_LEN] {
    let mut m = hmac(secret);
    m.update(KEY_LABEL);
    m.update(&[0]);
    m.update(user.as_bytes());
    m.update(&[0]);
    m.update(salt);
    m.finalize().into_bytes().into()
}

fn proof_mac(key: &[u8; KEY_LEN], challenge: &[u8], user: &str) -> Hmac<Sha256> {
    let mut m = hmac(key);
    m.update(PROOF_LABEL);
    m.update(&[0]);
    m.update(challenge);
    m.update(user.as_bytes());
    m
}

/// The proof that the holder of `key` answers `challenge` as `user`.
pub fn proof(key: &[u8; KEY_LEN], challenge: &[u8], user: &str) -> [u8; KEY_LEN] {
    proof_mac(key, challenge, user)
        .finalize()
        .into_bytes()
        .into()
}

/// Whether `presented` is the proof of `key` for `challenge` and `user`
/// (constant time).
pub fn verify(key: &[u8; KEY_LEN], challenge: &[u8], user: &str, presented: &[u8]) -> bool {
    proof_mac(key, challenge, user)
        .verify_slice(presented)
        .is_ok()
}

fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex(s: &str) -> Option<[u8; KEY_LEN]> {
    let s = s.trim();
    if s.len() != 2 * KEY_LEN || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; KEY_LEN];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn proofs_verify_only_for_their_key_challenge_and_user() {
        let c = Credential::derive(b"secret-0123456789", "alice", &[7; SALT_LEN]);
        let challenge = [1u8; CHALLENGE_LEN];
        let p = c.proof(&challenge);
        assert!(verify(c.key(), &challenge, "alice", &p));
        assert!(!verify(c.key(), &[2u8; CHALLENGE_LEN], "alice", &p));
        assert!(!verify(c.key(), &challenge, "bob", &p));
        let other = Credential::derive(b"secret-0123456789", "alice", &[8; SALT_LEN]);
        assert!(!verify(other.key(), &challenge, "alice", &p));
        assert!(!verify(c.key(), &challenge, "alice", &p[..31]));
        assert_ne!(
            Credential::admin(b"s").key(),
            Credential::cluster(b"s").key()
        );
    }

    #[test]
    fn files_round_trip_and_must_be_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cred");
        let c = Credential::derive(b"secret-0123456789", "alice", &[7; SALT_LEN]);
        c.save(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(Credential::load(&path).unwrap(), c);
        assert!(
            c.save(&path).is_err(),
            "an existing file is not overwritten"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = Credential::load(&path).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        assert!(!format!("{c:?}").contains(&encode_hex(c.key())));
    }

    #[test]
    fn a_malformed_file_does_not_echo_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cred");
        std::fs::write(&path, "user = \"a\"\nkey = \"zz-not-hex-but-secret\"\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = Credential::load(&path).unwrap_err().to_string();
        assert!(!e.contains("not-hex-but-secret"), "{e}");
    }
}
