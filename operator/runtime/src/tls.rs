//! The server side of a TLS connection, as every ferrokube listener that speaks TLS starts
//! one (the kubelet's API, the Ingress controller's HTTPS port).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How long a client gets to finish its handshake: a peer that connects and then stalls
/// must not hold a task and a socket for ever.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Completes the server side of the handshake on `stream`, or gives `None` when it fails or
/// takes longer than [`HANDSHAKE_TIMEOUT`]. A failed handshake is the client's problem (a
/// port scan, an untrusted certificate), so it is logged at debug level only, naming
/// `server` and `peer`.
pub async fn accept<IO>(
    acceptor: &TlsAcceptor,
    stream: IO,
    peer: SocketAddr,
    server: &str,
) -> Option<TlsStream<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            tracing::debug!(server, %peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(server, %peer, "TLS handshake timed out");
            None
        }
    }
}
