//! A connection's PUBACK / PUBREC queue. MQTT wants them in the order the PUBLISHes arrived
//! [MQTT-4.6.0-2, MQTT-4.6.0-3]; an acknowledgement that waits for persistent sessions' copies to be committed
//! ([`AckGate`](super::ticket::AckGate)) holds back the ones behind it, while the reader goes on reading (the
//! client's Receive Maximum bounds how many wait).

use super::conn::ConnHandle;
use super::held::{close_unconfirmed, held, Held};
use super::inbound::InboundQos2;
use super::metrics::Metrics;
use super::ticket::{AckOutcome, AckWait};
use super::Context;
use crate::protocol::{Packet, ReasonCode};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, Notify};

type Queued = (Packet, Option<AckWait>);

pub struct AckQueue {
    handle: ConnHandle,
    metrics: Arc<Metrics>,
    /// Acknowledgements queued and not yet handed to the writer, and how many of them are PUBACKs (QoS 1
    /// messages the client still counts against the server's Receive Maximum).
    waiting: Arc<AtomicUsize>,
    qos1: Arc<AtomicUsize>,
    /// Woken each time an acknowledgement leaves the queue.
    released: Arc<Notify>,
    tx: Option<mpsc::UnboundedSender<Queued>>,
    /// The connection's inbound QoS 2 ids: one refused with 0x97 is free again (no PUBREL follows).
    inbound_qos2: InboundQos2,
    /// Frees such an id in the store too (a persistent session's ids are stored).
    forget_qos2: Option<ForgetQos2>,
    /// In a cluster: the client id, whose holding node is checked again before an acknowledgement that
    /// waited for a commit leaves (see [`held`]).
    holder: Option<Holder>,
}

/// What an acknowledgement that waited checks first: that this node still holds the client.
#[derive(Clone)]
pub struct Holder {
    pub ctx: Arc<Context>,
    pub client_id: String,
}

/// Frees an inbound QoS 2 id of a persistent session in the store.
pub type ForgetQos2 = Arc<dyn Fn(u16) + Send + Sync>;

impl AckQueue {
    pub fn new(
        handle: ConnHandle,
        metrics: Arc<Metrics>,
        inbound_qos2: InboundQos2,
        forget_qos2: Option<ForgetQos2>,
        holder: Option<Holder>,
    ) -> AckQueue {
        AckQueue {
            handle,
            metrics,
            waiting: Arc::new(AtomicUsize::new(0)),
            qos1: Arc::new(AtomicUsize::new(0)),
            released: Arc::new(Notify::new()),
            tx: None,
            inbound_qos2,
            forget_qos2,
            holder,
        }
    }

