//! The Session actor: the MQTT session, which outlives its connection when it is persistent. It owns the
//! subscriptions, the outbound queue and window ([`outbox`]), a persistent session's stored inbox
//! ([`inbox`]), inbound QoS 2 ids, the Will and its delay, and the expiry timer. The queue logic is the pure
//! [`outbox::Outbox`] and the inbox bookkeeping the pure [`inbox::InboxCursor`]; this file is the actor shell.

mod durable;
pub mod inbox;
pub mod outbox;
mod subscriptions;

use super::conn::{ConnHandle, Outbound};
use super::inbound::InboundQos2;
use super::message::{Delivery, InboxRef, Message, SessionId};
use super::registry::RegistryMsg;
use super::shard::ShardMsg;
use super::ticket::Ticket;
use super::Context;
use crate::auth::acl::Who;
use crate::auth::Permissions;
use crate::broker::metrics::Metrics;
use crate::protocol::{ConnAck, LastWill, Packet, PubAck, QoS, ReasonCode, Subscribe, Unsubscribe};
use inbox::{Admit, InboxCursor, Pending};
use outbox::{InboxChange, Outbox, OutboxLimits, Outgoing};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
pub use subscriptions::SubRecord;

/// A connection asks to become the session's connection.
pub struct Attach {
    pub conn: ConnHandle,
    pub clean_start: bool,
    /// Session Expiry Interval in seconds (0: ends with the connection; u32::MAX: never).
    pub expiry: u32,
    pub will: Option<LastWill>,
    /// The CONNACK to send (session present is filled in here), before anything the session resends.
    pub connack: ConnAck,
    /// The client's Receive Maximum: the outbound window.
    pub receive_maximum: u16,
    /// The listener's auth (ACL for subscriptions, deliveries and the Will) and who the client is.
    pub perms: Permissions,
    pub username: Option<String>,
}

/// What the connection learns from attaching.
pub struct AttachReply {
    pub session_present: bool,
    /// QoS 2 packet ids received and not yet released: the session's own set, shared with the connection
    /// [MQTT-4.3.3-10].
    pub inbound_qos2: InboundQos2,
    /// The session's incarnation in the store, when it is persistent.
    pub incarnation: Option<u64>,
}

/// A connection ended.
pub struct Detach {
    pub conn: u64,
    /// False only after a normal DISCONNECT (v5: reason other than 0x04) [MQTT-3.1.2-10].
    pub publish_will: bool,
    /// Session expiry changed by the v5 DISCONNECT.
    pub expiry: Option<u32>,
}

pub enum SessionMsg {
    /// Answered with `None` when the session refused the connection (it sent the CONNACK saying why).
    Attach(Box<Attach>, RpcReplyPort<Option<AttachReply>>),
    Detach(Box<Detach>),
    Deliver(Delivery, Ticket),
    /// PUBACK, PUBREC or PUBCOMP from the client.
    Ack {
        conn: u64,
        packet: Packet,
    },
    Subscribe {
        conn: u64,
        packet: Subscribe,
    },
    Unsubscribe {
        conn: u64,
        packet: Unsubscribe,
    },
    /// The connection's writer has room again.
    Drained,
    /// A durable copy's append committed (it carries its place in the inbox).
    Stored(Box<Delivery>),
    /// A durable copy's append failed or was ignored: it is not in the inbox.
    AppendFailed(InboxRef),
    /// A durable copy's append timed out: it may or may not be in the inbox.
    AppendUnknown(InboxRef),
    /// A QoS 2 copy's release was committed (`ok`) or not: its PUBREL may go.
    ReleaseStored {
        pkid: u16,
        ok: bool,
    },
    WillDue(u64),
    ExpiryDue(u64),
    /// End the session now: a clean-start connect replaced it, or an operator removed it.
    Discard(ReasonCode),
    /// The server is stopping: close the connection with this reason and end.
    Shutdown(ReasonCode, RpcReplyPort<()>),
}

pub struct Session;

