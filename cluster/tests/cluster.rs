//! The store without MQTT: one node and three nodes on 127.0.0.1 in this process. Commands are `key`; applying
//! one sets the key and increments a counter, so a command applied twice or skipped shows up as a counter that
//! differs from the number of keys.

use cicada_cluster::counter::{self, Counter};
use cicada_cluster::{Cluster, ClusterConfig, ClusterError, Membership};
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);

fn free_ports(n: usize) -> Vec<u16> {
    let ls: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    ls.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

fn config(id: u64, dir: &Path, peers: &HashMap<u64, String>) -> ClusterConfig {
    let mut c = ClusterConfig::single(dir.join(format!("n{id}")));
    c.node_id = id;
    c.listen = peers[&id].clone();
    c.peers = peers.clone();
    c.tick = Duration::from_millis(20);
    c.snapshot_interval = 100;
    // A follower that was away catches up from a snapshot (log retention has its own test).
    c.log_retention = Duration::ZERO;
    // Small entries, so the log grows past the compaction interval and the snapshot path runs.
    c.max_batch = 8;
    c
}

fn count(c: &Cluster) -> u64 {
    counter::count(c.view())
}

fn keys(c: &Cluster) -> Vec<Vec<u8>> {
    counter::keys(c.view())
}

/// Waits (polling the node's own status) until `f` holds.
async fn until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn leader_of(nodes: &[&Cluster]) -> u64 {
    let mut leader = 0;
    until("a leader", async || {
        for n in nodes {
            let s = n.status().await.unwrap();
            if s.role == "Leader" {
                leader = s.id;
                return true;
            }
        }
        false
    })
    .await;
    leader
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_applies_in_order_and_restarts_without_reapplying() {
    let dir = tempfile::tempdir().unwrap();
    let registry = prometheus::Registry::new();
    let mut c = ClusterConfig::single(dir.path().join("n1"));
    c.snapshot_interval = 50;
    c.max_batch = 8;
    let node = Cluster::start(c.clone(), Counter, &registry).await.unwrap();
    leader_of(&[&node]).await;
    let mut applied = node.applied();
    let mut results = Vec::new();
    // Concurrent proposals: they share entries and flushes (group commit).
    let futs: Vec<_> = (0..1000)
        .map(|i| node.propose(format!("{i:04}").into_bytes()))
        .collect();
    for r in futures_join(futs).await {
        results.push(u64::from_be_bytes(r.unwrap().try_into().unwrap()));
    }
    results.sort_unstable();
    assert_eq!(
        results,
        (1..=1000).collect::<Vec<_>>(),
        "each command applied once, in one order"
    );
    let first = applied.recv().await.unwrap();
    assert!(first.index > 0);
    assert_eq!(count(&node), 1000);
    let before = node.status().await.unwrap();
    assert!(before.first_index > 2, "the log was compacted: {before:?}");
    node.shutdown().await;
    drop(node); // releases the data directory

    let node = Cluster::start(c, Counter, &registry).await.unwrap();
    leader_of(&[&node]).await;
    assert_eq!(count(&node), 1000, "nothing applied twice on restart");
    // The gauge follows the first Ready after the restart's campaign.
    until("the leader gauge", async || node.leader() == 1).await;
    assert_eq!(keys(&node).len(), 1000);
    let r = node.propose(b"after".to_vec()).await.unwrap();
    assert_eq!(u64::from_be_bytes(r.try_into().unwrap()), 1001);
    let idx = node.read_index().await.unwrap();
    assert!(idx >= before.applied);
    node.shutdown().await;
}

/// sled lets go of its directory lock from a background thread after the last handle is gone: a node
/// stopped and started again at once must wait for it rather than fail, and a directory another running
/// node holds must be refused with an error that says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_reopens_at_once_and_a_directory_in_use_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let c = ClusterConfig::single(dir.path().join("n1"));
    for round in 1..=10u64 {
        let node = Cluster::start(c.clone(), Counter, &prometheus::Registry::new())
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        node.propose(format!("k{round}").into_bytes())
            .await
            .unwrap();
        assert_eq!(count(&node), round, "round {round}");
        node.shutdown().await;
    }

    let running = Cluster::start(c.clone(), Counter, &prometheus::Registry::new())
        .await
        .unwrap();
    let err = match Cluster::start(c, Counter, &prometheus::Registry::new()).await {
        Ok(_) => panic!("a second node opened a directory in use"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("n1") && err.contains("another cicada node is using this data directory"),
        "{err}"
    );
    assert_eq!(count(&running), 10, "the running node is untouched");
    running.shutdown().await;
}

/// A membership change through whichever node leads now, made again when leadership moved under it (a loaded
/// two-core machine can miss an election timeout). Making it twice is harmless: raft-rs treats adding a member
/// it has, or removing one it does not, as no change.
async fn change(nodes: &[&Cluster], m: Membership) {
    let deadline = Instant::now() + WAIT;
    loop {
        let leader = leader_of(nodes).await;
        let mut via = None;
        for n in nodes {
            if n.status().await.unwrap().id == leader {
                via = Some(*n);
            }
        }
        match via.unwrap().change_membership(m.clone()).await {
            Ok(_) => return,
            Err(
                e @ (ClusterError::NoLeader | ClusterError::Timeout | ClusterError::Rejected(_)),
            ) => {
                assert!(Instant::now() < deadline, "{m:?}: {e}");
            }
            Err(e) => panic!("{m:?}: {e}"),
        }
    }
}

async fn futures_join<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output>
where
    F::Output: Send,
{
    let mut out = Vec::with_capacity(futs.len());
    let mut pinned: Vec<_> = futs.into_iter().map(Box::pin).collect();
    // Poll all concurrently: proposals queue in the actor's mailbox together.
    let mut done: Vec<Option<F::Output>> = (0..pinned.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in pinned.iter_mut().enumerate() {
            if done[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => done[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    for d in done {
        out.push(d.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_survive_losing_the_leader_and_it_catches_up_from_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(3);
    let peers: HashMap<u64, String> = (1..=3u64)
        .map(|i| (i, format!("127.0.0.1:{}", ports[i as usize - 1])))
        .collect();
    let mut nodes: HashMap<u64, Cluster> = HashMap::new();
    for id in 1..=3 {
        let registry = prometheus::Registry::new();
        nodes.insert(
            id,
            Cluster::start(config(id, dir.path(), &peers), Counter, &registry)
                .await
                .unwrap(),
        );
    }
    let all: Vec<&Cluster> = nodes.values().collect();
    let leader = leader_of(&all).await;
    // Through every node: followers forward to the leader.
    let mut acked = Vec::new();
    for batch in 0..20 {
        let via = &nodes[&((batch % 3) as u64 + 1)];
        let futs: Vec<_> = (0..500)
            .map(|i| {
                let key = format!("a{batch}-{i:03}");
                async move { (key.clone(), via.propose(key.into_bytes()).await) }
            })
            .collect();
        for (k, r) in futures_join(futs).await {
            r.unwrap_or_else(|e| panic!("{k}: {e}"));
            acked.push(k);
        }
    }
    // Kill the leader (its actor, links and listener go away); the others elect a new one.
    let old = nodes.remove(&leader).unwrap();
    old.shutdown().await;
    drop(old);
    let rest: Vec<&Cluster> = nodes.values().collect();
    let new_leader = leader_of(&rest).await;
    assert_ne!(new_leader, leader);
    let via = &nodes[&new_leader];
    let futs: Vec<_> = (0..2000)
        .map(|i| {
            let key = format!("b{i:04}");
            async move { (key.clone(), via.propose(key.into_bytes()).await) }
        })
        .collect();
    for (k, r) in futures_join(futs).await {
        r.unwrap();
        acked.push(k);
    }
    // The old leader comes back from its data directory; the log was compacted meanwhile (at least 250
    // entries of at most 8 commands against an interval of 100), so it catches up from a snapshot.
    let registry = prometheus::Registry::new();
    let back = Cluster::start(config(leader, dir.path(), &peers), Counter, &registry)
        .await
        .unwrap();
    nodes.insert(leader, back);
    let target = nodes[&new_leader].status().await.unwrap().applied;
    for n in nodes.values() {
        until("every node applied everything", async || {
            n.status().await.unwrap().applied >= target
        })
        .await;
    }
    let reference = keys(&nodes[&new_leader]);
    assert_eq!(reference.len(), acked.len(), "nothing acknowledged lost");
    for n in nodes.values() {
        assert_eq!(keys(n), reference, "same state everywhere");
        assert_eq!(count(n), acked.len() as u64, "nothing applied twice");
    }
    let s = nodes[&leader].status().await.unwrap();
    assert!(s.first_index > 2, "{s:?}");
    let snapshots = registry
        .gather()
        .iter()
        .find(|f| f.name() == "cicada_raft_snapshots_applied_total")
        .map(|f| f.get_metric()[0].get_counter().get_value())
        .unwrap_or(0.0);
    assert!(
        snapshots >= 1.0,
        "the restarted node caught up through a snapshot"
    );

    // Membership: add a fourth node as a learner, promote it, remove another.
    let four = free_ports(1)[0];
    let mut peers4 = peers.clone();
    peers4.insert(4, format!("127.0.0.1:{four}"));
    let mut c4 = config(4, dir.path(), &peers4);
    c4.join = true;
    let n4 = Cluster::start(c4, Counter, &prometheus::Registry::new())
        .await
        .unwrap();
    let three: Vec<&Cluster> = nodes.values().collect();
    change(
        &three,
        Membership::AddLearner {
            id: 4,
            addr: peers4[&4].clone(),
        },
    )
    .await;
    let target = nodes[&leader_of(&three).await]
        .status()
        .await
        .unwrap()
        .applied;
    until("the learner caught up", async || {
        n4.status().await.unwrap().applied >= target
    })
    .await;
    let four: Vec<&Cluster> = nodes.values().chain([&n4]).collect();
    change(&four, Membership::Promote { id: 4 }).await;
    let leader_id = leader_of(&four).await;
    let victim = *nodes.keys().find(|&&id| id != leader_id).unwrap();
    change(&four, Membership::Remove { id: victim }).await;
    let leader_node = &nodes[&leader_id];
    until("the new voters everywhere", async || {
        let s = leader_node.status().await.unwrap();
        s.voters.contains(&4) && !s.voters.contains(&victim)
    })
    .await;
    let r = leader_node.propose(b"after-change".to_vec()).await.unwrap();
    assert_eq!(
        u64::from_be_bytes(r.try_into().unwrap()),
        acked.len() as u64 + 1
    );
    until("the new voter applied the last command", async || {
        count(&n4) == acked.len() as u64 + 1
    })
    .await;
    n4.shutdown().await;
    for (_, n) in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_another_cluster_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(2);
    let peers: HashMap<u64, String> = (1..=2u64)
        .map(|i| (i, format!("127.0.0.1:{}", ports[i as usize - 1])))
        .collect();
    let a = Cluster::start(
        config(1, dir.path(), &peers),
        Counter,
        &prometheus::Registry::new(),
    )
    .await
    .unwrap();
    let mut cb = config(2, dir.path(), &peers);
    cb.cluster_id = "other".into();
    let registry = prometheus::Registry::new();
    let b = Cluster::start(cb, Counter, &registry).await.unwrap();
    until("the refusal is counted", async || {
        registry
            .gather()
            .iter()
            .find(|f| f.name() == "cicada_peer_refused_total")
            .is_some_and(|f| f.get_metric()[0].get_counter().get_value() >= 1.0)
    })
    .await;
    // Two voters that cannot talk elect no one: no leader (the broker's /ready says 503), and proposals fail
    // instead of being acknowledged.
    assert_eq!(a.leader(), 0);
    assert!(matches!(
        a.propose(b"x".to_vec()).await,
        Err(ClusterError::NoLeader | ClusterError::Timeout)
    ));
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_moves_to_the_node_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(3);
    let peers: HashMap<u64, String> = (1..=3u64)
        .map(|i| (i, format!("127.0.0.1:{}", ports[i as usize - 1])))
        .collect();
    let mut nodes = Vec::new();
    for id in 1..=3 {
        let c = config(id, dir.path(), &peers);
        nodes.push(
            Cluster::start(c, Counter, &prometheus::Registry::new())
                .await
                .unwrap(),
        );
    }
    let refs: Vec<&Cluster> = nodes.iter().collect();
    let leader = leader_of(&refs).await;
    let via = &nodes[leader as usize - 1];
    via.propose(b"before".to_vec()).await.unwrap();
    let target = (leader % 3) + 1;
    via.transfer_leader(target);
    until("the transfer", async || {
        nodes[target as usize - 1].status().await.unwrap().role == "Leader"
    })
    .await;
    until("the old leader follows", async || {
        via.status().await.unwrap().leader == target
    })
    .await;
    // The new leader takes proposals; the old one forwards to it.
    nodes[target as usize - 1]
        .propose(b"after".to_vec())
        .await
        .unwrap();
    via.propose(b"forwarded".to_vec()).await.unwrap();
    for n in &nodes {
        until("every node applied the three commands", async || {
            count(n) == 3
        })
        .await;
        n.shutdown().await;
    }
}

fn metric(r: &prometheus::Registry, name: &str) -> f64 {
    r.gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter())
        .map(|m| m.get_counter().get_value())
        .sum()
}

/// A follower away for a moment catches up from the entries the leader kept for it (no snapshot); with the
/// log over its byte cap the leader compacts past it and it gets a snapshot instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_absence_costs_a_log_catch_up_unless_the_log_outgrows_its_cap() {
    for (cap, snapshot) in [(256u64 << 20, false), (1, true)] {
        let dir = tempfile::tempdir().unwrap();
        let ports = free_ports(3);
        let peers: HashMap<u64, String> = (1..=3u64)
            .map(|i| (i, format!("127.0.0.1:{}", ports[i as usize - 1])))
            .collect();
        let conf = |id| {
            let mut c = config(id, dir.path(), &peers);
            c.log_retention = Duration::from_secs(60);
            c.max_log_bytes = cap;
            c
        };
        let regs: HashMap<u64, prometheus::Registry> = (1..=3)
            .map(|id| (id, prometheus::Registry::new()))
            .collect();
        let mut nodes: HashMap<u64, Cluster> = HashMap::new();
        for id in 1..=3 {
            let c = Cluster::start(conf(id), Counter, &regs[&id]).await.unwrap();
            nodes.insert(id, c);
        }
        let leader = leader_of(&nodes.values().collect::<Vec<_>>()).await;
        let away = (1..=3).find(|&id| id != leader).unwrap();
        let gone = nodes.remove(&away).unwrap();
        gone.shutdown().await;
        drop(gone);
        // Well past the snapshot interval (100 entries of at most 8 commands).
        let via = &nodes[&leader];
        for round in 0..3 {
            let futs: Vec<_> = (0..500)
                .map(|i| via.propose(format!("{round}-{i}").into_bytes()))
                .collect();
            for r in futures_join(futs).await {
                r.unwrap();
            }
        }
        let registry = prometheus::Registry::new();
        let back = Cluster::start(conf(away), Counter, &registry)
            .await
            .unwrap();
        until("the follower caught up", async || count(&back) == 1500).await;
        assert_eq!(keys(&back).len(), 1500);
        let sent = metric(&regs[&leader], "cicada_raft_snapshots_sent_total");
        assert_eq!(sent > 0.0, snapshot, "cap {cap}: snapshots sent {sent}");
        assert_eq!(
            metric(&registry, "cicada_raft_snapshots_applied_total") > 0.0,
            snapshot
        );
        back.shutdown().await;
        for n in nodes.values() {
            n.shutdown().await;
        }
    }
}

/// A read that cannot complete (no quorum) is answered `Timeout`, not `Stopped`, a membership change
/// `NoLeader`; a
/// burst of large commands larger than the uncommitted limit is refused `Busy`, and one command per entry
/// when commands are as large as an entry may be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_that_expire_say_timeout_and_a_flood_of_large_commands_is_refused_busy() {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(2);
    let peers: HashMap<u64, String> = (1..=2u64)
        .map(|i| (i, format!("127.0.0.1:{}", ports[i as usize - 1])))
        .collect();
    // Node 2 never starts: no quorum.
    let mut c = config(1, dir.path(), &peers);
    c.propose_timeout = Duration::from_millis(300);
    let alone = Cluster::start(c, Counter, &prometheus::Registry::new())
        .await
        .unwrap();
    let r = alone.read_index().await;
    assert!(matches!(r, Err(ClusterError::Timeout)), "{r:?}");
    let r = alone.change_membership(Membership::Promote { id: 2 }).await;
    assert!(matches!(r, Err(ClusterError::NoLeader)), "{r:?}");
    alone.shutdown().await;

    let registry = prometheus::Registry::new();
    let mut c = ClusterConfig::single(dir.path().join("single"));
    c.max_uncommitted_bytes = 4 << 20;
    c.max_batch_bytes = 1 << 20;
    let node = Cluster::start(c, Counter, &registry).await.unwrap();
    let big = |i: usize| {
        let mut v = format!("big-{i}-").into_bytes();
        v.resize(1 << 20, b'x');
        v
    };
    let futs: Vec<_> = (0..64).map(|i| node.submit(big(i))).collect();
    let mut ok = 0;
    let mut busy = 0;
    for r in futures_join(futs).await {
        match r {
            Ok(_) => ok += 1,
            Err(ClusterError::Busy) => busy += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(busy > 0 && ok > 0, "ok {ok}, busy {busy}");
    // Larger than the peers' frame limit allows (2 MiB less 1 MiB of room): refused, not proposed.
    let mut c = ClusterConfig::single(dir.path().join("small-frames"));
    c.max_frame_bytes = 2 << 20;
    let small = Cluster::start(c, Counter, &prometheus::Registry::new())
        .await
        .unwrap();
    let cmd = vec![b'x'; (1 << 20) + 1];
    let r = small.propose(cmd).await;
    assert!(
        matches!(r, Err(ClusterError::TooLarge(n)) if n == (1 << 20) + 1),
        "{r:?}"
    );
    assert!(small.propose(vec![b'y'; 1 << 20]).await.is_ok());
    small.shutdown().await;
    assert_eq!(count(&node), ok);
    assert_eq!(
        metric(&registry, "cicada_raft_proposal_entries_total") as u64,
        64,
        "one entry per 1 MiB command"
    );
    node.shutdown().await;
}

/// A node that joins a young cluster (its log never compacted by the interval) learns the voters it was
/// bootstrapped with: they are in no log entry, so it must get a snapshot, not replay the log from index 1
/// (it would count itself the only voter and could elect itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joining_a_young_cluster_learns_the_bootstrap_voters() {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(4);
    let peers: HashMap<u64, String> = (1..=4u64)
        .map(|i| (i, format!("127.0.0.1:{}", ports[i as usize - 1])))
        .collect();
    let three: HashMap<u64, String> = peers.clone().into_iter().filter(|(i, _)| *i < 4).collect();
    let mut nodes = Vec::new();
    for id in 1..=3 {
        let mut c = config(id, dir.path(), &three);
        c.snapshot_interval = 100_000;
        let registry = prometheus::Registry::new();
        nodes.push(Cluster::start(c, Counter, &registry).await.unwrap());
    }
    let refs: Vec<&Cluster> = nodes.iter().collect();
    leader_of(&refs).await;
    let mut c4 = config(4, dir.path(), &peers);
    c4.join = true;
    let n4 = Cluster::start(c4, Counter, &prometheus::Registry::new())
        .await
        .unwrap();
    change(
        &refs,
        Membership::AddLearner {
            id: 4,
            addr: peers[&4].clone(),
        },
    )
    .await;
    until("the learner knows the voters", async || {
        let mut s = n4.status().await.unwrap();
        s.voters.sort_unstable();
        s.voters == [1, 2, 3] && s.learners == [4]
    })
    .await;
    let four: Vec<&Cluster> = nodes.iter().chain([&n4]).collect();
    change(&four, Membership::Promote { id: 4 }).await;
    until("four voters on the new node", async || {
        let mut v = n4.status().await.unwrap().voters;
        v.sort_unstable();
        v == [1, 2, 3, 4]
    })
    .await;
}
