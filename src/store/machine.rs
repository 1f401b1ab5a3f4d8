//! The broker's state machine: how each command changes the state, applied in log order on every node.
//! [`fanout`]: appending a message's copies to persistent sessions' inboxes; [`wills`]: the Wills the
//! cluster records and fires.

mod fanout;
mod members;
mod wills;

use super::command::Command;
use super::events::{InboxEvent, InboxListeners};
use super::format;
use super::index::PersistentIndex;
use super::keys::*;
use super::record::{
    copy_entry, decode_message, decode_record, mark_released, record_with_expiry, split_record,
    stored_weight, InboxCounter, OwnerRecord, SessionRecord, StoredCopy, WillRecord,
};
use crate::broker::message::{Delivery, InboxRef, Message};
use crate::broker::remote::RemoteRoutes;
use crate::broker::retained::{MemoryRetained, RetainedStore};
use crate::protocol::QoS;
use cicada_cluster::{StateMachine, Txn, View};
pub use fanout::LocalMessages;
use fanout::{FanOut, NotAppended};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, RwLock};
pub use wills::WillRouter;

/// What apply answers to a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Applied,
    /// Ignored: the session's incarnation is not the stored one, or there is no such session, or the command
    /// was unreadable.
    Ignored,
    /// An append whose copy the session already has (see [`Command::InboxAppend`]): nothing was added.
    Duplicate,
    /// A session was created (or taken over) with this incarnation.
    Created(u64),
    /// A claim was committed with this epoch; `previous` is the node that held the client until then (0:
    /// none, or the claiming node itself), as the log orders it.
    Claimed {
        epoch: u64,
        previous: u64,
    },
    /// A takeover: the session's new incarnation (`None`: no session was stored), the claim's epoch and
    /// the node that held the client until then (as for [`Outcome::Claimed`]).
    Taken {
        incarnation: Option<u64>,
        epoch: u64,
        previous: u64,
    },
    /// A fan-out ([`Command::Publish`]): copies stored, and sessions that refused theirs (quota full).
    Published {
        stored: u32,
        refused: u32,
    },
    /// An [`Command::InboxPush`] stored its copy with this seq.
    Pushed(u64),
    /// The session's stored quota is full: the copy was not stored.
    Full,
}

/// A client's connection moved to a node (a committed claim), told to every node's registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerChange {
    pub client_id: Arc<str>,
    pub owner: OwnerRecord,
}

/// What the registries hear from apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnerEvent {
    Changed(OwnerChange),
    /// A snapshot replaced the whole state: compare every local session with the stored owners.
    Reloaded,
    /// The cluster fired the Will of this node's connection `conn` of the client (this node was counted as
    /// down while it was only paused or cut off): that connection must not publish it again.
    WillFired {
        client_id: Arc<str>,
        conn: u64,
    },
}

impl Outcome {
    pub fn encode(self) -> Vec<u8> {
        format::encode(&self)
    }

    /// An answer this build cannot read counts as ignored: whatever waited on it fails.
    pub fn decode(b: &[u8]) -> Outcome {
        format::decode_exact(b).unwrap_or(Outcome::Ignored)
    }
}

