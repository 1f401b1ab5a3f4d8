//! The Wills the cluster records for live connections and fires when their node is down
//! ([`Command::SetWill`], [`Command::ClearWill`], [`Command::FireWill`]).

use super::*;
use crate::broker::remote::GroupRef;

/// How the broker of this node takes the Wills the cluster fires (set once the broker runs: Wills applied
/// before, while the log is replayed at start, were delivered when they fired).
#[derive(Default)]
pub struct WillRouter {
    route: std::sync::RwLock<Option<RouteWill>>,
}

/// What the broker does with a fired Will: this node's subscribers get it, and the shared groups named
/// (plain filter, group) that this node serves for it.
pub type RouteWill = Box<dyn Fn(Arc<Message>, Vec<GroupRef>) + Send + Sync>;

impl WillRouter {
    pub fn set(&self, route: RouteWill) {
        *self.route.write().unwrap_or_else(|e| e.into_inner()) = Some(route);
    }

    pub(super) fn route(&self, m: Arc<Message>, groups: Vec<GroupRef>) {
        if let Some(r) = &*self.route.read().unwrap_or_else(|e| e.into_inner()) {
            r(m, groups);
        }
    }
}

/// The node that hands a fired Will to a shared group: one of the nodes with members, the same on every
/// node (they apply the same routing table at the same log index), spread over the nodes by the client id.
pub fn will_group_node(client_id: &str, filter: &str, group: &str, nodes: &[u64]) -> Option<u64> {
    if nodes.is_empty() {
        return None;
    }
    // FNV-1a: stable across processes and builds (the std hasher is seeded per process).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in client_id
        .bytes()
        .chain([0])
        .chain(filter.bytes())
        .chain([0])
        .chain(group.bytes())
    {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    Some(nodes[(h % nodes.len() as u64) as usize])
}

impl BrokerMachine {
    /// Records the Will of a connection of `header.node`, while that node owns the client.
    pub(super) fn set_will(
        &mut self,
        txn: &mut Txn<'_>,
        client_id: &str,
        header: WillRecord,
        tail: &[u8],
    ) -> Outcome {
        if stored_owner(txn, client_id).is_none_or(|o| o.node != header.node) {
            return Outcome::Ignored;
        }
        let v = format::encode_with(&header, |buf| buf.extend_from_slice(tail));
        let key = will_key(client_id);
        if recorded_will(txn, client_id).is_none() {
            self.wills_recorded.inc();
        }
        txn.insert(&key, &v);
        Outcome::Applied
    }

    /// Forgets the Will connection `conn` of `node` recorded, if it is still that one.
    pub(super) fn clear_will(
        &mut self,
        txn: &mut Txn<'_>,
        client_id: &str,
        node: u64,
        conn: u64,
    ) -> Outcome {
        let Some(v) = recorded_will(txn, client_id) else {
            return Outcome::Ignored;
        };
        if WillRecord::decode(&v).is_some_and(|(w, _)| w.node != node || w.conn != conn) {
            return Outcome::Ignored;
        }
        txn.remove(&will_key(client_id));
        self.wills_recorded.dec();
        Outcome::Applied
    }

    /// Fires the Will `node` recorded for the client, once: the record goes (see [`Command::FireWill`]).
    pub(super) fn fire_recorded_will(
        &mut self,
        txn: &mut Txn<'_>,
        client_id: &str,
        node: u64,
        quota: (u64, u64),
        now: u64,
    ) -> Outcome {
        let Some(v) = recorded_will(txn, client_id) else {
            return Outcome::Ignored;
        };
        let key = will_key(client_id);
        let Some((w, record)) = WillRecord::decode(&v) else {
            txn.remove(&key);
            self.wills_recorded.dec();
            return Outcome::Ignored;
        };
        if w.node != node {
            return Outcome::Ignored;
        }
        txn.remove(&key);
        self.wills_recorded.dec();
        if node == self.node_id {
            // This node was only counted as down (paused, cut off): its connection must not publish the Will
            // again.
            self.owner_events.push(OwnerEvent::WillFired {
                client_id: client_id.into(),
                conn: w.conn,
            });
        }
        // Unix milliseconds, as stored records keep expiry; `now` is the proposer's, in seconds.
        let expires = w
            .message_expiry
            .map_or(0, |i| now.saturating_add(u64::from(i)).saturating_mul(1000));
        self.fire_will(txn, client_id, record, expires, quota, node)
    }

    /// A recorded Will fires (its owner node is down): retained if it says so, appended for the persistent
    /// sessions it matches, and handed to this node's other subscribers once the batch is written.
    /// `expires`: its expiry (unix milliseconds, 0 for none), as the proposer fixed it; `down`: the node
    /// counted as down, which no shared group gets it from while another node has members.
    pub(super) fn fire_will(
        &mut self,
        txn: &mut Txn<'_>,
        client_id: &str,
        record: &[u8],
        expires: u64,
        quota: (u64, u64),
        down: u64,
    ) -> Outcome {
        let Some((_, publish)) = split_record(record) else {
            return Outcome::Ignored;
        };
        // Read without expiry: what apply stores must not depend on when each node applies it.
        let Some(mut m) = decode_message(publish, 0) else {
            return Outcome::Ignored;
        };
        if m.retain {
            if m.payload.is_empty() {
                txn.remove(&retained_key(&m.topic));
                self.retained.clear(&m.topic);
            } else {
                let stored = record_with_expiry(expires, publish);
                txn.insert(&retained_key(&m.topic), &stored);
                if let Some(r) = decode_record(&stored) {
                    self.retained.set(Arc::new(r));
                }
            }
        }
        // The copy this node hands out carries the expiry as this node's clock sees it.
        if expires != 0 {
            m.expires_at = match decode_message(publish, expires) {
                Some(live) => live.expires_at,
                None => Some(std::time::Instant::now()),
            };
        }
        m.stored_fanout = true;
        let m = Arc::new(m);
        let fan = FanOut {
            topic: &m.topic,
            qos: m.qos,
            retain: m.retain,
            publisher: Some(client_id),
            once: None,
            weight: m.weight() as u64,
            quota,
            expires,
            publish,
        };
        let (stored, refused) = self.fan_out(txn, fan, Some(m.clone()));
        // Each shared group matching it gets it from one node: the table is the same on every node here.
        let groups = self
            .routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .matching(&m.topic)
            .groups
            .into_iter()
            .filter(|g| {
                let up: Vec<u64> = g.nodes.iter().copied().filter(|n| *n != down).collect();
                let nodes = if up.is_empty() { &g.nodes } else { &up };
                will_group_node(client_id, &g.filter, &g.group, nodes) == Some(self.node_id)
            })
            .map(|g| (g.filter, g.group))
            .collect();
        self.wills.push((m, groups));
        Outcome::Published { stored, refused }
    }
}

/// The client's recorded Will, as applied so far.
pub(super) fn recorded_will(txn: &Txn<'_>, client_id: &str) -> Option<Vec<u8>> {
    txn.get(&will_key(client_id)).ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::will_group_node;

    #[test]
    fn a_fired_wills_group_node_is_one_with_members_the_same_everywhere_and_spread_over_clients() {
        assert_eq!(will_group_node("dev", "status/#", "ops", &[]), None);
        assert_eq!(will_group_node("dev", "status/#", "ops", &[2]), Some(2));
        let nodes = [1, 2, 3];
        let mut chosen = std::collections::BTreeSet::new();
        for i in 0..64 {
            let id = format!("dev-{i}");
            let n = will_group_node(&id, "status/#", "ops", &nodes).unwrap();
            assert!(nodes.contains(&n));
            // A pure function of its inputs: every node computes the same.
            assert_eq!(will_group_node(&id, "status/#", "ops", &nodes), Some(n));
            chosen.insert(n);
        }
        assert_eq!(chosen.len(), 3, "spread over the nodes with members");
    }
}
