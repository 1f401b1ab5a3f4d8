//! Broker state on the replicated store (`cicada-cluster`): the commands, their encodings, and the state
//! machine every node applies in log order.
//!
//! Retained messages are stored under `r/{topic}` as a record: the wall-clock expiry (unix seconds, 0 for
//! none) followed by the message as an MQTT 5 PUBLISH (our own codec: every property survives). The applied
//! state is mirrored into the in-memory [`MemoryRetained`] index that subscriptions match against.
//!
//! Persistent sessions are stored under `s/{client id}` (version, then [`SessionRecord`]), and the QoS 1/2
//! messages waiting for them (queued or not yet acknowledged by the client) under
//! `i/{client id}\0{incarnation}{seq}`: the session's inbox. An incarnation is one life of a session (a clean
//! start begins another), so appends of a replaced session can never leak into its successor. `c/{client id}`
//! counts the inbox (incarnation, messages, bytes), kept by apply, so a session restored at start knows its
//! backlog and quota without reading it: the inbox itself is read in pages as the client takes it.

use crate::broker::message::{Delivery, InboxRef, Message};
use crate::broker::retained::{MemoryRetained, RetainedStore};
use crate::protocol::{
    self, Packet, ProtocolVersion, Publish, QoS, RetainHandling, SubscriptionOptions,
};
use bytes::{BufMut, BytesMut};
use cicada_cluster::{Cluster, ClusterConfig, ClusterError, StateMachine, Txn, View};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const SET_RETAINED: u8 = 1;
const CLEAR_RETAINED: u8 = 2;
const PUT_SESSION: u8 = 3;
const DELETE_SESSION: u8 = 4;
const INBOX_APPEND: u8 = 5;
const INBOX_ACK: u8 = 6;
const INBOX_RELEASE: u8 = 7;
const QOS2_RECEIVED: u8 = 8;
const QOS2_RELEASED: u8 = 9;
const INBOX_APPEND_ONCE: u8 = 10;
/// First byte of an inbox value whose QoS 2 message the client received (a delivery starts with its QoS).
const RELEASED: u8 = 0xFE;
const RETAINED_PREFIX: &[u8] = b"r/";
const SESSION_PREFIX: &[u8] = b"s/";
const INBOX_PREFIX: &[u8] = b"i/";
const COUNTER_PREFIX: &[u8] = b"c/";
const QOS2_PREFIX: &[u8] = b"q/";
const ONCE_PREFIX: &[u8] = b"o/";
/// What apply answers: the command changed the state, or it was ignored (stale incarnation, no session).
pub const APPLIED: &[u8] = &[1];
pub const IGNORED: &[u8] = &[0];
/// What apply answers to an append whose copy the session already has (see [`Command::InboxAppend`]).
pub const DUPLICATE: &[u8] = &[2];

/// What became of an inbox append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    Stored,
    /// The session already has this QoS 2 message of this publisher: nothing was added.
    Duplicate,
    /// The session's incarnation is no longer the stored one.
    Ignored,
}

/// A change to durable broker state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Stores a retained message record (see the module doc) for its topic.
    SetRetained {
        topic: String,
        record: Vec<u8>,
    },
    ClearRetained {
        topic: String,
    },
    /// Stores a persistent session's record; applied only if `version` is newer than the stored one
    /// (a session's proposals may commit out of order).
    PutSession {
        client_id: String,
        version: u64,
        record: Vec<u8>,
    },
    /// Forgets a session (clean start, expiry); applied only if `version` is newer than the stored one.
    DeleteSession {
        client_id: String,
        version: u64,
    },
    /// A message for a persistent session (see [`encode_delivery`]); applied only while the stored session
    /// is this incarnation. `once`: a QoS 2 message of a persistent publisher (its client id and packet id),
    /// stored at most once per session until that publisher releases the id, so a resend that is routed again
    /// after a crash adds no second copy.
    InboxAppend {
        client_id: String,
        incarnation: u64,
        seq: u64,
        record: Vec<u8>,
        once: Option<(String, u16)>,
    },
    /// QoS 2: the client sent PUBREC for the copy, which it received with packet id `pkid`.
    InboxRelease {
        client_id: String,
        incarnation: u64,
        seq: u64,
        pkid: u16,
    },
    /// A persistent session's client sent a QoS 2 PUBLISH with this packet id, which was routed: until PUBREL
    /// a resend with the id is not routed again, whatever restarts or takeovers come between
    /// [MQTT-4.3.3-9]. Applied only while the session is stored.
    Qos2Received {
        client_id: String,
        pkid: u16,
    },
    /// The client released it (PUBREL): the id is free again.
    Qos2Released {
        client_id: String,
        pkid: u16,
    },
    /// Messages the client acknowledged (or that left the session otherwise): removed from the inbox.
    InboxAck {
        client_id: String,
        incarnation: u64,
        seqs: Vec<u64>,
    },
}

/// Reads the fixed-size fields and length-prefixed strings of an encoded command.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn str32(&mut self) -> Option<String> {
        let n = self.u32()? as usize;
        Some(std::str::from_utf8(self.take(n)?).ok()?.to_string())
    }
    fn str16(&mut self) -> Option<String> {
        let n = usize::from(self.u16()?);
        Some(std::str::from_utf8(self.take(n)?).ok()?.to_string())
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
    fn rest_str(&mut self) -> Option<String> {
        Some(std::str::from_utf8(self.rest()).ok()?.to_string())
    }
}

