//! The session's Will: publishing it (checked against the ACL), and in a cluster: while the lifecycle holds a Will (the connection is up, or gone within
//! its Will Delay), the store records it, so that if this node dies the cluster fires it (see
//! [`crate::broker::failover`]); once this node publishes or cancels it, the record goes.

use super::SessionState;
use crate::broker::message::Message;
use crate::broker::metrics::Metrics;
use crate::broker::ticket::Ticket;
use crate::protocol::LastWill;
use std::sync::Arc;
use std::time::{Duration, Instant};

impl SessionState {
    /// Publishes a Will (checked against the ACL the client connected with).
    pub(super) fn publish_will(&mut self, w: LastWill) {
        if !self.allowed(&w.topic, true) {
            self.ctx
                .metrics
                .acl_denied
                .with_label_values(&["will"])
                .inc();
            tracing::info!(client_id = %self.client_id, topic = %w.topic, "Will denied by the ACL");
            return;
        }
        tracing::debug!(client_id = %self.client_id, topic = %w.topic, "publishing Will");
        let qos = w.qos;
        let message = self.will_message(w);
        self.ctx
            .metrics
            .messages_received
            .with_label_values(&[Metrics::qos_label(qos)])
            .inc();
        let mut message = message;
        message.stored_fanout = self.ctx.needs_fanout(&message);
        let message = Arc::new(message);
        if message.stored_fanout {
            // Nobody waits for a Will: its fan-out is committed in the background.
            self.ctx
                .fan_out(&message, Some(&self.client_id), Ticket::default());
        }
        self.ctx.route(message, Ticket::default());
    }
    /// The message a Will becomes when it is published.
    pub(super) fn will_message(&self, w: LastWill) -> Message {
        let mut properties = w.properties;
        properties.will_delay_interval = None;
        let now = Instant::now();
        let expires_at = properties
            .message_expiry_interval
            .take()
            .map(|s| now + Duration::from_secs(u64::from(s)));
        Message {
            topic: w.topic,
            payload: w.payload,
            qos: w.qos,
            retain: w.retain,
            properties,
            expires_at,
            publisher: Some(self.id),
            received: now,
            qos2_origin: None,
            stored_fanout: false,
        }
    }

    /// Brings the store's record of the pending Will in step with the lifecycle (in the background: a
    /// record that fails to commit leaves the Will to this node alone, as on a single node).
    pub(super) fn sync_will(&mut self) {
        let Some(store) = self.ctx.store.clone() else {
            return;
        };
        let want = self.lifecycle.will().map(|_| self.will_conn);
        if want == self.will_recorded {
            return;
        }
        if let Some(old) = self.will_recorded.take() {
            // A new connection's Will replaces it (SetWill below), unless that one is not recorded.
            let replaced = want.is_some()
                && self.ctx.remote.as_ref().is_some_and(|l| l.clustered())
                && self
                    .lifecycle
                    .will()
                    .is_some_and(|w| self.allowed(&w.topic, true));
            if !replaced {
                let commit = store.clear_will(&self.client_id, old);
                store.in_background("clear_will", &self.client_id, commit);
            }
        }
        let clustered = self.ctx.remote.as_ref().is_some_and(|l| l.clustered());
        let (Some(conn), Some(w), true) = (want, self.lifecycle.will(), clustered) else {
            return;
        };
        // A Will the ACL would not publish is not recorded either.
        if !self.allowed(&w.topic, true) {
            return;
        }
        let delay = w.properties.will_delay_interval.unwrap_or(0);
        let message_expiry = w.properties.message_expiry_interval;
        // Stored without expiry: it counts from when the Will fires.
        let mut message = self.will_message(w.clone());
        message.expires_at = None;
        let commit = store.set_will(
            &self.client_id,
            conn,
            &message,
            message_expiry,
            delay,
            self.lifecycle.expiry(),
        );
        store.in_background("set_will", &self.client_id, commit);
        self.will_recorded = Some(conn);
    }
}

impl SessionState {
    /// The cluster published connection `conn`'s Will (this node was counted as down): it goes from the
    /// lifecycle, so it is not published a second time.
    pub(super) fn will_fired(&mut self, conn: u64) {
        if self.will_conn == conn && self.lifecycle.will().is_some() {
            tracing::warn!(client_id = %self.client_id, "the cluster published this connection's Will while this node was counted as down: it is not published again");
            self.lifecycle.forget_will();
            self.will_recorded = None;
        }
    }
}
