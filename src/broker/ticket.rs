//! What travels with a routed message on behalf of its publisher: the publisher's credit (returned once every
//! copy is queued) and the acknowledgement gate (open once every durable copy is committed to the store).
//!
//! Both are reference counted: whoever still needs the publisher to wait holds a clone, and the last drop
//! releases it. No one has to count copies or send "done" messages.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{oneshot, OwnedSemaphorePermit};

/// What the publisher's acknowledgement says once every holder of the gate let go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    /// Everything that had to be committed is (or nothing had to be).
    Stored,
    /// Every session the message matched refused it: each one's stored quota is full (MQTT 5: 0x97).
    QuotaExceeded,
    /// A commit failed or the store ignored it: no success acknowledgement (the connection is closed, 0x80).
    Failed,
}

/// Held while a persistent session's copy of a message is not yet committed; the publisher's PUBACK/PUBREC
/// goes out when the last holder drops it.
pub struct AckGate {
    done: Option<Done>,
    failed: AtomicBool,
    /// Places the message went to (sessions, and the retained store), and how many of them refused it
    /// because a stored quota is full.
    copies: AtomicUsize,
    refused: AtomicUsize,
}

/// Who learns the outcome.
enum Done {
    /// The publisher's connection, waiting.
    Wait(oneshot::Sender<AckOutcome>),
    /// A call made where the last holder drops the gate (a peer's forwarded message: its answer frame).
    Call(Box<dyn FnOnce(AckOutcome) + Send + Sync>),
}

impl std::fmt::Debug for AckGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AckGate")
            .field("outcome", &self.outcome())
            .finish()
    }
}

/// The publisher's side of an [`AckGate`].
pub type AckWait = oneshot::Receiver<AckOutcome>;

impl AckGate {
    pub fn new() -> (Arc<AckGate>, AckWait) {
        let (tx, rx) = oneshot::channel();
        (Self::with(Done::Wait(tx)), rx)
    }

    /// A gate whose outcome is handed to `call` once the last holder drops it (it must not block).
    pub fn calling(call: impl FnOnce(AckOutcome) + Send + Sync + 'static) -> Arc<AckGate> {
        Self::with(Done::Call(Box::new(call)))
    }

    fn with(done: Done) -> Arc<AckGate> {
        Arc::new(AckGate {
            done: Some(done),
            failed: AtomicBool::new(false),
            copies: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
        })
    }

    /// Takes another gate's outcome as one copy of this one's (a peer's answer for the copies it made).
    pub fn merge(&self, outcome: AckOutcome) {
        self.add_copies(1);
        match outcome {
            AckOutcome::Stored => {}
            AckOutcome::QuotaExceeded => self.refuse_quota(),
            AckOutcome::Failed => self.fail(),
        }
    }

    /// A durable copy could not be committed: the publisher must not get a success acknowledgement.
    pub fn fail(&self) {
        self.failed.store(true, Ordering::Release);
    }

    /// The message goes to `n` more places (counted before any of them can refuse it).
    pub fn add_copies(&self, n: usize) {
        self.copies.fetch_add(n, Ordering::AcqRel);
    }

    /// A place counted with [`AckGate::add_copies`] that is not one after all (a persistent session whose copy
    /// the store's fan-out accounts for).
    pub fn not_a_copy(&self) {
        let _ = self
            .copies
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| c.checked_sub(1));
    }

    /// One place refused the message: its stored quota is full.
    pub fn refuse_quota(&self) {
        self.refused.fetch_add(1, Ordering::AcqRel);
    }

    fn outcome(&self) -> AckOutcome {
        let copies = self.copies.load(Ordering::Acquire);
        if self.failed.load(Ordering::Acquire) {
            AckOutcome::Failed
        } else if copies > 0 && self.refused.load(Ordering::Acquire) >= copies {
            AckOutcome::QuotaExceeded
        } else {
            AckOutcome::Stored
        }
    }
}

impl Drop for AckGate {
    fn drop(&mut self) {
        let outcome = self.outcome();
        match self.done.take() {
            Some(Done::Wait(tx)) => {
                let _ = tx.send(outcome);
            }
            Some(Done::Call(call)) => call(outcome),
            None => {}
        }
    }
}

/// Credit and gate of one routed message; the broker's own messages ($SYS, Wills) carry neither.
#[derive(Debug, Clone, Default)]
pub struct Ticket {
    pub credit: Option<Arc<OwnedSemaphorePermit>>,
    pub gate: Option<Arc<AckGate>>,
}

