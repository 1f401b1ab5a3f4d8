//! SUBSCRIBE and UNSUBSCRIBE in a session: per-filter checks and reason codes, installing the filter in the
//! shards, and retained messages by Retain Handling.

use super::fence::Owed;
use super::{SessionMsg, SessionState};
use crate::broker::message::{Delivery, SessionId};
use crate::broker::shard::{ShardMsg, Subscriber};
use crate::broker::Context;
use crate::protocol::{
    topic, Packet, ReasonCode, RetainHandling, SubAck, Subscribe, SubscriptionOptions, UnsubAck,
    Unsubscribe,
};
use ractor::ActorRef;
use std::time::Instant;

/// A subscription as the session keeps it.
#[derive(Debug, Clone)]
pub struct SubRecord {
    pub options: SubscriptionOptions,
    pub sub_id: Option<u32>,
}

/// Splits `$share/{group}/{filter}` into (group, filter); a plain filter has no group.
fn split(filter: &str) -> (Option<&str>, &str) {
    match topic::parse_shared(filter) {
        Some(Ok(s)) => (Some(s.group), s.filter),
        _ => (None, filter),
    }
}

impl SubRecord {
    /// Puts the subscription in the shards; `new` (not a replacement): the filter counts toward this node's
    /// route, and the future (when there is one) resolves once a new route is committed.
    pub(super) fn install(
        &self,
        ctx: &Context,
        me: &ActorRef<SessionMsg>,
        id: SessionId,
        full: &str,
        new: bool,
    ) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        let (group, filter) = split(full);
        for shard in ctx.shards_for_filter(filter) {
            let _ = shard.cast(ShardMsg::Subscribe {
                id,
                filter: filter.to_string(),
                group: group.map(str::to_string),
                subscriber: Subscriber {
                    target: me.clone(),
                    options: self.options,
                    sub_id: self.sub_id,
                },
            });
        }
        ctx.remote.as_ref().filter(|_| new)?.subscribed(full)
    }

    pub fn remove_from_shards(&self, ctx: &Context, id: SessionId, full: &str) {
        if let Some(link) = &ctx.remote {
            link.unsubscribed(full);
        }
        let (group, filter) = split(full);
        for shard in ctx.shards_for_filter(filter) {
            let _ = shard.cast(ShardMsg::Unsubscribe {
                id,
                filter: filter.to_string(),
                group: group.map(str::to_string),
            });
        }
    }
}

impl SessionState {
    /// The reason code for one filter, or the granted QoS.
    fn check_filter(&self, filter: &str, sub_id: Option<u32>) -> Result<(), ReasonCode> {
        let mqtt = &self.ctx.config.mqtt;
        let (group, plain) = split(filter);
        if matches!(topic::parse_shared(filter), Some(Err(_))) {
            return Err(ReasonCode::TOPIC_FILTER_INVALID);
        }
        if group.is_some() && !mqtt.shared_subscription_available {
            return Err(ReasonCode::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED);
        }
        if topic::has_wildcards(plain) && !mqtt.wildcard_subscription_available {
            return Err(ReasonCode::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED);
        }
        if sub_id.is_some() && !mqtt.subscription_identifier_available {
            return Err(ReasonCode::SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED);
        }
        if plain.split('/').count() > self.ctx.config.limits.max_topic_levels {
            return Err(ReasonCode::TOPIC_FILTER_INVALID);
        }
        if let Some(auth) = self.perms.as_ref().filter(|a| a.enforced()) {
            let who = crate::auth::acl::Who {
                username: self.username.as_deref(),
                client_id: &self.client_id,
            };
            if !auth.can_subscribe(who, plain) {
                self.ctx
                    .metrics
                    .acl_denied
                    .with_label_values(&["subscribe"])
                    .inc();
                return Err(ReasonCode::NOT_AUTHORIZED);
            }
        }
        Ok(())
    }

