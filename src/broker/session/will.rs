//! The session's Will in a cluster: while the lifecycle holds a Will (the connection is up, or gone within
//! its Will Delay), the store records it, so that if this node dies the cluster fires it (see
//! [`crate::broker::failover`]); once this node publishes or cancels it, the record goes.

use super::SessionState;
use crate::broker::message::Message;
use crate::protocol::LastWill;
use std::time::{Duration, Instant};

impl SessionState {
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
            if want.is_none() {
                let commit = store.clear_will(&self.client_id, old);
                store.in_background("clear_will", &self.client_id, commit);
                return;
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
        let message = self.will_message(w.clone());
        let commit = store.set_will(
            &self.client_id,
            conn,
            &message,
            delay,
            self.lifecycle.expiry(),
        );
        store.in_background("set_will", &self.client_id, commit);
        self.will_recorded = Some(conn);
    }
}
