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
//!
//! # Layout
//! - [`command`]: the commands and their byte layout; [`record`]: the stored records;
//! - [`keys`]: where each piece of state lives; [`machine`]: how apply changes it;
//! - this file: [`Store`], the broker's handle on the raft group.

mod command;
mod keys;
mod machine;
mod record;
#[cfg(test)]
mod tests;

pub use command::Command;
use keys::*;
pub use machine::{Appended, BrokerMachine, APPLIED, DUPLICATE, IGNORED};
pub use record::{
    decode_delivery, decode_record, encode_delivery, encode_record, unix_now, InboxSummary,
    SessionRecord, StoredCopy,
};

use crate::broker::message::Message;
use crate::broker::retained::{MemoryRetained, RetainedStore};
use cicada_cluster::{Cluster, ClusterConfig, ClusterError};
use std::path::Path;
use std::sync::Arc;

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
        self.submit_applied(Command::InboxRelease {
            client_id: client_id.to_string(),
            incarnation,
            seq,
            pkid,
        })
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
        self.submit_applied(Command::Qos2Received {
            client_id: client_id.to_string(),
            pkid,
        })
    }

    /// Frees an inbound QoS 2 id (PUBREL); the future resolves once that is committed.
    pub fn qos2_released(
        &self,
        client_id: &str,
        pkid: u16,
    ) -> impl std::future::Future<Output = Result<bool, ClusterError>> + Send + 'static {
        self.submit_applied(Command::Qos2Released {
            client_id: client_id.to_string(),
            pkid,
        })
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

    /// Proposes in call order; the future says whether the command committed and applied (`false`: the state
    /// machine ignored it).
    fn submit_applied(
        &self,
        cmd: Command,
    ) -> impl std::future::Future<Output = Result<bool, ClusterError>> + Send + 'static {
        let commit = self.cluster.submit(cmd.encode());
        async move { commit.await.map(|r| r == APPLIED) }
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
