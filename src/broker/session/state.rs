//! The session's lifecycle as a pure state machine: which connection it has, its expiry, its Will and the
//! timers of both. It takes events (attach, detach, a timer, discard) and returns effects; the actor
//! (`mod.rs`) executes them and owns everything with a side (connections, the store, shards, metrics).
//! Timers are effects carrying a generation: a timer armed before a later event is void when it fires, so
//! the tests below feed `Due` events by hand and need no clock at all.

use crate::protocol::{LastWill, ReasonCode};
use std::time::Duration;

/// Which timer fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// The Will Delay Interval ran out while the client stayed away.
    Will,
    /// The Session Expiry Interval ran out while the client stayed away.
    Expiry,
}

/// What the actor does, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Close this (earlier) connection with this reason.
    Close(u64, ReasonCode),
    /// Publish this Will now (the actor checks it against the ACL).
    PublishWill(Box<LastWill>),
    /// After `after`, feed back `Lifecycle::due(timer, generation)`.
    Arm {
        timer: Timer,
        after: Duration,
        generation: u64,
    },
    /// The client left and the session stays: save its record (offline since now).
    Persist,
    /// The session ends: its record, inbox and subscriptions go, and the actor stops.
    End,
}

/// The lifecycle state of one session.
#[derive(Debug)]
pub struct Lifecycle {
    /// The current connection's id.
    conn: Option<u64>,
    /// Session Expiry Interval in seconds (0: ends with the connection; `u32::MAX`: never).
    expiry: u32,
    /// The Will of the current (or last) connection, until it is published or cancelled.
    will: Option<LastWill>,
    /// Bumped by every event that voids pending timers.
    generation: u64,
    /// Whether a client ever attached (a restored session counts): session present for clean start 0.
    attached_before: bool,
    /// The server's cap on an expiry a DISCONNECT asks for.
    max_expiry: u32,
}

/// What attaching decided.
#[derive(Debug, PartialEq, Eq)]
pub struct Attached {
    pub session_present: bool,
    pub effects: Vec<Effect>,
}

fn will_delay(w: &LastWill) -> u32 {
    w.properties.will_delay_interval.unwrap_or(0)
}

impl Lifecycle {
    /// A session no client has attached to yet.
    pub fn new(max_expiry: u32) -> Lifecycle {
        Lifecycle {
            conn: None,
            expiry: 0,
            will: None,
            generation: 0,
            attached_before: false,
            max_expiry,
        }
    }

    /// A persistent session read back from the store: offline, as its client left it, with `remaining`
    /// seconds of its expiry left.
    pub fn restored(max_expiry: u32, expiry: u32, remaining: u32) -> (Lifecycle, Vec<Effect>) {
        let mut l = Lifecycle::new(max_expiry);
        l.expiry = expiry;
        l.attached_before = true;
        let effects = l.arm_expiry(remaining);
        (l, effects)
    }

    pub fn expiry(&self) -> u32 {
        self.expiry
    }

    /// The Will of the current (or last) connection, until it is published or cancelled.
    pub fn will(&self) -> Option<&LastWill> {
        self.will.as_ref()
    }

    /// The Will was published elsewhere (by the cluster): it is not published again.
    pub fn forget_will(&mut self) {
        self.will = None;
    }

    pub fn is_online(&self) -> bool {
        self.conn.is_some()
    }

    pub fn is_current(&self, conn: u64) -> bool {
        self.conn == Some(conn)
    }

    /// Whether a client ever attached (an offline session is counted as such only then).
    pub fn attached_before(&self) -> bool {
        self.attached_before
    }

    /// A connection becomes the session's. An earlier one is taken over [MQTT-3.1.4-3]: it is closed with
    /// 0x8E, and its Will is published unless it has a delay (the new connection came within it, which
    /// cancels it [MQTT-3.1.3-9]). Pending timers are void.
    pub fn attach(
        &mut self,
        conn: u64,
        clean_start: bool,
        expiry: u32,
        will: Option<LastWill>,
    ) -> Attached {
        let mut effects = Vec::new();
        if let Some(old) = self.conn.take() {
            effects.push(Effect::Close(old, ReasonCode::SESSION_TAKEN_OVER));
            if let Some(w) = self.will.take().filter(|w| will_delay(w) == 0) {
                effects.push(Effect::PublishWill(Box::new(w)));
            }
        }
        self.generation += 1;
        self.will = will;
        self.expiry = expiry;
        self.conn = Some(conn);
        let session_present = self.attached_before && !clean_start;
        self.attached_before = true;
        Attached {
            session_present,
            effects,
        }
    }

