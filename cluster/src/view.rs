//! The applied state as sled trees: what the broker reads ([`View`]), the reserved records the raft layer keeps
//! beside it (applied index, conf state, peer addresses), and the staging of a snapshot being installed.
//!
//! The state lives in one of two trees, `state` and `state.1`; the raft tree records which one is active. A
//! snapshot is restored into the other one in bounded batches while the active one keeps serving reads, then
//! one atomic write of the raft tree makes it active (see [`crate::storage::SledStorage::install`]). A crash at
//! any point leaves either the old state with its log or the new state with its snapshot marker, never a mix.

use crate::freeze::{Freezer, Frozen};
use protobuf::Message as _;
use raft::eraftpb::ConfState;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Key of the applied index; user keys are stored after a `0x01` prefix so they can never collide with it.
pub(crate) const APPLIED: &[u8] = b"\x00applied";
/// The conf state as of the applied index (written with it, so a crash never separates them).
pub(crate) const CONF: &[u8] = b"\x00conf";
/// Peer addresses of the members (id → address), replicated like the conf state.
pub(crate) const PEERS: &[u8] = b"\x00peers";
pub(crate) const USER: u8 = 0x01;
const TREES: [&str; 2] = ["state", "state.1"];
/// A staging batch is written once it holds this many bytes. Small on purpose: sled holds far more memory
/// per large batch than per small one (200,000 records of 100 B: 238 MiB peak in 256 KiB batches, 64 MiB in
/// 32 KiB ones).
const STAGING_BATCH: usize = 32 << 10;
/// How long the replaced state stays readable after a switch (for readers iterating it) before it is cleared.
const CLEAR_DELAY: std::time::Duration = std::time::Duration::from_secs(5);
/// Restored bytes between two flushes.
const STAGING_FLUSH: usize = 16 << 20;

/// Member id → peer address.
pub type Peers = BTreeMap<u64, String>;

pub(crate) fn user_key(k: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(k.len() + 1);
    v.push(USER);
    v.extend_from_slice(k);
    v
}

pub(crate) fn encode_peers(peers: &Peers) -> Vec<u8> {
    let mut out = Vec::new();
    for (id, addr) in peers {
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&(addr.len() as u16).to_be_bytes());
        out.extend_from_slice(addr.as_bytes());
    }
    out
}

pub(crate) fn decode_peers(mut b: &[u8]) -> Option<Peers> {
    let mut peers = Peers::new();
    while !b.is_empty() {
        if b.len() < 10 {
            return None;
        }
        let id = u64::from_be_bytes(b[..8].try_into().ok()?);
        let n = u16::from_be_bytes(b[8..10].try_into().ok()?) as usize;
        let addr = std::str::from_utf8(b.get(10..10 + n)?).ok()?;
        peers.insert(id, addr.to_string());
        b = &b[10 + n..];
    }
    Some(peers)
}

/// Read access to the applied state.
#[derive(Clone)]
pub struct View {
    inner: Arc<Inner>,
}

struct Inner {
    trees: [sled::Tree; 2],
    active: AtomicUsize,
    freezer: Arc<Freezer>,
    /// Counts stagings: an install checks that the tree it switches to is still the one it staged.
    stage_gen: std::sync::atomic::AtomicU64,
    /// One snapshot transfer stages at a time (held from its first chunk until the node installed it).
    staging_permit: Arc<tokio::sync::Semaphore>,
    /// Held while the inactive tree is cleared or staged into.
    staging: Mutex<()>,
}

impl View {
    pub(crate) fn open(db: &sled::Db, active: usize) -> Result<View, sled::Error> {
        Ok(View {
            inner: Arc::new(Inner {
                trees: [db.open_tree(TREES[0])?, db.open_tree(TREES[1])?],
                active: AtomicUsize::new(active & 1),
                freezer: Arc::new(Freezer::open(db)?),
                stage_gen: std::sync::atomic::AtomicU64::new(0),
                staging_permit: Arc::new(tokio::sync::Semaphore::new(1)),
                staging: Mutex::new(()),
            }),
        })
    }

    pub(crate) fn tree(&self) -> &sled::Tree {
        &self.inner.trees[self.active()]
    }