/// A copy's ticket on its way to a session. `strict`: a copy a peer waits to hear about (see
/// `RemoteLink::answering_gate`): dropped unhandled (the session stopped with it still in its mailbox: it
/// moved to another node, or ended), its gate fails, so the peer's publisher is not told it was stored.
/// A local publisher's copies are not strict: a session that ended with them queued is, for it, a
/// subscriber that went away, as on one node.
pub struct Handed {
    ticket: Option<Ticket>,
    strict: bool,
}

impl Handed {
    pub fn new(ticket: Ticket, strict: bool) -> Handed {
        Handed {
            ticket: Some(ticket),
            strict,
        }
    }

    /// The session has the copy: its ticket.
    pub fn take(mut self) -> Ticket {
        self.ticket.take().unwrap_or_default()
    }
}

impl Drop for Handed {
    fn drop(&mut self) {
        if let (true, Some(t)) = (self.strict, self.ticket.take()) {
            if let Some(g) = &t.gate {
                g.fail();
            }
        }
    }
}

impl std::fmt::Debug for Handed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handed")
            .field("strict", &self.strict)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_gate_opens_when_the_last_holder_drops_and_reports_failures_and_full_quotas() {
        let (gate, wait) = AckGate::new();
        let copy = gate.clone();
        drop(gate);
        let mut wait = wait;
        assert!(wait.try_recv().is_err(), "a holder remains");
        drop(copy);
        assert_eq!(wait.await, Ok(AckOutcome::Stored));

        let (gate, wait) = AckGate::new();
        let copy = gate.clone();
        copy.fail();
        drop((gate, copy));
        assert_eq!(wait.await, Ok(AckOutcome::Failed));

        // Refused by one of two matching sessions: the other has it, so the publisher is told success.
        let (gate, wait) = AckGate::new();
        gate.add_copies(2);
        gate.refuse_quota();
        drop(gate);
        assert_eq!(wait.await, Ok(AckOutcome::Stored));
        let (gate, wait) = AckGate::new();
        gate.add_copies(1);
        gate.refuse_quota();
        drop(gate);
        assert_eq!(wait.await, Ok(AckOutcome::QuotaExceeded));
    }

    #[tokio::test]
    async fn a_strict_copy_dropped_unhandled_fails_its_gate_and_a_handled_one_does_not() {
        let (gate, wait) = AckGate::new();
        let ticket = Ticket {
            credit: None,
            gate: Some(gate),
        };
        let handled = Handed::new(ticket.clone(), true).take();
        drop(Handed::new(ticket.clone(), false));
        drop((handled, ticket));
        assert_eq!(wait.await, Ok(AckOutcome::Stored));
        let (gate, wait) = AckGate::new();
        drop(Handed::new(
            Ticket {
                credit: None,
                gate: Some(gate),
            },
            true,
        ));
        assert_eq!(wait.await, Ok(AckOutcome::Failed));
    }

    #[tokio::test]
    async fn a_calling_gate_answers_once_its_last_holder_drops_and_a_merged_answer_counts_as_one_copy(
    ) {
        let (tx, mut rx) = tokio::sync::mpsc::channel(2);
        let gate = AckGate::calling(move |o| {
            let _ = tx.try_send(o);
        });
        let held = gate.clone();
        drop(gate);
        assert!(rx.try_recv().is_err(), "a holder remains");
        drop(held);
        assert_eq!(rx.recv().await, Some(AckOutcome::Stored));
        assert_eq!(rx.recv().await, None, "answered once");

        // A peer's answers merged into the publisher's gate: a full quota there is one refusing copy.
        let (gate, wait) = AckGate::new();
        gate.add_copies(1);
        gate.merge(AckOutcome::QuotaExceeded);
        drop(gate);
        assert_eq!(
            wait.await,
            Ok(AckOutcome::Stored),
            "one of two copies stored"
        );
        let (gate, wait) = AckGate::new();
        gate.merge(AckOutcome::QuotaExceeded);
        drop(gate);
        assert_eq!(wait.await, Ok(AckOutcome::QuotaExceeded));
        let (gate, wait) = AckGate::new();
        gate.merge(AckOutcome::Failed);
        drop(gate);
        assert_eq!(wait.await, Ok(AckOutcome::Failed));
    }
}
