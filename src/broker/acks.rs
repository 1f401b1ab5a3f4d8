//! A connection's PUBACK / PUBREC queue. MQTT wants them in the order the PUBLISHes arrived
//! [MQTT-4.6.0-2, MQTT-4.6.0-3]; an acknowledgement that waits for persistent sessions' copies to be committed
//! ([`AckGate`](super::ticket::AckGate)) holds back the ones behind it, while the reader goes on reading (the
//! client's Receive Maximum bounds how many wait).

use super::conn::ConnHandle;
use super::metrics::Metrics;
use super::ticket::AckWait;
use crate::protocol::{Packet, ReasonCode};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

type Queued = (Packet, Option<AckWait>);

pub struct AckQueue {
    handle: ConnHandle,
    metrics: Arc<Metrics>,
    /// Acknowledgements queued and not yet handed to the writer.
    waiting: Arc<AtomicUsize>,
    tx: Option<mpsc::UnboundedSender<Queued>>,
}

impl AckQueue {
    pub fn new(handle: ConnHandle, metrics: Arc<Metrics>) -> AckQueue {
        AckQueue {
            handle,
            metrics,
            waiting: Arc::new(AtomicUsize::new(0)),
            tx: None,
        }
    }

    /// Sends `ack` once `wait` resolves and every earlier acknowledgement went; at once when nothing waits.
    pub fn send(&mut self, ack: Packet, wait: Option<AckWait>) {
        if wait.is_none() && self.waiting.load(Ordering::Acquire) == 0 {
            self.handle.packet(ack);
            return;
        }
        let tx = self.tx.get_or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(drain(
                rx,
                self.handle.clone(),
                self.metrics.clone(),
                self.waiting.clone(),
            ));
            tx
        });
        self.waiting.fetch_add(1, Ordering::AcqRel);
        if tx.send((ack, wait)).is_err() {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Hands acknowledgements to the writer in order. A copy that could not be committed closes the connection
/// instead (0x80): the client resends what was not acknowledged, and nothing is acknowledged that a crash
/// could lose.
async fn drain(
    mut rx: mpsc::UnboundedReceiver<Queued>,
    handle: ConnHandle,
    metrics: Arc<Metrics>,
    waiting: Arc<AtomicUsize>,
) {
    while let Some((ack, wait)) = rx.recv().await {
        let committed = match wait {
            Some(w) => {
                let started = Instant::now();
                let ok = w.await.unwrap_or(false);
                metrics.ack_hold.observe(started.elapsed().as_secs_f64());
                ok
            }
            None => true,
        };
        if !committed {
            tracing::warn!(
                "a persistent session's copy was not stored: closing the publisher's connection"
            );
            handle.close_with(
                ReasonCode::UNSPECIFIED_ERROR,
                Some("the store could not commit the message".into()),
            );
            return;
        }
        handle.packet(ack);
        waiting.fetch_sub(1, Ordering::AcqRel);
    }
}