    pub(crate) fn active(&self) -> usize {
        self.inner.active.load(Ordering::Acquire)
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<sled::IVec>, sled::Error> {
        self.tree().get(user_key(key))
    }

    /// Keys and values under a prefix, in key order (the prefix is part of the returned key).
    pub fn scan_prefix(
        &self,
        prefix: &[u8],
    ) -> impl Iterator<Item = Result<(Vec<u8>, sled::IVec), sled::Error>> {
        self.tree()
            .scan_prefix(user_key(prefix))
            .map(|r| r.map(|(k, v)| (k[1..].to_vec(), v)))
    }

    /// Keys and values in `[from, to)`, in key order, from either end.
    pub fn range(
        &self,
        from: &[u8],
        to: &[u8],
    ) -> impl DoubleEndedIterator<Item = Result<(Vec<u8>, sled::IVec), sled::Error>> {
        self.tree()
            .range(user_key(from)..user_key(to))
            .map(|r| r.map(|(k, v)| (k[1..].to_vec(), v)))
    }

    /// The index of the last applied entry (0 for a new store).
    pub fn applied(&self) -> Result<u64, sled::Error> {
        Ok(match self.tree().get(APPLIED)? {
            Some(v) if v.len() == 8 => u64::from_be_bytes(v.as_ref().try_into().expect("8 bytes")),
            _ => 0,
        })
    }

    /// The conf state stored with the applied index (`None` for a store that never had one).
    pub(crate) fn conf_state(&self) -> Result<Option<ConfState>, sled::Error> {
        match self.tree().get(CONF)? {
            Some(b) => ConfState::parse_from_bytes(&b)
                .map(Some)
                .map_err(|e| corrupt("conf state", e)),
            None => Ok(None),
        }
    }

    /// The members' peer addresses as replicated.
    pub fn peers(&self) -> Result<Peers, sled::Error> {
        match self.tree().get(PEERS)? {
            Some(b) => decode_peers(&b).ok_or_else(|| corrupt("peer addresses", "undecodable")),
            None => Ok(Peers::new()),
        }
    }

    /// Records the membership of a new store (before any entry is applied).
    pub(crate) fn bootstrap(&self, cs: &ConfState, peers: &Peers) -> Result<(), sled::Error> {
        let mut batch = sled::Batch::default();
        batch.insert(
            CONF,
            cs.write_to_bytes().map_err(|e| corrupt("conf state", e))?,
        );
        batch.insert(PEERS, encode_peers(peers));
        self.tree().apply_batch(batch)
    }

    /// A point-in-time view of the current state (at least `min_index`) for a snapshot, or `None` while an
    /// older one is still being streamed. Called on the node actor, between two applies.
    pub(crate) fn freeze(&self, min_index: u64) -> Result<Option<Arc<Frozen>>, sled::Error> {
        self.inner
            .freezer
            .freeze(self.tree(), self.applied()?, min_index)
    }

    /// Whether `staged` is still what the inactive tree holds at `index` (no later staging cleared it).
    pub(crate) fn is_staged(&self, staged: Staged, index: u64) -> Result<bool, sled::Error> {
        if staged.gen != self.inner.stage_gen.load(Ordering::Acquire)
            || staged.tree != 1 - self.active()
        {
            return Ok(false);
        }
        let applied = self.inner.trees[staged.tree].get(APPLIED)?;
        Ok(applied.as_deref() == Some(&index.to_be_bytes()[..]))
    }

    /// The right to stage a streamed snapshot (one at a time).
    pub(crate) fn staging_permit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.inner.staging_permit.clone().try_acquire_owned().ok()
    }

    pub(crate) fn freezer(&self) -> &Arc<Freezer> {
        &self.inner.freezer
    }

    /// Starts restoring a snapshot into the inactive tree (cleared first; what a crashed install left there is
    /// never read).
    pub(crate) fn stage(&self) -> Result<Staging, sled::Error> {
        self.inner.freezer.cancel();
        let index = 1 - self.active();
        let tree = self.inner.trees[index].clone();
        // Under the lock: a pending clear of this tree (from the last switch) sees the new generation and
        // leaves what this staging writes alone.
        let gen = {
            let _g = self.inner.staging.lock().unwrap_or_else(|e| e.into_inner());
            let gen = self.inner.stage_gen.fetch_add(1, Ordering::AcqRel) + 1;
            tree.clear()?;
            gen
        };
        Ok(Staging {
            tree,
            index,
            gen,
            batch: sled::Batch::default(),
            bytes: 0,
            unflushed: 0,
            records: 0,
        })
    }

