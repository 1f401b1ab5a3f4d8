//! Peer links over TCP: one framed connection per pair of nodes (the lower id dials, the higher accepts), raft
//! messages and opaque application frames on it, raft first. Each side announces its node id and cluster id;
//! a node of another cluster is refused. Bounded queues: when a peer is away, excess raft messages are dropped
//! (raft resends) and the node is told the peer is unreachable.

use crate::metrics::Metrics;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use protobuf::Message as _;
use raft::eraftpb::Message;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Largest frame accepted (a snapshot travels in one raft message).
pub const MAX_FRAME: usize = 256 << 20;
const RAFT_QUEUE: usize = 4096;
const APP_QUEUE: usize = 1024;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

const KIND_HELLO: u8 = 0;
const KIND_RAFT: u8 = 1;
const KIND_APP: u8 = 2;

/// What arrives from peers.
pub trait Inbound: Send + Sync + 'static {
    fn raft(&self, message: Message);
    fn app(&self, from: u64, frame: Bytes);
    /// The link to `peer` went down or could not be made.
    fn unreachable(&self, peer: u64);
}

struct Peer {
    raft: mpsc::Sender<Message>,
    app: mpsc::Sender<Bytes>,
    accepted: mpsc::Sender<TcpStream>,
    task: tokio::task::JoinHandle<()>,
}

struct Inner {
    me: u64,
    cluster_id: String,
    advertise: String,
    peers: Mutex<HashMap<u64, Peer>>,
    inbound: Arc<dyn Inbound>,
    metrics: Metrics,
    acceptor: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// The node's peer links.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Hello {
    node: u64,
    cluster: String,
    addr: String,
}

fn frame(kind: u8, payload: &[u8], out: &mut BytesMut) {
    out.put_u32((payload.len() + 1) as u32);
    out.put_u8(kind);
    out.put_slice(payload);
}

fn hello_bytes(h: &Hello) -> BytesMut {
    let mut p = BytesMut::new();
    p.put_u64(h.node);
    p.put_u16(h.cluster.len() as u16);
    p.put_slice(h.cluster.as_bytes());
    p.put_slice(h.addr.as_bytes());
    let mut out = BytesMut::new();
    frame(KIND_HELLO, &p, &mut out);
    out
}

async fn read_frame<R: AsyncReadExt + Unpin>(rd: &mut R) -> std::io::Result<(u8, Bytes)> {
    let len = rd.read_u32().await? as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {len} bytes"),
        ));
    }
    let mut buf = vec![0; len];
    rd.read_exact(&mut buf).await?;
    let mut b = Bytes::from(buf);
    let kind = b.get_u8();
    Ok((kind, b))
}

async fn read_hello<R: AsyncReadExt + Unpin>(rd: &mut R) -> std::io::Result<Hello> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let (kind, mut b) = tokio::time::timeout(HANDSHAKE_TIMEOUT, read_frame(rd))
        .await
        .map_err(|_| bad("no hello in time"))??;
    if kind != KIND_HELLO || b.len() < 10 {
        return Err(bad("expected a hello"));
    }
    let node = b.get_u64();
    let n = b.get_u16() as usize;
    if b.len() < n {
        return Err(bad("short hello"));
    }
    let cluster =
        String::from_utf8(b.split_to(n).to_vec()).map_err(|_| bad("cluster id not UTF-8"))?;
    let addr = String::from_utf8(b.to_vec()).map_err(|_| bad("address not UTF-8"))?;
    Ok(Hello {
        node,
        cluster,
        addr,
    })
}