    /// The connection `conn` ended. `publish_will` is false only after a normal DISCONNECT; `expiry` is the
    /// one a v5 DISCONNECT set. A session with expiry 0 ends now; another stays, with its Will published now,
    /// after its delay, or at the end of the session, whichever comes first [MQTT-3.1.3-9], and its expiry
    /// timer armed.
    pub fn detach(&mut self, conn: u64, publish_will: bool, expiry: Option<u32>) -> Vec<Effect> {
        if self.conn != Some(conn) {
            return Vec::new();
        }
        self.conn = None;
        if let Some(e) = expiry {
            self.expiry = e.min(self.max_expiry);
        }
        self.generation += 1;
        if !publish_will {
            self.will = None;
        }
        if self.expiry == 0 {
            return self.end();
        }
        let mut effects = vec![Effect::Persist];
        match self.will.as_ref().map(will_delay) {
            Some(0) => effects.extend(self.will.take().map(|w| Effect::PublishWill(Box::new(w)))),
            Some(delay) if delay < self.expiry => effects.push(Effect::Arm {
                timer: Timer::Will,
                after: Duration::from_secs(u64::from(delay)),
                generation: self.generation,
            }),
            _ => {}
        }
        effects.extend(self.arm_expiry(self.expiry));
        effects
    }

    /// A timer armed with `generation` fired.
    pub fn due(&mut self, timer: Timer, generation: u64) -> Vec<Effect> {
        if generation != self.generation {
            return Vec::new();
        }
        match timer {
            Timer::Will => self
                .will
                .take()
                .map(|w| Effect::PublishWill(Box::new(w)))
                .into_iter()
                .collect(),
            Timer::Expiry if self.conn.is_none() => self.end(),
            Timer::Expiry => Vec::new(),
        }
    }

    /// The session is discarded (a clean-start connect replaced it, or an operator removed it): its
    /// connection is closed with `reason`, and it ends.
    pub fn discard(&mut self, reason: ReasonCode) -> Vec<Effect> {
        let mut effects: Vec<Effect> = self
            .conn
            .take()
            .map(|c| Effect::Close(c, reason))
            .into_iter()
            .collect();
        effects.extend(self.end());
        effects
    }

    /// The session ends: a Will still pending is published first.
    fn end(&mut self) -> Vec<Effect> {
        self.generation += 1;
        let mut effects: Vec<Effect> = self
            .will
            .take()
            .map(|w| Effect::PublishWill(Box::new(w)))
            .into_iter()
            .collect();
        effects.push(Effect::End);
        effects
    }

