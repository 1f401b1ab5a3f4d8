//! The outbound side of a session as a pure state machine: the queue, the in-flight window (the client's
//! Receive Maximum), packet identifiers, and the QoS 1 / QoS 2 acknowledgement stages.
//!
//! The queue holds two kinds of copies in arrival order. Volatile copies (QoS 0, and everything for a clean
//! session) are bounded by [`OutboxLimits`]: past them a copy is dropped and counted. Durable copies (a
//! persistent session's QoS 1/2 messages) live in the store's inbox; the queue holds only a read-ahead of them
//! that the session refills from the store (see `session::inbox`), so they are never refused here.

use crate::broker::message::{Delivery, InboxRef};
use crate::protocol::{QoS, ReasonCode};
use std::collections::VecDeque;
use std::time::Instant;

/// Bounds of one session's volatile copies.
#[derive(Debug, Clone, Copy)]
pub struct OutboxLimits {
    pub max_queued_messages: usize,
    pub max_queued_bytes: usize,
}

/// Why a message was not queued (a label of the drops metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The queue holds `max_queued_messages` or `max_queued_bytes`.
    QueueFull,
    /// QoS 0 for a session whose client is offline.
    Offline,
    /// The message expired before it could be sent.
    Expired,
    /// Bigger than the client's Maximum Packet Size [MQTT-3.1.2-25].
    TooLarge,
}

impl DropReason {
    pub fn label(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::Offline => "offline_qos0",
            DropReason::Expired => "expired",
            DropReason::TooLarge => "too_large_for_client",
        }
    }
}

/// Where a QoS 1/2 message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// PUBLISH sent, waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Published,
    /// The client sent PUBREC; PUBREL goes out once `confirmed` (a durable copy's "released" state is
    /// committed to the store first), then the session waits for PUBCOMP.
    Released { confirmed: bool },
}

#[derive(Debug, Clone)]
struct Inflight {
    pkid: u16,
    stage: Stage,
    delivery: Delivery,
}

/// What to send next.
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// A PUBLISH with this packet id (0 for QoS 0) and DUP flag.
    Publish {
        pkid: u16,
        dup: bool,
        delivery: Delivery,
    },
    /// A PUBREL for a QoS 2 message the client already received.
    PubRel(u16),
}

/// A change the store's copy of a durable message needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboxChange {
    /// It left the session (acknowledged, expired, too large for the client): remove it.
    Done(InboxRef),
    /// QoS 2: the client received it (PUBREC). The session commits this before it sends PUBREL; after a
    /// restart it resends PUBREL with this packet id, never the PUBLISH.
    Released { seq: u64, pkid: u16 },
}

/// A client acknowledgement that does not fit the session state (a protocol violation by the client).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckError {
    /// No message in flight with that packet id (v5 sends 0x92 in PUBREL/PUBCOMP replies; otherwise ignored).
    UnknownPacketId(u16),
    /// The acknowledgement does not match the message's stage (e.g. PUBACK for a QoS 2 message).
    WrongStage(u16),
}

/// The outbound queue and window of one session.
#[derive(Debug)]
pub struct Outbox {
    queue: VecDeque<Delivery>,
    /// Volatile copies in `queue` and their bytes (what the limits bound).
    volatile: usize,
    queued_bytes: usize,
    /// Durable copies in `queue` and their bytes (the read-ahead of the stored inbox).
    durable: usize,
    durable_bytes: usize,
    inflight: VecDeque<Inflight>,
    next_pkid: u16,
    window: u16,
    limits: OutboxLimits,
    /// What the store's copies of durable messages need, for the session to propose.
    changes: Vec<InboxChange>,
    /// Durable copies with a lower seq were in the store before this start: they may have been sent before
    /// it, so they go out with DUP set.
    restored_below: u64,
}

/// The packet id of a durable copy: a function of its seq, so the same copy has the same id after a restart
/// without a store write per send. A receiver that got the PUBLISH before a crash then recognises it (QoS 2
/// receivers deduplicate by packet id [MQTT-4.3.3-9]) and the resend is the one [MQTT-4.4.0-1] asks for.
pub fn durable_pkid(seq: u64) -> u16 {
    // 1..=65535: seq 1 gets id 1, and ids repeat every 65,535 copies.
    (seq.wrapping_sub(1) % u64::from(u16::MAX)) as u16 + 1
}

