//! The session's record in the store: created when the session becomes persistent (apply gives it its
//! incarnation), replaced as it changes, deleted when it stops being persistent.

use super::{SessionMsg, SessionState};
use crate::broker::message::SessionId;
use std::sync::atomic::Ordering;

/// An identity for one create of a session record, so the proposer can undo exactly that create when it
/// could not learn its outcome. Unique enough without a clock: per-process random state, and the session.
fn creator_token(session: SessionId) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(session);
    h.finish()
}

impl SessionState {
    /// What a restart needs of this session, when it is persistent (expiry > 0).
    pub(super) fn record(&self) -> Option<crate::store::SessionRecord> {
        let expiry = self.lifecycle.expiry();
        (expiry > 0).then(|| crate::store::SessionRecord {
            incarnation: self.incarnation,
            // Set by apply.
            creator: 0,
            expiry,
            offline_since: if self.conn.is_some() {
                0
            } else {
                crate::store::unix_now()
            },
            subscriptions: self
                .subs
                .iter()
                .map(|(f, r)| (f.clone(), r.options, r.sub_id))
                .collect(),
        })
    }

    /// Brings the store up to this session and waits for the commit (what CONNACK, SUBACK and UNSUBACK
    /// report): a persistent session not yet stored is created there (apply gives it its incarnation), a
    /// stored one is replaced, and one that stopped being persistent (expiry set to 0) is forgotten. False
    /// when the store did not take it (failed, timed out, or ignored: the incarnation is no longer the stored
    /// one).
    ///
    /// Only a connect (`may_create`) begins a new life of the session: a SUBSCRIBE that a connection sent
    /// after another node took its session over (the store ignored this incarnation's record) must not
    /// create one, which would drop the inbox the other node just took.
    pub(super) async fn persist(&mut self, may_create: bool) -> bool {
        let Some(store) = self.ctx.store.clone() else {
            return true;
        };
        let outcome = match (self.record(), self.stored) {
            (None, false) => return true,
            (Some(_), false) if !may_create => return false,
            (None, true) => {
                self.set_stored(false);
                store
                    .delete_session(&self.client_id, self.incarnation)
                    .await
            }
            (Some(record), true) => {
                store
                    .put_session(&self.client_id, self.incarnation, record)
                    .await
            }
            (Some(record), false) => {
                let creator = creator_token(self.id);
                let last_seq = self.inbox.next_seq.saturating_sub(1);
                match store
                    .create_session(&self.client_id, creator, record, last_seq)
                    .await
                {
                    Ok(Some(incarnation)) => {
                        self.incarnation = incarnation;
                        // A new life: its inbox starts empty, its seqs go on after any earlier life's.
                        self.inbox = self.inbox.next_life();
                        self.set_stored(true);
                        Ok(true)
                    }
                    Ok(None) => Ok(false),
                    Err(e) => {
                        // The create may still apply (a timeout): the client is refused, so whatever it
                        // created goes again. Proposed after it, this applies after it, and only to the
                        // record this create made.
                        let abandon = store.abandon_session(&self.client_id, creator);
                        store.in_background("abandon_session", &self.client_id, abandon);
                        Err(e)
                    }
                }
            }
        };
        match outcome {
            Ok(true) => true,
            Ok(false) => {
                tracing::warn!(client_id = %self.client_id, incarnation = self.incarnation, "the store ignored the session's record: this incarnation is no longer the stored one");
                self.set_stored(false);
                false
            }
            Err(e) => {
                tracing::warn!(client_id = %self.client_id, error = %e, "session record not stored");
                false
            }
        }
    }

    /// Keeps the node-wide count of durable sessions (publishers' acknowledgements wait only while there are any).
    /// Also listens for (or stops listening for) what apply appends to the session's stored inbox.
    pub(super) fn set_stored(&mut self, stored: bool) {
        if stored != self.stored {
            if stored {
                self.ctx.durable_sessions.fetch_add(1, Ordering::AcqRel);
                if let Some(store) = &self.ctx.store {
                    let me = self.me.clone();
                    store.listeners.listen(
                        &self.client_id,
                        self.id,
                        Box::new(move |e| {
                            let _ = me.cast(SessionMsg::Appended(Box::new(e)));
                        }),
                    );
                }
            } else {
                self.ctx.durable_sessions.fetch_sub(1, Ordering::AcqRel);
                if let Some(store) = &self.ctx.store {
                    store.listeners.forget(&self.client_id, self.id);
                }
            }
            self.stored = stored;
        }
    }
}
