//! A point-in-time view of the state, for snapshots streamed to followers while this node keeps applying.
//!
//! sled has no read snapshots, so a freeze keeps pre-images: from the moment of the freeze (between two applies,
//! on the node actor), every batch that changes a key first records the key's value at the freeze in the
//! `snap_pre` tree (the value, or "absent"), once per key, before the batch itself is written. A reader then
//! sees the frozen state as: for a key with a pre-image, the pre-image; otherwise the live value (unchanged
//! since the freeze). Keys deleted since the freeze are only in the pre-images, so the reader ends with a pass
//! over them; a key it emits twice has the same value both times.
//!
//! The cost falls on applies only while a freeze is held, and is one lookup per written key plus one write
//! the first time. A freeze is released when its last stream ends or it has been idle; a state switch (an
//! installed snapshot) cancels it, and a reader checks for that before it reports its data complete.

use crate::view::APPLIED;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PRESENT: u8 = 1;
const ABSENT: u8 = 0;

/// The state as it was at `index`.
pub struct Frozen {
    pub id: u64,
    pub index: u64,
    tree: sled::Tree,
    pre: sled::Tree,
    cancelled: AtomicBool,
    streams: AtomicUsize,
    idle_since: Mutex<Instant>,
}

impl Frozen {
    pub fn cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// One record as it was at the freeze.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, sled::Error> {
        let live = self.tree.get(key)?;
        Ok(match self.pre.get(key)? {
            Some(p) if p.first() == Some(&PRESENT) => Some(p[1..].to_vec()),
            Some(_) => None,
            None => live.map(|v| v.to_vec()),
        })
    }

    /// Calls `f` with every record of the frozen state but the applied index (some twice, with equal
    /// values). Returns `false` when `f` stopped it or the freeze was cancelled: the data is then incomplete.
    pub fn for_each_record(
        &self,
        mut f: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<bool, sled::Error> {
        for kv in self.tree.iter() {
            let (k, v) = kv?;
            if k.as_ref() == APPLIED {
                continue;
            }
            // The live value first, then the pre-image: a change between the two reads wrote its pre-image
            // before the value, so the second read sees it.
            let keep = match self.pre.get(&k)? {
                Some(p) if p.first() == Some(&PRESENT) => f(&k, &p[1..]),
                Some(_) => true,
                None => f(&k, &v),
            };
            if !keep || self.cancelled() {
                return Ok(false);
            }
        }
        for kv in self.pre.iter() {
            let (k, p) = kv?;
            if p.first() == Some(&PRESENT) && k.as_ref() != APPLIED && !f(&k, &p[1..]) {
                return Ok(false);
            }
        }
        Ok(!self.cancelled())
    }
}

pub struct StreamGuard {
    frozen: Arc<Frozen>,
    freezer: Arc<Freezer>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        // Under the freezer's lock, like the increment: a stream starting now either sees the freeze released
        // or keeps it.
        let mut cur = self.freezer.lock();
        *self
            .frozen
            .idle_since
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Instant::now();
        if self.frozen.streams.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The last stream: released (a later request freezes the state anew).
            if let Some(f) = cur.take_if(|f| f.id == self.frozen.id) {
                f.cancelled.store(true, Ordering::Release);
                if let Err(e) = self.freezer.pre.clear() {
                    tracing::warn!(error = %e, "snapshot pre-images not cleared");
                }
            }
        }
    }
}

/// Holds at most one freeze of a state.
pub struct Freezer {
    current: Mutex<Option<Arc<Frozen>>>,
    pre: sled::Tree,
    next_id: AtomicU64,
}

