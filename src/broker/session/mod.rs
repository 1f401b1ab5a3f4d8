//! The Session actor: the MQTT session, which outlives its connection when it is persistent. It owns the
//! subscriptions, the outbound queue and window, a persistent session's stored inbox and record, inbound QoS 2
//! ids, the Will and its delay, and the expiry timer.
//!
//! The decisions are pure and tested on their own: [`state::Lifecycle`] (attach, takeover, detach, Will and
//! expiry timers, discard), [`outbox::Outbox`] (queue, window, QoS 2 stages) and [`inbox::InboxCursor`] (the
//! stored inbox's window and quota). This file is the actor shell that executes their effects; [`delivery`]
//! is the outbound path, [`durable`] the session's side of its stored inbox, [`stored`] its record, and
//! [`subscriptions`] SUBSCRIBE/UNSUBSCRIBE.

mod delivery;
mod durable;
mod fence;
pub mod inbox;
pub mod outbox;
pub mod state;
mod stored;
mod subscriptions;
mod will;

use super::conn::ConnHandle;
use super::inbound::InboundQos2;
use super::message::{Delivery, SessionId};
use super::registry::RegistryMsg;
use super::shard::ShardMsg;
use super::ticket::Ticket;
use super::Context;
use crate::auth::acl::Who;
use crate::auth::Permissions;
use crate::protocol::{ConnAck, LastWill, Packet, ReasonCode, Subscribe, Unsubscribe};
use inbox::{InboxCursor, Pending};
use outbox::{InboxChange, Outbox, OutboxLimits};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use state::{Effect, Lifecycle, Timer};
use std::collections::HashMap;
use std::sync::Arc;

/// How long a takeover waits for the connection it replaces to end (its reader only settles what is
/// already buffered: normally well under a millisecond).
const TAKEOVER_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
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

/// Why a session did not take a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachRefused {
    /// Its record could not be stored: it sent the refusing CONNACK and closed the connection.
    Refused,
    /// The connection it had ended it meanwhile (a DISCONNECT with Session Expiry 0, read while it was taken
    /// over): the client gets a new session from the registry, which has forgotten this one.
    Ended,
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
    /// Answered with why the session did not take the connection (see [`AttachRefused`]).
    Attach(
        Box<Attach>,
        RpcReplyPort<Result<AttachReply, AttachRefused>>,
    ),
    Detach(Box<Detach>),
    Deliver(Delivery, crate::broker::ticket::Handed),
    /// PUBACK, PUBREC or PUBCOMP from the client.
    Ack {
        conn: u64,
        packet: Packet,
    },
    /// `installed` is answered once the shards have the change queued (before its SUBACK, which also waits
    /// for the store): the connection reads its next packet only then, so that packet sees it.
    Subscribe {
        conn: u64,
        packet: Subscribe,
        installed: tokio::sync::oneshot::Sender<()>,
    },
    Unsubscribe {
        conn: u64,
        packet: Unsubscribe,
        installed: tokio::sync::oneshot::Sender<()>,
    },
    /// The connection's writer has room again.
    Drained,
    /// Apply appended a copy to the session's stored inbox.
    Appended(Box<crate::store::InboxEvent>),
    /// The store refused a copy: the stored quota is full.
    QuotaFull,
    /// The removal of this many acknowledged copies was answered: the next page may be read.
    Removed(u64),
    /// A QoS 2 copy's release was committed (`ok`) or not: its PUBREL may go.
    ReleaseStored {
        pkid: u16,
        ok: bool,
    },
    /// A timer the lifecycle armed (see [`state::Effect::Arm`]).
    Due(Timer, u64),
    /// End the session now: a clean-start connect replaced it, or an operator removed it.
    /// The reply (if any) is sent once the session has ended.
    Discard(ReasonCode, Option<RpcReplyPort<()>>),
    /// The server is stopping: close the connection with this reason and end.
    Shutdown(ReasonCode, RpcReplyPort<()>),
    /// Whether a connection is attached (admin API).
    IsOnline(RpcReplyPort<bool>),

    /// The cluster published the Will of this connection (this node was counted as down).
    WillFired(u64),
    /// The read barrier of a pending retained read (see [`fence`]).
    Fence(fence::FenceEvent),
}

