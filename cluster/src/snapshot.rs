//! Snapshots streamed on the peer link's snapshot lane, in bounded chunks, built and restored off the node
//! actor.
//!
//! Leader: raft-rs asks the storage for a snapshot; the storage freezes the state ([`crate::freeze`]) and
//! returns only metadata and a descriptor naming the freeze. When raft-rs sends that `MsgSnapshot`, the node
//! hands it here instead of to the raft lane: a blocking task reads the frozen records into chunks of at most
//! [`CHUNK`] bytes, and the stream sends `BEGIN` (the raft message), the chunks and `END` (the record count),
//! each waiting for room on the lane (TCP is the flow control), then waits for the follower's `ACK`. The
//! outcome is reported to raft-rs (`report_snapshot`).
//!
//! Follower: `BEGIN` takes the one staging permit (a second transfer is refused, and retried by its leader)
//! and clears the inactive state tree; each chunk is written to it in a blocking task while the lane waits;
//! `END` checks the count, writes the applied index and conf state, and steps the raft message into the node
//! with a descriptor naming the staged tree. The node's install is then one write of the raft tree and a
//! switch. A link that drops mid-transfer abandons it on both sides.

use crate::freeze::{Frozen, StreamGuard};
use crate::metrics::Metrics;
use crate::node::NodeMsg;
use crate::transport::handshake::{KIND_SNAP_ACK, KIND_SNAP_BEGIN, KIND_SNAP_CHUNK, KIND_SNAP_END};
use crate::transport::{Transport, WeakTransport};
use crate::view::{put_record, Staged, Staging, View};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, OwnedSemaphorePermit};

/// Records per chunk are added until the chunk holds this many bytes.
pub const CHUNK: usize = 1 << 20;
/// How long a sender waits for the follower's answer after the last chunk.
const ACK_TIMEOUT: Duration = Duration::from_secs(60);

const FROZEN: &[u8; 7] = b"CSNAPF1";
const STAGED: &[u8; 7] = b"CSNAPS1";

/// The data of a snapshot raft-rs holds on the leader: which freeze to stream.
pub fn descriptor(freeze: u64) -> Vec<u8> {
    let mut d = FROZEN.to_vec();
    d.extend_from_slice(&freeze.to_be_bytes());
    d
}

pub(crate) fn frozen_id(data: &[u8]) -> Option<u64> {
    match data.strip_prefix(&FROZEN[..]) {
        Some(id) => id.try_into().ok().map(u64::from_be_bytes),
        None => None,
    }
}

fn staged_descriptor(s: Staged) -> Vec<u8> {
    let mut d = STAGED.to_vec();
    d.push(s.tree as u8);
    d.extend_from_slice(&s.gen.to_be_bytes());
    d
}

/// The staged tree a snapshot's data names (data of a streamed snapshot, as the follower's node sees it).
pub(crate) fn staged(data: &[u8]) -> Option<Staged> {
    let rest = data.strip_prefix(&STAGED[..])?;
    if rest.len() != 9 {
        return None;
    }
    Some(Staged {
        tree: rest[0] as usize & 1,
        gen: u64::from_be_bytes(rest[1..].try_into().ok()?),
    })
}

struct Incoming {
    xfer: u64,
    msg: Message,
    staging: Staging,
    permit: OwnedSemaphorePermit,
    /// When its last frame came: a transfer silent for [`INCOMING_IDLE`] is dropped when another needs the
    /// staging.
    last: Instant,
}

/// A transfer whose sender has gone quiet this long gives up the staging to another.
const INCOMING_IDLE: Duration = Duration::from_secs(30);