pub struct SessionArgs {
    pub ctx: Arc<Context>,
    pub client_id: String,
    pub id: SessionId,
    /// A persistent session read back from the store at start: offline, with its subscriptions.
    pub restored: Option<Restored>,
}

/// What the store kept of a persistent session.
pub struct Restored {
    pub incarnation: u64,
    /// What its stored inbox holds (read in pages once the client is back).
    pub inbox: crate::store::InboxSummary,
    pub expiry: u32,
    /// Seconds of expiry left.
    pub remaining: u32,
    /// Inbound QoS 2 ids the client had sent and not yet released.
    pub inbound_qos2: std::collections::HashSet<u16>,
    pub subscriptions: Vec<(String, crate::protocol::SubscriptionOptions, Option<u32>)>,
}

pub struct SessionState {
    ctx: Arc<Context>,
    me: ActorRef<SessionMsg>,
    client_id: String,
    id: SessionId,
    outbox: Outbox,
    subs: HashMap<String, SubRecord>,
    inbound_qos2: InboundQos2,
    conn: Option<ConnHandle>,
    expiry: u32,
    /// The Will of the current (or last) connection, and whether it is waiting out its delay.
    will: Option<LastWill>,
    /// Bumped whenever a pending timer is superseded, so stale WillDue/ExpiryDue are ignored.
    generation: u64,
    attached_before: bool,
    /// The ACL of the listener the client last connected through, and its user name.
    perms: Option<Permissions>,
    username: Option<String>,
    /// Whether the store holds a record of this session (to delete when it ends); its QoS 1/2 copies then
    /// go to the store's inbox too.
    stored: bool,
    /// This life of the session in the store, and where its stored inbox stands.
    incarnation: u64,
    inbox: InboxCursor,
    /// Store commands whose answers the session waits for (started with the first one).
    commits: Option<tokio::sync::mpsc::UnboundedSender<Pending>>,
    /// Inbox entries to remove that never entered the outbox (expired when read from the store).
    pending_changes: Vec<InboxChange>,
    /// Last values added to the node-wide gauges, to report changes as deltas.
    reported: (i64, i64, i64),
}

impl Actor for Session {
    type Msg = SessionMsg;
    type State = SessionState;
    type Arguments = SessionArgs;

    async fn pre_start(
        &self,
        me: ActorRef<SessionMsg>,
        a: SessionArgs,
    ) -> Result<SessionState, ActorProcessingErr> {
        let limits = OutboxLimits {
            max_queued_messages: a.ctx.config.limits.max_queued_messages,
            max_queued_bytes: a.ctx.config.limits.max_queued_bytes,
        };
        let window = a.ctx.config.limits.max_inflight;
        let restored = a.restored;
        let mut s = SessionState {
            me: me.clone(),
            client_id: a.client_id,
            id: a.id,
            outbox: Outbox::new(limits, window),
            subs: HashMap::new(),
            inbound_qos2: InboundQos2::default(),
            conn: None,
            expiry: 0,
            will: None,
            generation: 0,
            attached_before: false,
            perms: None,
            username: None,
            stored: false,
            incarnation: 0,
            inbox: InboxCursor::new(),
            commits: None,
            pending_changes: Vec::new(),
            reported: (0, 0, 0),
            ctx: a.ctx,
        };
        if let Some(r) = restored {
            // Offline, as the client left it (or as the crash left it): reconnecting with clean start = 0
            // gets session present = 1 and these subscriptions.
            s.expiry = r.expiry;
            s.attached_before = true;
            s.set_stored(true);
            s.incarnation = r.incarnation;
            s.inbound_qos2 = InboundQos2::restored(r.inbound_qos2);
            // Nothing of the inbox is read now: it is paged in once the client is back. Whatever it holds was
            // stored before this start and may have been sent: it goes out with DUP set.
            s.inbox = InboxCursor::restored(r.inbox);
            s.outbox.set_restored_below(r.inbox.last_seq + 1);
            s.ctx.metrics.sessions_offline.inc();
            for (filter, options, sub_id) in r.subscriptions {
                let rec = SubRecord { options, sub_id };
                rec.install(&s.ctx, &me, s.id, &filter);
                s.subs.insert(filter, rec);
                s.ctx.metrics.subscriptions.inc();
            }
            if r.expiry != u32::MAX {
                let g = s.generation;
                me.send_after(Duration::from_secs(u64::from(r.remaining)), move || {
                    SessionMsg::ExpiryDue(g)
                });
            }
        }
        Ok(s)
    }