pub struct Session;

pub struct SessionArgs {
    pub ctx: Arc<Context>,
    pub client_id: String,
    pub id: SessionId,
    /// A persistent session read back from the store at start: offline, with its subscriptions.
    pub restored: Option<Restored>,
    /// Kept by the session for the registry: whether it ends with its connection (a client attached and
    /// the expiry is 0). A connect without Clean Start for the client then replaces it.
    pub ends_with_connection: Arc<std::sync::atomic::AtomicBool>,
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
    ends_with_connection: Arc<std::sync::atomic::AtomicBool>,
    me: ActorRef<SessionMsg>,
    client_id: String,
    id: SessionId,
    outbox: Outbox,
    subs: HashMap<String, SubRecord>,
    inbound_qos2: InboundQos2,
    /// The current connection (the one [`Lifecycle`] names).
    conn: Option<ConnHandle>,
    /// Connection, expiry, Will and their timers: the pure lifecycle.
    lifecycle: Lifecycle,
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
    /// The connection whose Will the lifecycle holds, and the one whose Will the store has recorded (in a
    /// cluster: see [`will`]).
    will_conn: u64,
    will_recorded: Option<u64>,
    /// Retained messages owed to SUBSCRIBEs until a read barrier completes (in a cluster; see [`fence`]), and
    /// the generation of the latest barrier asked.
    fence: Option<fence::Pending>,
    fence_gen: u64,
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
            ends_with_connection: a.ends_with_connection.clone(),
            me: me.clone(),
            client_id: a.client_id,
            id: a.id,
            outbox: Outbox::new(limits, window),
            subs: HashMap::new(),
            inbound_qos2: InboundQos2::default(),
            conn: None,
            lifecycle: Lifecycle::new(a.ctx.config.limits.max_session_expiry),
            perms: None,
            username: None,
            stored: false,
            incarnation: 0,
            inbox: InboxCursor::new(),
            commits: None,
            pending_changes: Vec::new(),
            reported: (0, 0, 0),
            will_conn: 0,
            will_recorded: None,
            fence: None,
            fence_gen: 0,
            ctx: a.ctx,
        };
        if let Some(r) = restored {
            // Offline, as the client left it (or as the crash left it): reconnecting with clean start = 0
            // gets session present = 1 and these subscriptions.
            let (lifecycle, effects) = Lifecycle::restored(
                s.ctx.config.limits.max_session_expiry,
                r.expiry,
                r.remaining,
            );
            s.lifecycle = lifecycle;
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
                // Its route, if new, is committed in the background: nobody waits on a restore.
                let _ = rec.install(&s.ctx, &me, s.id, &filter, true);
                s.subs.insert(filter, rec);
                s.ctx.metrics.subscriptions.inc();
            }
            s.execute(&me, effects, None);
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
        } else if s.lifecycle.attached_before() {
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
            SessionMsg::Detach(d) => s.detach(&me, *d),
            SessionMsg::Deliver(d, handed) => s.deliver_live(d, handed.take()),
            SessionMsg::Ack { conn, packet } if s.is_current(conn) => s.ack(packet),
            SessionMsg::Subscribe {
                conn,
                packet,
                installed,
            } if s.is_current(conn) => s.subscribe(&me, packet, installed).await,
            SessionMsg::Unsubscribe {
                conn,
                packet,
                installed,
            } if s.is_current(conn) => s.unsubscribe(packet, installed).await,
            SessionMsg::Ack { .. }
            | SessionMsg::Subscribe { .. }
            | SessionMsg::Unsubscribe { .. } => {}
            SessionMsg::Drained => s.flush(),
            SessionMsg::Appended(e) => s.appended(*e),
            SessionMsg::QuotaFull => s.quota_full(),
            SessionMsg::ReleaseStored { pkid, ok } => s.release_stored(pkid, ok),
            SessionMsg::Removed(count) => {
                s.inbox.removing = s.inbox.removing.saturating_sub(count);
                s.flush();
            }
            SessionMsg::Due(timer, g) => {
                let effects = s.lifecycle.due(timer, g);
                if timer == Timer::Expiry && effects.contains(&Effect::End) {
                    tracing::debug!(client_id = %s.client_id, "session expired");
                }
                s.execute(&me, effects, None);
            }
            SessionMsg::Discard(reason, done) => {
                if reason == ReasonCode::SESSION_TAKEN_OVER {
                    s.settle_current(&me, reason).await;
                }
                s.discard(&me, reason);
                if let Some(done) = done {
                    let _ = done.send(());
                }
            }
            SessionMsg::Shutdown(reason, done) => {
                if let Some(c) = &s.conn {
                    let reference = s.ctx.config.mqtt.server_reference.clone();
                    c.close_with_reference(reason, reference);
                }
                let _ = done.send(());
            }
            SessionMsg::IsOnline(reply) => {
                let _ = reply.send(s.conn.is_some());
            }

            SessionMsg::WillFired(conn) => s.will_fired(conn),
            SessionMsg::Fence(event) => s.fence_event(event),
        }
        s.sync_inbox();
        s.sync_will();
        s.report();
        Ok(())
    }
}

