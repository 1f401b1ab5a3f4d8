//! A node leaving the cluster and joining it again ([`Command::DropNode`], [`Command::AdmitNode`]).

use super::*;

impl BrokerMachine {
    /// `node` left: its routes go (nothing is forwarded to it any more), the sessions it held online count
    /// as offline from `now` (their expiry runs; a client resumes them on another node), and it is marked
    /// departed.
    pub(super) fn drop_node(&mut self, txn: &mut Txn<'_>, node: u64, now: u64) -> Outcome {
        let filters = self
            .routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .of(node);
        for filter in &filters {
            txn.remove(&route_key(node, filter));
            self.routes_mut().remove(node, filter);
        }
        for k in txn.keys_with_prefix(OWNER_PREFIX).unwrap_or_default() {
            let Some(owner) = txn
                .get(&k)
                .ok()
                .flatten()
                .and_then(|v| OwnerRecord::decode(&v))
            else {
                continue;
            };
            if owner.node != node {
                continue;
            }
            let Ok(client_id) = std::str::from_utf8(&k[OWNER_PREFIX.len()..]) else {
                continue;
            };
            if let Some(mut record) = stored_record(txn, client_id) {
                if record.offline_since == 0 {
                    record.offline_since = now.max(1);
                    txn.insert(&session_key(client_id), &record.encode());
                }
            }
        }
        txn.insert(&departed_key(node), &[]);
        tracing::info!(
            node,
            routes = filters.len(),
            "node left the cluster: its routes are gone"
        );
        Outcome::Applied
    }

    /// `node` joins: it is no longer departed.
    pub(super) fn admit_node(&mut self, txn: &mut Txn<'_>, node: u64) -> Outcome {
        txn.remove(&departed_key(node));
        Outcome::Applied
    }
}