impl Outbox {
    pub fn new(limits: OutboxLimits, window: u16) -> Outbox {
        Outbox {
            queue: VecDeque::new(),
            volatile: 0,
            queued_bytes: 0,
            durable: 0,
            durable_bytes: 0,
            inflight: VecDeque::new(),
            next_pkid: 1,
            window: window.max(1),
            limits,
            changes: Vec::new(),
            restored_below: 0,
        }
    }

    /// The client's Receive Maximum (capped by the server's), set at each connect.
    pub fn set_window(&mut self, window: u16) {
        self.window = window.max(1);
    }

    /// Stored copies with a seq below `seq` were stored before this start and go out with DUP set.
    pub fn set_restored_below(&mut self, seq: u64) {
        self.restored_below = seq;
    }

    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Bytes of volatile copies (durable ones are in the store; their read-ahead is bounded by the session).
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Durable copies in memory (queued, not yet sent) and their bytes.
    pub fn durable_queued(&self) -> (usize, usize) {
        (self.durable, self.durable_bytes)
    }

    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    /// Queues a delivery. A durable copy is always taken (the session bounds its read-ahead); a volatile one
    /// is refused when QoS 0 while offline or over the bounds.
    pub fn push(&mut self, d: Delivery, online: bool) -> Result<(), DropReason> {
        if let Some(r) = d.durable {
            self.durable += 1;
            self.durable_bytes += r.size as usize;
            self.queue.push_back(d);
            return Ok(());
        }
        if !online && d.qos == QoS::AtMostOnce {
            return Err(DropReason::Offline);
        }
        let weight = d.message.weight();
        if self.volatile >= self.limits.max_queued_messages
            || self.queued_bytes + weight > self.limits.max_queued_bytes
        {
            return Err(DropReason::QueueFull);
        }
        self.volatile += 1;
        self.queued_bytes += weight;
        self.queue.push_back(d);
        Ok(())
    }

    /// The next message the window lets out, with a packet id for QoS 1/2; expired messages are skipped and
    /// reported through `dropped`. Messages leave in queue order, so a full window also holds back QoS 0
    /// messages behind it (per-topic order is kept).
    pub fn next(&mut self, now: Instant, mut dropped: impl FnMut(DropReason)) -> Option<Outgoing> {
        loop {
            let front = self.queue.front()?;
            if front.message.is_expired(now) {
                if let Some(d) = self.pop_front() {
                    self.finished(&d);
                }
                dropped(DropReason::Expired);
                continue;
            }
            if front.qos != QoS::AtMostOnce && self.inflight.len() >= usize::from(self.window) {
                return None;
            }
            let (pkid, dup) = match (front.qos, front.durable) {
                (QoS::AtMostOnce, _) => (0, false),
                (_, Some(r)) => {
                    let pkid = durable_pkid(r.seq);
                    // Its id is still taken (65,535 copies later, or by a copy that is not durable): it waits,
                    // as for a full window, and keeps the order.
                    if self.inflight.iter().any(|i| i.pkid == pkid) {
                        return None;
                    }
                    (pkid, r.seq < self.restored_below)
                }
                (_, None) => (self.allocate_pkid(), false),
            };
            let delivery = self.pop_front()?;
            if pkid != 0 {
                self.inflight.push_back(Inflight {
                    pkid,
                    stage: Stage::Published,
                    delivery: delivery.clone(),
                });
            }
            return Some(Outgoing::Publish {
                pkid,
                dup,
                delivery,
            });
        }
    }

    fn finished(&mut self, d: &Delivery) {
        if let Some(r) = d.durable {
            self.changes.push(InboxChange::Done(r));
        }
    }

    /// What happened to durable messages since the last call, in order.
    pub fn take_changes(&mut self) -> Vec<InboxChange> {
        std::mem::take(&mut self.changes)
    }