/// The broker's state machine: applies commands to sled and mirrors retained messages into memory.
pub struct BrokerMachine {
    pub(super) retained: Arc<MemoryRetained>,
    /// Messages in all inboxes (`cicada_store_inbox_messages`).
    pub(super) inbox: prometheus::IntGauge,
    /// Wills recorded for the cluster to fire (`cicada_cluster_wills_recorded`).
    pub(super) wills_recorded: prometheus::IntGauge,
    /// The cluster's routing table, mirrored in memory for publishing.
    pub(super) routes: Arc<RwLock<RemoteRoutes>>,
    /// Committed claims, for the registries (a bounded ring: a registry that lags re-reads the owners).
    pub(super) owners: tokio::sync::broadcast::Sender<OwnerEvent>,
    /// Owner events of the batch being applied, sent once it is written: a registry that reads the owners
    /// when it handles one finds the change there.
    pub(super) owner_events: Vec<OwnerEvent>,
    /// Counts the batches written (and state reloads): whoever waits until this node has applied up to an
    /// index reads the view again after each (see [`super::Store::batches_written`]).
    pub(super) batches: tokio::sync::watch::Sender<u64>,
    /// The persistent sessions' subscriptions, kept from their records (read by publishers too).
    pub(super) index: Arc<RwLock<PersistentIndex>>,
    /// This node's sessions, told of their appends once a batch is written.
    pub(super) listeners: Arc<InboxListeners>,
    /// Appends of the batch being applied, told once it is written.
    pub(super) events: Vec<(Arc<str>, InboxEvent)>,
    /// This node's id, and the messages it proposed for fan-out (see [`LocalMessages`]).
    pub(super) node_id: u64,
    pub(super) local: Arc<LocalMessages>,
    /// Wills fired in the batch being applied, handed to this node's subscribers once it is written.
    pub(super) wills: Vec<(Arc<Message>, Vec<crate::broker::remote::GroupRef>)>,
    pub(super) will_router: Arc<WillRouter>,
}

/// The inbox counter of `incarnation` (another incarnation's counts start over).
fn read_counter(txn: &Txn<'_>, client_id: &str, incarnation: u64) -> InboxCounter {
    txn.get(&counter_key(client_id))
        .ok()
        .flatten()
        .as_deref()
        .and_then(InboxCounter::decode)
        .filter(|c| c.incarnation == incarnation)
        .unwrap_or_default()
}

/// Whether another node claimed the client after epoch `seen` (what the proposer knew): a claim proposed
/// before that one and committed after it must not take the client back.
fn stale_claim(txn: &Txn<'_>, client_id: &str, node: u64, seen: u64) -> bool {
    stored_owner(txn, client_id).is_some_and(|o| o.node != node && o.epoch > seen)
}

/// The node holding the client, as applied so far.
fn stored_owner(txn: &Txn<'_>, client_id: &str) -> Option<OwnerRecord> {
    txn.get(&owner_key(client_id))
        .ok()
        .flatten()
        .and_then(|v| OwnerRecord::decode(&v))
}

/// The next value of a counter of the state machine (incarnations, epochs): the log orders it.
fn next(txn: &mut Txn<'_>, key: &[u8]) -> u64 {
    let last = txn
        .get(key)
        .ok()
        .flatten()
        .and_then(|v| format::decode_exact::<u64>(&v).ok())
        .unwrap_or(0);
    txn.insert(key, &format::encode(&(last + 1)));
    last + 1
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

/// Adds to the inbox counter of `incarnation` (another incarnation's counter starts over).
fn count_inbox(
    txn: &mut Txn<'_>,
    client_id: &str,
    incarnation: u64,
    messages: i64,
    bytes: i64,
    appended: u64,
) {
    let c = read_counter(txn, client_id, incarnation);
    let c = InboxCounter {
        incarnation,
        messages: c.messages.saturating_add_signed(messages),
        bytes: c.bytes.saturating_add_signed(bytes),
        last_seq: c.last_seq.max(appended),
    };
    txn.insert(&counter_key(client_id), &format::encode(&c));
}

/// The client's stored session record.
fn stored_record(txn: &Txn<'_>, client_id: &str) -> Option<SessionRecord> {
    match txn.get(&session_key(client_id)) {
        Ok(Some(v)) => match SessionRecord::decode(&v) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::error!(client_id, error = %e, "stored session unreadable");
                None
            }
        },
        _ => None,
    }
}

/// The incarnation of the client's stored session, read without decoding the rest of the record (every
/// append asks).
fn stored_incarnation(txn: &Txn<'_>, client_id: &str) -> Option<u64> {
    let v = txn.get(&session_key(client_id)).ok()??;
    match SessionRecord::decode_incarnation(&v) {
        Ok(incarnation) => Some(incarnation),
        Err(e) => {
            tracing::error!(client_id, error = %e, "stored session unreadable");
            None
        }
    }
}

