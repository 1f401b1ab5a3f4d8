//! This node's own routes as a pure structure: how many local subscriptions each filter has (a route is
//! per filter and node), and what the replicated table must change to agree with them.

use std::collections::{BTreeSet, HashMap};

#[derive(Default)]
pub struct LocalRoutes {
    counts: HashMap<String, usize>,
}

/// What the replicated table lacks and what it has too much of, for this node.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    pub add: Vec<String>,
    pub remove: Vec<String>,
}

impl LocalRoutes {
    /// A local subscription to `full` (`$share/g/f` for a group member); `true` when it is the filter's first.
    pub fn add(&mut self, full: &str) -> bool {
        let n = self.counts.entry(full.to_string()).or_insert(0);
        *n += 1;
        *n == 1
    }

    /// A local subscription to `full` went; `true` when it was the filter's last.
    pub fn remove(&mut self, full: &str) -> bool {
        match self.counts.get_mut(full) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                self.counts.remove(full);
                true
            }
            None => false,
        }
    }

    pub fn len(&self) -> usize {
        self.counts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// The changes that make `replicated` (this node's routes in the table) equal to the local filters.
    pub fn diff(&self, replicated: &BTreeSet<String>) -> Diff {
        let mut add: Vec<String> = self
            .counts
            .keys()
            .filter(|f| !replicated.contains(*f))
            .cloned()
            .collect();
        add.sort();
        let remove = replicated
            .iter()
            .filter(|f| !self.counts.contains_key(*f))
            .cloned()
            .collect();
        Diff { add, remove }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_and_last_subscription_of_a_filter_change_the_route() {
        let mut l = LocalRoutes::default();
        assert!(l.add("a/#"));
        assert!(!l.add("a/#"));
        assert!(l.add("$share/g/a/#"));
        assert!(!l.remove("a/#"));
        assert!(l.remove("a/#"));
        assert!(!l.remove("a/#"), "an unknown filter changes nothing");
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn the_diff_adds_what_is_missing_and_removes_what_is_stale() {
        let mut l = LocalRoutes::default();
        l.add("x");
        l.add("y");
        let replicated = BTreeSet::from(["y".to_string(), "old".to_string()]);
        assert_eq!(
            l.diff(&replicated),
            Diff {
                add: vec!["x".into()],
                remove: vec!["old".into()]
            }
        );
        l.add("old");
        l.remove("x");
        l.remove("y");
        assert_eq!(
            l.diff(&replicated),
            Diff {
                add: vec![],
                remove: vec!["y".into()]
            }
        );
        assert!(LocalRoutes::default().diff(&BTreeSet::new()) == Diff::default());
    }
}
