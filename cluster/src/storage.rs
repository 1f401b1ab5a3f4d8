//! The raft log, hard state and snapshot marker in one sled tree, implementing raft-rs's `Storage`.
//!
//! Tree `raft`: `e` + index (big-endian) → `Entry`; `m:hs` hard state; `m:snap` index and term of the last
//! compacted entry or installed snapshot; `m:state` which state tree is active (see [`crate::view`]). Every
//! step that changes more than one of these (append with its hard state, compaction, snapshot install) is one
//! sled batch, which sled applies atomically across a crash. The conf state and peer addresses live in the
//! state tree with the applied index, written in the same batch as the entry that changed them.
//!
//! What can still separate two writes (the applied index in the state tree, the commit index here) is
//! reconciled when the log is opened: see [`SledStorage::open`].

use crate::view::{corrupt, Peers, View};
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};
use std::sync::Arc;

const TREE: &str = "raft";
const HARD_STATE: &[u8] = b"m:hs";
const SNAP: &[u8] = b"m:snap";
const ACTIVE: &[u8] = b"m:state";
const ENTRY: u8 = b'e';

/// Freezes the state for a snapshot: its index and the freeze id the snapshot's data names (the data itself
/// is streamed on the snapshot lane, see [`crate::snapshot`]).
pub trait SnapshotSource: Send + Sync {
    /// The frozen index, the freeze id and the conf state as of that index.
    fn freeze(&self, min_index: u64) -> Result<Option<(u64, u64, Option<ConfState>)>, sled::Error>;
}

/// What a new store starts with (ignored when the log exists).
#[derive(Debug, Clone, Default)]
pub struct Bootstrap {
    pub voters: Vec<u64>,
    pub peers: Peers,
}

/// sled-backed raft storage. Writes go through `RawNode::mut_store()`, so only the node actor writes.
pub struct SledStorage {
    tree: sled::Tree,
    /// Index and term of the entry just before the first one in the log (0, 0 when nothing was compacted).
    snap_index: u64,
    snap_term: u64,
    last_index: u64,
    hard_state: HardState,
    conf_state: ConfState,
    source: Option<Arc<dyn SnapshotSource>>,
}

fn key(index: u64) -> [u8; 9] {
    let mut k = [ENTRY; 9];
    k[1..].copy_from_slice(&index.to_be_bytes());
    k
}

fn index_of(k: &[u8]) -> Option<u64> {
    match k {
        [ENTRY, rest @ ..] => rest.try_into().ok().map(u64::from_be_bytes),
        _ => None,
    }
}

fn store_err(e: impl std::fmt::Display) -> raft::Error {
    raft::Error::Store(StorageError::Other(e.to_string().into()))
}

fn decode<M: protobuf::Message>(bytes: &[u8]) -> raft::Result<M> {
    M::parse_from_bytes(bytes).map_err(store_err)
}

fn encode(m: &impl protobuf::Message, what: &str) -> Result<Vec<u8>, sled::Error> {
    m.write_to_bytes().map_err(|e| corrupt(what, e))
}

fn snap_value(index: u64, term: u64) -> [u8; 16] {
    let mut v = [0; 16];
    v[..8].copy_from_slice(&index.to_be_bytes());
    v[8..].copy_from_slice(&term.to_be_bytes());
    v
}