fn put_str32(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(&(s.len() as u32).to_be_bytes());
    b.extend_from_slice(s.as_bytes());
}

impl Command {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        match self {
            Command::SetRetained { topic, record } => {
                b.push(SET_RETAINED);
                b.extend_from_slice(&(topic.len() as u32).to_be_bytes());
                b.extend_from_slice(topic.as_bytes());
                b.extend_from_slice(record);
            }
            Command::ClearRetained { topic } => {
                b.push(CLEAR_RETAINED);
                b.extend_from_slice(topic.as_bytes());
            }
            Command::PutSession {
                client_id,
                version,
                record,
            } => {
                b.push(PUT_SESSION);
                b.extend_from_slice(&version.to_be_bytes());
                b.extend_from_slice(&(client_id.len() as u32).to_be_bytes());
                b.extend_from_slice(client_id.as_bytes());
                b.extend_from_slice(record);
            }
            Command::DeleteSession { client_id, version } => {
                b.push(DELETE_SESSION);
                b.extend_from_slice(&version.to_be_bytes());
                b.extend_from_slice(client_id.as_bytes());
            }
            Command::InboxAppend {
                client_id,
                incarnation,
                seq,
                record,
                once,
            } => {
                b.push(if once.is_some() {
                    INBOX_APPEND_ONCE
                } else {
                    INBOX_APPEND
                });
                put_str32(&mut b, client_id);
                b.extend_from_slice(&incarnation.to_be_bytes());
                b.extend_from_slice(&seq.to_be_bytes());
                if let Some((publisher, pkid)) = once {
                    put_str32(&mut b, publisher);
                    b.extend_from_slice(&pkid.to_be_bytes());
                }
                b.extend_from_slice(record);
            }
            Command::InboxRelease {
                client_id,
                incarnation,
                seq,
                pkid,
            } => {
                b.push(INBOX_RELEASE);
                put_str32(&mut b, client_id);
                b.extend_from_slice(&incarnation.to_be_bytes());
                b.extend_from_slice(&seq.to_be_bytes());
                b.extend_from_slice(&pkid.to_be_bytes());
            }
            Command::Qos2Received { client_id, pkid }
            | Command::Qos2Released { client_id, pkid } => {
                b.push(if matches!(self, Command::Qos2Received { .. }) {
                    QOS2_RECEIVED
                } else {
                    QOS2_RELEASED
                });
                b.extend_from_slice(&pkid.to_be_bytes());
                b.extend_from_slice(client_id.as_bytes());
            }
            Command::InboxAck {
                client_id,
                incarnation,
                seqs,
            } => {
                b.push(INBOX_ACK);
                put_str32(&mut b, client_id);
                b.extend_from_slice(&incarnation.to_be_bytes());
                for seq in seqs {
                    b.extend_from_slice(&seq.to_be_bytes());
                }
            }
        }
        b
    }

    pub fn decode(b: &[u8]) -> Option<Command> {
        let (&kind, rest) = b.split_first()?;
        let mut r = Reader(rest);
        match kind {
            SET_RETAINED => Some(Command::SetRetained {
                topic: r.str32()?,
                record: r.rest().to_vec(),
            }),
            CLEAR_RETAINED => Some(Command::ClearRetained {
                topic: r.rest_str()?,
            }),
            PUT_SESSION => {
                let version = r.u64()?;
                Some(Command::PutSession {
                    client_id: r.str32()?,
                    version,
                    record: r.rest().to_vec(),
                })
            }
            DELETE_SESSION => {
                let version = r.u64()?;
                Some(Command::DeleteSession {
                    client_id: r.rest_str()?,
                    version,
                })
            }
            INBOX_APPEND | INBOX_APPEND_ONCE => {
                let client_id = r.str32()?;
                let incarnation = r.u64()?;
                let seq = r.u64()?;
                let once = if kind == INBOX_APPEND_ONCE {
                    Some((r.str32()?, r.u16()?))
                } else {
                    None
                };
                Some(Command::InboxAppend {
                    client_id,
                    incarnation,
                    seq,
                    record: r.rest().to_vec(),
                    once,
                })
            }
            INBOX_RELEASE => {
                let cmd = Command::InboxRelease {
                    client_id: r.str32()?,
                    incarnation: r.u64()?,
                    seq: r.u64()?,
                    pkid: r.u16()?,
                };
                r.0.is_empty().then_some(cmd)
            }
            QOS2_RECEIVED | QOS2_RELEASED => {
                let pkid = r.u16()?;
                let client_id = r.rest_str()?;
                Some(if kind == QOS2_RECEIVED {
                    Command::Qos2Received { client_id, pkid }
                } else {
                    Command::Qos2Released { client_id, pkid }
                })
            }
            INBOX_ACK => {
                let client_id = r.str32()?;
                let incarnation = r.u64()?;
                let mut seqs = Vec::new();
                while !r.0.is_empty() {
                    seqs.push(r.u64()?);
                }
                Some(Command::InboxAck {
                    client_id,
                    incarnation,
                    seqs,
                })
            }
            _ => None,
        }
    }
}

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
fn stored_weight(v: &[u8]) -> u64 {
    match v {
        [RELEASED, _, _, rest @ ..] => rest.len() as u64,
        _ => v.len() as u64,
    }
}

