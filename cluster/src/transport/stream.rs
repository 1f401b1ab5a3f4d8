//! A peer link's byte stream: plain TCP, or mutual TLS when the cluster has a certificate authority of its
//! own ([`PeerTls`]). The stream is split at once into a reading and a writing half, which the handshake and
//! the lane then use.

use super::handshake::{HandshakeError, HANDSHAKE_TIMEOUT};
use rustls::pki_types::ServerName;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Mutual TLS on peer links: every node presents a certificate of the cluster's CA and accepts only peers
/// that do. The dialer checks the acceptor's certificate against the host of the peer address it dials.
#[derive(Clone, Debug)]
pub struct PeerTls {
    /// Presents this node's certificate and requires a client certificate of the cluster's CA.
    pub server: Arc<rustls::ServerConfig>,
    /// Presents this node's certificate and trusts the cluster's CA.
    pub client: Arc<rustls::ClientConfig>,
}

pub type Reader = Box<dyn AsyncRead + Send + Unpin>;
pub type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// Both halves of one link.
pub struct Halves {
    pub rd: Reader,
    pub wr: Writer,
}

fn plain(s: TcpStream) -> Halves {
    let (rd, wr) = s.into_split();
    Halves {
        rd: Box::new(rd),
        wr: Box::new(wr),
    }
}

fn split<S: AsyncRead + AsyncWrite + Send + 'static>(s: S) -> Halves {
    let (rd, wr) = tokio::io::split(s);
    Halves {
        rd: Box::new(rd),
        wr: Box::new(wr),
    }
}

/// The acceptor's side: TLS first when configured.
pub async fn accept(s: TcpStream, tls: Option<&PeerTls>) -> Result<Halves, HandshakeError> {
    let Some(tls) = tls else {
        return Ok(plain(s));
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server.clone());
    let s = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(s))
        .await
        .map_err(|_| HandshakeError::Timeout)?
        .map_err(HandshakeError::Tls)?;
    Ok(split(s))
}

/// The dialer's side: TLS first when configured, checking the acceptor against the host of `addr`.
pub async fn dial(
    s: TcpStream,
    addr: &str,
    tls: Option<&PeerTls>,
) -> Result<Halves, HandshakeError> {
    let Some(tls) = tls else {
        return Ok(plain(s));
    };
    let host = addr
        .rsplit_once(':')
        .map_or(addr, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let name = ServerName::try_from(host.to_string())
        .map_err(|_| HandshakeError::ServerName(host.to_string()))?;
    let connector = tokio_rustls::TlsConnector::from(tls.client.clone());
    let s = tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, s))
        .await
        .map_err(|_| HandshakeError::Timeout)?
        .map_err(HandshakeError::Tls)?;
    Ok(split(s))
}
