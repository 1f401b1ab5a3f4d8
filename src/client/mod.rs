//! An async MQTT client (3.1, 3.1.1 and 5.0) on tokio, used by the CLI, the tests, the load generator and
//! the chaos suite.
//!
//! [`Client::connect`] opens the connection and spawns one task that owns the socket: it batches queued
//! packets into one write, keeps the connection alive with PINGREQ, runs the QoS handshakes through the
//! pure [`state::ClientSession`], and reconnects with backoff when asked to, resending what was not yet
//! acknowledged. Handles are cheap to clone; incoming messages arrive on [`Events`].

mod event_loop;
mod options;
pub mod state;
pub mod transport;

pub use options::{Backoff, ClientOptions};
pub use transport::{BoxStream, Connector, TcpConnector};

use crate::protocol::{
    ConnAck, DecodeError, Disconnect, EncodeError, Properties, Publish, QoS, ReasonCode, SubAck,
    SubscribeFilter, SubscriptionOptions, UnsubAck,
};
use bytes::Bytes;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

/// Commands queued between handles and the connection task. Bounded, so a publisher that outruns its
/// socket waits here instead of growing memory.
const COMMAND_QUEUE: usize = 256;
/// Received messages buffered for the application before the task stops reading the socket.
const EVENT_QUEUE: usize = 1024;

/// Why a client operation failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ClientError {
    #[error("network error: {0}")]
    Io(String),
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("connection refused: {0}")]
    Refused(ReasonCode),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("malformed packet from the server: {0}")]
    Decode(#[from] DecodeError),
    #[error("cannot encode packet: {0}")]
    Encode(#[from] EncodeError),
    #[error("rejected by the server: {0}")]
    Rejected(ReasonCode),
    #[error("packet of {size} bytes exceeds the server's maximum packet size of {max}")]
    TooLarge { size: usize, max: usize },
    #[error("QoS {0:?} exceeds the server's Maximum QoS")]
    QoSNotSupported(QoS),
    #[error("the server does not support retained messages")]
    RetainNotSupported,
    #[error("disconnected by the server: {0}")]
    ServerDisconnect(ReasonCode),
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    #[error("the client is closed")]
    Closed,
    #[error("invalid topic {topic:?}: {error}")]
    InvalidTopic {
        topic: String,
        error: crate::protocol::topic::TopicError,
    },
}

impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> Self {
        ClientError::Io(e.to_string())
    }
}

/// What the connection task reports to the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An application message from the broker (topic aliases already resolved).
    Message(Publish),
    /// The client reconnected; unacknowledged publishes have been resent.
    Reconnected(ConnAck),
    /// The connection was lost; with reconnect configured, the client is retrying.
    Disconnected(ClientError),
}

pub(crate) type PubDone = oneshot::Sender<Result<ReasonCode, ClientError>>;

pub(crate) enum Command {
    Publish {
        publish: Publish,
        done: PubDone,
    },
    Subscribe {
        filters: Vec<SubscribeFilter>,
        properties: Properties,
        done: oneshot::Sender<Result<SubAck, ClientError>>,
    },
    Unsubscribe {
        filters: Vec<String>,
        properties: Properties,
        done: oneshot::Sender<Result<UnsubAck, ClientError>>,
    },
    Disconnect {
        disconnect: Disconnect,
        done: oneshot::Sender<()>,
    },
    Abort {
        done: oneshot::Sender<()>,
    },
}

/// A handle to a connected client. Clone it freely; the connection closes when the last handle is dropped
/// or [`Client::disconnect`] is called.
#[derive(Clone)]
pub struct Client {
    commands: mpsc::Sender<Command>,
}

/// The stream of [`Event`]s. If it is not read, the client stops reading from the socket (backpressure).
pub struct Events {
    rx: mpsc::Receiver<Event>,
}

impl Events {
    /// The next event; `None` once the client has stopped for good.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// The next application message, skipping connection events; `None` once the client has stopped.
    pub async fn next_message(&mut self) -> Option<Publish> {
        loop {
            match self.rx.recv().await? {
                Event::Message(m) => return Some(m),
                Event::Reconnected(_) | Event::Disconnected(_) => continue,
            }
        }
    }
}

/// Completes when a publish is acknowledged (QoS 1: PUBACK, QoS 2: PUBCOMP) or written (QoS 0).
pub struct PublishToken {
    rx: oneshot::Receiver<Result<ReasonCode, ClientError>>,
}

