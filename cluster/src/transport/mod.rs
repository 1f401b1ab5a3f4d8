//! Peer links over TCP. Each pair of nodes keeps three connections, one per [`Lane`]: raft messages, opaque
//! application frames, and snapshot transfers ([`crate::snapshot`]), so neither a large application frame
//! nor a snapshot chunk ever delays a heartbeat. The lower
//! node id dials, the higher accepts; the handshake ([`handshake`]) checks the cluster id, the node id and,
//! when one is configured, proves a shared cluster secret in both directions.
//!
//! Raft lane: a bounded queue; when a peer is away, excess messages are dropped (raft resends) and the node is
//! told the peer is unreachable. Application lane: bounded on both ends with back-pressure the caller sees
//! ([`Transport::send_app`] awaits room, [`Transport::try_send_app`] says `Full`); the receiving end stops
//! reading while its consumer is behind, never drops.
//!
//! A dead peer is noticed within `peer_timeout`: every link sends a ping when idle for a third of it and drops
//! a connection that stays silent for all of it; TCP keepalive covers a peer whose host vanished.

pub mod handshake;
mod stream;

use crate::metrics::Metrics;
use crate::snapshot::Snapshots;
use crate::view::Peers;
use bytes::{Bytes, BytesMut};
use handshake::{
    frame, read_frame, read_handshake, HandshakeError, Hello, KIND_APP, KIND_AUTH, KIND_HELLO,
    KIND_PING, KIND_RAFT,
};
pub use handshake::{Lane, Secret};
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use stream::Halves;
pub use stream::PeerTls;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Default largest frame: an entry of the largest MQTT message with room around it.
pub const MAX_FRAME: usize = 256 << 20;
const RAFT_QUEUE: usize = 4096;
/// A forwarded proposal queued longer than this is not sent: its proposer may have given up on it (it
/// waits `propose_timeout`, 5 s by default; this stays well below). Other raft messages go however late
/// (dropping them gains nothing: raft would only have to resend).
const RAFT_STALE: Duration = Duration::from_secs(1);
const APP_QUEUE: usize = 256;
/// Snapshot frames queued per peer (each at most a chunk): the stream waits for room.
const SNAP_QUEUE: usize = 4;
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Frames queued on a lane are written together up to this many bytes.
const WRITE_BATCH: usize = 1 << 20;

/// What arrives from peers on the raft lane.
pub trait Inbound: Send + Sync + 'static {
    fn raft(&self, message: Message);
    /// The link to `peer` went down or could not be made.
    fn unreachable(&self, peer: u64);
}

/// How this node's links behave.
#[derive(Clone)]
pub struct Options {
    pub me: u64,
    pub cluster_id: String,
    pub advertise: String,
    /// Shared cluster secret every link proves (HMAC-SHA256 over both nonces); `None`: no proof.
    pub secret: Option<Secret>,
    /// Largest frame accepted after the handshake.
    pub max_frame: usize,
    /// A link silent this long is dropped (pings keep a healthy idle link talking).
    pub peer_timeout: Duration,
    /// Mutual TLS on every peer link (`None`: plain TCP).
    pub tls: Option<PeerTls>,
}

/// Why an application frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AppSendError {
    #[error("no link to node {0}")]
    UnknownPeer(u64),
    #[error("the application lane to node {0} is full")]
    Full(u64),
    #[error("the link to node {0} is closed")]
    Closed(u64),
}

struct Peer {
    raft: mpsc::Sender<(Instant, Message)>,
    app: mpsc::Sender<Bytes>,
    snap: mpsc::Sender<(u8, Bytes)>,
    accepted: [mpsc::Sender<Halves>; 3],
    tasks: [tokio::task::JoinHandle<()>; 3],
}

struct Inner {
    opts: Options,
    peers: Mutex<HashMap<u64, Peer>>,
    inbound: Arc<dyn Inbound>,
    app_in: mpsc::Sender<(u64, Bytes)>,
    snapshots: Arc<Snapshots>,
    metrics: Metrics,
    acceptor: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Peers whose application lane is connected now.
    app_up: Mutex<std::collections::HashSet<u64>>,
}

