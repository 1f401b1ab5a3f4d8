//! Draining a cluster node (SIGTERM or `cicada ctl drain`): `/ready` turns 503 first (the broker's
//! `draining` flag), a leader hands raft leadership to another voter so the cluster does not wait for an
//! election, then clients are disconnected (MQTT 5: 0x8B Server shutting down) and the store is flushed.

use crate::store::Store;
use std::time::Duration;

/// How long a leader waits for another node to take leadership before it stops anyway.
const HANDOVER_WAIT: Duration = Duration::from_secs(3);

/// If this node leads, hands leadership to the voter most up to date (by the leader's view of their logs)
/// and waits until it took over (bounded).
pub async fn hand_leadership_over(store: &Store) {
    let Ok(status) = store.status().await else {
        return;
    };
    if status.leader != status.id {
        return;
    }
    let Some(&(to, matched)) = status
        .peers
        .iter()
        .filter(|(n, _)| *n != status.id && status.voters.contains(n))
        .max_by_key(|(n, m)| (*m, std::cmp::Reverse(*n)))
    else {
        return;
    };
    tracing::info!(to, matched, "draining: handing raft leadership over");
    let deadline = tokio::time::Instant::now() + HANDOVER_WAIT;
    let mut asked = tokio::time::Instant::now();
    store.cluster().transfer_leader(to);
    while tokio::time::Instant::now() < deadline {
        let leader = store.cluster().leader();
        if leader != 0 && leader != status.id {
            tracing::info!(leader, "draining: leadership handed over");
            return;
        }
        // Raft drops a transfer that did not complete within an election timeout: ask again.
        if asked.elapsed() > Duration::from_millis(500) {
            store.cluster().transfer_leader(to);
            asked = tokio::time::Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::warn!(
        to,
        "draining: leadership was not taken over in time; stopping anyway"
    );
}