    /// Makes the staged tree the one reads see (after the raft tree recorded it), and clears the old one in
    /// the background.
    pub(crate) fn switch(&self, to: usize) {
        let Some(clear) = self.switch_now(to) else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                // Later, so a reader still iterating the replaced state finishes first.
                rt.spawn(async move {
                    tokio::time::sleep(CLEAR_DELAY).await;
                    let _ = tokio::task::spawn_blocking(clear).await;
                });
            }
            Err(_) => clear(),
        }
    }

    /// Switches, and returns the clear of the replaced tree for the caller to run when it likes.
    fn switch_now(&self, to: usize) -> Option<impl FnOnce() + Send + 'static> {
        self.inner.freezer.cancel();
        let old = self.inner.active.swap(to & 1, Ordering::AcqRel);
        if old == to & 1 {
            return None;
        }
        // Weak: a node that stops meanwhile releases its store at once (the clear is skipped).
        let weak = Arc::downgrade(&self.inner);
        let gen = self.inner.stage_gen.load(Ordering::Acquire);
        Some(move || {
            let Some(inner) = weak.upgrade() else { return };
            let _g = inner.staging.lock().unwrap_or_else(|e| e.into_inner());
            // Only while no staging has begun since (it cleared the tree itself and is writing into it) and
            // the tree is still the inactive one.
            let active = inner.active.load(Ordering::Acquire);
            if inner.stage_gen.load(Ordering::Acquire) == gen && active != old {
                if let Err(e) = inner.trees[old].clear() {
                    tracing::warn!(error = %e, "clearing the replaced state failed (done at the next install)");
                }
            }
        })
    }
}

/// A restored snapshot waiting for its switch: the tree and the staging that filled it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Staged {
    pub tree: usize,
    pub gen: u64,
}

/// A snapshot being restored into the inactive state tree, in bounded batches.
pub(crate) struct Staging {
    tree: sled::Tree,
    index: usize,
    gen: u64,
    batch: sled::Batch,
    bytes: usize,
    unflushed: usize,
    records: u64,
}

impl Staging {
    /// Adds records in the [`put_record`] format (any number of calls, each a whole number of records).
    pub(crate) fn put_records(&mut self, mut data: &[u8]) -> Result<(), RestoreError> {
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
        while !data.is_empty() {
            let k = take(&mut data)?;
            let v = take(&mut data)?;
            if k.as_slice() == APPLIED {
                continue;
            }
            self.bytes += k.len() + v.len();
            self.records += 1;
            self.batch.insert(k, v);
            if self.bytes >= STAGING_BATCH {
                self.tree.apply_batch(std::mem::take(&mut self.batch))?;
                self.unflushed += self.bytes;
                self.bytes = 0;
                // sled keeps written pages in memory until they are flushed: flushing as the restore goes
                // bounds what a large snapshot costs in memory.
                if self.unflushed >= STAGING_FLUSH {
                    self.tree.flush()?;
                    self.unflushed = 0;
                }
            }
        }
        Ok(())
    }

    /// Writes the rest with the applied index and conf state; returns what the switch needs.
    pub(crate) fn finish(mut self, applied: u64, cs: &ConfState) -> Result<Staged, RestoreError> {
        self.batch.insert(APPLIED, &applied.to_be_bytes());
        self.batch.insert(
            CONF,
            cs.write_to_bytes()
                .map_err(|e| RestoreError::Sled(corrupt("conf state", e)))?,
        );
        self.tree.apply_batch(std::mem::take(&mut self.batch))?;
        Ok(Staged {
            tree: self.index,
            gen: self.gen,
        })
    }

    pub(crate) fn records(&self) -> u64 {
        self.records
    }
}

impl crate::storage::SnapshotSource for View {
    fn freeze(&self, min_index: u64) -> Result<Option<(u64, u64, Option<ConfState>)>, sled::Error> {
        let Some(f) = View::freeze(self, min_index)? else {
            return Ok(None);
        };
        let conf = match f.get(CONF)? {
            Some(b) => Some(ConfState::parse_from_bytes(&b).map_err(|e| corrupt("conf state", e))?),
            None => None,
        };
        Ok(Some((f.index, f.id, conf)))
    }
}

/// Snapshot source handed to the raft storage.
pub(crate) fn source(view: &View) -> Arc<dyn crate::storage::SnapshotSource> {
    Arc::new(view.clone())
}

/// Encodes records in the format [`Staging::put_records`] reads.
pub(crate) fn put_record(out: &mut Vec<u8>, k: &[u8], v: &[u8]) {
    out.extend_from_slice(&(k.len() as u32).to_be_bytes());
    out.extend_from_slice(k);
    out.extend_from_slice(&(v.len() as u32).to_be_bytes());
    out.extend_from_slice(v);
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("snapshot data is truncated")]
    Truncated,
    #[error(transparent)]
    Sled(#[from] sled::Error),
}

