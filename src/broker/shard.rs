//! TopicShard actors split the routing table. A filter without wildcards lives in shard `hash(filter)`, a
//! wildcard filter in every shard, and a PUBLISH goes to shard `hash(topic)` only: one hop and one match.
//! Shared subscriptions (`$share/group/filter`) pick one member per group per message, round robin. The
//! decisions are the pure [`Routes`](super::routes::Routes); this actor sends what it decides.

use super::message::{Delivery, Message, SessionId};
use super::metrics::Metrics;
use super::remote::{GroupRef, GroupTurns, Planner, RemoteLink};
use super::routes::{NoMember, Route, Routes};
use super::session::SessionMsg;
use super::ticket::{Handed, Ticket};
use crate::protocol::QoS;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::sync::Arc;

/// A session's subscription as a shard stores it: its route to the session actor.
pub type Subscriber = Route<ActorRef<SessionMsg>>;

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
    /// A message another node forwarded: for this node's subscribers, and the shared groups named (the
    /// plain filter and the group), whose turn it is here. Never forwarded again.
    Forwarded(Arc<Message>, Vec<GroupRef>, Ticket),
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
    routes: Routes<ActorRef<SessionMsg>>,
    /// The cluster's routes and peer links (`None` in tests without a store).
    link: Option<Arc<RemoteLink>>,
    /// Whose turn it is in each shared group spread over nodes.
    turns: GroupTurns,
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
    type Arguments = (Arc<Metrics>, Option<Arc<RemoteLink>>);

    async fn pre_start(
        &self,
        _me: ActorRef<ShardMsg>,
        (metrics, link): Self::Arguments,
    ) -> Result<ShardState, ActorProcessingErr> {
        Ok(ShardState {
            metrics,
            routes: Routes::default(),
            link,
            turns: GroupTurns::default(),
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
            } => s
                .routes
                .subscribe(id, &filter, group.as_deref(), subscriber),
            ShardMsg::Unsubscribe { id, filter, group } => {
                s.routes.unsubscribe(id, &filter, group.as_deref())
            }
            ShardMsg::Publish(message, ticket) => s.route(message, ticket).await,
            ShardMsg::Forwarded(message, groups, ticket) => {
                let mut served = 0;
                let copies = s.routes.route_with(&message, |f, g| {
                    let named = groups.iter().any(|(gf, gg)| &**gf == f && &**gg == g);
                    served += usize::from(named);
                    named
                });
                // A peer waits to hear where its group copies went (its ticket has a gate): a group named
                // that has no member here any more (it left, or moved to another node, before the route
                // did) fails it, so the publisher sends again rather than being told it was stored.
                if let Some(gate) = ticket.gate.as_ref().filter(|_| served < groups.len()) {
                    s.metrics
                        .dropped
                        .with_label_values(&["no_group_member"])
                        .inc();
                    gate.fail();
                }
                let strict = ticket.gate.is_some();
                s.send(&message, copies, &ticket, true, strict);
            }
            ShardMsg::Redeliver { delivery, exclude } => s.redeliver(delivery, exclude),
        }
        Ok(())
    }
}

impl ShardState {
    /// Sends each copy the table decides on to its session, and one frame to each other node with a
    /// matching route. The ticket (the publisher's credit) is held until every frame is queued on its
    /// peer link: a slow link slows the publishers whose messages wait for it.
    async fn route(&mut self, message: Arc<Message>, ticket: Ticket) {
        let link = self.link.clone().filter(|l| l.has_remote_routes());
        let Some(link) = link else {
            let copies = self.routes.route(&message);
            self.send(&message, copies, &ticket, false, false);
            return;
        };
        let mut remote = link.table().matching(&message.topic);
        link.prefer_reachable(&mut remote);
        let mut planner = Planner::new(link.me(), &remote, &mut self.turns);
        let copies = self
            .routes
            .route_with(&message, |f, g| planner.local_group(f, g));
        let frames = planner.finish();
        self.turns.trim(100_000);
        self.send(&message, copies, &ticket, !frames.is_empty(), false);
        for (node, groups) in frames {
            link.forward_message(node, &message, &groups, &ticket).await;
        }
    }

    /// Casts the copies to their sessions; `elsewhere`: the message also went to (or came from) another
    /// node, so no local copy is not a drop; `strict`: a copy dropped unhandled fails the gate (see
    /// [`Handed`]).
    fn send(
        &self,
        message: &Message,
        copies: Vec<(ActorRef<SessionMsg>, Delivery)>,
        ticket: &Ticket,
        elsewhere: bool,
        strict: bool,
    ) {
        if let Some(gate) = &ticket.gate {
            // Counted before any session can refuse its copy (quota): all refusing means 0x97.
            gate.add_copies(copies.len());
        }
        if copies.is_empty() && !elsewhere && !message.topic.starts_with("$SYS") {
            self.metrics
                .dropped
                .with_label_values(&["no_subscribers"])
                .inc();
        }
        for (session, delivery) in copies {
            let _ = session.cast(SessionMsg::Deliver(
                delivery,
                Handed::new(ticket.clone(), strict),
            ));
        }
    }

    fn redeliver(&mut self, delivery: Delivery, exclude: SessionId) {
        let (topic, qos) = (delivery.message.topic.clone(), delivery.qos);
        match self.routes.redeliver(delivery, exclude) {
            Ok((session, delivery)) => {
                let _ = session.cast(SessionMsg::Deliver(
                    delivery,
                    Handed::new(Ticket::default(), false),
                ));
            }
            Err(NoMember) => {
                if qos != QoS::AtMostOnce {
                    tracing::debug!(%topic, "no other member for a shared message");
                }
                self.metrics
                    .dropped
                    .with_label_values(&["no_group_member"])
                    .inc();
            }
        }
    }
}
