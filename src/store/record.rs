//! The stored records: messages (retained, or a session's copy in its inbox), inbox entries and summaries,
//! and persistent session records.

use super::format::{self, FormatError};
use crate::broker::message::{Delivery, InboxRef, Message};
use crate::protocol::{
    self, Packet, ProtocolVersion, Publish, QoS, RetainHandling, SubscriptionOptions,
};
use bytes::BytesMut;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Unix time in milliseconds: stored message expiry keeps sub-second precision, so a message read back
/// loses only the time it waited [MQTT-3.3.2-6].
pub fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The header of a stored retained message; the tail is the message as an MQTT 5 PUBLISH.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct MessageHeader {
    /// Wall-clock expiry in unix milliseconds, 0 for none (expiry may use clocks; nothing orders by it).
    pub(super) expires: u64,
}

/// The header of an inbox entry (a session's copy of a message); the tail is the message as an MQTT 5
/// PUBLISH.
#[derive(Debug, Serialize, Deserialize)]
struct CopyHeader<'a> {
    /// QoS 2 copies the client already received (PUBREC): the packet id to resend PUBREL with.
    released: Option<u16>,
    qos: u8,
    retain: bool,
    sub_ids: Vec<u32>,
    /// The shared subscription (`$share/{group}/{filter}`) it came through.
    shared: Option<&'a str>,
    expires: u64,
    /// What the copy counts against its session's quota (see [`Message::weight`]).
    weight: u64,
}

/// The message's expiry as unix milliseconds (0: none); one still pending stays pending for at least 1 ms.
fn expiry_ms(m: &Message) -> u64 {
    let now = Instant::now();
    m.expires_at
        .map(|t| unix_now_ms() + (t.saturating_duration_since(now).as_millis() as u64).max(1))
        .unwrap_or(0)
}

/// Writes the message as an MQTT 5 PUBLISH (our own codec: every property survives).
fn put_publish(buf: &mut BytesMut, m: &Message) {
    let publish = Publish {
        topic: m.topic.clone(),
        payload: m.payload.clone(),
        qos: m.qos,
        retain: m.retain,
        pkid: if m.qos == QoS::AtMostOnce { 0 } else { 1 },
        properties: m.properties.clone(),
        ..Publish::default()
    };
    // A message the broker accepted always encodes; an error leaves no tail, which decodes to nothing.
    if protocol::encode_publish(&publish, ProtocolVersion::V5, buf).is_err() {
        tracing::error!(topic = %m.topic, "message could not be encoded for the store");
    }
}

/// Writes the stored form of a retained message into `buf` (after a command's header).
pub fn put_record(buf: &mut BytesMut, m: &Message) {
    let header = MessageHeader {
        expires: expiry_ms(m),
    };
    format::encode_into_bytes(buf, &header);
    put_publish(buf, m);
}

/// The stored form of a retained message, alone.
pub fn encode_record(m: &Message) -> Vec<u8> {
    let mut buf = BytesMut::new();
    put_record(&mut buf, m);
    buf.into()
}

/// A stored record back into a message; `None` when it expired or does not decode.
pub fn decode_record(record: &[u8]) -> Option<Message> {
    let (h, tail) = format::decode::<MessageHeader>(record)
        .map_err(|e| tracing::error!(error = %e, "stored retained message unreadable"))
        .ok()?;
    decode_publish(tail, h.expires, false)
}

/// The PUBLISH tail back into a message with its expiry; with `keep_expired` an expired message comes back
/// (already expired) instead of `None`: a QoS 2 copy its client received still needs its PUBREL.
fn decode_publish(tail: &[u8], expires: u64, keep_expired: bool) -> Option<Message> {
    let now = Instant::now();
    let expires_at = match expires {
        0 => None,
        t => match t.checked_sub(unix_now_ms()).filter(|&l| l > 0) {
            Some(left) => Some(now + Duration::from_millis(left)),
            None if keep_expired => Some(now),
            None => return None,
        },
    };
    let mut buf = BytesMut::from(tail);
    match protocol::decode(&mut buf, ProtocolVersion::V5, usize::MAX) {
        Ok(Some(Packet::Publish(p))) => {
            let mut m = Message::from_publish(p, None, now);
            m.expires_at = expires_at;
            Some(m)
        }
        _ => None,
    }
}