/// Both ends of snapshot transfers on this node.
pub struct Snapshots {
    view: View,
    metrics: Metrics,
    transport: OnceLock<WeakTransport>,
    node: OnceLock<ractor::ActorRef<NodeMsg>>,
    incoming: Mutex<HashMap<u64, Incoming>>,
    outgoing: Mutex<HashMap<u64, (u64, oneshot::Sender<bool>)>>,
    next_xfer: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("peer link: {0}")]
    Link(#[from] crate::transport::AppSendError),
    #[error("reading the frozen state: {0}")]
    Read(#[from] sled::Error),
    #[error("the freeze was cancelled")]
    Cancelled,
    #[error("no answer from the follower")]
    NoAnswer,
    #[error("{0}")]
    Task(#[from] tokio::task::JoinError),
}

impl Snapshots {
    pub(crate) fn new(view: View, metrics: Metrics) -> Arc<Snapshots> {
        Arc::new(Snapshots {
            view,
            metrics,
            transport: OnceLock::new(),
            node: OnceLock::new(),
            incoming: Mutex::new(HashMap::new()),
            outgoing: Mutex::new(HashMap::new()),
            next_xfer: AtomicU64::new(1),
        })
    }

    pub(crate) fn set_transport(&self, t: &Transport) {
        let _ = self.transport.set(t.downgrade());
    }

    fn transport(&self) -> Option<Transport> {
        self.transport.get().and_then(WeakTransport::upgrade)
    }

    pub(crate) fn set_node(&self, n: ractor::ActorRef<NodeMsg>) {
        let _ = self.node.set(n);
    }

    fn ack(&self, to: u64, xfer: u64, ok: bool) {
        let Some(t) = self.transport() else {
            return;
        };
        let mut p = BytesMut::with_capacity(9);
        p.put_u64(xfer);
        p.put_u8(ok as u8);
        if t.try_send_snap(to, KIND_SNAP_ACK, p.freeze()).is_err() {
            tracing::debug!(
                peer = to,
                xfer,
                "snapshot answer not sent (lane full or down)"
            );
        }
    }

    /// Streams `msg`'s snapshot (frozen in `frozen`) to `to`, then tells the node how it went.
    pub(crate) fn stream(
        self: &Arc<Self>,
        to: u64,
        msg: Message,
        frozen: Arc<Frozen>,
        guard: StreamGuard,
    ) {
        let me = self.clone();
        tokio::spawn(async move {
            let index = msg.get_snapshot().get_metadata().index;
            let ok = match me.send(to, msg, frozen, guard).await {
                Ok(records) => {
                    tracing::info!(peer = to, index, records, "snapshot streamed");
                    true
                }
                Err(e) => {
                    me.metrics.snapshots_failed.inc();
                    tracing::warn!(peer = to, index, error = %e, "snapshot stream failed");
                    false
                }
            };
            if let Some(n) = me.node.get() {
                let _ = n.cast(NodeMsg::SnapshotSent(to, ok));
            }
        });
    }

    async fn send(
        &self,
        to: u64,
        msg: Message,
        frozen: Arc<Frozen>,
        _guard: StreamGuard,
    ) -> Result<u64, StreamError> {
        let t = self.transport().ok_or(StreamError::Link(
            crate::transport::AppSendError::UnknownPeer(to),
        ))?;
        let xfer = self.next_xfer.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.lock_out().insert(xfer, (to, tx));
        let result = async {
            let mut begin = BytesMut::new();
            begin.put_u64(xfer);
            begin.put_slice(
                &msg.write_to_bytes()
                    .map_err(|e| StreamError::Read(sled::Error::Unsupported(e.to_string())))?,
            );
            t.send_snap(to, KIND_SNAP_BEGIN, begin.freeze()).await?;
            let (chunks, mut rx_chunks) = tokio::sync::mpsc::channel::<Vec<u8>>(2);
            let reader = frozen.clone();
            let producer = tokio::task::spawn_blocking(move || {
                let mut buf = Vec::with_capacity(CHUNK + 4096);
                let mut n = 0u64;
                let complete = reader.for_each_record(|k, v| {
                    put_record(&mut buf, k, v);
                    n += 1;
                    if buf.len() >= CHUNK {
                        let full = std::mem::replace(&mut buf, Vec::with_capacity(CHUNK + 4096));
                        return chunks.blocking_send(full).is_ok();
                    }
                    true
                })?;
                if complete && !buf.is_empty() && chunks.blocking_send(buf).is_err() {
                    return Ok::<_, sled::Error>((false, n));
                }
                Ok((complete, n))
            });
            while let Some(chunk) = rx_chunks.recv().await {
                let mut c = BytesMut::with_capacity(8 + chunk.len());
                c.put_u64(xfer);
                c.put_slice(&chunk);
                self.metrics.snapshot_bytes_sent.inc_by(chunk.len() as u64);
                t.send_snap(to, KIND_SNAP_CHUNK, c.freeze()).await?;
            }
            let (complete, records) = producer.await??;
            if !complete {
                return Err(StreamError::Cancelled);
            }
            let mut end = BytesMut::with_capacity(16);
            end.put_u64(xfer);
            end.put_u64(records);
            t.send_snap(to, KIND_SNAP_END, end.freeze()).await?;
            match tokio::time::timeout(ACK_TIMEOUT, rx).await {
                Ok(Ok(true)) => Ok(records),
                _ => Err(StreamError::NoAnswer),
            }
        }
        .await;
        self.lock_out().remove(&xfer);
        if result.is_err() {
            // Tell the follower to let go of what it staged (best effort: a count no transfer has).
            let mut end = BytesMut::with_capacity(16);
            end.put_u64(xfer);
            end.put_u64(u64::MAX);
            let _ = t.try_send_snap(to, KIND_SNAP_END, end.freeze());
        }
        result
    }

    fn lock_out(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (u64, oneshot::Sender<bool>)>> {
        self.outgoing.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_in(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Incoming>> {
        self.incoming.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A frame from `from` on the snapshot lane (the lane reads the next one when this returns).
    pub(crate) async fn frame(&self, from: u64, kind: u8, mut b: Bytes) {
        if b.len() < 8 {
            return;
        }
        let xfer = b.get_u64();
        match kind {
            KIND_SNAP_BEGIN => self.begin(from, xfer, b).await,
            KIND_SNAP_CHUNK => self.chunk(from, xfer, b).await,
            KIND_SNAP_END if b.len() >= 8 => self.end(from, xfer, b.get_u64()).await,
            KIND_SNAP_ACK if !b.is_empty() => {
                let ok = b.get_u8() == 1;
                if let Some((_, tx)) = self.lock_out().remove(&xfer) {
                    let _ = tx.send(ok);
                }
            }
            _ => tracing::debug!(peer = from, kind, "unexpected snapshot frame ignored"),
        }
    }

    async fn begin(&self, from: u64, xfer: u64, b: Bytes) {
        // A new transfer from this peer replaces one it abandoned.
        self.lock_in().remove(&from);
        let msg = match Message::parse_from_bytes(&b) {
            Ok(m) if m.get_msg_type() == MessageType::MsgSnapshot => m,
            _ => return self.ack(from, xfer, false),
        };
        let permit = match self.view.staging_permit() {
            Some(p) => Some(p),
            None => {
                // A transfer whose sender went quiet (stopped without an end, link still up) lets go.
                self.lock_in()
                    .retain(|_, i| i.last.elapsed() < INCOMING_IDLE);
                self.view.staging_permit()
            }
        };
        let Some(permit) = permit else {
            tracing::info!(
                peer = from,
                "snapshot refused: another one is being restored"
            );
            return self.ack(from, xfer, false);
        };
        let view = self.view.clone();
        match tokio::task::spawn_blocking(move || view.stage()).await {
            Ok(Ok(staging)) => {
                let index = msg.get_snapshot().get_metadata().index;
                tracing::info!(peer = from, index, "receiving a snapshot");
                self.lock_in().insert(
                    from,
                    Incoming {
                        xfer,
                        msg,
                        staging,
                        permit,
                        last: Instant::now(),
                    },
                );
            }
            _ => self.ack(from, xfer, false),
        }
    }

    fn take(&self, from: u64, xfer: u64) -> Option<Incoming> {
        let mut incoming = self.lock_in();
        match incoming.get(&from) {
            Some(i) if i.xfer == xfer => incoming.remove(&from),
            _ => None,
        }
    }

    async fn chunk(&self, from: u64, xfer: u64, b: Bytes) {
        let Some(mut inc) = self.take(from, xfer) else {
            return;
        };
        self.metrics.snapshot_bytes_received.inc_by(b.len() as u64);
        let written = tokio::task::spawn_blocking(move || {
            let r = inc.staging.put_records(&b);
            (inc, r)
        })
        .await;
        match written {
            Ok((mut inc, Ok(()))) => {
                inc.last = Instant::now();
                self.lock_in().insert(from, inc);
            }
            Ok((_, Err(e))) => {
                tracing::warn!(peer = from, error = %e, "snapshot chunk not restored");
                self.ack(from, xfer, false);
            }
            Err(_) => self.ack(from, xfer, false),
        }
    }

    async fn end(&self, from: u64, xfer: u64, records: u64) {
        let Some(inc) = self.take(from, xfer) else {
            return self.ack(from, xfer, false);
        };
        if inc.staging.records() != records {
            tracing::warn!(
                peer = from,
                got = inc.staging.records(),
                records,
                "snapshot incomplete"
            );
            return self.ack(from, xfer, false);
        }
        let Incoming {
            mut msg,
            staging,
            permit,
            ..
        } = inc;
        let meta = msg.get_snapshot().get_metadata().clone();
        let finished =
            tokio::task::spawn_blocking(move || staging.finish(meta.index, meta.get_conf_state()))
                .await;
        let staged = match finished {
            Ok(Ok(s)) => s,
            _ => return self.ack(from, xfer, false),
        };
        msg.mut_snapshot().data = staged_descriptor(staged).into();
        let delivered = self
            .node
            .get()
            .is_some_and(|n| n.cast(NodeMsg::StepStaged(Box::new(msg), permit)).is_ok());
        self.ack(from, xfer, delivered);
    }

    /// The snapshot lane to `peer` went down: its transfers are abandoned on this side.
    pub(crate) fn down(&self, peer: u64) {
        self.lock_in().remove(&peer);
        self.lock_out().retain(|_, (to, _)| *to != peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_round_trip_and_are_told_apart() {
        assert_eq!(frozen_id(&descriptor(42)), Some(42));
        let s = Staged { tree: 1, gen: 9 };
        assert_eq!(staged(&staged_descriptor(s)), Some(s));
        assert_eq!(staged(&descriptor(42)), None);
        assert_eq!(frozen_id(&staged_descriptor(s)), None);
        assert_eq!(
            frozen_id(b"\x00\x00\x00\x01k"),
            None,
            "in-band data is neither"
        );
    }
}
