//! What every workload client shares: where the cluster is, the recorder, connection numbering, the
//! outcome of a client error, and a connector that moves to the next node on every (re)connect.

use crate::history::{Event, Outcome, Recorder, Via};
use cicada::client::transport::{BoxStream, ConnectFuture, Connector};
use cicada::client::{Client, ClientError, ClientOptions, Events};
use cicada::protocol::{ConnAck, ReasonCode};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How long an operation may take before it is recorded as timed out.
pub const OP_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the workload's clients connect.
#[derive(Debug, Clone)]
pub struct Targets {
    /// Each node's plain MQTT listener, node 1 first.
    pub nodes: Vec<SocketAddr>,
    /// HAProxy's MQTT frontend (client-id affinity).
    pub haproxy: SocketAddr,
}

impl Targets {
    pub fn addr(&self, via: Via) -> SocketAddr {
        match via {
            Via::Node(n) => self.nodes[usize::from(n) - 1],
            Via::Haproxy => self.haproxy,
        }
    }

    /// Node `i` (0-based, wrapping) as a `Via`.
    pub fn node(&self, i: usize) -> Via {
        Via::Node((i % self.nodes.len()) as u8 + 1)
    }
}

/// The state every workload task gets.
#[derive(Clone)]
pub struct Ctx {
    pub targets: Targets,
    pub rec: Recorder,
    conns: Arc<AtomicU64>,
    /// Turns true when the task must stop.
    pub stop: watch::Receiver<bool>,
    /// Turns true when the run's last phase begins: publishers stop, subscribers stay online.
    pub draining: watch::Receiver<bool>,
}

impl Ctx {
    pub fn new(
        targets: Targets,
        rec: Recorder,
        stop: watch::Receiver<bool>,
        draining: watch::Receiver<bool>,
    ) -> Ctx {
        Ctx {
            targets,
            rec,
            conns: Arc::new(AtomicU64::new(0)),
            stop,
            draining,
        }
    }

    /// True once publishing must end (draining or stopping).
    pub fn quiet(&self) -> bool {
        *self.draining.borrow() || self.stopped()
    }

    /// A new connection number, unique in the run.
    pub fn next_conn(&self) -> u64 {
        self.conns.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// Waits `d`, or less if the task is told to stop; true when it was told to stop.
    pub async fn pause(&self, d: Duration) -> bool {
        let mut stop = self.stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(d) => self.stopped(),
            _ = stop.wait_for(|s| *s) => true,
        }
    }

    /// Connects `options` via `via` (the options' connector decides the address) and records the
    /// outcome. Returns the connection number with the client.
    pub async fn connect(
        &self,
        options: ClientOptions,
        via: Via,
    ) -> Option<(u64, Client, Events, ConnAck)> {
        let conn = self.next_conn();
        let client = options.client_id.clone();
        let clean_start = options.clean_start;
        let sent = self.rec.now();
        let result = tokio::time::timeout(OP_TIMEOUT, Client::connect(options)).await;
        let (outcome, ok) = match result {
            Ok(Ok((c, ev, ack))) => (Outcome::Ok, Some((c, ev, ack))),
            Ok(Err(e)) => (outcome_of(&e), None),
            Err(_) => (Outcome::Timeout, None),
        };
        self.rec.record(Event::Connect {
            client,
            conn,
            via,
            clean_start,
            sent,
            outcome,
            session_present: ok.as_ref().map(|(_, _, a)| a.session_present),
        });
        ok.map(|(c, ev, ack)| (conn, c, ev, ack))
    }
}

/// The recorded outcome of a failed client operation.
pub fn outcome_of(e: &ClientError) -> Outcome {
    match e {
        ClientError::Refused(c) | ClientError::Rejected(c) => Outcome::Refused { code: c.0 },
        ClientError::Timeout(_) => Outcome::Timeout,
        other => Outcome::Failed {
            reason: other.to_string(),
        },
    }
}

/// The outcome of an acknowledgement's reason code.
pub fn outcome_of_reason(r: ReasonCode) -> Outcome {
    if r.is_error() {
        Outcome::Refused { code: r.0 }
    } else {
        Outcome::Ok
    }
}

/// The DISCONNECT reason of a lost connection, if the server sent one.
pub fn disconnect_code(e: &ClientError) -> Option<u8> {
    match e {
        ClientError::ServerDisconnect(c) => Some(c.0),
        _ => None,
    }
}

/// Connects to each of `targets` in turn, one per (re)connect, and remembers which it used last, so a
/// client that reconnects by itself moves to another node (and takes its session over there).
pub struct RotatingConnector {
    targets: Vec<(Via, SocketAddr)>,
    next: AtomicUsize,
    last: AtomicUsize,
}

impl RotatingConnector {
    pub fn new(targets: Vec<(Via, SocketAddr)>, first: usize) -> Arc<RotatingConnector> {
        Arc::new(RotatingConnector {
            targets,
            next: AtomicUsize::new(first),
            last: AtomicUsize::new(first),
        })
    }

    /// Where the last connection went.
    pub fn last(&self) -> Via {
        self.targets[self.last.load(Ordering::Relaxed) % self.targets.len()].0
    }
}

impl Connector for RotatingConnector {
    fn connect<'a>(&'a self, _host: &'a str, _port: u16) -> ConnectFuture<'a> {
        Box::pin(async move {
            let i = self.next.fetch_add(1, Ordering::Relaxed) % self.targets.len();
            self.last.store(i, Ordering::Relaxed);
            let stream = tokio::net::TcpStream::connect(self.targets[i].1).await?;
            stream.set_nodelay(true)?;
            Ok(Box::new(stream) as BoxStream)
        })
    }
}

/// `publisher:seq`, the payload of every workload message.
pub fn payload(publisher: &str, seq: u64) -> String {
    format!("{publisher}:{seq}")
}

/// The publisher and sequence number of a workload payload.
pub fn parse_payload(payload: &[u8]) -> Option<(String, u64)> {
    let s = std::str::from_utf8(payload).ok()?;
    let (p, seq) = s.rsplit_once(':')?;
    Some((p.to_string(), seq.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip() {
        assert_eq!(
            parse_payload(payload("pub-1", 17).as_bytes()),
            Some(("pub-1".into(), 17))
        );
        assert_eq!(parse_payload(b"junk"), None);
        assert_eq!(parse_payload(b"a:b"), None);
    }
}
