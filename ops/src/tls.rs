//! TLS for every ringfs connection (docs/operations.md, "TLS"): the
//! cluster CA, certificates and keys loaded from PEM files, and the rustls
//! configurations built from them.
//!
//! Trust is mutual and private to the cluster: a server (control replica,
//! storage-node shard) requires a client certificate issued by the cluster
//! CA, and a client verifies the server's certificate against the same CA
//! and the host it dialled (an IP address or DNS name among the
//! certificate's subject alternative names). Certificates issued for
//! clients carry only the client-authentication usage, so a client's
//! certificate cannot be used to pose as a server.
//!
//! Only the `ring` crypto provider is built (aws-lc-rs, rustls's default,
//! needs cmake and a long C build); it is named explicitly, never taken
//! from a process-wide default.

pub mod certs;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::auth::{check_private, CredentialError};

/// Where a process's TLS files are: the `[tls]` table of the control and
/// node config files, and the `--tls-ca`, `--tls-cert`, `--tls-key` flags
/// of the clients.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The cluster CA's certificate (PEM): whom this process trusts.
    pub ca: PathBuf,
    /// This process's certificate chain (PEM), issued by the cluster CA.
    pub cert: PathBuf,
    /// Its private key (PEM); refused if group or others may access it.
    pub key: PathBuf,
}

/// The `--tls-ca`, `--tls-cert` and `--tls-key` flags (environment
/// `RINGFS_TLS_CA`, `RINGFS_TLS_CERT`, `RINGFS_TLS_KEY`): all three or none.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsFlags {
    /// The cluster CA certificate (PEM): turns TLS on, with --tls-cert and
    /// --tls-key.
    #[arg(long, env = "RINGFS_TLS_CA", value_name = "FILE", global = true)]
    pub tls_ca: Option<PathBuf>,
    /// This process's certificate (PEM), issued by the cluster CA.
    #[arg(long, env = "RINGFS_TLS_CERT", value_name = "FILE", global = true)]
    pub tls_cert: Option<PathBuf>,
    /// Its private key (PEM, mode 0600).
    #[arg(long, env = "RINGFS_TLS_KEY", value_name = "FILE", global = true)]
    pub tls_key: Option<PathBuf>,
}

impl TlsFlags {
    /// The files the flags name, else `file`'s (a config file's `[tls]`):
    /// flags win. Fails naming what is missing when only some are given.
    pub fn resolve(self, file: Option<TlsFiles>) -> Result<Option<TlsFiles>, String> {
        match (self.tls_ca, self.tls_cert, self.tls_key) {
            (None, None, None) => Ok(file),
            (Some(ca), Some(cert), Some(key)) => Ok(Some(TlsFiles { ca, cert, key })),
            _ => Err("--tls-ca, --tls-cert and --tls-key go together: give all three".into()),
        }
    }

    /// These flags naming `files` (for a launcher passing them on).
    pub fn args(files: &TlsFiles) -> Vec<std::ffi::OsString> {
        vec![
            "--tls-ca".into(),
            files.ca.clone().into(),
            "--tls-cert".into(),
            files.cert.clone().into(),
            "--tls-key".into(),
            files.key.clone().into(),
        ]
    }
}

/// Why TLS cannot be set up. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("TLS file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// A file is not the PEM it should be.
    #[error("TLS file {path}: {problem}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong (never the key).
        problem: String,
    },
    /// The key file is accessible by group or others.
    #[error(transparent)]
    Private(#[from] CredentialError),
    /// rustls refused the configuration (a key that does not match the
    /// certificate, an unusable CA).
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// The client-certificate verifier cannot be built from the CA.
    #[error("TLS client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// Making a key or certificate failed.
    #[error("issuing a certificate: {0}")]
    Issue(#[from] rcgen::Error),
    /// A file to be written exists already (never overwritten).
    #[error("{0} exists already: not overwriting it")]
    Exists(PathBuf),
}

/// A process's TLS: the client and server configurations built from one
/// set of [`TlsFiles`]. Cheap to clone.
#[derive(Clone)]
pub struct Tls {
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls { .. }")
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Tls {
    /// Loads the CA, the certificate chain and the key. The key file must
    /// be private to its owner ([`check_private`]); the key must match the
    /// certificate. Fails with what is wrong and the file's path.
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        check_private(&files.key)?;
        let ca = read_certs(&files.ca)?;
        let chain = read_certs(&files.cert)?;
        let key = read_key(&files.key)?;
        let mut roots = RootCertStore::empty();
        for c in ca {
            roots.add(c).map_err(|e| TlsError::Pem {
                path: files.ca.clone(),
                problem: format!("not a usable CA certificate: {e}"),
            })?;
        }
        let roots = Arc::new(roots);
        let client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots.clone())
            .with_client_auth_cert(chain.clone(), key.clone_key())?;
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider())
                .build()?;
        let server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)?;
        Ok(Self {
            client: Arc::new(client),
            server: Arc::new(server),
        })
    }

    /// Loads `files` if given: `None` is plaintext.
    pub fn load_optional(files: Option<&TlsFiles>) -> Result<Option<Self>, TlsError> {
        files.map(Self::load).transpose()
    }

    /// The configuration for connections this process makes.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.client.clone()
    }

    /// The configuration for connections this process accepts.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server.clone()
    }
}

fn pem_error(path: &Path) -> impl Fn(rustls::pki_types::pem::Error) -> TlsError + '_ {
    move |e| match e {
        rustls::pki_types::pem::Error::Io(source) => TlsError::Io {
            path: path.to_path_buf(),
            source,
        },
        other => TlsError::Pem {
            path: path.to_path_buf(),
            problem: format!("not PEM: {other}"),
        },
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem_error(path))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_error(path))?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_path_buf(),
            problem: "holds no certificate".into(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls::pki_types::pem::Error::Io(source) => TlsError::Io {
            path: path.to_path_buf(),
            source,
        },
        // Never echo what the file holds.
        _ => TlsError::Pem {
            path: path.to_path_buf(),
            problem: "holds no private key in PEM".into(),
        },
    })
}
