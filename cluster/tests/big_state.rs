//! A large state (2,000,000 keys of 100 B) crosses to a follower that was away while the log was compacted:
//! the snapshot streams in chunks on its own lane, the follower restores it as it arrives, and raft carries on
//! (the leader's term never changes: no heartbeat waited behind the snapshot). `TEST_BIG_KEYS` changes the
//! size.

mod common;

use common::{agreed_leader, three, Node};
use std::time::{Duration, Instant};

#[test]
fn a_follower_catches_up_on_a_two_million_key_state_without_an_election() {
    let keys: u64 = std::env::var("TEST_BIG_KEYS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_000_000);
    let dir = tempfile::tempdir().unwrap();
    // Ticks of 50 ms (election after 500 ms): a node busy applying large batches on a loaded machine is not
    // mistaken for a dead one while the state is filled.
    let opts = || {
        ["snapshot=1000", "retain=0", "tick=50"]
            .map(String::from)
            .to_vec()
    };
    let (peers, mut nodes) = three(dir.path(), |_| opts());
    let leader = agreed_leader(&mut nodes.values_mut().collect::<Vec<_>>(), 0);
    let started = Instant::now();
    let lead = nodes.get_mut(&leader).unwrap();
    lead.send(&format!("fill 0 {keys} 100 200"));
    let line = lead.expect_within(
        |l| l.starts_with("filled") || l.starts_with("err fill"),
        "fill",
        Duration::from_secs(600),
    );
    assert!(line.starts_with("filled"), "{line}");
    let fill = started.elapsed();
    let long = Duration::from_secs(600);
    for n in nodes.values_mut() {
        common::until_within("every node has the state", long, || n.count() == keys);
    }
    let term = nodes.get_mut(&leader).unwrap().term();
    let victim = (1..=3).find(|&id| id != leader).unwrap();
    nodes.get_mut(&victim).unwrap().kill();
    nodes.remove(&victim);
    // More entries than the snapshot interval: the leader compacts past the victim.
    let lead = nodes.get_mut(&leader).unwrap();
    for i in 0..1100 {
        lead.propose_all(&[format!("after-{i}")]);
    }
    let target = lead.count();
    let o = opts();
    let o: Vec<&str> = o.iter().map(String::as_str).collect();
    let restarted = Instant::now();
    let mut back = Node::start(victim, dir.path(), &peers, &o);
    let at_start = back.peak_rss_kib();
    common::until_within("the follower caught up", long, || back.count() == target);
    let catch_up = restarted.elapsed();
    let rss = back.peak_rss_kib();
    nodes.insert(victim, back);
    for (id, n) in nodes.iter_mut() {
        assert_eq!(n.term(), term, "node {id}: no election during the snapshot");
        let s = n.status();
        assert_eq!((s.count, s.keys), (target, target), "node {id}");
        assert_eq!(s.leader, leader);
    }
    for (id, n) in nodes.iter() {
        eprintln!("node {id}: peak RSS {} MiB", n.peak_rss_kib() / 1024);
    }
    eprintln!(
        "big state: {keys} keys of 100 B; fill {:.1} s; follower catch-up {:.1} s; its peak RSS {} MiB ({} MiB when it had opened its data)",
        fill.as_secs_f64(),
        catch_up.as_secs_f64(),
        rss / 1024,
        at_start / 1024
    );
}
