//! A session's inbound QoS 2 packet ids: the PUBLISHes its client sent that got (or are getting) PUBREC and
//! await PUBREL. They belong to the session, not to a connection: every connection the session has had shares
//! this one set, so a takeover or a reconnect can never leave a stale copy of it behind.
//!
//! For a persistent session an id is `Pending` from the PUBLISH until the store has recorded it (after every
//! copy of the message committed), then `Recorded`. A resend of a recorded id is acknowledged and not routed
//! [MQTT-4.3.3-9]; a resend of a pending one is routed again (persistent subscribers store a message of a given
//! publisher and packet id at most once), so no resend is ever acknowledged before the message is stored.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

/// Where an inbound QoS 2 id stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos2Id {
    /// Routed; its copies or its record in the store are not yet committed.
    Pending,
    /// Its copies are stored and so is the id (or the session keeps nothing in the store).
    Recorded,
}

/// The shared set (cheap to clone: one `Arc`).
#[derive(Debug, Clone, Default)]
pub struct InboundQos2(Arc<Shared>);

#[derive(Debug, Default)]
struct Shared {
    ids: Mutex<HashMap<u16, Qos2Id>>,
    /// Woken when a pending id is recorded or freed.
    settled: tokio::sync::Notify,
}

impl InboundQos2 {
    /// Ids the store kept for a persistent session.
    pub fn restored(ids: HashSet<u16>) -> InboundQos2 {
        InboundQos2(Arc::new(Shared {
            ids: Mutex::new(ids.into_iter().map(|id| (id, Qos2Id::Recorded)).collect()),
            settled: tokio::sync::Notify::new(),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u16, Qos2Id>> {
        self.0.ids.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Resolves once `pkid` is no longer pending (recorded, or freed because it could not be stored).
    pub async fn until_settled(&self, pkid: u16) {
        loop {
            let woken = self.0.settled.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.get(pkid) != Some(Qos2Id::Pending) {
                return;
            }
            woken.await;
        }
    }

    pub fn get(&self, pkid: u16) -> Option<Qos2Id> {
        self.lock().get(&pkid).copied()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    pub fn insert(&self, pkid: u16, state: Qos2Id) {
        self.lock().insert(pkid, state);
    }

    /// PUBREL (or a refusal that ends the exchange): the id is free. Whether it was held.
    pub fn remove(&self, pkid: u16) -> bool {
        let held = self.lock().remove(&pkid).is_some();
        self.0.settled.notify_waiters();
        held
    }

    /// The id is recorded in the store; `false` when it is no longer pending (released meanwhile).
    pub fn mark_recorded(&self, pkid: u16) -> bool {
        let recorded = match self.lock().get_mut(&pkid) {
            Some(s @ Qos2Id::Pending) => {
                *s = Qos2Id::Recorded;
                true
            }
            _ => false,
        };
        self.0.settled.notify_waiters();
        recorded
    }

    /// The message could not be stored: a pending id is freed, so the client's resend is routed.
    pub fn forget_pending(&self, pkid: u16) {
        {
            let mut ids = self.lock();
            if ids.get(&pkid) == Some(&Qos2Id::Pending) {
                ids.remove(&pkid);
            }
        }
        self.0.settled.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_shared_pending_until_recorded_and_freed_on_failure_or_release() {
        let a = InboundQos2::restored([3].into());
        let b = a.clone();
        assert_eq!(
            b.get(3),
            Some(Qos2Id::Recorded),
            "one set for every connection"
        );
        a.insert(7, Qos2Id::Pending);
        b.forget_pending(3);
        assert_eq!(a.get(3), Some(Qos2Id::Recorded), "a recorded id stays");
        assert!(b.mark_recorded(7));
        assert!(!b.mark_recorded(7), "once");
        a.insert(8, Qos2Id::Pending);
        b.forget_pending(8);
        assert_eq!(a.get(8), None);
        assert!(a.remove(7));
        assert!(!b.mark_recorded(7), "released before its record");
        assert!(!a.remove(7));
        assert_eq!(a.len(), 1);
    }
}
