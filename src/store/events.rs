//! What apply tells the sessions of this node about their inboxes. Apply appends copies to persistent
//! sessions' inboxes on every node (whichever node owns the session); the owner's session actor listens for
//! its client id and hears each append once the batch that made it is readable, in log order, so its
//! cursor never skips a copy it would read from the store.

use crate::broker::message::Delivery;
use std::collections::HashMap;
use std::sync::RwLock;

/// A copy apply appended to a session's inbox.
#[derive(Debug)]
pub struct InboxEvent {
    pub incarnation: u64,
    pub seq: u64,
    /// The inbox after the append (store's count): copies and their bytes.
    pub count: u64,
    pub bytes: u64,
    /// The copy, ready to send (its `durable` names its seq and size); `None` when it expired already or
    /// did not decode (a page reads what is there).
    pub delivery: Option<Delivery>,
}

/// How a session hears of its appends.
pub type Listener = Box<dyn Fn(InboxEvent) + Send + Sync>;

/// The sessions of this node listening for their appends, by client id.
#[derive(Default)]
pub struct InboxListeners {
    map: RwLock<HashMap<String, (u64, Listener)>>,
}

impl InboxListeners {
    /// `token` names this listener: a later one for the same client replaces it, and only its own
    /// [`InboxListeners::forget`] removes it.
    pub fn listen(&self, client_id: &str, token: u64, listener: Listener) {
        self.write()
            .insert(client_id.to_string(), (token, listener));
    }

    pub fn forget(&self, client_id: &str, token: u64) {
        let mut map = self.write();
        if map.get(client_id).is_some_and(|(t, _)| *t == token) {
            map.remove(client_id);
        }
    }

    pub(super) fn has(&self, client_id: &str) -> bool {
        self.read().contains_key(client_id)
    }

    pub(super) fn tell(&self, client_id: &str, event: InboxEvent) {
        if let Some((_, l)) = self.read().get(client_id) {
            l(event);
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, (u64, Listener)>> {
        self.map.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, (u64, Listener)>> {
        self.map.write().unwrap_or_else(|e| e.into_inner())
    }
}