pub(crate) fn corrupt(what: &str, e: impl std::fmt::Display) -> sled::Error {
    sled::Error::Unsupported(format!("corrupt raft storage: {what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::Txn;

    #[test]
    fn a_dump_restores_into_the_other_tree_and_the_switch_replaces_the_state() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let view = View::open(&db, 0).unwrap();
        let mut peers = Peers::new();
        peers.insert(1, "127.0.0.1:1".into());
        peers.insert(2, "[::1]:2".into());
        view.bootstrap(&ConfState::from((vec![1, 2], vec![])), &peers)
            .unwrap();
        let mut t = Txn::new(&view);
        for i in 0..100u32 {
            t.insert(format!("k{i}").as_bytes(), &i.to_be_bytes());
        }
        t.commit(42).unwrap();
        let f = view.freeze(0).unwrap().unwrap();
        let applied = f.index;
        assert_eq!(applied, 42);
        let mut data = Vec::new();
        assert!(f
            .for_each_record(|k, v| {
                put_record(&mut data, k, v);
                true
            })
            .unwrap());

        let other_dir = tempfile::tempdir().unwrap();
        let other = View::open(&sled::open(other_dir.path()).unwrap(), 0).unwrap();
        let mut t = Txn::new(&other);
        t.insert(b"stale", b"x");
        t.commit(3).unwrap();
        let mut staging = other.stage().unwrap();
        // In two calls, as chunks arrive.
        let half = {
            let mut at = 0;
            for _ in 0..50 {
                let k = u32::from_be_bytes(data[at..at + 4].try_into().unwrap()) as usize;
                at += 4 + k;
                let v = u32::from_be_bytes(data[at..at + 4].try_into().unwrap()) as usize;
                at += 4 + v;
            }
            at
        };
        staging.put_records(&data[..half]).unwrap();
        staging.put_records(&data[half..]).unwrap();
        assert_eq!(
            other.applied().unwrap(),
            3,
            "reads see the old state while staging"
        );
        let to = staging
            .finish(applied, &ConfState::from((vec![1, 2], vec![])))
            .unwrap();
        other.switch(to.tree);
        assert_eq!(other.applied().unwrap(), 42);
        assert_eq!(other.get(b"stale").unwrap(), None);
        assert_eq!(other.scan_prefix(b"k").count(), 100);
        assert_eq!(other.peers().unwrap(), peers);
        assert_eq!(other.conf_state().unwrap().unwrap().voters, vec![1, 2]);

        let mut staging = other.stage().unwrap();
        assert!(matches!(
            staging.put_records(&data[..data.len() - 1]),
            Err(RestoreError::Truncated)
        ));
    }

    /// The clear of the tree a switch replaced runs late; a staging that began meanwhile (into that same
    /// tree) keeps what it wrote.
    #[test]
    fn a_late_clear_of_the_replaced_state_spares_a_new_staging() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let view = View::open(&db, 0).unwrap();
        let mut t = Txn::new(&view);
        t.insert(b"old", b"1");
        t.commit(1).unwrap();
        let cs = ConfState::from((vec![1], vec![]));
        let first = view.stage().unwrap().finish(10, &cs).unwrap();
        let clear = view.switch_now(first.tree).unwrap();
        // A new snapshot stages into tree 0 (the replaced one) before its clear has run.
        let mut staging = view.stage().unwrap();
        let mut data = Vec::new();
        put_record(&mut data, &user_key(b"new"), b"2");
        // Past a staging batch, so some of it is written before the clear runs.
        for i in 0..1000u32 {
            put_record(
                &mut data,
                &user_key(format!("n{i:04}").as_bytes()),
                &[7; 100],
            );
        }
        staging.put_records(&data).unwrap();
        clear();
        let second = staging.finish(20, &cs).unwrap();
        assert!(view.is_staged(second, 20).unwrap());
        view.switch(second.tree);
        assert_eq!(view.get(b"new").unwrap().as_deref(), Some(&b"2"[..]));
        assert_eq!(view.scan_prefix(b"n").count(), 1001);
        assert_eq!(view.applied().unwrap(), 20);
    }

    #[test]
    fn peer_addresses_round_trip_and_garbage_is_refused() {
        let mut p = Peers::new();
        p.insert(7, "node7.example:7070".into());
        assert_eq!(decode_peers(&encode_peers(&p)), Some(p));
        assert_eq!(decode_peers(&[0, 0, 0]), None);
    }
}