impl SledStorage {
    /// Opens (or creates) the log and the state in `db`, and reconciles what a crash between two writes can
    /// leave:
    /// - a commit index below the applied index (applied batch written, commit not yet): raised to it;
    /// - a commit index beyond the last entry: lowered to it (the leader tells the commit again);
    /// - entries at or below the snapshot marker: removed; a gap in the log: the log ends before it.
    ///
    /// A state that is behind the log's start, or ahead of its end, cannot be repaired here: that is an error.
    pub fn open(db: &sled::Db, bootstrap: &Bootstrap) -> Result<(SledStorage, View), sled::Error> {
        let tree = db.open_tree(TREE)?;
        crate::legacy::migrate(db, &tree)?;
        let active = match tree.get(ACTIVE)? {
            Some(v) if v.len() == 1 => v[0] as usize,
            Some(_) => return Err(corrupt("active state tree", "not one byte")),
            None => 0,
        };
        let view = View::open(db, active)?;
        let mut hard_state = match tree.get(HARD_STATE)? {
            Some(b) => HardState::parse_from_bytes(&b).map_err(|e| corrupt("hard state", e))?,
            None => HardState::default(),
        };
        let (snap_index, snap_term) = match tree.get(SNAP)? {
            Some(b) if b.len() == 16 => (
                u64::from_be_bytes(b[..8].try_into().expect("8 bytes")),
                u64::from_be_bytes(b[8..].try_into().expect("8 bytes")),
            ),
            Some(_) => return Err(corrupt("snapshot marker", "not 16 bytes")),
            None => (0, 0),
        };
        // Entries the marker covers (none after an atomic compaction; tolerated all the same).
        let mut batch = sled::Batch::default();
        let mut stale = 0;
        for k in tree.range(key(0)..=key(snap_index)).keys() {
            batch.remove(k?);
            stale += 1;
        }
        // The log must be contiguous after the marker.
        let mut last_index = snap_index;
        let mut gap = None;
        for k in tree.range(key(snap_index + 1)..=key(u64::MAX)).keys() {
            let i = index_of(&k?).ok_or_else(|| corrupt("log", "bad entry key"))?;
            if gap.is_none() && i == last_index + 1 {
                last_index = i;
            } else {
                gap.get_or_insert(last_index + 1);
                batch.remove(&key(i));
            }
        }
        if let Some(at) = gap {
            tracing::warn!(
                at,
                last_index,
                "raft log has a gap; entries after it dropped"
            );
        }
        if stale > 0 || gap.is_some() {
            tree.apply_batch(batch)?;
        }
        let applied = view.applied()?;
        if applied > last_index || (applied < snap_index && applied != 0) {
            return Err(corrupt(
                "state",
                format!(
                    "applied index {applied} is outside the log [{}, {last_index}]",
                    snap_index
                ),
            ));
        }
        let commit = hard_state.commit.max(applied).min(last_index);
        if commit != hard_state.commit {
            tracing::info!(
                from = hard_state.commit,
                to = commit,
                "commit index reconciled with the log and the applied index"
            );
            hard_state.commit = commit;
            tree.insert(HARD_STATE, encode(&hard_state, "hard state")?)?;
        }
        let conf_state = match view.conf_state()? {
            Some(cs) => cs,
            None => {
                let cs = ConfState::from((bootstrap.voters.clone(), Vec::<u64>::new()));
                let new = last_index == 0 && applied == 0 && hard_state == HardState::default();
                if new && !bootstrap.voters.is_empty() {
                    view.bootstrap(&cs, &bootstrap.peers)?;
                }
                cs
            }
        };
        Ok((
            SledStorage {
                tree,
                snap_index,
                snap_term,
                last_index,
                hard_state,
                conf_state,
                source: None,
            },
            view,
        ))
    }

    pub fn set_snapshot_source(&mut self, source: Arc<dyn SnapshotSource>) {
        self.source = Some(source);
    }

    /// Appends entries (removing any stored entry at or after the first new one) and sets the hard state, in
    /// one atomic write.
    pub fn persist(
        &mut self,
        entries: &[Entry],
        hs: Option<&HardState>,
    ) -> Result<(), sled::Error> {
        let mut batch = sled::Batch::default();
        if let Some(first) = entries.first() {
            if first.index <= self.last_index {
                for k in self.tree.range(key(first.index)..=key(u64::MAX)).keys() {
                    batch.remove(k?);
                }
            }
            for e in entries {
                batch.insert(&key(e.index), encode(e, "entry")?);
            }
        }
        if let Some(hs) = hs {
            batch.insert(HARD_STATE, encode(hs, "hard state")?);
        }
        self.tree.apply_batch(batch)?;
        if let Some(last) = entries.last() {
            self.last_index = last.index;
        }
        if let Some(hs) = hs {
            self.hard_state = hs.clone();
        }
        Ok(())
    }

    /// Raises the stored commit index (raft requires commit ≥ applied on restart).
    pub fn set_commit(&mut self, commit: u64) -> Result<(), sled::Error> {
        if commit > self.hard_state.commit {
            let mut hs = self.hard_state.clone();
            hs.commit = commit;
            self.persist(&[], Some(&hs))?;
        }
        Ok(())
    }

