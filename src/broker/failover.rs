//! What the cluster does for the clients of a node that died: the raft leader, which hears from every
//! follower each heartbeat, counts a node silent for `failure_detection_ms` as down; then each Will that
//! node's connections had recorded fires (once: apply removes the record) after its Will Delay, and each
//! session it owned ends once its expiry ran out. A node that comes back fires the Wills it still has
//! recorded itself (the connections they belonged to died with its previous process).
//!
//! [`Failover`] is the pure decision, from the leader's view of its peers and the recorded state, with an
//! injected clock; [`run`] executes it.

use crate::store::{OwnerRecord, SessionRecord, Store, WillRecord};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The failure detector and its decisions.
#[derive(Debug)]
pub struct Failover {
    threshold: Duration,
    /// Nodes counted as down.
    down: HashMap<u64, Down>,
    /// Since when this node leads (as observed): a new leader has not heard from followers before, so their
    /// silence counts from here.
    leading_since: Option<Instant>,
}

/// A node counted as down.
#[derive(Debug, Clone, Copy)]
struct Down {
    /// When it was last heard from (for a node that left: when this leader learned it left).
    last: Instant,
    /// It left the cluster (`cicada ctl leave`): gone for good, no detection delay.
    departed: bool,
}

impl Down {
    /// The earliest a Will or an expiry of this node may be acted on.
    fn after(&self, threshold: Duration, wait: Duration) -> Instant {
        if self.departed {
            self.last + wait
        } else {
            self.last + wait.max(threshold)
        }
    }
}

/// A session of a down node whose expiry ran out.
#[derive(Debug, PartialEq, Eq)]
pub struct Expired {
    pub client_id: String,
    pub incarnation: u64,
}

impl Failover {
    pub fn new(threshold: Duration) -> Failover {
        Failover {
            threshold,
            down: HashMap::new(),
            leading_since: None,
        }
    }

    /// The leader's view at `now`: (node, milliseconds since last heard), and the nodes that left the
    /// cluster. Returns the nodes that went down now (for the log). Not the leader (`silent` is `None`):
    /// nobody is counted down here.
    pub fn observe(
        &mut self,
        now: Instant,
        silent: Option<&[(u64, u64)]>,
        departed: &[u64],
    ) -> Vec<u64> {
        let Some(silent) = silent else {
            self.down.clear();
            self.leading_since = None;
            return Vec::new();
        };
        let leading_since = *self.leading_since.get_or_insert(now);
        let leading = now.saturating_duration_since(leading_since);
        let mut went_down = Vec::new();
        let mut down = HashMap::new();
        for &node in departed {
            let d = match self.down.get(&node) {
                Some(d) if d.departed => *d,
                _ => Down {
                    last: now,
                    departed: true,
                },
            };
            if !self.down.contains_key(&node) {
                went_down.push(node);
            }
            down.insert(node, d);
        }
        for &(node, ms) in silent {
            if departed.contains(&node) {
                continue;
            }
            let ms = Duration::from_millis(ms).min(leading);
            if ms < self.threshold {
                continue;
            }
            let last = now.checked_sub(ms).unwrap_or(leading_since);
            let d = self.down.get(&node).copied().unwrap_or(Down {
                last,
                departed: false,
            });
            if !self.down.contains_key(&node) {
                went_down.push(node);
            }
            down.insert(node, d);
        }
        self.down = down;
        went_down
    }

    pub fn any_down(&self) -> bool {
        !self.down.is_empty()
    }

    /// The recorded Wills to fire now: their node is down, and the smaller of their Will Delay and their
    /// session's expiry has passed since it was last heard (never before it counts as down).
    pub fn wills_due(&self, now: Instant, wills: &[(String, WillRecord)]) -> Vec<(String, u64)> {
        wills
            .iter()
            .filter(|(_, w)| {
                self.down.get(&w.node).is_some_and(|d| {
                    let wait = Duration::from_secs(u64::from(w.delay.min(w.expiry)));
                    now >= d.after(self.threshold, wait)
                })
            })
            .map(|(c, w)| (c.clone(), w.node))
            .collect()
    }

    /// The offline sessions owned by a down node whose expiry ran out (counted from when they went offline,
    /// unix seconds in the record). A session that was online when its node went silent is left alone: the
    /// node may only be cut off with its client still connected; it expires once its client resumes it
    /// elsewhere and leaves, or once its node is back.
    pub fn sessions_due(
        &self,
        now: Instant,
        unix_now: u64,
        sessions: &[(String, SessionRecord, Option<OwnerRecord>)],
    ) -> Vec<Expired> {
        sessions
            .iter()
            .filter(|(_, r, owner)| {
                let Some(d) = owner.and_then(|o| self.down.get(&o.node)) else {
                    return false;
                };
                if r.expiry == u32::MAX || r.offline_since == 0 {
                    return false;
                }
                // Never before the node counts as down.
                now >= d.after(self.threshold, Duration::ZERO)
                    && unix_now >= r.offline_since.saturating_add(u64::from(r.expiry))
            })
            .map(|(c, r, _)| Expired {
                client_id: c.clone(),
                incarnation: r.incarnation,
            })
            .collect()
    }
}

