//! What can go wrong in the store, by what the caller can do about it. Every error is `Clone`: one failed
//! proposal batch answers each of its callers. Sources that are not `Clone` (raft-rs's, I/O, ractor's) are
//! shared in an `Arc`.

use std::path::PathBuf;
use std::sync::Arc;

/// Why a proposal, read or membership change of a running node failed, or why a node did not start.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClusterError {
    /// No leader is known (an election is running, or this node is cut off): the command was not proposed.
    #[error("no raft leader (proposal dropped)")]
    NoLeader,
    /// No answer in time: the command may still be committed and applied.
    #[error("timed out waiting for the raft group")]
    Timeout,
    /// The node actor has stopped (shut down, or its storage failed).
    #[error("the raft node has stopped")]
    Stopped,
    /// A membership change was refused; the membership is unchanged.
    #[error("membership change refused: {0}")]
    Rejected(#[source] ChangeRefused),
    /// Writing or reading the raft log or state failed: the node stops rather than diverge.
    #[error("raft storage: {0}")]
    Storage(#[source] StorageError),
    #[error("too many uncommitted proposals; retry later")]
    Busy,
    #[error("a command of {0} bytes is larger than a raft entry may be")]
    TooLarge(usize),
    /// The node could not start; nothing is running.
    #[error(transparent)]
    Start(#[from] StartError),
}

impl From<StorageError> for ClusterError {
    fn from(e: StorageError) -> Self {
        ClusterError::Storage(e)
    }
}

impl From<sled::Error> for ClusterError {
    fn from(e: sled::Error) -> Self {
        ClusterError::Storage(StorageError::Sled(e))
    }
}

/// Why raft refused a membership change.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ChangeRefused {
    /// raft-rs applies one change at a time: retry once the pending one is applied.
    #[error("another membership change is still being applied; try again")]
    Pending,
    /// raft-rs refused the change itself (e.g. one that would leave no voter).
    #[error(transparent)]
    Raft(Arc<raft::Error>),
}

/// A failure of the raft log or the state machine's storage.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    /// sled failed (I/O, corruption): what was being written may be lost on this node.
    #[error(transparent)]
    Sled(#[from] sled::Error),
    /// raft-rs handed over a snapshot whose data names no staged state tree (it did not come from the
    /// snapshot stream).
    #[error("the snapshot at {index} names no staged state")]
    SnapshotNotStaged { index: u64 },
    /// The state tree staged for this snapshot was released or replaced before raft-rs applied it.
    #[error("the snapshot at {index} is no longer staged")]
    SnapshotNoLongerStaged { index: u64 },
}

/// Why [`crate::Cluster::start`] failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StartError {
    /// The data directory's database, raft log or applied state could not be opened or read (another node
    /// holding the directory is reported here).
    #[error("{}: {what}: {source}", dir.display())]
    Storage {
        dir: PathBuf,
        what: &'static str,
        source: sled::Error,
    },
    /// raft-rs refused the configuration or the stored state.
    #[error("{}: {what}: {source}", dir.display())]
    Raft {
        dir: PathBuf,
        what: &'static str,
        source: Arc<raft::Error>,
    },
    /// The peer link's address could not be bound.
    #[error("peer listen {addr}: {source}")]
    Listen {
        addr: String,
        source: Arc<std::io::Error>,
    },
    /// The process incarnation (which keeps answers of an earlier process from answering this one's calls)
    /// needs the system's random source.
    #[error("no system randomness for the process incarnation")]
    NoRandomness,
    /// The node actor did not start.
    #[error("cannot start the raft node actor: {0}")]
    Actor(#[source] Arc<ractor::SpawnErr>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_what_failed_and_why() {
        let e = ClusterError::from(StartError::Storage {
            dir: "/data/store".into(),
            what: "cannot open its database",
            source: sled::Error::Unsupported("a newer format".into()),
        });
        assert_eq!(
            e.to_string(),
            "/data/store: cannot open its database: Unsupported: a newer format"
        );
        let e = ClusterError::Rejected(ChangeRefused::Pending);
        assert_eq!(
            e.to_string(),
            "membership change refused: another membership change is still being applied; try again"
        );
        let e = ClusterError::Rejected(ChangeRefused::Raft(Arc::new(raft::Error::ProposalDropped)));
        assert_eq!(
            e.to_string(),
            "membership change refused: raft: proposal dropped"
        );
        let e = ClusterError::from(StorageError::SnapshotNoLongerStaged { index: 42 });
        assert_eq!(
            e.to_string(),
            "raft storage: the snapshot at 42 is no longer staged"
        );
        let source = std::error::Error::source(&e).expect("the storage error is the source");
        assert_eq!(source.to_string(), "the snapshot at 42 is no longer staged");
    }
}
