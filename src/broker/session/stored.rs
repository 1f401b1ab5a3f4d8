//! The session's record in the store: created when the session becomes persistent (apply gives it its
//! incarnation), replaced as it changes, deleted when it stops being persistent.

use super::inbox::InboxCursor;
use super::SessionState;
use std::sync::atomic::Ordering;

impl SessionState {
    /// What a restart needs of this session, when it is persistent (expiry > 0).
    pub(super) fn record(&self) -> Option<crate::store::SessionRecord> {
        let expiry = self.lifecycle.expiry();
        (expiry > 0).then(|| crate::store::SessionRecord {
            incarnation: self.incarnation,
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
    pub(super) async fn persist(&mut self) -> bool {
        let Some(store) = self.ctx.store.clone() else {
            return true;
        };
        let outcome = match (self.record(), self.stored) {
            (None, false) => return true,
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
            (Some(record), false) => match store.create_session(&self.client_id, record).await {
                Ok(Some(incarnation)) => {
                    self.incarnation = incarnation;
                    // A new life: its inbox starts empty.
                    self.inbox = InboxCursor::new();
                    self.set_stored(true);
                    Ok(true)
                }
                Ok(None) => Ok(false),
                Err(e) => Err(e),
            },
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
    pub(super) fn set_stored(&mut self, stored: bool) {
        if stored != self.stored {
            if stored {
                self.ctx.durable_sessions.fetch_add(1, Ordering::AcqRel);
            } else {
                self.ctx.durable_sessions.fetch_sub(1, Ordering::AcqRel);
            }
            self.stored = stored;
        }
    }
}
