//! A persistent session's inbox, as the session sees it. The inbox is the store: every QoS 1/2 copy for the
//! session is appended there before its publisher is acknowledged, and stays until the client acknowledges it
//! (or it expires, or the session ends). Memory holds a window of it: the copies in flight and a read-ahead of
//! at most [`READ_AHEAD`] copies / [`READ_AHEAD_BYTES`]; the rest is read from the store in order as the window
//! drains, so a backlog of millions costs disk, not memory.
//!
//! [`InboxCursor`] is the pure bookkeeping (which seqs are committed, which are in memory, the stored quota);
//! [`spawn_commit_waiter`] turns the store's commit answers into session messages, in proposal order.

use crate::broker::message::InboxRef;
use crate::broker::ticket::Ticket;
use crate::store::{InboxSummary, Pushed};
use cicada_cluster::ClusterError;
use ractor::ActorRef;
use std::future::Future;
use std::pin::Pin;
use tokio::sync::mpsc;

use super::SessionMsg;

/// Durable copies held in memory ahead of the window, at most.
pub const READ_AHEAD: usize = 256;
/// ... and their bytes, at most (a page read stops at the first copy past it).
pub const READ_AHEAD_BYTES: usize = 4 << 20;

/// Where a persistent session's stored inbox stands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InboxCursor {
    /// The seq the next appended copy gets.
    pub next_seq: u64,
    /// Every stored copy with a seq up to this one is in memory (queued or in flight) or gone.
    pub loaded_upto: u64,
    /// Every append up to this seq has committed (or failed): what may be read from the store.
    pub committed_upto: u64,
    /// Copies stored (appended and not removed) and their bytes, against the quota.
    pub count: u64,
    pub bytes: u64,
    /// The quota refused a copy and that was logged; cleared once the inbox is under it again.
    quota_logged: bool,
    /// Copies whose removal (the client acknowledged them) is proposed and not yet answered. Past
    /// [`MAX_REMOVING`] no page is read: a client draining a large backlog goes as fast as the store commits
    /// its acknowledgements, so the session's proposals stay bounded.
    pub removing: u64,
    /// The first seq of this life of the session: answers about earlier seqs (a life whose record was
    /// deleted, then created again in the same actor) are ignored.
    first_seq: u64,
}

/// Unanswered removals past which the read-ahead is not refilled.
pub const MAX_REMOVING: u64 = READ_AHEAD as u64;

/// A read of the store to refill the read-ahead: seqs in `(after, upto]`, at most `max` copies and about
/// `max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub after: u64,
    pub upto: u64,
    pub max: usize,
    pub max_bytes: usize,
}

impl InboxCursor {
    /// A new life of the session: an empty inbox.
    pub fn new() -> InboxCursor {
        InboxCursor {
            next_seq: 1,
            ..InboxCursor::default()
        }
    }

    /// The inbox of a new life of the session (its record created again): seqs go on after this life's, so
    /// a copy still in flight from the old life is never confused with a new one.
    pub fn next_life(&self) -> InboxCursor {
        let last = self.next_seq.saturating_sub(1);
        InboxCursor {
            next_seq: self.next_seq,
            loaded_upto: last,
            committed_upto: last,
            removing: self.removing,
            first_seq: self.next_seq,
            ..InboxCursor::default()
        }
    }

    /// An inbox the store kept across a restart: nothing of it is in memory.
    pub fn restored(s: InboxSummary) -> InboxCursor {
        InboxCursor {
            next_seq: s.last_seq + 1,
            loaded_upto: 0,
            committed_upto: s.last_seq,
            count: s.count,
            bytes: s.bytes,
            quota_logged: false,
            removing: 0,
            first_seq: 0,
        }
    }

    /// Apply appended `seq` (the store's inbox now holds `count` copies of `bytes`); true when the copy can
    /// go straight into memory (`loadable`: it is at hand; it follows what is loaded, and the read-ahead has
    /// room), false when the store keeps it until a page reads it.
    pub fn appended(
        &mut self,
        seq: u64,
        (count, bytes): (u64, u64),
        loadable: bool,
        read_ahead: (usize, usize),
    ) -> bool {
        if seq < self.first_seq {
            return false;
        }
        self.next_seq = self.next_seq.max(seq + 1);
        self.count = count;
        self.bytes = bytes;
        self.quota_logged = false;
        self.stored(seq, loadable, read_ahead)
    }

    /// The store's inbox holds copies up to `last_seq` (read when a client attaches: appends applied before
    /// this session listened are read from the store).
    pub fn caught_up(&mut self, last_seq: u64) {
        self.committed_upto = self.committed_upto.max(last_seq);
        self.next_seq = self.next_seq.max(last_seq + 1);
    }

    /// The store refused a copy (quota full): true the first time since the inbox was under it (to log).
    pub fn refused(&mut self) -> bool {
        !std::mem::replace(&mut self.quota_logged, true)
    }

