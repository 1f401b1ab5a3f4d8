//! Broker state on the replicated store (`cicada-cluster`): the commands, their encodings, and the state
//! machine every node applies in log order.
//!
//! Retained messages are stored under `r/{topic}`: the wall-clock expiry (unix seconds, 0 for none) and the
//! message as an MQTT 5 PUBLISH (our own codec: every property survives). The applied state is mirrored into
//! the in-memory [`MemoryRetained`] index that subscriptions match against.
//!
//! Persistent sessions are stored under `s/{client id}` ([`SessionRecord`]), and the QoS 1/2 messages waiting
//! for them (queued or not yet acknowledged by the client) under `i/{client id}\0{incarnation}{seq}`: the
//! session's inbox. An incarnation is one life of a session (a clean start begins another). Apply assigns it
//! from a counter in the state machine (`n/incarnation`) when it creates the session, and ignores every later
//! command of a session whose incarnation is no longer the stored one: nothing about a session is ordered or
//! versioned by a clock or by the node that proposed it, only by the raft log. `c/{client id}` counts the
//! inbox (incarnation, messages, bytes, highest seq), kept by apply, so a session restored at start knows its
//! backlog and quota without reading it: the inbox itself is read in pages as the client takes it.
//!
//! Every command and value is versioned ([`format`]): a format byte, then postcard.
//!
//! # Layout
//! - [`format`]: the versioned encoding; [`command`]: the commands; [`record`]: the stored records;
//! - [`keys`]: where each piece of state lives; [`machine`]: how apply changes it;
//! - this file: [`Store`], the broker's handle on the raft group.

mod command;
mod error;
mod events;
mod format;
mod index;
mod keys;
mod machine;
mod members;
mod record;
mod setup;
#[cfg(test)]
mod tests;

pub use command::Command;
pub use error::{CommitError, OpenError};
pub use events::{InboxEvent, InboxListeners, Listener};
pub use format::{FormatError, FORMAT};
pub use index::PersistentIndex;
use keys::*;
pub use machine::{BrokerMachine, Outcome, OwnerChange, OwnerEvent, WillRouter};
use record::InboxCounter;
pub use record::{
    decode_delivery, decode_record, encode_delivery, encode_record, put_record, unix_now,
    unix_now_ms, InboxSummary, OwnerRecord, SessionRecord, StoredCopy, WillRecord,
};
pub use setup::cluster_config;

use crate::broker::message::{Delivery, Message};
use crate::broker::remote::RemoteRoutes;
use crate::broker::retained::{MemoryRetained, RetainedStore};
use cicada_cluster::{Cluster, ClusterConfig, ClusterError};
use std::sync::Arc;

/// Claims a registry may lag behind before it re-reads the owners.
const OWNER_CHANGES: usize = 4096;

/// The node's store: the raft group and the in-memory mirror of what it applied.
pub struct Store {
    cluster: Cluster,
    node_id: u64,
    pub retained: Arc<MemoryRetained>,
    /// The cluster's routing table (apply keeps it).
    pub routes: Arc<std::sync::RwLock<RemoteRoutes>>,
    owners: tokio::sync::broadcast::Sender<OwnerEvent>,
    /// Batches written so far (see [`Store::batches_written`]).
    batches: tokio::sync::watch::Receiver<u64>,
    not_applied: prometheus::IntCounterVec,
    /// The persistent sessions' subscriptions as applied here.
    index: Arc<std::sync::RwLock<PersistentIndex>>,
    /// This node's sessions listening for their inboxes' appends.
    pub listeners: Arc<InboxListeners>,
    local: Arc<machine::LocalMessages>,
    /// Where this node's apply hands the Wills the cluster fires.
    pub will_router: Arc<WillRouter>,
}

/// What became of a [`Store::publish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// Sessions that have the copy (stored now, or before: a QoS 2 resend).
    pub stored: u32,
    /// Sessions whose stored quota was full.
    pub refused: u32,
}

