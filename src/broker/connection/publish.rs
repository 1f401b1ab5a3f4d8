//! A PUBLISH from the client: admission (rate, Maximum QoS, size, aliases, Receive Maximum, ACL), the
//! inbound QoS 2 state, the fan-out to persistent sessions and the retained store, and the acknowledgement
//! that waits for what it depends on.

use super::*;

impl Reader {
    pub(super) async fn publish(&mut self, mut p: Publish) -> Option<End> {
        let ctx = self.ctx.clone();
        if let Some(end) = self.throttle(1, true).await {
            return Some(end);
        }
        let cfg = &ctx.config;
        ctx.metrics
            .messages_received
            .with_label_values(&[Metrics::qos_label(p.qos)])
            .inc();
        if p.qos > self.max_qos {
            return Some(End::Violation(Violation::QosAboveMaximum));
        }
        if p.retain && !cfg.mqtt.retain_available {
            return Some(End::Violation(Violation::RetainNotAvailable));
        }
        if let Some(alias) = p.properties.topic_alias {
            if alias == 0 || alias > cfg.limits.topic_alias_maximum {
                return Some(End::Violation(Violation::TopicAliasOutOfRange(alias)));
            }
            if p.topic.is_empty() {
                match self.aliases.get(&alias) {
                    Some(t) => p.topic = t.clone(),
                    None => return Some(End::Violation(Violation::UnknownTopicAlias(alias))),
                }
            } else {
                self.aliases.insert(alias, p.topic.clone());
            }
        }
        if p.topic.split('/').count() > cfg.limits.max_topic_levels {
            return Some(End::Violation(Violation::TopicLevels));
        }
        let pkid = p.pkid;
        let qos = p.qos;
        if qos == QoS::AtLeastOnce {
            if let Some(end) = self.admit_qos1().await {
                return Some(end);
            }
        }
        let mut reason = ReasonCode::SUCCESS;
        let mut route = true;
        let mut wait = None;
        if qos == QoS::ExactlyOnce {
            // Resent while its first copy is still being stored (a client that reconnected at once and
            // resent): that outcome decides, so volatile subscribers do not get it twice [MQTT-4.3.3-9]. Not
            // while settling a connection taken over: its session, which it may wait on, waits for it.
            if !self.settling && self.inbound_qos2.get(pkid) == Some(Qos2Id::Pending) {
                let ids = self.inbound_qos2.clone();
                tokio::select! {
                    _ = ids.until_settled(pkid) => {}
                    _ = self.stopped() => return Some(End::ClosedByServer),
                }
            }
            match self.inbound_qos2.get(pkid) {
                // A re-sent QoS 2 PUBLISH before PUBREL: acknowledged, not delivered twice [MQTT-4.3.3-10].
                Some(Qos2Id::Recorded) => route = false,
                // Still pending (settling only): routed again (persistent subscribers store it at most once),
                // so this resend is acknowledged only once the message is stored.
                Some(Qos2Id::Pending) => {}
                None if self.inbound_qos2.len() + self.acks.qos1_waiting()
                    >= usize::from(cfg.limits.max_inflight) =>
                {
                    return Some(End::Violation(Violation::Qos2InFlight));
                }
                None => {}
            }
        }
        if route
            && cfg.limits.message_size_limit != 0
            && p.payload.len() > cfg.limits.message_size_limit
        {
            ctx.metrics
                .dropped
                .with_label_values(&["message_size_limit"])
                .inc();
            reason = ReasonCode::QUOTA_EXCEEDED;
            route = false;
        }
        if route
            && p.properties.payload_format_indicator == Some(1)
            && std::str::from_utf8(&p.payload).is_err()
        {
            ctx.metrics
                .dropped
                .with_label_values(&["payload_format_invalid"])
                .inc();
            reason = ReasonCode::PAYLOAD_FORMAT_INVALID;
            route = false;
        }
        if route
            && self.perms.enforced()
            && !self.perms.can_publish(
                Who {
                    username: self.username.as_deref(),
                    client_id: &self.client_id,
                },
                &p.topic,
            )
        {
            // v5: PUBACK / PUBREC 0x87; before v5 the message is acknowledged and dropped (Mosquitto's behaviour).
            ctx.metrics.acl_denied.with_label_values(&["publish"]).inc();
            ctx.metrics.dropped.with_label_values(&["acl_denied"]).inc();
            tracing::debug!(topic = %p.topic, "publish denied by the ACL");
            reason = ReasonCode::NOT_AUTHORIZED;
            route = false;
        }
        if route && p.topic.starts_with("$SYS") {
            // Only the broker publishes under $SYS.
            ctx.metrics.dropped.with_label_values(&["sys_topic"]).inc();
            route = false;
        }
        if route && qos != QoS::AtMostOnce {
            if let Some(end) = self.ensure_fresh().await {
                return Some(end);
            }
        }
        if route {
            let Some(permit) = self.wait_for_credit().await else {
                return Some(End::ClosedByServer);
            };
            if qos == QoS::ExactlyOnce && self.inbound_qos2.get(pkid).is_none() {
                // A session that keeps nothing in the store holds the id in memory only: recorded at once.
                let state = if self.incarnation.is_some() {
                    Qos2Id::Pending
                } else {
                    Qos2Id::Recorded
                };
                self.inbound_qos2.insert(pkid, state);
            }
            let mut message = Message::from_publish(p, Some(self.session_id), Instant::now());
            if qos == QoS::ExactlyOnce && self.incarnation.is_some() {
                message.qos2_origin = Some(Arc::new(Qos2Origin {
                    client_id: self.client_id.clone(),
                    pkid,
                }));
            }
            // Persistent sessions' copies go through the store in one command, whichever nodes own them.
            let fanout = ctx.needs_fanout(&message);
            message.stored_fanout = fanout;
            let message = Arc::new(message);
            // What must be committed before the acknowledgement holds the gate: persistent sessions' copies,
            // and a retained message. The reader goes on meanwhile; acknowledgements leave in order.
            // A persistent session's inbound QoS 2 id is stored with it: a resend after kill -9 or a takeover
            // is not routed again, and the PUBREC waits for that commit [MQTT-4.3.3-9].
            let record_qos2 = qos == QoS::ExactlyOnce && self.incarnation.is_some();
            // Shared groups with members on other nodes: a persistent member there stores its copy before
            // the acknowledgement (the peer answers; see `RemoteLink::forward_message`).
            let needs_gate = qos != QoS::AtMostOnce
                && ctx.store.is_some()
                && (message.retain
                    || record_qos2
                    || fanout
                    || ctx.durable_sessions.load(Ordering::Acquire) > 0
                    || ctx.remote.as_ref().is_some_and(|l| l.has_remote_groups()));
            let gate = needs_gate.then(|| {
                let (gate, w) = AckGate::new();
                wait = Some(w);
                gate
            });
            // Its id is recorded once every copy it made is committed, then PUBREC goes: a crash before the
            // record has the resend routed again, and persistent subscribers that stored it already add
            // nothing ([`Message::qos2_origin`]); a crash after it has the resend acknowledged, not routed.
            let record = if record_qos2 { wait.take() } else { None };
            if let (Some(store), Some(gate_wait), Some(incarnation)) =
                (&ctx.store, record, self.incarnation)
            {
                let (store, client_id) = (store.clone(), self.client_id.clone());
                let ids = self.inbound_qos2.clone();
                let (tx, rx) = tokio::sync::oneshot::channel();
                tokio::spawn(async move {
                    let outcome = match gate_wait.await.unwrap_or(AckOutcome::Failed) {
                        // Released meanwhile (a PUBREL on another connection): nothing left to record.
                        AckOutcome::Stored if ids.get(pkid) != Some(Qos2Id::Pending) => {
                            AckOutcome::Stored
                        }
                        AckOutcome::Stored => {
                            match store.qos2_received(&client_id, incarnation, pkid).await {
                                Ok(true) => {
                                    ids.mark_recorded(pkid);
                                    AckOutcome::Stored
                                }
                                _ => {
                                    tracing::warn!(pkid, "inbound QoS 2 id not stored");
                                    AckOutcome::Failed
                                }
                            }
                        }
                        other => other,
                    };
                    let _ = tx.send(outcome);
                });
                wait = Some(rx);
            }
            let mut retained = None;
            if message.retain {
                if let Some(g) = &gate {
                    // The retained store is one more place the message goes, and it never refuses it.
                    g.add_copies(1);
                }
                if let Some(store) = &ctx.store {
                    // Queued now, so retained changes from this connection commit in publish order.
                    let commit = ctx.commit_retained(store, &message, gate.clone());
                    if store.cluster().fresh() {
                        retained = Some(commit);
                    } else {
                        // No recent contact with a leader: the commit may wait for one (and fail), and live
                        // traffic must not wait with it; the index gets the message whenever it commits.
                        tokio::spawn(commit);
                    }
                }
            }
            let ticket = Ticket {
                credit: Some(Arc::new(permit)),
                gate,
            };
            if fanout {
                ctx.fan_out(&message, Some(&self.client_id), ticket.clone());
            }
            self.route_in_order(message, ticket, retained);
        }
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                let mut ack = PubAck::new(pkid);
                ack.reason = reason;
                self.acks.send(Packet::PubAck(ack), wait);
            }
            QoS::ExactlyOnce => {
                let mut rec = PubAck::new(pkid);
                rec.reason = reason;
                self.acks.send(Packet::PubRec(rec), wait);
            }
        }
        None
    }

    /// Routes a message once its retained change (if any) is applied here, and after every message this
    /// connection routed before it: a subscriber never gets the live copy of a retained message the index
    /// does not hold yet [MQTT-3.3.1-5], and this connection's messages keep their order [MQTT-4.6.0-5]. Only
    /// while a retained change is in flight does routing leave the reader for a task.
    fn route_in_order(
        &mut self,
        message: Arc<Message>,
        ticket: Ticket,
        retained: Option<impl std::future::Future<Output = ()> + Send + 'static>,
    ) {
        let before = self.routing.take().filter(|r| !r.is_finished());
        if retained.is_none() && before.is_none() {
            self.ctx.route_committed(message, ticket);
            return;
        }
        let ctx = self.ctx.clone();
        self.routing = Some(tokio::spawn(async move {
            if let Some(before) = before {
                let _ = before.await;
            }
            if let Some(retained) = retained {
                retained.await;
            }
            ctx.route_committed(message, ticket);
        }));
    }

    /// Waits until every message this connection published is routed and its retained change applied: a
    /// SUBSCRIBE after a retained PUBLISH finds it in the index.
    pub(super) async fn routed(&mut self) -> Option<End> {
        let r = self.routing.take()?;
        tokio::select! {
            _ = r => None,
            _ = self.stopped() => Some(End::ClosedByServer),
        }
    }
}
