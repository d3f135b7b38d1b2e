//! The cluster CA and the certificates it issues (`ringfs admin cert`, and
//! `ringfs-bench local --tls` for its own cluster).
//!
//! A CA directory holds `ca.pem` (the certificate every process trusts)
//! and `ca.key` (mode 0600; only the administrator issuing certificates
//! needs it). Its subject is fixed ([`CA_SUBJECT`]): issuing signs with the
//! stored key under that subject, which is all a certificate's issuer
//! field and signature need, so no certificate parser is built. Keys are
//! ECDSA P-256; every key file is created owner-only (0600) and never
//! overwritten.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

use super::{TlsError, TlsFiles};

/// The CA certificate's file name in a CA directory.
pub const CA_CERT: &str = "ca.pem";
/// The CA key's file name in a CA directory.
pub const CA_KEY: &str = "ca.key";
/// The CA's subject common name.
pub const CA_SUBJECT: &str = "ringfs cluster CA";
/// How long a CA is valid, days.
const CA_DAYS: i64 = 3650;

/// What a certificate may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A control replica or storage node: serves (TLS server
    /// authentication, for the hosts named) and connects to other servers
    /// (client authentication).
    Server,
    /// A client (CLI, library, FUSE mount, bench): client authentication
    /// only, so it cannot pose as a server.
    Client,
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, CA_SUBJECT);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p
}

/// Valid from a day ago (clocks of a cluster differ a little) for `days`.
fn validity(p: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    p.not_before = now - Duration::days(1);
    p.not_after = now + Duration::days(days);
}

/// Creates a new cluster CA in `dir` (created if missing): `ca.pem` and
/// `ca.key`. Refuses to overwrite an existing CA. Returns the certificate's
/// path.
pub fn create_ca(dir: &Path) -> Result<PathBuf, TlsError> {
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let key = KeyPair::generate()?;
    let mut params = ca_params();
    validity(&mut params, CA_DAYS);
    let cert = params.self_signed(&key)?;
    let cert_path = dir.join(CA_CERT);
    write_new(&dir.join(CA_KEY), key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok(cert_path)
}

/// Issues a certificate named `name` for `role`, signed by the CA in
/// `ca_dir`, valid for `days`: writes `NAME.pem` and `NAME.key` (0600) into
/// `out_dir` and returns the three files a process loads. `hosts` (IP
/// addresses or DNS names) are the names a server is dialled by; a client
/// certificate needs none. Refuses a name that is not a plain file name and
/// files that exist.
pub fn issue(
    ca_dir: &Path,
    name: &str,
    role: Role,
    hosts: &[String],
    days: u32,
    out_dir: &Path,
) -> Result<TlsFiles, TlsError> {
    let plain = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if !plain {
        return Err(TlsError::Pem {
            path: out_dir.join(name),
            problem: "a certificate name is letters, digits, '.', '_', '-' and '@'".into(),
        });
    }
    let ca_key_path = ca_dir.join(CA_KEY);
    crate::auth::check_private(&ca_key_path)?;
    let ca_pem = std::fs::read_to_string(&ca_key_path).map_err(|source| TlsError::Io {
        path: ca_key_path.clone(),
        source,
    })?;
    let ca_key = KeyPair::from_pem(&ca_pem).map_err(|_| TlsError::Pem {
        path: ca_key_path,
        problem: "holds no usable private key in PEM".into(),
    })?;
    // The issuer as signing sees it: the fixed subject and the stored key.
    let ca = ca_params().self_signed(&ca_key)?;

    let mut params = CertificateParams::new(hosts.to_vec())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match role {
        Role::Server => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        Role::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, i64::from(days));
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca, &ca_key)?;

    std::fs::create_dir_all(out_dir).map_err(|source| TlsError::Io {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let files = TlsFiles {
        ca: ca_dir.join(CA_CERT),
        cert: out_dir.join(format!("{name}.pem")),
        key: out_dir.join(format!("{name}.key")),
    };
    write_new(&files.key, key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&files.cert, cert.pem().as_bytes(), 0o644)?;
    Ok(files)
}

/// Writes a new file with permission bits `mode` (set at creation, so a
/// key is never readable by others even for a moment).
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => TlsError::Exists(path.to_path_buf()),
            _ => TlsError::Io {
                path: path.to_path_buf(),
                source,
            },
        })?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|source| TlsError::Io {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::Tls;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn issued_files_load_and_keys_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        create_ca(&ca).unwrap();
        let files = issue(
            &ca,
            "node1",
            Role::Server,
            &["127.0.0.1".into()],
            30,
            dir.path(),
        )
        .unwrap();
        for key in [ca.join(CA_KEY), files.key.clone()] {
            let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", key.display());
        }
        Tls::load(&files).unwrap();
        assert!(matches!(create_ca(&ca), Err(TlsError::Exists(_))));
        assert!(issue(&ca, "../x", Role::Client, &[], 1, dir.path()).is_err());

        std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Tls::load(&files).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
    }
}