impl Transport {
    /// Listens on `listener` and links to `peers` (id → address; this node's own id is skipped).
    pub fn start(
        me: u64,
        cluster_id: &str,
        listener: TcpListener,
        advertise: String,
        peers: &crate::view::Peers,
        inbound: Arc<dyn Inbound>,
        metrics: Metrics,
    ) -> Transport {
        let t = Transport {
            inner: Arc::new(Inner {
                me,
                cluster_id: cluster_id.to_string(),
                advertise,
                peers: Mutex::new(HashMap::new()),
                inbound,
                metrics,
                acceptor: Mutex::new(None),
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

    /// Links to a node (again): a no-op when the link exists.
    pub fn add_peer(&self, id: u64, addr: &str) {
        if id == self.inner.me {
            return;
        }
        let mut peers = self.inner.peers.lock().unwrap_or_else(|e| e.into_inner());
        if peers.contains_key(&id) {
            return;
        }
        let (raft_tx, raft_rx) = mpsc::channel(RAFT_QUEUE);
        let (app_tx, app_rx) = mpsc::channel(APP_QUEUE);
        let (acc_tx, acc_rx) = mpsc::channel(1);
        let task =
            tokio::spawn(
                self.clone()
                    .run_peer(id, addr.to_string(), raft_rx, app_rx, acc_rx),
            );
        peers.insert(
            id,
            Peer {
                raft: raft_tx,
                app: app_tx,
                accepted: acc_tx,
                task,
            },
        );
    }

    /// Drops the link to a removed node.
    pub fn remove_peer(&self, id: u64) {
        if let Some(p) = self
            .inner
            .peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id)
        {
            p.task.abort();
        }
    }

    /// Queues a raft message; a full queue drops it (raft resends) and reports the peer unreachable.
    pub fn send_raft(&self, m: Message) {
        let to = m.to;
        let sent = {
            let peers = self.inner.peers.lock().unwrap_or_else(|e| e.into_inner());
            peers.get(&to).map(|p| p.raft.try_send(m).is_ok())
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

    /// Queues an application frame for a peer; `false` when its queue is full or the peer unknown.
    pub fn send_app(&self, to: u64, frame: Bytes) -> bool {
        let peers = self.inner.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers
            .get(&to)
            .is_some_and(|p| p.app.try_send(frame).is_ok())
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
            p.task.abort();
        }
    }

    fn hello(&self) -> Hello {
        Hello {
            node: self.inner.me,
            cluster: self.inner.cluster_id.clone(),
            addr: self.inner.advertise.clone(),
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
                let _ = stream.set_nodelay(true);
                let mut stream = stream;
                let hello = match read_hello(&mut stream).await {
                    Ok(h) => h,
                    Err(e) => {
                        tracing::warn!(%from, error = %e, "peer handshake failed");
                        return;
                    }
                };
                if hello.cluster != t.inner.cluster_id {
                    t.inner.metrics.peer_refused.inc();
                    tracing::warn!(%from, node = hello.node, cluster = %hello.cluster, "refused a node of another cluster");
                    return;
                }
                if hello.node >= t.inner.me {
                    tracing::warn!(%from, node = hello.node, "refused a dial from a higher node id (lower ids dial)");
                    return;
                }
                if stream.write_all(&hello_bytes(&t.hello())).await.is_err() {
                    return;
                }
                t.add_peer(hello.node, &hello.addr);
                let accepted = t
                    .inner
                    .peers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&hello.node)
                    .map(|p| p.accepted.clone());
                if let Some(tx) = accepted {
                    let _ = tx.send(stream).await;
                }
            });
        }
    }

    async fn dial(&self, id: u64, addr: &str) -> std::io::Result<TcpStream> {
        let mut s = tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
            })??;
        s.set_nodelay(true)?;
        s.write_all(&hello_bytes(&self.hello())).await?;
        let h = read_hello(&mut s).await?;
        if h.cluster != self.inner.cluster_id || h.node != id {
            self.inner.metrics.peer_refused.inc();
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{addr} is node {} of cluster {:?}", h.node, h.cluster),
            ));
        }
        Ok(s)
    }

    async fn run_peer(
        self,
        id: u64,
        addr: String,
        mut raft_rx: mpsc::Receiver<Message>,
        mut app_rx: mpsc::Receiver<Bytes>,
        mut accepted: mpsc::Receiver<TcpStream>,
    ) {
        let label = id.to_string();
        let m = &self.inner.metrics;
        let mut backoff = BACKOFF_MIN;
        loop {
            let stream = if self.inner.me < id {
                match self.dial(id, &addr).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!(peer = id, %addr, error = %e, "peer link not up");
                        self.inner.inbound.unreachable(id);
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
            m.peer_up.with_label_values(&[&label]).set(1);
            tracing::info!(peer = id, "peer link up");
            let (mut rd, mut wr) = stream.into_split();
            let inbound = self.inner.inbound.clone();
            let mut reader = tokio::spawn(async move {
                loop {
                    match read_frame(&mut rd).await {
                        Ok((KIND_RAFT, b)) => match Message::parse_from_bytes(&b) {
                            Ok(msg) => inbound.raft(msg),
                            Err(e) => return format!("bad raft message: {e}"),
                        },
                        Ok((KIND_APP, b)) => inbound.app(id, b),
                        Ok((kind, _)) => return format!("unknown frame kind {kind}"),
                        Err(e) => return e.to_string(),
                    }
                }
            });
            let mut out = BytesMut::with_capacity(64 * 1024);
            let why = loop {
                out.clear();
                tokio::select! {
                    biased;
                    r = &mut reader => break r.unwrap_or_else(|e| e.to_string()),
                    Some(msg) = raft_rx.recv() => {
                        let mut next = Some(msg);
                        // Batch what is queued into one write; raft before application frames.
                        while let Some(msg) = next {
                            match msg.write_to_bytes() {
                                Ok(b) => frame(KIND_RAFT, &b, &mut out),
                                Err(e) => tracing::error!(error = %e, "cannot encode a raft message"),
                            }
                            next = if out.len() < 1 << 20 { raft_rx.try_recv().ok() } else { None };
                        }
                    }
                    Some(app) = app_rx.recv() => {
                        frame(KIND_APP, &app, &mut out);
                        while out.len() < 1 << 20 {
                            match app_rx.try_recv() {
                                Ok(a) => frame(KIND_APP, &a, &mut out),
                                Err(_) => break,
                            }
                        }
                    }
                }
                if let Err(e) = wr.write_all(&out).await {
                    break e.to_string();
                }
                m.peer_bytes_sent
                    .with_label_values(&[&label])
                    .inc_by(out.len() as u64);
            };
            reader.abort();
            m.peer_up.with_label_values(&[&label]).set(0);
            tracing::info!(peer = id, reason = %why, "peer link down");
            self.inner.inbound.unreachable(id);
            if self.inner.me < id {
                tokio::time::sleep(backoff).await;
            }
        }
    }
}