    /// The append of `seq` committed; true when the copy can go straight into memory (it follows what is
    /// loaded, and the read-ahead has room), false when the store keeps it until a page reads it.
    fn stored(&mut self, seq: u64, online: bool, read_ahead: (usize, usize)) -> bool {
        if seq < self.first_seq {
            return false;
        }
        self.committed_upto = self.committed_upto.max(seq);
        let fits = read_ahead.0 < READ_AHEAD && read_ahead.1 < READ_AHEAD_BYTES;
        if online && fits && self.loaded_upto + 1 == seq {
            self.loaded_upto = seq;
            return true;
        }
        false
    }

    /// `r` left the inbox (acknowledged, expired, or its append failed).
    pub fn removed(&mut self, r: InboxRef) {
        if r.seq < self.first_seq {
            return;
        }
        self.count = self.count.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(r.size);
    }

    /// What to read from the store now, given the read-ahead in memory (copies, bytes); `None` while it is
    /// more than half full or everything committed is loaded.
    pub fn page(&self, read_ahead: (usize, usize)) -> Option<Page> {
        let (n, bytes) = read_ahead;
        if self.loaded_upto >= self.committed_upto
            || self.removing >= MAX_REMOVING
            || n > READ_AHEAD / 2
            || bytes > READ_AHEAD_BYTES / 2
        {
            return None;
        }
        Some(Page {
            after: self.loaded_upto,
            upto: self.committed_upto,
            max: READ_AHEAD - n,
            max_bytes: READ_AHEAD_BYTES - bytes,
        })
    }

    /// A page was read: `last` is the last seq it returned, `complete` whether it reached `page.upto`.
    pub fn paged(&mut self, page: Page, last: Option<u64>, complete: bool) {
        self.loaded_upto = if complete {
            page.upto
        } else {
            last.unwrap_or(page.after)
        };
    }

    /// The client went away and the queued read-ahead was dropped from memory, the lowest seq being
    /// `lowest`: it is read again from there when the client is back.
    pub fn forget_from(&mut self, lowest: Option<u64>) {
        if let Some(l) = lowest {
            self.loaded_upto = self.loaded_upto.min(l.saturating_sub(1));
        }
    }
}

type Commit<T> = Pin<Box<dyn Future<Output = Result<T, ClusterError>> + Send>>;

/// A store command of the session whose answer the session needs.
pub enum Pending {
    /// A copy's append: the publisher's ticket (credit and acknowledgement gate) is held until it commits.
    /// The copy itself reaches the session from apply.
    Push {
        ticket: Ticket,
        commit: Commit<Pushed>,
    },
    /// A QoS 2 copy's release: its PUBREL waits for it.
    Release { pkid: u16, commit: Commit<bool> },
    /// The removal of `count` copies the client acknowledged: the next page waits for it past
    /// [`MAX_REMOVING`].
    Remove { count: u64, commit: Commit<bool> },
}

