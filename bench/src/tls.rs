//! TLS of the bench's own clients (`local --tls`): set once when the
//! cluster starts, before any client connects; every client the bench
//! makes connects through [`client`] or [`control`] with it.

use std::net::SocketAddr;
use std::sync::OnceLock;

use ringfs_client::{Client, ClientOptions, ControlClient, Credential};
use ringfs_ops::tls::Tls;

static CLIENT_TLS: OnceLock<Tls> = OnceLock::new();

/// Makes every later client of this process use `tls`. Set at most once.
pub fn set(tls: Tls) {
    let _ = CLIENT_TLS.set(tls);
}

/// The clients' TLS, if the cluster uses it.
pub fn get() -> Option<&'static Tls> {
    CLIENT_TLS.get()
}

/// [`Client::connect`] with the process's TLS.
pub async fn client(control: SocketAddr, cred: &Credential) -> ringfs_client::Result<Client> {
    Client::connect_tls(&[control], cred, ClientOptions::default(), get().cloned()).await
}

/// [`ControlClient::connect`] with the process's TLS.
pub async fn control(
    control: SocketAddr,
    cred: &Credential,
) -> ringfs_client::Result<ControlClient> {
    ControlClient::connect_tls(control, cred, get()).await
}
