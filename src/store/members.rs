//! Membership as the broker's state sees it: nodes that left the cluster (`cicada ctl leave`) and joined it.

use super::command::Command;
use super::keys::{departed_key, DEPARTED_PREFIX};
use super::record::unix_now;
use super::Store;
use cicada_cluster::ClusterError;

impl Store {
    /// Proposes that `node`, removed from the raft group, left: its routes go and it counts as down for good
    /// (see [`Command::DropNode`]).
    pub fn drop_node(
        &self,
        node: u64,
    ) -> impl std::future::Future<Output = Result<bool, ClusterError>> + Send + 'static {
        self.submit_applied(Command::DropNode {
            node,
            now: unix_now(),
        })
    }

    /// Proposes that `node` joins (again): it no longer counts as departed.
    pub fn admit_node(
        &self,
        node: u64,
    ) -> impl std::future::Future<Output = Result<bool, ClusterError>> + Send + 'static {
        self.submit_applied(Command::AdmitNode { node })
    }

    /// The nodes that left the cluster, as applied here.
    pub fn departed(&self) -> Vec<u64> {
        self.cluster
            .view()
            .scan_prefix(DEPARTED_PREFIX)
            .flatten()
            .filter_map(|(k, _)| {
                let id = k.get(DEPARTED_PREFIX.len()..)?;
                Some(u64::from_be_bytes(id.try_into().ok()?))
            })
            .collect()
    }

    /// Whether `node` left the cluster, as applied here.
    pub fn is_departed(&self, node: u64) -> bool {
        matches!(self.cluster.view().get(&departed_key(node)), Ok(Some(_)))
    }
}
