//! The raft log, hard state, conf state and snapshot marker in sled, implementing raft-rs's `Storage`.
//!
//! Trees: `raft_log` (index, big-endian → `Entry`), `raft_meta` (`hs`, `cs`, `snap` = index and term of the last
//! compacted entry or installed snapshot). The state machine lives in its own tree (see [`crate::machine`]);
//! `snapshot()` reads it through [`SnapshotSource`].

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};
use std::sync::Arc;

const HARD_STATE: &[u8] = b"hs";
const CONF_STATE: &[u8] = b"cs";
const SNAP: &[u8] = b"snap";

/// Builds snapshot data and tells which index it covers (the state machine's applied index).
pub trait SnapshotSource: Send + Sync {
    fn snapshot_data(&self) -> (u64, Vec<u8>);
}

/// sled-backed raft storage. Writes go through `RawNode::mut_store()`, so only the node actor writes.
pub struct SledStorage {
    log: sled::Tree,
    meta: sled::Tree,
    /// Index and term of the entry just before the first one in `log` (0, 0 when nothing was compacted).
    snap_index: u64,
    snap_term: u64,
    last_index: u64,
    hard_state: HardState,
    conf_state: ConfState,
    source: Option<Arc<dyn SnapshotSource>>,
}

fn key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn store_err(e: impl std::fmt::Display) -> raft::Error {
    raft::Error::Store(StorageError::Other(e.to_string().into()))
}

fn decode<M: protobuf::Message>(bytes: &[u8]) -> raft::Result<M> {
    M::parse_from_bytes(bytes).map_err(store_err)
}

impl SledStorage {
    /// Opens (or creates) the log in `db`. `bootstrap` voters are recorded only when the log is new.
    pub fn open(db: &sled::Db, bootstrap: &[u64]) -> Result<SledStorage, sled::Error> {
        let log = db.open_tree("raft_log")?;
        let meta = db.open_tree("raft_meta")?;
        let hard_state = match meta.get(HARD_STATE)? {
            Some(b) => HardState::parse_from_bytes(&b).map_err(corrupt)?,
            None => HardState::default(),
        };
        let conf_state = match meta.get(CONF_STATE)? {
            Some(b) => ConfState::parse_from_bytes(&b).map_err(corrupt)?,
            None => {
                let cs = ConfState::from((bootstrap.to_vec(), Vec::<u64>::new()));
                if !bootstrap.is_empty() {
                    meta.insert(CONF_STATE, cs.write_to_bytes().map_err(corrupt)?)?;
                }
                cs
            }
        };
        let (snap_index, snap_term) = match meta.get(SNAP)? {
            Some(b) if b.len() == 16 => (
                u64::from_be_bytes(b[..8].try_into().expect("8 bytes")),
                u64::from_be_bytes(b[8..].try_into().expect("8 bytes")),
            ),
            _ => (0, 0),
        };
        let last_index = match log.last()? {
            Some((k, _)) => u64::from_be_bytes(k.as_ref().try_into().map_err(corrupt)?),
            None => snap_index,
        };
        Ok(SledStorage {
            log,
            meta,
            snap_index,
            snap_term,
            last_index,
            hard_state,
            conf_state,
            source: None,
        })
    }

    pub fn set_snapshot_source(&mut self, source: Arc<dyn SnapshotSource>) {
        self.source = Some(source);
    }