/// Writes the inbox entry for a session's copy of a message into `buf` (after a command's header): this is
/// the one encoding a durable copy gets on its way to sled.
pub(super) fn put_delivery(buf: &mut BytesMut, d: &Delivery) {
    let header = CopyHeader {
        released: None,
        qos: d.qos as u8,
        retain: d.retain,
        sub_ids: d.sub_ids.clone(),
        shared: d.shared.as_deref(),
        expires: expiry_ms(&d.message),
        weight: d.message.weight() as u64,
    };
    format::encode_into_bytes(buf, &header);
    put_publish(buf, &d.message);
}

/// The shared subscription (`$share/{group}/{filter}`) a stored copy came through, if any.
pub(super) fn copy_group(entry: &[u8]) -> Option<&str> {
    format::decode::<CopyHeader>(entry).ok()?.0.shared
}

/// The stored form of a session's copy of a message, alone (tests; the store writes it into its command).
pub fn encode_delivery(d: &Delivery) -> Vec<u8> {
    let mut buf = BytesMut::new();
    put_delivery(&mut buf, d);
    buf.into()
}

/// A stored copy back into a delivery; `None` when the message expired or the record does not decode.
pub fn decode_delivery(b: &[u8], seq: u64) -> Option<Delivery> {
    StoredCopy::decode(seq, b).delivery
}

/// The entry with the copy marked as received by the client with packet id `pkid`; `None` if unreadable.
pub(super) fn mark_released(v: &[u8], pkid: u16) -> Option<Vec<u8>> {
    let (mut h, tail) = format::decode::<CopyHeader>(v).ok()?;
    h.released = Some(pkid);
    Some(format::encode_with(&h, |buf| buf.extend_from_slice(tail)))
}

/// A stored message record (see [`put_record`]) split into its expiry and its PUBLISH.
pub(super) fn split_record(record: &[u8]) -> Option<(u64, &[u8])> {
    let (h, tail) = format::decode::<MessageHeader>(record).ok()?;
    Some((h.expires, tail))
}

/// A stored message record (see [`put_record`]) of the PUBLISH `publish` with the expiry `expires`.
pub(super) fn record_with_expiry(expires: u64, publish: &[u8]) -> Vec<u8> {
    format::encode_with(&MessageHeader { expires }, |buf| {
        buf.extend_from_slice(publish)
    })
}

/// The message of a stored PUBLISH with its expiry (`None`: expired or unreadable).
pub(super) fn decode_message(publish: &[u8], expires: u64) -> Option<Message> {
    decode_publish(publish, expires, false)
}

/// An inbox entry for a copy of the stored PUBLISH `publish` (apply's fan-out writes one per session).
pub(super) fn copy_entry(
    expires: u64,
    qos: QoS,
    retain: bool,
    sub_ids: &[u32],
    weight: u64,
    publish: &[u8],
) -> Vec<u8> {
    let header = CopyHeader {
        released: None,
        qos: qos as u8,
        retain,
        sub_ids: sub_ids.to_vec(),
        shared: None,
        expires,
        weight,
    };
    format::encode_with(&header, |buf| buf.extend_from_slice(publish))
}

/// Bytes an inbox entry counts against its session's quota (topic and payload, as in memory), recorded when
/// it was appended: appends and removals count alike.
pub(super) fn stored_weight(v: &[u8]) -> u64 {
    match format::decode::<CopyHeader>(v) {
        Ok((h, _)) => h.weight,
        Err(_) => 0,
    }
}

/// One inbox entry as read back from the store.
#[derive(Debug, Clone)]
pub struct StoredCopy {
    pub seq: u64,
    /// QoS 2 copies the client already received: the packet id to resend PUBREL with.
    pub released: Option<u16>,
    /// `None` when the message expired (and was not yet received) or the record does not decode.
    pub delivery: Option<Delivery>,
    /// Bytes it counts against the session's quota (see [`stored_weight`]).
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

impl StoredCopy {
    pub(super) fn decode(seq: u64, v: &[u8]) -> StoredCopy {
        let copy = |delivery| StoredCopy {
            seq,
            released: None,
            delivery,
            size: 0,
        };
        let (h, tail) = match format::decode::<CopyHeader>(v) {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(seq, error = %e, "stored inbox entry unreadable");
                return copy(None);
            }
        };
        // Received by the client: it gets its PUBREL even past the message's expiry.
        let delivery = QoS::from_u8(h.qos).and_then(|qos| {
            let message = decode_publish(tail, h.expires, h.released.is_some())?;
            Some(Delivery {
                message: Arc::new(message),
                qos,
                retain: h.retain,
                sub_ids: h.sub_ids,
                shared: h.shared.map(Into::into),
                durable: Some(InboxRef {
                    seq,
                    size: h.weight,
                }),
            })
        });
        StoredCopy {
            released: h.released,
            size: h.weight,
            ..copy(delivery)
        }
    }
}

