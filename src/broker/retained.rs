//! Retained messages behind a narrow interface ([`RetainedStore`]) that the replicated store takes over in the
//! cluster issue. The in-memory store keeps a tree of topic names so a subscription's filter walks only the
//! branches it can match.

use super::message::Message;
use crate::protocol::topic;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

/// Where retained messages live.
pub trait RetainedStore: Send + Sync {
    /// Stores (replaces) the retained message of its topic.
    fn set(&self, message: Arc<Message>);
    /// Removes the retained message of a topic (a retained PUBLISH with an empty payload).
    fn clear(&self, topic: &str);
    /// Unexpired retained messages whose topic matches the (plain) filter.
    fn matching(&self, filter: &str, now: Instant) -> Vec<Arc<Message>>;
    /// Number of retained messages.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    message: Option<Arc<Message>>,
}

impl Node {
    fn collect(&self, levels: &[&str], root: bool, out: &mut Vec<Arc<Message>>) {
        let Some((first, rest)) = levels.split_first() else {
            if let Some(m) = &self.message {
                out.push(m.clone());
            }
            return;
        };
        match *first {
            "#" => {
                // `a/#` matches `a` itself (spec 4.7.1.2); at the root, `#` skips `$` topics [MQTT-4.7.2-1].
                if !root {
                    if let Some(m) = &self.message {
                        out.push(m.clone());
                    }
                }
                for (name, child) in &self.children {
                    if !(root && name.starts_with('$')) {
                        child.all(out);
                    }
                }
            }
            "+" => {
                for (name, child) in &self.children {
                    if !(root && name.starts_with('$')) {
                        child.collect(rest, false, out);
                    }
                }
            }
            exact => {
                if let Some(child) = self.children.get(exact) {
                    child.collect(rest, false, out);
                }
            }
        }
    }

    fn all(&self, out: &mut Vec<Arc<Message>>) {
        if let Some(m) = &self.message {
            out.push(m.clone());
        }
        for child in self.children.values() {
            child.all(out);
        }
    }

    /// Removes the message at `levels`; true if this node is now empty.
    fn remove(&mut self, levels: &[&str]) -> (bool, bool) {
        match levels.split_first() {
            None => {
                let removed = self.message.take().is_some();
                (removed, self.children.is_empty())
            }
            Some((first, rest)) => {
                let Some(child) = self.children.get_mut(*first) else {
                    return (false, false);
                };
                let (removed, empty) = child.remove(rest);
                if empty {
                    self.children.remove(*first);
                }
                (removed, self.message.is_none() && self.children.is_empty())
            }
        }
    }
}

/// Retained messages in memory.
#[derive(Default)]
pub struct MemoryRetained {
    inner: RwLock<(Node, usize)>,
}

impl MemoryRetained {
    /// Forgets everything (a snapshot replaced the stored state).
    pub fn clear_all(&self) {
        *self.inner.write().unwrap_or_else(|e| e.into_inner()) = (Node::default(), 0);
    }
}

impl RetainedStore for MemoryRetained {
    fn set(&self, message: Arc<Message>) {
        let mut guard = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let (root, count) = &mut *guard;
        let mut node = root;
        for level in message.topic.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        if node.message.replace(message).is_none() {
            *count += 1;
        }
    }

    fn clear(&self, topic: &str) {
        let mut guard = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let (root, count) = &mut *guard;
        let levels: Vec<&str> = topic.split('/').collect();
        if root.remove(&levels).0 {
            *count -= 1;
        }
    }

    fn matching(&self, filter: &str, now: Instant) -> Vec<Arc<Message>> {
        let levels: Vec<&str> = filter.split('/').collect();
        let mut out = Vec::new();
        {
            let guard = self.inner.read().unwrap_or_else(|e| e.into_inner());
            guard.0.collect(&levels, true, &mut out);
        }
        let expired: Vec<String> = out
            .iter()
            .filter(|m| m.is_expired(now))
            .map(|m| m.topic.clone())
            .collect();
        for t in &expired {
            self.clear(t);
        }
        out.retain(|m| !m.is_expired(now) && topic::matches(filter, &m.topic));
        out
    }

    fn len(&self) -> usize {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Properties, QoS};
    use bytes::Bytes;

    fn msg(topic: &str) -> Arc<Message> {
        Arc::new(Message {
            topic: topic.into(),
            payload: Bytes::from_static(b"v"),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: Properties::default(),
            expires_at: None,
            publisher: None,
            received: Instant::now(),
            qos2_origin: None,
            stored_fanout: false,
        })
    }

    fn topics(store: &MemoryRetained, filter: &str) -> Vec<String> {
        let mut t: Vec<String> = store
            .matching(filter, Instant::now())
            .iter()
            .map(|m| m.topic.clone())
            .collect();
        t.sort();
        t
    }

    #[test]
    fn filters_find_what_they_match_and_dollar_topics_stay_hidden() {
        let s = MemoryRetained::default();
        for t in ["a", "a/b", "a/b/c", "a/x", "$SYS/up", "/lead"] {
            s.set(msg(t));
        }
        assert_eq!(s.len(), 6);
        assert_eq!(topics(&s, "a/#"), ["a", "a/b", "a/b/c", "a/x"]);
        assert_eq!(topics(&s, "a/+"), ["a/b", "a/x"]);
        assert_eq!(topics(&s, "#"), ["/lead", "a", "a/b", "a/b/c", "a/x"]);
        assert_eq!(topics(&s, "+/+"), ["/lead", "a/b", "a/x"]);
        assert_eq!(topics(&s, "$SYS/#"), ["$SYS/up"]);
        assert_eq!(topics(&s, "a/b"), ["a/b"]);
    }

    #[test]
    fn replace_and_clear_keep_the_count() {
        let s = MemoryRetained::default();
        s.set(msg("a/b"));
        s.set(msg("a/b"));
        assert_eq!(s.len(), 1);
        s.clear("a/b");
        s.clear("a/b");
        assert_eq!(s.len(), 0);
        assert!(topics(&s, "#").is_empty());
    }

    #[test]
    fn expired_messages_are_not_returned_and_are_removed() {
        let s = MemoryRetained::default();
        let mut m = (*msg("gone")).clone();
        m.expires_at = Some(Instant::now());
        s.set(Arc::new(m));
        assert!(topics(&s, "gone").is_empty());
        assert_eq!(s.len(), 0);
    }
}
