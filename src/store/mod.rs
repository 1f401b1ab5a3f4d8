//! Broker state on the replicated store (`cicada-cluster`): the commands, their encodings, and the state
//! machine every node applies in log order.
//!
//! Retained messages are stored under `r/{topic}` as a record: the wall-clock expiry (unix seconds, 0 for
//! none) followed by the message as an MQTT 5 PUBLISH (our own codec: every property survives). The applied
//! state is mirrored into the in-memory [`MemoryRetained`] index that subscriptions match against.

use crate::broker::message::Message;
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
const RETAINED_PREFIX: &[u8] = b"r/";
const SESSION_PREFIX: &[u8] = b"s/";

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
        }
        b
    }

    pub fn decode(b: &[u8]) -> Option<Command> {
        let (&kind, rest) = b.split_first()?;
        match kind {
            SET_RETAINED => {
                let n = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
                let topic = std::str::from_utf8(rest.get(4..4 + n)?).ok()?.to_string();
                Some(Command::SetRetained {
                    topic,
                    record: rest[4 + n..].to_vec(),
                })
            }
            CLEAR_RETAINED => Some(Command::ClearRetained {
                topic: std::str::from_utf8(rest).ok()?.to_string(),
            }),
            PUT_SESSION => {
                let version = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
                let n = u32::from_be_bytes(rest.get(8..12)?.try_into().ok()?) as usize;
                let client_id = std::str::from_utf8(rest.get(12..12 + n)?).ok()?.to_string();
                Some(Command::PutSession {
                    client_id,
                    version,
                    record: rest[12 + n..].to_vec(),
                })
            }
            DELETE_SESSION => Some(Command::DeleteSession {
                version: u64::from_be_bytes(rest.get(..8)?.try_into().ok()?),
                client_id: std::str::from_utf8(rest.get(8..)?).ok()?.to_string(),
            }),
            _ => None,
        }
    }
}

/// A starting point for session record versions: nanoseconds since the epoch, above any earlier run's.
pub fn clock_version() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The stored form of a retained message.
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
        retain: true,
        pkid: if m.qos == QoS::AtMostOnce { 0 } else { 1 },
        properties: m.properties.clone(),
        ..Publish::default()
    };
    let mut buf = BytesMut::new();
    buf.put_u64(expires);
    // A message the broker accepted always encodes; an error leaves an empty record that decodes to nothing.
    if protocol::encode(&Packet::Publish(publish), ProtocolVersion::V5, &mut buf).is_err() {
        tracing::error!(topic = %m.topic, "retained message could not be encoded");
    }
    buf.to_vec()
}

/// A stored record back into a message; `None` when it expired or does not decode.
pub fn decode_record(record: &[u8]) -> Option<Message> {
    let expires = u64::from_be_bytes(record.get(..8)?.try_into().ok()?);
    let now = Instant::now();
    let expires_at = match expires {
        0 => None,
        t => {
            let left = t.checked_sub(unix_now()).filter(|&l| l > 0)?;
            Some(now + Duration::from_secs(left))
        }
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

/// A persistent session as stored: what a restarted broker needs to resume it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
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

    pub fn decode(mut b: &[u8]) -> Option<SessionRecord> {
        fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
            let (head, rest) = (b.get(..n)?, b.get(n..)?);
            *b = rest;
            Some(head)
        }
        let expiry = u32::from_be_bytes(take(&mut b, 4)?.try_into().ok()?);
        let offline_since = u64::from_be_bytes(take(&mut b, 8)?.try_into().ok()?);
        let n = u32::from_be_bytes(take(&mut b, 4)?.try_into().ok()?) as usize;
        let mut subscriptions = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            let len = u16::from_be_bytes(take(&mut b, 2)?.try_into().ok()?) as usize;
            let filter = std::str::from_utf8(take(&mut b, len)?).ok()?.to_string();
            let options = options_from(take(&mut b, 1)?[0])?;
            let sub_id = u32::from_be_bytes(take(&mut b, 4)?.try_into().ok()?);
            subscriptions.push((filter, options, (sub_id != 0).then_some(sub_id)));
        }
        Some(SessionRecord {
            expiry,
            offline_since,
            subscriptions,
        })
    }
}

/// The broker's state machine: applies commands to sled and mirrors retained messages into memory.
pub struct BrokerMachine {
    retained: Arc<MemoryRetained>,
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
    }
}

impl StateMachine for BrokerMachine {
    fn apply(&mut self, txn: &mut Txn<'_>, command: &[u8]) -> Vec<u8> {
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
                }
            }
            None => tracing::error!("undecodable store command skipped"),
        }
        Vec::new()
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
        registry: &prometheus::Registry,
    ) -> Result<Store, ClusterError> {
        let retained = Arc::new(MemoryRetained::default());
        let mut config = ClusterConfig::single(data_dir.join("store"));
        config.fsync = fsync;
        let machine = BrokerMachine {
            retained: retained.clone(),
        };
        // The machine loads what was applied before this start (`restored`), then raft replays the rest:
        // entries that were committed (and acknowledged) but whose state write a kill -9 lost. The read
        // barrier returns once they are applied, so nothing is served from a state older than acknowledged.
        let cluster = Cluster::start(config, machine, registry).await?;
        let applied = cluster.read_index().await?;
        tracing::info!(applied, retained = retained.len(), "store opened");
        Ok(Store { cluster, retained })
    }

    /// Commits a retained message (set, or clear for an empty payload); returns once it is durable.
    pub async fn retain(&self, m: &Message) -> Result<(), ClusterError> {
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
        self.cluster.propose(cmd.encode()).await.map(|_| ())
    }

    /// Saves a persistent session's record (fire and forget, ordered by `version`).
    pub fn put_session(self: &Arc<Self>, client_id: &str, version: u64, record: &SessionRecord) {
        self.spawn_propose(Command::PutSession {
            client_id: client_id.to_string(),
            version,
            record: record.encode(),
        });
    }

    /// Forgets a session's record.
    pub fn delete_session(self: &Arc<Self>, client_id: &str, version: u64) {
        self.spawn_propose(Command::DeleteSession {
            client_id: client_id.to_string(),
            version,
        });
    }

    fn spawn_propose(self: &Arc<Self>, cmd: Command) {
        let store = self.clone();
        tokio::spawn(async move {
            if let Err(e) = store.cluster.propose(cmd.encode()).await {
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
        }
    }

    #[tokio::test]
    async fn retained_messages_are_reloaded_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let fsync = cicada_cluster::Fsync::Always;
        let store = Store::open(dir.path(), fsync, &prometheus::Registry::new())
            .await
            .unwrap();
        for t in ["d/0", "d/1", "d/2"] {
            store.retain(&retained_msg(t, b"on")).await.unwrap();
        }
        store.retain(&retained_msg("d/1", b"")).await.unwrap();
        assert_eq!(store.retained.len(), 2);
        store.shutdown().await;
        drop(store);
        let store = Store::open(dir.path(), fsync, &prometheus::Registry::new())
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
        ] {
            assert_eq!(Command::decode(&c.encode()), Some(c));
        }
        let rec = SessionRecord {
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
        let mut expired = encode_record(&m);
        expired[..8].copy_from_slice(&(unix_now() - 1).to_be_bytes());
        assert!(decode_record(&expired).is_none());
    }
}