impl Freezer {
    pub(crate) fn open(db: &sled::Db) -> Result<Freezer, sled::Error> {
        let pre = db.open_tree("snap_pre")?;
        // Pre-images of a freeze held when the process ended mean nothing now.
        pre.clear()?;
        Ok(Freezer {
            current: Mutex::new(None),
            pre,
            next_id: AtomicU64::new(1),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Arc<Frozen>>> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The held freeze if it covers at least `min_index`; otherwise a new one of `tree` at `applied` (which
    /// must be the state between two applies), unless the held one is still being streamed (`None`).
    pub(crate) fn freeze(
        &self,
        tree: &sled::Tree,
        applied: u64,
        min_index: u64,
    ) -> Result<Option<Arc<Frozen>>, sled::Error> {
        let mut cur = self.lock();
        if let Some(f) = cur.as_ref() {
            if f.index >= min_index && !f.cancelled() {
                // Wanted again: not idle (a stream for it is about to start).
                *f.idle_since.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
                return Ok(Some(f.clone()));
            }
            if f.streams.load(Ordering::Acquire) > 0 {
                return Ok(None);
            }
            f.cancelled.store(true, Ordering::Release);
        }
        self.pre.clear()?;
        let f = Arc::new(Frozen {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            index: applied,
            tree: tree.clone(),
            pre: self.pre.clone(),
            cancelled: AtomicBool::new(false),
            streams: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
        });
        *cur = Some(f.clone());
        Ok(Some(f))
    }

    /// Starts a stream of freeze `id` if it is still held: the guard keeps it until the stream ends.
    pub(crate) fn stream(self: &Arc<Self>, id: u64) -> Option<(Arc<Frozen>, StreamGuard)> {
        let cur = self.lock();
        let f = cur
            .as_ref()
            .filter(|f| f.id == id && !f.cancelled())?
            .clone();
        f.streams.fetch_add(1, Ordering::AcqRel);
        let guard = StreamGuard {
            frozen: f.clone(),
            freezer: self.clone(),
        };
        Some((f, guard))
    }

    /// Records the frozen values of `keys` before a batch changes them (a no-op without a freeze).
    pub(crate) fn preserve<'a>(
        &self,
        live: &sled::Tree,
        keys: impl Iterator<Item = &'a [u8]>,
    ) -> Result<(), sled::Error> {
        let cur = self.lock();
        let Some(f) = cur.as_ref() else {
            return Ok(());
        };
        let mut batch = sled::Batch::default();
        let mut any = false;
        let mut seen = BTreeMap::new();
        for k in keys {
            if k == APPLIED || seen.insert(k, ()).is_some() || f.pre.contains_key(k)? {
                continue;
            }
            let v = match live.get(k)? {
                Some(v) => {
                    let mut p = Vec::with_capacity(v.len() + 1);
                    p.push(PRESENT);
                    p.extend_from_slice(&v);
                    p
                }
                None => vec![ABSENT],
            };
            batch.insert(k, v);
            any = true;
        }
        if any {
            f.pre.apply_batch(batch)?;
        }
        Ok(())
    }

    /// Ends the freeze: readers see it cancelled (a state switch is coming).
    pub(crate) fn cancel(&self) {
        let mut cur = self.lock();
        if let Some(f) = cur.take() {
            f.cancelled.store(true, Ordering::Release);
            if let Err(e) = self.pre.clear() {
                tracing::warn!(error = %e, "snapshot pre-images not cleared");
            }
        }
    }

    /// Releases freeze `id` if no stream uses it and it has been idle for `idle`.
    pub(crate) fn release_if(&self, id: u64, idle: Duration) {
        let mut cur = self.lock();
        let release = cur.as_ref().is_some_and(|f| {
            f.id == id
                && f.streams.load(Ordering::Acquire) == 0
                && f.idle_since
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .elapsed()
                    >= idle
        });
        if let Some(f) = cur.take_if(|_| release) {
            // A reader that still holds it must not take it for complete.
            f.cancelled.store(true, Ordering::Release);
            if let Err(e) = self.pre.clear() {
                tracing::warn!(error = %e, "snapshot pre-images not cleared");
            }
        }
    }

    /// Releases the held freeze when nothing streamed it for `idle` (a follower that never took it).
    pub(crate) fn release_idle(&self, idle: Duration) {
        let id = self.lock().as_ref().map(|f| f.id);
        if let Some(id) = id {
            self.release_if(id, idle);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::Txn;
    use crate::view::View;

    fn frozen_records(f: &Frozen) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let mut out = BTreeMap::new();
        assert!(f
            .for_each_record(|k, v| {
                if let Some(old) = out.insert(k.to_vec(), v.to_vec()) {
                    assert_eq!(old, v, "a key emitted twice has one value");
                }
                true
            })
            .unwrap());
        out
    }

    #[test]
    fn a_freeze_reads_the_state_of_its_index_while_applies_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let view = View::open(&db, 0).unwrap();
        let mut t = Txn::new(&view);
        for k in ["a", "b", "c"] {
            t.insert(k.as_bytes(), b"1");
        }
        t.commit(5).unwrap();
        let before: BTreeMap<Vec<u8>, Vec<u8>> = view
            .tree()
            .iter()
            .flatten()
            .filter(|(k, _)| k.as_ref() != APPLIED)
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect();
        let f = view.freeze(0).unwrap().unwrap();
        assert_eq!(f.index, 5);
        // Changed, deleted and new keys after the freeze.
        let mut t = Txn::new(&view);
        t.insert(b"a", b"2");
        t.remove(b"b");
        t.insert(b"d", b"new");
        t.commit(6).unwrap();
        let mut t = Txn::new(&view);
        t.insert(b"a", b"3");
        t.commit(7).unwrap();
        assert_eq!(frozen_records(&f), before);
        assert_eq!(view.get(b"a").unwrap().as_deref(), Some(&b"3"[..]));
        // The held freeze answers a request it covers; one it does not cover waits for its streams.
        assert_eq!(view.freeze(5).unwrap().unwrap().id, f.id);
        let (_, guard) = view.freezer().stream(f.id).unwrap();
        assert!(view.freeze(7).unwrap().is_none());
        drop(guard);
        // Its last stream released it (a reader still holding it sees it cancelled); a new one freezes the
        // current state.
        assert!(f.cancelled());
        assert!(view.freezer().stream(f.id).is_none());
        let g = view.freeze(7).unwrap().unwrap();
        assert_ne!(g.id, f.id);
        assert_eq!(g.index, 7);
        // A state switch cancels a freeze: its reader reports the data incomplete.
        view.freezer().cancel();
        assert!(g.cancelled());
        assert!(!g.for_each_record(|_, _| true).unwrap());
    }
}
