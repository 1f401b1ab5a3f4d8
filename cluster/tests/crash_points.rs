//! Crashes between every pair of writes: a node of three processes aborts right after a chosen write (the
//! binary's `crash=POINT:N`: everything written before it is on disk, nothing after), restarts from its
//! directory, and must start, catch up and hold exactly the state of the others: every acknowledged command
//! once. Then kill -9 at random moments while a follower installs snapshots and compacts (seeded, bounded).

mod common;

use common::{agreed_leader, converged, lead, three, until, Node, WAIT};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// SIGABRT: the crash point, not something else, ended the process.
const ABORTED: Option<i32> = Some(6);

/// Proposes `keys` one after another through `node` (one entry each), returning those acknowledged.
fn one_by_one(node: &mut Node, keys: &[String]) -> Vec<String> {
    keys.iter()
        .flat_map(|k| node.propose_all(std::slice::from_ref(k)))
        .collect()
}

/// Proposes through `via` until `victim` has ended (bounded); returns what was acknowledged.
fn until_crashed(nodes: &mut HashMap<u64, Node>, via: u64, victim: u64, tag: &str) -> Vec<String> {
    let mut acked = Vec::new();
    let deadline = Instant::now() + WAIT;
    for round in 0.. {
        if let Some(how) = nodes.get_mut(&victim).unwrap().exited() {
            assert_eq!(
                how, ABORTED,
                "{tag}: node {victim} ended at its crash point"
            );
            return acked;
        }
        assert!(
            Instant::now() < deadline,
            "{tag}: node {victim} never reached its crash point"
        );
        let keys: Vec<String> = (0..20).map(|i| format!("{tag}-{round}-{i}")).collect();
        acked.extend(nodes.get_mut(&via).unwrap().propose_all(&keys));
    }
    unreachable!()
}