/// How often the leader scans the recorded Wills, and the sessions, while a node is down: both scans read
/// every record of the cluster (a node may stay down, or have left, for good).
const WILL_SCAN: Duration = Duration::from_secs(1);
const SESSION_SCAN: Duration = Duration::from_secs(5);

/// Runs the failure detector on this node until shutdown: every 250 ms while it leads, it checks its
/// peers; while a node is down it fires what is due (Wills scanned every second, sessions every 5 s, and
/// at once when another node goes down).
pub async fn run(ctx: Arc<super::Context>, store: Arc<Store>, threshold: Duration) {
    let mut failover = Failover::new(threshold);
    let (mut wills_scanned, mut sessions_scanned): (Option<Instant>, Option<Instant>) =
        (None, None);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let leading = store.cluster().leader() == store.node_id();
        let status = if leading {
            store.status().await.ok()
        } else {
            None
        };
        let departed = if leading {
            store.departed()
        } else {
            Vec::new()
        };
        let now = Instant::now();
        let silent = status.as_ref().map(|s| s.silent_ms.as_slice());
        for node in failover.observe(now, silent, &departed) {
            tracing::warn!(node, after_ms = threshold.as_millis() as u64, "node counted as down: the cluster fires its connections' Wills and expires its sessions");
            (wills_scanned, sessions_scanned) = (None, None);
        }
        if !failover.any_down() {
            continue;
        }
        let due = |last: Option<Instant>, every: Duration| last.is_none_or(|t| now >= t + every);
        // Each proposal is awaited: once applied, what it handled is gone from the next scan.
        let quota = ctx.config.limits.stored_quota();
        if due(wills_scanned, WILL_SCAN) {
            wills_scanned = Some(now);
            for (client_id, node) in failover.wills_due(now, &store.wills()) {
                fire(&ctx, &store, &client_id, node, quota).await;
            }
        }
        if !due(sessions_scanned, SESSION_SCAN) {
            continue;
        }
        sessions_scanned = Some(now);
        let sessions: Vec<_> = store
            .sessions()
            .into_iter()
            .map(|(c, r)| {
                let owner = store.owner(&c);
                (c, r, owner)
            })
            .collect();
        for e in failover.sessions_due(now, crate::store::unix_now(), &sessions) {
            match store.delete_session(&e.client_id, e.incarnation).await {
                Ok(true) => {
                    ctx.metrics.sessions_expired_by_cluster.inc();
                    tracing::info!(client_id = %e.client_id, "session of a down node expired");
                }
                Ok(false) => {}
                Err(err) => {
                    tracing::warn!(client_id = %e.client_id, error = %err, "expiring a down node's session failed");
                }
            }
        }
    }
}

