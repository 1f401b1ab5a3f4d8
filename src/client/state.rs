//! The client side of the MQTT session as a pure state machine: packet identifiers, the outbound in-flight
//! window with its QoS 1/2 handshakes, inbound QoS 2 de-duplication, and what to resend on reconnect.
//! `P` and `R` are the completion tokens of publishes and of (un)subscribe requests; no I/O here.

use crate::protocol::{Packet, PubAck, Publish, QoS, ReasonCode};
use std::collections::{HashMap, HashSet};

/// Where an outbound QoS 1/2 publish stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// QoS 1, sent, waiting for PUBACK.
    AwaitAck,
    /// QoS 2, sent, waiting for PUBREC.
    AwaitRec,
    /// QoS 2, PUBREL sent, waiting for PUBCOMP.
    AwaitComp,
}

struct Outgoing<P> {
    publish: Publish,
    stage: Stage,
    /// Send order, so a reconnect resends in the original order [MQTT-4.6.0-1].
    seq: u64,
    done: P,
}

struct Request<R> {
    packet: Packet,
    seq: u64,
    done: R,
}

/// What an acknowledgement means for the publish it acknowledges.
#[derive(Debug, PartialEq, Eq)]
pub enum AckOutcome<P> {
    /// The handshake finished; complete the caller with this reason.
    Done(P, ReasonCode),
    /// PUBREC accepted: send this PUBREL and wait for PUBCOMP.
    Release(Packet),
    /// An ack for no publish we know, or for the wrong stage; `reply` answers it if the protocol asks to.
    Unknown { reply: Option<Packet> },
}

/// The client's session state.
pub struct ClientSession<P, R> {
    outgoing: HashMap<u16, Outgoing<P>>,
    requests: HashMap<u16, Request<R>>,
    inbound_qos2: HashSet<u16>,
    next_pkid: u16,
    seq: u64,
    window: usize,
    v5: bool,
}

impl<P, R> ClientSession<P, R> {
    /// An empty session allowing `window` QoS 1/2 publishes in flight.
    pub fn new(window: usize, v5: bool) -> Self {
        ClientSession {
            outgoing: HashMap::new(),
            requests: HashMap::new(),
            inbound_qos2: HashSet::new(),
            next_pkid: 0,
            seq: 0,
            window: window.max(1),
            v5,
        }
    }

    /// Sets the in-flight window (the lower of ours and the server's Receive Maximum).
    pub fn set_window(&mut self, window: usize) {
        self.window = window.max(1);
    }

    /// True if another QoS 1/2 publish may be sent now.
    pub fn has_window(&self) -> bool {
        self.outgoing.len() < self.window
    }

    /// QoS 1/2 publishes awaiting their handshake.
    pub fn inflight(&self) -> usize {
        self.outgoing.len()
    }