/// Proposes through the restarted node until it has committed some (it may wait for a leader first).
fn propose_through(node: &mut Node, tag: &str) -> Vec<String> {
    let mut acked = Vec::new();
    for round in 0..50 {
        let keys: Vec<String> = (0..20)
            .map(|i| format!("{tag}-after-{round}-{i}"))
            .collect();
        acked.extend(node.propose_all(&keys));
        if acked.len() >= 20 {
            return acked;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{tag}: the restarted node does not get proposals committed");
}

fn crash_and_restart(point: &str, hit: u32, leader: bool) {
    let tag = format!("{point}{hit}{}", if leader { "L" } else { "F" });
    let dir = tempfile::tempdir().unwrap();
    let victim = 1;
    let crash = format!("crash={point}:{hit}");
    let (peers, mut nodes) = three(dir.path(), |id| {
        let mut o = vec!["snapshot=40".to_string()];
        if id == victim {
            o.push(crash.clone());
        }
        o
    });
    lead(&mut nodes, if leader { victim } else { 2 });
    let mut acked = until_crashed(&mut nodes, 2, victim, &tag);
    nodes.remove(&victim);
    let mut back = Node::start(victim, dir.path(), &peers, &["snapshot=40"]);
    acked.extend(propose_through(&mut back, &tag));
    nodes.insert(victim, back);
    converged(&mut nodes, &acked, &dir.path().join("acked"));
}

// In a group of three the commit index travels in the hard state written with the entries (`persisted`); the
// separate commit write (`committed`) happens where a node commits on its own: the single node below.
#[test]
fn a_leader_crashing_after_any_write_restarts_and_equals_the_others() {
    for (point, hit) in [("persisted", 25), ("applied", 25), ("compacted", 2)] {
        crash_and_restart(point, hit, true);
    }
}

#[test]
fn a_follower_crashing_after_any_write_restarts_and_equals_the_others() {
    for (point, hit) in [("persisted", 25), ("applied", 25), ("compacted", 2)] {
        crash_and_restart(point, hit, false);
    }
}

/// A single node (fsync always) crashing after any of its writes restarts with every acknowledged command
/// applied once.
#[test]
fn a_single_node_crashing_after_any_write_keeps_everything_acknowledged() {
    for (point, hit) in [
        ("persisted", 25),
        ("committed", 25),
        ("applied", 25),
        ("compacted", 2),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let port = common::free_ports(1)[0];
        let peers = format!("1=127.0.0.1:{port}");
        let crash = format!("crash={point}:{hit}");
        let mut nodes = HashMap::new();
        nodes.insert(
            1,
            Node::start(1, dir.path(), &peers, &["snapshot=40", &crash]),
        );
        let mut acked = Vec::new();
        let deadline = Instant::now() + WAIT;
        for round in 0.. {
            let node = nodes.get_mut(&1).unwrap();
            if let Some(how) = node.exited() {
                assert_eq!(how, ABORTED, "{point}: ended at its crash point");
                break;
            }
            assert!(Instant::now() < deadline, "{point}: never reached");
            let keys: Vec<String> = (0..10).map(|i| format!("{point}-{round}-{i}")).collect();
            for k in &keys {
                node.send(&format!("p {k}"));
            }
            // Answers until the process ends (a crash cuts them short).
            while keys.iter().any(|k| !node.answers.contains_key(k)) && node.exited().is_none() {
                let _ = node.try_line(Duration::from_millis(50));
            }
            acked.extend(
                keys.iter()
                    .filter(|k| node.answers.get(*k) == Some(&true))
                    .cloned(),
            );
        }
        nodes.insert(1, Node::start(1, dir.path(), &peers, &["snapshot=40"]));
        acked.extend(propose_through(nodes.get_mut(&1).unwrap(), point));
        converged(&mut nodes, &acked, &dir.path().join("acked"));
    }
}

/// A follower falls behind the leader's compacted log, gets a snapshot, and crashes after restoring it (before
/// the switch) or after the switch (before the old state is cleared).
#[test]
fn a_follower_crashing_during_a_snapshot_install_restarts_and_equals_the_others() {
    for point in ["staged", "installed"] {
        let dir = tempfile::tempdir().unwrap();
        // No log retention for absent followers: the victim needs a snapshot.
        let (peers, mut nodes) = three(dir.path(), |_| {
            vec!["snapshot=40".to_string(), "retain=0".to_string()]
        });
        let leader = agreed_leader(&mut nodes.values_mut().collect::<Vec<_>>(), 0);
        let victim = (1..=3).find(|&id| id != leader).unwrap();
        let keys: Vec<String> = (0..50).map(|i| format!("{point}-a-{i}")).collect();
        let mut acked = nodes.get_mut(&leader).unwrap().propose_all(&keys);
        nodes.get_mut(&victim).unwrap().kill();
        nodes.remove(&victim);
        // More entries than the snapshot interval: the leader's log no longer has what the victim needs.
        let keys: Vec<String> = (0..120).map(|i| format!("{point}-b-{i}")).collect();
        acked.extend(one_by_one(nodes.get_mut(&leader).unwrap(), &keys));

        let crash = format!("crash={point}:1");
        let mut crashing = Node::spawn(
            victim,
            dir.path(),
            &peers,
            &["snapshot=40", "retain=0", &crash],
        );
        let mut how = None;
        until("the follower reached its crash point", || {
            how = crashing.exited();
            how.is_some()
        });
        assert_eq!(how.unwrap(), ABORTED, "{point}: ended at its crash point");
        drop(crashing);
        let mut back = Node::start(victim, dir.path(), &peers, &["snapshot=40"]);
        acked.extend(propose_through(&mut back, point));
        nodes.insert(victim, back);
        converged(&mut nodes, &acked, &dir.path().join("acked"));
    }
}

/// xorshift64*: the schedule of the kill loop, replayed from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// kill -9 of a follower at random moments while it catches up through snapshots and compacts its own log
/// (snapshot interval 20), under a steady stream of proposals. `TEST_KILL_SEED` replays a schedule,
/// `TEST_KILL_ROUNDS` runs more rounds.
#[test]
fn kill_9_at_random_points_of_snapshot_install_and_compaction_loses_nothing() {
    let seed = std::env::var("TEST_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    let rounds: u64 = std::env::var("TEST_KILL_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    eprintln!("kill loop: TEST_KILL_SEED={seed} TEST_KILL_ROUNDS={rounds}");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let opts = || vec!["snapshot=20".to_string(), "retain=0".to_string()];
    let (peers, mut nodes) = three(dir.path(), |_| opts());
    let mut acked = Vec::new();
    for round in 0..rounds {
        let leader = agreed_leader(&mut nodes.values_mut().collect::<Vec<_>>(), 0);
        let victim = [1, 2, 3]
            .into_iter()
            .filter(|&id| id != leader)
            .nth(rng.next(2) as usize)
            .unwrap();
        nodes.get_mut(&victim).unwrap().kill();
        nodes.remove(&victim);
        let keys: Vec<String> = (0..30 + rng.next(40))
            .map(|i| format!("r{round}-{i}"))
            .collect();
        acked.extend(one_by_one(nodes.get_mut(&leader).unwrap(), &keys));
        // Back, and killed again part way through its catch-up (a snapshot install, its compactions).
        let o = opts();
        let o: Vec<&str> = o.iter().map(String::as_str).collect();
        let mut again = Node::spawn(victim, dir.path(), &peers, &o);
        let keys: Vec<String> = (0..rng.next(30))
            .map(|i| format!("r{round}-c-{i}"))
            .collect();
        acked.extend(one_by_one(nodes.get_mut(&leader).unwrap(), &keys));
        std::thread::sleep(Duration::from_millis(rng.next(150)));
        again.kill();
        drop(again);
        nodes.insert(victim, Node::start(victim, dir.path(), &peers, &o));
    }
    let lead_now = agreed_leader(&mut nodes.values_mut().collect::<Vec<_>>(), 0);
    acked.extend(one_by_one(
        nodes.get_mut(&lead_now).unwrap(),
        &["last".to_string()],
    ));
    converged(&mut nodes, &acked, &dir.path().join("acked"));
}