impl StoredCopy {
    fn decode(seq: u64, v: &[u8]) -> StoredCopy {
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

/// The broker's state machine: applies commands to sled and mirrors retained messages into memory.
pub struct BrokerMachine {
    retained: Arc<MemoryRetained>,
    /// Messages in all inboxes (`cicada_store_inbox_messages`).
    inbox: prometheus::IntGauge,
}

fn session_key(client_id: &str) -> Vec<u8> {
    let mut k = SESSION_PREFIX.to_vec();
    k.extend_from_slice(client_id.as_bytes());
    k
}

/// Whether `version` is newer than the stored session value's (stored values start with their version).
fn newer(txn: &Txn<'_>, key: &[u8], version: u64) -> bool {
    match txn.get(key) {
        Ok(Some(v)) if v.len() >= 8 => {
            version > u64::from_be_bytes(v[..8].try_into().expect("8 bytes"))
        }
        _ => true,
    }
}

/// `i/{client id}\0`: every inbox entry of the client, whatever the incarnation.
fn inbox_prefix(client_id: &str) -> Vec<u8> {
    let mut k = INBOX_PREFIX.to_vec();
    k.extend_from_slice(client_id.as_bytes());
    k.push(0);
    k
}

fn inbox_key(client_id: &str, incarnation: u64, seq: u64) -> Vec<u8> {
    let mut k = inbox_prefix(client_id);
    k.extend_from_slice(&incarnation.to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// `q/{client id}\0`: the client's inbound QoS 2 ids awaiting PUBREL.
fn qos2_prefix(client_id: &str) -> Vec<u8> {
    let mut k = QOS2_PREFIX.to_vec();
    k.extend_from_slice(client_id.as_bytes());
    k.push(0);
    k
}

fn qos2_key(client_id: &str, pkid: u16) -> Vec<u8> {
    let mut k = qos2_prefix(client_id);
    k.extend_from_slice(&pkid.to_be_bytes());
    k
}

/// `o/{publisher}\0{pkid}`: the sessions that stored a copy of the publisher's QoS 2 message with that id.
fn once_prefix(publisher: &str, pkid: Option<u16>) -> Vec<u8> {
    let mut k = ONCE_PREFIX.to_vec();
    k.extend_from_slice(publisher.as_bytes());
    k.push(0);
    if let Some(pkid) = pkid {
        k.extend_from_slice(&pkid.to_be_bytes());
    }
    k
}

fn remove_prefix(txn: &mut Txn<'_>, prefix: &[u8]) {
    for k in txn.keys_with_prefix(prefix).unwrap_or_default() {
        txn.remove(&k);
    }
}

/// Forgets a client's inbound QoS 2 ids and the copies its QoS 2 messages left (its session ended or
/// began again).
fn drop_qos2(txn: &mut Txn<'_>, client_id: &str) {
    remove_prefix(txn, &qos2_prefix(client_id));
    remove_prefix(txn, &once_prefix(client_id, None));
}

fn counter_key(client_id: &str) -> Vec<u8> {
    let mut k = COUNTER_PREFIX.to_vec();
    k.extend_from_slice(client_id.as_bytes());
    k
}

/// (incarnation, messages, bytes) of a client's inbox counter.
fn parse_counter(v: &[u8]) -> Option<(u64, u64, u64)> {
    let n = |i: usize| Some(u64::from_be_bytes(v.get(i..i + 8)?.try_into().ok()?));
    Some((n(0)?, n(8)?, n(16)?))
}

/// The highest seq ever appended to the counter's incarnation: a restarted session goes on after it, so a
/// seq (and the packet id it gives) is never used for a second message, even once the first left the inbox.
fn counter_last_seq(v: &[u8]) -> u64 {
    v.get(24..32)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

/// Adds to the inbox counter of `incarnation` (another incarnation's counter starts over).
fn count_inbox(
    txn: &mut Txn<'_>,
    client_id: &str,
    incarnation: u64,
    messages: i64,
    bytes: i64,
    appended: u64,
) {
    let key = counter_key(client_id);
    let stored = txn.get(&key).ok().flatten();
    let (c, b, last) = match stored.as_deref().and_then(|v| Some((parse_counter(v)?, v))) {
        Some(((inc, c, b), v)) if inc == incarnation => (c, b, counter_last_seq(v)),
        _ => (0, 0, 0),
    };
    let mut v = incarnation.to_be_bytes().to_vec();
    v.extend_from_slice(&c.saturating_add_signed(messages).to_be_bytes());
    v.extend_from_slice(&b.saturating_add_signed(bytes).to_be_bytes());
    v.extend_from_slice(&last.max(appended).to_be_bytes());
    txn.insert(&key, &v);
}

/// The incarnation of the live session stored under `key` (a tombstone has none).
fn stored_incarnation(txn: &Txn<'_>, key: &[u8]) -> Option<u64> {
    match txn.get(key) {
        Ok(Some(v)) if v.len() >= 16 => {
            Some(u64::from_be_bytes(v[8..16].try_into().expect("8 bytes")))
        }
        _ => None,
    }
}

/// Removes the client's inbox entries except those of `keep` (an incarnation); returns how many.
fn drop_inbox(txn: &mut Txn<'_>, client_id: &str, keep: Option<u64>) -> i64 {
    let prefix = inbox_prefix(client_id);
    let keys = txn.keys_with_prefix(&prefix).unwrap_or_default();
    let mut removed = 0;
    for k in keys {
        let incarnation = k
            .get(prefix.len()..prefix.len() + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes);
        if incarnation != keep {
            txn.remove(&k);
            removed += 1;
        }
    }
    if keep.is_none() {
        txn.remove(&counter_key(client_id));
    }
    removed
}

fn retained_key(topic: &str) -> Vec<u8> {
    let mut k = RETAINED_PREFIX.to_vec();
    k.extend_from_slice(topic.as_bytes());
    k
}

impl BrokerMachine {
    fn load(&self, view: &View) {
        self.retained.clear_all();
        for (k, v) in view.scan_prefix(RETAINED_PREFIX).flatten() {
            if let Some(m) = decode_record(&v) {
                self.retained.set(Arc::new(m));
            } else {
                tracing::debug!(key = %String::from_utf8_lossy(&k), "stored retained message expired or unreadable");
            }
        }
        let stored: u64 = view
            .scan_prefix(COUNTER_PREFIX)
            .flatten()
            .filter_map(|(_, v)| parse_counter(&v).map(|(_, c, _)| c))
            .sum();
        self.inbox.set(stored as i64);
    }
}

impl StateMachine for BrokerMachine {
    fn apply(&mut self, txn: &mut Txn<'_>, command: &[u8]) -> Vec<u8> {
        let mut outcome = APPLIED;
        match Command::decode(command) {
            Some(Command::SetRetained { topic, record }) => {
                txn.insert(&retained_key(&topic), &record);
                match decode_record(&record) {
                    Some(m) => self.retained.set(Arc::new(m)),
                    None => self.retained.clear(&topic),
                }
            }
            Some(Command::ClearRetained { topic }) => {
                txn.remove(&retained_key(&topic));
                self.retained.clear(&topic);
            }
            Some(Command::PutSession {
                client_id,
                version,
                record,
            }) => {
                let key = session_key(&client_id);
                if newer(txn, &key, version) {
                    let incarnation = record
                        .get(..8)
                        .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")));
                    if stored_incarnation(txn, &key) != incarnation {
                        // A new life of the session: what the previous one left in the inbox goes, and
                        // so do its inbound QoS 2 ids.
                        self.inbox.sub(drop_inbox(txn, &client_id, incarnation));
                        drop_qos2(txn, &client_id);
                    }
                    let mut v = version.to_be_bytes().to_vec();
                    v.extend_from_slice(&record);
                    txn.insert(&key, &v);
                }
            }
            Some(Command::DeleteSession { client_id, version }) => {
                let key = session_key(&client_id);
                if newer(txn, &key, version) {
                    // A tombstone keeps the version, so an older put that commits later stays ignored.
                    txn.insert(&key, &version.to_be_bytes());
                    self.inbox.sub(drop_inbox(txn, &client_id, None));
                    drop_qos2(txn, &client_id);
                }
            }
            Some(Command::InboxAppend {
                client_id,
                incarnation,
                seq,
                record,
                once,
            }) => {
                let once_key = once.as_ref().map(|(publisher, pkid)| {
                    let mut k = once_prefix(publisher, Some(*pkid));
                    k.extend_from_slice(client_id.as_bytes());
                    k
                });
                let live = stored_incarnation(txn, &session_key(&client_id)) == Some(incarnation);
                if live
                    && once_key
                        .as_ref()
                        .is_some_and(|k| matches!(txn.get(k), Ok(Some(_))))
                {
                    outcome = DUPLICATE;
                } else if live {
                    if let Some(k) = &once_key {
                        txn.insert(k, &[]);
                    }
                    txn.insert(&inbox_key(&client_id, incarnation, seq), &record);
                    count_inbox(txn, &client_id, incarnation, 1, record.len() as i64, seq);
                    self.inbox.inc();
                } else {
                    outcome = IGNORED;
                }
            }
            Some(Command::InboxRelease {
                client_id,
                incarnation,
                seq,
                pkid,
            }) => {
                let key = inbox_key(&client_id, incarnation, seq);
                match txn.get(&key) {
                    Ok(Some(v)) => {
                        if v.first() != Some(&RELEASED) {
                            let mut released = vec![RELEASED];
                            released.extend_from_slice(&pkid.to_be_bytes());
                            released.extend_from_slice(&v);
                            txn.insert(&key, &released);
                        }
                    }
                    _ => outcome = IGNORED,
                }
            }
            Some(Command::Qos2Received { client_id, pkid }) => {
                if stored_incarnation(txn, &session_key(&client_id)).is_some() {
                    txn.insert(&qos2_key(&client_id, pkid), &[]);
                } else {
                    outcome = IGNORED;
                }
            }
            Some(Command::Qos2Released { client_id, pkid }) => {
                txn.remove(&qos2_key(&client_id, pkid));
                remove_prefix(txn, &once_prefix(&client_id, Some(pkid)));
            }
            Some(Command::InboxAck {
                client_id,
                incarnation,
                seqs,
            }) => {
                let (mut messages, mut bytes) = (0, 0);
                for seq in seqs {
                    let key = inbox_key(&client_id, incarnation, seq);
                    if let Ok(Some(v)) = txn.get(&key) {
                        txn.remove(&key);
                        messages += 1;
                        bytes += stored_weight(&v) as i64;
                    }
                }
                if messages > 0 {
                    count_inbox(txn, &client_id, incarnation, -messages, -bytes, 0);
                    self.inbox.sub(messages);
                }
            }
            None => {
                tracing::error!("undecodable store command skipped");
                outcome = IGNORED;
            }
        }
        outcome.to_vec()
    }

    fn restored(&mut self, view: &View) {
        self.load(view);
    }
}

/// The node's store: the raft group and the in-memory mirror of what it applied.
pub struct Store {
    cluster: Cluster,
    pub retained: Arc<MemoryRetained>,
}

impl Store {
    /// Opens the store in `data_dir` (a single node: a raft group of one) and loads the retained index.
    pub async fn open(
        data_dir: &Path,
        fsync: cicada_cluster::Fsync,
        cache_bytes: u64,
        registry: &prometheus::Registry,
    ) -> Result<Store, ClusterError> {
        let retained = Arc::new(MemoryRetained::default());
        let mut config = ClusterConfig::single(data_dir.join("store"));
        config.fsync = fsync;
        config.cache_capacity = cache_bytes;
        let inbox = prometheus::IntGauge::new(
            "cicada_store_inbox_messages",
            "QoS 1/2 messages stored for persistent sessions (queued or awaiting the client's acknowledgement).",
        )
        .expect("valid metric");
        registry
            .register(Box::new(inbox.clone()))
            .map_err(|e| ClusterError::Start(e.to_string()))?;
        let machine = BrokerMachine {
            retained: retained.clone(),
            inbox,
        };
        // The machine loads what was applied before this start (`restored`), then raft replays the rest:
        // entries that were committed (and acknowledged) but whose state write a kill -9 lost. The read
        // barrier returns once they are applied, so nothing is served from a state older than acknowledged.
        let cluster = Cluster::start(config, machine, registry).await?;
        let applied = cluster.read_index().await?;
        tracing::info!(applied, retained = retained.len(), "store opened");
        Ok(Store { cluster, retained })
    }

    /// Commits a retained message (set, or clear for an empty payload). The command is queued when this is
    /// called (calls commit in call order); the future resolves once it is durable.
    pub fn retain(
        &self,
        m: &Message,
    ) -> impl std::future::Future<Output = Result<(), ClusterError>> + Send + 'static {
        let cmd = if m.payload.is_empty() {
            Command::ClearRetained {
                topic: m.topic.clone(),
            }
        } else {
            Command::SetRetained {
                topic: m.topic.clone(),
                record: encode_record(m),
            }
        };
        let commit = self.cluster.submit(cmd.encode());
        async move { commit.await.map(|_| ()) }
    }

    /// Saves a persistent session's record (fire and forget, ordered by `version`).
    pub fn put_session(&self, client_id: &str, version: u64, record: &SessionRecord) {
        self.spawn_propose(Command::PutSession {
            client_id: client_id.to_string(),
            version,
            record: record.encode(),
        });
    }

    /// Forgets a session's record.
    pub fn delete_session(&self, client_id: &str, version: u64) {
        self.spawn_propose(Command::DeleteSession {
            client_id: client_id.to_string(),
            version,
        });
    }

    /// Appends a persistent session's copy of a message (`record`: [`encode_delivery`]) to its inbox. The command
    /// is queued at once (a session's commands commit in call order); the future says whether it committed and
    /// applied (`false`: the store ignored it, the session's incarnation being no longer the stored one).
    pub fn inbox_append(
        &self,
        client_id: &str,
        incarnation: u64,
        seq: u64,
        record: Vec<u8>,
        once: Option<(String, u16)>,
    ) -> impl std::future::Future<Output = Result<Appended, ClusterError>> + Send + 'static {
        let commit = self.cluster.submit(
            Command::InboxAppend {
                client_id: client_id.to_string(),
                incarnation,
                seq,
                record,
                once,
            }
            .encode(),
        );
        async move {
            commit.await.map(|r| match &r[..] {
                r if r == APPLIED => Appended::Stored,
                r if r == DUPLICATE => Appended::Duplicate,
                _ => Appended::Ignored,
            })
        }
    }

    /// Marks a QoS 2 copy as received by the client with packet id `pkid` (ordered after its append); the
    /// future says whether the mark is committed (its PUBREL may go).
    pub fn inbox_release(
        &self,
        client_id: &str,
        incarnation: u64,
        seq: u64,
        pkid: u16,
    ) -> impl std::future::Future<Output = Result<bool, ClusterError>> + Send + 'static {
        let commit = self.cluster.submit(
            Command::InboxRelease {
                client_id: client_id.to_string(),
                incarnation,
                seq,
                pkid,
            }
            .encode(),
        );
        async move { commit.await.map(|r| r == APPLIED) }
    }

    /// Removes messages that left a session from its inbox (ordered after their appends).
    pub fn inbox_ack(&self, client_id: &str, incarnation: u64, seqs: Vec<u64>) {
        self.spawn_propose(Command::InboxAck {
            client_id: client_id.to_string(),
            incarnation,
            seqs,
        });
    }

    /// Records an inbound QoS 2 id of a persistent session (see [`Command::Qos2Received`]); the future says
    /// whether it is committed (`false`: the store has no such session).
    pub fn qos2_received(
        &self,
        client_id: &str,
        pkid: u16,
    ) -> impl std::future::Future<Output = Result<bool, ClusterError>> + Send + 'static {
        let commit = self.cluster.submit(
            Command::Qos2Received {
                client_id: client_id.to_string(),
                pkid,
            }
            .encode(),
        );
        async move { commit.await.map(|r| r == APPLIED) }
    }

    /// Frees an inbound QoS 2 id (PUBREL); the future resolves once that is committed.
    pub fn qos2_released(
        &self,
        client_id: &str,
        pkid: u16,
    ) -> impl std::future::Future<Output = Result<bool, ClusterError>> + Send + 'static {
        let commit = self.cluster.submit(
            Command::Qos2Released {
                client_id: client_id.to_string(),
                pkid,
            }
            .encode(),
        );
        async move { commit.await.map(|r| r == APPLIED) }
    }