async fn fire(ctx: &super::Context, store: &Store, client_id: &str, node: u64, quota: (u64, u64)) {
    match store.fire_will(client_id, node, quota).await {
        Ok(Some(_)) => {
            ctx.metrics.wills_fired_by_cluster.inc();
            tracing::info!(
                client_id,
                node,
                "Will of a connection on a down node published"
            );
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(client_id, error = %e, "firing a Will failed"),
    }
}

/// Fires the Wills this node recorded before it (re)started: their connections are gone. Called before
/// the listeners open (a Will recorded after would be a live connection's).
pub async fn fire_own_wills(ctx: &super::Context, store: &Store) {
    let me = store.node_id();
    let quota = ctx.config.limits.stored_quota();
    for (client_id, w) in store.wills() {
        if w.node == me {
            fire(ctx, store, &client_id, me, quota).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn will(node: u64, delay: u32, expiry: u32) -> WillRecord {
        WillRecord {
            node,
            conn: 1,
            delay,
            expiry,
            message_expiry: None,
        }
    }

    #[test]
    fn a_node_counts_as_down_only_past_the_threshold_and_only_on_the_leader() {
        let t0 = Instant::now() + Duration::from_secs(100);
        let secs = Duration::from_secs;
        let mut f = Failover::new(secs(5));
        // A new leader has heard from nobody yet: silence counts from when it began to lead.
        assert!(f
            .observe(t0 - secs(10), Some(&[(2, u64::MAX)]), &[])
            .is_empty());
        assert!(f
            .observe(t0 - secs(6), Some(&[(2, 3_600_000)]), &[])
            .is_empty());
        assert_eq!(
            f.observe(t0 - secs(5), Some(&[(2, u64::MAX)]), &[]),
            vec![2]
        );
        f.observe(t0, None, &[]);
        assert!(!f.any_down(), "a follower decides nothing");
        // Leading for a while.
        f.observe(t0 - secs(20), Some(&[]), &[]);
        assert!(f.observe(t0, Some(&[(2, 4_999), (3, 100)]), &[]).is_empty());
        assert!(!f.any_down());
        assert_eq!(f.observe(t0, Some(&[(2, 5_000), (3, 100)]), &[]), vec![2]);
        assert!(
            f.observe(t0 + secs(1), Some(&[(2, 6_000)]), &[]).is_empty(),
            "reported once"
        );
        assert!(f.any_down());
        // Heard again: up.
        f.observe(t0 + secs(2), Some(&[(2, 10)]), &[]);
        assert!(!f.any_down());
    }

    #[test]
    fn a_node_that_left_is_down_at_once_even_if_raft_still_hears_it() {
        let t0 = Instant::now() + Duration::from_secs(100);
        let mut f = Failover::new(Duration::from_secs(600));
        // A new leader: silence would count only after the (long) threshold, departure counts now.
        let mut down = f.observe(t0, Some(&[(2, 10), (3, 20)]), &[3, 4]);
        down.sort();
        assert_eq!(down, [3, 4]);
        assert!(
            f.observe(
                t0 + Duration::from_secs(1),
                Some(&[(2, 10), (3, 20)]),
                &[3, 4]
            )
            .is_empty(),
            "reported once"
        );
        let wills = vec![
            ("gone".to_string(), will(4, 0, 0)),
            ("gone-later".to_string(), will(3, 30, 600)),
            ("alive".to_string(), will(2, 0, 0)),
        ];
        let due = |at: Instant| -> Vec<String> {
            f.wills_due(at, &wills)
                .into_iter()
                .map(|(c, _)| c)
                .collect()
        };
        assert_eq!(due(t0 + Duration::from_secs(1)), ["gone"]);
        assert_eq!(due(t0 + Duration::from_secs(30)), ["gone", "gone-later"]);
        // Its offline sessions expire without the detection delay; its online ones went offline when it left.
        let owner = Some(OwnerRecord {
            node: 4,
            epoch: 1,
            token: 0,
        });
        let rec = SessionRecord {
            incarnation: 1,
            creator: 0,
            expiry: 60,
            offline_since: 1_000,
            subscriptions: Vec::new(),
        };
        let sessions = vec![("s".to_string(), rec, owner)];
        assert_eq!(f.sessions_due(t0, 1_059, &sessions), []);
        assert_eq!(f.sessions_due(t0, 1_060, &sessions).len(), 1);
        // Joined again: no longer down.
        f.observe(t0 + Duration::from_secs(31), Some(&[(4, 10)]), &[]);
        assert!(f.wills_due(t0 + Duration::from_secs(31), &wills).is_empty());
    }

    #[test]
    fn wills_fire_after_the_detection_and_their_delay_bounded_by_the_session_expiry() {
        let t0 = Instant::now() + Duration::from_secs(100);
        let mut f = Failover::new(Duration::from_secs(5));
        f.observe(t0 - Duration::from_secs(60), Some(&[]), &[]);
        // Node 2 last heard at t0 - 5 s.
        f.observe(t0, Some(&[(2, 5_000)]), &[]);
        let wills = vec![
            ("no-delay".to_string(), will(2, 0, 0)),
            ("delay-30".to_string(), will(2, 30, 600)),
            ("delay-30-expiry-10".to_string(), will(2, 30, 10)),
            ("elsewhere".to_string(), will(3, 0, 0)),
        ];
        let due = |at: Instant| -> Vec<String> {
            f.wills_due(at, &wills)
                .into_iter()
                .map(|(c, _)| c)
                .collect()
        };
        assert_eq!(due(t0), ["no-delay"]);
        assert_eq!(
            due(t0 + Duration::from_secs(5)),
            ["no-delay", "delay-30-expiry-10"]
        );
        assert_eq!(
            due(t0 + Duration::from_secs(25)),
            ["no-delay", "delay-30", "delay-30-expiry-10"]
        );
    }

    #[test]
    fn a_down_nodes_offline_sessions_expire_and_its_online_ones_wait_for_their_client_or_node() {
        let t0 = Instant::now() + Duration::from_secs(100);
        let mut f = Failover::new(Duration::from_secs(5));
        f.observe(t0 - Duration::from_secs(60), Some(&[]), &[]);
        f.observe(t0, Some(&[(2, 5_000)]), &[]);
        let owner = |node| {
            Some(OwnerRecord {
                node,
                epoch: 1,
                token: 0,
            })
        };
        let rec = |expiry, offline_since| SessionRecord {
            incarnation: 7,
            creator: 0,
            expiry,
            offline_since,
            subscriptions: Vec::new(),
        };
        let sessions = vec![
            ("online-60".to_string(), rec(60, 0), owner(2)),
            ("offline-long-ago".to_string(), rec(60, 1_000), owner(2)),
            ("never".to_string(), rec(u32::MAX, 0), owner(2)),
            ("other-node".to_string(), rec(1, 1_000), owner(3)),
            ("no-owner".to_string(), rec(1, 1_000), None),
        ];
        let due = |at: Instant| -> Vec<String> {
            f.sessions_due(at, 1_100, &sessions)
                .into_iter()
                .map(|e| e.client_id)
                .collect()
        };
        assert_eq!(due(t0), ["offline-long-ago"]);
        assert_eq!(
            due(t0 + Duration::from_secs(3_600)),
            ["offline-long-ago"],
            "an online session of a silent node may still have its client"
        );
    }
}