    async fn post_stop(
        &self,
        _me: ActorRef<SessionMsg>,
        s: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        s.sync_inbox();
        // Stopped with the broker: the stored record and inbox stay for the next start.
        s.set_stored(false);
        s.outbox.clear();
        s.report();
        let m = &s.ctx.metrics;
        m.subscriptions.sub(s.subs.len() as i64);
        if s.conn.is_some() {
            m.sessions_online.dec();
        } else if s.attached_before {
            m.sessions_offline.dec();
        }
        Ok(())
    }

    async fn handle(
        &self,
        me: ActorRef<SessionMsg>,
        msg: SessionMsg,
        s: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SessionMsg::Attach(a, reply) => {
                let r = s.attach(&me, *a).await;
                let _ = reply.send(r);
            }
            SessionMsg::Detach(d) => {
                if s.conn.as_ref().map(|c| c.id) == Some(d.conn) {
                    s.detach(&me, *d);
                }
            }
            SessionMsg::Deliver(d, ticket) => {
                s.deliver(d, &ticket);
                drop(ticket);
            }
            SessionMsg::Ack { conn, packet } if s.is_current(conn) => s.ack(packet),
            SessionMsg::Subscribe { conn, packet } if s.is_current(conn) => {
                s.subscribe(&me, packet).await
            }
            SessionMsg::Unsubscribe { conn, packet } if s.is_current(conn) => {
                s.unsubscribe(packet).await
            }
            SessionMsg::Ack { .. }
            | SessionMsg::Subscribe { .. }
            | SessionMsg::Unsubscribe { .. } => {}
            SessionMsg::Drained => s.flush(),
            SessionMsg::Stored(d) => s.stored(*d),
            SessionMsg::AppendFailed(r) => {
                s.inbox.failed(r);
                s.flush();
            }
            SessionMsg::AppendUnknown(r) => {
                s.inbox.unknown(r);
                s.flush();
            }
            SessionMsg::ReleaseStored { pkid, ok } => s.release_stored(pkid, ok),
            SessionMsg::WillDue(g) if g == s.generation => s.publish_will(),
            SessionMsg::ExpiryDue(g) if g == s.generation && s.conn.is_none() => {
                tracing::debug!(client_id = %s.client_id, "session expired");
                s.end(&me);
            }
            SessionMsg::WillDue(_) | SessionMsg::ExpiryDue(_) => {}
            SessionMsg::Discard(reason) => {
                if let Some(c) = s.conn.take() {
                    c.close(reason);
                    s.ctx.metrics.sessions_online.dec();
                    s.ctx.metrics.sessions_offline.inc();
                }
                s.end(&me);
            }
            SessionMsg::Shutdown(reason, done) => {
                if let Some(c) = &s.conn {
                    c.close(reason);
                }
                let _ = done.send(());
            }
        }
        s.sync_inbox();
        s.report();
        Ok(())
    }
}

impl SessionState {
    fn is_current(&self, conn: u64) -> bool {
        self.conn.as_ref().is_some_and(|c| c.id == conn)
    }