    /// A QoS 2 message the client had received (PUBREC) before a restart: in flight, waiting for PUBCOMP, with
    /// its packet id; its release is already in the store.
    pub fn restore_released(&mut self, pkid: u16, delivery: Delivery) {
        if self.inflight.iter().any(|i| i.pkid == pkid) {
            // Read again from the store after a reconnect: it is in flight already.
            return;
        }
        self.inflight.push_back(Inflight {
            pkid,
            stage: Stage::Released { confirmed: true },
            delivery,
        });
    }

    fn pop_front(&mut self) -> Option<Delivery> {
        let d = self.queue.pop_front()?;
        match d.durable {
            Some(r) => {
                self.durable -= 1;
                self.durable_bytes -= r.size as usize;
            }
            None => {
                self.volatile -= 1;
                self.queued_bytes -= d.message.weight();
            }
        }
        Some(d)
    }

    /// A packet id not in flight. The window is at most 65,535, so one is always free when `next` asks.
    fn allocate_pkid(&mut self) -> u16 {
        loop {
            let id = self.next_pkid;
            self.next_pkid = if id == u16::MAX { 1 } else { id + 1 };
            if !self.inflight.iter().any(|i| i.pkid == id) {
                return id;
            }
        }
    }

    fn position(&self, pkid: u16) -> Result<usize, AckError> {
        self.inflight
            .iter()
            .position(|i| i.pkid == pkid)
            .ok_or(AckError::UnknownPacketId(pkid))
    }

    /// PUBACK for a QoS 1 message: it leaves the window.
    pub fn puback(&mut self, pkid: u16) -> Result<Delivery, AckError> {
        let at = self.position(pkid)?;
        let i = &self.inflight[at];
        if i.delivery.qos != QoS::AtLeastOnce || i.stage != Stage::Published {
            return Err(AckError::WrongStage(pkid));
        }
        let d = self
            .inflight
            .remove(at)
            .map(|i| i.delivery)
            .expect("position is valid");
        self.finished(&d);
        Ok(d)
    }

    /// PUBREC for a QoS 2 message: PUBREL to send now (a volatile copy), none yet (a durable copy: its release
    /// is committed first, then [`Outbox::release_confirmed`]), or, with an error reason, the message is done
    /// [MQTT-4.3.3-4].
    pub fn pubrec(&mut self, pkid: u16, reason: ReasonCode) -> Result<Option<Outgoing>, AckError> {
        let at = self.position(pkid)?;
        let i = &mut self.inflight[at];
        if i.delivery.qos != QoS::ExactlyOnce {
            return Err(AckError::WrongStage(pkid));
        }
        if reason.is_error() {
            if let Some(i) = self.inflight.remove(at) {
                self.finished(&i.delivery);
            }
            return Ok(None);
        }
        match (i.stage, i.delivery.durable) {
            (Stage::Released { confirmed: true }, _) => Ok(Some(Outgoing::PubRel(pkid))),
            // A second PUBREC while the release is being committed: the PUBREL follows the commit.
            (Stage::Released { confirmed: false }, _) => Ok(None),
            (Stage::Published, Some(r)) => {
                i.stage = Stage::Released { confirmed: false };
                self.changes
                    .push(InboxChange::Released { seq: r.seq, pkid });
                Ok(None)
            }
            (Stage::Published, None) => {
                i.stage = Stage::Released { confirmed: true };
                Ok(Some(Outgoing::PubRel(pkid)))
            }
        }
    }

    /// A durable copy's release is committed: its PUBREL can go.
    pub fn release_confirmed(&mut self, pkid: u16) -> Option<Outgoing> {
        let i = self.inflight.iter_mut().find(|i| i.pkid == pkid)?;
        match i.stage {
            Stage::Released { confirmed: false } => {
                i.stage = Stage::Released { confirmed: true };
                Some(Outgoing::PubRel(pkid))
            }
            _ => None,
        }
    }

