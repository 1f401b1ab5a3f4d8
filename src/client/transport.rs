//! Pluggable transports: the client talks to any byte stream a [`Connector`] opens (TCP today; TLS and
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
