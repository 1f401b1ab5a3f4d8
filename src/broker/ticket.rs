//! What travels with a routed message on behalf of its publisher: the publisher's credit (returned once every
//! copy is queued) and the acknowledgement gate (open once every durable copy is committed to the store).
//!
//! Both are reference counted: whoever still needs the publisher to wait holds a clone, and the last drop
//! releases it. No one has to count copies or send "done" messages.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::{oneshot, OwnedSemaphorePermit};

/// Held while a persistent session's copy of a message is not yet committed; the publisher's PUBACK/PUBREC
/// goes out when the last holder drops it.
#[derive(Debug)]
pub struct AckGate {
    done: Option<oneshot::Sender<bool>>,
    failed: AtomicBool,
}

/// The publisher's side of an [`AckGate`]: resolves to `true` when every holder succeeded.
pub type AckWait = oneshot::Receiver<bool>;

impl AckGate {
    pub fn new() -> (Arc<AckGate>, AckWait) {
        let (tx, rx) = oneshot::channel();
        let gate = AckGate {
            done: Some(tx),
            failed: AtomicBool::new(false),
        };
        (Arc::new(gate), rx)
    }

    /// A durable copy could not be committed: the publisher must not get a success acknowledgement.
    pub fn fail(&self) {
        self.failed.store(true, Ordering::Release);
    }
}

impl Drop for AckGate {
    fn drop(&mut self) {
        if let Some(tx) = self.done.take() {
            let _ = tx.send(!self.failed.load(Ordering::Acquire));
        }
    }
}

/// Credit and gate of one routed message; the broker's own messages ($SYS, Wills) carry neither.
#[derive(Debug, Clone, Default)]
pub struct Ticket {
    pub credit: Option<Arc<OwnedSemaphorePermit>>,
    pub gate: Option<Arc<AckGate>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_gate_opens_when_the_last_holder_drops_and_reports_failures() {
        let (gate, wait) = AckGate::new();
        let copy = gate.clone();
        drop(gate);
        let mut wait = wait;
        assert!(wait.try_recv().is_err(), "a holder remains");
        drop(copy);
        assert_eq!(wait.await, Ok(true));

        let (gate, wait) = AckGate::new();
        let copy = gate.clone();
        copy.fail();
        drop((gate, copy));
        assert_eq!(wait.await, Ok(false));
    }
}