    /// A durable copy's release could not be committed: back to waiting for PUBREC, so the PUBLISH goes again
    /// (with DUP) on the next connection and the client's PUBREC starts the release over.
    pub fn release_failed(&mut self, pkid: u16) {
        if let Some(i) = self.inflight.iter_mut().find(|i| i.pkid == pkid) {
            if i.stage == (Stage::Released { confirmed: false }) {
                i.stage = Stage::Published;
            }
        }
    }

    /// PUBCOMP: the QoS 2 message is done.
    pub fn pubcomp(&mut self, pkid: u16) -> Result<Delivery, AckError> {
        let at = self.position(pkid)?;
        if self.inflight[at].stage != (Stage::Released { confirmed: true }) {
            return Err(AckError::WrongStage(pkid));
        }
        let d = self
            .inflight
            .remove(at)
            .map(|i| i.delivery)
            .expect("position is valid");
        self.finished(&d);
        Ok(d)
    }

    /// What to send again on a resumed session, in the original order: unacknowledged PUBLISH with DUP set
    /// [MQTT-4.4.0-1], PUBREL for messages the client already received (a release still being committed
    /// sends its PUBREL when the commit lands).
    pub fn resend(&self) -> Vec<Outgoing> {
        self.inflight
            .iter()
            .filter_map(|i| match i.stage {
                Stage::Published => Some(Outgoing::Publish {
                    pkid: i.pkid,
                    dup: true,
                    delivery: i.delivery.clone(),
                }),
                Stage::Released { confirmed: true } => Some(Outgoing::PubRel(i.pkid)),
                Stage::Released { confirmed: false } => None,
            })
            .collect()
    }

    /// Removes the volatile messages that came through shared subscriptions and were not yet received by the
    /// client (queued, or in flight before PUBREC), so another member of the group can take them. Durable
    /// copies stay: they wait in this session's stored inbox for its client (MQTT 5 4.8.2 allows either).
    pub fn take_shared(&mut self) -> Vec<Delivery> {
        let mut out = Vec::new();
        let mut keep = VecDeque::with_capacity(self.queue.len());
        for d in self.queue.drain(..) {
            if d.shared.is_some() && d.durable.is_none() {
                self.volatile -= 1;
                self.queued_bytes -= d.message.weight();
                out.push(d);
            } else {
                keep.push_back(d);
            }
        }
        self.queue = keep;
        let mut inflight = VecDeque::with_capacity(self.inflight.len());
        for i in self.inflight.drain(..) {
            if i.delivery.shared.is_some()
                && i.delivery.durable.is_none()
                && i.stage == Stage::Published
            {
                out.push(i.delivery);
            } else {
                inflight.push_back(i);
            }
        }
        self.inflight = inflight;
        out
    }

    /// Forgets the durable copies read ahead into the queue (the client went away: they stay in the store
    /// and are read again when it is back). Returns the lowest seq forgotten.
    pub fn drop_durable_queue(&mut self) -> Option<u64> {
        let mut lowest = None;
        self.queue.retain(|d| match d.durable {
            Some(r) => {
                lowest = Some(lowest.map_or(r.seq, |l: u64| l.min(r.seq)));
                false
            }
            None => true,
        });
        self.durable = 0;
        self.durable_bytes = 0;
        lowest
    }