    fn arm_expiry(&self, after: u32) -> Vec<Effect> {
        if self.expiry == u32::MAX {
            return Vec::new();
        }
        vec![Effect::Arm {
            timer: Timer::Expiry,
            after: Duration::from_secs(u64::from(after)),
            generation: self.generation,
        }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Properties, QoS};
    use Effect::*;

    fn will(delay: Option<u32>) -> LastWill {
        LastWill {
            topic: "device/1/status".into(),
            payload: bytes::Bytes::from_static(b"offline"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Properties {
                will_delay_interval: delay,
                ..Properties::default()
            },
        }
    }

    fn arm(timer: Timer, secs: u64, generation: u64) -> Effect {
        Arm {
            timer,
            after: Duration::from_secs(secs),
            generation,
        }
    }

    #[test]
    fn attach_reports_session_present_only_for_a_resumed_session() {
        let mut l = Lifecycle::new(u32::MAX);
        let a = l.attach(1, false, 60, None);
        assert_eq!((a.session_present, a.effects), (false, vec![]));
        assert!(l.is_online() && l.is_current(1) && !l.is_current(2));
        assert_eq!(
            l.detach(1, true, None),
            vec![Persist, arm(Timer::Expiry, 60, 2)]
        );
        assert!(l.attach(2, false, 60, None).session_present);
        l.detach(2, true, None);
        assert!(!l.attach(3, true, 60, None).session_present, "clean start");
        // A restored session was attached before: present for clean start 0.
        let (mut r, effects) = Lifecycle::restored(u32::MAX, 3600, 100);
        assert_eq!(effects, vec![arm(Timer::Expiry, 100, 0)]);
        assert!(r.attach(9, false, 3600, None).session_present);
    }

    #[test]
    fn a_takeover_closes_the_old_connection_and_publishes_its_will_unless_delayed() {
        let mut l = Lifecycle::new(u32::MAX);
        l.attach(1, false, 60, Some(will(None)));
        let a = l.attach(2, false, 60, Some(will(Some(30))));
        assert_eq!(
            a.effects,
            vec![
                Close(1, ReasonCode::SESSION_TAKEN_OVER),
                PublishWill(Box::new(will(None)))
            ]
        );
        // The new connection came within the old Will's delay: that Will is cancelled.
        let a = l.attach(3, false, 60, None);
        assert_eq!(a.effects, vec![Close(2, ReasonCode::SESSION_TAKEN_OVER)]);
        // The taken-over connection's late Detach changes nothing.
        assert_eq!(l.detach(2, true, None), vec![]);
        assert!(l.is_current(3));
    }

    #[test]
    fn detach_ends_a_session_with_expiry_0_and_publishes_its_will() {
        let mut l = Lifecycle::new(u32::MAX);
        l.attach(1, true, 0, Some(will(Some(10))));
        assert_eq!(
            l.detach(1, true, None),
            vec![PublishWill(Box::new(will(Some(10)))), End]
        );
        // A normal DISCONNECT: no Will.
        let mut l = Lifecycle::new(u32::MAX);
        l.attach(1, true, 0, Some(will(None)));
        assert_eq!(l.detach(1, false, None), vec![End]);
        // A v5 DISCONNECT can shorten the expiry to 0, and lengthen it only up to the server's cap.
        let mut l = Lifecycle::new(100);
        l.attach(1, true, 60, None);
        assert_eq!(l.detach(1, false, Some(0)), vec![End]);
        let mut l = Lifecycle::new(100);
        l.attach(1, true, 60, None);
        assert_eq!(
            l.detach(1, false, Some(5000)),
            vec![Persist, arm(Timer::Expiry, 100, 2)]
        );
        assert_eq!(l.expiry(), 100);
    }

    #[test]
    fn the_will_goes_after_its_delay_or_at_the_end_of_the_session_whichever_is_first() {
        // Delay shorter than the expiry: a timer.
        let mut l = Lifecycle::new(u32::MAX);
        l.attach(1, true, 60, Some(will(Some(10))));
        let effects = l.detach(1, true, None);
        assert_eq!(
            effects,
            vec![Persist, arm(Timer::Will, 10, 2), arm(Timer::Expiry, 60, 2)]
        );
        assert_eq!(
            l.due(Timer::Will, 2),
            vec![PublishWill(Box::new(will(Some(10))))]
        );
        assert_eq!(
            l.due(Timer::Expiry, 2),
            vec![End],
            "nothing left to publish"
        );
        // Delay not shorter than the expiry: with the end of the session.
        let mut l = Lifecycle::new(u32::MAX);
        l.attach(1, true, 60, Some(will(Some(600))));
        assert_eq!(
            l.detach(1, true, None),
            vec![Persist, arm(Timer::Expiry, 60, 2)]
        );
        assert_eq!(
            l.due(Timer::Expiry, 2),
            vec![PublishWill(Box::new(will(Some(600)))), End]
        );
        // No delay: at once. A session that never expires arms no expiry timer.
        let mut l = Lifecycle::new(u32::MAX);
        l.attach(1, true, u32::MAX, Some(will(None)));
        assert_eq!(
            l.detach(1, true, None),
            vec![Persist, PublishWill(Box::new(will(None)))]
        );
    }

    #[test]
    fn a_reconnect_voids_pending_timers() {
        let mut l = Lifecycle::new(u32::MAX);
        l.attach(1, true, 60, Some(will(Some(10))));
        l.detach(1, true, None);
        // Back within the Will Delay: the Will is cancelled [MQTT-3.1.3-9], the session does not expire.
        l.attach(2, false, 60, None);
        assert_eq!(l.due(Timer::Will, 2), vec![]);
        assert_eq!(l.due(Timer::Expiry, 2), vec![]);
        assert!(l.is_online());
        // An expiry timer of the current generation while online (a race with attach) ends nothing.
        assert_eq!(l.due(Timer::Expiry, 3), vec![]);
    }

    #[test]
    fn discard_closes_the_connection_and_ends_with_the_will() {
        let mut l = Lifecycle::new(u32::MAX);
        l.attach(7, false, 60, Some(will(Some(5))));
        assert_eq!(
            l.discard(ReasonCode::SESSION_TAKEN_OVER),
            vec![
                Close(7, ReasonCode::SESSION_TAKEN_OVER),
                PublishWill(Box::new(will(Some(5)))),
                End
            ]
        );
        // Offline: nothing to close.
        let (mut r, _) = Lifecycle::restored(u32::MAX, 60, 60);
        assert_eq!(r.discard(ReasonCode::ADMINISTRATIVE_ACTION), vec![End]);
        assert_eq!(
            r.due(Timer::Expiry, 0),
            vec![],
            "timers of the ended session are void"
        );
    }
}
