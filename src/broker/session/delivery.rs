//! The session's outbound path: a delivery is appended to the stored inbox (persistent sessions, QoS 1/2)
//! or queued in memory, then moved out through the window to the connection's writer; acknowledgements
//! free the window.

use super::inbox::Pending;
use super::outbox::Outgoing;
use super::SessionState;
use crate::broker::conn::{ConnHandle, Outbound};
use crate::broker::message::Delivery;
use crate::broker::metrics::Metrics;
use crate::broker::ticket::Ticket;
use crate::protocol::{Packet, PubAck, QoS, ReasonCode};
use std::sync::atomic::Ordering;
use std::time::Instant;

impl SessionState {
    pub(super) fn deliver(&mut self, d: Delivery, ticket: &Ticket) {
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
        if self.stored && d.qos != QoS::AtMostOnce {
            if d.message.stored_fanout && d.shared.is_none() {
                // Its publisher's node had apply fan it out to the persistent sessions' inboxes: this
                // session's copy comes from there (or, if this subscription was not yet committed then, the
                // message preceded it). This one is not a copy the publisher waits for.
                if let Some(g) = &ticket.gate {
                    g.not_a_copy();
                }
                return;
            }
            self.push_stored(d, ticket);
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

    /// A copy only this session stores (a retained message sent on subscribe, a shared subscription's
    /// message, one its publisher's node did not fan out): appended to its inbox in the store, within its
    /// stored quota. The publisher's acknowledgement (and credit) wait for that commit, and the copy comes
    /// back from apply with its seq, to be sent only once committed (so a packet id derived from its seq is
    /// never reused for another message after a crash).
    pub(super) fn push_stored(&mut self, d: Delivery, ticket: &Ticket) {
        let Some(store) = self.ctx.store.clone() else {
            return;
        };
        let quota = self.ctx.config.limits.stored_quota();
        let once = d
            .message
            .qos2_origin
            .as_deref()
            .map(|o| (o.client_id.as_str(), o.pkid));
        let commit = Box::pin(store.inbox_push(&self.client_id, self.incarnation, &d, once, quota));
        let _ = self.commits().send(Pending::Push {
            ticket: ticket.clone(),
            commit,
        });
    }

    /// The store refused a copy: this session's stored quota is full.
    pub(super) fn quota_full(&mut self) {
        self.ctx
            .metrics
            .dropped
            .with_label_values(&["quota_exceeded"])
            .inc();
        if self.inbox.refused() {
            tracing::warn!(
                client_id = %self.client_id,
                stored = self.inbox.count,
                bytes = self.inbox.bytes,
                "stored quota of a persistent session is full (max_queued_messages / \
                 max_queued_bytes): new copies are refused until its client takes some"
            );
        }
    }

    /// Moves what the window allows from the queue to the connection's writer, up to its budget.
    pub(super) fn flush(&mut self) {
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
        // The writer may drain between the check and the flag: look once more. Both sides are SeqCst (here
        // the flag's store and the count's load, in the writer the count's decrement and the flag's swap):
        // with weaker orderings each side may miss the other's write, the writer sends no `Drained` and the
        // session waits for nothing, with copies queued (seen as a stall at the end of a load).
        conn.shared.session_waiting.store(true, Ordering::SeqCst);
        if conn.shared.pending.load(Ordering::SeqCst) < crate::broker::conn::WRITER_BUDGET {
            conn.shared.session_waiting.store(false, Ordering::SeqCst);
            self.flush();
        }
    }

    pub(super) fn send(&mut self, conn: &ConnHandle, out: Outgoing) {
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

    pub(super) fn ack(&mut self, packet: Packet) {
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
}
