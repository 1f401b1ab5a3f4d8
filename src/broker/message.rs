//! A routed application message and one subscriber's copy of it. The payload is `Bytes` and the message is
//! shared behind an `Arc`: fan-out to many sessions never copies it.

use crate::protocol::{Properties, Publish, QoS};
use bytes::Bytes;
use std::sync::Arc;
use std::time::Instant;

/// Identifies a session incarnation (a new one after clean start), for no-local and subscriber maps.
pub type SessionId = u64;

/// An application message as it travels through the broker.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    /// The RETAIN flag as published.
    pub retain: bool,
    /// Forwarded unchanged: payload format, content type, response topic, correlation data, user properties.
    /// Topic alias and subscription identifiers are per connection; message expiry is `expires_at`.
    pub properties: Properties,
    /// When the message expires (v5 Message Expiry Interval), measured from its arrival.
    pub expires_at: Option<Instant>,
    /// The publishing session, for No Local; `None` for the broker's own messages ($SYS, Wills of ended sessions).
    pub publisher: Option<SessionId>,
    /// When the broker received it, for the delivery latency histogram.
    pub received: Instant,
    /// A QoS 2 PUBLISH of a persistent session: (its client id, its packet id). Persistent subscribers store
    /// their copy at most once per such pair until the publisher releases it, so a resend routed again after
    /// a crash (before the id was recorded) adds nothing twice.
    pub qos2_origin: Option<Arc<Qos2Origin>>,
    /// Its publishing node proposed its fan-out to persistent sessions through the store
    /// (`Command::Publish`): every persistent session whose subscription was committed before it has its
    /// copy from there, and takes none from the shards. False: a persistent session that gets it from a
    /// shard stores its copy itself.
    pub stored_fanout: bool,
}

/// Who published a QoS 2 message, for at-most-once storage of its copies (see [`Message::qos2_origin`]).
#[derive(Debug, PartialEq, Eq)]
pub struct Qos2Origin {
    pub client_id: String,
    pub pkid: u16,
}

impl Message {
    /// Builds a message from an inbound PUBLISH (its alias already resolved).
    pub fn from_publish(p: Publish, publisher: Option<SessionId>, now: Instant) -> Message {
        let mut properties = p.properties;
        let expires_at = properties
            .message_expiry_interval
            .take()
            .map(|s| now + std::time::Duration::from_secs(u64::from(s)));
        properties.topic_alias = None;
        properties.subscription_identifiers.clear();
        Message {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            properties,
            expires_at,
            publisher,
            received: now,
            qos2_origin: None,
            stored_fanout: false,
        }
    }

    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }

    /// Bytes this message accounts for in queues.
    pub fn weight(&self) -> usize {
        self.payload.len() + self.topic.len()
    }
}

/// One subscriber's copy: the message and what its subscription(s) made of it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message: Arc<Message>,
    /// min(published QoS, granted QoS), the highest over the session's matching subscriptions.
    pub qos: QoS,
    /// The RETAIN flag to send: set for retained messages sent on subscribe, else as published only with
    /// Retain As Published.
    pub retain: bool,
    /// Subscription identifiers of every matching subscription (v5).
    pub sub_ids: Vec<u32>,
    /// `group/filter` when it came through a shared subscription, so it can be handed to another member.
    pub shared: Option<Arc<str>>,
    /// Where the copy sits in the session's inbox in the store, when it is durable (a persistent session's
    /// QoS 1/2 message): removed from there once it leaves the session.
    pub durable: Option<InboxRef>,
}

/// A durable copy's place in its session's stored inbox, and the size it counts against the session's quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboxRef {
    pub seq: u64,
    /// What it counts against its session's `max_queued_bytes` (topic and payload, see [`Message::weight`]).
    pub size: u64,
}

impl Delivery {
    /// The PUBLISH to send; `None` when the message expired on the way [MQTT-3.3.2-5]. The remaining expiry
    /// is forwarded [MQTT-3.3.2-6].
    pub fn to_publish(&self, pkid: u16, dup: bool, now: Instant) -> Option<Publish> {
        let m = &self.message;
        let mut properties = m.properties.clone();
        if let Some(at) = m.expires_at {
            let left = at.checked_duration_since(now)?;
            if left.is_zero() {
                return None;
            }
            // To the nearest second: a message that waited 10 ms of its 4 s still says 4.
            let secs = (left.as_millis() + 500) / 1000;
            properties.message_expiry_interval = Some(secs.clamp(1, u128::from(u32::MAX)) as u32);
        }
        properties.subscription_identifiers = self.sub_ids.clone();
        Some(Publish {
            dup,
            qos: self.qos,
            retain: self.retain,
            topic: m.topic.clone(),
            pkid,
            properties,
            payload: m.payload.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn expiry_is_forwarded_as_remaining_time_and_expired_messages_are_not_sent() {
        let t0 = Instant::now();
        let mut p = Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "a".into(),
            pkid: 7,
            properties: Properties::default(),
            payload: Bytes::from_static(b"x"),
        };
        p.properties.message_expiry_interval = Some(10);
        p.properties.topic_alias = Some(3);
        let m = Arc::new(Message::from_publish(p, Some(1), t0));
        assert_eq!(m.properties.topic_alias, None);
        let d = Delivery {
            message: m,
            qos: QoS::AtMostOnce,
            retain: false,
            sub_ids: vec![4],
            shared: None,
            durable: None,
        };
        let out = d.to_publish(0, false, t0 + Duration::from_secs(4)).unwrap();
        assert_eq!(out.properties.message_expiry_interval, Some(6));
        // Only the time waited is taken off, to the nearest second, never down to 0 while pending.
        for (waited_ms, left) in [
            (10, 10),
            (499, 10),
            (501, 9),
            (3_600, 6),
            (9_400, 1),
            (9_990, 1),
        ] {
            let out = d
                .to_publish(0, false, t0 + Duration::from_millis(waited_ms))
                .unwrap();
            assert_eq!(
                out.properties.message_expiry_interval,
                Some(left),
                "{waited_ms} ms"
            );
        }
        assert_eq!(out.properties.subscription_identifiers, vec![4]);
        assert_eq!(out.qos, QoS::AtMostOnce);
        assert!(d
            .to_publish(0, false, t0 + Duration::from_secs(10))
            .is_none());
    }
}
