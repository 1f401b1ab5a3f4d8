//! What the node actor reports of itself: its status for `Cluster::status`, and its standing for the
//! freshness of its applied state ([`crate::contact`]).

use super::NodeState;
use crate::contact::Standing;
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

    /// This node's contact with the cluster now, for [`crate::contact::Contact`]: a leader needs a quorum
    /// of voters heard from within the window, a follower its leader and nothing committed left to apply.
    pub(super) fn standing(&self) -> Standing {
        let raft = &self.a.raw.raft;
        let window = self.a.contact_window;
        let heard = |id: &u64| {
            self.last_seen
                .get(id)
                .is_some_and(|t| t.elapsed() <= window)
        };
        match raft.state {
            StateRole::Leader => {
                let voters = &self.a.raw.store().conf_state().voters;
                let recent = voters.iter().filter(|v| **v == raft.id || heard(v)).count();
                if recent * 2 > voters.len() {
                    Standing::LeaderWithQuorum
                } else {
                    Standing::Unsure
                }
            }
            StateRole::Follower
                if raft.leader_id != 0
                    && heard(&raft.leader_id)
                    && raft.raft_log.applied >= raft.raft_log.committed =>
            {
                Standing::FollowerCaughtUp
            }
            _ => Standing::Unsure,
        }
    }
}

fn sorted(ids: &[u64]) -> Vec<u64> {
    let mut v = ids.to_vec();
    v.sort_unstable();
    v
}
