//! Flow control of a connection's reader: it pauses (stops reading its socket) instead of buffering when its
//! writer queue or the acknowledgements waiting for commits back up, when it passes Receive Maximum (3.x),
//! a rate limit, its credit in the router, or the node's memory watermark.

use super::{End, Reader, Violation};
use std::time::Instant;
use tokio_util::sync::CancellationToken;

impl Reader {
    /// The client does not read what it is sent (its own acknowledgements included): reads pause until its
    /// writer queue drains, so it is slowed, not buffered without end.
    pub(super) async fn wait_for_writer(&self, cancel: &CancellationToken) -> Option<End> {
        self.ctx
            .metrics
            .reads_paused
            .with_label_values(&["writer"])
            .inc();
        let released = self.acks.released();
        while self.backed_up() {
            let drained = self.handle.shared.drained.notified();
            let acked = released.notified();
            tokio::pin!(drained);
            tokio::pin!(acked);
            drained.as_mut().enable();
            acked.as_mut().enable();
            if !self.backed_up() {
                break;
            }
            tokio::select! {
                _ = drained => {}
                _ = acked => {}
                _ = cancel.cancelled() => return Some(End::ClosedByServer),
            }
        }
        None
    }

    /// Whether the writer queue, or the acknowledgements waiting for commits before it, hold so much that
    /// reading must pause.
    pub(super) fn backed_up(&self) -> bool {
        self.handle.backed_up() || self.acks.waiting() >= crate::broker::conn::PAUSE_READS_AT
    }

    /// Inbound QoS 1 is held to the server's Receive Maximum like QoS 2: a v5 client past it is disconnected
    /// with 0x93 [MQTT-3.3.4-7]; an older client, which was told no maximum, has its reads paused until the
    /// acknowledgements it waits for (held by commits) have left.
    pub(super) async fn admit_qos1(&self, cancel: &CancellationToken) -> Option<End> {
        let max = usize::from(self.ctx.config.limits.max_inflight);
        let over = || self.acks.qos1_waiting() + self.inbound_qos2.len() >= max;
        if !over() {
            return None;
        }
        if self.handle.version.is_v5() {
            return Some(End::Violation(Violation::ReceiveMaximum));
        }
        self.ctx
            .metrics
            .reads_paused
            .with_label_values(&["inflight"])
            .inc();
        let released = self.acks.released();
        while self.acks.qos1_waiting() > 0 && over() {
            let n = released.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.acks.qos1_waiting() == 0 || !over() {
                break;
            }
            tokio::select! {
                _ = n => {}
                _ = cancel.cancelled() => return Some(End::ClosedByServer),
            }
        }
        None
    }

    /// Waits out a rate limit (bytes read, or one PUBLISH): reads pause, the client is not dropped.
    pub(super) async fn throttle(
        &mut self,
        n: u64,
        messages: bool,
        cancel: &CancellationToken,
    ) -> Option<End> {
        let (bucket, label) = if messages {
            (self.message_rate.as_mut(), "client_messages")
        } else {
            (self.byte_rate.as_mut(), "client_bytes")
        };
        let wait = bucket?.take(n, Instant::now());
        if wait.is_zero() {
            return None;
        }
        self.ctx
            .metrics
            .rate_limited
            .with_label_values(&[label])
            .inc();
        tokio::select! {
            _ = tokio::time::sleep(wait) => None,
            _ = cancel.cancelled() => Some(End::ClosedByServer),
        }
    }

    /// A credit for one message; waits (reads pause) while the connection has too many in the router or the
    /// node is over its memory watermark.
    pub(super) async fn wait_for_credit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let ctx = &self.ctx;
        while ctx.over_watermark() {
            ctx.metrics
                .reads_paused
                .with_label_values(&["memory_watermark"])
                .inc();
            let woken = ctx.below_watermark.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if !ctx.over_watermark() {
                break;
            }
            tokio::select! {
                _ = woken => {}
                _ = self.handle.cancel.cancelled() => return None,
            }
        }
        match self.credit.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                ctx.metrics
                    .reads_paused
                    .with_label_values(&["credit"])
                    .inc();
                tokio::select! {
                    p = self.credit.clone().acquire_owned() => p.ok(),
                    _ = self.handle.cancel.cancelled() => None,
                }
            }
        }
    }

    /// A QoS 1/2 publish is matched against the persistent sessions as this node applied them: if the node
    /// stalled or lost contact with the leader (it may not have applied a subscription whose SUBACK did not
    /// wait for it), it reads through the leader first. Without a leader the message is refused, never
    /// acknowledged and lost: v5 DISCONNECT 0x80 with a reason string, 3.x a close.
    pub(super) async fn ensure_fresh(&self) -> Option<End> {
        let store = self.ctx.store.as_ref()?;
        if store.cluster().fresh() {
            return None;
        }
        let m = &self.ctx.metrics.read_barriers;
        let checked = tokio::select! {
            r = store.ensure_fresh() => r,
            _ = self.handle.cancel.cancelled() => return Some(End::ClosedByServer),
        };
        match checked {
            Ok(()) => {
                m.with_label_values(&["ok"]).inc();
                None
            }
            Err(e) => {
                m.with_label_values(&["refused"]).inc();
                Some(End::Violation(Violation::NoLeader(e)))
            }
        }
    }

    /// Waits until the session has queued a SUBSCRIBE's or UNSUBSCRIBE's change on the shards (an answer
    /// dropped unsent: the session is gone or no longer this connection's, nothing to wait for).
    pub(super) async fn until_installed(
        &self,
        done: tokio::sync::oneshot::Receiver<()>,
    ) -> Option<End> {
        tokio::select! {
            _ = done => None,
            _ = self.handle.cancel.cancelled() => Some(End::ClosedByServer),
        }
    }
}