/// The node's peer links.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

/// A transport reference that does not keep it alive (held by what the transport itself holds).
pub(crate) struct WeakTransport(std::sync::Weak<Inner>);

impl WeakTransport {
    pub(crate) fn upgrade(&self) -> Option<Transport> {
        self.0.upgrade().map(|inner| Transport { inner })
    }
}

enum Queue {
    Raft(mpsc::Receiver<(Instant, Message)>),
    App(mpsc::Receiver<Bytes>),
    Snap(mpsc::Receiver<(u8, Bytes)>),
}

impl Queue {
    /// Waits for the next item and adds it, with whatever else is queued, to `out`; how many frames it added
    /// (`None`: closed).
    async fn next_batch(&mut self, out: &mut BytesMut) -> Option<usize> {
        match self {
            Queue::Raft(rx) => {
                let mut msg = rx.recv().await?;
                let mut n = 0;
                loop {
                    let (queued, m) = &msg;
                    if m.get_msg_type() == MessageType::MsgPropose && queued.elapsed() > RAFT_STALE
                    {
                        // Queued while the peer was away: raft has resent what still matters, and a
                        // proposal forwarded to a leader long gone must not reach whoever leads now, long
                        // after its proposer gave up on it (found by cicada-chaos: a retained value
                        // failed to its publisher was applied 9 s later, over newer ones).
                        tracing::debug!(msg_type = ?m.get_msg_type(), to = m.to, "stale raft message dropped");
                    } else {
                        match m.write_to_bytes() {
                            Ok(b) => {
                                frame(KIND_RAFT, &b, out);
                                n += 1;
                            }
                            Err(e) => tracing::error!(error = %e, "cannot encode a raft message"),
                        }
                    }
                    if out.len() >= WRITE_BATCH {
                        return Some(n);
                    }
                    match rx.try_recv() {
                        Ok(m) => msg = m,
                        Err(_) => return Some(n),
                    }
                }
            }
            Queue::App(rx) => {
                let first = rx.recv().await?;
                frame(KIND_APP, &first, out);
                let mut n = 1;
                while out.len() < WRITE_BATCH {
                    match rx.try_recv() {
                        Ok(a) => {
                            frame(KIND_APP, &a, out);
                            n += 1;
                        }
                        Err(_) => break,
                    }
                }
                Some(n)
            }
            Queue::Snap(rx) => {
                let (kind, b) = rx.recv().await?;
                frame(kind, &b, out);
                Some(1)
            }
        }
    }
}

/// Aborts the task when dropped: a lane task aborted (a removed peer, shutdown) takes its reader with it.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn keepalive(stream: &TcpStream, timeout: Duration) {
    let _ = stream.set_nodelay(true);
    let idle = (timeout / 2).max(Duration::from_secs(1));
    let ka = socket2::TcpKeepalive::new()
        .with_time(idle)
        .with_interval(Duration::from_secs(1))
        .with_retries(3);
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&ka) {
        tracing::debug!(error = %e, "TCP keepalive not set");
    }
}

impl Transport {
    /// Listens on `listener` and links to `peers` (this node's own id is skipped). Application frames from
    /// peers go to `app_in`.
    pub fn start(
        opts: Options,
        listener: TcpListener,
        peers: &Peers,
        inbound: Arc<dyn Inbound>,
        app_in: mpsc::Sender<(u64, Bytes)>,
        snapshots: Arc<Snapshots>,
        metrics: Metrics,
    ) -> Transport {
        let t = Transport {
            inner: Arc::new(Inner {
                opts,
                peers: Mutex::new(HashMap::new()),
                inbound,
                app_in,
                snapshots,
                metrics,
                acceptor: Mutex::new(None),
                app_up: Mutex::new(std::collections::HashSet::new()),
            }),
        };
        for (&id, addr) in peers {
            t.add_peer(id, addr);
        }
        let acceptor = t.clone();
        let task = tokio::spawn(async move { acceptor.accept_loop(listener).await });
        *t.inner.acceptor.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        t
    }