    /// Sends `ack` once `wait` resolves and every earlier acknowledgement went; at once when nothing waits.
    pub fn send(&mut self, ack: Packet, wait: Option<AckWait>) {
        if wait.is_none() && self.waiting.load(Ordering::Acquire) == 0 {
            self.handle.packet(ack);
            return;
        }
        let tx = self.tx.get_or_insert_with(|| {
            // Unbounded in type only: the reader queues one entry per QoS 1/2 PUBLISH it admitted, and admits
            // at most Receive Maximum of them before their acknowledgements leave.
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(drain(
                rx,
                self.handle.clone(),
                self.metrics.clone(),
                Counts {
                    waiting: self.waiting.clone(),
                    qos1: self.qos1.clone(),
                    released: self.released.clone(),
                },
                self.inbound_qos2.clone(),
                self.forget_qos2.clone(),
                self.holder.clone(),
            ));
            tx
        });
        let is_qos1 = matches!(ack, Packet::PubAck(_));
        self.waiting.fetch_add(1, Ordering::AcqRel);
        if is_qos1 {
            self.qos1.fetch_add(1, Ordering::AcqRel);
        }
        if tx.send((ack, wait)).is_err() {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            if is_qos1 {
                self.qos1.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// Acknowledgements queued and not yet handed to the writer.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// QoS 1 PUBLISHes whose PUBACK has not left yet.
    pub fn qos1_waiting(&self) -> usize {
        self.qos1.load(Ordering::Acquire)
    }

    /// Resolves the next time an acknowledgement leaves the queue.
    pub fn released(&self) -> Arc<Notify> {
        self.released.clone()
    }
}

struct Counts {
    waiting: Arc<AtomicUsize>,
    qos1: Arc<AtomicUsize>,
    released: Arc<Notify>,
}

/// Hands acknowledgements to the writer in order. A copy that could not be committed closes the connection
/// instead (0x80): the client resends what was not acknowledged, and nothing is acknowledged that a crash
/// could lose. A message every matching session refused for its quota gets 0x97 (MQTT 5; before v5 there is
/// no way to say it, and the acknowledgement goes as usual, as Mosquitto does).
async fn drain(
    mut rx: mpsc::UnboundedReceiver<Queued>,
    handle: ConnHandle,
    metrics: Arc<Metrics>,
    counts: Counts,
    inbound_qos2: InboundQos2,
    forget_qos2: Option<ForgetQos2>,
    holder: Option<Holder>,
) {
    while let Some((mut ack, wait)) = rx.recv().await {
        let waited = wait.is_some();
        let outcome = match wait {
            Some(w) => {
                let started = Instant::now();
                let outcome = w.await.unwrap_or(AckOutcome::Failed);
                metrics.ack_hold.observe(started.elapsed().as_secs_f64());
                outcome
            }
            None => AckOutcome::Stored,
        };
        // The wait may have outlasted this node's hold on the client (it stalled, or applied another
        // node's take in the same batch as the commit, before its registry closed this connection): the
        // acknowledgement leaves only if the client is still held here [ARCHITECTURE §5.4]. What was
        // committed stays committed and moved with the session; the client resends what it was not told.
        if let (true, Some(h), AckOutcome::Stored | AckOutcome::QuotaExceeded) =
            (waited, &holder, outcome)
        {
            match held(&h.ctx, &h.client_id, true).await {
                Held::Yes => {}
                Held::No => return,
                Held::Unconfirmed => {
                    close_unconfirmed(&handle);
                    return;
                }
                Held::NoLeader(e) => {
                    tracing::warn!(error = %e, "not fresh and no leader: closing the publisher's connection unacknowledged");
                    handle.close_with(
                        ReasonCode::UNSPECIFIED_ERROR,
                        Some("no leader: the node cannot vouch for this session".into()),
                    );
                    return;
                }
            }
        }
        match outcome {
            AckOutcome::Stored => {}
            AckOutcome::QuotaExceeded if handle.version.is_v5() => match &mut ack {
                Packet::PubAck(a) => a.reason = ReasonCode::QUOTA_EXCEEDED,
                Packet::PubRec(a) => {
                    a.reason = ReasonCode::QUOTA_EXCEEDED;
                    // [MQTT-4.3.3-4]: after a PUBREC with an error the exchange is over; the id is free.
                    inbound_qos2.remove(a.pkid);
                    if let Some(forget) = &forget_qos2 {
                        forget(a.pkid);
                    }
                }
                _ => {}
            },
            AckOutcome::QuotaExceeded => {}
            AckOutcome::Failed => {
                if let Packet::PubRec(a) = &ack {
                    // Not stored: the client's resend must be routed, not taken for a duplicate.
                    inbound_qos2.forget_pending(a.pkid);
                }
                tracing::warn!(
                    "a persistent session's copy was not stored: closing the publisher's connection"
                );
                handle.close_with(
                    ReasonCode::UNSPECIFIED_ERROR,
                    Some("the store could not commit the message".into()),
                );
                return;
            }
        }
        let is_qos1 = matches!(ack, Packet::PubAck(_));
        handle.packet(ack);
        counts.waiting.fetch_sub(1, Ordering::AcqRel);
        if is_qos1 {
            counts.qos1.fetch_sub(1, Ordering::AcqRel);
        }
        counts.released.notify_waiters();
    }
}