    /// A stored session's inbound QoS 2 ids awaiting PUBREL.
    pub fn qos2_ids(&self, client_id: &str) -> std::collections::HashSet<u16> {
        let prefix = qos2_prefix(client_id);
        self.cluster
            .view()
            .scan_prefix(&prefix)
            .flatten()
            .filter_map(|(k, _)| Some(u16::from_be_bytes(k.get(prefix.len()..)?.try_into().ok()?)))
            .collect()
    }

    /// How many messages a session's inbox holds, their bytes and the last seq, without reading them.
    pub fn inbox_summary(&self, client_id: &str, incarnation: u64) -> InboxSummary {
        let view = self.cluster.view();
        let (count, bytes, appended) = match view.get(&counter_key(client_id)).ok().flatten() {
            Some(v) => match parse_counter(&v) {
                Some((inc, c, b)) if inc == incarnation => (c, b, counter_last_seq(&v)),
                _ => (0, 0, 0),
            },
            None => (0, 0, 0),
        };
        let stored_last = view
            .range(
                &inbox_key(client_id, incarnation, 0),
                &inbox_key(client_id, incarnation, u64::MAX),
            )
            .next_back()
            .and_then(|r| r.ok())
            .and_then(|(k, _)| Some(u64::from_be_bytes(k.get(k.len() - 8..)?.try_into().ok()?)))
            .unwrap_or(0);
        InboxSummary {
            count,
            bytes,
            last_seq: stored_last.max(appended),
        }
    }

