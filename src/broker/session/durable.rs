//! The session's side of its stored inbox (see [`super::inbox`]): refilling the read-ahead from the store,
//! taking committed copies, sending PUBREL once a release is committed, and proposing the inbox changes.

use super::inbox::{self, Pending};
use super::outbox::InboxChange;
use super::SessionState;
use crate::broker::message::{Delivery, InboxRef};
use crate::store::InboxEvent;

impl SessionState {
    /// Refills the read-ahead from the stored inbox when it runs low (online only): copies in order, QoS 2
    /// copies the client had received straight into the window to get their PUBREL again.
    /// Returns whether it read anything.
    pub(super) fn page_in(&mut self) -> bool {
        let Some(store) = self.ctx.store.clone() else {
            return false;
        };
        if !self.stored || self.conn.is_none() {
            return false;
        }
        let Some(page) = self.inbox.page(self.outbox.durable_queued()) else {
            return false;
        };
        let (copies, complete) = store.inbox_page(&self.client_id, self.incarnation, page);
        let last = copies.last().map(|c| c.seq);
        let read = copies.len() as u64;
        for copy in copies {
            match (copy.released, copy.delivery) {
                (Some(pkid), Some(d)) => self.outbox.restore_released(pkid, d),
                (None, Some(d)) => self.take_stored(d),
                (_, None) => {
                    // Expired while it waited in the store.
                    self.ctx
                        .metrics
                        .dropped
                        .with_label_values(&["expired"])
                        .inc();
                    self.pending_changes.push(InboxChange::Done(InboxRef {
                        seq: copy.seq,
                        size: copy.size,
                    }));
                }
            }
        }
        self.inbox.paged(page, last, complete);
        self.ctx
            .metrics
            .inbox
            .with_label_values(&["paged"])
            .inc_by(read);
        read > 0
    }

    /// Apply appended a copy to this session's inbox: into the read-ahead when it follows what is loaded,
    /// else it waits in the store for a page.
    pub(super) fn appended(&mut self, e: InboxEvent) {
        if !self.stored || e.incarnation != self.incarnation {
            return;
        }
        let online = self.conn.is_some();
        let loadable = online && e.delivery.is_some();
        if self.inbox.appended(
            e.seq,
            (e.count, e.bytes),
            loadable,
            self.outbox.durable_queued(),
        ) {
            if let Some(d) = e.delivery {
                self.take_stored(d);
            }
        }
        self.flush();
    }

    /// A stored copy into the read-ahead, unless the ACL no longer lets the client read its topic (it leaves
    /// the inbox then).
    fn take_stored(&mut self, d: Delivery) {
        if !self.allowed(&d.message.topic, false) {
            let m = &self.ctx.metrics;
            m.acl_denied.with_label_values(&["deliver"]).inc();
            m.dropped.with_label_values(&["acl_denied"]).inc();
            if let Some(r) = d.durable {
                self.pending_changes.push(InboxChange::Done(r));
            }
            return;
        }
        let _ = self.outbox.push(d, true);
    }

    /// The store's inbox may hold copies applied before this session listened (a takeover, a restore):
    /// read from there once the client is back.
    pub(super) fn catch_up(&mut self) {
        if let Some(store) = self.ctx.store.clone().filter(|_| self.stored) {
            let s = store.inbox_summary(&self.client_id, self.incarnation);
            self.inbox.caught_up(s.last_seq);
        }
    }

    /// A QoS 2 copy's release was committed: its PUBREL goes (or, if it was not, the PUBLISH goes again later).
    pub(super) fn release_stored(&mut self, pkid: u16, ok: bool) {
        if !ok {
            self.outbox.release_failed(pkid);
            return;
        }
        if let (Some(out), Some(conn)) = (self.outbox.release_confirmed(pkid), self.conn.clone()) {
            self.send(&conn, out);
        }
    }

    /// The queue of store commands whose answers come back as session messages, started on first use.
    pub(super) fn commits(&mut self) -> &tokio::sync::mpsc::UnboundedSender<Pending> {
        let (me, failures) = (&self.me, &self.ctx.metrics.inbox_failed);
        self.commits
            .get_or_insert_with(|| inbox::spawn_commit_waiter(me.clone(), failures.clone()))
    }

    /// Brings the store's inbox up to date with the durable messages that moved or left the session.
    pub(super) fn sync_inbox(&mut self) {
        let mut changes = std::mem::take(&mut self.pending_changes);
        changes.append(&mut self.outbox.take_changes());
        let Some(store) = self.ctx.store.clone().filter(|_| self.stored) else {
            return;
        };
        let mut done = Vec::new();
        for change in changes {
            match change {
                InboxChange::Done(r) => {
                    self.inbox.removed(r);
                    done.push(r.seq);
                }
                InboxChange::Released { seq, pkid } => {
                    let commit =
                        Box::pin(store.inbox_release(&self.client_id, self.incarnation, seq, pkid));
                    let _ = self.commits().send(Pending::Release { pkid, commit });
                }
            }
        }
        if !done.is_empty() {
            self.ctx
                .metrics
                .inbox
                .with_label_values(&["removed"])
                .inc_by(done.len() as u64);
            let count = done.len() as u64;
            self.inbox.removing += count;
            let commit = Box::pin(store.inbox_ack(&self.client_id, self.incarnation, done));
            let _ = self.commits().send(Pending::Remove { count, commit });
        }
    }
}
