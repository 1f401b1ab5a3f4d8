//! The Wills the cluster records for live connections and fires when their node is down
//! ([`Command::SetWill`], [`Command::ClearWill`], [`Command::FireWill`]).

use super::*;

/// How the broker of this node takes the Wills the cluster fires (set once the broker runs: Wills applied
/// before, while the log is replayed at start, were delivered when they fired).
#[derive(Default)]
pub struct WillRouter {
    route: std::sync::RwLock<Option<RouteWill>>,
}

/// What the broker does with a fired Will.
pub type RouteWill = Box<dyn Fn(Arc<Message>) + Send + Sync>;

impl WillRouter {
    pub fn set(&self, route: RouteWill) {
        *self.route.write().unwrap_or_else(|e| e.into_inner()) = Some(route);
    }

    pub(super) fn route(&self, m: Arc<Message>) {
        if let Some(r) = &*self.route.read().unwrap_or_else(|e| e.into_inner()) {
            r(m);
        }
    }
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
            let _ = self.owners.send(OwnerEvent::WillFired {
                client_id: client_id.into(),
                conn: w.conn,
            });
        }
        // Unix milliseconds, as stored records keep expiry; `now` is the proposer's, in seconds.
        let expires = w
            .message_expiry
            .map_or(0, |i| now.saturating_add(u64::from(i)).saturating_mul(1000));
        self.fire_will(txn, client_id, record, expires, quota)
    }

    /// A recorded Will fires (its owner node is down): retained if it says so, appended for the persistent
    /// sessions it matches, and handed to this node's other subscribers once the batch is written.
    /// `expires`: its expiry (unix milliseconds, 0 for none), as the proposer fixed it.
    pub(super) fn fire_will(
        &mut self,
        txn: &mut Txn<'_>,
        client_id: &str,
        record: &[u8],
        expires: u64,
        quota: (u64, u64),
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
        self.wills.push(m);
        Outcome::Published { stored, refused }
    }
}

/// The client's recorded Will, as applied so far.
pub(super) fn recorded_will(txn: &Txn<'_>, client_id: &str) -> Option<Vec<u8>> {
    txn.get(&will_key(client_id)).ok().flatten()
}