    /// The conf state in memory (the state tree stores it with the applied index of its entry).
    pub fn set_conf_state(&mut self, cs: &ConfState) {
        self.conf_state = cs.clone();
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// Drops entries up to and including `index` (already applied and covered by the state machine) and moves
    /// the snapshot marker, in one atomic write.
    pub fn compact(&mut self, index: u64) -> Result<(), sled::Error> {
        if index <= self.snap_index || index > self.last_index {
            return Ok(());
        }
        let term = self.term(index).map_err(|e| corrupt("log", e))?;
        let mut batch = sled::Batch::default();
        for k in self.tree.range(key(0)..=key(index)).keys() {
            batch.remove(k?);
        }
        batch.insert(SNAP, &snap_value(index, term));
        self.tree.apply_batch(batch)?;
        self.snap_index = index;
        self.snap_term = term;
        Ok(())
    }

    /// Installs a snapshot whose data is restored into state tree `staged`: the log restarts after it, the
    /// commit index reaches it and the staged tree becomes the active one, in one atomic write.
    pub fn install(&mut self, snap: &Snapshot, staged: usize) -> Result<(), sled::Error> {
        let m = snap.get_metadata();
        let mut batch = sled::Batch::default();
        for k in self.tree.range(key(0)..=key(u64::MAX)).keys() {
            batch.remove(k?);
        }
        batch.insert(SNAP, &snap_value(m.index, m.term));
        let mut hs = self.hard_state.clone();
        hs.term = hs.term.max(m.term);
        hs.commit = hs.commit.max(m.index);
        batch.insert(HARD_STATE, encode(&hs, "hard state")?);
        batch.insert(ACTIVE, &[staged as u8]);
        self.tree.apply_batch(batch)?;
        self.snap_index = m.index;
        self.snap_term = m.term;
        self.last_index = m.index;
        self.hard_state = hs;
        self.conf_state = m.get_conf_state().clone();
        Ok(())
    }

    pub fn snap_index(&self) -> u64 {
        self.snap_index
    }

    /// The index to compact to: `want`, raised (up to `applied`) until the entries after it take at most
    /// `cap` bytes.
    pub fn within_cap(&self, want: u64, applied: u64, cap: u64) -> Result<u64, sled::Error> {
        let from = want.max(self.snap_index);
        let mut bytes = 0u64;
        let mut sizes = Vec::new();
        for kv in self.tree.range(key(from + 1)..=key(self.last_index)) {
            let (k, v) = kv?;
            let i = index_of(&k).ok_or_else(|| corrupt("log", "bad entry key"))?;
            bytes += v.len() as u64;
            if i <= applied {
                sizes.push((i, v.len() as u64));
            }
        }
        let mut to = from;
        for (i, size) in sizes {
            if bytes <= cap {
                break;
            }
            bytes -= size;
            to = i;
        }
        Ok(to)
    }

    /// Entries stored (for the log-size metric).
    pub fn len(&self) -> u64 {
        self.last_index - self.snap_index
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
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
        for kv in self.tree.range(key(low)..key(high)) {
            let (k, v) = kv.map_err(store_err)?;
            let e: Entry = decode(&v)?;
            let expected = low + out.len() as u64;
            if index_of(&k) != Some(expected) || e.index != expected {
                return Err(store_err(format!(
                    "raft log is not contiguous: entry {} where {expected} belongs",
                    e.index
                )));
            }
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
        if max.is_none() && out.len() as u64 != high - low {
            return Err(store_err(format!(
                "raft log is not contiguous: {} entries in [{low}, {high})",
                out.len()
            )));
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
        match self.tree.get(key(idx)).map_err(store_err)? {
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
        // At least what the log no longer has: a follower installing it continues from our first entry.
        let Some((index, id, conf)) = source
            .freeze(request_index.max(self.snap_index))
            .map_err(store_err)?
        else {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        };
        let mut snap = Snapshot {
            data: crate::snapshot::descriptor(id).into(),
            ..Default::default()
        };
        let m = snap.mut_metadata();
        m.index = index;
        m.term = self.term(index)?;
        // The conf state as of the frozen index (stored with it), not the one in memory now.
        m.set_conf_state(conf.unwrap_or_else(|| self.conf_state.clone()));
        Ok(snap)
    }
}

#[cfg(test)]
#[path = "storage_tests.rs"]
mod tests;