/// A committed claim of a client for this node ([`Store::claim`], [`Store::take_session`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// The owner epoch the claim got.
    pub epoch: u64,
    /// The node that held the client right before the claim, in log order (`None`: no node, or this one).
    pub previous: Option<u64>,
}

/// What became of an [`Store::inbox_push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Stored with this seq.
    Stored(u64),
    /// The session has this QoS 2 message of this publisher already.
    Duplicate,
    /// The session's stored quota is full.
    Full,
    /// The session's incarnation is no longer the stored one.
    Ignored,
}

impl Store {
    /// Opens the store (a raft group of one, or this node of a cluster) and loads the retained index.
    pub async fn open(
        config: ClusterConfig,
        registry: &prometheus::Registry,
    ) -> Result<Store, OpenError> {
        let retained = Arc::new(MemoryRetained::default());
        let node_id = config.node_id;
        let routes = Arc::new(std::sync::RwLock::new(RemoteRoutes::new(node_id)));
        let (owners, _) = tokio::sync::broadcast::channel(OWNER_CHANGES);
        let (batches_tx, batches) = tokio::sync::watch::channel(0);
        let inbox = prometheus::IntGauge::new(
            "cicada_store_inbox_messages",
            "QoS 1/2 messages stored for persistent sessions (queued or awaiting the client's acknowledgement).",
        )
        .expect("valid metric");
        registry.register(Box::new(inbox.clone()))?;
        let not_applied = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "cicada_store_commands_not_applied_total",
                "Store commands nobody waited for that failed or that apply ignored (a stale incarnation).",
            ),
            &["command", "outcome"],
        )
        .expect("valid metric");
        registry.register(Box::new(not_applied.clone()))?;
        let wills_recorded = prometheus::IntGauge::new(
            "cicada_cluster_wills_recorded",
            "Wills of live connections recorded for the cluster to fire if their node dies.",
        )
        .expect("valid metric");
        registry.register(Box::new(wills_recorded.clone()))?;
        let index = Arc::new(std::sync::RwLock::new(PersistentIndex::default()));
        let listeners = Arc::new(InboxListeners::default());
        let local = Arc::new(machine::LocalMessages::default());
        let will_router = Arc::new(WillRouter::default());
        let machine = BrokerMachine {
            wills_recorded,
            wills: Vec::new(),
            will_router: will_router.clone(),
            node_id,
            local: local.clone(),
            retained: retained.clone(),
            inbox,
            routes: routes.clone(),
            owners: owners.clone(),
            owner_events: Vec::new(),
            batches: batches_tx,
            index: index.clone(),
            listeners: listeners.clone(),
            events: Vec::new(),
        };
        // The machine loads what was applied before this start (`restored`), then raft replays the rest:
        // entries that were committed (and acknowledged) but whose state write a kill -9 lost. The read
        // barrier returns once they are applied, so nothing is served from a state older than acknowledged.
        let cluster = Cluster::start(config, machine, registry).await?;
        // In a cluster the others may not be up yet (a cold start of every node): wait for a quorum.
        let applied = loop {
            match cluster.read_index().await {
                Ok(applied) => break applied,
                Err(e @ (ClusterError::NoLeader | ClusterError::Timeout)) => {
                    tracing::warn!(error = %e, "waiting for a raft leader before serving");
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        tracing::info!(applied, retained = retained.len(), "store opened");
        Ok(Store {
            cluster,
            node_id,
            retained,
            routes,
            owners,
            batches,
            not_applied,
            index,
            listeners,
            local,
            will_router,
        })
    }

    /// Records the Will of connection `conn` (of this node) of the client, for the cluster to fire if this
    /// node dies (see [`Command::SetWill`]); the future says whether it applied.
    pub fn set_will(
        &self,
        client_id: &str,
        conn: u64,
        will: &Message,
        message_expiry: Option<u32>,
        delay: u32,
        expiry: u32,
    ) -> impl std::future::Future<Output = Result<bool, ClusterError>> + Send + 'static {
        let cmd = Command::SetWill {
            client_id,
            node: self.node_id,
            conn,
            delay,
            expiry,
            message_expiry,
        };
        let commit = self
            .cluster
            .submit(cmd.encode_with(|buf| record::put_record(buf, will)));
        async move {
            commit
                .await
                .map(|r| Outcome::decode(&r) == Outcome::Applied)
        }
    }

    /// The Will recorded for connection `conn` of this node is published or cancelled here.
    pub fn clear_will(
        &self,
        client_id: &str,
        conn: u64,
    ) -> impl std::future::Future<Output = Result<bool, ClusterError>> + Send + 'static {
        self.submit_applied(Command::ClearWill {
            client_id,
            node: self.node_id,
            conn,
        })
    }

    /// Fires the Will `node` recorded for the client (that node is down): `None` when there was none left.
    pub fn fire_will(
        &self,
        client_id: &str,
        node: u64,
        (max_messages, max_bytes): (u64, u64),
    ) -> impl std::future::Future<Output = Result<Option<Published>, ClusterError>> + Send + 'static
    {
        let commit = self.cluster.submit(
            Command::FireWill {
                client_id,
                node,
                max_messages,
                max_bytes,
                now: unix_now(),
            }
            .encode(),
        );
        async move {
            Ok(match Outcome::decode(&commit.await?) {
                Outcome::Published { stored, refused } => Some(Published { stored, refused }),
                _ => None,
            })
        }
    }

    /// The recorded Wills (client id, record), as applied here.
    pub fn wills(&self) -> Vec<(String, WillRecord)> {
        self.cluster
            .view()
            .scan_prefix(WILL_PREFIX)
            .flatten()
            .filter_map(|(k, v)| {
                let id = String::from_utf8(k[WILL_PREFIX.len()..].to_vec()).ok()?;
                Some((id, WillRecord::decode(&v)?.0))
            })
            .collect()
    }

    /// Whether a message on `topic` at `qos` is for any persistent session's inbox, as applied here: then it
    /// needs a [`Store::publish`].
    pub fn persistent_match(&self, topic: &str, qos: crate::protocol::QoS) -> bool {
        self.index
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .matches(topic, qos)
    }

    /// Fans a QoS 1/2 message out to the inboxes of the persistent sessions it matches (see
    /// [`Command::Publish`]), within each one's quota (`max_messages`, `max_bytes`). Queued at once (a
    /// publisher's messages commit in publish order); the future answers once applied.
    pub fn publish(
        &self,
        m: &Arc<Message>,
        publisher: Option<&str>,
        max_messages: u64,
        max_bytes: u64,
    ) -> impl std::future::Future<Output = Result<Published, CommitError>> + Send + 'static {
        let id = self.local.keep(m.clone());
        let cmd = Command::Publish {
            topic: &m.topic,
            qos: m.qos as u8,
            retain: m.retain,
            publisher,
            once: m
                .qos2_origin
                .as_deref()
                .map(|o| (o.client_id.as_str(), o.pkid)),
            weight: m.weight() as u64,
            max_messages,
            max_bytes,
            origin: (self.node_id, id),
        };
        let commit = self
            .cluster
            .submit(cmd.encode_with(|buf| record::put_record(buf, m)));
        let local = self.local.clone();
        async move {
            let outcome = commit.await;
            // Applied (apply took it) or not: it must not stay.
            local.take(id);
            match Outcome::decode(&outcome?) {
                Outcome::Published { stored, refused } => Ok(Published { stored, refused }),
                _ => Err(CommitError::NotPublished),
            }
        }
    }

    /// Commits a retained message (set, or clear for an empty payload). The command is queued when this is
    /// called (calls commit in call order); the future resolves once it is durable.
    pub fn retain(
        &self,
        m: &Message,
    ) -> impl std::future::Future<Output = Result<(), ClusterError>> + Send + 'static {
        let cmd = if m.payload.is_empty() {
            Command::ClearRetained { topic: &m.topic }.encode()
        } else {
            Command::SetRetained { topic: &m.topic }.encode_with(|buf| record::put_record(buf, m))
        };
        let commit = self.cluster.submit(cmd);
        async move { commit.await.map(|_| ()) }
    }

    /// Begins a new life of a persistent session; the future answers the incarnation apply assigned it, once
    /// committed.
    /// Its inbox seqs go on after `last_seq` (0: from 1).
    pub fn create_session(
        &self,
        client_id: &str,
        creator: u64,
        record: SessionRecord,
        last_seq: u64,
    ) -> impl std::future::Future<Output = Result<Option<u64>, ClusterError>> + Send + 'static {
        let commit = self.cluster.submit(
            Command::CreateSessionAfter {
                client_id,
                creator,
                node: self.node_id,
                record,
                last_seq,
            }
            .encode(),
        );
        async move {
            commit.await.map(|r| match Outcome::decode(&r) {
                Outcome::Created(incarnation) => Some(incarnation),
                _ => None,
            })
        }
    }

    /// Replaces a session's record; the future says whether it committed and applied (`false`: that
    /// incarnation is no longer the stored one).
    pub fn put_session(
        &self,
        client_id: &str,
        incarnation: u64,
        record: SessionRecord,
    ) -> impl std::future::Future<Output = Result<bool, ClusterError>> + Send + 'static {
        self.submit_applied(Command::PutSession {
            client_id,
            incarnation,
            record,
        })
    }

    /// Undoes the create identified by `creator` if its session is still the stored one (see
    /// [`Command::AbandonSession`]).
    pub fn abandon_session(
        &self,
        client_id: &str,
        creator: u64,
    ) -> impl std::future::Future<Output = Result<bool, ClusterError>> + Send + 'static {
        self.submit_applied(Command::AbandonSession { client_id, creator })
    }

    /// Forgets a session's record, its inbox and its inbound QoS 2 ids, if `incarnation` is still the stored
    /// one.
    pub fn delete_session(
        &self,
        client_id: &str,
        incarnation: u64,
    ) -> impl std::future::Future<Output = Result<bool, ClusterError>> + Send + 'static {
        self.submit_applied(Command::DeleteSession {
            client_id,
            incarnation,
        })
    }

    /// Appends one persistent session's copy to its inbox with the inbox's next seq (apply chooses it), within
    /// the quota, encoding it once, straight into the command. Queued at once (a session's commands commit in
    /// call order); the future answers once applied. The session hears of the copy from apply (see
    /// [`InboxListeners`]), not from this answer.
    pub fn inbox_push(
        &self,
        client_id: &str,
        incarnation: u64,
        delivery: &Delivery,
        once: Option<(&str, u16)>,
        (max_messages, max_bytes): (u64, u64),
    ) -> impl std::future::Future<Output = Result<Pushed, ClusterError>> + Send + 'static {
        let cmd = Command::InboxPush {
            client_id,
            incarnation,
            once,
            max_messages,
            max_bytes,
        };
        let commit = self
            .cluster
            .submit(cmd.encode_with(|buf| record::put_delivery(buf, delivery)));
        async move {
            commit.await.map(|r| match Outcome::decode(&r) {
                Outcome::Pushed(seq) => Pushed::Stored(seq),
                Outcome::Duplicate => Pushed::Duplicate,
                Outcome::Full => Pushed::Full,
                _ => Pushed::Ignored,
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
            client_id,
            incarnation,
            seq,
            pkid,
        })
    }

    /// Removes messages that left a session from its inbox (ordered after their appends); the future says
    /// whether it applied.
    pub fn inbox_ack(
        &self,
        client_id: &str,
        incarnation: u64,
        seqs: Vec<u64>,
    ) -> impl std::future::Future<Output = Result<bool, ClusterError>> + Send + 'static {
        self.submit_applied(Command::InboxAck {
            client_id,
            incarnation,
            seqs,
        })
    }

    /// Records an inbound QoS 2 id of a persistent session (see [`Command::Qos2Received`]); the future says
    /// whether it is committed (`false`: the store has no such session).
    pub fn qos2_received(
        &self,
        client_id: &str,
        incarnation: u64,
        pkid: u16,
    ) -> impl std::future::Future<Output = Result<bool, ClusterError>> + Send + 'static {
        self.submit_applied(Command::Qos2Received {
            client_id,
            incarnation,
            pkid,
        })
    }

    /// Frees an inbound QoS 2 id (PUBREL); the future resolves once that is committed.
    pub fn qos2_released(
        &self,
        client_id: &str,
        incarnation: u64,
        pkid: u16,
    ) -> impl std::future::Future<Output = Result<bool, ClusterError>> + Send + 'static {
        self.submit_applied(Command::Qos2Released {
            client_id,
            incarnation,
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
        let c = view
            .get(&counter_key(client_id))
            .ok()
            .flatten()
            .and_then(|v| InboxCounter::decode(&v))
            .filter(|c| c.incarnation == incarnation)
            .unwrap_or_default();
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
            count: c.messages,
            bytes: c.bytes,
            last_seq: stored_last.max(c.last_seq),
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
        cmd: Command<'_>,
    ) -> impl std::future::Future<Output = Result<bool, ClusterError>> + Send + 'static {
        let commit = self.cluster.submit(cmd.encode());
        async move {
            commit
                .await
                .map(|r| Outcome::decode(&r) == Outcome::Applied)
        }
    }

    /// Waits in the background for a command whose proposer does not wait (its commit acknowledges nothing
    /// to a client): a failed or ignored one is logged and counted in
    /// `cicada_store_commands_not_applied_total{command, outcome}`.
    pub fn in_background(
        &self,
        command: &'static str,
        client_id: &str,
        commit: impl std::future::Future<Output = Result<bool, ClusterError>> + Send + 'static,
    ) {
        let (not_applied, client_id) = (self.not_applied.clone(), client_id.to_string());
        tokio::spawn(async move {
            let outcome = match commit.await {
                Ok(true) => return,
                Ok(false) => "ignored",
                Err(e) => {
                    tracing::warn!(client_id, command, error = %e, "store command failed");
                    "failed"
                }
            };
            tracing::debug!(client_id, command, outcome, "store command not applied");
            not_applied.with_label_values(&[command, outcome]).inc();
        });
    }

    /// The stored persistent sessions (client id, record); an unreadable record is reported and skipped.
    pub fn sessions(&self) -> Vec<(String, SessionRecord)> {
        self.cluster
            .view()
            .scan_prefix(SESSION_PREFIX)
            .flatten()
            .filter_map(|(k, v)| {
                let id = String::from_utf8(k[SESSION_PREFIX.len()..].to_vec()).ok()?;
                match SessionRecord::decode(&v) {
                    Ok(r) => Some((id, r)),
                    Err(e) => {
                        tracing::error!(client_id = %id, error = %e, "stored session unreadable: not restored");
                        None
                    }
                }
            })
            .collect()
    }

    /// Claims the client's connection for this node (in the background: see [`Command::Claim`]); `seen`: the
    /// owner epoch this node knows. The future answers the epoch once committed (and the node the log says
    /// held the client before), or an error when the claim failed or was stale.
    pub fn claim(
        &self,
        client_id: &str,
        token: u64,
        seen: u64,
    ) -> impl std::future::Future<Output = Result<Claim, CommitError>> + Send + 'static {
        let commit = self.cluster.submit(
            Command::Claim {
                client_id,
                node: self.node_id,
                token,
                seen,
            }
            .encode(),
        );
        async move {
            let r = commit.await?;
            match Outcome::decode(&r) {
                Outcome::Claimed { epoch, previous } => Ok(Claim {
                    epoch,
                    previous: (previous != 0).then_some(previous),
                }),
                _ => Err(CommitError::ClaimSuperseded),
            }
        }
    }

    /// Takes the client's stored session over for this node (see [`Command::TakeSession`]): the new
    /// incarnation (`None` when no session is stored; the claim is made either way) and the claim.
    pub fn take_session(
        &self,
        client_id: &str,
        token: u64,
        seen: u64,
    ) -> impl std::future::Future<Output = Result<(Option<u64>, Claim), CommitError>> + Send + 'static
    {
        let commit = self.cluster.submit(
            Command::TakeSession {
                client_id,
                node: self.node_id,
                token,
                seen,
            }
            .encode(),
        );
        async move {
            match Outcome::decode(&commit.await?) {
                Outcome::Taken {
                    incarnation,
                    epoch,
                    previous,
                } => Ok((
                    incarnation,
                    Claim {
                        epoch,
                        previous: (previous != 0).then_some(previous),
                    },
                )),
                _ => Err(CommitError::TakeoverSuperseded),
            }
        }
    }

    /// Committed claims as this node applies them, each once its batch is written.
    pub fn owner_changes(&self) -> tokio::sync::broadcast::Receiver<OwnerEvent> {
        self.owners.subscribe()
    }

    /// Changes once per batch written to this node's state (and on a reload): the view's applied index
    /// and everything read from it are then up to date with that batch. (The per-command applied events
    /// of the cluster come before their batch is written.)
    pub fn batches_written(&self) -> tokio::sync::watch::Receiver<u64> {
        self.batches.clone()
    }

    /// The client's owner epoch after a read barrier: every claim committed before this call is counted, so
    /// a claim proposed with it is stale only if another one committed in between.
    pub async fn fresh_owner_epoch(&self, client_id: &str) -> Result<u64, ClusterError> {
        // Without a known leader the barrier could only time out: answer at once.
        if !self.has_leader() {
            return Err(ClusterError::NoLeader);
        }
        self.cluster.read_index().await?;
        Ok(self.owner(client_id).map_or(0, |o| o.epoch))
    }

    /// Which node holds the client's connection, as applied here.
    pub fn owner(&self, client_id: &str) -> Option<OwnerRecord> {
        let v = self.cluster.view().get(&owner_key(client_id)).ok()??;
        OwnerRecord::decode(&v)
    }

    /// The client's stored session, as applied here.
    pub fn session(&self, client_id: &str) -> Option<SessionRecord> {
        let v = self.cluster.view().get(&session_key(client_id)).ok()??;
        SessionRecord::decode(&v).ok()
    }

    /// The lowest member id: the node that restores sessions stored before ownership was recorded.
    pub fn lowest_member(&self) -> u64 {
        self.cluster
            .view()
            .peers()
            .ok()
            .and_then(|p| p.keys().next().copied())
            .unwrap_or(self.node_id)
    }

    /// Whether the cluster has more than one member (claims and routes are proposed only then).
    pub fn clustered(&self) -> bool {
        self.cluster
            .view()
            .peers()
            .map(|p| p.len() > 1)
            .unwrap_or(false)
    }

    /// This node's id in the cluster (1 for a cluster of one).
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// Proposes that this node has (`true`) or no longer has subscribers for `filter`; queued in call order.
    pub fn set_route(
        &self,
        filter: &str,
        present: bool,
    ) -> impl std::future::Future<Output = Result<bool, ClusterError>> + Send + 'static {
        let node = self.node_id;
        self.submit_applied(if present {
            Command::AddRoute { node, filter }
        } else {
            Command::RemoveRoute { node, filter }
        })
    }

    /// The raft group, for the peer link's application lane and cluster status.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
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
