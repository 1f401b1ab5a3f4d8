//! The stored records: messages (retained, or a session's copy in its inbox), inbox entries and summaries,
//! and persistent session records.

use super::command::Reader;
use crate::broker::message::{Delivery, InboxRef, Message};
use crate::protocol::{
    self, Packet, ProtocolVersion, Publish, QoS, RetainHandling, SubscriptionOptions,
};
use bytes::{BufMut, BytesMut};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// First byte of an inbox value whose QoS 2 message the client received (a delivery starts with its QoS).
pub(super) const RELEASED: u8 = 0xFE;

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The stored form of a message (retained, or in an inbox).
pub fn encode_record(m: &Message) -> Vec<u8> {
    let now = Instant::now();
    let expires = m
        .expires_at
        .map(|t| unix_now() + t.saturating_duration_since(now).as_secs().max(1))
        .unwrap_or(0);
    let publish = Publish {
        topic: m.topic.clone(),
        payload: m.payload.clone(),
        qos: m.qos,
        retain: m.retain,
        pkid: if m.qos == QoS::AtMostOnce { 0 } else { 1 },
        properties: m.properties.clone(),
        ..Publish::default()
    };
    let mut buf = BytesMut::new();
    buf.put_u64(expires);
    // A message the broker accepted always encodes; an error leaves an empty record that decodes to nothing.
    if protocol::encode(&Packet::Publish(publish), ProtocolVersion::V5, &mut buf).is_err() {
        tracing::error!(topic = %m.topic, "message could not be encoded for the store");
    }
    buf.into()
}

/// A stored record back into a message; `None` when it expired or does not decode.
pub fn decode_record(record: &[u8]) -> Option<Message> {
    decode_record_keeping(record, false)
}

/// Like [`decode_record`]; with `keep_expired` an expired message comes back (already expired) instead of
/// `None`: a QoS 2 copy its client received still needs its PUBREL, whatever its expiry.
fn decode_record_keeping(record: &[u8], keep_expired: bool) -> Option<Message> {
    let expires = u64::from_be_bytes(record.get(..8)?.try_into().ok()?);
    let now = Instant::now();
    let expires_at = match expires {
        0 => None,
        t => match t.checked_sub(unix_now()).filter(|&l| l > 0) {
            Some(left) => Some(now + Duration::from_secs(left)),
            None if keep_expired => Some(now),
            None => return None,
        },
    };
    let mut buf = BytesMut::from(&record[8..]);
    match protocol::decode(&mut buf, ProtocolVersion::V5, usize::MAX) {
        Ok(Some(Packet::Publish(p))) => {
            let mut m = Message::from_publish(p, None, now);
            m.expires_at = expires_at;
            Some(m)
        }
        _ => None,
    }
}

/// The stored form of a session's copy of a message: QoS, RETAIN flag, subscription identifiers, the shared
/// subscription it came through, then the message record.
pub fn encode_delivery(d: &Delivery) -> Vec<u8> {
    let mut b = vec![d.qos as u8, d.retain as u8];
    b.extend_from_slice(&(d.sub_ids.len() as u16).to_be_bytes());
    for id in &d.sub_ids {
        b.extend_from_slice(&id.to_be_bytes());
    }
    let shared = d.shared.as_deref().unwrap_or("");
    b.extend_from_slice(&(shared.len() as u16).to_be_bytes());
    b.extend_from_slice(shared.as_bytes());
    b.extend_from_slice(&encode_record(&d.message));
    b
}

/// A stored copy back into a delivery; `None` when the message expired or the record does not decode.
pub fn decode_delivery(b: &[u8], seq: u64) -> Option<Delivery> {
    decode_delivery_keeping(b, seq, false)
}

fn decode_delivery_keeping(b: &[u8], seq: u64, keep_expired: bool) -> Option<Delivery> {
    let mut r = Reader(b);
    let qos = QoS::from_u8(r.u8()?)?;
    let retain = r.u8()? != 0;
    let n = r.u16()?;
    let mut sub_ids = Vec::with_capacity(usize::from(n));
    for _ in 0..n {
        sub_ids.push(r.u32()?);
    }
    let shared = r.str16()?;
    let message = decode_record_keeping(r.rest(), keep_expired)?;
    Some(Delivery {
        message: Arc::new(message),
        qos,
        retain,
        sub_ids,
        shared: (!shared.is_empty()).then(|| shared.into()),
        durable: Some(InboxRef {
            seq,
            size: b.len() as u64,
        }),
    })
}

