//! Forwarded messages whose publisher waits for the receiving node's answer (`FORWARD_ACK`): a shared
//! group's copy of a QoS 1/2 message handed to another node, which may store it for a persistent member.
//! Each holds the publisher's [`AckGate`] until the answer comes, or fails it when none comes in time (the
//! peer died, its lane dropped the frame): the publisher is then not acknowledged and sends again, never
//! told "stored" for a copy nobody stored. Pure: the caller passes the time.

use crate::broker::ticket::{AckGate, AckOutcome};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a publisher waits for a peer's answer: past a commit's own time limit, so an answer that
/// waited for a commit on the peer still comes in time.
pub const ANSWER_WAIT: Duration = Duration::from_secs(10);

struct Waiting {
    gate: Arc<AckGate>,
    sent: Instant,
}

/// The answers this node waits for, by id.
#[derive(Default)]
pub struct Answers {
    waiting: HashMap<u64, Waiting>,
    next: u64,
}

impl Answers {
    /// Holds `gate` until the answer to the id returned comes.
    pub fn expect(&mut self, gate: Arc<AckGate>, now: Instant) -> u64 {
        self.next += 1;
        self.waiting.insert(self.next, Waiting { gate, sent: now });
        self.next
    }

    /// The peer answered: its outcome counts as one copy of the publisher's; false for an id nobody
    /// waits for (answered late, after it expired).
    pub fn answered(&mut self, id: u64, outcome: AckOutcome) -> bool {
        match self.waiting.remove(&id) {
            Some(w) => {
                w.gate.merge(outcome);
                true
            }
            None => false,
        }
    }

    /// Fails what waited longer than [`ANSWER_WAIT`]; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let before = self.waiting.len();
        self.waiting.retain(|_, w| {
            let keep = now.saturating_duration_since(w.sent) < ANSWER_WAIT;
            if !keep {
                w.gate.fail();
            }
            keep
        });
        before - self.waiting.len()
    }

    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_publisher_waits_for_the_peers_answer_and_fails_without_one_in_time() {
        let t0 = Instant::now();
        let mut a = Answers::default();
        // Answered: the publisher's gate opens with the peer's outcome.
        let (gate, mut wait) = AckGate::new();
        let id = a.expect(gate, t0);
        assert!(wait.try_recv().is_err(), "held until the answer");
        assert!(a.answered(id, AckOutcome::Stored));
        assert_eq!(wait.await, Ok(AckOutcome::Stored));
        assert!(!a.answered(id, AckOutcome::Stored), "answered once");

        // The peer's group member had its quota full: the only copy refused.
        let (gate, wait) = AckGate::new();
        let id = a.expect(gate, t0);
        a.answered(id, AckOutcome::QuotaExceeded);
        assert_eq!(wait.await, Ok(AckOutcome::QuotaExceeded));

        // No answer: failed once the wait is over, not before.
        let (gate, mut wait) = AckGate::new();
        let late = a.expect(gate, t0);
        let (gate, mut young) = AckGate::new();
        a.expect(gate, t0 + Duration::from_secs(5));
        assert_eq!(a.expire(t0 + ANSWER_WAIT - Duration::from_millis(1)), 0);
        assert!(wait.try_recv().is_err());
        assert_eq!(a.expire(t0 + ANSWER_WAIT), 1);
        assert_eq!(wait.await, Ok(AckOutcome::Failed));
        assert!(!a.answered(late, AckOutcome::Stored), "too late");
        assert_eq!(a.len(), 1);
        assert!(young.try_recv().is_err(), "the younger one still waits");
    }
}
