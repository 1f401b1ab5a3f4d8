//! Where a published message goes beyond this node, as a pure decision: one frame per other node with a
//! plain route that matches, and each shared group that matches to exactly one node with members (this
//! node included), in turn, so a group's members share its messages wherever they are connected.

use super::table::RemoteMatch;
use std::collections::{BTreeMap, HashMap, HashSet};

/// A shared group a frame asks its node to deliver to: (plain filter, group).
pub type GroupRef = (Box<str>, Box<str>);

/// Each group's turn (which node gets its next message): kept by a shard across messages.
#[derive(Default)]
pub struct GroupTurns {
    next: HashMap<GroupRef, usize>,
}

impl GroupTurns {
    /// The next of `candidates` (sorted) for the group, or `None` when there is none.
    fn pick(&mut self, filter: &str, group: &str, candidates: &[u64]) -> Option<u64> {
        if candidates.is_empty() {
            return None;
        }
        let turn = self.next.entry((filter.into(), group.into())).or_insert(0);
        let node = candidates[*turn % candidates.len()];
        *turn = turn.wrapping_add(1);
        Some(node)
    }

    /// Forgets the turns (they only spread load): bounds memory when groups come and go.
    pub fn trim(&mut self, max: usize) {
        if self.next.len() > max {
            self.next.clear();
        }
    }
}

/// The decision for one message, built while the local table routes it.
pub struct Planner<'a> {
    me: u64,
    remote: &'a RemoteMatch,
    turns: &'a mut GroupTurns,
    /// Node → the groups it delivers to; a node present with no groups gets the plain copies only.
    frames: BTreeMap<u64, Vec<GroupRef>>,
    decided: HashSet<(&'a str, &'a str)>,
    /// Groups matched locally (their names, for `decided` lookups of remote groups).
    local: HashSet<GroupRef>,
}

impl<'a> Planner<'a> {
    pub fn new(me: u64, remote: &'a RemoteMatch, turns: &'a mut GroupTurns) -> Planner<'a> {
        let frames = remote.nodes.iter().map(|n| (*n, Vec::new())).collect();
        Planner {
            me,
            remote,
            turns,
            frames,
            decided: HashSet::new(),
            local: HashSet::new(),
        }
    }

    /// A group this node has members of matched: `true` when this node delivers the message to it (else a
    /// frame asks the node whose turn it is).
    pub fn local_group(&mut self, filter: &str, group: &str) -> bool {
        self.local.insert((filter.into(), group.into()));
        let mut candidates: Vec<u64> = self
            .remote
            .groups
            .iter()
            .find(|g| &*g.filter == filter && &*g.group == group)
            .map(|g| g.nodes.clone())
            .unwrap_or_default();
        if !candidates.contains(&self.me) {
            candidates.push(self.me);
            candidates.sort_unstable();
        }
        match self.turns.pick(filter, group, &candidates) {
            Some(n) if n != self.me => {
                self.frames
                    .entry(n)
                    .or_default()
                    .push((filter.into(), group.into()));
                false
            }
            _ => true,
        }
    }

    /// Node → the groups it delivers to, once the local table has routed: groups with no local members go
    /// to one of the other nodes that have some.
    pub fn finish(mut self) -> BTreeMap<u64, Vec<GroupRef>> {
        for g in &self.remote.groups {
            if self.local.contains(&(g.filter.clone(), g.group.clone()))
                || !self.decided.insert((&g.filter, &g.group))
            {
                continue;
            }
            let others: Vec<u64> = g.nodes.iter().copied().filter(|n| *n != self.me).collect();
            if let Some(n) = self.turns.pick(&g.filter, &g.group, &others) {
                self.frames
                    .entry(n)
                    .or_default()
                    .push((g.filter.clone(), g.group.clone()));
            }
        }
        self.frames
    }
}

#[cfg(test)]
mod tests {
    use super::super::table::RemoteRoutes;
    use super::*;

    fn plan(
        t: &RemoteRoutes,
        turns: &mut GroupTurns,
        topic: &str,
        local: &[(&str, &str)],
    ) -> Vec<(u64, Vec<String>)> {
        let m = t.matching(topic);
        let mut p = Planner::new(t.me(), &m, turns);
        let mut taken = Vec::new();
        for (f, g) in local {
            if p.local_group(f, g) {
                taken.push((t.me(), vec![format!("{g}:{f}")]));
            }
        }
        let mut out: Vec<(u64, Vec<String>)> = p
            .finish()
            .into_iter()
            .map(|(n, gs)| (n, gs.iter().map(|(f, g)| format!("{g}:{f}")).collect()))
            .collect();
        out.extend(taken);
        out.sort();
        out
    }

    #[test]
    fn plain_routes_get_one_frame_per_node_and_a_group_goes_round_the_nodes_with_members() {
        let mut t = RemoteRoutes::new(1);
        t.add(2, "jobs/#");
        t.add(3, "jobs/#");
        t.add(3, "jobs/1");
        t.add(1, "$share/w/jobs/+");
        t.add(2, "$share/w/jobs/+");
        let mut turns = GroupTurns::default();
        let local = [("jobs/+", "w")];
        let rounds: Vec<_> = (0..4)
            .map(|_| plan(&t, &mut turns, "jobs/1", &local))
            .collect();
        assert_eq!(
            rounds[0],
            vec![(1, vec!["w:jobs/+".into()]), (2, vec![]), (3, vec![])],
            "node 1's turn: it delivers to the group; nodes 2 and 3 get the plain copy once each"
        );
        assert_eq!(rounds[1], vec![(2, vec!["w:jobs/+".into()]), (3, vec![])]);
        assert_eq!(rounds[2], rounds[0]);
        assert_eq!(rounds[3], rounds[1]);
    }

    #[test]
    fn a_group_without_local_members_goes_to_another_node_in_turn_and_nothing_matched_means_no_frame(
    ) {
        let mut t = RemoteRoutes::new(1);
        t.add(2, "$share/g/a/#");
        t.add(3, "$share/g/a/#");
        // Node 1 is still listed (its route was not removed yet) but has no member now: never picked.
        t.add(1, "$share/g/a/#");
        let mut turns = GroupTurns::default();
        let picks: Vec<_> = (0..4)
            .map(|_| plan(&t, &mut turns, "a/b", &[]))
            .map(|v| v.iter().map(|(n, _)| *n).collect::<Vec<_>>())
            .collect();
        assert_eq!(picks, vec![vec![2], vec![3], vec![2], vec![3]]);
        assert!(plan(&t, &mut turns, "b", &[]).is_empty());
        // A group only this node has (its route not committed yet) stays here.
        let t = RemoteRoutes::new(1);
        assert_eq!(
            plan(&t, &mut turns, "x", &[("x", "solo")]),
            vec![(1, vec!["solo:x".into()])]
        );
        turns.trim(0);
        assert!(turns.next.is_empty());
    }
}
