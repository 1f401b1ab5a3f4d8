//! Which persistent sessions subscribe to what, as the state machine applied it: kept from the stored
//! session records (every node applies the same records in the same order, so every node's index is the
//! same at the same log index). Apply matches a [`Command::Publish`](super::Command::Publish) against it to
//! fan the message out to those sessions' inboxes; a publishing node reads its own copy to decide whether a
//! message needs that command at all.
//!
//! Shared subscriptions are not here: one member of a group takes each message, chosen by the shards.

use super::record::SessionRecord;
use crate::broker::trie::Trie;
use crate::protocol::{topic, QoS, SubscriptionOptions};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// A persistent session's subscription to one filter.
#[derive(Debug, Clone)]
struct Entry {
    client_id: Arc<str>,
    options: SubscriptionOptions,
    sub_id: Option<u32>,
}

/// What a message becomes for one persistent session, over all its matching subscriptions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    /// The highest of min(published QoS, granted QoS) over the matching subscriptions.
    pub qos: QoS,
    /// Retain As Published on any matching subscription (and the message was published retained).
    pub retain: bool,
    pub sub_ids: Vec<u32>,
}

/// The persistent sessions' (non-shared) subscriptions.
#[derive(Debug, Default)]
pub struct PersistentIndex {
    trie: Trie<Vec<Entry>>,
    /// Each session's filters, to take them out again.
    filters: HashMap<Arc<str>, Vec<String>>,
}

impl PersistentIndex {
    /// The session's subscriptions are now the record's.
    pub fn set(&mut self, client_id: &str, record: &SessionRecord) {
        self.remove(client_id);
        let id: Arc<str> = client_id.into();
        let mut filters = Vec::new();
        for (filter, options, sub_id) in &record.subscriptions {
            if topic::parse_shared(filter).is_some() {
                continue;
            }
            self.trie.entry(filter, Vec::new).push(Entry {
                client_id: id.clone(),
                options: *options,
                sub_id: *sub_id,
            });
            filters.push(filter.clone());
        }
        if !filters.is_empty() {
            self.filters.insert(id, filters);
        }
    }

    /// The session is gone.
    pub fn remove(&mut self, client_id: &str) {
        let Some(filters) = self.filters.remove(client_id) else {
            return;
        };
        for f in filters {
            if let Some(v) = self.trie.get_mut(&f) {
                v.retain(|e| &*e.client_id != client_id);
            }
            self.trie.remove_if(&f, Vec::is_empty);
        }
    }

    pub fn clear(&mut self) {
        *self = PersistentIndex::default();
    }

    /// Whether a message on `topic` at `qos` would be stored for any persistent session (QoS 0 never is).
    pub fn matches(&self, topic: &str, qos: QoS) -> bool {
        if qos == QoS::AtMostOnce || self.filters.is_empty() {
            return false;
        }
        let mut any = false;
        self.trie.for_each_match(topic, |v| {
            any |= v.iter().any(|e| e.options.qos != QoS::AtMostOnce)
        });
        any
    }

    /// The copy each persistent session gets of a message on `topic` published at `qos` (retained or
    /// not) by `publisher`, in client-id order. Sessions whose copy would be QoS 0 are left out (they get it
    /// live, not stored), and so is the publisher's own session where its subscription says No Local.
    pub fn copies(
        &self,
        topic: &str,
        qos: QoS,
        retain: bool,
        publisher: Option<&str>,
    ) -> BTreeMap<Arc<str>, Copy> {
        let mut out: BTreeMap<Arc<str>, Copy> = BTreeMap::new();
        self.trie.for_each_match(topic, |v| {
            for e in v {
                if e.options.no_local && publisher == Some(&*e.client_id) {
                    continue;
                }
                let c = out.entry(e.client_id.clone()).or_insert(Copy {
                    qos: QoS::AtMostOnce,
                    retain: false,
                    sub_ids: Vec::new(),
                });
                c.qos = c.qos.max(e.options.qos.min(qos));
                c.retain |= retain && e.options.retain_as_published;
                c.sub_ids.extend(e.sub_id);
            }
        });
        out.retain(|_, c| c.qos != QoS::AtMostOnce);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::RetainHandling;

    fn opts(qos: QoS, no_local: bool, rap: bool) -> SubscriptionOptions {
        SubscriptionOptions {
            qos,
            no_local,
            retain_as_published: rap,
            retain_handling: RetainHandling::SendAtSubscribe,
        }
    }

    fn record(subs: &[(&str, SubscriptionOptions, Option<u32>)]) -> SessionRecord {
        SessionRecord {
            incarnation: 1,
            creator: 0,
            expiry: 60,
            offline_since: 0,
            subscriptions: subs
                .iter()
                .map(|(f, o, i)| (f.to_string(), *o, *i))
                .collect(),
        }
    }

    #[test]
    fn overlapping_filters_give_one_copy_with_the_highest_qos_and_every_identifier() {
        let mut ix = PersistentIndex::default();
        ix.set(
            "a",
            &record(&[
                ("d/+/s", opts(QoS::AtLeastOnce, false, false), Some(1)),
                ("d/#", opts(QoS::ExactlyOnce, false, true), Some(2)),
                ("$share/g/d/#", opts(QoS::ExactlyOnce, false, false), None),
            ]),
        );
        ix.set(
            "b",
            &record(&[("d/1/s", opts(QoS::AtMostOnce, false, false), None)]),
        );
        let c = ix.copies("d/1/s", QoS::ExactlyOnce, true, None);
        assert_eq!(c.len(), 1, "b's copy is QoS 0: not stored");
        let a = &c["a"];
        assert_eq!(a.qos, QoS::ExactlyOnce);
        assert!(a.retain, "Retain As Published on one of them");
        let mut ids = a.sub_ids.clone();
        ids.sort();
        assert_eq!(ids, vec![1, 2]);
        // Published at QoS 1: min with the granted QoS.
        assert_eq!(
            ix.copies("d/1/s", QoS::AtLeastOnce, false, None)["a"].qos,
            QoS::AtLeastOnce
        );
        assert!(ix.matches("d/1/s", QoS::AtLeastOnce));
        assert!(!ix.matches("d/1/s", QoS::AtMostOnce));
        assert!(!ix.matches("e", QoS::AtLeastOnce));
    }

    #[test]
    fn no_local_skips_the_publisher_and_a_removed_or_replaced_session_matches_nothing() {
        let mut ix = PersistentIndex::default();
        ix.set(
            "a",
            &record(&[("t", opts(QoS::AtLeastOnce, true, false), None)]),
        );
        ix.set(
            "b",
            &record(&[("t", opts(QoS::AtLeastOnce, false, false), None)]),
        );
        let c = ix.copies("t", QoS::AtLeastOnce, false, Some("a"));
        assert_eq!(c.keys().map(|k| &**k).collect::<Vec<_>>(), vec!["b"]);
        ix.remove("b");
        assert!(ix
            .copies("t", QoS::AtLeastOnce, false, Some("a"))
            .is_empty());
        ix.set(
            "a",
            &record(&[("u", opts(QoS::AtLeastOnce, false, false), None)]),
        );
        assert!(!ix.matches("t", QoS::AtLeastOnce));
        assert!(ix.matches("u", QoS::AtLeastOnce));
        ix.remove("a");
        assert!(!ix.matches("u", QoS::AtLeastOnce));
        assert!(ix.trie.is_empty() && ix.filters.is_empty());
    }
}