    async fn attach(&mut self, me: &ActorRef<SessionMsg>, a: Attach) -> Option<AttachReply> {
        let ctx = self.ctx.clone();
        let m = &ctx.metrics;
        if let Some(old) = self.conn.take() {
            // Session takeover [MQTT-3.1.4-3]: the old connection goes with 0x8E, and its Will is published
            // unless it has a delay (the new connection arrived within it).
            old.close(ReasonCode::SESSION_TAKEN_OVER);
            if self
                .will
                .as_ref()
                .is_some_and(|w| w.properties.will_delay_interval.unwrap_or(0) == 0)
            {
                self.publish_will();
            }
            tracing::info!(client_id = %self.client_id, "session taken over");
        } else if self.attached_before {
            m.sessions_offline.dec();
        }
        m.sessions_online.inc();
        // A reconnect within the Will Delay cancels the Will [MQTT-3.1.3-9]; pending timers are void.
        self.generation += 1;
        self.will = a.will;
        self.expiry = a.expiry;
        self.perms = Some(a.perms);
        self.username = a.username;
        let session_present = self.attached_before && !a.clean_start;
        self.attached_before = true;
        self.outbox
            .set_window(a.receive_maximum.min(self.ctx.config.limits.max_inflight));
        self.conn = Some(a.conn.clone());
        let mut connack = a.connack;
        // The record this CONNACK reports (a new persistent session, or a resumed one now online) is
        // committed first: a crash after the CONNACK cannot lose the session it announced.
        if !self.persist().await {
            connack.reason = ReasonCode::SERVER_UNAVAILABLE;
            connack.session_present = false;
            m.connack
                .with_label_values(&[&format!("{:#04x}", connack.reason.0)])
                .inc();
            tracing::warn!(client_id = %self.client_id, "session record not stored: connection refused (CONNACK 0x88)");
            a.conn.refuse(connack);
            let conn = a.conn.id;
            self.will = None;
            self.detach(
                me,
                Detach {
                    conn,
                    publish_will: false,
                    expiry: None,
                },
            );
            return None;
        }
        connack.session_present = session_present;
        m.connack
            .with_label_values(&[&format!("{:#04x}", connack.reason.0)])
            .inc();
        a.conn.packet(Packet::ConnAck(connack));
        // The start of the stored inbox first: after a restart it holds the QoS 2 copies awaiting PUBREL.
        self.page_in();
        for out in self.outbox.resend() {
            self.send(&a.conn, out);
        }
        self.flush();
        Some(AttachReply {
            session_present,
            inbound_qos2: self.inbound_qos2.clone(),
            incarnation: self.stored.then_some(self.incarnation),
        })
    }

    fn detach(&mut self, me: &ActorRef<SessionMsg>, d: Detach) {
        self.conn = None;
        if let Some(e) = d.expiry {
            self.expiry = e.min(self.ctx.config.limits.max_session_expiry);
        }
        self.ctx.metrics.sessions_online.dec();
        self.ctx.metrics.sessions_offline.inc();
        // The read-ahead of the stored inbox leaves memory; it is read again when the client is back.
        let lowest = self.outbox.drop_durable_queue();
        self.inbox.forget_from(lowest);
        // Volatile shared-subscription messages not yet received go to another member of their group.
        for delivery in self.outbox.take_shared() {
            let shard = self.ctx.shard_for(&delivery.message.topic);
            let _ = shard.cast(ShardMsg::Redeliver {
                delivery,
                exclude: self.id,
            });
        }
        self.generation += 1;
        if !d.publish_will {
            self.will = None;
        }
        if self.expiry == 0 {
            self.end(me);
            return;
        }
        // Offline from now on (expiry counts from the stored time): nothing waits for this commit.
        if let Some((store, record)) = self
            .ctx
            .store
            .clone()
            .zip(self.record())
            .filter(|_| self.stored)
        {
            let commit = store.put_session(&self.client_id, self.incarnation, record);
            store.in_background("put_session", &self.client_id, commit);
        }
        if let Some(delay) = self
            .will
            .as_ref()
            .map(|w| w.properties.will_delay_interval.unwrap_or(0))
        {
            if delay == 0 {
                self.publish_will();
            } else if delay < self.expiry {
                let g = self.generation;
                me.send_after(Duration::from_secs(u64::from(delay)), move || {
                    SessionMsg::WillDue(g)
                });
            }
            // Otherwise the Will goes when the session ends, which comes first [MQTT-3.1.3-9].
        }
        if self.expiry != u32::MAX {
            let g = self.generation;
            me.send_after(Duration::from_secs(u64::from(self.expiry)), move || {
                SessionMsg::ExpiryDue(g)
            });
        }
    }