    /// A free packet identifier, or `None` if all 65,535 are in use [MQTT-2.2.1-3].
    pub fn alloc_pkid(&mut self) -> Option<u16> {
        for _ in 0..u16::MAX {
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            let id = self.next_pkid;
            if !self.outgoing.contains_key(&id) && !self.requests.contains_key(&id) {
                return Some(id);
            }
        }
        None
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Records a QoS 1/2 publish (its `pkid` already allocated) as sent.
    pub fn track_publish(&mut self, publish: Publish, done: P) {
        let stage = if publish.qos == QoS::ExactlyOnce {
            Stage::AwaitRec
        } else {
            Stage::AwaitAck
        };
        let seq = self.next_seq();
        self.outgoing.insert(
            publish.pkid,
            Outgoing {
                publish,
                stage,
                seq,
                done,
            },
        );
    }

    /// Records a SUBSCRIBE or UNSUBSCRIBE (with its allocated `pkid`) as sent.
    pub fn track_request(&mut self, pkid: u16, packet: Packet, done: R) {
        let seq = self.next_seq();
        self.requests.insert(pkid, Request { packet, seq, done });
    }

    /// The SUBACK / UNSUBACK for `pkid` arrived.
    pub fn complete_request(&mut self, pkid: u16) -> Option<R> {
        self.requests.remove(&pkid).map(|r| r.done)
    }

    /// PUBACK for a QoS 1 publish.
    pub fn on_puback(&mut self, ack: &PubAck) -> AckOutcome<P> {
        self.finish(ack.pkid, Stage::AwaitAck, ack.reason)
    }

    /// PUBCOMP for a QoS 2 publish.
    /// PUBCOMP: the QoS 2 publish is done. The server accepted it at PUBREC; a PUBCOMP with 0x92 (Packet
    /// Identifier not found) answers a PUBREL resent after the server already released the id (it restarted
    /// or the connection broke after its PUBCOMP left): "not an error during recovery" (MQTT 5 3.7.2.1), so
    /// the publish succeeded.
    pub fn on_pubcomp(&mut self, ack: &PubAck) -> AckOutcome<P> {
        let reason = if ack.reason == ReasonCode::PACKET_IDENTIFIER_NOT_FOUND {
            ReasonCode::SUCCESS
        } else {
            ack.reason
        };
        self.finish(ack.pkid, Stage::AwaitComp, reason)
    }

    fn finish(&mut self, pkid: u16, stage: Stage, reason: ReasonCode) -> AckOutcome<P> {
        match self.outgoing.get(&pkid) {
            Some(o) if o.stage == stage => {}
            _ => return AckOutcome::Unknown { reply: None },
        }
        match self.outgoing.remove(&pkid) {
            Some(o) => AckOutcome::Done(o.done, reason),
            None => AckOutcome::Unknown { reply: None },
        }
    }

    /// PUBREC for a QoS 2 publish: release it, or finish it if the server refused it (v5 reason >= 0x80,
    /// after which no PUBREL is sent [MQTT-4.3.3-4]).
    pub fn on_pubrec(&mut self, ack: &PubAck) -> AckOutcome<P> {
        let known = matches!(self.outgoing.get(&ack.pkid), Some(o) if o.stage != Stage::AwaitAck);
        if !known {
            // Answer an unknown PUBREC so the server can free its state (v5: Packet Identifier not found).
            let reason = if self.v5 {
                ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
            } else {
                ReasonCode::SUCCESS
            };
            let rel = PubAck {
                pkid: ack.pkid,
                reason,
                ..PubAck::default()
            };
            return AckOutcome::Unknown {
                reply: Some(Packet::PubRel(rel)),
            };
        }
        if ack.reason.is_error() {
            return self.finish(ack.pkid, Stage::AwaitRec, ack.reason);
        }
        if let Some(o) = self.outgoing.get_mut(&ack.pkid) {
            o.stage = Stage::AwaitComp;
        }
        AckOutcome::Release(Packet::PubRel(PubAck::new(ack.pkid)))
    }

    /// An inbound PUBLISH: whether to hand it to the application, and the ack to send. A QoS 2 publish
    /// whose id is still awaiting PUBREL is a resend and is not delivered again (method B of spec 4.3.3).
    pub fn on_publish(&mut self, publish: &Publish) -> (bool, Option<Packet>) {
        match publish.qos {
            QoS::AtMostOnce => (true, None),
            QoS::AtLeastOnce => (true, Some(Packet::PubAck(PubAck::new(publish.pkid)))),
            QoS::ExactlyOnce => {
                let fresh = self.inbound_qos2.insert(publish.pkid);
                (fresh, Some(Packet::PubRec(PubAck::new(publish.pkid))))
            }
        }
    }

    /// An inbound PUBREL: forget the id and answer PUBCOMP.
    pub fn on_pubrel(&mut self, rel: &PubAck) -> Packet {
        let known = self.inbound_qos2.remove(&rel.pkid);
        let reason = if known || !self.v5 {
            ReasonCode::SUCCESS
        } else {
            ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
        };
        Packet::PubComp(PubAck {
            pkid: rel.pkid,
            reason,
            ..PubAck::default()
        })
    }

    /// The packets to send after a reconnect, in their original order. With the session present, unacked
    /// publishes go again with DUP set and PUBRELs are repeated [MQTT-4.4.0-1]. Without it the server
    /// forgot everything: publishes are sent again as first deliveries (at-least-once is kept), and the
    /// inbound QoS 2 state is dropped.
    /// A new session (session present = 0) cannot hold QoS 2 publishes that got PUBREC: the server accepted
    /// them already, so they are done (sending them again would deliver them twice). Returns their completions.
    pub fn released_without_session(&mut self) -> Vec<P> {
        let done: Vec<u16> = self
            .outgoing
            .iter()
            .filter(|(_, o)| o.stage == Stage::AwaitComp)
            .map(|(id, _)| *id)
            .collect();
        done.into_iter()
            .filter_map(|id| self.outgoing.remove(&id).map(|o| o.done))
            .collect()
    }

    pub fn resend(&mut self, session_present: bool) -> Vec<Packet> {
        if !session_present {
            self.inbound_qos2.clear();
        }
        let mut items: Vec<(u64, Packet)> =
            Vec::with_capacity(self.outgoing.len() + self.requests.len());
        for o in self.outgoing.values_mut() {
            let packet = match o.stage {
                Stage::AwaitComp if session_present => Packet::PubRel(PubAck::new(o.publish.pkid)),
                Stage::AwaitComp | Stage::AwaitRec | Stage::AwaitAck => {
                    if !session_present && o.stage == Stage::AwaitComp {
                        // The new session never saw it; start the QoS 2 handshake again.
                        o.stage = Stage::AwaitRec;
                    }
                    let mut p = o.publish.clone();
                    p.dup = session_present;
                    Packet::Publish(p)
                }
            };
            items.push((o.seq, packet));
        }
        for r in self.requests.values() {
            items.push((r.seq, r.packet.clone()));
        }
        items.sort_by_key(|(seq, _)| *seq);
        items.into_iter().map(|(_, p)| p).collect()
    }

    /// Empties the session, returning every pending completion so the caller can fail them.
    pub fn drain(&mut self) -> (Vec<P>, Vec<R>) {
        self.inbound_qos2.clear();
        let publishes = self.outgoing.drain().map(|(_, o)| o.done).collect();
        let requests = self.requests.drain().map(|(_, r)| r.done).collect();
        (publishes, requests)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn publish(pkid: u16, qos: QoS) -> Publish {
        Publish {
            qos,
            pkid,
            topic: "t".into(),
            payload: Bytes::from_static(b"x"),
            ..Publish::default()
        }
    }

    #[test]
    fn packet_ids_skip_those_in_use_and_wrap_past_zero() {
        let mut s: ClientSession<(), ()> = ClientSession::new(10, true);
        let a = s.alloc_pkid().unwrap();
        s.track_publish(publish(a, QoS::AtLeastOnce), ());
        s.next_pkid = u16::MAX;
        assert_eq!(s.alloc_pkid(), Some(a + 1));
        s.next_pkid = 0;
        assert_eq!(
            s.alloc_pkid(),
            Some(a + 1),
            "id {a} is in use and 0 is never used"
        );
    }

    #[test]
    fn qos1_completes_on_puback_and_frees_the_window() {
        let mut s: ClientSession<u32, ()> = ClientSession::new(1, true);
        s.track_publish(publish(7, QoS::AtLeastOnce), 70);
        assert!(!s.has_window());
        assert_eq!(
            s.on_puback(&PubAck::new(7)),
            AckOutcome::Done(70, ReasonCode::SUCCESS)
        );
        assert!(s.has_window());
        assert_eq!(
            s.on_puback(&PubAck::new(7)),
            AckOutcome::Unknown { reply: None }
        );
    }

    #[test]
    fn qos2_goes_through_pubrec_pubrel_pubcomp() {
        let mut s: ClientSession<u32, ()> = ClientSession::new(5, true);
        s.track_publish(publish(3, QoS::ExactlyOnce), 30);
        assert_eq!(
            s.on_pubcomp(&PubAck::new(3)),
            AckOutcome::Unknown { reply: None },
            "PUBCOMP before PUBREC"
        );
        assert_eq!(
            s.on_pubrec(&PubAck::new(3)),
            AckOutcome::Release(Packet::PubRel(PubAck::new(3)))
        );
        assert_eq!(
            s.on_pubcomp(&PubAck::new(3)),
            AckOutcome::Done(30, ReasonCode::SUCCESS)
        );
    }

    #[test]
    fn a_pubcomp_with_packet_identifier_not_found_after_recovery_completes_the_publish() {
        let mut s: ClientSession<u32, ()> = ClientSession::new(5, true);
        s.track_publish(publish(4, QoS::ExactlyOnce), 40);
        s.on_pubrec(&PubAck::new(4));
        // The server released the id before it restarted; the resent PUBREL finds nothing to release.
        let not_found = PubAck {
            pkid: 4,
            reason: ReasonCode::PACKET_IDENTIFIER_NOT_FOUND,
            ..PubAck::default()
        };
        assert_eq!(
            s.on_pubcomp(&not_found),
            AckOutcome::Done(40, ReasonCode::SUCCESS)
        );
    }

    #[test]
    fn mqtt_4_3_3_4_pubrec_error_ends_the_exchange() {
        let mut s: ClientSession<u32, ()> = ClientSession::new(5, true);
        s.track_publish(publish(3, QoS::ExactlyOnce), 30);
        let refused = PubAck {
            pkid: 3,
            reason: ReasonCode::NOT_AUTHORIZED,
            ..PubAck::default()
        };
        assert_eq!(
            s.on_pubrec(&refused),
            AckOutcome::Done(30, ReasonCode::NOT_AUTHORIZED)
        );
        assert_eq!(s.inflight(), 0);
    }

    #[test]
    fn inbound_qos2_resend_before_pubrel_is_not_delivered_twice() {
        let mut s: ClientSession<(), ()> = ClientSession::new(5, true);
        let p = publish(9, QoS::ExactlyOnce);
        assert_eq!(
            s.on_publish(&p),
            (true, Some(Packet::PubRec(PubAck::new(9))))
        );
        assert_eq!(
            s.on_publish(&p),
            (false, Some(Packet::PubRec(PubAck::new(9))))
        );
        assert_eq!(
            s.on_pubrel(&PubAck::new(9)),
            Packet::PubComp(PubAck::new(9))
        );
        assert!(s.on_publish(&p).0, "after PUBREL the id is free again");
    }

    #[test]
    fn mqtt_4_4_0_1_resend_in_order_with_dup_when_session_present() {
        let mut s: ClientSession<(), ()> = ClientSession::new(5, true);
        s.track_publish(publish(1, QoS::AtLeastOnce), ());
        s.track_publish(publish(2, QoS::ExactlyOnce), ());
        s.track_publish(publish(3, QoS::ExactlyOnce), ());
        let _ = s.on_pubrec(&PubAck::new(2));
        let again = s.resend(true);
        let mut p1 = publish(1, QoS::AtLeastOnce);
        p1.dup = true;
        let mut p3 = publish(3, QoS::ExactlyOnce);
        p3.dup = true;
        assert_eq!(
            again,
            vec![
                Packet::Publish(p1),
                Packet::PubRel(PubAck::new(2)),
                Packet::Publish(p3)
            ]
        );
    }

    #[test]
    fn without_session_present_publishes_restart_as_first_deliveries() {
        let mut s: ClientSession<u32, ()> = ClientSession::new(5, true);
        s.track_publish(publish(2, QoS::ExactlyOnce), 20);
        s.track_publish(publish(3, QoS::ExactlyOnce), 30);
        let _ = s.on_pubrec(&PubAck::new(2));
        // The one past PUBREC was accepted by the server: done, not sent again (it would be delivered twice).
        assert_eq!(s.released_without_session(), vec![20]);
        assert_eq!(
            s.resend(false),
            vec![Packet::Publish(publish(3, QoS::ExactlyOnce))]
        );
        assert!(matches!(
            s.on_pubrec(&PubAck::new(3)),
            AckOutcome::Release(_)
        ));
    }
}
