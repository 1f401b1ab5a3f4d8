//! The replicated state machine: one sled tree that every node changes in log order.
//!
//! Each batch of committed entries becomes one [`Txn`]: the commands' writes and the applied index go to sled in
//! one atomic batch, so a restart never applies an entry twice or skips one.

use crate::storage::SnapshotSource;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Key of the applied index; user keys are stored after a `0x01` prefix so they can never collide with it.
const APPLIED: &[u8] = b"\x00applied";
const USER: u8 = 0x01;

/// What the broker implements: how a command changes the state, and what it answers.
pub trait StateMachine: Send + 'static {
    /// Applies one committed command. Reads see the writes of earlier commands in the same batch.
    fn apply(&mut self, txn: &mut Txn<'_>, command: &[u8]) -> Vec<u8>;

    /// Called at start (before raft replays entries past the stored applied index) and after a snapshot
    /// replaced the whole state: rebuild any in-memory index from `view`.
    fn restored(&mut self, view: &View) {
        let _ = view;
    }
}

/// Read access to the applied state.
#[derive(Clone)]
pub struct View {
    tree: sled::Tree,
}

fn user_key(k: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(k.len() + 1);
    v.push(USER);
    v.extend_from_slice(k);
    v
}

impl View {
    pub(crate) fn open(db: &sled::Db) -> Result<View, sled::Error> {
        Ok(View {
            tree: db.open_tree("state")?,
        })
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<sled::IVec>, sled::Error> {
        self.tree.get(user_key(key))
    }

    /// Keys and values under a prefix, in key order (the prefix is part of the returned key).
    pub fn scan_prefix(
        &self,
        prefix: &[u8],
    ) -> impl Iterator<Item = Result<(Vec<u8>, sled::IVec), sled::Error>> {
        self.tree
            .scan_prefix(user_key(prefix))
            .map(|r| r.map(|(k, v)| (k[1..].to_vec(), v)))
    }

    /// Keys and values in `[from, to)`, in key order, from either end.
    pub fn range(
        &self,
        from: &[u8],
        to: &[u8],
    ) -> impl DoubleEndedIterator<Item = Result<(Vec<u8>, sled::IVec), sled::Error>> {
        self.tree
            .range(user_key(from)..user_key(to))
            .map(|r| r.map(|(k, v)| (k[1..].to_vec(), v)))
    }

    /// The index of the last applied entry (0 for a new store).
    pub fn applied(&self) -> Result<u64, sled::Error> {
        Ok(match self.tree.get(APPLIED)? {
            Some(v) if v.len() == 8 => u64::from_be_bytes(v.as_ref().try_into().expect("8 bytes")),
            _ => 0,
        })
    }

    pub(crate) fn tree(&self) -> &sled::Tree {
        &self.tree
    }

    /// Every user key and value with the applied index: the snapshot sent to a lagging follower.
    pub(crate) fn dump(&self) -> (u64, Vec<u8>) {
        // A consistent pair: take the applied index, then the data; the actor is the only writer and does
        // not write while the storage builds a snapshot (both run on the actor).
        let applied = self.applied().unwrap_or(0);
        let mut out = Vec::new();
        for (k, v) in self.tree.scan_prefix([USER]).flatten() {
            out.extend_from_slice(&(k.len() as u32).to_be_bytes());
            out.extend_from_slice(&k);
            out.extend_from_slice(&(v.len() as u32).to_be_bytes());
            out.extend_from_slice(&v);
        }
        (applied, out)
    }

    /// Replaces the whole state with a snapshot's data at `index`.
    pub(crate) fn restore(&self, index: u64, data: &[u8]) -> Result<(), RestoreError> {
        let mut batch = sled::Batch::default();
        for k in self.tree.iter().keys() {
            batch.remove(k?);
        }
        let mut rest = data;
        let take = |rest: &mut &[u8]| -> Result<Vec<u8>, RestoreError> {
            if rest.len() < 4 {
                return Err(RestoreError::Truncated);
            }
            let n = u32::from_be_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
            if rest.len() < 4 + n {
                return Err(RestoreError::Truncated);
            }
            let v = rest[4..4 + n].to_vec();
            *rest = &rest[4 + n..];
            Ok(v)
        };
        while !rest.is_empty() {
            let k = take(&mut rest)?;
            let v = take(&mut rest)?;
            batch.insert(k, v);
        }
        batch.insert(APPLIED, &index.to_be_bytes());
        self.tree.apply_batch(batch)?;
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("snapshot data is truncated")]
    Truncated,
    #[error(transparent)]
    Sled(#[from] sled::Error),
}

impl SnapshotSource for View {
    fn snapshot_data(&self) -> (u64, Vec<u8>) {
        self.dump()
    }
}

/// Snapshot source handed to the raft storage.
pub(crate) fn source(view: &View) -> Arc<dyn SnapshotSource> {
    Arc::new(view.clone())
}

/// The writes of one batch of committed commands, applied atomically with the new applied index.
pub struct Txn<'a> {
    view: &'a View,
    overlay: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl<'a> Txn<'a> {
    pub(crate) fn new(view: &'a View) -> Txn<'a> {
        Txn {
            view,
            overlay: BTreeMap::new(),
        }
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, sled::Error> {
        match self.overlay.get(&user_key(key)) {
            Some(v) => Ok(v.clone()),
            None => Ok(self.view.get(key)?.map(|v| v.to_vec())),
        }
    }

    pub fn insert(&mut self, key: &[u8], value: &[u8]) {
        self.overlay.insert(user_key(key), Some(value.to_vec()));
    }

    pub fn remove(&mut self, key: &[u8]) {
        self.overlay.insert(user_key(key), None);
    }

    /// Keys under a prefix as they will be after this batch (stored keys merged with pending writes).
    pub fn keys_with_prefix(&self, prefix: &[u8]) -> Result<Vec<Vec<u8>>, sled::Error> {
        let p = user_key(prefix);
        let mut keys: BTreeMap<Vec<u8>, bool> = BTreeMap::new();
        for k in self.view.tree.scan_prefix(&p).keys() {
            keys.insert(k?.to_vec(), true);
        }
        for (k, v) in self.overlay.range(p.clone()..) {
            if !k.starts_with(&p) {
                break;
            }
            keys.insert(k.clone(), v.is_some());
        }
        Ok(keys
            .into_iter()
            .filter(|(_, live)| *live)
            .map(|(k, _)| k[1..].to_vec())
            .collect())
    }

    /// Writes everything and the applied index in one atomic sled batch.
    pub(crate) fn commit(self, applied: u64) -> Result<(), sled::Error> {
        let mut batch = sled::Batch::default();
        for (k, v) in self.overlay {
            match v {
                Some(v) => batch.insert(k, v),
                None => batch.remove(k),
            }
        }
        batch.insert(APPLIED, &applied.to_be_bytes());
        self.view.tree().apply_batch(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_txn_reads_its_own_writes_and_commits_with_the_applied_index() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let view = View::open(&db).unwrap();
        let mut t = Txn::new(&view);
        t.insert(b"r/a", b"1");
        t.insert(b"r/b", b"2");
        assert_eq!(t.get(b"r/a").unwrap().as_deref(), Some(&b"1"[..]));
        t.remove(b"r/a");
        assert_eq!(t.get(b"r/a").unwrap(), None);
        assert_eq!(t.keys_with_prefix(b"r/").unwrap(), vec![b"r/b".to_vec()]);
        assert_eq!(view.applied().unwrap(), 0, "nothing visible before commit");
        t.commit(7).unwrap();
        assert_eq!(view.applied().unwrap(), 7);
        assert_eq!(view.get(b"r/b").unwrap().as_deref(), Some(&b"2"[..]));
    }

    #[test]
    fn a_dump_restores_to_the_same_state() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let view = View::open(&db).unwrap();
        let mut t = Txn::new(&view);
        for i in 0..100u32 {
            t.insert(format!("k{i}").as_bytes(), &i.to_be_bytes());
        }
        t.commit(42).unwrap();
        let (applied, data) = view.dump();
        assert_eq!(applied, 42);
        let other_dir = tempfile::tempdir().unwrap();
        let other = View::open(&sled::open(other_dir.path()).unwrap()).unwrap();
        let mut t = Txn::new(&other);
        t.insert(b"stale", b"x");
        t.commit(3).unwrap();
        other.restore(applied, &data).unwrap();
        assert_eq!(other.applied().unwrap(), 42);
        assert_eq!(other.get(b"stale").unwrap(), None);
        assert_eq!(other.scan_prefix(b"k").count(), 100);
        assert!(matches!(
            other.restore(1, &data[..data.len() - 1]),
            Err(RestoreError::Truncated)
        ));
    }
}