impl SessionState {
    fn is_current(&self, conn: u64) -> bool {
        self.lifecycle.is_current(conn)
    }

    /// Carries out what the lifecycle decided. `old`: a connection the event took from the session (a
    /// takeover or a discard), for `Close`.
    fn execute(
        &mut self,
        me: &ActorRef<SessionMsg>,
        effects: Vec<Effect>,
        old: Option<ConnHandle>,
    ) {
        for effect in effects {
            match effect {
                Effect::Close(id, reason) => {
                    if let Some(c) = old.as_ref().filter(|c| c.id == id) {
                        c.close(reason);
                    }
                }
                Effect::PublishWill(w) => self.publish_will(*w),
                Effect::Arm {
                    timer,
                    after,
                    generation,
                } => {
                    me.send_after(after, move || SessionMsg::Due(timer, generation));
                }
                Effect::Persist => {
                    // Offline from now on (expiry counts from the stored time): nothing waits for it.
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
                }
                Effect::End => self.end(me),
            }
        }
    }

    async fn attach(
        &mut self,
        me: &ActorRef<SessionMsg>,
        a: Attach,
    ) -> Result<AttachReply, AttachRefused> {
        if self
            .settle_current(me, ReasonCode::SESSION_TAKEN_OVER)
            .await
        {
            return Err(AttachRefused::Ended);
        }
        let ctx = self.ctx.clone();
        let m = &ctx.metrics;
        let old = self.conn.take();
        // Retained messages owed to the old connection are not the new one's (it subscribes again or not).
        self.drop_fence();
        if old.is_some() {
            // Still one online session.
            tracing::info!(client_id = %self.client_id, "session taken over");
        } else {
            if self.lifecycle.attached_before() {
                m.sessions_offline.dec();
            }
            m.sessions_online.inc();
        }
        if a.will.is_some() {
            self.will_conn = a.conn.id;
        }
        let attached = self
            .lifecycle
            .attach(a.conn.id, a.clean_start, a.expiry, a.will);
        self.report_ending();
        // The old connection's Will (if any) is checked against the ACL it connected with.
        self.execute(me, attached.effects, old);
        self.perms = Some(a.perms);
        self.username = a.username;
        self.outbox
            .set_window(a.receive_maximum.min(self.ctx.config.limits.max_inflight));
        self.conn = Some(a.conn.clone());
        let mut connack = a.connack;
        // The record this CONNACK reports (a new persistent session, or a resumed one now online) is
        // committed first: a crash after the CONNACK cannot lose the session it announced.
        if !self.persist(true).await {
            connack.reason = ReasonCode::SERVER_UNAVAILABLE;
            connack.session_present = false;
            m.connack
                .with_label_values(&[&format!("{:#04x}", connack.reason.0)])
                .inc();
            tracing::warn!(client_id = %self.client_id, "session record not stored: connection refused (CONNACK 0x88)");
            a.conn.refuse(connack);
            if self.stored {
                // The stored session stays as it was: offline, counting down its expiry.
                self.detach(
                    me,
                    Detach {
                        conn: a.conn.id,
                        publish_will: false,
                        expiry: None,
                    },
                );
            } else {
                // Nothing of it is stored: no client was told it exists, so it ends (the connection is
                // already refused).
                self.conn = None;
                self.ctx.metrics.sessions_online.dec();
                self.ctx.metrics.sessions_offline.inc();
                let effects = self.lifecycle.discard(ReasonCode::SERVER_UNAVAILABLE);
                self.execute(me, effects, None);
            }
            return Err(AttachRefused::Refused);
        }
        connack.session_present = attached.session_present;
        m.connack
            .with_label_values(&[&format!("{:#04x}", connack.reason.0)])
            .inc();
        a.conn.packet(Packet::ConnAck(connack));
        // The start of the stored inbox first: after a restart it holds the QoS 2 copies awaiting PUBREL.
        self.catch_up();
        self.page_in();
        for out in self.outbox.resend() {
            self.send(&a.conn, out);
        }
        self.flush();
        Ok(AttachReply {
            session_present: attached.session_present,
            inbound_qos2: self.inbound_qos2.clone(),
            incarnation: self.stored.then_some(self.incarnation),
        })
    }