    /// A page of a session's inbox: entries with `after < seq <= upto`, in order, at most `max` of them and
    /// stopping after the first that reaches `max_bytes`. The flag says whether the page reached `upto`.
    pub fn inbox_page(
        &self,
        client_id: &str,
        incarnation: u64,
        page: crate::broker::session::inbox::Page,
    ) -> (Vec<StoredCopy>, bool) {
        let from = inbox_key(client_id, incarnation, page.after.saturating_add(1));
        let to = inbox_key(client_id, incarnation, page.upto.saturating_add(1));
        let mut out = Vec::new();
        let mut bytes = 0;
        for (k, v) in self.cluster.view().range(&from, &to).flatten() {
            if out.len() >= page.max || bytes >= page.max_bytes {
                return (out, false);
            }
            let Some(seq) = k
                .get(k.len().saturating_sub(8)..)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
            else {
                continue;
            };
            bytes += v.len();
            out.push(StoredCopy::decode(seq, &v));
        }
        (out, true)
    }

    /// Proposes in the background, in call order (see [`Cluster::submit`]).
    fn spawn_propose(&self, cmd: Command) {
        let commit = self.cluster.submit(cmd.encode());
        tokio::spawn(async move {
            if let Err(e) = commit.await {
                tracing::warn!(error = %e, "session state not stored");
            }
        });
    }

