//! Retained messages on subscribe in a cluster (ARCHITECTURE §5 promise 2, issue 12): this node's retained
//! index may lag the leader's commit — by a few milliseconds on a healthy follower, by seconds after a
//! stall — so a SUBSCRIBE's retained messages are read from it only once a read barrier (raft read index)
//! asked after the SUBSCRIBE has completed, that is once this node has applied everything committed when
//! the SUBSCRIBE was handled. Every time, not only when the node's freshness lease ran out: a fresh node may
//! still lag by less than its lease. A single node reads at once, as before.
//!
//! The SUBACK and the subscription itself do not wait (the subscription is live at once). Live copies that
//! reach the session meanwhile are held behind the retained ones for at most [`HOLD`] (so retained messages
//! on subscribe still come before later live ones), then go ahead: when no barrier completes in that time
//! (no leader: the minority side of a partition, an election) the retained delivery is deferred — never
//! served from state the node cannot vouch for — and the barrier is asked again until one completes while
//! the connection lives. One pending delivery per session: a later SUBSCRIBE merges its filters into it and
//! asks a new barrier (one asked after it); the connection going drops it.

use super::{SessionMsg, SessionState};
use crate::broker::message::Delivery;
use crate::broker::ticket::Ticket;
use crate::protocol::QoS;
use ractor::ActorRef;
use std::time::{Duration, Instant};

/// How long live copies wait behind a pending retained read before they go ahead and the retained read is
/// deferred: a barrier takes a round trip to the leader and the apply up to its index (milliseconds when
/// healthy, longer just after a stall); an election takes about a second.
pub(super) const HOLD: Duration = Duration::from_millis(750);

/// A filter whose retained messages are owed to the client.
#[derive(Debug, Clone)]
pub(super) struct Owed {
    /// As subscribed (the key in the session's subscriptions).
    pub full: String,
    /// The filter the index is matched with.
    pub plain: String,
    /// The subscription's granted QoS and identifier.
    pub qos: QoS,
    pub sub_id: Option<u32>,
}

/// What the barrier task reports about generation `gen` of the session's pending retained read.
pub enum FenceEvent {
    /// The barrier completed: this node's index holds everything committed when it was asked.
    Passed(u64),
    /// No barrier completed within [`HOLD`] (or the store stopped): live copies go ahead.
    Late(u64),
}