/// A persistent session as stored: what a restarted broker needs to resume it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "StoredSession", try_from = "StoredSession")]
pub struct SessionRecord {
    /// This life of the session (a clean start begins another), assigned by apply from a counter in the
    /// state machine; its inbox entries carry it.
    pub incarnation: u64,
    /// Which create made this life of the session (see `Command::AbandonSession`); kept by apply.
    pub creator: u64,
    /// Session Expiry Interval in seconds.
    pub expiry: u32,
    /// When it went offline (unix seconds), 0 while a client is connected.
    pub offline_since: u64,
    /// (filter as subscribed, options, subscription identifier).
    pub subscriptions: Vec<(String, SubscriptionOptions, Option<u32>)>,
}

/// [`SessionRecord`] as stored (subscription options as their SUBSCRIBE byte).
#[derive(Serialize, Deserialize)]
struct StoredSession {
    incarnation: u64,
    creator: u64,
    expiry: u32,
    offline_since: u64,
    subscriptions: Vec<(String, u8, Option<u32>)>,
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

impl From<SessionRecord> for StoredSession {
    fn from(r: SessionRecord) -> StoredSession {
        StoredSession {
            incarnation: r.incarnation,
            creator: r.creator,
            expiry: r.expiry,
            offline_since: r.offline_since,
            subscriptions: r
                .subscriptions
                .iter()
                .map(|(f, o, id)| (f.clone(), options_byte(o), *id))
                .collect(),
        }
    }
}

impl TryFrom<StoredSession> for SessionRecord {
    type Error = FormatError;
    fn try_from(s: StoredSession) -> Result<SessionRecord, FormatError> {
        let subscriptions = s
            .subscriptions
            .into_iter()
            .map(|(f, o, id)| Ok((f, options_from(o).ok_or(FormatError::Options(o))?, id)))
            .collect::<Result<Vec<_>, FormatError>>()?;
        Ok(SessionRecord {
            incarnation: s.incarnation,
            creator: s.creator,
            expiry: s.expiry,
            offline_since: s.offline_since,
            subscriptions,
        })
    }
}

impl SessionRecord {
    pub fn encode(&self) -> Vec<u8> {
        format::encode(self)
    }

    pub fn decode(b: &[u8]) -> Result<SessionRecord, FormatError> {
        format::decode_exact(b)
    }

    /// The incarnation alone (the record's first field), without reading the subscriptions.
    pub fn decode_incarnation(b: &[u8]) -> Result<u64, FormatError> {
        #[derive(Deserialize)]
        struct First {
            incarnation: u64,
        }
        format::decode::<First>(b).map(|(f, _)| f.incarnation)
    }
}

/// A client's inbox counter (`c/`), kept by apply: what a restarted session needs without reading its inbox.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct InboxCounter {
    pub incarnation: u64,
    pub messages: u64,
    pub bytes: u64,
    /// The highest seq ever appended to this incarnation: a restarted session goes on after it, so a seq (and
    /// the packet id it gives) is never used for a second message, even once the first left the inbox.
    pub last_seq: u64,
}

impl InboxCounter {
    pub(super) fn decode(v: &[u8]) -> Option<InboxCounter> {
        format::decode_exact(v)
            .map_err(|e| tracing::error!(error = %e, "stored inbox counter unreadable"))
            .ok()
    }
}

/// The header of a recorded Will (`W/`); the tail is the Will as a stored message record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WillRecord {
    /// The node whose connection has it, and that connection.
    pub node: u64,
    pub conn: u64,
    /// Will Delay Interval and the session's expiry, seconds: the cluster fires it after the smaller.
    pub delay: u32,
    pub expiry: u32,
    /// Its Message Expiry Interval, counted from when it fires (the stored message has no expiry).
    pub message_expiry: Option<u32>,
}

impl WillRecord {
    /// The header and the message record after it.
    pub fn decode(v: &[u8]) -> Option<(WillRecord, &[u8])> {
        format::decode(v)
            .map_err(|e| tracing::error!(error = %e, "stored Will unreadable"))
            .ok()
    }
}

/// Which node holds a client's connection (`w/`), set by apply from claims in log order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerRecord {
    pub node: u64,
    /// Orders claims: a higher epoch was committed later.
    pub epoch: u64,
    /// Names the claim (the claiming node's choice).
    pub token: u64,
}

impl OwnerRecord {
    pub fn decode(v: &[u8]) -> Option<OwnerRecord> {
        format::decode_exact(v)
            .map_err(|e| tracing::error!(error = %e, "stored owner unreadable"))
            .ok()
    }
}