    /// Ends the session: its subscriptions leave the shards, a pending Will is published, the registry
    /// forgets it, and the actor stops.
    fn end(&mut self, me: &ActorRef<SessionMsg>) {
        self.publish_will();
        if self.stored {
            if let Some(store) = &self.ctx.store {
                let commit = store.delete_session(&self.client_id, self.incarnation);
                store.in_background("delete_session", &self.client_id, commit);
            }
            self.set_stored(false);
        }
        self.ctx.metrics.subscriptions.sub(self.subs.len() as i64);
        for (filter, rec) in self.subs.drain() {
            rec.remove_from_shards(&self.ctx, self.id, &filter);
        }
        if let Some(registry) = self.ctx.registry.get() {
            let _ = registry.cast(RegistryMsg::Ended {
                client_id: self.client_id.clone(),
                id: self.id,
            });
        }
        me.stop(None);
    }

    /// What a restart needs of this session, when it is persistent (expiry > 0).
    fn record(&self) -> Option<crate::store::SessionRecord> {
        (self.expiry > 0).then(|| crate::store::SessionRecord {
            incarnation: self.incarnation,
            expiry: self.expiry,
            offline_since: if self.conn.is_some() {
                0
            } else {
                crate::store::unix_now()
            },
            subscriptions: self
                .subs
                .iter()
                .map(|(f, r)| (f.clone(), r.options, r.sub_id))
                .collect(),
        })
    }

    /// Brings the store up to this session and waits for the commit (what CONNACK, SUBACK and UNSUBACK
    /// report): a persistent session not yet stored is created there (apply gives it its incarnation), a
    /// stored one is replaced, and one that stopped being persistent (expiry set to 0) is forgotten. False
    /// when the store did not take it (failed, timed out, or ignored: the incarnation is no longer the stored
    /// one).
    pub(super) async fn persist(&mut self) -> bool {
        let Some(store) = self.ctx.store.clone() else {
            return true;
        };
        let outcome = match (self.record(), self.stored) {
            (None, false) => return true,
            (None, true) => {
                self.set_stored(false);
                store
                    .delete_session(&self.client_id, self.incarnation)
                    .await
            }
            (Some(record), true) => {
                store
                    .put_session(&self.client_id, self.incarnation, record)
                    .await
            }
            (Some(record), false) => match store.create_session(&self.client_id, record).await {
                Ok(Some(incarnation)) => {
                    self.incarnation = incarnation;
                    // A new life: its inbox starts empty.
                    self.inbox = InboxCursor::new();
                    self.set_stored(true);
                    Ok(true)
                }
                Ok(None) => Ok(false),
                Err(e) => Err(e),
            },
        };
        match outcome {
            Ok(true) => true,
            Ok(false) => {
                tracing::warn!(client_id = %self.client_id, incarnation = self.incarnation, "the store ignored the session's record: this incarnation is no longer the stored one");
                self.set_stored(false);
                false
            }
            Err(e) => {
                tracing::warn!(client_id = %self.client_id, error = %e, "session record not stored");
                false
            }
        }
    }

    /// Keeps the node-wide count of durable sessions (publishers' acknowledgements wait only while there are any).
    fn set_stored(&mut self, stored: bool) {
        if stored != self.stored {
            if stored {
                self.ctx.durable_sessions.fetch_add(1, Ordering::AcqRel);
            } else {
                self.ctx.durable_sessions.fetch_sub(1, Ordering::AcqRel);
            }
            self.stored = stored;
        }
    }

    /// Whether the ACL lets this client publish (`write`) or receive (`!write`) on a topic.
    pub(super) fn allowed(&self, topic: &str, write: bool) -> bool {
        let Some(auth) = self.perms.as_ref().filter(|a| a.enforced()) else {
            return true;
        };
        let who = Who {
            username: self.username.as_deref(),
            client_id: &self.client_id,
        };
        if write {
            auth.can_publish(who, topic)
        } else {
            auth.can_read(who, topic)
        }
    }

