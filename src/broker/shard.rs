//! TopicShard actors split the routing table. A filter without wildcards lives in shard `hash(filter)`, a
//! wildcard filter in every shard, and a PUBLISH goes to shard `hash(topic)` only: one hop and one match.
//! Shared subscriptions (`$share/group/filter`) pick one member per group per message, round robin.

use super::message::{Delivery, Message, SessionId};
use super::metrics::Metrics;
use super::session::SessionMsg;
use super::ticket::Ticket;
use super::trie::Trie;
use crate::protocol::{topic, QoS, SubscriptionOptions};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::collections::HashMap;
use std::sync::Arc;

/// A session's subscription as a shard stores it.
#[derive(Debug, Clone)]
pub struct Subscriber {
    pub session: ActorRef<SessionMsg>,
    pub options: SubscriptionOptions,
    pub sub_id: Option<u32>,
}

struct Entry {
    /// The filter this entry sits at, to find it again after matching (shared groups advance a cursor).
    filter: Box<str>,
    direct: HashMap<SessionId, Subscriber>,
    groups: HashMap<Box<str>, Group>,
}

impl Entry {
    fn is_empty(&self) -> bool {
        self.direct.is_empty() && self.groups.is_empty()
    }
}

#[derive(Default)]
struct Group {
    members: Vec<(SessionId, Subscriber)>,
    next: usize,
}

impl Group {
    /// The next member in turn, skipping `exclude`.
    fn pick(&mut self, exclude: Option<SessionId>) -> Option<&(SessionId, Subscriber)> {
        let n = self.members.len();
        for _ in 0..n {
            let i = self.next % n;
            self.next = self.next.wrapping_add(1);
            if Some(self.members[i].0) != exclude {
                return self.members.get(i);
            }
        }
        None
    }
}

pub enum ShardMsg {
    Subscribe {
        id: SessionId,
        filter: String,
        group: Option<String>,
        subscriber: Subscriber,
    },
    Unsubscribe {
        id: SessionId,
        filter: String,
        group: Option<String>,
    },
    Publish(Arc<Message>, Ticket),
    /// A shared-subscription message a member gave back (it went away): another member takes it.
    Redeliver {
        delivery: Delivery,
        exclude: SessionId,
    },
}

pub struct TopicShard;

pub struct ShardState {
    /// What a shard uses of the broker: its counters (drops). It routes to sessions and never touches the store.
    metrics: Arc<Metrics>,
    trie: Trie<Entry>,
}

/// The shard a topic name or a wildcard-free filter belongs to (FNV-1a: stable and cheap).
pub fn shard_of(topic: &str, shards: usize) -> usize {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in topic.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    (h % shards as u64) as usize
}

impl Actor for TopicShard {
    type Msg = ShardMsg;
    type State = ShardState;
    type Arguments = Arc<Metrics>;

    async fn pre_start(
        &self,
        _me: ActorRef<ShardMsg>,
        metrics: Arc<Metrics>,
    ) -> Result<ShardState, ActorProcessingErr> {
        Ok(ShardState {
            metrics,
            trie: Trie::default(),
        })
    }

    async fn handle(
        &self,
        _me: ActorRef<ShardMsg>,
        msg: ShardMsg,
        s: &mut ShardState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ShardMsg::Subscribe {
                id,
                filter,
                group,
                subscriber,
            } => {
                let entry = s.trie.entry(&filter, || Entry {
                    filter: filter.as_str().into(),
                    direct: HashMap::new(),
                    groups: HashMap::new(),
                });
                match group {
                    None => {
                        entry.direct.insert(id, subscriber);
                    }
                    Some(g) => {
                        let group = entry.groups.entry(g.into()).or_default();
                        match group.members.iter_mut().find(|(m, _)| *m == id) {
                            Some(slot) => slot.1 = subscriber,
                            None => group.members.push((id, subscriber)),
                        }
                    }
                }
            }
            ShardMsg::Unsubscribe { id, filter, group } => {
                if let Some(entry) = s.trie.get_mut(&filter) {
                    match group {
                        None => {
                            entry.direct.remove(&id);
                        }
                        Some(g) => {
                            if let Some(grp) = entry.groups.get_mut(g.as_str()) {
                                grp.members.retain(|(m, _)| *m != id);
                                if grp.members.is_empty() {
                                    entry.groups.remove(g.as_str());
                                }
                            }
                        }
                    }
                }
                s.trie.remove_if(&filter, Entry::is_empty);
            }
            ShardMsg::Publish(message, ticket) => s.route(message, ticket),
            ShardMsg::Redeliver { delivery, exclude } => s.redeliver(delivery, exclude),
        }
        Ok(())
    }
}

impl ShardState {
    fn route(&mut self, message: Arc<Message>, ticket: Ticket) {
        let mut targets: HashMap<SessionId, (ActorRef<SessionMsg>, Delivery)> = HashMap::new();
        let mut shared: Vec<(ActorRef<SessionMsg>, Delivery)> = Vec::new();
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
                        sub.session.clone(),
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
                // Overlapping subscriptions: one copy with the highest QoS and every identifier (v5 3.3.4).
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
        // Picking a member advances the group's cursor, which needs the trie mutably: done after matching.
        for filter in shared_filters {
            self.pick_shared(&message, &filter, &mut shared);
        }
        let copies = targets.len() + shared.len();
        if let Some(gate) = &ticket.gate {
            // Counted before any session can refuse its copy (quota): all refusing means 0x97.
            gate.add_copies(copies);
        }
        if copies == 0 && !message.topic.starts_with("$SYS") {
            self.metrics
                .dropped
                .with_label_values(&["no_subscribers"])
                .inc();
        }
        for (session, delivery) in targets.into_values().chain(shared) {
            let _ = session.cast(SessionMsg::Deliver(delivery, ticket.clone()));
        }
    }

    /// One member of every shared group at `filter` receives the message.
    fn pick_shared(
        &mut self,
        message: &Arc<Message>,
        filter: &str,
        out: &mut Vec<(ActorRef<SessionMsg>, Delivery)>,
    ) {
        let Some(entry) = self.trie.get_mut(filter) else {
            return;
        };
        for (group_name, group) in entry.groups.iter_mut() {
            let Some((_, sub)) = group.pick(None) else {
                continue;
            };
            out.push((
                sub.session.clone(),
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

    fn redeliver(&mut self, mut delivery: Delivery, exclude: SessionId) {
        let Some(key) = delivery.shared.clone() else {
            return;
        };
        let Some(Ok(parsed)) = topic::parse_shared(&key) else {
            return;
        };
        let pick = self
            .trie
            .get_mut(parsed.filter)
            .and_then(|e| e.groups.get_mut(parsed.group))
            // A persistent member that only went offline gets it back when it is the group's last member.
            .and_then(|g| match g.pick(Some(exclude)).cloned() {
                Some(m) => Some(m),
                None => g.pick(None).cloned(),
            });
        match pick {
            Some((_, sub)) => {
                delivery.qos = delivery.message.qos.min(sub.options.qos);
                delivery.sub_ids = sub.sub_id.into_iter().collect();
                let _ = sub
                    .session
                    .cast(SessionMsg::Deliver(delivery, Ticket::default()));
            }
            None => {
                if delivery.qos != QoS::AtMostOnce {
                    tracing::debug!(topic = %delivery.message.topic, group = parsed.group, "no other member for a shared message");
                }
                self.metrics
                    .dropped
                    .with_label_values(&["no_group_member"])
                    .inc();
            }
        }
    }
}
