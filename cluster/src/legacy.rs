//! Data directories written before the log and its metadata shared one tree (`raft_log` + `raft_meta`, conf
//! state in the metadata) are moved to the current layout when opened: entries, hard state and snapshot
//! marker in one batch into `raft`, the conf state into the state tree. A crash part way repeats the move (the
//! conf state write is idempotent, the batch is atomic) or finds it done and only drops the old trees.

use crate::view::CONF;

pub(crate) fn migrate(db: &sled::Db, tree: &sled::Tree) -> Result<(), sled::Error> {
    let names = db.tree_names();
    let has = |n: &str| names.iter().any(|t| t.as_ref() == n.as_bytes());
    if !has("raft_log") && !has("raft_meta") {
        return Ok(());
    }
    let log = db.open_tree("raft_log")?;
    let meta = db.open_tree("raft_meta")?;
    if tree.is_empty() {
        if let Some(cs) = meta.get(b"cs")? {
            let state = db.open_tree("state")?;
            if state.get(CONF)?.is_none() {
                state.insert(CONF, cs)?;
            }
        }
        let mut batch = sled::Batch::default();
        let mut entries = 0u64;
        for kv in log.iter() {
            let (k, v) = kv?;
            let mut key = vec![b'e'];
            key.extend_from_slice(&k);
            batch.insert(key, v);
            entries += 1;
        }
        if let Some(hs) = meta.get(b"hs")? {
            batch.insert(&b"m:hs"[..], hs);
        }
        if let Some(snap) = meta.get(b"snap")? {
            batch.insert(&b"m:snap"[..], snap);
        }
        tree.apply_batch(batch)?;
        db.flush()?;
        tracing::info!(entries, "raft log moved to the single-tree layout");
    }
    db.drop_tree("raft_log")?;
    db.drop_tree("raft_meta")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::storage::{Bootstrap, SledStorage};
    use protobuf::Message as _;
    use raft::eraftpb::{ConfState, Entry, HardState};
    use raft::Storage;

    #[test]
    fn a_directory_of_the_two_tree_layout_opens_with_its_log_and_membership() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let log = db.open_tree("raft_log").unwrap();
        let meta = db.open_tree("raft_meta").unwrap();
        for i in 4..=6u64 {
            let e = Entry {
                index: i,
                term: 2,
                ..Default::default()
            };
            log.insert(i.to_be_bytes(), e.write_to_bytes().unwrap())
                .unwrap();
        }
        let hs = HardState {
            term: 2,
            vote: 1,
            commit: 5,
            ..Default::default()
        };
        meta.insert(b"hs", hs.write_to_bytes().unwrap()).unwrap();
        let mut snap = 3u64.to_be_bytes().to_vec();
        snap.extend_from_slice(&1u64.to_be_bytes());
        meta.insert(b"snap", snap).unwrap();
        let cs = ConfState::from((vec![1, 2, 3], vec![]));
        meta.insert(b"cs", cs.write_to_bytes().unwrap()).unwrap();
        // The state had applied up to 3 (the snapshot marker).
        db.open_tree("state")
            .unwrap()
            .insert(b"\x00applied", &3u64.to_be_bytes())
            .unwrap();
        drop((log, meta));

        let (s, view) = SledStorage::open(&db, &Bootstrap::default()).unwrap();
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (4, 6));
        assert_eq!(s.term(3).unwrap(), 1);
        assert_eq!(s.hard_state(), &hs);
        assert_eq!(s.conf_state().voters, vec![1, 2, 3]);
        assert_eq!(view.applied().unwrap(), 3);
        assert!(!db.tree_names().iter().any(|n| n.as_ref() == b"raft_log"));
    }
}
