//! MQTT over WebSocket (spec 6): the broker and the client speak the same byte-stream protocol through
//! [`WsStream`], which turns binary WebSocket messages into an `AsyncRead + AsyncWrite` stream. A packet may
//! be split over messages and a message may hold several packets: the MQTT decoder does not care. Text
//! messages are a protocol violation [MQTT-6.0.0-1] and end the stream.

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

/// Subprotocols a client may ask for, in our order of preference ("mqttv3.1" is what 3.1 clients send).
pub const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// A WebSocket as a byte stream.
pub struct WsStream<S> {
    inner: WebSocketStream<S>,
    /// The rest of the binary message being read.
    pending: Bytes,
}

impl<S> WsStream<S> {
    pub fn new(inner: WebSocketStream<S>) -> Self {
        WsStream {
            inner,
            pending: Bytes::new(),
        }
    }
}

fn io_err(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        WsError::ConnectionClosed | WsError::AlreadyClosed => io::ErrorKind::BrokenPipe.into(),
        other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.inner).poll_next(cx)) {
                None | Some(Ok(Message::Close(_))) => return Poll::Ready(Ok(())),
                Some(Ok(Message::Binary(data))) => self.pending = data,
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text WebSocket message: MQTT needs binary messages [MQTT-6.0.0-1]",
                    )))
                }
                // Pings are answered by tungstenite on the next write or flush.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Err(e)) => return Poll::Ready(Err(io_err(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    /// Every write becomes one binary message (the broker writes a whole batch of packets at once).
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(Pin::new(&mut self.inner).poll_ready(cx)).map_err(io_err)?;
        Pin::new(&mut self.inner)
            .start_send(Message::Binary(Bytes::copy_from_slice(data)))
            .map_err(io_err)?;
        // Push it out now if the socket takes it; otherwise the caller's flush does.
        let _ = Pin::new(&mut self.inner).poll_flush(cx);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx).map_err(io_err)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx).map_err(io_err)
    }
}

/// The listener `path` that accepts every path (Mosquitto's WebSocket listeners do not look at it).
pub const ANY_PATH: &str = "*";

/// Frame and message limits: one MQTT packet plus framing, never more (never trust a length from the wire).
pub fn config(max_packet_size: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(max_packet_size + 1024))
        .max_frame_size(Some(max_packet_size + 1024))
}

/// The server handshake: the path must match (`*`: any path, as Mosquitto) and, if the client lists
/// subprotocols, one must be MQTT's.
// The callback's error type is tungstenite's HTTP response, as its `Callback` trait requires.
#[allow(clippy::result_large_err)]
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    path: &str,
    max_packet_size: usize,
) -> Result<WsStream<S>, WsError> {
    let callback = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        let refuse = |status: StatusCode, why: String| {
            let mut r = ErrorResponse::new(Some(why));
            *r.status_mut() = status;
            Err(r)
        };
        if path != ANY_PATH && req.uri().path() != path {
            return refuse(
                StatusCode::NOT_FOUND,
                format!("MQTT over WebSocket is served at {path}\n"),
            );
        }
        let offered: Vec<String> = req
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(',').map(|p| p.trim().to_string()))
            .collect();
        if !offered.is_empty() {
            match SUBPROTOCOLS.iter().find(|p| offered.iter().any(|o| o == *p)) {
                Some(p) => {
                    resp.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_static(p));
                }
                None => {
                    return refuse(
                        StatusCode::BAD_REQUEST,
                        format!("no MQTT subprotocol offered (want one of {SUBPROTOCOLS:?}, got {offered:?})\n"),
                    )
                }
            }
        }
        Ok(resp)
    };
    let ws = tokio_tungstenite::accept_hdr_async_with_config(
        stream,
        callback,
        Some(config(max_packet_size)),
    )
    .await?;
    Ok(WsStream::new(ws))
}

/// The client handshake to `ws://host:port/path` with the "mqtt" subprotocol.
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    host: &str,
    port: u16,
    path: &str,
    max_packet_size: usize,
) -> Result<WsStream<S>, WsError> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{host}:{port}{path}").into_client_request()?;
    req.headers_mut()
        .insert("sec-websocket-protocol", HeaderValue::from_static("mqtt"));
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(req, stream, Some(config(max_packet_size)))
            .await?;
    Ok(WsStream::new(ws))
}