/// Awaits the session's commits in proposal order and reports each to the session: `QuotaFull`,
/// `ReleaseStored`, `Removed`. A failed append fails the publisher's acknowledgement; the publisher's credit
/// returns when the append is answered, so proposals stay bounded by the publishers' credit.
///
/// The channel is unbounded in type only: every `Append` holds its publisher's credit (or is one of the
/// retained messages a SUBSCRIBE matched), `Release`s are bounded by the in-flight window, and `Remove`s by
/// [`MAX_REMOVING`] plus the read-ahead and the window.
pub fn spawn_commit_waiter(
    session: ActorRef<SessionMsg>,
    failures: prometheus::IntCounter,
) -> mpsc::UnboundedSender<Pending> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Pending>();
    tokio::spawn(async move {
        while let Some(p) = rx.recv().await {
            match p {
                Pending::Push { ticket, commit } => {
                    let failed = match commit.await {
                        // The session has this message already (a resend routed again after a crash): the
                        // publisher may be acknowledged; the copy stored before is the one delivered.
                        Ok(Pushed::Stored(_) | Pushed::Duplicate) => false,
                        Ok(Pushed::Full) => {
                            if let Some(g) = &ticket.gate {
                                g.refuse_quota();
                            }
                            let _ = session.cast(SessionMsg::QuotaFull);
                            false
                        }
                        Ok(Pushed::Ignored) => {
                            tracing::warn!(
                                "message for a replaced persistent session ignored by the store"
                            );
                            true
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "message for a persistent session not stored");
                            true
                        }
                    };
                    if failed {
                        failures.inc();
                        if let Some(g) = &ticket.gate {
                            g.fail();
                        }
                    }
                }
                Pending::Release { pkid, commit } => {
                    let ok = matches!(commit.await, Ok(true));
                    if !ok {
                        tracing::warn!(pkid, "QoS 2 release not stored; the PUBLISH goes again");
                    }
                    let _ = session.cast(SessionMsg::ReleaseStored { pkid, ok });
                }
                Pending::Remove { count, commit } => {
                    // A removal that failed leaves the copies stored: after a restart they come again
                    // (QoS 1 may duplicate; a QoS 2 copy past PUBREC gets only its PUBREL).
                    match commit.await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::debug!(count, "inbox removal ignored: session replaced")
                        }
                        Err(e) => tracing::warn!(count, error = %e, "inbox removal not stored"),
                    }
                    let _ = session.cast(SessionMsg::Removed(count));
                }
            }
        }
    });
    tx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_life_goes_on_after_the_old_seqs_and_ignores_their_answers() {
        let mut c = InboxCursor::new();
        for seq in 1..=3 {
            c.appended(seq, (seq, seq * 10), false, (0, 0));
        }
        c.removing = 2;
        let mut n = c.next_life();
        assert_eq!(
            (n.count, n.bytes, n.removing, n.next_seq),
            (0, 0, 2, 4),
            "seqs go on"
        );
        // The old life's late answers change nothing.
        assert!(!n.appended(2, (9, 9), true, (0, 0)));
        n.removed(r(1));
        assert_eq!((n.count, n.loaded_upto, n.committed_upto), (0, 3, 3));
        assert!(
            n.appended(4, (1, 10), true, (0, 0)),
            "its own copy goes straight into memory"
        );
        assert_eq!((n.count, n.bytes, n.next_seq), (1, 10, 5));
    }

    #[test]
    fn no_page_is_read_while_too_many_removals_wait_for_their_commit() {
        let mut c = InboxCursor::restored(InboxSummary {
            count: 10_000,
            bytes: 100_000,
            last_seq: 10_000,
        });
        assert!(c.page((0, 0)).is_some());
        c.removing = MAX_REMOVING;
        assert_eq!(c.page((0, 0)), None, "the client waits for the store");
        c.removing = MAX_REMOVING - 1;
        assert!(c.page((0, 0)).is_some());
    }

    fn r(seq: u64) -> InboxRef {
        InboxRef { seq, size: 10 }
    }

    #[test]
    fn a_full_quota_is_logged_once_until_a_copy_is_stored_again() {
        let mut c = InboxCursor::new();
        assert!(c.refused());
        assert!(!c.refused());
        c.appended(1, (1, 10), true, (0, 0));
        assert!(c.refused(), "under the quota in between");
    }

    #[test]
    fn a_client_that_attaches_reads_what_was_appended_before_the_session_listened() {
        let mut c = InboxCursor::restored(InboxSummary {
            count: 2,
            bytes: 20,
            last_seq: 2,
        });
        c.caught_up(5);
        assert_eq!((c.committed_upto, c.next_seq), (5, 6));
        assert_eq!(c.page((0, 0)).map(|p| (p.after, p.upto)), Some((0, 5)));
        c.caught_up(3);
        assert_eq!(c.committed_upto, 5, "never back");
    }

    #[test]
    fn committed_copies_go_to_memory_only_in_order_online_and_with_room() {
        let mut c = InboxCursor::new();
        let counts = (1, 10);
        assert!(c.appended(1, counts, true, (0, 0)));
        assert!(
            !c.appended(2, counts, false, (1, 10)),
            "offline: the store keeps it"
        );
        assert!(
            !c.appended(3, counts, true, (1, 10)),
            "2 is not loaded: 3 waits for a page"
        );
        assert_eq!((c.loaded_upto, c.committed_upto), (1, 3));
        let page = c.page((1, 10)).unwrap();
        assert_eq!(
            page,
            Page {
                after: 1,
                upto: 3,
                max: READ_AHEAD - 1,
                max_bytes: READ_AHEAD_BYTES - 10
            }
        );
        c.paged(page, Some(3), true);
        assert_eq!(c.loaded_upto, 3);
        assert!(c.page((3, 30)).is_none(), "everything committed is loaded");
        assert!(!c.appended(4, counts, true, (READ_AHEAD, 0)), "no room");
        // A page that stopped at a bound resumes after its last copy.
        let page = c.page((10, 100)).unwrap();
        c.paged(page, None, false);
        assert_eq!(c.loaded_upto, 3);
        assert!(
            c.page((READ_AHEAD / 2 + 1, 0)).is_none(),
            "more than half full"
        );
    }

    #[test]
    fn a_restored_inbox_is_read_from_its_start_and_a_dropped_read_ahead_is_read_again() {
        let mut c = InboxCursor::restored(InboxSummary {
            count: 1_000_000,
            bytes: 64_000_000,
            last_seq: 1_000_000,
        });
        assert_eq!(
            (c.next_seq, c.loaded_upto, c.committed_upto),
            (1_000_001, 0, 1_000_000)
        );
        let page = c.page((0, 0)).unwrap();
        assert_eq!(
            (page.after, page.upto, page.max),
            (0, 1_000_000, READ_AHEAD)
        );
        c.paged(page, Some(256), false);
        assert_eq!(c.loaded_upto, 256);
        // The client left with 200..=256 queued in memory: they are read again next time.
        c.forget_from(Some(200));
        assert_eq!(c.loaded_upto, 199);
        c.forget_from(None);
        assert_eq!(c.loaded_upto, 199);
    }
}
