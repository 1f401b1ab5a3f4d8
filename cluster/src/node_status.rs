//! What the node actor reports of itself: its status for `Cluster::status`.

use super::NodeState;
use crate::NodeStatus;
use raft::StateRole;

impl NodeState {
    pub(super) fn status(&self) -> NodeStatus {
        let raft = &self.a.raw.raft;
        let cs = self.a.raw.store().conf_state();
        let peers = if raft.state == StateRole::Leader {
            let mut p: Vec<(u64, u64)> = raft
                .prs()
                .iter()
                .map(|(id, pr)| (*id, pr.matched))
                .collect();
            p.sort_unstable();
            p
        } else {
            Vec::new()
        };
        NodeStatus {
            id: raft.id,
            role: format!("{:?}", raft.state),
            term: raft.term,
            leader: raft.leader_id,
            commit: raft.raft_log.committed,
            applied: raft.raft_log.applied,
            first_index: raft::Storage::first_index(self.a.raw.store()).unwrap_or(0),
            last_index: raft::Storage::last_index(self.a.raw.store()).unwrap_or(0),
            voters: sorted(&cs.voters),
            learners: sorted(&cs.learners),
            peers,
            silent_ms: cs
                .voters
                .iter()
                .chain(&cs.learners)
                .filter(|v| **v != raft.id)
                .map(|v| {
                    let ms = self
                        .last_seen
                        .get(v)
                        .map_or(u64::MAX, |t| t.elapsed().as_millis() as u64);
                    (*v, ms)
                })
                .collect(),
        }
    }
}

fn sorted(ids: &[u64]) -> Vec<u64> {
    let mut v = ids.to_vec();
    v.sort_unstable();
    v
}