    /// A new connection takes the session over (or a clean start replaces it): the current connection is
    /// closed with `reason` and has its end settled first, so a DISCONNECT its client sent just before
    /// reconnecting discards the Will as it should [MQTT-3.1.2-10], and whatever it read is handled before
    /// the new connection reads anything (its inbound QoS 2 ids included). Bounded: a connection that does
    /// not end in [`TAKEOVER_WAIT`] is left to end by itself, its Will decided as a lost connection's.
    /// True when the old connection's DISCONNECT ended the session (Session Expiry 0): it has ended, and the
    /// new connection needs a new one [MQTT-3.1.2-6].
    async fn settle_current(&mut self, me: &ActorRef<SessionMsg>, reason: ReasonCode) -> bool {
        let Some(old) = self.conn.clone() else {
            return false;
        };
        old.take_over(reason);
        match tokio::time::timeout(TAKEOVER_WAIT, old.read_ended()).await {
            Ok(end) if end.ends_session => {
                self.detach(
                    me,
                    Detach {
                        conn: old.id,
                        publish_will: end.publish_will,
                        expiry: Some(0),
                    },
                );
                return true;
            }
            Ok(end) if !end.publish_will => self.lifecycle.forget_will(),
            Ok(_) => {}
            Err(_) => {
                tracing::warn!(client_id = %self.client_id, "the connection taken over did not end in time");
            }
        }
        false
    }

    /// Ends the session at once (a clean-start connect replaced it, or it could not be stored).
    fn discard(&mut self, me: &ActorRef<SessionMsg>, reason: ReasonCode) {
        let conn = self.conn.take();
        if conn.is_some() {
            self.ctx.metrics.sessions_online.dec();
            self.ctx.metrics.sessions_offline.inc();
        }
        let effects = self.lifecycle.discard(reason);
        self.execute(me, effects, conn);
    }

    fn detach(&mut self, me: &ActorRef<SessionMsg>, d: Detach) {
        if !self.is_current(d.conn) {
            return;
        }
        let effects = self.lifecycle.detach(d.conn, d.publish_will, d.expiry);
        self.report_ending();
        self.conn = None;
        self.drop_fence();
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
        self.execute(me, effects, None);
    }

    /// Ends the session (the lifecycle published a pending Will first): its subscriptions leave the shards,
    /// its record and inbox leave the store, the registry forgets it, and the actor stops.
    fn end(&mut self, me: &ActorRef<SessionMsg>) {
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

    /// Tells the registry whether this session ends with its connection (see [`SessionArgs`]).
    fn report_ending(&self) {
        let ends = self.lifecycle.attached_before() && self.lifecycle.expiry() == 0;
        self.ends_with_connection
            .store(ends, std::sync::atomic::Ordering::Release);
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