    fn publish_will(&mut self) {
        if let Some(w) = self.will.take() {
            if !self.allowed(&w.topic, true) {
                self.ctx
                    .metrics
                    .acl_denied
                    .with_label_values(&["will"])
                    .inc();
                tracing::info!(client_id = %self.client_id, topic = %w.topic, "Will denied by the ACL");
                return;
            }
            tracing::debug!(client_id = %self.client_id, topic = %w.topic, "publishing Will");
            let mut properties = w.properties;
            properties.will_delay_interval = None;
            let now = Instant::now();
            let expires_at = properties
                .message_expiry_interval
                .take()
                .map(|s| now + Duration::from_secs(u64::from(s)));
            let message = Message {
                topic: w.topic,
                payload: w.payload,
                qos: w.qos,
                retain: w.retain,
                properties,
                expires_at,
                publisher: Some(self.id),
                received: now,
                qos2_origin: None,
            };
            self.ctx
                .metrics
                .messages_received
                .with_label_values(&[Metrics::qos_label(w.qos)])
                .inc();
            self.ctx.route(Arc::new(message), Ticket::default());
        }
    }

    fn deliver(&mut self, mut d: Delivery, ticket: &Ticket) {
        if !self.allowed(&d.message.topic, false) {
            self.ctx
                .metrics
                .acl_denied
                .with_label_values(&["deliver"])
                .inc();
            self.ctx
                .metrics
                .dropped
                .with_label_values(&["acl_denied"])
                .inc();
            return;
        }
        // A persistent session's QoS 1/2 copy is durable: appended to its inbox in the store, within its stored
        // quota; the publisher's acknowledgement (and credit) wait for that commit, and the copy is sent only
        // once committed (so a packet id derived from its seq is never reused for another message after a crash).
        if let Some(store) = self
            .ctx
            .store
            .clone()
            .filter(|_| self.stored && d.qos != QoS::AtMostOnce)
        {
            let limits = &self.ctx.config.limits;
            match self.inbox.admit(
                d.message.weight() as u64,
                limits.max_queued_messages,
                limits.max_queued_bytes,
            ) {
                Admit::Full { log } => {
                    self.ctx
                        .metrics
                        .dropped
                        .with_label_values(&["quota_exceeded"])
                        .inc();
                    if let Some(g) = &ticket.gate {
                        g.refuse_quota();
                    }
                    if log {
                        tracing::warn!(
                            client_id = %self.client_id,
                            stored = self.inbox.count,
                            bytes = self.inbox.bytes,
                            "stored quota of a persistent session is full (max_queued_messages / \
                             max_queued_bytes): new copies are refused until its client takes some"
                        );
                    }
                }
                Admit::Append(r) => {
                    d.durable = Some(r);
                    self.ctx.metrics.inbox_appended.inc();
                    let once = d
                        .message
                        .qos2_origin
                        .as_deref()
                        .map(|o| (o.client_id.as_str(), o.pkid));
                    let commit = Box::pin(store.inbox_append(
                        &self.client_id,
                        self.incarnation,
                        r.seq,
                        &d,
                        once,
                    ));
                    let _ = self.commits().send(Pending::Append {
                        delivery: d,
                        ticket: ticket.clone(),
                        commit,
                    });
                }
            }
            return;
        }
        let online = self.conn.is_some();
        if let Err(reason) = self.outbox.push(d, online) {
            self.ctx
                .metrics
                .dropped
                .with_label_values(&[reason.label()])
                .inc();
            return;
        }
        self.flush();
    }

    /// Moves what the window allows from the queue to the connection's writer, up to its budget.
    fn flush(&mut self) {
        let Some(conn) = self.conn.clone() else {
            return;
        };
        self.page_in();
        let now = Instant::now();
        while conn.has_room() {
            let metrics = &self.ctx.metrics;
            let Some(out) = self.outbox.next(now, |r| {
                metrics.dropped.with_label_values(&[r.label()]).inc()
            }) else {
                // The read-ahead ran dry while the window has room: the next page, if the store has one.
                if self.page_in() {
                    continue;
                }
                return;
            };
            self.send(&conn, out);
        }
        conn.shared.session_waiting.store(true, Ordering::Release);
        // The writer may have drained between the check and the flag: look once more.
        if conn.has_room() {
            conn.shared.session_waiting.store(false, Ordering::Release);
            self.flush();
        }
    }