    fn me(&self) -> u64 {
        self.inner.opts.me
    }

    pub(crate) fn downgrade(&self) -> WeakTransport {
        WeakTransport(Arc::downgrade(&self.inner))
    }

    /// Links to a node (again): a no-op when the link exists.
    pub fn add_peer(&self, id: u64, addr: &str) {
        if id == self.me() {
            return;
        }
        let mut peers = self.inner.peers.lock().unwrap_or_else(|e| e.into_inner());
        if peers.contains_key(&id) {
            return;
        }
        let (raft_tx, raft_rx) = mpsc::channel(RAFT_QUEUE);
        let (app_tx, app_rx) = mpsc::channel(APP_QUEUE);
        let (snap_tx, snap_rx) = mpsc::channel(SNAP_QUEUE);
        let lane = |lane: Lane, queue: Queue| {
            let (accepted, accepted_rx) = mpsc::channel(1);
            let task =
                tokio::spawn(
                    self.clone()
                        .run_lane(id, addr.to_string(), lane, queue, accepted_rx),
                );
            (accepted, task)
        };
        let (acc_raft, raft) = lane(Lane::Raft, Queue::Raft(raft_rx));
        let (acc_app, app) = lane(Lane::App, Queue::App(app_rx));
        let (acc_snap, snap) = lane(Lane::Snapshot, Queue::Snap(snap_rx));
        peers.insert(
            id,
            Peer {
                raft: raft_tx,
                app: app_tx,
                snap: snap_tx,
                accepted: [acc_raft, acc_app, acc_snap],
                tasks: [raft, app, snap],
            },
        );
    }

