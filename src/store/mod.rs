//! Broker state on the replicated store (`cicada-cluster`): the commands, their encodings, and the state
//! machine every node applies in log order.
//!
//! Retained messages are stored under `r/{topic}` as a record: the wall-clock expiry (unix seconds, 0 for
//! none) followed by the message as an MQTT 5 PUBLISH (our own codec: every property survives). The applied
//! state is mirrored into the in-memory [`MemoryRetained`] index that subscriptions match against.

use crate::broker::message::Message;
use crate::broker::retained::{MemoryRetained, RetainedStore};
use crate::protocol::{self, Packet, ProtocolVersion, Publish, QoS};
use bytes::{BufMut, BytesMut};
use cicada_cluster::{Cluster, ClusterConfig, ClusterError, StateMachine, Txn, View};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const SET_RETAINED: u8 = 1;
const CLEAR_RETAINED: u8 = 2;
const RETAINED_PREFIX: &[u8] = b"r/";

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
            _ => None,
        }
    }
}

fn unix_now() -> u64 {
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

/// The broker's state machine: applies commands to sled and mirrors retained messages into memory.
pub struct BrokerMachine {
    retained: Arc<MemoryRetained>,
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