    fn send(&mut self, conn: &ConnHandle, out: Outgoing) {
        match out {
            Outgoing::Publish {
                pkid,
                dup,
                delivery,
            } => {
                let now = Instant::now();
                let Some(publish) = delivery.to_publish(pkid, dup, now) else {
                    self.ctx
                        .metrics
                        .dropped
                        .with_label_values(&["expired"])
                        .inc();
                    self.forget(pkid, delivery.qos);
                    return;
                };
                if conn.max_packet_size < usize::MAX {
                    let size = crate::protocol::encoded_len(
                        &Packet::Publish(publish.clone()),
                        conn.version,
                    )
                    .unwrap_or(usize::MAX);
                    if size > conn.max_packet_size {
                        // [MQTT-3.1.2-25]: discard as if delivered.
                        self.ctx
                            .metrics
                            .dropped
                            .with_label_values(&["too_large_for_client"])
                            .inc();
                        self.forget(pkid, delivery.qos);
                        return;
                    }
                }
                let m = &self.ctx.metrics;
                m.messages_sent
                    .with_label_values(&[Metrics::qos_label(publish.qos)])
                    .inc();
                m.delivery_latency.observe(
                    now.saturating_duration_since(delivery.message.received)
                        .as_secs_f64(),
                );
                conn.send(Outbound::Publish(Box::new(publish)));
            }
            Outgoing::PubRel(pkid) => {
                conn.packet(Packet::PubRel(PubAck::new(pkid)));
            }
        }
    }

    /// Takes a message that will not be sent out of the window.
    fn forget(&mut self, pkid: u16, qos: QoS) {
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                let _ = self.outbox.puback(pkid);
            }
            QoS::ExactlyOnce => {
                let _ = self.outbox.pubrec(pkid, ReasonCode::UNSPECIFIED_ERROR);
            }
        }
    }

    fn ack(&mut self, packet: Packet) {
        let Some(conn) = self.conn.clone() else {
            return;
        };
        let result = match packet {
            Packet::PubAck(a) => self.outbox.puback(a.pkid).map(|_| ()),
            Packet::PubRec(a) => match self.outbox.pubrec(a.pkid, a.reason) {
                Ok(Some(out)) => {
                    self.send(&conn, out);
                    Ok(())
                }
                Ok(None) => Ok(()),
                Err(e) => {
                    // A PUBREC for an unknown id still gets its PUBREL, with 0x92 in v5 (spec 3.6.2.1).
                    let mut rel = PubAck::new(a.pkid);
                    rel.reason = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
                    conn.packet(Packet::PubRel(rel));
                    Err(e)
                }
            },
            Packet::PubComp(a) => self.outbox.pubcomp(a.pkid).map(|_| ()),
            _ => Ok(()),
        };
        if let Err(e) = result {
            tracing::debug!(client_id = %self.client_id, error = ?e, "acknowledgement does not match the session");
        }
        self.flush();
    }

    /// Brings the queue-depth gauges and the node-wide queued-bytes count up to date.
    fn report(&mut self) {
        // The read-ahead of a stored inbox is memory too: it counts towards the watermark.
        let now = (
            self.outbox.queued() as i64,
            (self.outbox.queued_bytes() + self.outbox.durable_queued().1) as i64,
            self.outbox.inflight() as i64,
        );
        let (q, b, i) = self.reported;
        if now != self.reported {
            let m = &self.ctx.metrics;
            m.queued_messages.add(now.0 - q);
            m.queued_bytes.add(now.1 - b);
            m.inflight.add(now.2 - i);
            self.ctx.adjust_queued_bytes(now.1 - b);
            self.reported = now;
        }
    }
}