    /// Whether the application lane to `id` is connected now (a peer that died or is cut off is not, once
    /// its link noticed).
    pub fn app_link_up(&self, id: u64) -> bool {
        self.inner
            .app_up
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&id)
    }

    fn set_app_up(&self, id: u64, up: bool) {
        let mut set = self.inner.app_up.lock().unwrap_or_else(|e| e.into_inner());
        if up {
            set.insert(id);
        } else {
            set.remove(&id);
        }
    }

    /// Drops the link to a removed node.
    pub fn remove_peer(&self, id: u64) {
        self.set_app_up(id, false);
        if let Some(p) = self
            .inner
            .peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id)
        {
            for t in p.tasks {
                t.abort();
            }
            self.inner.snapshots.down(id);
        }
    }

    /// Queues a raft message; a full queue drops it (raft resends) and reports the peer unreachable.
    pub fn send_raft(&self, m: Message) {
        let to = m.to;
        let sent = {
            let peers = self.inner.peers.lock().unwrap_or_else(|e| e.into_inner());
            peers
                .get(&to)
                .map(|p| p.raft.try_send((Instant::now(), m)).is_ok())
        };
        if sent != Some(true) {
            self.inner
                .metrics
                .peer_dropped
                .with_label_values(&[&to.to_string()])
                .inc();
            self.inner.inbound.unreachable(to);
        }
    }

    /// A peer's queue of one lane (`pick` chooses it).
    fn sender<T>(
        &self,
        to: u64,
        pick: impl FnOnce(&Peer) -> &mpsc::Sender<T>,
    ) -> Result<mpsc::Sender<T>, AppSendError> {
        let peers = self.inner.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers
            .get(&to)
            .map(|p| pick(p).clone())
            .ok_or(AppSendError::UnknownPeer(to))
    }

    /// Queues an application frame for a peer, waiting while its lane is full (back-pressure).
    pub async fn send_app(&self, to: u64, frame: Bytes) -> Result<(), AppSendError> {
        self.sender(to, |p| &p.app)?
            .send(frame)
            .await
            .map_err(|_| AppSendError::Closed(to))
    }

    /// Queues an application frame if its lane has room.
    pub fn try_send_app(&self, to: u64, frame: Bytes) -> Result<(), AppSendError> {
        self.sender(to, |p| &p.app)?
            .try_send(frame)
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => AppSendError::Full(to),
                mpsc::error::TrySendError::Closed(_) => AppSendError::Closed(to),
            })
    }

    /// Queues a snapshot frame, waiting for room (the stream's flow control).
    pub(crate) async fn send_snap(
        &self,
        to: u64,
        kind: u8,
        payload: Bytes,
    ) -> Result<(), AppSendError> {
        self.sender(to, |p| &p.snap)?
            .send((kind, payload))
            .await
            .map_err(|_| AppSendError::Closed(to))
    }

    /// Queues a small snapshot frame (an answer) if there is room.
    pub(crate) fn try_send_snap(
        &self,
        to: u64,
        kind: u8,
        payload: Bytes,
    ) -> Result<(), AppSendError> {
        self.sender(to, |p| &p.snap)?
            .try_send((kind, payload))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => AppSendError::Full(to),
                mpsc::error::TrySendError::Closed(_) => AppSendError::Closed(to),
            })
    }

    /// Stops accepting and closes every link.
    pub fn shutdown(&self) {
        if let Some(a) = self
            .inner
            .acceptor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            a.abort();
        }
        for (_, p) in self
            .inner
            .peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
        {
            for t in p.tasks {
                t.abort();
            }
        }
    }

    fn hello(&self, lane: Lane) -> Hello {
        Hello {
            lane,
            node: self.me(),
            cluster: self.inner.opts.cluster_id.clone(),
            addr: self.inner.opts.advertise.clone(),
            nonce: handshake::nonce(),
            proof: Vec::new(),
        }
    }

    fn refused(&self, e: &HandshakeError) {
        if !matches!(e, HandshakeError::Io(_)) {
            self.inner
                .metrics
                .peer_refused
                .with_label_values(&[e.reason()])
                .inc();
        }
    }

    async fn accept_loop(self, listener: TcpListener) {
        loop {
            let Ok((stream, from)) = listener.accept().await else {
                tokio::time::sleep(BACKOFF_MIN).await;
                continue;
            };
            let t = self.clone();
            tokio::spawn(async move {
                keepalive(&stream, t.inner.opts.peer_timeout);
                match t.accept(stream).await {
                    Ok((hello, stream)) => {
                        let lane = hello.lane.index();
                        let accepted = t
                            .inner
                            .peers
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get(&hello.node)
                            .map(|p| p.accepted[lane].clone());
                        if let Some(tx) = accepted {
                            let _ = tx.send(stream).await;
                        }
                    }
                    Err(e) => {
                        t.refused(&e);
                        tracing::warn!(%from, error = %e, "peer connection refused");
                    }
                }
            });
        }
    }

    /// The acceptor's half of the handshake.
    async fn accept(&self, stream: TcpStream) -> Result<(Hello, Halves), HandshakeError> {
        let mut stream = stream::accept(stream, self.inner.opts.tls.as_ref()).await?;
        let d = Hello::decode(read_handshake(&mut stream.rd, KIND_HELLO).await?)?;
        if d.cluster != self.inner.opts.cluster_id {
            return Err(HandshakeError::Cluster {
                node: d.node,
                cluster: d.cluster,
            });
        }
        // Only members this node knows (from its configuration or the replicated membership): a node that
        // joins is linked once its membership change has applied here.
        let known = self
            .inner
            .peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&d.node);
        if d.node >= self.me() || !known {
            // Lower ids dial: a dial from a higher id is a misconfiguration (or a node claiming our id).
            return Err(HandshakeError::Node {
                got: d.node,
                expected: self.me().saturating_sub(1),
            });
        }
        let mut a = self.hello(d.lane);
        if let Some(s) = &self.inner.opts.secret {
            a.proof = s.acceptor_proof(&d, &a);
        }
        stream.wr.write_all(&a.encode()).await?;
        stream.wr.flush().await?;
        if let Some(s) = &self.inner.opts.secret {
            let proof = read_handshake(&mut stream.rd, KIND_AUTH)
                .await
                .map_err(|e| match e {
                    HandshakeError::Malformed(_) => HandshakeError::Auth(d.node),
                    e => e,
                })?;
            if !s.check_dialer(&d, &a, &proof) {
                return Err(HandshakeError::Auth(d.node));
            }
        }
        Ok((d, stream))
    }

    /// The dialer's half of the handshake.
    async fn dial(&self, id: u64, addr: &str, lane: Lane) -> Result<Halves, HandshakeError> {
        let s = tokio::time::timeout(handshake::HANDSHAKE_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| HandshakeError::Timeout)??;
        keepalive(&s, self.inner.opts.peer_timeout);
        let mut s = stream::dial(s, addr, self.inner.opts.tls.as_ref()).await?;
        let d = self.hello(lane);
        s.wr.write_all(&d.encode()).await?;
        s.wr.flush().await?;
        let a = Hello::decode(read_handshake(&mut s.rd, KIND_HELLO).await?)?;
        if a.cluster != self.inner.opts.cluster_id {
            return Err(HandshakeError::Cluster {
                node: a.node,
                cluster: a.cluster,
            });
        }
        if a.node != id {
            return Err(HandshakeError::Node {
                got: a.node,
                expected: id,
            });
        }
        if let Some(secret) = &self.inner.opts.secret {
            if !secret.check_acceptor(&d, &a) {
                return Err(HandshakeError::Auth(id));
            }
            let mut out = BytesMut::new();
            frame(KIND_AUTH, &secret.dialer_proof(&d, &a), &mut out);
            s.wr.write_all(&out).await?;
            s.wr.flush().await?;
        }
        Ok(s)
    }

    async fn run_lane(
        self,
        id: u64,
        addr: String,
        lane: Lane,
        mut queue: Queue,
        mut accepted: mpsc::Receiver<Halves>,
    ) {
        let peer = id.to_string();
        let labels = [peer.as_str(), lane.label()];
        let m = self.inner.metrics.clone();
        let timeout = self.inner.opts.peer_timeout;
        let ping_every = timeout / 3;
        let mut backoff = BACKOFF_MIN;
        loop {
            let stream = if self.me() < id {
                match self.dial(id, &addr, lane).await {
                    Ok(s) => s,
                    Err(e) => {
                        self.refused(&e);
                        tracing::debug!(peer = id, %addr, lane = lane.label(), error = %e, "peer link not up");
                        if lane == Lane::Raft {
                            self.inner.inbound.unreachable(id);
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        continue;
                    }
                }
            } else {
                match accepted.recv().await {
                    Some(s) => s,
                    None => return,
                }
            };
            backoff = BACKOFF_MIN;
            m.peer_up.with_label_values(&labels).set(1);
            if lane == Lane::App {
                self.set_app_up(id, true);
            }
            tracing::info!(peer = id, lane = lane.label(), "peer link up");
            let Halves { mut rd, mut wr } = stream;
            let inbound = self.inner.inbound.clone();
            let app_in = self.inner.app_in.clone();
            let snapshots = self.inner.snapshots.clone();
            let max_frame = self.inner.opts.max_frame;
            let mut reader = AbortOnDrop(tokio::spawn(async move {
                loop {
                    let (kind, b) =
                        match tokio::time::timeout(timeout, read_frame(&mut rd, max_frame)).await {
                            Err(_) => {
                                return ("timeout", format!("nothing received for {timeout:?}"))
                            }
                            Ok(Err(e)) => return ("closed", e.to_string()),
                            Ok(Ok(f)) => f,
                        };
                    match (lane, kind) {
                        (_, KIND_PING) => {}
                        (Lane::Raft, KIND_RAFT) => match Message::parse_from_bytes(&b) {
                            Ok(msg) => inbound.raft(msg),
                            Err(e) => return ("error", format!("bad raft message: {e}")),
                        },
                        // Waits while the consumer is behind: the peer's writes stall, its queue fills and its
                        // callers wait. Nothing is dropped.
                        (Lane::App, KIND_APP) => {
                            if app_in.send((id, b)).await.is_err() {
                                return ("closed", "application frames no longer read".into());
                            }
                        }
                        // Restored as it arrives; the next chunk is read once this one is written.
                        (Lane::Snapshot, k)
                            if (handshake::KIND_SNAP_BEGIN..=handshake::KIND_SNAP_ACK)
                                .contains(&k) =>
                        {
                            snapshots.frame(id, k, b).await
                        }
                        _ => {
                            return (
                                "error",
                                format!(
                                    "unexpected frame kind {kind} on the {} lane",
                                    lane.label()
                                ),
                            )
                        }
                    }
                }
            }));
            let mut out = BytesMut::with_capacity(64 * 1024);
            let (reason, why) = loop {
                out.clear();
                let frames = tokio::select! {
                    biased;
                    r = &mut reader.0 => break r.unwrap_or_else(|e| ("error", e.to_string())),
                    more = tokio::time::timeout(ping_every, queue.next_batch(&mut out)) => match more {
                        Ok(Some(n)) => n,
                        Ok(None) => return,
                        Err(_) => {
                            frame(KIND_PING, &[], &mut out);
                            0
                        }
                    },
                };
                // The raft lane gives up on a write after the peer timeout (raft resends). The others wait as
                // long as the peer is alive, which its pings tell the reader: a slow consumer is not a dead
                // peer, and nothing queued behind it is dropped.
                let write_limit = match lane {
                    Lane::Raft => timeout,
                    Lane::App | Lane::Snapshot => Duration::MAX,
                };
                let failed = tokio::select! {
                    biased;
                    r = &mut reader.0 => Some(r.unwrap_or_else(|e| ("error", e.to_string()))),
                    // TLS holds what the socket did not take until a flush (a no-op on plain TCP).
                    w = tokio::time::timeout(write_limit, async {
                        wr.write_all(&out).await?;
                        wr.flush().await
                    }) => match w {
                        Ok(Ok(())) => None,
                        Ok(Err(e)) => Some(("closed", e.to_string())),
                        Err(_) => Some(("timeout", format!("a write did not complete in {timeout:?}"))),
                    },
                };
                if let Some(why) = failed {
                    // Frames of a batch cut short may or may not have reached the peer: counted, not silent.
                    m.peer_frames_lost
                        .with_label_values(&labels)
                        .inc_by(frames as u64);
                    break why;
                }
                m.peer_bytes_sent
                    .with_label_values(&labels)
                    .inc_by(out.len() as u64);
            };
            drop(reader);
            m.peer_up.with_label_values(&labels).set(0);
            if lane == Lane::App {
                self.set_app_up(id, false);
            }
            m.peer_link_down
                .with_label_values(&[peer.as_str(), lane.label(), reason])
                .inc();
            tracing::info!(peer = id, lane = lane.label(), reason = %why, "peer link down");
            match lane {
                Lane::Raft => self.inner.inbound.unreachable(id),
                Lane::Snapshot => self.inner.snapshots.down(id),
                Lane::App => {}
            }
            if self.me() < id {
                tokio::time::sleep(backoff).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::MessageType;

    fn proposal(to: u64) -> Message {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgPropose);
        m.to = to;
        m
    }

    #[tokio::test]
    async fn a_raft_message_queued_while_the_peer_was_away_is_not_sent_late() {
        let (tx, rx) = mpsc::channel(8);
        let long_ago = Instant::now()
            .checked_sub(RAFT_STALE * 2)
            .expect("a monotonic clock past its first seconds");
        tx.send((long_ago, proposal(2))).await.unwrap();
        tx.send((Instant::now(), proposal(3))).await.unwrap();
        let mut q = Queue::Raft(rx);
        let mut out = BytesMut::new();
        assert_eq!(q.next_batch(&mut out).await, Some(1), "only the fresh one");
        let fresh = proposal(3).write_to_bytes().unwrap();
        let mut expected = BytesMut::new();
        frame(KIND_RAFT, &fresh, &mut expected);
        assert_eq!(out, expected);
    }
}
