//! A shard's routing table as a pure structure: which sessions a message goes to, and with what QoS, RETAIN
//! flag and subscription identifiers. Generic over the handle a subscription carries (the actor uses session
//! actor refs, the tests plain names), so every routing decision is table-tested without actors.

use super::message::{Delivery, Message, SessionId};
use super::trie::Trie;
use crate::protocol::{topic, SubscriptionOptions};
use std::collections::HashMap;
use std::sync::Arc;

/// A session's subscription as the table stores it.
#[derive(Debug, Clone)]
pub struct Route<S> {
    /// Where its deliveries go.
    pub target: S,
    pub options: SubscriptionOptions,
    pub sub_id: Option<u32>,
}

struct Entry<S> {
    /// The filter this entry sits at, to find it again after matching (shared groups advance a cursor).
    filter: Box<str>,
    direct: HashMap<SessionId, Route<S>>,
    groups: HashMap<Box<str>, Group<S>>,
}

impl<S> Entry<S> {
    fn is_empty(&self) -> bool {
        self.direct.is_empty() && self.groups.is_empty()
    }
}

struct Group<S> {
    members: Vec<(SessionId, Route<S>)>,
    next: usize,
}

impl<S> Group<S> {
    /// The next member in turn, skipping `exclude`.
    fn pick(&mut self, exclude: Option<SessionId>) -> Option<&Route<S>> {
        let n = self.members.len();
        for _ in 0..n {
            let i = self.next % n;
            self.next = self.next.wrapping_add(1);
            if Some(self.members[i].0) != exclude {
                return self.members.get(i).map(|(_, r)| r);
            }
        }
        None
    }
}

/// The routing table of one shard.
pub struct Routes<S> {
    trie: Trie<Entry<S>>,
}

impl<S> Default for Routes<S> {
    fn default() -> Self {
        Routes {
            trie: Trie::default(),
        }
    }
}

/// A shared message given back by a member found no other member of its group.
#[derive(Debug, PartialEq, Eq)]
pub struct NoMember;

impl<S: Clone> Routes<S> {
    /// Adds or replaces session `id`'s subscription to `filter` (in shared `group`, if any).
    pub fn subscribe(&mut self, id: SessionId, filter: &str, group: Option<&str>, route: Route<S>) {
        let entry = self.trie.entry(filter, || Entry {
            filter: filter.into(),
            direct: HashMap::new(),
            groups: HashMap::new(),
        });
        match group {
            None => {
                entry.direct.insert(id, route);
            }
            Some(g) => {
                let group = entry.groups.entry(g.into()).or_insert_with(|| Group {
                    members: Vec::new(),
                    next: 0,
                });
                match group.members.iter_mut().find(|(m, _)| *m == id) {
                    Some(slot) => slot.1 = route,
                    None => group.members.push((id, route)),
                }
            }
        }
    }

    pub fn unsubscribe(&mut self, id: SessionId, filter: &str, group: Option<&str>) {
        if let Some(entry) = self.trie.get_mut(filter) {
            match group {
                None => {
                    entry.direct.remove(&id);
                }
                Some(g) => {
                    if let Some(grp) = entry.groups.get_mut(g) {
                        grp.members.retain(|(m, _)| *m != id);
                        if grp.members.is_empty() {
                            entry.groups.remove(g);
                        }
                    }
                }
            }
        }
        self.trie.remove_if(filter, Entry::is_empty);
    }

    /// Filters with at least one subscription.
    pub fn len(&self) -> usize {
        self.trie.len()
    }

    pub fn is_empty(&self) -> bool {
        self.trie.is_empty()
    }

    /// The copies of `message`: one per session with a matching subscription (overlapping ones merged: the
    /// highest QoS and every identifier, v5 3.3.4; No Local honoured), and one per shared group, to its next
    /// member in turn.
    pub fn route(&mut self, message: &Arc<Message>) -> Vec<(S, Delivery)> {
        self.route_with(message, |_, _| true)
    }

