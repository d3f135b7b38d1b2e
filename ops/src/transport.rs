//! The one place ringfs connections are made and accepted, in plaintext or
//! TLS ([`crate::tls`]): TCP streams on tokio (the control RPC, the
//! client's data plane) and any futures-io stream (the storage node's
//! glommio sockets), and the Cap'n Proto RPC system over a tokio stream.
//!
//! TLS is tokio-rustls on tokio and futures-rustls on futures-io: both are
//! the same rustls state machine behind the two async I/O traits, so a
//! node's glommio socket gets TLS without a tokio runtime. Either side
//! that is configured for TLS speaks nothing else: a plaintext peer fails
//! the handshake at its first bytes and its connection is closed.

use std::io;
use std::time::Duration;

use capnp_rpc::{rpc_twoparty_capnp, twoparty, RpcSystem};
use futures::{AsyncRead, AsyncWrite};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};

use crate::tls::Tls;

/// How long an accepted connection's TLS handshake may take: a peer that
/// connects and sends nothing holds a task no longer than this.
pub const HANDSHAKE_WITHIN: Duration = Duration::from_secs(10);

/// RPC read and write buffers, bytes: capnp-futures reads a message in
/// several small `read_exact` calls and writes it in several `write_all`
/// calls, then flushes; buffering makes that about one syscall (one TLS
/// record) each.
const RPC_BUFFER: usize = 64 * 1024;

/// A tokio connection, plaintext or TLS.
pub type Stream = tokio_util::either::Either<TcpStream, tokio_rustls::TlsStream<TcpStream>>;

/// A futures-io connection (a storage node's glommio socket), plaintext or
/// TLS.
pub type IoStream<IO> = futures::future::Either<IO, futures_rustls::TlsStream<IO>>;

/// Why a connection could not be made. Each says the address.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Nothing answered in time.
    #[error("connecting to {addr} timed out after {within:?}")]
    Timeout {
        /// The address dialled.
        addr: String,
        /// The time allowed.
        within: Duration,
    },
    /// The TCP connection failed (refused, unreachable).
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address dialled.
        addr: String,
        /// The failure.
        #[source]
        source: io::Error,
    },
    /// The address's host cannot be checked against a certificate.
    #[error("{addr}: its host is neither an IP address nor a DNS name a certificate can name")]
    BadName {
        /// The address dialled.
        addr: String,
    },
    /// The TLS handshake failed: the server is not TLS, or its certificate
    /// is not from the cluster CA or not for this host, or it refused ours.
    #[error("TLS handshake with {addr} failed: {source}")]
    Handshake {
        /// The address dialled.
        addr: String,
        /// What rustls said.
        #[source]
        source: io::Error,
    },
}

impl ConnectError {
    /// Whether the peer may answer later (a timeout or a refused TCP
    /// connection), as opposed to a TLS or name problem that retrying
    /// will not fix.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Timeout { .. } | Self::Connect { .. })
    }
}

/// The host of `addr` (`host:port`, `[v6]:port`), as TLS checks it
/// against the server certificate's names.
fn server_name(addr: &str) -> Result<ServerName<'static>, ConnectError> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).map_err(|_| ConnectError::BadName {
        addr: addr.to_string(),
    })
}

/// Connects to `addr` (`host:port`) within `within`, TCP and (with `tls`)
/// the handshake, which verifies the server against the cluster CA and the
/// host dialled and presents this process's certificate.
pub async fn connect(
    addr: &str,
    within: Duration,
    tls: Option<&Tls>,
) -> Result<Stream, ConnectError> {
    let timeout = || ConnectError::Timeout {
        addr: addr.to_string(),
        within,
    };
    let name = tls.map(|_| server_name(addr)).transpose()?;
    tokio::time::timeout(within, async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|source| ConnectError::Connect {
                addr: addr.to_string(),
                source,
            })?;
        let _ = stream.set_nodelay(true);
        let (Some(tls), Some(name)) = (tls, name) else {
            return Ok(Stream::Left(stream));
        };
        let s = tokio_rustls::TlsConnector::from(tls.client_config())
            .connect(name, stream)
            .await
            .map_err(|source| ConnectError::Handshake {
                addr: addr.to_string(),
                source,
            })?;
        Ok(Stream::Right(s.into()))
    })
    .await
    .map_err(|_| timeout())?
}

