//! Three nodes as three OS processes on 127.0.0.1 (`cicada-cluster-node`, the counter state machine): the
//! leader is killed with SIGKILL, the others elect another and go on, the old leader restarts from its
//! directory and catches up; a fourth node joins and another leaves. Nothing acknowledged is lost and nothing
//! is applied twice (the counter equals the number of distinct keys on every node).

mod common;

use common::{agreed_leader, change, free_ports, until, Node};
use std::collections::HashMap;

#[test]
fn three_processes_lose_their_leader_to_sigkill_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(4);
    let peers3: String = (1..=3)
        .map(|i| format!("{i}=127.0.0.1:{}", ports[i - 1]))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes: HashMap<u64, Node> = (1..=3)
        .map(|id| (id, Node::start(id, dir.path(), &peers3, &[])))
        .collect();
    let leader = agreed_leader(&mut nodes.values_mut().collect::<Vec<_>>(), 0);

    // 10,000 commands, a third through each node (followers forward to the leader), all in flight at once.
    let share = |id: u64| -> Vec<String> {
        let n = if id == 3 { 3332 } else { 3334 };
        (0..n).map(|i| format!("a-{id}-{i}")).collect()
    };
    for id in 1..=3u64 {
        let node = nodes.get_mut(&id).unwrap();
        for k in share(id) {
            node.send(&format!("p {k}"));
        }
    }
    let mut acked = Vec::new();
    for id in 1..=3u64 {
        let keys = share(id);
        let node = nodes.get_mut(&id).unwrap();
        node.wait_answers(&keys);
        let ok: Vec<String> = keys.into_iter().filter(|k| node.answers[k]).collect();
        assert_eq!(
            ok.len(),
            share(id).len(),
            "node {id}: every proposal of a stable cluster commits"
        );
        acked.extend(ok);
    }
    assert_eq!(acked.len(), 10_000);

    // The leader process dies with SIGKILL; the two others elect another and go on.
    nodes.get_mut(&leader).unwrap().kill();
    let old = nodes.remove(&leader).unwrap();
    drop(old);
    let new_leader = agreed_leader(&mut nodes.values_mut().collect::<Vec<_>>(), leader);
    assert_ne!(new_leader, leader);
    let survivor = *nodes.keys().next().unwrap();
    let mut round = 0;
    let mut after = 0;
    while after < 2_000 {
        // A proposal that failed may still commit later; retries use new keys, so the counter check holds.
        let keys: Vec<String> = (0..2_000 - after)
            .map(|i| format!("b-{round}-{i}"))
            .collect();
        let ok = nodes.get_mut(&survivor).unwrap().propose_all(&keys);
        after += ok.len();
        acked.extend(ok);
        round += 1;
        assert!(round < 20, "the new leader does not take proposals");
    }

    // The old leader restarts from its directory and catches up (from the log the others kept for it).
    nodes.insert(leader, Node::start(leader, dir.path(), &peers3, &[]));
    let file = dir.path().join("acked");
    common::converged(&mut nodes, &acked, &file);

    // A fourth node joins as a learner, is promoted, and a follower is removed.
    let peers4 = format!("{peers3},4=127.0.0.1:{}", ports[3]);
    let mut four = Node::start(4, dir.path(), &peers4, &["join"]);
    let lead = agreed_leader(&mut nodes.values_mut().collect::<Vec<_>>(), 0);
    let target = nodes.get_mut(&lead).unwrap().status().count;
    change(&mut nodes, &format!("add 4 127.0.0.1:{}", ports[3]));
    until("the learner caught up", || four.status().count >= target);
    change(&mut nodes, "promote 4");
    let lead = agreed_leader(&mut nodes.values_mut().collect::<Vec<_>>(), 0);
    let victim = *nodes.keys().find(|&&id| id != lead).unwrap();
    change(&mut nodes, &format!("remove {victim}"));
    let ok = nodes
        .get_mut(&lead)
        .unwrap()
        .propose_all(&["after-change".to_string()]);
    assert_eq!(ok.len(), 1);
    until("the new voter applied the last command", || {
        let s = four.status();
        s.count == target + 1 && s.keys == s.count
    });
    assert_eq!(four.missing(&file), 0);

    // Past the compaction of the entry that added node 4, a node restarted with a configuration that does not
    // name node 4 still reaches it: the members' addresses are replicated state. Leading, it replicates to 4.
    nodes.remove(&victim); // removed from the group: it no longer hears of leaders
    let keys: Vec<String> = (0..600).map(|i| format!("c-{i}")).collect();
    let lead = agreed_leader(&mut nodes.values_mut().collect::<Vec<_>>(), 0);
    for k in &keys {
        nodes
            .get_mut(&lead)
            .unwrap()
            .propose_all(std::slice::from_ref(k));
    }
    let other = *nodes.keys().find(|&&id| id != lead).unwrap();
    nodes.get_mut(&other).unwrap().kill();
    nodes.remove(&other);
    nodes.insert(other, Node::start(other, dir.path(), &peers3, &[]));
    nodes.insert(4, four);
    common::lead(&mut nodes, other);
    let ok = nodes
        .get_mut(&other)
        .unwrap()
        .propose_all(&["via-restarted".to_string()]);
    assert_eq!(ok.len(), 1);
    let four = nodes.get_mut(&4).unwrap();
    until(
        "node 4 applied what the restarted leader replicated",
        || {
            let s = four.status();
            s.count == target + 2 + 600 && s.leader == other
        },
    );
}

/// A follower proposing a burst is killed with SIGKILL part way, restarted at once and proposes again while it
/// catches up on the entries its previous process proposed: an old entry never answers a new proposal (the
/// contexts carry the process incarnation), so every key answered `ok` is in the state.
#[test]
fn a_restarted_follower_never_answers_new_proposals_with_old_entries() {
    for round in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let (peers, mut nodes) = common::three(dir.path(), |_| Vec::new());
        let leader = agreed_leader(&mut nodes.values_mut().collect::<Vec<_>>(), 0);
        let f = (1..=3).find(|&id| id != leader).unwrap();
        let node = nodes.get_mut(&f).unwrap();
        let burst: Vec<String> = (0..3000).map(|i| format!("old-{round}-{i}")).collect();
        for k in &burst {
            node.send(&format!("p {k}"));
        }
        // Killed once some answers came back: many proposals are still in flight.
        until("the first answers", || {
            let _ = node.try_line(std::time::Duration::from_millis(5));
            node.answers.len() >= 200
        });
        let mut acked: Vec<String> = node
            .answers
            .iter()
            .filter(|(_, ok)| **ok)
            .map(|(k, _)| k.clone())
            .collect();
        node.kill();
        nodes.remove(&f);
        let mut back = Node::start(f, dir.path(), &peers, &[]);
        let fresh: Vec<String> = (0..3000).map(|i| format!("new-{round}-{i}")).collect();
        acked.extend(back.propose_all(&fresh));
        nodes.insert(f, back);
        // Only what was answered `ok` must be there; entries of the old process may add more.
        let file = dir.path().join("acked");
        std::fs::write(&file, acked.join("\n")).unwrap();
        for (id, n) in nodes.iter_mut() {
            until("the node applied the answered keys", || {
                n.missing(&file) == 0
            });
            let s = n.status();
            assert_eq!(s.count, s.keys, "node {id}: nothing applied twice");
        }
    }
}
