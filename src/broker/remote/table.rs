//! The cluster's routing table as a pure structure: which nodes have subscribers for which filter (a route
//! per filter and node, not per client; ARCHITECTURE.md section 4). Every node holds the same table: apply
//! changes it in log order, from the `AddRoute` / `RemoveRoute` commands each node proposes for its own
//! filters. Shared subscriptions are routes of their own, per group, so a group's members may be on many
//! nodes and each message still goes to one of them.

use crate::broker::trie::Trie;
use crate::protocol::topic;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

struct Entry {
    /// The filter this entry sits at (a match reports it with the groups).
    filter: Box<str>,
    /// Nodes with a plain subscription to the filter.
    nodes: BTreeSet<u64>,
    /// Nodes with members of each shared group on the filter.
    groups: BTreeMap<Box<str>, BTreeSet<u64>>,
}

impl Entry {
    fn is_empty(&self) -> bool {
        self.nodes.is_empty() && self.groups.is_empty()
    }
}

/// A shared group some node has members of, as a match reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMatch {
    pub filter: Box<str>,
    pub group: Box<str>,
    /// Nodes with members (this node included when it has some).
    pub nodes: Vec<u64>,
}

/// What a topic matches in the table.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RemoteMatch {
    /// Other nodes with a plain subscription matching the topic.
    pub nodes: BTreeSet<u64>,
    pub groups: Vec<GroupMatch>,
}

/// The replicated routing table, and this node's id (whose own routes need no forwarding).
pub struct RemoteRoutes {
    me: u64,
    trie: Trie<Entry>,
    /// Each node's filters as written (`$share/g/f` included): what reconciliation compares.
    by_node: HashMap<u64, BTreeSet<String>>,
    /// How many routes other nodes have, shared with publishers that read it without the table's lock.
    counts: Arc<RouteCounts>,
}

/// Routes of other nodes, counted as the table changes (under its write lock): while there are none a
/// publish need not take the table's lock at all.
#[derive(Default)]
pub struct RouteCounts {
    others: AtomicUsize,
    /// Of them, shared groups' routes.
    other_groups: AtomicUsize,
}

impl RouteCounts {
    /// Whether any other node has a route.
    pub fn has_others(&self) -> bool {
        self.others.load(Ordering::Relaxed) > 0
    }

    /// Whether any other node has members of a shared group.
    pub fn has_other_groups(&self) -> bool {
        self.other_groups.load(Ordering::Relaxed) > 0
    }
}

/// Splits a route's filter into (group, plain filter).
fn split(full: &str) -> (Option<&str>, &str) {
    match topic::parse_shared(full) {
        Some(Ok(s)) => (Some(s.group), s.filter),
        _ => (None, full),
    }
}

impl RemoteRoutes {
    pub fn new(me: u64) -> RemoteRoutes {
        RemoteRoutes {
            me,
            trie: Trie::default(),
            by_node: HashMap::new(),
            counts: Arc::default(),
        }
    }

    /// The counts of other nodes' routes, readable without the table's lock (they follow every change).
    pub fn counts(&self) -> Arc<RouteCounts> {
        self.counts.clone()
    }

    pub fn me(&self) -> u64 {
        self.me
    }

    /// Whether any other node has a route (else publishing need not look).
    pub fn has_others(&self) -> bool {
        self.counts.has_others()
    }

    /// Whether any other node has members of a shared group.
    pub fn has_other_groups(&self) -> bool {
        self.counts.has_other_groups()
    }

    /// Node `node` has subscribers for `full` (`$share/g/f` for a group's members). Idempotent.
    pub fn add(&mut self, node: u64, full: &str) {
        if !self
            .by_node
            .entry(node)
            .or_default()
            .insert(full.to_string())
        {
            return;
        }
        let (group, filter) = split(full);
        if node != self.me {
            self.counts.others.fetch_add(1, Ordering::Relaxed);
            if group.is_some() {
                self.counts.other_groups.fetch_add(1, Ordering::Relaxed);
            }
        }
        let entry = self.trie.entry(filter, || Entry {
            filter: filter.into(),
            nodes: BTreeSet::new(),
            groups: BTreeMap::new(),
        });
        match group {
            None => {
                entry.nodes.insert(node);
            }
            Some(g) => {
                entry.groups.entry(g.into()).or_default().insert(node);
            }
        }
    }

    /// Node `node` has no subscriber for `full` any more. Idempotent.
    pub fn remove(&mut self, node: u64, full: &str) {
        let Some(set) = self.by_node.get_mut(&node) else {
            return;
        };
        if !set.remove(full) {
            return;
        }
        if set.is_empty() {
            self.by_node.remove(&node);
        }
        let (group, filter) = split(full);
        if node != self.me {
            self.counts.others.fetch_sub(1, Ordering::Relaxed);
            if group.is_some() {
                self.counts.other_groups.fetch_sub(1, Ordering::Relaxed);
            }
        }
        if let Some(entry) = self.trie.get_mut(filter) {
            match group {
                None => {
                    entry.nodes.remove(&node);
                }
                Some(g) => {
                    if let Some(nodes) = entry.groups.get_mut(g) {
                        nodes.remove(&node);
                        if nodes.is_empty() {
                            entry.groups.remove(g);
                        }
                    }
                }
            }
        }
        self.trie.remove_if(filter, Entry::is_empty);
    }