    /// The stored persistent sessions (client id, record), tombstones and unreadable records skipped.
    pub fn sessions(&self) -> Vec<(String, SessionRecord)> {
        self.cluster
            .view()
            .scan_prefix(SESSION_PREFIX)
            .flatten()
            .filter_map(|(k, v)| {
                let id = String::from_utf8(k[SESSION_PREFIX.len()..].to_vec()).ok()?;
                Some((id, SessionRecord::decode(v.get(8..)?)?))
            })
            .collect()
    }

    /// Where this start's session versions and incarnations begin: after every one the store holds (tombstones
    /// included), so they keep increasing across restarts from the applied state alone, whatever the clock
    /// does.
    pub fn first_version(&self) -> u64 {
        let word = |v: &[u8], at: usize| {
            v.get(at..at + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .unwrap_or(0)
        };
        let view = self.cluster.view();
        let sessions = view
            .scan_prefix(SESSION_PREFIX)
            .flatten()
            .map(|(_, v)| word(&v, 0).max(word(&v, 8)));
        let counters = view
            .scan_prefix(COUNTER_PREFIX)
            .flatten()
            .map(|(_, v)| word(&v, 0));
        sessions.chain(counters).max().unwrap_or(0) + 1
    }

    /// Whether the raft group has a leader (what needs consensus can be acknowledged).
    pub fn has_leader(&self) -> bool {
        self.cluster.leader() != 0
    }

    pub async fn status(&self) -> Result<cicada_cluster::NodeStatus, ClusterError> {
        self.cluster.status().await
    }

    pub async fn shutdown(&self) {
        self.cluster.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Properties;
    use bytes::Bytes;

    fn retained_msg(topic: &str, payload: &'static [u8]) -> Message {
        Message {
            topic: topic.into(),
            payload: Bytes::from_static(payload),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Properties::default(),
            expires_at: None,
            publisher: None,
            received: Instant::now(),
            qos2_origin: None,
        }
    }

    #[tokio::test]
    async fn retained_messages_are_reloaded_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let fsync = cicada_cluster::Fsync::Always;
        let store = Store::open(dir.path(), fsync, 64 << 20, &prometheus::Registry::new())
            .await
            .unwrap();
        for t in ["d/0", "d/1", "d/2"] {
            store.retain(&retained_msg(t, b"on")).await.unwrap();
        }
        store.retain(&retained_msg("d/1", b"")).await.unwrap();
        assert_eq!(store.retained.len(), 2);
        store.shutdown().await;
        drop(store);
        let store = Store::open(dir.path(), fsync, 64 << 20, &prometheus::Registry::new())
            .await
            .unwrap();
        let mut topics: Vec<String> = store
            .retained
            .matching("d/+", Instant::now())
            .iter()
            .map(|m| m.topic.clone())
            .collect();
        topics.sort();
        assert_eq!(topics, ["d/0", "d/2"]);
        assert_eq!(store.retained.len(), 2);
        store.shutdown().await;
    }

    fn delivery(topic: &str, payload: &'static [u8], seq: u64) -> Delivery {
        let mut m = retained_msg(topic, payload);
        m.retain = false;
        Delivery {
            message: Arc::new(m),
            qos: QoS::AtLeastOnce,
            retain: false,
            sub_ids: vec![3, 4],
            shared: None,
            durable: Some(InboxRef { seq, size: 0 }),
        }
    }

    fn record(incarnation: u64) -> SessionRecord {
        SessionRecord {
            incarnation,
            expiry: 60,
            offline_since: 0,
            subscriptions: Vec::new(),
        }
    }

    /// Appends `d` (its seq is `d.durable`) to client "dev"'s inbox, as a session does; whether it applied.
    async fn append(store: &Store, incarnation: u64, d: &Delivery) -> bool {
        let seq = d.durable.unwrap().seq;
        store
            .inbox_append("dev", incarnation, seq, encode_delivery(d), None)
            .await
            .unwrap()
            == Appended::Stored
    }

    /// Waits until every proposal made so far is applied (acks are fire-and-forget).
    async fn settle(store: &Store) {
        // Proposals commit in submission order: once this one is applied, so are the earlier ones.
        store.retain(&retained_msg("settle", b"")).await.unwrap();
    }

    fn all(store: &Store, incarnation: u64) -> Vec<StoredCopy> {
        let page = crate::broker::session::inbox::Page {
            after: 0,
            upto: u64::MAX - 1,
            max: usize::MAX,
            max_bytes: usize::MAX,
        };
        let (copies, complete) = store.inbox_page("dev", incarnation, page);
        assert!(complete);
        copies
    }

    #[tokio::test]
    async fn inboxes_follow_their_session_incarnation_count_themselves_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let fsync = cicada_cluster::Fsync::Always;
        let store = Store::open(dir.path(), fsync, 64 << 20, &prometheus::Registry::new())
            .await
            .unwrap();
        store.put_session("dev", 1, &record(10));
        settle(&store).await;
        let mut size = 0;
        for seq in 1..=3 {
            let d = delivery(&format!("cmd/{seq}"), b"x", seq);
            size = encode_delivery(&d).len() as u64;
            assert!(append(&store, 10, &d).await);
        }
        // Another incarnation's append (a replaced session) is ignored, and the proposer learns it.
        assert!(!append(&store, 11, &delivery("cmd/old", b"x", 1)).await);
        store.inbox_ack("dev", 10, vec![2]);
        assert!(store.inbox_release("dev", 10, 3, 700).await.unwrap());
        assert!(
            !store.inbox_release("dev", 10, 99, 1).await.unwrap(),
            "no such copy"
        );
        settle(&store).await;
        assert_eq!(
            store.inbox_summary("dev", 10),
            InboxSummary {
                count: 2,
                bytes: 2 * size,
                last_seq: 3
            },
            "a released copy counts its appended size"
        );
        store.shutdown().await;
        drop(store);

        let store = Store::open(dir.path(), fsync, 64 << 20, &prometheus::Registry::new())
            .await
            .unwrap();
        let inbox = all(&store, 10);
        let topics: Vec<(u64, String)> = inbox
            .iter()
            .map(|c| (c.seq, c.delivery.as_ref().unwrap().message.topic.clone()))
            .collect();
        assert_eq!(topics, [(1, "cmd/1".to_string()), (3, "cmd/3".to_string())]);
        assert_eq!(inbox[0].released, None);
        assert_eq!(inbox[1].released, Some(700), "the QoS 2 stage survives");
        assert_eq!((inbox[0].size, inbox[1].size), (size, size));
        let d = inbox[0].delivery.as_ref().unwrap();
        assert_eq!(
            (d.qos, d.sub_ids.clone(), d.durable),
            (
                QoS::AtLeastOnce,
                vec![3, 4],
                Some(InboxRef { seq: 1, size })
            )
        );
        assert!(all(&store, 11).is_empty());
        assert_eq!(store.sessions()[0].1.incarnation, 10);
        assert_eq!(store.inbox_summary("dev", 10).count, 2);
        // Pages stop at their bounds and resume after their last copy.
        let page = crate::broker::session::inbox::Page {
            after: 0,
            upto: 3,
            max: 1,
            max_bytes: usize::MAX,
        };
        let (first, complete) = store.inbox_page("dev", 10, page);
        assert_eq!((first.len(), first[0].seq, complete), (1, 1, false));
        let (rest, complete) = store.inbox_page(
            "dev",
            10,
            crate::broker::session::inbox::Page { after: 1, ..page },
        );
        assert_eq!((rest.len(), rest[0].seq, complete), (1, 3, true));

        // A QoS 2 message of a persistent publisher is stored once per session until the publisher releases
        // its id: a resend routed again after a crash adds nothing.
        let once = || Some(("sensor".to_string(), 9));
        let q2 = delivery("cmd/q2", b"x", 4);
        let append_once = |seq| store.inbox_append("dev", 10, seq, encode_delivery(&q2), once());
        assert_eq!(append_once(4).await.unwrap(), Appended::Stored);
        assert_eq!(append_once(5).await.unwrap(), Appended::Duplicate);
        assert!(store.qos2_released("sensor", 9).await.unwrap());
        assert_eq!(
            append_once(6).await.unwrap(),
            Appended::Stored,
            "released: a new message"
        );
        assert_eq!(
            all(&store, 10).iter().map(|c| c.seq).collect::<Vec<_>>(),
            [1, 3, 4, 6]
        );

        // Versions and incarnations of this start go on after everything stored, never from a clock.
        assert_eq!(
            store.first_version(),
            11,
            "after incarnation 10 (version 1)"
        );

        // A new life of the session drops the old inbox; deleting the session drops the new one.
        store.put_session("dev", 2, &record(12));
        settle(&store).await;
        assert!(append(&store, 12, &delivery("cmd/new", b"x", 1)).await);
        assert!(all(&store, 10).is_empty());
        assert_eq!(store.inbox_summary("dev", 10), InboxSummary::default());
        assert_eq!(store.inbox_summary("dev", 12).count, 1);
        store.delete_session("dev", 3);
        settle(&store).await;
        assert!(all(&store, 12).is_empty());
        store.delete_session("other", 40);
        settle(&store).await;
        assert_eq!(store.first_version(), 41, "tombstones count");
        assert_eq!(store.inbox_summary("dev", 12), InboxSummary::default());
        store.shutdown().await;
    }

