//! The topic-filter trie: filters are inserted level by level, a topic name is matched by walking exact,
//! `+` and `#` children at once. Pure; the value at each filter is the caller's (subscribers, groups, ...).

use std::collections::HashMap;

/// A trie from topic filters to values of type `T`.
#[derive(Debug)]
pub struct Trie<T> {
    root: Node<T>,
    len: usize,
}

#[derive(Debug)]
struct Node<T> {
    children: HashMap<Box<str>, Node<T>>,
    value: Option<T>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node {
            children: HashMap::new(),
            value: None,
        }
    }
}

impl<T> Default for Trie<T> {
    fn default() -> Self {
        Trie {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<T> Trie<T> {
    /// Filters holding a value.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The value at `filter`, created with `make` if absent.
    pub fn entry(&mut self, filter: &str, make: impl FnOnce() -> T) -> &mut T {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        if node.value.is_none() {
            self.len += 1;
        }
        node.value.get_or_insert_with(make)
    }

    /// The value at `filter`.
    pub fn get_mut(&mut self, filter: &str) -> Option<&mut T> {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = node.children.get_mut(level)?;
        }
        node.value.as_mut()
    }

    /// Removes the value at `filter` when `empty` says it holds nothing any more, pruning empty branches.
    pub fn remove_if(&mut self, filter: &str, empty: impl Fn(&T) -> bool) {
        let levels: Vec<&str> = filter.split('/').collect();
        if Self::remove_at(&mut self.root, &levels, &empty) {
            self.len -= 1;
        }
    }

    fn remove_at(node: &mut Node<T>, levels: &[&str], empty: &impl Fn(&T) -> bool) -> bool {
        match levels.split_first() {
            None => match &node.value {
                Some(v) if empty(v) => {
                    node.value = None;
                    true
                }
                _ => false,
            },
            Some((first, rest)) => {
                let Some(child) = node.children.get_mut(*first) else {
                    return false;
                };
                let removed = Self::remove_at(child, rest, empty);
                if child.value.is_none() && child.children.is_empty() {
                    node.children.remove(*first);
                }
                removed
            }
        }
    }

    /// Calls `f` with the filter value of every filter matching the topic name. Filters starting with a
    /// wildcard do not match names starting with `$` [MQTT-4.7.2-1]; `a/#` matches `a` (spec 4.7.1.2).
    pub fn for_each_match<'a>(&'a self, topic: &str, mut f: impl FnMut(&'a T)) {
        let levels: Vec<&str> = topic.split('/').collect();
        let dollar = topic.starts_with('$');
        Self::walk(&self.root, &levels, !dollar, &mut f);
    }

    fn walk<'a>(node: &'a Node<T>, levels: &[&str], wildcards: bool, f: &mut impl FnMut(&'a T)) {
        if wildcards {
            if let Some(hash) = node.children.get("#") {
                if let Some(v) = &hash.value {
                    f(v);
                }
            }
        }
        let Some((first, rest)) = levels.split_first() else {
            if let Some(v) = &node.value {
                f(v);
            }
            return;
        };
        if let Some(child) = node.children.get(*first) {
            Self::walk(child, rest, true, f);
        }
        if wildcards {
            if let Some(plus) = node.children.get("+") {
                Self::walk(plus, rest, true, f);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::topic;

    /// (filter, topic, matches) — checked against the trie and against the reference `topic::matches`.
    const CASES: &[(&str, &str, bool)] = &[
        ("a/b", "a/b", true),
        ("a/b", "a/c", false),
        ("a/+", "a/b", true),
        ("a/+", "a/b/c", false),
        ("a/+", "a/", true),
        ("a/#", "a", true),
        ("a/#", "a/b/c", true),
        ("#", "a/b", true),
        ("#", "$SYS/x", false),
        ("+/x", "$SYS/x", false),
        ("$SYS/#", "$SYS/broker/uptime", true),
        ("$SYS/+/uptime", "$SYS/broker/uptime", true),
        ("+/+", "/x", true),
        ("/+", "/x", true),
        ("+", "/x", false),
        ("a//b", "a//b", true),
        ("a/+/b", "a//b", true),
        ("device/+/status", "device/42/status", true),
        ("device/+/status", "device/42/data", false),
        ("+/#", "a", true),
        ("a/b/#", "a/b", true),
    ];

    #[test]
    fn matching_follows_the_specification_table() {
        for &(filter, name, expected) in CASES {
            let mut trie = Trie::default();
            *trie.entry(filter, || 0) += 1;
            let mut hits = 0;
            trie.for_each_match(name, |v| hits += *v);
            assert_eq!(hits == 1, expected, "{filter} vs {name}");
            assert_eq!(
                topic::matches(filter, name),
                expected,
                "reference: {filter} vs {name}"
            );
        }
    }

    #[test]
    fn overlapping_filters_each_match_once_and_removal_prunes() {
        let mut trie: Trie<Vec<u32>> = Trie::default();
        for (i, f) in ["a/#", "a/+", "a/b", "#", "+/b"].iter().enumerate() {
            trie.entry(f, Vec::new).push(i as u32);
        }
        let mut hits = Vec::new();
        trie.for_each_match("a/b", |v| hits.extend(v.iter().copied()));
        hits.sort();
        assert_eq!(hits, vec![0, 1, 2, 3, 4]);
        assert_eq!(trie.len(), 5);
        trie.get_mut("a/b").unwrap().clear();
        trie.remove_if("a/b", Vec::is_empty);
        trie.remove_if("a/+", Vec::is_empty); // not empty: stays
        assert_eq!(trie.len(), 4);
        let mut hits = Vec::new();
        trie.for_each_match("a/b", |v| hits.extend(v.iter().copied()));
        assert_eq!(hits.len(), 4);
    }
}