    /// Forgets every route (a snapshot replaced the state: the table is rebuilt from it).
    /// The counts publishers read without the lock are left as they were (at least what they were): a
    /// publisher that reads them while the table is rebuilt takes the lock and waits for the rebuilt table,
    /// rather than seeing no routes at all. [`RemoteRoutes::recount`] sets them once it is rebuilt.
    pub fn clear(&mut self) {
        let counts = self.counts.clone();
        *self = RemoteRoutes {
            counts,
            ..RemoteRoutes::new(self.me)
        };
    }

    /// Sets the counts from the routes (after a rebuild: see [`RemoteRoutes::clear`]).
    pub fn recount(&mut self) {
        let (mut others, mut groups) = (0, 0);
        for (node, filters) in &self.by_node {
            if *node != self.me {
                others += filters.len();
                groups += filters.iter().filter(|f| split(f).0.is_some()).count();
            }
        }
        self.counts.others.store(others, Ordering::Relaxed);
        self.counts.other_groups.store(groups, Ordering::Relaxed);
    }

    /// A node's filters.
    pub fn of(&self, node: u64) -> BTreeSet<String> {
        self.by_node.get(&node).cloned().unwrap_or_default()
    }

    /// Nodes with at least one route, and how many each has.
    pub fn nodes(&self) -> BTreeMap<u64, usize> {
        self.by_node.iter().map(|(n, s)| (*n, s.len())).collect()
    }

    /// Where a message on `topic` must go besides this node's own subscribers.
    pub fn matching(&self, topic_name: &str) -> RemoteMatch {
        let mut out = RemoteMatch::default();
        self.trie.for_each_match(topic_name, |e| {
            out.nodes.extend(e.nodes.iter().filter(|n| **n != self.me));
            for (group, nodes) in &e.groups {
                out.groups.push(GroupMatch {
                    filter: e.filter.clone(),
                    group: group.clone(),
                    nodes: nodes.iter().copied().collect(),
                });
            }
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counts_publishers_read_without_the_lock_follow_adds_removes_and_a_clear() {
        let mut t = RemoteRoutes::new(1);
        let counts = t.counts();
        t.add(1, "$share/g/a");
        assert!(
            !counts.has_others(),
            "this node's own routes are not counted"
        );
        t.add(2, "a/#");
        t.add(2, "a/#");
        assert!(counts.has_others() && !counts.has_other_groups());
        t.add(3, "$share/g/a");
        assert!(counts.has_other_groups());
        t.remove(3, "$share/g/a");
        t.remove(3, "$share/g/a");
        assert!(counts.has_others() && !counts.has_other_groups());
        t.add(3, "$share/g/b");
        t.clear();
        assert!(
            counts.has_others() && counts.has_other_groups(),
            "a rebuild never shows publishers an empty table"
        );
        t.add(2, "$share/h/c");
        t.recount();
        assert!(counts.has_others() && counts.has_other_groups());
        t.remove(2, "$share/h/c");
        assert!(
            !counts.has_others() && !counts.has_other_groups(),
            "the counts handed out before a rebuild still follow the table"
        );
    }

    #[test]
    fn a_topic_matches_other_nodes_plain_routes_and_every_group_with_its_nodes() {
        let mut t = RemoteRoutes::new(1);
        assert!(!t.has_others());
        t.add(1, "device/+/status");
        assert!(!t.has_others(), "this node's own routes need no forwarding");
        t.add(2, "device/#");
        t.add(3, "device/7/status");
        t.add(3, "other/#");
        t.add(2, "$share/workers/device/+/status");
        t.add(1, "$share/workers/device/+/status");
        t.add(3, "$share/audit/device/#");
        assert!(t.has_other_groups());
        let m = t.matching("device/7/status");
        assert_eq!(m.nodes, BTreeSet::from([2, 3]));
        let mut groups: Vec<_> = m
            .groups
            .iter()
            .map(|g| (g.filter.to_string(), g.group.to_string(), g.nodes.clone()))
            .collect();
        groups.sort();
        assert_eq!(
            groups,
            vec![
                ("device/#".into(), "audit".into(), vec![3]),
                ("device/+/status".into(), "workers".into(), vec![1, 2]),
            ]
        );
        assert_eq!(t.matching("device/8/status").nodes, BTreeSet::from([2]));
        assert_eq!(t.matching("nothing").nodes, BTreeSet::new());
        // `$` topics are not matched by leading wildcards [MQTT-4.7.2-1].
        t.add(2, "#");
        assert!(t.matching("$SYS/x").nodes.is_empty());
    }

    #[test]
    fn adding_twice_and_removing_are_idempotent_and_keep_the_counts() {
        let mut t = RemoteRoutes::new(1);
        t.add(2, "a/b");
        t.add(2, "a/b");
        t.add(2, "$share/g/a/b");
        assert_eq!(t.nodes(), BTreeMap::from([(2, 2)]));
        t.remove(2, "a/b");
        assert!(t.has_others());
        assert_eq!(t.matching("a/b").nodes, BTreeSet::new());
        assert_eq!(t.matching("a/b").groups.len(), 1);
        t.remove(2, "$share/g/a/b");
        t.remove(2, "$share/g/a/b");
        t.remove(5, "x");
        assert!(!t.has_others());
        assert!(t.nodes().is_empty());
        assert_eq!(t.matching("a/b"), RemoteMatch::default());
        t.add(3, "x/#");
        assert_eq!(t.of(3), BTreeSet::from(["x/#".to_string()]));
        t.clear();
        t.recount();
        assert!(!t.has_others() && t.of(3).is_empty());
        assert_eq!(t.me(), 1);
    }
}
