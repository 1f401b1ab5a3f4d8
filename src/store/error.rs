//! Why the store did not open, or why a command of this node did not take the effect it asked for.

use cicada_cluster::ClusterError;

/// Why [`super::Store::open`] failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The raft node did not start, or no leader answered its first read barrier.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// A store metric could not be registered (its name is taken in the registry).
    #[error("cannot register the store's metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Why a claim, takeover or fan-out did not take effect.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommitError {
    /// Not committed, or not known to be (no leader, a timeout, the node stopped).
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// Committed, but apply refused the claim: another node claimed the client after the epoch this node
    /// saw, so the client is that node's now.
    #[error("claim not applied: another node claimed the client since")]
    ClaimSuperseded,
    /// Committed, but apply refused the takeover, for the same reason.
    #[error("takeover not applied: another node claimed the client since")]
    TakeoverSuperseded,
    /// Committed, but apply did not fan the message out (it could not read the command).
    #[error("publish not applied")]
    NotPublished,
}