/// The session's pending retained read (at most one).
pub(super) struct Pending {
    gen: u64,
    owed: Vec<Owed>,
    /// Live copies held behind the retained ones while `holding`.
    held: Vec<(Delivery, Ticket)>,
    holding: bool,
    /// A deferral was reported (counted once).
    late: bool,
    /// The barrier task, aborted when the read is dropped or replaced.
    task: tokio::task::AbortHandle,
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SessionState {
    /// Whether a SUBSCRIBE's retained messages wait for a read barrier (this node has peers).
    pub(super) fn fences_retained(&self) -> bool {
        self.ctx.store.is_some() && self.ctx.remote.as_ref().is_some_and(|l| l.clustered())
    }

    /// The retained messages matching `plain` in this node's index, as deliveries for a subscription.
    pub(super) fn retained_matching(
        &self,
        plain: &str,
        qos: QoS,
        sub_id: Option<u32>,
        now: Instant,
    ) -> Vec<Delivery> {
        self.ctx
            .retained
            .matching(plain, now)
            .into_iter()
            .map(|m| Delivery {
                qos: m.qos.min(qos),
                // Retained messages sent on subscribe carry RETAIN = 1 [MQTT-3.3.1-9].
                retain: true,
                sub_ids: sub_id.into_iter().collect(),
                shared: None,
                durable: None,
                message: m,
            })
            .collect()
    }

    /// Owes the retained messages of `owed` once a read barrier asked now completes: merged into the pending
    /// read (a filter owed twice keeps its latest options), with a new barrier asked after this SUBSCRIBE.
    pub(super) fn owe_retained(&mut self, me: &ActorRef<SessionMsg>, owed: Vec<Owed>) {
        let Some(store) = self.ctx.store.clone().filter(|_| !owed.is_empty()) else {
            return;
        };
        let (mut all, held) = match self.fence.take() {
            Some(mut p) => (std::mem::take(&mut p.owed), std::mem::take(&mut p.held)),
            None => (Vec::new(), Vec::new()),
        };
        for o in owed {
            all.retain(|a| a.full != o.full);
            all.push(o);
        }
        self.fence_gen += 1;
        let gen = self.fence_gen;
        let me = me.clone();
        let task = tokio::spawn(async move {
            let barrier = store.barrier();
            tokio::pin!(barrier);
            let done = tokio::select! {
                r = &mut barrier => Some(r),
                _ = tokio::time::sleep(HOLD) => None,
            };
            let passed = match done {
                Some(r) => r.is_ok(),
                None => {
                    let _ = me.cast(SessionMsg::Fence(FenceEvent::Late(gen)));
                    barrier.await.is_ok()
                }
            };
            let event = if passed {
                FenceEvent::Passed(gen)
            } else {
                FenceEvent::Late(gen)
            };
            let _ = me.cast(SessionMsg::Fence(event));
        })
        .abort_handle();
        self.fence = Some(Pending {
            gen,
            owed: all,
            held,
            holding: true,
            late: false,
            task,
        });
    }

    /// A live copy for this session: held behind a pending retained read (bounded by the session's queue
    /// limit: past it the held copies go ahead), else delivered.
    pub(super) fn deliver_live(&mut self, d: Delivery, ticket: Ticket) {
        let limit = self.ctx.config.limits.max_queued_messages.max(1);
        match self.fence.as_mut().filter(|p| p.holding) {
            Some(p) if p.held.len() < limit => p.held.push((d, ticket)),
            Some(_) => {
                self.release_held();
                self.deliver(d, &ticket);
            }
            None => self.deliver(d, &ticket),
        }
    }

    /// Stops holding live copies: they go out in the order they came.
    fn release_held(&mut self) {
        let Some(p) = self.fence.as_mut() else {
            return;
        };
        p.holding = false;
        for (d, ticket) in std::mem::take(&mut p.held) {
            self.deliver(d, &ticket);
        }
    }

    /// The barrier task's report.
    pub(super) fn fence_event(&mut self, event: FenceEvent) {
        match event {
            FenceEvent::Late(gen) if self.fence.as_ref().is_some_and(|p| p.gen == gen) => {
                let Some(p) = self.fence.as_mut().filter(|p| !p.late) else {
                    return;
                };
                p.late = true;
                let filters = p.owed.len();
                self.ctx
                    .metrics
                    .retained_reads
                    .with_label_values(&["deferred"])
                    .inc();
                tracing::info!(
                    client_id = %self.client_id,
                    filters,
                    "retained messages on subscribe deferred: no read barrier through the leader yet"
                );
                self.release_held();
            }
            FenceEvent::Passed(gen) if self.fence.as_ref().is_some_and(|p| p.gen == gen) => {
                let Some(mut p) = self.fence.take() else {
                    return;
                };
                if p.late {
                    tracing::debug!(client_id = %self.client_id, "deferred retained messages on subscribe sent");
                } else {
                    self.ctx
                        .metrics
                        .retained_reads
                        .with_label_values(&["fresh"])
                        .inc();
                }
                let now = Instant::now();
                for o in std::mem::take(&mut p.owed) {
                    // Unsubscribed meanwhile: nothing is owed any more.
                    if !self.subs.contains_key(&o.full) {
                        continue;
                    }
                    for d in self.retained_matching(&o.plain, o.qos, o.sub_id, now) {
                        self.deliver(d, &Ticket::default());
                    }
                }
                for (d, ticket) in std::mem::take(&mut p.held) {
                    self.deliver(d, &ticket);
                }
            }
            // A replaced read's barrier.
            FenceEvent::Late(_) | FenceEvent::Passed(_) => {}
        }
    }

    /// The connection went (or another took the session): what it was owed is dropped; live copies held for
    /// it go to the session as any other.
    pub(super) fn drop_fence(&mut self) {
        self.release_held();
        self.fence = None;
    }

    /// An UNSUBSCRIBE: the filter's retained messages are no longer owed.
    pub(super) fn forget_owed(&mut self, full: &str) {
        if let Some(p) = self.fence.as_mut() {
            p.owed.retain(|o| o.full != full);
        }
    }
}