    /// As [`Routes::route`], with each matching shared group (plain filter, group name) delivered here only
    /// when `take_group` says so (in a cluster another node's member may have this message's turn).
    pub fn route_with(
        &mut self,
        message: &Arc<Message>,
        mut take_group: impl FnMut(&str, &str) -> bool,
    ) -> Vec<(S, Delivery)> {
        let mut targets: HashMap<SessionId, (S, Delivery)> = HashMap::new();
        let mut shared_filters: Vec<Box<str>> = Vec::new();
        self.trie.for_each_match(&message.topic, |entry| {
            for (id, sub) in &entry.direct {
                if sub.options.no_local && message.publisher == Some(*id) {
                    continue;
                }
                let qos = message.qos.min(sub.options.qos);
                let retain = sub.options.retain_as_published && message.retain;
                let slot = targets.entry(*id).or_insert_with(|| {
                    (
                        sub.target.clone(),
                        Delivery {
                            message: message.clone(),
                            qos,
                            retain,
                            sub_ids: Vec::new(),
                            shared: None,
                            durable: None,
                        },
                    )
                });
                slot.1.qos = slot.1.qos.max(qos);
                slot.1.retain |= retain;
                if let Some(sid) = sub.sub_id {
                    slot.1.sub_ids.push(sid);
                }
            }
            if !entry.groups.is_empty() {
                shared_filters.push(entry.filter.clone());
            }
        });
        let mut out: Vec<(S, Delivery)> = targets.into_values().collect();
        // Picking a member advances the group's cursor, which needs the trie mutably: done after matching.
        for filter in shared_filters {
            let Some(entry) = self.trie.get_mut(&filter) else {
                continue;
            };
            for (group_name, group) in entry.groups.iter_mut() {
                if group.members.is_empty() || !take_group(&filter, group_name) {
                    continue;
                }
                let Some(sub) = group.pick(None) else {
                    continue;
                };
                out.push((
                    sub.target.clone(),
                    Delivery {
                        message: message.clone(),
                        qos: message.qos.min(sub.options.qos),
                        retain: sub.options.retain_as_published && message.retain,
                        sub_ids: sub.sub_id.into_iter().collect(),
                        shared: Some(format!("$share/{group_name}/{filter}").into()),
                        durable: None,
                    },
                ));
            }
        }
        out
    }

    /// Another member of the group for a shared copy that member `exclude` gave back; the member itself
    /// when it is the group's last (a persistent member that only went offline).
    pub fn redeliver(
        &mut self,
        mut delivery: Delivery,
        exclude: SessionId,
    ) -> Result<(S, Delivery), NoMember> {
        let key = delivery.shared.clone().ok_or(NoMember)?;
        let Some(Ok(parsed)) = topic::parse_shared(&key) else {
            return Err(NoMember);
        };
        let group = self
            .trie
            .get_mut(parsed.filter)
            .and_then(|e| e.groups.get_mut(parsed.group))
            .ok_or(NoMember)?;
        let sub = match group.pick(Some(exclude)).cloned() {
            Some(m) => m,
            None => group.pick(None).cloned().ok_or(NoMember)?,
        };
        delivery.qos = delivery.message.qos.min(sub.options.qos);
        delivery.sub_ids = sub.sub_id.into_iter().collect();
        Ok((sub.target, delivery))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Properties, QoS};
    use std::time::Instant;

    fn message(topic: &str, qos: QoS, retain: bool, publisher: Option<SessionId>) -> Arc<Message> {
        Arc::new(Message {
            topic: topic.into(),
            payload: bytes::Bytes::from_static(b"x"),
            qos,
            retain,
            properties: Properties::default(),
            expires_at: None,
            publisher,
            received: Instant::now(),
            qos2_origin: None,
            stored_fanout: false,
        })
    }

