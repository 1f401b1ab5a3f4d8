//! Pluggable transports: the client talks to any byte stream a [`Connector`] opens (TCP and WebSocket; TLS
//! WebSocket connectors plug in the same way).

use std::future::Future;
use std::io;
use std::pin::Pin;
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
