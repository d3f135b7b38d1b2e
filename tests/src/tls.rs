//! TLS for test clusters: a cluster CA in a test's directory and the
//! certificates it issues (`ringfs_ops::tls::certs`, as `ringfs admin
//! cert` does), with the flags that hand them to a server or the CLI.

use ringfs_ops::tls::certs::{self, Role};
use ringfs_ops::tls::{Tls, TlsFiles};
use std::path::{Path, PathBuf};

/// A cluster CA and the certificates issued from it, under `dir/name`.
pub struct Pki {
    ca_dir: PathBuf,
}

impl Pki {
    /// Creates a new CA in `dir/name` (a test may make two: a cluster's
    /// and a stranger's).
    pub fn new(dir: &Path, name: &str) -> Self {
        let ca_dir = dir.join(name);
        certs::create_ca(&ca_dir).expect("creating a CA");
        Self { ca_dir }
    }

    /// A server certificate (control replica or node) for 127.0.0.1.
    pub fn server(&self, name: &str) -> TlsFiles {
        self.issue(
            name,
            Role::Server,
            &["127.0.0.1".into(), "localhost".into()],
        )
    }

    /// A client certificate.
    pub fn client(&self, name: &str) -> TlsFiles {
        self.issue(name, Role::Client, &[])
    }

    fn issue(&self, name: &str, role: Role, hosts: &[String]) -> TlsFiles {
        certs::issue(&self.ca_dir, name, role, hosts, 1, &self.ca_dir)
            .unwrap_or_else(|e| panic!("issuing {name}: {e}"))
    }
}

/// `files` as `--tls-ca`, `--tls-cert`, `--tls-key` flags.
pub fn tls_flags(files: &TlsFiles) -> Vec<String> {
    ringfs_ops::tls::TlsFlags::args(files)
        .into_iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect()
}

/// `files` loaded, for a client in the test itself.
pub fn load(files: &TlsFiles) -> Tls {
    Tls::load(files).unwrap_or_else(|e| panic!("loading TLS files: {e}"))
}