    fn sub(target: &'static str, qos: QoS, sub_id: Option<u32>) -> Route<&'static str> {
        Route {
            target,
            options: SubscriptionOptions {
                qos,
                ..Default::default()
            },
            sub_id,
        }
    }

    /// (target, qos, retain, sub ids, shared) of a copy.
    type Copy = (&'static str, QoS, bool, Vec<u32>, Option<String>);

    /// Each copy, sorted.
    fn copies(out: Vec<(&'static str, Delivery)>) -> Vec<Copy> {
        let mut v: Vec<_> = out
            .into_iter()
            .map(|(t, d)| {
                let mut ids = d.sub_ids.clone();
                ids.sort();
                (t, d.qos, d.retain, ids, d.shared.map(|s| s.to_string()))
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn overlapping_subscriptions_give_one_copy_with_the_highest_qos_and_every_identifier() {
        let mut r = Routes::default();
        r.subscribe(
            1,
            "device/+/status",
            None,
            sub("a", QoS::AtMostOnce, Some(1)),
        );
        r.subscribe(1, "device/#", None, sub("a", QoS::ExactlyOnce, Some(2)));
        r.subscribe(2, "device/1/status", None, sub("b", QoS::AtLeastOnce, None));
        r.subscribe(3, "other/#", None, sub("c", QoS::AtLeastOnce, None));
        let out = r.route(&message("device/1/status", QoS::AtLeastOnce, false, None));
        assert_eq!(
            copies(out),
            vec![
                ("a", QoS::AtLeastOnce, false, vec![1, 2], None),
                ("b", QoS::AtLeastOnce, false, vec![], None),
            ],
            "QoS is min(published, granted), the highest over a session's matches"
        );
        assert!(r
            .route(&message("nothing/here", QoS::AtMostOnce, false, None))
            .is_empty());
    }

    #[test]
    fn no_local_and_retain_as_published() {
        let mut r = Routes::default();
        let mut own = sub("me", QoS::AtLeastOnce, None);
        own.options.no_local = true;
        r.subscribe(7, "chat/#", None, own);
        let mut rap = sub("rap", QoS::AtLeastOnce, None);
        rap.options.retain_as_published = true;
        r.subscribe(8, "chat/#", None, rap);
        r.subscribe(9, "chat/#", None, sub("plain", QoS::AtLeastOnce, None));
        let out = r.route(&message("chat/room", QoS::AtLeastOnce, true, Some(7)));
        assert_eq!(
            copies(out),
            vec![
                ("plain", QoS::AtLeastOnce, false, vec![], None),
                ("rap", QoS::AtLeastOnce, true, vec![], None),
            ],
            "no copy back to its publisher; RETAIN kept only with Retain As Published"
        );
    }

    #[test]
    fn a_shared_group_takes_turns_and_a_given_back_copy_goes_to_another_member() {
        let mut r = Routes::default();
        for (id, name) in [(1, "w1"), (2, "w2"), (3, "w3")] {
            r.subscribe(
                id,
                "jobs/#",
                Some("workers"),
                sub(name, QoS::AtLeastOnce, Some(id as u32)),
            );
        }
        r.subscribe(4, "jobs/#", None, sub("audit", QoS::AtMostOnce, None));
        let mut turns = Vec::new();
        for _ in 0..6 {
            let out = r.route(&message("jobs/1", QoS::AtLeastOnce, false, None));
            assert_eq!(
                out.len(),
                2,
                "the group's one member and the plain subscriber"
            );
            let (t, d) = out.into_iter().find(|(t, _)| *t != "audit").unwrap();
            assert_eq!(d.shared.as_deref(), Some("$share/workers/jobs/#"));
            assert_eq!(d.sub_ids, vec![t[1..].parse::<u32>().unwrap()]);
            turns.push(t);
        }
        assert_eq!(turns, ["w1", "w2", "w3", "w1", "w2", "w3"]);
        // w2 gives a copy back: another member takes it, with its own QoS and identifier.
        let (_, d) = r
            .route(&message("jobs/2", QoS::AtLeastOnce, false, None))
            .into_iter()
            .find(|(t, _)| *t != "audit")
            .unwrap();
        let (taker, d) = r.redeliver(d, 2).unwrap();
        assert_ne!(taker, "w2");
        assert_eq!(d.sub_ids.len(), 1);
        // The last member gets its own copy back; with no group left, nobody does.
        r.unsubscribe(1, "jobs/#", Some("workers"));
        r.unsubscribe(3, "jobs/#", Some("workers"));
        assert_eq!(r.redeliver(d.clone(), 2).unwrap().0, "w2");
        r.unsubscribe(2, "jobs/#", Some("workers"));
        assert_eq!(r.redeliver(d, 2).unwrap_err(), NoMember);
        // A plain copy is never redelivered.
        let (_, plain) = r
            .route(&message("jobs/3", QoS::AtMostOnce, false, None))
            .pop()
            .unwrap();
        assert_eq!(r.redeliver(plain, 4).unwrap_err(), NoMember);
    }

    #[test]
    fn unsubscribing_removes_the_route_and_empty_filters() {
        let mut r = Routes::default();
        r.subscribe(1, "a/b", None, sub("x", QoS::AtLeastOnce, None));
        r.subscribe(1, "a/b", None, sub("x", QoS::AtMostOnce, None));
        assert_eq!(r.len(), 1);
        let out = r.route(&message("a/b", QoS::ExactlyOnce, false, None));
        assert_eq!(
            out[0].1.qos,
            QoS::AtMostOnce,
            "a second SUBSCRIBE replaces the first"
        );
        r.unsubscribe(2, "a/b", None);
        assert_eq!(r.len(), 1, "another session's unsubscribe changes nothing");
        r.unsubscribe(1, "a/b", None);
        assert!(r.is_empty());
        assert!(r
            .route(&message("a/b", QoS::AtLeastOnce, false, None))
            .is_empty());
    }
}
