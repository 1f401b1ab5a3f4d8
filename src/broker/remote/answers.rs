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
    /// The peer asked: only its answer counts.
    peer: u64,
    sent: Instant,
}

/// The answers this node waits for, by id.
pub struct Answers {
    waiting: HashMap<u64, Waiting>,
    next: u64,
}

impl Default for Answers {
    /// Ids start at a per-process random value: an answer a peer still had queued for this node's previous
    /// process (killed, restarted) names an id this process never gave out.
    fn default() -> Answers {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        Answers {
            waiting: HashMap::new(),
            next: h.finish() >> 1,
        }
    }
}

impl Answers {
    /// Holds `gate` until `peer`'s answer to the id returned comes.
    pub fn expect(&mut self, peer: u64, gate: Arc<AckGate>, now: Instant) -> u64 {
        self.next = self.next.wrapping_add(1);
        self.waiting.insert(
            self.next,
            Waiting {
                gate,
                peer,
                sent: now,
            },
        );
        self.next
    }

    /// `peer` answered: its outcome counts as one copy of the publisher's; false for an id nobody waits
    /// for (answered late, after it expired) or asked of another peer.
    pub fn answered(&mut self, peer: u64, id: u64, outcome: AckOutcome) -> bool {
        if self.waiting.get(&id).is_none_or(|w| w.peer != peer) {
            return false;
        }
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
        let id = a.expect(2, gate, t0);
        assert!(wait.try_recv().is_err(), "held until the answer");
        assert!(
            !a.answered(3, id, AckOutcome::Stored),
            "another peer's answer to the same id (one this node's previous process asked) counts for nothing"
        );
        assert!(a.answered(2, id, AckOutcome::Stored));
        assert_eq!(wait.await, Ok(AckOutcome::Stored));
        assert!(!a.answered(2, id, AckOutcome::Stored), "answered once");

        // The peer's group member had its quota full: the only copy refused.
        let (gate, wait) = AckGate::new();
        let id = a.expect(2, gate, t0);
        a.answered(2, id, AckOutcome::QuotaExceeded);
        assert_eq!(wait.await, Ok(AckOutcome::QuotaExceeded));

        // No answer: failed once the wait is over, not before.
        let (gate, mut wait) = AckGate::new();
        let late = a.expect(2, gate, t0);
        let (gate, mut young) = AckGate::new();
        a.expect(2, gate, t0 + Duration::from_secs(5));
        assert_eq!(a.expire(t0 + ANSWER_WAIT - Duration::from_millis(1)), 0);
        assert!(wait.try_recv().is_err());
        assert_eq!(a.expire(t0 + ANSWER_WAIT), 1);
        assert_eq!(wait.await, Ok(AckOutcome::Failed));
        assert!(!a.answered(2, late, AckOutcome::Stored), "too late");
        assert_eq!(a.len(), 1);
        assert!(young.try_recv().is_err(), "the younger one still waits");
    }
}
