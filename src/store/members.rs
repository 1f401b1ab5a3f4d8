//! Membership as the broker's state sees it: nodes that left the cluster (`cicada ctl leave`) and joined it,
//! and whether this node's state is fresh enough to decide on.

use super::command::Command;
use super::keys::{departed_key, DEPARTED_PREFIX};
use super::record::unix_now;
use super::Store;
use cicada_cluster::ClusterError;
use std::time::Duration;

/// How long a node that is not fresh tries to reach a leader before it refuses.
pub const FRESH_WAIT: Duration = Duration::from_secs(3);
const RETRY: Duration = Duration::from_millis(50);

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

    /// Before a decision on state other nodes change (which persistent sessions a message is for): at once
    /// while this node is fresh ([`cicada_cluster::Cluster::fresh`]), else after a read barrier through the
    /// leader. A node that just woke may be between leaders: it asks again until [`FRESH_WAIT`], then `Err`.
    pub async fn ensure_fresh(&self) -> Result<(), ClusterError> {
        if self.cluster.fresh() {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + FRESH_WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let e = match tokio::time::timeout(left, self.cluster.read_index()).await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e @ (ClusterError::NoLeader | ClusterError::Timeout))) => e,
                Ok(Err(e)) => return Err(e),
                Err(_) => ClusterError::Timeout,
            };
            if tokio::time::Instant::now() + RETRY >= deadline {
                return Err(e);
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    /// A read barrier asked now and asked again while there is no leader (minority side, election): resolves
    /// once this node has applied everything the leader had committed when the answered barrier was asked.
    /// Never gives up by itself (the caller drops it when it no longer needs it); `Err` only when the node
    /// stopped or refused the read for another reason than a missing leader.
    pub async fn barrier(&self) -> Result<u64, ClusterError> {
        loop {
            match self.cluster.read_index().await {
                Ok(index) => return Ok(index),
                Err(ClusterError::NoLeader | ClusterError::Timeout | ClusterError::Busy) => {
                    tokio::time::sleep(RETRY).await
                }
                Err(e) => return Err(e),
            }
        }
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