    /// Drops everything (the session ended; its stored inbox goes with the session record).
    pub fn clear(&mut self) {
        self.queue.clear();
        self.volatile = 0;
        self.queued_bytes = 0;
        self.durable = 0;
        self.durable_bytes = 0;
        self.inflight.clear();
        self.restored_below = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::message::Message;
    use crate::protocol::Properties;
    use bytes::Bytes;
    use std::sync::Arc;
    use std::time::Duration;

    fn d(qos: QoS, body: &'static str) -> Delivery {
        Delivery {
            message: Arc::new(Message {
                topic: "t".into(),
                payload: Bytes::from_static(body.as_bytes()),
                qos,
                retain: false,
                properties: Properties::default(),
                expires_at: None,
                publisher: None,
                received: Instant::now(),
                qos2_origin: None,
                stored_fanout: false,
            }),
            qos,
            retain: false,
            sub_ids: vec![],
            shared: None,
            durable: None,
        }
    }

    fn limits(n: usize) -> OutboxLimits {
        OutboxLimits {
            max_queued_messages: n,
            max_queued_bytes: usize::MAX,
        }
    }

    fn durable(qos: QoS, seq: u64) -> Delivery {
        Delivery {
            durable: Some(InboxRef { seq, size: 6 }),
            ..d(qos, "stored")
        }
    }

    fn done(seq: u64) -> InboxChange {
        InboxChange::Done(InboxRef { seq, size: 6 })
    }

    #[test]
    fn durable_copies_keep_their_packet_id_across_a_restart_and_go_out_again_with_dup() {
        let now = Instant::now();
        assert_eq!(
            [1, 2, 65_535, 65_536, 65_537].map(durable_pkid),
            [1, 2, 65_535, 1, 2]
        );
        // Before the restart: seq 7 and 8 sent, never acknowledged.
        let mut o = Outbox::new(limits(10), 10);
        o.push(durable(QoS::AtLeastOnce, 7), true).unwrap();
        o.push(durable(QoS::ExactlyOnce, 8), true).unwrap();
        let sent: Vec<(u16, bool)> = (0..2)
            .map(|_| match o.next(now, |_| {}) {
                Some(Outgoing::Publish { pkid, dup, .. }) => (pkid, dup),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(sent, [(7, false), (8, false)]);

        // After it the session reads them back from the store: the same ids, DUP set; new copies are first
        // sends.
        let mut o = Outbox::new(limits(10), 10);
        o.set_restored_below(9);
        o.push(durable(QoS::AtLeastOnce, 7), false).unwrap();
        o.push(durable(QoS::ExactlyOnce, 8), false).unwrap();
        o.push(durable(QoS::AtLeastOnce, 9), true).unwrap();
        let again: Vec<(u16, bool)> = (0..3)
            .map(|_| match o.next(now, |_| {}) {
                Some(Outgoing::Publish { pkid, dup, .. }) => (pkid, dup),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(again, [(7, true), (8, true), (9, false)]);
    }

    #[test]
    fn a_durable_copy_whose_packet_id_is_taken_waits_for_it() {
        let now = Instant::now();
        let mut o = Outbox::new(limits(10), 10);
        // A copy that is not durable takes id 1 first; durable seq 1 wants the same id.
        o.push(d(QoS::AtLeastOnce, "clean"), true).unwrap();
        o.push(durable(QoS::AtLeastOnce, 1), true).unwrap();
        o.push(d(QoS::AtMostOnce, "behind"), true).unwrap();
        assert_eq!(pkid(o.next(now, |_| {})), 1);
        assert!(o.next(now, |_| {}).is_none(), "waits, and keeps the order");
        o.puback(1).unwrap();
        assert_eq!(pkid(o.next(now, |_| {})), 1);
        assert_eq!(pkid(o.next(now, |_| {})), 0, "then what was behind it");
        // 65,535 copies later the id comes round again while the first still waits for its PUBACK.
        o.push(durable(QoS::AtLeastOnce, 65_536), true).unwrap();
        assert!(o.next(now, |_| {}).is_none());
        o.puback(1).unwrap();
        assert_eq!(pkid(o.next(now, |_| {})), 1);
    }

    #[test]
    fn durable_messages_report_release_and_departure_in_order_and_pubrel_waits_for_the_release() {
        let mut o = Outbox::new(limits(10), 10);
        o.push(durable(QoS::AtLeastOnce, 1), true).unwrap();
        o.push(durable(QoS::ExactlyOnce, 2), true).unwrap();
        o.push(d(QoS::AtLeastOnce, "not stored"), true).unwrap();
        let now = Instant::now();
        let (a, b, c) = (
            pkid(o.next(now, |_| {})),
            pkid(o.next(now, |_| {})),
            pkid(o.next(now, |_| {})),
        );
        assert!(o.take_changes().is_empty(), "sending changes nothing");
        o.puback(a).unwrap();
        assert!(
            matches!(o.pubrec(b, ReasonCode::SUCCESS), Ok(None)),
            "no PUBREL before the release is committed"
        );
        o.puback(c).unwrap();
        assert_eq!(
            o.take_changes(),
            [done(1), InboxChange::Released { seq: 2, pkid: b }]
        );
        assert!(o.resend().is_empty(), "nor on a reconnect meanwhile");
        assert!(matches!(o.pubrec(b, ReasonCode::SUCCESS), Ok(None)));
        assert_eq!(o.pubcomp(b).unwrap_err(), AckError::WrongStage(b));
        assert!(matches!(o.release_confirmed(b), Some(Outgoing::PubRel(p)) if p == b));
        assert!(o.release_confirmed(b).is_none(), "once");
        assert!(matches!(o.resend()[..], [Outgoing::PubRel(p)] if p == b));
        o.pubcomp(b).unwrap();
        assert_eq!(o.take_changes(), [done(2)]);

        // A release that could not be committed: the PUBLISH goes again on the next connection.
        let mut o = Outbox::new(limits(10), 10);
        o.push(durable(QoS::ExactlyOnce, 5), true).unwrap();
        let e = pkid(o.next(now, |_| {}));
        o.pubrec(e, ReasonCode::SUCCESS).unwrap();
        o.release_failed(e);
        assert!(
            matches!(&o.resend()[..], [Outgoing::Publish { pkid, dup: true, .. }] if *pkid == e)
        );

        // Restored after a restart: PUBREL again with the same packet id, then done at PUBCOMP.
        let mut o = Outbox::new(limits(10), 10);
        o.restore_released(700, durable(QoS::ExactlyOnce, 9));
        o.push(durable(QoS::AtLeastOnce, 10), false).unwrap();
        assert!(matches!(o.resend()[..], [Outgoing::PubRel(700)]));
        assert_ne!(pkid(o.next(now, |_| {})), 700, "a restored id stays taken");
        o.pubcomp(700).unwrap();
        assert_eq!(o.take_changes(), [done(9)]);
    }

    #[test]
    fn durable_copies_are_never_refused_and_their_read_ahead_can_be_forgotten() {
        let mut o = Outbox::new(limits(2), 1);
        for seq in 10..20 {
            o.push(durable(QoS::AtLeastOnce, seq), false).unwrap();
        }
        o.push(d(QoS::AtLeastOnce, "v"), true).unwrap();
        o.push(d(QoS::AtLeastOnce, "v"), true).unwrap();
        assert_eq!(
            o.push(d(QoS::AtLeastOnce, "v"), true),
            Err(DropReason::QueueFull),
            "the bound is on volatile copies"
        );
        assert_eq!(o.durable_queued(), (10, 60));
        let now = Instant::now();
        assert_eq!(pkid(o.next(now, |_| {})), durable_pkid(10));
        assert_eq!(o.drop_durable_queue(), Some(11), "in flight stays");
        assert_eq!(
            (o.queued(), o.inflight(), o.durable_queued()),
            (2, 1, (0, 0))
        );
        // Shared durable copies stay with their session.
        let mut o = Outbox::new(limits(2), 1);
        o.push(
            Delivery {
                shared: Some("$share/g/t".into()),
                ..durable(QoS::AtLeastOnce, 4)
            },
            false,
        )
        .unwrap();
        assert!(o.take_shared().is_empty());
        assert_eq!(o.queued(), 1);
    }

    fn pkid(o: Option<Outgoing>) -> u16 {
        match o {
            Some(Outgoing::Publish { pkid, .. }) => pkid,
            other => panic!("expected a publish, got {other:?}"),
        }
    }

    #[test]
    fn the_window_holds_messages_until_acknowledged() {
        let mut o = Outbox::new(limits(10), 2);
        for _ in 0..3 {
            o.push(d(QoS::AtLeastOnce, "x"), true).unwrap();
        }
        let now = Instant::now();
        let a = pkid(o.next(now, |_| {}));
        let b = pkid(o.next(now, |_| {}));
        assert_ne!(a, b);
        assert!(o.next(now, |_| {}).is_none(), "window of 2 is full");
        o.puback(a).unwrap();
        assert!(o.next(now, |_| {}).is_some());
        assert_eq!(o.puback(a).unwrap_err(), AckError::UnknownPacketId(a));
    }

    #[test]
    fn qos2_goes_through_pubrec_and_pubcomp_and_resends_as_pubrel() {
        let mut o = Outbox::new(limits(10), 5);
        o.push(d(QoS::ExactlyOnce, "x"), true).unwrap();
        o.push(d(QoS::ExactlyOnce, "y"), true).unwrap();
        let now = Instant::now();
        let a = pkid(o.next(now, |_| {}));
        let b = pkid(o.next(now, |_| {}));
        assert_eq!(o.puback(a).unwrap_err(), AckError::WrongStage(a));
        assert!(
            matches!(o.pubrec(a, ReasonCode::SUCCESS), Ok(Some(Outgoing::PubRel(p))) if p == a)
        );
        let resend = o.resend();
        assert!(matches!(resend[0], Outgoing::PubRel(p) if p == a));
        assert!(matches!(&resend[1], Outgoing::Publish { pkid, dup: true, .. } if *pkid == b));
        o.pubcomp(a).unwrap();
        assert_eq!(o.pubcomp(b).unwrap_err(), AckError::WrongStage(b));
        assert!(matches!(
            o.pubrec(b, ReasonCode::UNSPECIFIED_ERROR),
            Ok(None)
        ));
        assert_eq!(o.inflight(), 0);
    }

    #[test]
    fn bounds_drop_and_offline_qos0_is_not_queued() {
        let mut o = Outbox::new(limits(2), 1);
        assert_eq!(
            o.push(d(QoS::AtMostOnce, "x"), false),
            Err(DropReason::Offline)
        );
        o.push(d(QoS::AtLeastOnce, "x"), false).unwrap();
        o.push(d(QoS::AtMostOnce, "x"), true).unwrap();
        assert_eq!(
            o.push(d(QoS::AtLeastOnce, "x"), true),
            Err(DropReason::QueueFull)
        );
        let mut o = Outbox::new(
            OutboxLimits {
                max_queued_messages: 100,
                max_queued_bytes: 5,
            },
            1,
        );
        o.push(d(QoS::AtLeastOnce, "abc"), true).unwrap();
        assert_eq!(
            o.push(d(QoS::AtLeastOnce, "abc"), true),
            Err(DropReason::QueueFull)
        );
        assert_eq!(o.queued_bytes(), 4);
    }

    #[test]
    fn expired_messages_are_skipped_and_counted() {
        let mut o = Outbox::new(limits(10), 1);
        let mut m = d(QoS::AtLeastOnce, "old");
        let now = Instant::now();
        Arc::get_mut(&mut m.message).unwrap().expires_at = Some(now);
        o.push(m, true).unwrap();
        o.push(d(QoS::AtMostOnce, "new"), true).unwrap();
        let mut drops = vec![];
        let next = o.next(now + Duration::from_millis(1), |r| drops.push(r));
        assert!(matches!(next, Some(Outgoing::Publish { pkid: 0, .. })));
        assert_eq!(drops, vec![DropReason::Expired]);
    }

    #[test]
    fn shared_deliveries_are_handed_back_unless_already_received() {
        let mut o = Outbox::new(limits(10), 5);
        let mut s = d(QoS::ExactlyOnce, "s");
        s.shared = Some("g/t".into());
        o.push(s.clone(), true).unwrap();
        o.push(s.clone(), true).unwrap();
        o.push(d(QoS::AtLeastOnce, "mine"), true).unwrap();
        o.push(s, true).unwrap();
        let now = Instant::now();
        let first = pkid(o.next(now, |_| {}));
        let _second = pkid(o.next(now, |_| {}));
        o.pubrec(first, ReasonCode::SUCCESS).unwrap();
        let handed = o.take_shared();
        assert_eq!(
            handed.len(),
            2,
            "the second in flight and the queued one; not the one past PUBREC"
        );
        assert_eq!(o.queued(), 1);
        assert_eq!(o.inflight(), 1);
    }
}
