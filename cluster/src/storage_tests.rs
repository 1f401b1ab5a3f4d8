use super::*;
use crate::machine::Txn;

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

fn boot(voters: &[u64]) -> Bootstrap {
    Bootstrap {
        voters: voters.to_vec(),
        peers: voters.iter().map(|&v| (v, format!("h:{v}"))).collect(),
    }
}

fn entries(range: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
    range.map(|i| entry(i, term)).collect()
}

#[test]
fn append_truncates_conflicting_suffix_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let (mut s, view) = SledStorage::open(&db, &boot(&[1, 2, 3])).unwrap();
    assert_eq!(s.initial_state().unwrap().conf_state.voters, vec![1, 2, 3]);
    assert_eq!(view.peers().unwrap().len(), 3, "bootstrap peers recorded");
    s.persist(&entries(1..=5, 1), None).unwrap();
    let hs = HardState {
        term: 2,
        commit: 3,
        ..Default::default()
    };
    s.persist(&[entry(4, 2)], Some(&hs)).unwrap();
    assert_eq!(all(&s), vec![(1, 1), (2, 1), (3, 1), (4, 2)]);
    drop(s);
    let (s, _) = SledStorage::open(&db, &boot(&[9])).unwrap();
    assert_eq!(s.last_index().unwrap(), 4);
    assert_eq!(s.initial_state().unwrap().hard_state, hs);
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
    let (mut s, view) = SledStorage::open(&db, &boot(&[1])).unwrap();
    s.persist(
        &(1..=10).map(|i| entry(i, i / 4 + 1)).collect::<Vec<_>>(),
        None,
    )
    .unwrap();
    Txn::new(&view).commit(6).unwrap();
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
    let (s, _) = SledStorage::open(&db, &boot(&[1])).unwrap();
    assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (7, 10));
    assert_eq!(s.term(6).unwrap(), 2);
}

#[test]
fn entries_respect_the_size_limit_but_return_at_least_one() {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let (mut s, _) = SledStorage::open(&db, &boot(&[1])).unwrap();
    s.persist(&entries(1..=10, 1), None).unwrap();
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
fn installing_a_snapshot_restarts_the_log_after_it_and_switches_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let (mut s, view) = SledStorage::open(&db, &Bootstrap::default()).unwrap();
    s.persist(&entries(1..=3, 1), None).unwrap();
    let mut snap = Snapshot::default();
    snap.mut_metadata().index = 50;
    snap.mut_metadata().term = 4;
    let cs = ConfState::from((vec![1, 2, 3], vec![]));
    snap.mut_metadata().set_conf_state(cs.clone());
    let staged = view.stage().unwrap().finish(50, &cs).unwrap().tree;
    s.install(&snap, staged).unwrap();
    view.switch(staged);
    assert_eq!(
        (s.first_index().unwrap(), s.last_index().unwrap()),
        (51, 50)
    );
    assert_eq!(s.term(50).unwrap(), 4);
    assert_eq!(s.hard_state().commit, 50);
    assert_eq!(s.conf_state().voters, vec![1, 2, 3]);
    drop((s, view));
    let (s, view) = SledStorage::open(&db, &Bootstrap::default()).unwrap();
    assert_eq!(view.applied().unwrap(), 50, "the switch survives a reopen");
    assert_eq!(s.conf_state().voters, vec![1, 2, 3]);
    assert_eq!(s.first_index().unwrap(), 51);
}

/// A crash after the applied batch and before the commit index write: the commit index is raised to the
/// applied index at open (raft-rs refuses to start with applied > commit).
#[test]
fn open_raises_the_commit_index_to_the_applied_index() {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let (mut s, view) = SledStorage::open(&db, &boot(&[1])).unwrap();
    let hs = HardState {
        term: 1,
        commit: 2,
        ..Default::default()
    };
    s.persist(&entries(1..=5, 1), Some(&hs)).unwrap();
    Txn::new(&view).commit(4).unwrap();
    drop((s, view));
    let (s, _) = SledStorage::open(&db, &boot(&[1])).unwrap();
    assert_eq!(s.hard_state().commit, 4);
}

/// A commit index beyond the stored log (only a damaged store has one) is lowered to the last entry, and a
/// gap in the log ends the log before it: raft-rs then fetches the rest from the leader.
#[test]
fn open_repairs_a_log_with_a_gap_and_a_commit_beyond_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let (mut s, _) = SledStorage::open(&db, &boot(&[1])).unwrap();
    let hs = HardState {
        term: 1,
        commit: 9,
        ..Default::default()
    };
    s.persist(&entries(1..=9, 1), Some(&hs)).unwrap();
    s.tree.remove(key(6)).unwrap();
    assert!(
        s.entries(4, 9, None, GetEntriesContext::empty(false))
            .is_err(),
        "entries() refuses a range with a hole"
    );
    drop(s);
    let (s, _) = SledStorage::open(&db, &boot(&[1])).unwrap();
    assert_eq!(s.last_index().unwrap(), 5);
    assert_eq!(s.hard_state().commit, 5);
    assert_eq!(all(&s).len(), 5);
}

#[test]
fn a_state_outside_the_log_is_an_error_not_a_guess() {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let (mut s, view) = SledStorage::open(&db, &boot(&[1])).unwrap();
    s.persist(&entries(1..=3, 1), None).unwrap();
    Txn::new(&view).commit(7).unwrap();
    drop((s, view));
    let err = SledStorage::open(&db, &boot(&[1])).err().unwrap();
    assert!(err.to_string().contains("applied index 7"), "{err}");
}