    #[test]
    fn commands_and_records_round_trip() {
        for c in [
            Command::SetRetained {
                topic: "device/1/status".into(),
                record: vec![1, 2, 3],
            },
            Command::ClearRetained {
                topic: "a/b".into(),
            },
        ] {
            assert_eq!(Command::decode(&c.encode()), Some(c));
        }
        for c in [
            Command::PutSession {
                client_id: "dev-7".into(),
                version: 42,
                record: vec![9, 9],
            },
            Command::DeleteSession {
                client_id: "dev-7".into(),
                version: 43,
            },
            Command::InboxAppend {
                client_id: "dev-7".into(),
                incarnation: 5,
                seq: 9,
                record: vec![1, 2],
                once: None,
            },
            Command::InboxAppend {
                client_id: "dev-7".into(),
                incarnation: 5,
                seq: 10,
                record: vec![1, 2],
                once: Some(("sensor".into(), 513)),
            },
            Command::InboxAck {
                client_id: "dev-7".into(),
                incarnation: 5,
                seqs: vec![9, 10, 12],
            },
            Command::InboxRelease {
                client_id: "dev-7".into(),
                incarnation: 5,
                seq: 9,
                pkid: 65535,
            },
            Command::Qos2Received {
                client_id: "dev-7".into(),
                pkid: 258,
            },
            Command::Qos2Released {
                client_id: "dev-7".into(),
                pkid: 1,
            },
        ] {
            assert_eq!(Command::decode(&c.encode()), Some(c));
        }
        let rec = SessionRecord {
            incarnation: 77,
            expiry: 3600,
            offline_since: 1_700_000_000,
            subscriptions: vec![
                (
                    "device/+/command".into(),
                    SubscriptionOptions {
                        qos: QoS::AtLeastOnce,
                        no_local: true,
                        retain_as_published: false,
                        retain_handling: RetainHandling::DoNotSend,
                    },
                    Some(7),
                ),
                ("$share/g/a/#".into(), SubscriptionOptions::default(), None),
            ],
        };
        assert_eq!(SessionRecord::decode(&rec.encode()), Some(rec.clone()));
        assert_eq!(SessionRecord::decode(&rec.encode()[..20]), None);
        assert_eq!(Command::decode(&[9]), None);
        assert_eq!(Command::decode(&[SET_RETAINED, 0, 0, 0, 9, b'x']), None);
        let m = Message {
            topic: "device/1/status".into(),
            payload: Bytes::from_static(b"online"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Properties {
                content_type: Some("text/plain".into()),
                user_properties: vec![("k".into(), "v".into())],
                ..Properties::default()
            },
            expires_at: Some(Instant::now() + Duration::from_secs(60)),
            publisher: Some(3),
            received: Instant::now(),
            qos2_origin: None,
        };
        let back = decode_record(&encode_record(&m)).unwrap();
        assert_eq!(back.topic, m.topic);
        assert_eq!(back.payload, m.payload);
        assert_eq!(back.qos, m.qos);
        assert_eq!(back.properties.content_type, m.properties.content_type);
        assert_eq!(
            back.properties.user_properties,
            m.properties.user_properties
        );
        assert!(back.expires_at.is_some());
        assert_eq!(
            back.publisher, None,
            "a stored message has no live publisher"
        );
        let d = delivery("cmd/1", b"reboot", 42);
        let back = decode_delivery(&encode_delivery(&d), 42).unwrap();
        assert_eq!(
            (
                back.qos,
                back.retain,
                back.sub_ids.clone(),
                back.durable.map(|r| r.seq)
            ),
            (d.qos, d.retain, d.sub_ids.clone(), Some(42))
        );
        assert_eq!(back.message.payload, d.message.payload);
        let shared = Delivery {
            shared: Some("$share/g/cmd/#".into()),
            ..d.clone()
        };
        assert_eq!(
            decode_delivery(&encode_delivery(&shared), 1)
                .unwrap()
                .shared,
            shared.shared
        );
        assert!(decode_delivery(&encode_delivery(&d)[..5], 1).is_none());
        let mut expired = encode_record(&m);
        expired[..8].copy_from_slice(&(unix_now() - 1).to_be_bytes());
        assert!(decode_record(&expired).is_none());
    }
}