impl PublishToken {
    /// Waits for the handshake; the reason is Success or another code below 0x80 (e.g. No matching
    /// subscribers).
    pub async fn wait(self) -> Result<ReasonCode, ClientError> {
        self.rx.await.unwrap_or(Err(ClientError::Closed))
    }
}

impl Client {
    /// Connects (TCP, CONNECT, CONNACK) and starts the connection task. A refused CONNACK is an error here,
    /// with the server's reason code.
    pub async fn connect(options: ClientOptions) -> Result<(Client, Events, ConnAck), ClientError> {
        let opened = event_loop::open(&options).await?;
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
        let (ev_tx, ev_rx) = mpsc::channel(EVENT_QUEUE);
        let connack = opened.connack.clone();
        tokio::spawn(event_loop::EventLoop::new(options, cmd_rx, ev_tx).run(opened));
        Ok((Client { commands: cmd_tx }, Events { rx: ev_rx }, connack))
    }

    async fn send(&self, cmd: Command) -> Result<(), ClientError> {
        self.commands
            .send(cmd)
            .await
            .map_err(|_| ClientError::Closed)
    }

    /// Queues a publish and returns at once with a token for its acknowledgement. Waits only when the
    /// command queue is full (the in-flight window or the socket is the bottleneck).
    pub async fn publish_start(&self, publish: Publish) -> Result<PublishToken, ClientError> {
        let (done, rx) = oneshot::channel();
        self.send(Command::Publish { publish, done }).await?;
        Ok(PublishToken { rx })
    }

    /// Publishes and waits for the QoS handshake to finish.
    pub async fn publish(
        &self,
        topic: impl Into<String>,
        qos: QoS,
        retain: bool,
        payload: impl Into<Bytes>,
    ) -> Result<ReasonCode, ClientError> {
        let publish = Publish {
            topic: topic.into(),
            qos,
            retain,
            payload: payload.into(),
            ..Publish::default()
        };
        self.publish_start(publish).await?.wait().await
    }

    /// Publishes a fully built message (properties included) and waits for its handshake.
    pub async fn publish_message(&self, publish: Publish) -> Result<ReasonCode, ClientError> {
        self.publish_start(publish).await?.wait().await
    }

    /// Subscribes to several filters with options and properties (e.g. a subscription identifier).
    pub async fn subscribe_with(
        &self,
        filters: Vec<SubscribeFilter>,
        properties: Properties,
    ) -> Result<SubAck, ClientError> {
        let (done, rx) = oneshot::channel();
        self.send(Command::Subscribe {
            filters,
            properties,
            done,
        })
        .await?;
        rx.await.unwrap_or(Err(ClientError::Closed))
    }

    /// Subscribes to one filter at a QoS; fails if the server refuses it.
    pub async fn subscribe(
        &self,
        filter: impl Into<String>,
        qos: QoS,
    ) -> Result<SubAck, ClientError> {
        let options = SubscriptionOptions {
            qos,
            ..SubscriptionOptions::default()
        };
        let ack = self
            .subscribe_with(
                vec![SubscribeFilter {
                    filter: filter.into(),
                    options,
                }],
                Properties::default(),
            )
            .await?;
        match ack.reasons.first() {
            Some(r) if r.is_error() => Err(ClientError::Rejected(*r)),
            _ => Ok(ack),
        }
    }

    /// Unsubscribes from filters.
    pub async fn unsubscribe(&self, filters: Vec<String>) -> Result<UnsubAck, ClientError> {
        let (done, rx) = oneshot::channel();
        self.send(Command::Unsubscribe {
            filters,
            properties: Properties::default(),
            done,
        })
        .await?;
        rx.await.unwrap_or(Err(ClientError::Closed))
    }

    /// Sends DISCONNECT (normal disconnection, so no Will) after everything queued before it, and closes.
    pub async fn disconnect(&self) -> Result<(), ClientError> {
        self.disconnect_with(Disconnect::default()).await
    }

    /// Drops the connection without DISCONNECT, as a network failure would (the broker publishes the Will).
    /// The client does not reconnect.
    pub async fn abort(&self) -> Result<(), ClientError> {
        let (done, rx) = oneshot::channel();
        self.send(Command::Abort { done }).await?;
        rx.await.map_err(|_| ClientError::Closed)
    }

    /// Sends a DISCONNECT with this reason and properties (v5: e.g. 0x04 to have the Will published, or a
    /// new Session Expiry Interval) and closes.
    pub async fn disconnect_with(&self, disconnect: Disconnect) -> Result<(), ClientError> {
        let (done, rx) = oneshot::channel();
        self.send(Command::Disconnect { disconnect, done }).await?;
        rx.await.map_err(|_| ClientError::Closed)
    }
}
