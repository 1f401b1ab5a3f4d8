//! The replicated state machine: the active state tree (see [`crate::view`]) that every node changes in log
//! order.
//!
//! Each batch of committed entries becomes one [`Txn`]: the commands' writes, membership records and the
//! applied index go to sled in one atomic batch, so a restart never applies an entry twice or skips one.

use crate::view::{corrupt, encode_peers, user_key, Peers, View, APPLIED, CONF, PEERS};
use protobuf::Message as _;
use raft::eraftpb::ConfState;
use std::collections::BTreeMap;

/// What the broker implements: how a command changes the state, and what it answers.
pub trait StateMachine: Send + 'static {
    /// Applies one committed command. Reads see the writes of earlier commands in the same batch.
    fn apply(&mut self, txn: &mut Txn<'_>, command: &[u8]) -> Vec<u8>;

    /// Called at start (before raft replays entries past the stored applied index) and after a snapshot
    /// replaced the whole state: rebuild any in-memory index from `view`.
    fn restored(&mut self, view: &View) {
        let _ = view;
    }

    /// Called once the writes of a batch of applied commands are in the state tree (readable through the
    /// view): what apply wants to tell others about its changes goes now, never before they can be read.
    fn committed(&mut self) {}
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
        for k in self.view.tree().scan_prefix(&p).keys() {
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

    /// Records a membership change with this batch (the conf state and peer addresses it results in).
    pub(crate) fn set_membership(
        &mut self,
        cs: &ConfState,
        peers: &Peers,
    ) -> Result<(), sled::Error> {
        let cs = cs.write_to_bytes().map_err(|e| corrupt("conf state", e))?;
        self.overlay.insert(CONF.to_vec(), Some(cs));
        self.overlay
            .insert(PEERS.to_vec(), Some(encode_peers(peers)));
        Ok(())
    }

    /// Writes everything and the applied index in one atomic sled batch.
    pub(crate) fn commit(self, applied: u64) -> Result<(), sled::Error> {
        // A snapshot being streamed keeps what these keys were when it froze.
        self.view
            .freezer()
            .preserve(self.view.tree(), self.overlay.keys().map(|k| k.as_slice()))?;
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
        let view = View::open(&db, 0).unwrap();
        let mut t = Txn::new(&view);
        t.insert(b"r/a", b"1");
        t.insert(b"r/b", b"2");
        assert_eq!(t.get(b"r/a").unwrap().as_deref(), Some(&b"1"[..]));
        t.remove(b"r/a");
        assert_eq!(t.get(b"r/a").unwrap(), None);
        assert_eq!(t.keys_with_prefix(b"r/").unwrap(), vec![b"r/b".to_vec()]);
        let mut peers = Peers::new();
        peers.insert(3, "h:3".into());
        t.set_membership(&ConfState::from((vec![1, 3], vec![])), &peers)
            .unwrap();
        assert_eq!(view.applied().unwrap(), 0, "nothing visible before commit");
        assert_eq!(view.peers().unwrap(), Peers::new());
        t.commit(7).unwrap();
        assert_eq!(view.applied().unwrap(), 7);
        assert_eq!(view.get(b"r/b").unwrap().as_deref(), Some(&b"2"[..]));
        assert_eq!(view.peers().unwrap(), peers);
        assert_eq!(view.conf_state().unwrap().unwrap().voters, vec![1, 3]);
    }
}