/// Removes the client's session: record, inbox, inbound QoS 2 ids; returns the inbox entries removed.
fn drop_session(txn: &mut Txn<'_>, client_id: &str) -> i64 {
    txn.remove(&session_key(client_id));
    drop_qos2(txn, client_id);
    drop_inbox(txn, client_id)
}

/// Removes the client's inbox entries (every incarnation) and its counter; returns how many entries.
fn drop_inbox(txn: &mut Txn<'_>, client_id: &str) -> i64 {
    let keys = txn
        .keys_with_prefix(&inbox_prefix(client_id))
        .unwrap_or_default();
    for k in &keys {
        txn.remove(k);
    }
    txn.remove(&counter_key(client_id));
    keys.len() as i64
}

impl BrokerMachine {
    fn apply_command(&mut self, txn: &mut Txn<'_>, command: Command<'_>, tail: &[u8]) -> Outcome {
        let live = |txn: &Txn<'_>, client_id: &str, incarnation: u64| {
            stored_incarnation(txn, client_id) == Some(incarnation)
        };
        match command {
            Command::SetRetained { topic } => {
                txn.insert(&retained_key(topic), tail);
                match decode_record(tail) {
                    Some(m) => self.retained.set(Arc::new(m)),
                    None => self.retained.clear(topic),
                }
            }
            Command::ClearRetained { topic } => {
                txn.remove(&retained_key(topic));
                self.retained.clear(topic);
            }
            Command::CreateSession {
                client_id,
                creator,
                record,
            } => return Outcome::Created(self.create(txn, client_id, creator, record)),
            Command::CreateSessionOn {
                client_id,
                creator,
                node,
                record,
            } => {
                let incarnation = self.create(txn, client_id, creator, record);
                self.claim(txn, client_id, node, creator);
                return Outcome::Created(incarnation);
            }
            Command::Claim {
                client_id,
                node,
                token,
                seen,
            } => {
                if stale_claim(txn, client_id, node, seen) {
                    return Outcome::Ignored;
                }
                // A clean start elsewhere: whatever session the client had on another node ends
                // [MQTT-3.1.2-4], even if that node is down and cannot say so. (A session this node already
                // created for the same connect, proposed before this claim, stays.)
                let owned_here = stored_owner(txn, client_id).is_some_and(|o| o.node == node);
                if !owned_here && stored_record(txn, client_id).is_some() {
                    self.drop_session(txn, client_id);
                }
                let (epoch, previous) = self.claim(txn, client_id, node, token);
                return Outcome::Claimed { epoch, previous };
            }
            Command::TakeSession {
                client_id,
                node,
                token,
                seen,
            } => {
                if stale_claim(txn, client_id, node, seen) {
                    return Outcome::Ignored;
                }
                let incarnation = self.take(txn, client_id, token);
                let (epoch, previous) = self.claim(txn, client_id, node, token);
                return Outcome::Taken {
                    incarnation,
                    epoch,
                    previous,
                };
            }
            Command::PutSession {
                client_id,
                incarnation,
                mut record,
            } => {
                let Some(stored) =
                    stored_record(txn, client_id).filter(|r| r.incarnation == incarnation)
                else {
                    return Outcome::Ignored;
                };
                record.incarnation = incarnation;
                record.creator = stored.creator;
                txn.insert(&session_key(client_id), &record.encode());
                self.index_mut().set(client_id, &record);
            }
            Command::DeleteSession {
                client_id,
                incarnation,
            } => {
                if !live(txn, client_id, incarnation) {
                    return Outcome::Ignored;
                }
                self.drop_session(txn, client_id);
            }
            Command::AbandonSession { client_id, creator } => {
                if stored_record(txn, client_id).is_none_or(|r| r.creator != creator) {
                    return Outcome::Ignored;
                }
                self.drop_session(txn, client_id);
            }
            Command::InboxAppend {
                client_id,
                incarnation,
                seq,
                once,
            } => {
                if !live(txn, client_id, incarnation) {
                    return Outcome::Ignored;
                }
                if let Some((publisher, pkid)) = once {
                    let mut k = once_prefix(publisher, Some(pkid));
                    k.extend_from_slice(client_id.as_bytes());
                    if matches!(txn.get(&k), Ok(Some(_))) {
                        return Outcome::Duplicate;
                    }
                    txn.insert(&k, &[]);
                }
                txn.insert(&inbox_key(client_id, incarnation, seq), tail);
                let weight = stored_weight(tail) as i64;
                count_inbox(txn, client_id, incarnation, 1, weight, seq);
                self.inbox.inc();
            }
            Command::InboxRelease {
                client_id,
                incarnation,
                seq,
                pkid,
            } => {
                let key = inbox_key(client_id, incarnation, seq);
                let Ok(Some(v)) = txn.get(&key) else {
                    return Outcome::Ignored;
                };
                match mark_released(&v, pkid) {
                    Some(released) => txn.insert(&key, &released),
                    None => return Outcome::Ignored,
                }
            }
            Command::Qos2Received {
                client_id,
                incarnation,
                pkid,
            } => {
                if !live(txn, client_id, incarnation) {
                    return Outcome::Ignored;
                }
                txn.insert(&qos2_key(client_id, pkid), &[]);
            }
            Command::Qos2Released {
                client_id,
                incarnation,
                pkid,
            } => {
                if !live(txn, client_id, incarnation) {
                    return Outcome::Ignored;
                }
                txn.remove(&qos2_key(client_id, pkid));
                remove_prefix(txn, &once_prefix(client_id, Some(pkid)));
            }
            Command::Publish {
                topic,
                qos,
                retain,
                publisher,
                once,
                weight,
                max_messages,
                max_bytes,
                origin,
            } => {
                // The proposer's own message, when this node proposed it: delivered as is, not decoded.
                let local = (origin.0 == self.node_id)
                    .then(|| self.local.take(origin.1))
                    .flatten()
                    .filter(|m| m.topic == topic && m.qos as u8 == qos);
                let Some(qos) = QoS::from_u8(qos) else {
                    return Outcome::Ignored;
                };
                let Some((expires, publish)) = split_record(tail) else {
                    return Outcome::Ignored;
                };
                let fan = FanOut {
                    topic,
                    qos,
                    retain,
                    publisher,
                    once,
                    weight,
                    quota: (max_messages, max_bytes),
                    expires,
                    publish,
                };
                let (stored, refused) = self.fan_out(txn, fan, local);
                return Outcome::Published { stored, refused };
            }
            Command::SetWill {
                client_id,
                node,
                conn,
                delay,
                expiry,
                message_expiry,
            } => {
                let header = WillRecord {
                    node,
                    conn,
                    delay,
                    expiry,
                    message_expiry,
                };
                return self.set_will(txn, client_id, header, tail);
            }
            Command::ClearWill {
                client_id,
                node,
                conn,
            } => return self.clear_will(txn, client_id, node, conn),
            Command::FireWill {
                client_id,
                node,
                max_messages,
                max_bytes,
                now,
            } => {
                return self.fire_recorded_will(
                    txn,
                    client_id,
                    node,
                    (max_messages, max_bytes),
                    now,
                )
            }
            Command::DropNode { node, now } => return self.drop_node(txn, node, now),
            Command::AdmitNode { node } => return self.admit_node(txn, node),
            Command::InboxPush {
                client_id,
                incarnation,
                once,
                max_messages,
                max_bytes,
            } => {
                if !live(txn, client_id, incarnation) {
                    return Outcome::Ignored;
                }
                let weight = stored_weight(tail);
                let quota = (max_messages, max_bytes);
                return match self.append(txn, client_id, incarnation, once, tail, weight, quota) {
                    Ok(counter) => {
                        if self.listeners.has(client_id) {
                            let delivery = StoredCopy::decode(counter.last_seq, tail).delivery;
                            self.event(client_id.into(), counter, delivery);
                        }
                        Outcome::Pushed(counter.last_seq)
                    }
                    Err(NotAppended::Duplicate) => Outcome::Duplicate,
                    Err(NotAppended::Full) => Outcome::Full,
                };
            }
            Command::CreateSessionAfter {
                client_id,
                creator,
                node,
                record,
                last_seq,
            } => {
                let incarnation = self.create(txn, client_id, creator, record);
                if last_seq > 0 {
                    let c = InboxCounter {
                        incarnation,
                        last_seq,
                        ..InboxCounter::default()
                    };
                    txn.insert(&counter_key(client_id), &format::encode(&c));
                }
                self.claim(txn, client_id, node, creator);
                return Outcome::Created(incarnation);
            }
            Command::AddRoute { node, filter } => {
                txn.insert(&route_key(node, filter), &[]);
                self.routes_mut().add(node, filter);
            }
            Command::RemoveRoute { node, filter } => {
                txn.remove(&route_key(node, filter));
                self.routes_mut().remove(node, filter);
            }
            Command::InboxAck {
                client_id,
                incarnation,
                seqs,
            } => {
                let (mut messages, mut bytes) = (0, 0);
                for seq in seqs {
                    let key = inbox_key(client_id, incarnation, seq);
                    if let Ok(Some(v)) = txn.get(&key) {
                        txn.remove(&key);
                        messages += 1;
                        bytes += stored_weight(&v) as i64;
                    }
                }
                if messages > 0 {
                    count_inbox(txn, client_id, incarnation, -messages, -bytes, 0);
                    self.inbox.sub(messages);
                }
            }
        }
        Outcome::Applied
    }

    /// Begins a new life of a session: the next incarnation; what a previous life left goes.
    fn create(
        &mut self,
        txn: &mut Txn<'_>,
        client_id: &str,
        creator: u64,
        mut record: SessionRecord,
    ) -> u64 {
        record.creator = creator;
        record.incarnation = next(txn, LAST_INCARNATION);
        // A new life of the session: what a previous one left in the inbox goes, and so do its inbound QoS 2
        // ids.
        self.inbox.sub(drop_inbox(txn, client_id));
        drop_qos2(txn, client_id);
        txn.insert(&session_key(client_id), &record.encode());
        self.index_mut().set(client_id, &record);
        record.incarnation
    }

    /// Removes the client's session (record, inbox, inbound QoS 2 ids, subscriptions in the index).
    fn drop_session(&mut self, txn: &mut Txn<'_>, client_id: &str) {
        self.inbox.sub(drop_session(txn, client_id));
        self.index_mut().remove(client_id);
    }

    fn index_mut(&self) -> std::sync::RwLockWriteGuard<'_, PersistentIndex> {
        self.index.write().unwrap_or_else(|e| e.into_inner())
    }

    fn index_read(&self) -> std::sync::RwLockReadGuard<'_, PersistentIndex> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves the stored session (if any) to a new incarnation, its inbox entries and counter with it.
    fn take(&mut self, txn: &mut Txn<'_>, client_id: &str, token: u64) -> Option<u64> {
        let mut record = stored_record(txn, client_id)?;
        let old = record.incarnation;
        // A late abandon of the previous owner's create names its creator: it must not match this life.
        record.creator = token;
        record.incarnation = next(txn, LAST_INCARNATION);
        let from = inbox_key(client_id, old, 0);
        let keys = txn
            .keys_with_prefix(&from[..from.len() - 8])
            .unwrap_or_default();
        for k in keys {
            let Ok(Some(v)) = txn.get(&k) else { continue };
            let seq = &k[k.len() - 8..];
            let mut moved = inbox_key(client_id, record.incarnation, 0);
            let n = moved.len();
            moved[n - 8..].copy_from_slice(seq);
            txn.remove(&k);
            txn.insert(&moved, &v);
        }
        let key = counter_key(client_id);
        if let Some(mut c) = txn
            .get(&key)
            .ok()
            .flatten()
            .as_deref()
            .and_then(InboxCounter::decode)
            .filter(|c| c.incarnation == old)
        {
            c.incarnation = record.incarnation;
            txn.insert(&key, &format::encode(&c));
        }
        txn.insert(&session_key(client_id), &record.encode());
        Some(record.incarnation)
    }

    /// Records that `node` holds the client's connection, with the next epoch, and tells the registries.
    /// Answers the new epoch, and the node that held the client before (0: none, or `node` itself).
    fn claim(&mut self, txn: &mut Txn<'_>, client_id: &str, node: u64, token: u64) -> (u64, u64) {
        let previous = stored_owner(txn, client_id)
            .map(|o| o.node)
            .filter(|n| *n != node)
            .unwrap_or(0);
        let owner = OwnerRecord {
            node,
            epoch: next(txn, LAST_EPOCH),
            token,
        };
        txn.insert(&owner_key(client_id), &format::encode(&owner));
        // A connection on another node: the Will of the previous one is its owner's to publish, not the
        // cluster's. (One on the same node replaces or clears it itself, per connection.)
        let will = will_key(client_id);
        if let Ok(Some(v)) = txn.get(&will) {
            if WillRecord::decode(&v).is_none_or(|(w, _)| w.node != node) {
                txn.remove(&will);
                self.wills_recorded.dec();
            }
        }
        self.owner_events.push(OwnerEvent::Changed(OwnerChange {
            client_id: client_id.into(),
            owner,
        }));
        (owner.epoch, previous)
    }

    fn routes_mut(&self) -> std::sync::RwLockWriteGuard<'_, RemoteRoutes> {
        // A panic while holding the lock cannot leave the table half-changed in a way that matters more than
        // losing it: keep serving.
        self.routes.write().unwrap_or_else(|e| e.into_inner())
    }

    fn load(&self, view: &View) {
        {
            let mut routes = self.routes_mut();
            routes.clear();
            for (k, _) in view.scan_prefix(ROUTE_PREFIX).flatten() {
                match parse_route_key(&k) {
                    Some((node, filter)) => routes.add(node, filter),
                    None => {
                        tracing::error!(key = %String::from_utf8_lossy(&k), "stored route unreadable")
                    }
                }
            }
            routes.recount();
        }
        {
            let mut index = self.index_mut();
            index.clear();
            for (k, v) in view.scan_prefix(SESSION_PREFIX).flatten() {
                let id = String::from_utf8_lossy(&k[SESSION_PREFIX.len()..]).into_owned();
                match SessionRecord::decode(&v) {
                    Ok(r) => index.set(&id, &r),
                    Err(e) => {
                        tracing::error!(client_id = %id, error = %e, "stored session unreadable")
                    }
                }
            }
        }
        self.retained.clear_all();
        for (k, v) in view.scan_prefix(RETAINED_PREFIX).flatten() {
            if let Some(m) = decode_record(&v) {
                self.retained.set(Arc::new(m));
            } else {
                tracing::debug!(key = %String::from_utf8_lossy(&k), "stored retained message expired or unreadable");
            }
        }
        self.wills_recorded
            .set(view.scan_prefix(WILL_PREFIX).count() as i64);
        let stored: u64 = view
            .scan_prefix(COUNTER_PREFIX)
            .flatten()
            .filter_map(|(_, v)| InboxCounter::decode(&v).map(|c| c.messages))
            .sum();
        self.inbox.set(stored as i64);
    }
}

impl StateMachine for BrokerMachine {
    fn apply(&mut self, txn: &mut Txn<'_>, command: &[u8]) -> Vec<u8> {
        let (command, tail) = match Command::decode(command) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "unreadable store command skipped");
                return Outcome::Ignored.encode();
            }
        };
        self.apply_command(txn, command, tail).encode()
    }

    fn restored(&mut self, view: &View) {
        self.events.clear();
        self.wills.clear();
        self.owner_events.clear();
        self.load(view);
        let _ = self.owners.send(OwnerEvent::Reloaded);
        self.batches.send_modify(|n| *n += 1);
    }

    fn committed(&mut self) {
        self.batches.send_modify(|n| *n += 1);
        for e in self.owner_events.drain(..) {
            let _ = self.owners.send(e);
        }
        for (client_id, e) in self.events.drain(..) {
            self.listeners.tell(&client_id, e);
        }
        for (m, groups) in self.wills.drain(..) {
            self.will_router.route(m, groups);
        }
    }
}
