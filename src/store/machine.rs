//! The broker's state machine: how each command changes the state, applied in log order on every node.

use super::command::Command;
use super::keys::*;
use super::record::{decode_record, stored_weight, RELEASED};
use crate::broker::retained::{MemoryRetained, RetainedStore};
use cicada_cluster::{StateMachine, Txn, View};
use std::sync::Arc;

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

/// The broker's state machine: applies commands to sled and mirrors retained messages into memory.
pub struct BrokerMachine {
    pub(super) retained: Arc<MemoryRetained>,
    /// Messages in all inboxes (`cicada_store_inbox_messages`).
    pub(super) inbox: prometheus::IntGauge,
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
