//! Appending a message's copies to the inboxes of the persistent sessions it matches ([`Command::Publish`],
//! [`Command::InboxPush`]), with the inbox's next seq and within the quota the command names, and telling
//! this node's sessions once the batch is written.

use super::*;

/// Messages this node proposed in [`Command::Publish`], by the id the command carries: apply on this node
/// hands the sessions the publisher's own message (its arrival time, no decoding) instead of decoding it
/// from the log. Taken by apply, or by the proposer when its commit failed: nothing stays.
pub struct LocalMessages {
    map: std::sync::Mutex<std::collections::HashMap<u64, Arc<Message>>>,
    next: std::sync::atomic::AtomicU64,
}

impl Default for LocalMessages {
    /// Ids start at a per-process random value: a command an earlier process of this node proposed, applied
    /// after a restart, names an id no message of this process has.
    fn default() -> LocalMessages {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(std::process::id().into());
        LocalMessages {
            map: Default::default(),
            next: std::sync::atomic::AtomicU64::new(h.finish() >> 1),
        }
    }
}

impl LocalMessages {
    /// Keeps `m` until its command applies; its id for the command.
    pub(in crate::store) fn keep(&self, m: Arc<Message>) -> u64 {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        self.lock().insert(id, m);
        id
    }

    pub(in crate::store) fn take(&self, id: u64) -> Option<Arc<Message>> {
        self.lock().remove(&id)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<u64, Arc<Message>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A message to fan out to persistent sessions (see [`Command::Publish`]).
pub(super) struct FanOut<'a> {
    pub(super) topic: &'a str,
    pub(super) qos: QoS,
    pub(super) retain: bool,
    pub(super) publisher: Option<&'a str>,
    pub(super) once: Option<(&'a str, u16)>,
    pub(super) weight: u64,
    pub(super) quota: (u64, u64),
    /// The message's stored expiry and its PUBLISH, as a retained one is stored.
    pub(super) expires: u64,
    pub(super) publish: &'a [u8],
}

/// Why an append stored nothing.
pub(super) enum NotAppended {
    /// The session has this QoS 2 message of this publisher already.
    Duplicate,
    /// Its stored quota is full.
    Full,
}

impl BrokerMachine {
    /// Appends a message's copies to the inboxes of the persistent sessions it matches (see
    /// [`Command::Publish`]); `local`: the message itself, when this node has it. Returns (stored, refused).
    pub(super) fn fan_out(
        &mut self,
        txn: &mut Txn<'_>,
        f: FanOut<'_>,
        local: Option<Arc<Message>>,
    ) -> (u32, u32) {
        let copies = self
            .index_read()
            .copies(f.topic, f.qos, f.retain, f.publisher);
        // Decoded once, for the sessions of this node that listen.
        let mut message: Option<Option<Arc<Message>>> = local.map(Some);
        let (mut stored, mut refused) = (0, 0);
        for (client_id, c) in copies {
            let Some(incarnation) = stored_incarnation(txn, &client_id) else {
                continue;
            };
            let entry = copy_entry(f.expires, c.qos, c.retain, &c.sub_ids, f.weight, f.publish);
            match self.append(
                txn,
                &client_id,
                incarnation,
                f.once,
                &entry,
                f.weight,
                f.quota,
            ) {
                Ok(counter) => {
                    stored += 1;
                    if self.listeners.has(&client_id) {
                        let m = message
                            .get_or_insert_with(|| {
                                decode_message(f.publish, f.expires).map(Arc::new)
                            })
                            .clone();
                        let size = f.weight;
                        let seq = counter.last_seq;
                        let delivery = m.map(|message| Delivery {
                            message,
                            qos: c.qos,
                            retain: c.retain,
                            sub_ids: c.sub_ids,
                            shared: None,
                            durable: Some(InboxRef { seq, size }),
                        });
                        self.event(client_id, counter, delivery);
                    }
                }
                Err(NotAppended::Duplicate) => stored += 1,
                Err(NotAppended::Full) => refused += 1,
            }
        }
        (stored, refused)
    }

    /// Appends a copy (its inbox entry `entry`, counting `weight` bytes) with the inbox's next seq, unless
    /// the session (or, for a shared group's copy, the group) has it already (`once`) or its quota (messages,
    /// bytes) is full.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn append(
        &mut self,
        txn: &mut Txn<'_>,
        client_id: &str,
        incarnation: u64,
        once: Option<(&str, u16)>,
        entry: &[u8],
        weight: u64,
        (max_messages, max_bytes): (u64, u64),
    ) -> Result<InboxCounter, NotAppended> {
        let mut once_key = None;
        if let Some((publisher, pkid)) = once {
            let mut k = once_prefix(publisher, Some(pkid));
            match crate::store::record::copy_group(entry) {
                // A shared group's copy: the group has the message once, whichever member stored it first
                // (a resend routed again may take another member's turn). `\0` cannot start a client id.
                Some(group) => {
                    k.push(0);
                    k.extend_from_slice(group.as_bytes());
                }
                // The session's own copy (its plain subscriptions): once per session.
                None => k.extend_from_slice(client_id.as_bytes()),
            }
            if matches!(txn.get(&k), Ok(Some(_))) {
                return Err(NotAppended::Duplicate);
            }
            once_key = Some(k);
        }
        let c = read_counter(txn, client_id, incarnation);
        if c.messages >= max_messages || c.bytes.saturating_add(weight) > max_bytes {
            return Err(NotAppended::Full);
        }
        if let Some(k) = once_key {
            txn.insert(&k, &[]);
        }
        let c = InboxCounter {
            incarnation,
            messages: c.messages + 1,
            bytes: c.bytes.saturating_add(weight),
            last_seq: c.last_seq + 1,
        };
        txn.insert(&inbox_key(client_id, incarnation, c.last_seq), entry);
        txn.insert(&counter_key(client_id), &format::encode(&c));
        self.inbox.inc();
        Ok(c)
    }

    /// Queues the news of an append (the inbox's counter after it) for the session's listener (told once
    /// the batch is written).
    pub(super) fn event(
        &mut self,
        client_id: Arc<str>,
        c: InboxCounter,
        delivery: Option<Delivery>,
    ) {
        self.events.push((
            client_id,
            InboxEvent {
                incarnation: c.incarnation,
                seq: c.last_seq,
                count: c.messages,
                bytes: c.bytes,
                delivery,
            },
        ));
    }
}
