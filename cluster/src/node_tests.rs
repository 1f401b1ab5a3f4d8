use super::*;
use crate::entry::Context;

#[test]
fn batches_and_contexts_round_trip_and_garbage_is_refused() {
    let cmds = vec![b"a".to_vec(), Vec::new(), vec![7; 300]];
    assert_eq!(
        decode_batch(&encode_batch(cmds.iter().map(|c| c.as_slice()))),
        Some(cmds)
    );
    let enc = encode_batch([&b"abc"[..]].into_iter());
    assert_eq!(decode_batch(&enc[..enc.len() - 1]), None);
    assert_eq!(decode_batch(&[0, 0]), None);
    let c = context(3, 77, 99, b"extra");
    assert_eq!(
        parse_context(&c),
        Some(Context {
            node: 3,
            incarnation: 77,
            id: 99,
            extra: b"extra"
        })
    );
    assert_eq!(parse_context(b"short"), None);
    // A context written before incarnations: node id, batch id, address.
    let mut legacy = 3u64.to_be_bytes().to_vec();
    legacy.extend_from_slice(&99u64.to_be_bytes());
    legacy.extend_from_slice(b"127.0.0.1:7070");
    let l = parse_context(&legacy).unwrap();
    assert_eq!((l.node, l.incarnation, l.id), (3, 0, 99));
    assert_ne!(incarnation().unwrap(), 0);
    assert_ne!(
        incarnation().unwrap(),
        incarnation().unwrap(),
        "two processes differ"
    );
}

#[test]
fn interval_flushes_exactly_what_raft_says_must_be_synced() {
    for (fsync, must_sync, flush) in [
        (Fsync::Always, false, true),
        (Fsync::Always, true, true),
        (Fsync::Interval, true, true),
        (Fsync::Interval, false, false),
    ] {
        assert_eq!(
            needs_flush(fsync, must_sync),
            flush,
            "{fsync:?} {must_sync}"
        );
    }
}

#[test]
fn a_conf_change_records_the_peer_map_it_carries() {
    let mut stored = Peers::new();
    stored.insert(1, "a:1".into());
    stored.insert(2, "a:2".into());
    let change = |t: ConfChangeType, id: u64| {
        let mut cc = ConfChangeV2::default();
        let mut one = ConfChangeSingle::default();
        one.set_change_type(t);
        one.node_id = id;
        cc.mut_changes().push(one);
        cc
    };
    let mut carried = stored.clone();
    carried.insert(3, "a:3".into());
    let enc = encode_peers(&carried);
    let raw = context(1, 5, 1, &enc);
    let ctx = parse_context(&raw).unwrap();
    let add = change(ConfChangeType::AddLearnerNode, 3);
    assert_eq!(peers_after(&Peers::new(), Some(&ctx), &add), carried);
    // Written before the map: the single address is added to what is stored.
    let mut legacy = 1u64.to_be_bytes().to_vec();
    legacy.extend_from_slice(&1u64.to_be_bytes());
    legacy.extend_from_slice(b"a:3");
    let ctx = parse_context(&legacy).unwrap();
    assert_eq!(peers_after(&stored, Some(&ctx), &add), carried);
    let remove = change(ConfChangeType::RemoveNode, 2);
    let after = peers_after(&carried, None, &remove);
    assert_eq!(after.keys().copied().collect::<Vec<_>>(), vec![1, 3]);
}

/// What a crash between persisting entries and applying them leaves on disk, built deterministically: the
/// entries are in the raft log and the hard state says they are committed, the state machine never saw them.
mod crash_tests {
    use super::*;
    use crate::counter::{self, Counter};
    use crate::{Cluster, ClusterConfig};

    async fn start(dir: &std::path::Path) -> Cluster {
        Cluster::start(
            ClusterConfig::single(dir),
            Counter,
            &prometheus::Registry::new(),
        )
        .await
        .unwrap()
    }

    /// Appends `keys` as one batch entry after the log's last entry, committed but not applied. `commit`
    /// false leaves the commit index where it was (persisted, not yet known committed).
    async fn persist_without_applying(dir: &std::path::Path, keys: &[&str], commit: bool) {
        persist_entry(dir, keys, commit, context(1, 1, u64::MAX, &[])).await;
    }

    /// Like [`persist_without_applying`], with the context an earlier process gave the entry.
    async fn persist_entry(dir: &std::path::Path, keys: &[&str], commit: bool, ctx: Vec<u8>) {
        // The stopped node's sled lets go of the directory's lock a moment after it is dropped: waited for
        // as a restarting node does.
        let db = crate::open_db(dir, 64 << 20).await.unwrap();
        let (mut storage, _) =
            SledStorage::open(&db, &crate::storage::Bootstrap::default()).unwrap();
        let last = raft::Storage::last_index(&storage).unwrap();
        let term = storage.hard_state().term;
        let cmds: Vec<Vec<u8>> = keys.iter().map(|k| k.as_bytes().to_vec()).collect();
        let e = Entry {
            index: last + 1,
            term,
            data: encode_batch(cmds.iter().map(|c| c.as_slice())).into(),
            context: ctx.into(),
            ..Default::default()
        };
        storage.persist(&[e], None).unwrap();
        if commit {
            storage.set_commit(last + 1).unwrap();
        }
        db.flush().unwrap();
    }

    /// The previous process of this node proposed an entry as its batch 1 and died before applying it; the new
    /// process's first batch is also batch 1. The old entry applies first and must not answer the new proposal
    /// (the waiter would be told the old command's result while its own command may still be lost).
    #[tokio::test]
    async fn an_entry_of_an_earlier_process_never_answers_a_new_proposal() {
        let dir = tempfile::tempdir().unwrap();
        let node = start(dir.path()).await;
        node.propose(b"a".to_vec()).await.unwrap();
        node.shutdown().await;
        drop(node);
        let earlier = incarnation().unwrap();
        persist_entry(dir.path(), &["old"], true, context(1, earlier, 1, &[])).await;
        let node = start(dir.path()).await;
        let n = node.propose(b"new".to_vec()).await.unwrap();
        assert_eq!(
            u64::from_be_bytes(n.try_into().unwrap()),
            3,
            "the answer is the new command's own result (a, old, new)"
        );
        node.shutdown().await;
    }

    #[tokio::test]
    async fn a_crash_between_persist_and_apply_is_applied_once_at_restart() {
        let dir = tempfile::tempdir().unwrap();
        let node = start(dir.path()).await;
        for k in ["a", "b", "c"] {
            node.propose(k.as_bytes().to_vec()).await.unwrap();
        }
        let applied_before = node.view().applied().unwrap();
        node.shutdown().await;
        drop(node);

        // Committed and persisted, then the process died before the apply.
        persist_without_applying(dir.path(), &["d", "e"], true).await;
        // Persisted, and the crash came before the commit index was written.
        persist_without_applying(dir.path(), &["f"], false).await;

        let node = start(dir.path()).await;
        node.read_index().await.unwrap();
        assert_eq!(counter::count(node.view()), 6, "each entry applied once");
        assert_eq!(counter::keys(node.view()).len(), 6);
        assert!(node.view().applied().unwrap() >= applied_before + 2);
        let applied = node.view().applied().unwrap();
        node.shutdown().await;
        drop(node);

        // Restarting again applies nothing twice: the applied index moved with the data.
        let node = start(dir.path()).await;
        node.read_index().await.unwrap();
        assert_eq!(counter::count(node.view()), 6);
        assert!(node.view().applied().unwrap() >= applied);
        node.shutdown().await;
    }
}