/// One inbox entry as read back from the store.
#[derive(Debug, Clone)]
pub struct StoredCopy {
    pub seq: u64,
    /// QoS 2 copies the client already received: the packet id to resend PUBREL with.
    pub released: Option<u16>,
    /// `None` when the message expired (and was not yet received) or the record does not decode.
    pub delivery: Option<Delivery>,
    /// Bytes it counts against the session's quota (its record as appended).
    pub size: u64,
}

/// What a session's stored inbox holds, read without reading the inbox.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InboxSummary {
    pub count: u64,
    pub bytes: u64,
    /// The highest seq ever appended to this incarnation (0 for none): the session goes on after it, so no
    /// seq (and no packet id derived from it) is used twice.
    pub last_seq: u64,
}

/// Bytes a stored inbox value counts for: the record as appended (a released QoS 2 copy carries 3 more).
pub(super) fn stored_weight(v: &[u8]) -> u64 {
    match v {
        [RELEASED, _, _, rest @ ..] => rest.len() as u64,
        _ => v.len() as u64,
    }
}

impl StoredCopy {
    pub(super) fn decode(seq: u64, v: &[u8]) -> StoredCopy {
        match v {
            [RELEASED, hi, lo, rest @ ..] => {
                // Received by the client: it gets its PUBREL even past the message's expiry.
                let delivery = decode_delivery_keeping(rest, seq, true);
                StoredCopy {
                    seq,
                    released: Some(u16::from_be_bytes([*hi, *lo])),
                    delivery,
                    size: stored_weight(v),
                }
            }
            _ => StoredCopy {
                seq,
                released: None,
                delivery: decode_delivery(v, seq),
                size: stored_weight(v),
            },
        }
    }
}

/// A persistent session as stored: what a restarted broker needs to resume it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// This life of the session (a clean start begins another); its inbox entries carry it.
    pub incarnation: u64,
    /// Session Expiry Interval in seconds.
    pub expiry: u32,
    /// When it went offline (unix seconds), 0 while a client is connected.
    pub offline_since: u64,
    /// (filter as subscribed, options, subscription identifier).
    pub subscriptions: Vec<(String, SubscriptionOptions, Option<u32>)>,
}

fn options_byte(o: &SubscriptionOptions) -> u8 {
    o.qos as u8
        | (o.no_local as u8) << 2
        | (o.retain_as_published as u8) << 3
        | (o.retain_handling as u8) << 4
}

fn options_from(b: u8) -> Option<SubscriptionOptions> {
    Some(SubscriptionOptions {
        qos: QoS::from_u8(b & 3)?,
        no_local: b & 4 != 0,
        retain_as_published: b & 8 != 0,
        retain_handling: match (b >> 4) & 3 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendIfNew,
            _ => RetainHandling::DoNotSend,
        },
    })
}

impl SessionRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&self.incarnation.to_be_bytes());
        b.extend_from_slice(&self.expiry.to_be_bytes());
        b.extend_from_slice(&self.offline_since.to_be_bytes());
        b.extend_from_slice(&(self.subscriptions.len() as u32).to_be_bytes());
        for (filter, options, sub_id) in &self.subscriptions {
            b.extend_from_slice(&(filter.len() as u16).to_be_bytes());
            b.extend_from_slice(filter.as_bytes());
            b.push(options_byte(options));
            b.extend_from_slice(&sub_id.unwrap_or(0).to_be_bytes());
        }
        b
    }

    pub fn decode(b: &[u8]) -> Option<SessionRecord> {
        let mut r = Reader(b);
        let incarnation = r.u64()?;
        let expiry = r.u32()?;
        let offline_since = r.u64()?;
        let n = r.u32()? as usize;
        let mut subscriptions = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            let filter = r.str16()?;
            let options = options_from(r.u8()?)?;
            let sub_id = r.u32()?;
            subscriptions.push((filter, options, (sub_id != 0).then_some(sub_id)));
        }
        Some(SessionRecord {
            incarnation,
            expiry,
            offline_since,
            subscriptions,
        })
    }
}
