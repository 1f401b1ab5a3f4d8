//! Pluggable transports: the client talks to any byte stream a [`Connector`] opens: TCP, TLS (rustls) and
//! WebSocket.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};

/// A bidirectional byte stream the client can run MQTT over.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// A boxed stream, as returned by connectors.
pub type BoxStream = Box<dyn Stream>;

/// The future a connector returns.
pub type ConnectFuture<'a> = Pin<Box<dyn Future<Output = io::Result<BoxStream>> + Send + 'a>>;

/// Opens a new stream to the broker; called for the first connection and for every reconnect.
pub trait Connector: Send + Sync + 'static {
    fn connect<'a>(&'a self, host: &'a str, port: u16) -> ConnectFuture<'a>;
}

/// Plain TCP with Nagle disabled (MQTT packets are small and latency matters more than segment count).
#[derive(Debug, Default, Clone, Copy)]
pub struct TcpConnector;

impl Connector for TcpConnector {
    fn connect<'a>(&'a self, host: &'a str, port: u16) -> ConnectFuture<'a> {
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect((host, port)).await?;
            stream.set_nodelay(true)?;
            Ok(Box::new(stream) as BoxStream)
        })
    }
}

/// MQTT over TLS 1.2 or 1.3 (rustls, ring provider): the broker's certificate must chain to the configured CA
/// certificates and name the host connected to (a DNS name or an IP address in its SANs).
#[derive(Debug, Clone)]
pub struct TlsConnector {
    pub config: Arc<rustls::ClientConfig>,
}

impl TlsConnector {
    /// From PEM files: the CA certificates that may sign the broker's certificate and, for mutual TLS, the
    /// client's certificate chain and key. Errors name the file.
    pub fn from_files(ca: &Path, client: Option<(&Path, &Path)>) -> Result<TlsConnector, String> {
        use crate::broker::tls::{certs, private_key, roots};
        let roots = roots(ca).map_err(|e| e.to_string())?;
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
        let config = match client {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = certs(cert).map_err(|e| e.to_string())?;
                let key = private_key(key).map_err(|e| e.to_string())?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("{}: {e}", cert.display()))?
            }
        };
        Ok(TlsConnector {
            config: Arc::new(config),
        })
    }
}

impl Connector for TlsConnector {
    fn connect<'a>(&'a self, host: &'a str, port: u16) -> ConnectFuture<'a> {
        Box::pin(async move {
            let name = rustls_pki_types::ServerName::try_from(host.to_string()).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{host}: not a TLS server name: {e}"),
                )
            })?;
            let tcp = tokio::net::TcpStream::connect((host, port)).await?;
            tcp.set_nodelay(true)?;
            let tls = tokio_rustls::TlsConnector::from(self.config.clone())
                .connect(name, tcp)
                .await?;
            Ok(Box::new(tls) as BoxStream)
        })
    }
}

/// MQTT over WebSocket (`ws://host:port/path`, subprotocol "mqtt").
#[derive(Debug, Clone)]
pub struct WsConnector {
    pub path: String,
}

impl Connector for WsConnector {
    fn connect<'a>(&'a self, host: &'a str, port: u16) -> ConnectFuture<'a> {
        Box::pin(async move {
            let tcp = tokio::net::TcpStream::connect((host, port)).await?;
            tcp.set_nodelay(true)?;
            let ws = crate::ws::connect(tcp, host, port, &self.path, 1 << 28)
                .await
                .map_err(|e| io::Error::new(io::ErrorKind::ConnectionRefused, e.to_string()))?;
            Ok(Box::new(ws) as BoxStream)
        })
    }
}
