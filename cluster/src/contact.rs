//! Whether this node's applied state is recent enough to decide on by itself, or must first be checked with
//! the leader. The broker asks before a decision that depends on state other nodes change — which
//! persistent sessions a QoS 1/2 message is for: a node that was paused, starved, cut off or behind may not
//! have applied a subscription whose SUBACK did not wait for it.
//!
//! The answer is a lease: a read barrier (raft's read index) requested at `t` and answered once this node
//! has applied up to what the leader had committed at `t` makes the node fresh until `t + window`. The node
//! actor asks for one in the background every half window, so a healthy node stays fresh; a stall, a
//! partition, a lagging apply or a leader change lets the lease run out, and the next decision waits for a
//! barrier of its own. Nothing here trusts what a heartbeat implies.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The background barrier's schedule (pure: the actor passes the time).
#[derive(Debug)]
pub struct Lease {
    window: Duration,
    /// The background barrier in flight: (read id, when it was asked).
    asked: Option<(u64, Instant)>,
    /// Its answer, waiting for this node to apply up to the index: (index, when it was asked).
    answered: Option<(u64, Instant)>,
}

impl Lease {
    pub fn new(window: Duration) -> Lease {
        Lease {
            window,
            asked: None,
            answered: None,
        }
    }

    /// At a tick: whether to ask for a new background barrier now with read id `id` (none in flight, or
    /// the one in flight older than a tick's worth of retries: raft drops reads without a leader).
    pub fn tick(&mut self, now: Instant, id: u64) -> bool {
        let stale = |t: Instant| now.saturating_duration_since(t) >= self.window / 2;
        if self.asked.is_some_and(|(_, t)| !stale(t)) || self.answered.is_some() {
            return false;
        }
        self.asked = Some((id, now));
        true
    }

    /// A read state for read `id` with index `index`: `true` when it was the background barrier's.
    pub fn answered(&mut self, id: u64, index: u64) -> bool {
        match self.asked {
            Some((asked, t)) if asked == id => {
                self.asked = None;
                self.answered = Some((index, t));
                true
            }
            _ => false,
        }
    }

    /// This node applied up to `applied`: until when it is fresh, if the background barrier completed.
    pub fn applied(&mut self, applied: u64) -> Option<Instant> {
        let (index, t) = self.answered?;
        if index > applied {
            return None;
        }
        self.answered = None;
        Some(t + self.window)
    }

    pub fn window(&self) -> Duration {
        self.window
    }
}

/// Until when the node is fresh, readable from any task without a call into the actor.
#[derive(Debug)]
pub struct Freshness {
    base: Instant,
    /// Milliseconds after `base` until which the node counts as fresh (0: not fresh).
    until_ms: AtomicU64,
}

impl Default for Freshness {
    fn default() -> Self {
        Freshness {
            base: Instant::now(),
            until_ms: AtomicU64::new(0),
        }
    }
}

impl Freshness {
    /// A completed barrier: fresh until `until` (a later lease already held stays).
    pub fn extend(&self, until: Instant) {
        let ms = until.saturating_duration_since(self.base).as_millis() as u64;
        self.until_ms.fetch_max(ms, Ordering::AcqRel);
    }

    pub fn fresh(&self) -> bool {
        (self.base.elapsed().as_millis() as u64) < self.until_ms.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_background_barrier_every_half_window_keeps_a_lease_counted_from_when_it_was_asked() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let mut l = Lease::new(ms(500));
        assert!(l.tick(t0, 1), "the first tick asks");
        assert!(!l.tick(t0 + ms(100), 2), "one in flight");
        assert!(!l.answered(7, 40), "another read's answer");
        assert!(l.answered(1, 40));
        assert!(!l.tick(t0 + ms(300), 3), "answered, waiting for the apply");
        assert_eq!(l.applied(39), None, "not applied that far yet");
        // Fresh until the asking time plus the window: what the leader had committed then is applied.
        assert_eq!(l.applied(40), Some(t0 + ms(500)));
        assert!(l.tick(t0 + ms(300), 4));
        // No answer (no leader, a partition): asked again after half a window, counted from the new ask.
        assert!(!l.tick(t0 + ms(400), 5));
        assert!(l.tick(t0 + ms(550), 6));
        assert!(
            !l.answered(4, 50),
            "the dropped ask's late answer counts for nothing"
        );
        assert!(l.answered(6, 50));
        assert_eq!(l.applied(60), Some(t0 + ms(1050)));
    }

    #[test]
    fn a_barrier_asked_before_a_stall_gives_no_lease_after_it() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let mut l = Lease::new(ms(500));
        assert!(l.tick(t0, 1));
        // SIGSTOP for 5 s: the answer is read after waking.
        assert!(l.answered(1, 10));
        let until = l.applied(10).unwrap();
        let f = Freshness::default();
        f.extend(until);
        assert!(until < t0 + ms(5000), "the lease ran out during the stall");
    }

    #[test]
    fn freshness_keeps_the_latest_lease() {
        let f = Freshness::default();
        assert!(!f.fresh());
        f.extend(Instant::now() + Duration::from_secs(60));
        assert!(f.fresh());
        f.extend(Instant::now() - Duration::from_millis(1));
        assert!(f.fresh(), "an older lease does not shorten a later one");
        let g = Freshness::default();
        g.extend(Instant::now() - Duration::from_millis(1));
        assert!(!g.fresh());
    }
}
