//! The store's metrics (prefix `cicada_raft_` / `cicada_peer_`), registered in the registry the caller gives.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

#[derive(Clone)]
pub struct Metrics {
    pub term: IntGauge,
    pub role: IntGauge,
    pub leader: IntGauge,
    pub leader_changes: IntCounter,
    pub proposals: IntCounter,
    pub proposal_entries: IntCounter,
    pub proposals_failed: IntCounter,
    pub proposal_latency: Histogram,
    pub commit_index: IntGauge,
    pub applied_index: IntGauge,
    pub applied_commands: IntCounter,
    pub apply_lag: IntGauge,
    pub log_entries: IntGauge,
    pub snapshots_sent: IntCounter,
    pub snapshots_applied: IntCounter,
    pub snapshots_failed: IntCounter,
    pub snapshot_bytes_sent: IntCounter,
    pub snapshot_bytes_received: IntCounter,
    pub compactions: IntCounter,
    pub syncs: IntCounter,
    pub peer_up: IntGaugeVec,
    pub peer_bytes_sent: IntCounterVec,
    pub peer_dropped: IntCounterVec,
    pub peer_refused: IntCounterVec,
    pub peer_link_down: IntCounterVec,
    pub peer_frames_lost: IntCounterVec,
}

fn reg<M: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: M) -> M {
    // A second store in one process (tests) registers again: keep the metric working, unregistered.
    let _ = r.register(Box::new(m.clone()));
    m
}

impl Metrics {
    pub fn new(r: &Registry) -> Metrics {
        let g = |n: &str, h: &str| reg(r, IntGauge::new(n, h).expect("valid metric"));
        let c = |n: &str, h: &str| reg(r, IntCounter::new(n, h).expect("valid metric"));
        let peer = |n: &str, h: &str| {
            reg(
                r,
                IntCounterVec::new(Opts::new(n, h), &["peer"]).expect("valid metric"),
            )
        };
        Metrics {
            term: g("cicada_raft_term", "Current raft term."),
            role: g(
                "cicada_raft_role",
                "Raft role: 0 follower, 1 candidate, 2 leader, 3 pre-candidate.",
            ),
            leader: g(
                "cicada_raft_leader",
                "Node id of the known leader (0: none).",
            ),
            leader_changes: c(
                "cicada_raft_leader_changes_total",
                "Times the known leader changed.",
            ),
            proposals: c(
                "cicada_raft_proposals_total",
                "Commands proposed through this node.",
            ),
            proposal_entries: c(
                "cicada_raft_proposal_entries_total",
                "Raft entries proposed (each carries a batch of commands).",
            ),
            proposals_failed: c(
                "cicada_raft_proposals_failed_total",
                "Proposals refused (no leader) or timed out.",
            ),
            proposal_latency: reg(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "cicada_raft_proposal_seconds",
                        "From propose to applied result on this node.",
                    )
                    .buckets(vec![
                        0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                    ]),
                )
                .expect("valid metric"),
            ),
            commit_index: g(
                "cicada_raft_commit_index",
                "Highest committed log index known to this node.",
            ),
            applied_index: g(
                "cicada_raft_applied_index",
                "Highest log index applied to the state machine.",
            ),
            applied_commands: c(
                "cicada_raft_applied_commands_total",
                "Commands applied to the state machine on this node.",
            ),
            apply_lag: g(
                "cicada_raft_apply_lag",
                "Committed entries not yet applied.",
            ),
            log_entries: g(
                "cicada_raft_log_entries",
                "Entries in the local raft log (since the last compaction).",
            ),
            snapshots_sent: c(
                "cicada_raft_snapshots_sent_total",
                "Snapshots built for lagging followers.",
            ),
            snapshots_applied: c(
                "cicada_raft_snapshots_applied_total",
                "Snapshots installed on this node.",
            ),
            snapshots_failed: c(
                "cicada_raft_snapshots_failed_total",
                "Snapshot streams to a follower that did not complete (link down, refused, cancelled).",
            ),
            snapshot_bytes_sent: c(
                "cicada_raft_snapshot_bytes_sent_total",
                "Snapshot data streamed to followers.",
            ),
            snapshot_bytes_received: c(
                "cicada_raft_snapshot_bytes_received_total",
                "Snapshot data received and restored.",
            ),
            syncs: c(
                "cicada_raft_syncs_total",
                "Flushes of the raft log and state to disk (fsync).",
            ),
            compactions: c("cicada_raft_log_compactions_total", "Log compactions."),
            peer_up: reg(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "cicada_peer_link_up",
                        "1 while the link to a peer is up (lane: raft or app).",
                    ),
                    &["peer", "lane"],
                )
                .expect("valid metric"),
            ),
            peer_bytes_sent: reg(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "cicada_peer_bytes_sent_total",
                        "Bytes written to a peer link (lane: raft or app).",
                    ),
                    &["peer", "lane"],
                )
                .expect("valid metric"),
            ),
            peer_dropped: peer(
                "cicada_peer_messages_dropped_total",
                "Raft messages dropped because a peer's queue was full or it was unknown.",
            ),
            peer_refused: reg(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "cicada_peer_refused_total",
                        "Peer connections refused in the handshake (reason: cluster, node, auth, malformed, timeout).",
                    ),
                    &["reason"],
                )
                .expect("valid metric"),
            ),
            peer_frames_lost: reg(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "cicada_peer_frames_lost_total",
                        "Frames in a write a link failure cut short (they may not have reached the peer).",
                    ),
                    &["peer", "lane"],
                )
                .expect("valid metric"),
            ),
            peer_link_down: reg(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "cicada_peer_link_down_total",
                        "Peer links that went down (reason: timeout = silent for peer_timeout, closed, error).",
                    ),
                    &["peer", "lane", "reason"],
                )
                .expect("valid metric"),
            ),
        }
    }
}