/// Takes an accepted connection: with `tls`, its handshake (within
/// [`HANDSHAKE_WITHIN`]), which requires a client certificate from the
/// cluster CA. A peer that is not TLS, or not trusted, gets an error (and
/// its connection closes when the stream is dropped).
pub async fn accept(stream: TcpStream, tls: Option<&Tls>) -> io::Result<Stream> {
    let _ = stream.set_nodelay(true);
    let Some(tls) = tls else {
        return Ok(Stream::Left(stream));
    };
    let s = tokio::time::timeout(
        HANDSHAKE_WITHIN,
        tokio_rustls::TlsAcceptor::from(tls.server_config()).accept(stream),
    )
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
    Ok(Stream::Right(s.into()))
}

/// Connects over a futures-io stream `io` already connected to `addr`:
/// with `tls`, the handshake as in [`connect`]. The caller bounds the time
/// (no timer here: the stream's runtime has its own).
pub async fn connect_io<IO>(
    io: IO,
    addr: &str,
    tls: Option<&Tls>,
) -> Result<IoStream<IO>, ConnectError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let Some(tls) = tls else {
        return Ok(IoStream::Left(io));
    };
    let s = futures_rustls::TlsConnector::from(tls.client_config())
        .connect(server_name(addr)?, io)
        .await
        .map_err(|source| ConnectError::Handshake {
            addr: addr.to_string(),
            source,
        })?;
    Ok(IoStream::Right(s.into()))
}

/// Takes an accepted futures-io stream: with `tls`, its handshake as in
/// [`accept`]. The caller bounds the time ([`HANDSHAKE_WITHIN`]).
pub async fn accept_io<IO>(io: IO, tls: Option<&Tls>) -> io::Result<IoStream<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let Some(tls) = tls else {
        return Ok(IoStream::Left(io));
    };
    let s = futures_rustls::TlsAcceptor::from(tls.server_config())
        .accept(io)
        .await?;
    Ok(IoStream::Right(s.into()))
}

fn network(stream: Stream, side: rpc_twoparty_capnp::Side) -> twoparty::VatNetwork<impl AsyncRead> {
    let (reader, writer) = tokio::io::split(stream);
    twoparty::VatNetwork::new(
        tokio::io::BufReader::with_capacity(RPC_BUFFER, reader).compat(),
        tokio::io::BufWriter::with_capacity(RPC_BUFFER, writer).compat_write(),
        side,
        Default::default(),
    )
}

/// The Cap'n Proto RPC client side of `stream`: the server's bootstrap
/// capability, and the local task that runs the connection until it ends
/// or is aborted. Call inside a tokio `LocalSet`.
pub fn rpc_client<C: capnp::capability::FromClientHook>(
    stream: Stream,
) -> (C, tokio::task::JoinHandle<()>) {
    let mut rpc = RpcSystem::new(
        Box::new(network(stream, rpc_twoparty_capnp::Side::Client)),
        None,
    );
    let bootstrap: C = rpc.bootstrap(rpc_twoparty_capnp::Side::Server);
    let task = tokio::task::spawn_local(async move {
        let _ = rpc.await;
    });
    (bootstrap, task)
}

/// The Cap'n Proto RPC server side of `stream`, offering `bootstrap`: runs
/// until the connection ends (with the reason it ended).
pub async fn rpc_server(
    stream: Stream,
    bootstrap: capnp::capability::Client,
) -> Result<(), capnp::Error> {
    RpcSystem::new(
        Box::new(network(stream, rpc_twoparty_capnp::Side::Server)),
        Some(bootstrap),
    )
    .await
}