    pub(super) async fn subscribe(
        &mut self,
        me: &ActorRef<SessionMsg>,
        packet: Subscribe,
        installed: tokio::sync::oneshot::Sender<()>,
    ) {
        let Some(conn) = self.conn.clone() else {
            return;
        };
        let v5 = conn.version.is_v5();
        let sub_id = packet.properties.subscription_identifiers.first().copied();
        let max_qos = self.ctx.config.mqtt.max_qos;
        let mut reasons = Vec::with_capacity(packet.filters.len());
        let mut retained: Vec<Delivery> = Vec::new();
        // In a cluster: the filters whose retained messages wait for a read barrier.
        let fenced = self.fences_retained();
        let mut owed = Vec::new();
        let now = Instant::now();
        // New routes in the cluster's table: the SUBACK waits for their commit.
        let mut routes = Vec::new();
        for f in packet.filters {
            if let Err(code) = self.check_filter(&f.filter, sub_id) {
                // Before MQTT 5 every failure is 0x80 [MQTT-3.9.3-2].
                reasons.push(if v5 {
                    code
                } else {
                    ReasonCode::UNSPECIFIED_ERROR
                });
                continue;
            }
            let mut options = f.options;
            options.qos = options.qos.min(max_qos);
            let record = SubRecord { options, sub_id };
            let new = !self.subs.contains_key(&f.filter);
            routes.extend(record.install(&self.ctx, me, self.id, &f.filter, new));
            let existed = self.subs.insert(f.filter.clone(), record).is_some();
            if !existed {
                self.ctx.metrics.subscriptions.inc();
            }
            reasons.push(ReasonCode(options.qos as u8));
            // Retained messages: not for shared subscriptions [MQTT-3.3.1-9 note, 4.8.2]; by Retain Handling.
            let (group, plain) = split(&f.filter);
            let send_retained = group.is_none()
                && match options.retain_handling {
                    RetainHandling::SendAtSubscribe => true,
                    RetainHandling::SendIfNew => !existed,
                    RetainHandling::DoNotSend => false,
                };
            if send_retained && fenced {
                owed.push(Owed {
                    full: f.filter.clone(),
                    plain: plain.to_string(),
                    qos: options.qos,
                    sub_id,
                });
            } else if send_retained {
                retained.extend(self.retained_matching(plain, options.qos, sub_id, now));
            }
        }
        // In a cluster the retained messages are read once a read barrier asked now has completed (see
        // [`super::fence`]); live copies wait behind them meanwhile, for a bounded time.
        self.owe_retained(me, owed);
        // Every shard has the new subscriptions queued ahead of anything the connection sends next; this actor
        // handles nothing else (no live copy) until the SUBACK and the retained messages are out (in a
        // cluster, live copies are held behind the retained ones until the barrier, for a bounded time). A stored
        // session's QoS 1/2 messages are matched through the store's index instead (apply fans them out): its
        // next packet waits until the record is applied here.
        let installed = self.installed_now(installed);
        for r in routes {
            r.await;
        }
        // A persistent session's SUBACK reports subscriptions that survive a crash: it waits for the commit.
        if !self.persist(false).await {
            self.refuse_unstored(&conn);
            return;
        }
        if let Some(i) = installed {
            let _ = i.send(());
        }
        if self.stored {
            // Every node decides from its applied state whether a message goes to persistent sessions
            // through the store: once this SUBACK is out, each one has applied the new subscription.
            if let Some(link) = self.ctx.remote.as_ref().filter(|l| l.clustered()) {
                link.sync_peers().await;
            }
        }
        conn.packet(Packet::SubAck(SubAck {
            pkid: packet.pkid,
            properties: Default::default(),
            reasons,
        }));
        for d in retained {
            self.deliver(d, &super::Ticket::default());
        }
    }

    /// Answers a SUBSCRIBE's or UNSUBSCRIBE's `installed` now when the shards alone match this session;
    /// a stored session's answer waits for its record (returned to send after `persist`).
    fn installed_now(
        &self,
        installed: tokio::sync::oneshot::Sender<()>,
    ) -> Option<tokio::sync::oneshot::Sender<()>> {
        // Persistent (expiry > 0) with a store: the record is what matches it.
        if self.ctx.store.is_some() && (self.stored || self.lifecycle.expiry() > 0) {
            return Some(installed);
        }
        let _ = installed.send(());
        None
    }

    /// The store did not take the session's record: the packet that depended on it gets no acknowledgement,
    /// and the connection closes (0x80) so the client retries on a new one, whose CONNACK waits for the
    /// record again.
    fn refuse_unstored(&self, conn: &crate::broker::conn::ConnHandle) {
        conn.close_with(
            ReasonCode::UNSPECIFIED_ERROR,
            Some("the session could not be stored".into()),
        );
    }

    pub(super) async fn unsubscribe(
        &mut self,
        packet: Unsubscribe,
        installed: tokio::sync::oneshot::Sender<()>,
    ) {
        let Some(conn) = self.conn.clone() else {
            return;
        };
        let mut reasons = Vec::with_capacity(packet.filters.len());
        for filter in packet.filters {
            match self.subs.remove(&filter) {
                Some(rec) => {
                    rec.remove_from_shards(&self.ctx, self.id, &filter);
                    self.forget_owed(&filter);
                    self.ctx.metrics.subscriptions.dec();
                    reasons.push(ReasonCode::SUCCESS);
                }
                None => reasons.push(ReasonCode::NO_SUBSCRIPTION_EXISTED),
            }
        }
        let installed = self.installed_now(installed);
        if !self.persist(false).await {
            self.refuse_unstored(&conn);
            return;
        }
        if let Some(i) = installed {
            let _ = i.send(());
        }
        conn.packet(Packet::UnsubAck(UnsubAck {
            pkid: packet.pkid,
            properties: Default::default(),
            reasons,
        }));
    }
}
