//! Whether this node's applied state is recent enough to decide on by itself, or must first be checked with
//! the leader (a read barrier). The broker asks before a decision that depends on state other nodes change —
//! which persistent sessions a QoS 1/2 message is for: a node that was paused, starved or cut off may not
//! have applied a subscription whose SUBACK did not wait for it.
//!
//! [`Contact`] is the pure decision, from the node actor's events with an injected clock; [`Freshness`]
//! publishes its answer to other tasks without a call into the actor.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What the node knows of its contact with the cluster at an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Leader, having heard from a quorum of voters within the window.
    LeaderWithQuorum,
    /// Follower or learner that heard from its leader within the window and has applied all it knows
    /// committed.
    FollowerCaughtUp,
    /// Anything else: no leader, a leader not heard from, entries committed but not applied yet.
    Unsure,
}

/// The contact decision.
#[derive(Debug)]
pub struct Contact {
    window: Duration,
    last_event: Option<Instant>,
    /// The node stalled (no event for longer than the window): whatever it hears next, only a read barrier
    /// makes it fresh again.
    suspect: bool,
}

impl Contact {
    pub fn new(window: Duration) -> Contact {
        Contact {
            window,
            last_event: None,
            suspect: false,
        }
    }

    /// An event of the node actor at `now` (ticks come every raft tick, so a long gap means the process or
    /// its runtime stalled). Returns until when the node counts as fresh, `None` for not fresh.
    pub fn event(&mut self, now: Instant, standing: Standing) -> Option<Instant> {
        if self
            .last_event
            .is_some_and(|last| now.saturating_duration_since(last) > self.window)
        {
            self.suspect = true;
        }
        self.last_event = Some(now);
        if self.suspect || standing == Standing::Unsure {
            return None;
        }
        Some(now + self.window)
    }

    /// Whether a stall was seen and no read barrier has completed since.
    pub fn suspect(&self) -> bool {
        self.suspect
    }

    /// A read barrier completed at `now`: the applied state has what the leader had committed when asked.
    pub fn confirmed(&mut self, now: Instant) -> Instant {
        self.suspect = false;
        self.last_event = Some(now);
        now + self.window
    }
}

/// [`Contact`]'s answer, readable from any task.
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
    pub fn set(&self, until: Option<Instant>) {
        let ms = until.map_or(0, |u| {
            u.saturating_duration_since(self.base).as_millis() as u64
        });
        self.until_ms.store(ms, Ordering::Release);
    }

    pub fn fresh(&self) -> bool {
        (self.base.elapsed().as_millis() as u64) < self.until_ms.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_while_in_contact_and_only_a_read_barrier_clears_a_stall() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let mut c = Contact::new(ms(1000));
        use Standing::*;
        // Ticks every 100 ms with a leader heard: fresh for a window after each.
        assert_eq!(c.event(t0, FollowerCaughtUp), Some(t0 + ms(1000)));
        assert_eq!(c.event(t0 + ms(100), LeaderWithQuorum), Some(t0 + ms(1100)));
        // Contact lost: not fresh at once.
        assert_eq!(c.event(t0 + ms(200), Unsure), None);
        assert_eq!(c.event(t0 + ms(300), FollowerCaughtUp), Some(t0 + ms(1300)));
        // A stall (SIGSTOP, a starved runtime): the heartbeat heard right after it does not make it fresh.
        assert_eq!(c.event(t0 + ms(5000), FollowerCaughtUp), None);
        assert!(c.suspect());
        assert_eq!(c.event(t0 + ms(5100), FollowerCaughtUp), None);
        // A read barrier does.
        assert_eq!(c.confirmed(t0 + ms(5200)), t0 + ms(6200));
        assert!(!c.suspect());
        assert_eq!(
            c.event(t0 + ms(5300), FollowerCaughtUp),
            Some(t0 + ms(6300))
        );
        // Exactly the window is not a stall.
        assert_eq!(
            c.event(t0 + ms(6300), LeaderWithQuorum),
            Some(t0 + ms(7300))
        );
    }

    #[test]
    fn freshness_reads_what_was_set() {
        let f = Freshness::default();
        assert!(!f.fresh());
        f.set(Some(Instant::now() + Duration::from_secs(60)));
        assert!(f.fresh());
        f.set(Some(Instant::now() - Duration::from_millis(1)));
        assert!(!f.fresh());
        f.set(None);
        assert!(!f.fresh());
    }
}