    /// Appends entries, first removing any stored entry at or after the first new index.
    pub fn append(&mut self, entries: &[Entry]) -> Result<(), sled::Error> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let mut batch = sled::Batch::default();
        if first.index <= self.last_index {
            for k in self.log.range(key(first.index)..) {
                batch.remove(k?.0);
            }
        }
        for e in entries {
            batch.insert(&key(e.index), e.write_to_bytes().map_err(corrupt)?);
        }
        self.log.apply_batch(batch)?;
        self.last_index = entries.last().expect("not empty").index;
        Ok(())
    }

    pub fn set_hard_state(&mut self, hs: &HardState) -> Result<(), sled::Error> {
        self.meta
            .insert(HARD_STATE, hs.write_to_bytes().map_err(corrupt)?)?;
        self.hard_state = hs.clone();
        Ok(())
    }

    /// Raises the stored commit index (raft requires commit ≥ applied on restart).
    pub fn set_commit(&mut self, commit: u64) -> Result<(), sled::Error> {
        if commit > self.hard_state.commit {
            let mut hs = self.hard_state.clone();
            hs.commit = commit;
            self.set_hard_state(&hs)?;
        }
        Ok(())
    }

    pub fn set_conf_state(&mut self, cs: &ConfState) -> Result<(), sled::Error> {
        self.meta
            .insert(CONF_STATE, cs.write_to_bytes().map_err(corrupt)?)?;
        self.conf_state = cs.clone();
        Ok(())
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// Drops entries up to and including `index` (already applied and covered by the state machine).
    pub fn compact(&mut self, index: u64) -> Result<(), sled::Error> {
        if index <= self.snap_index || index > self.last_index {
            return Ok(());
        }
        let term = self.term(index).map_err(|e| corrupt(e.to_string()))?;
        let mut batch = sled::Batch::default();
        for k in self.log.range(..=key(index)) {
            batch.remove(k?.0);
        }
        self.log.apply_batch(batch)?;
        self.set_snap(index, term)
    }

    fn set_snap(&mut self, index: u64, term: u64) -> Result<(), sled::Error> {
        let mut v = index.to_be_bytes().to_vec();
        v.extend_from_slice(&term.to_be_bytes());
        self.meta.insert(SNAP, v)?;
        self.snap_index = index;
        self.snap_term = term;
        Ok(())
    }

    /// Installs a snapshot's metadata: the log restarts after it (the state machine installs the data).
    pub fn apply_snapshot(&mut self, snap: &Snapshot) -> Result<(), sled::Error> {
        let m = snap.get_metadata();
        self.log.clear()?;
        self.last_index = m.index;
        self.set_snap(m.index, m.term)?;
        self.set_conf_state(m.get_conf_state())?;
        let mut hs = self.hard_state.clone();
        hs.term = hs.term.max(m.term);
        hs.commit = hs.commit.max(m.index);
        self.set_hard_state(&hs)
    }

    /// Entries stored (for the log-size metric).
    pub fn len(&self) -> u64 {
        self.last_index - self.snap_index
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn corrupt(e: impl std::fmt::Display) -> sled::Error {
    sled::Error::Unsupported(format!("corrupt raft storage: {e}"))
}

impl Storage for SledStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState {
            hard_state: self.hard_state.clone(),
            conf_state: self.conf_state.clone(),
        })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.snap_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last_index + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let max = max_size.into();
        let mut out = Vec::with_capacity((high - low) as usize);
        let mut size = 0u64;
        for kv in self.log.range(key(low)..key(high)) {
            let (_, v) = kv.map_err(store_err)?;
            let e: Entry = decode(&v)?;
            size += u64::from(e.compute_size());
            // At least one entry, then stop before the size limit.
            if !out.is_empty() && max.is_some_and(|m| size > m) {
                break;
            }
            out.push(e);
        }
        if out.is_empty() && low < high {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.snap_index {
            return Ok(self.snap_term);
        }
        if idx < self.snap_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last_index {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        match self.log.get(key(idx)).map_err(store_err)? {
            Some(v) => Ok(decode::<Entry>(&v)?.term),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.snap_index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index)
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let Some(source) = &self.source else {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        };
        let (applied, data) = source.snapshot_data();
        if applied < request_index || applied < self.snap_index {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let mut snap = Snapshot {
            data: data.into(),
            ..Default::default()
        };
        let m = snap.mut_metadata();
        m.index = applied;
        m.term = self.term(applied)?;
        m.set_conf_state(self.conf_state.clone());
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: format!("e{index}").into_bytes().into(),
            ..Default::default()
        }
    }

    fn all(s: &SledStorage) -> Vec<(u64, u64)> {
        s.entries(
            s.first_index().unwrap(),
            s.last_index().unwrap() + 1,
            None,
            GetEntriesContext::empty(false),
        )
        .unwrap()
        .iter()
        .map(|e| (e.index, e.term))
        .collect()
    }

    #[test]
    fn append_truncates_conflicting_suffix_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let mut s = SledStorage::open(&db, &[1, 2, 3]).unwrap();
        assert_eq!(s.initial_state().unwrap().conf_state.voters, vec![1, 2, 3]);
        s.append(&(1..=5).map(|i| entry(i, 1)).collect::<Vec<_>>())
            .unwrap();
        s.append(&[entry(4, 2)]).unwrap();
        assert_eq!(all(&s), vec![(1, 1), (2, 1), (3, 1), (4, 2)]);
        let hs = HardState {
            term: 2,
            commit: 3,
            ..Default::default()
        };
        s.set_hard_state(&hs).unwrap();
        drop(s);
        let s = SledStorage::open(&db, &[9]).unwrap();
        assert_eq!(s.last_index().unwrap(), 4);
        assert_eq!(s.initial_state().unwrap().hard_state.commit, 3);
        assert_eq!(
            s.initial_state().unwrap().conf_state.voters,
            vec![1, 2, 3],
            "bootstrap voters only for a new log"
        );
    }

    #[test]
    fn compaction_keeps_the_term_of_the_last_compacted_entry() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let mut s = SledStorage::open(&db, &[1]).unwrap();
        s.append(&(1..=10).map(|i| entry(i, i / 4 + 1)).collect::<Vec<_>>())
            .unwrap();
        s.compact(6).unwrap();
        assert_eq!(s.first_index().unwrap(), 7);
        assert_eq!(s.term(6).unwrap(), 2, "term(first_index - 1) still answers");
        assert!(matches!(
            s.term(5),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        assert!(matches!(
            s.entries(5, 8, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        assert_eq!(all(&s).len(), 4);
        drop(s);
        let s = SledStorage::open(&db, &[1]).unwrap();
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (7, 10));
        assert_eq!(s.term(6).unwrap(), 2);
    }

    #[test]
    fn entries_respect_the_size_limit_but_return_at_least_one() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let mut s = SledStorage::open(&db, &[1]).unwrap();
        s.append(&(1..=10).map(|i| entry(i, 1)).collect::<Vec<_>>())
            .unwrap();
        let one = s
            .entries(1, 11, Some(1), GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(one.len(), 1);
        let size = u64::from(entry(1, 1).compute_size());
        let three = s
            .entries(1, 11, Some(size * 3), GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(three.len(), 3);
    }

    #[test]
    fn installing_a_snapshot_restarts_the_log_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let mut s = SledStorage::open(&db, &[]).unwrap();
        s.append(&(1..=3).map(|i| entry(i, 1)).collect::<Vec<_>>())
            .unwrap();
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = 50;
        snap.mut_metadata().term = 4;
        snap.mut_metadata()
            .set_conf_state(ConfState::from((vec![1, 2, 3], vec![])));
        s.apply_snapshot(&snap).unwrap();
        assert_eq!(
            (s.first_index().unwrap(), s.last_index().unwrap()),
            (51, 50)
        );
        assert_eq!(s.term(50).unwrap(), 4);
        assert_eq!(s.hard_state().commit, 50);
        assert_eq!(s.conf_state().voters, vec![1, 2, 3]);
    }
}
