//! Flow control of a connection's reader: it pauses (stops reading its socket) instead of buffering when its
//! writer queue or the acknowledgements waiting for commits back up, when it passes Receive Maximum (3.x),
//! a rate limit, its credit in the router, or the node's memory watermark.

use super::{End, Reader, Violation};
use crate::broker::held::{close_unconfirmed, held, Held, CONFIRM_WAIT};
use std::time::Instant;

impl Reader {
    /// Resolves when the reader must stop waiting: the connection is closing, or another connection took
    /// the session over (it then settles what is buffered). While settling, never: what is settled is
    /// bounded, and the close (the writer is done with the 0x8E) must not cut it short.
    pub(super) async fn stopped(&self) {
        if self.settling {
            return std::future::pending().await;
        }
        tokio::select! {
            _ = self.handle.cancel.cancelled() => {}
            _ = self.handle.shared.until_taken_over() => {}
        }
    }

    /// The client does not read what it is sent (its own acknowledgements included): reads pause until its
    /// writer queue drains, so it is slowed, not buffered without end.
    pub(super) async fn wait_for_writer(&self) -> Option<End> {
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
                _ = self.stopped() => return Some(End::ClosedByServer),
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
    pub(super) async fn admit_qos1(&self) -> Option<End> {
        let max = usize::from(self.ctx.config.limits.max_inflight);
        let over = || self.acks.qos1_waiting() + self.inbound_qos2.len() >= max;
        // Settling a connection taken over: what it settles is bounded already.
        if !over() || self.settling {
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
                _ = self.stopped() => return Some(End::ClosedByServer),
            }
        }
        None
    }

    /// Waits out a rate limit (bytes read, or one PUBLISH): reads pause, the client is not dropped.
    pub(super) async fn throttle(&mut self, n: u64, messages: bool) -> Option<End> {
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
            _ = self.stopped() => Some(End::ClosedByServer),
        }
    }

    /// A credit for one message; waits (reads pause) while the connection has too many in the router or the
    /// node is over its memory watermark.
    pub(super) async fn wait_for_credit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let ctx = &self.ctx;
        if self.settling {
            // A connection taken over settles what it had read without waiting for anything (its own
            // session, which may hold its credit, waits for it): the credit grows by what is settled, 64 KiB
            // at most, and goes with the connection.
            if let Ok(p) = self.credit.clone().try_acquire_owned() {
                return Some(p);
            }
            self.credit.add_permits(1);
            return self.credit.clone().try_acquire_owned().ok();
        }
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
                _ = self.stopped() => return None,
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
                    _ = self.stopped() => None,
                }
            }
        }
    }

    /// A QoS 1/2 publish is matched against the persistent sessions as this node applied them: if the node
    /// stalled or lost contact with the leader (it may not have applied a subscription whose SUBACK did not
    /// wait for it), it reads through the leader first. Without a leader the message is refused, never
    /// acknowledged and lost: v5 DISCONNECT 0x80 with a reason string, 3.x a close. A node that was paused
    /// or cut off may also have missed a takeover by another node: the registry then ends the session
    /// (0x8E) instead of letting this connection have the message acknowledged, and the reader waits for
    /// that close (see [`held`]).
    pub(super) async fn ensure_fresh(&self) -> Option<End> {
        // The common case, per message: fresh, nothing to wait for.
        if self.ctx.store.as_ref().is_none_or(|s| s.cluster().fresh()) {
            return None;
        }
        let checked = tokio::select! {
            h = held(&self.ctx, &self.client_id, false) => h,
            _ = self.stopped() => return Some(End::ClosedByServer),
        };
        match checked {
            Held::Yes => None,
            Held::NoLeader(e) => Some(End::Violation(Violation::NoLeader(e))),
            Held::No => {
                let _ = tokio::time::timeout(CONFIRM_WAIT, self.stopped()).await;
                Some(End::ClosedByServer)
            }
            Held::Unconfirmed => {
                close_unconfirmed(&self.handle);
                Some(End::ClosedByServer)
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
            _ = self.stopped() => Some(End::ClosedByServer),
        }
    }
}
