//! The peer link on its own: the cluster secret, the handshake's limits, dead-peer detection and the
//! application lane's back-pressure (which never holds raft up).

mod common;

use bytes::Bytes;
use cicada_cluster::counter::{self, Counter};
use cicada_cluster::transport::handshake::{self, Hello};
use cicada_cluster::transport::AppSendError;
use cicada_cluster::{Cluster, ClusterConfig};
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config(id: u64, dir: &Path, peers: &HashMap<u64, String>) -> ClusterConfig {
    let mut c = ClusterConfig::single(dir.join(format!("n{id}")));
    c.node_id = id;
    c.listen = peers[&id].clone();
    c.peers = peers.clone();
    c.tick = Duration::from_millis(20);
    c
}

fn peers(n: u64) -> HashMap<u64, String> {
    let ports = common::free_ports(n as usize);
    (1..=n)
        .map(|i| (i, format!("127.0.0.1:{}", ports[i as usize - 1])))
        .collect()
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of a counter or gauge with these label values (0 when absent).
fn metric(r: &prometheus::Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
    r.gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter())
        .filter(|m| {
            labels.iter().all(|(k, v)| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == *k && l.value() == *v)
            })
        })
        .map(|m| m.get_counter().get_value() + m.get_gauge().get_value())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_nodes_that_prove_the_cluster_secret_are_linked() {
    let dir = tempfile::tempdir().unwrap();
    let peers = peers(3);
    let regs: Vec<prometheus::Registry> = (0..3).map(|_| prometheus::Registry::new()).collect();
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        let mut c = config(id, dir.path(), &peers);
        c.secret = Some(if id == 3 {
            b"wrong".to_vec()
        } else {
            b"s3cret".to_vec()
        });
        nodes.push(
            Cluster::start(c, Counter, &regs[id as usize - 1])
                .await
                .unwrap(),
        );
    }
    // 1 and 2 share the secret: a majority of three, they elect a leader and commit.
    until("a leader among 1 and 2", || {
        nodes[..2].iter().any(|n| n.leader() != 0)
    })
    .await;
    let leader = nodes[0].leader();
    nodes[leader as usize - 1]
        .propose(b"k".to_vec())
        .await
        .unwrap();
    // Node 3 answers with a proof under another secret: its dialers refuse it, again and again.
    until("refusals counted", || {
        metric(&regs[0], "cicada_peer_refused_total", &[("reason", "auth")]) >= 2.0
            && metric(&regs[1], "cicada_peer_refused_total", &[("reason", "auth")]) >= 2.0
    })
    .await;
    assert_eq!(
        counter::count(nodes[2].view()),
        0,
        "node 3 received nothing"
    );
    assert_eq!(nodes[2].leader(), 0);
    for n in &nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_handshake_is_refused_without_a_large_allocation() {
    let dir = tempfile::tempdir().unwrap();
    let peers = peers(1);
    let reg = prometheus::Registry::new();
    let node = Cluster::start(config(1, dir.path(), &peers), Counter, &reg)
        .await
        .unwrap();
    let addr = node.peer_addr();
    // A length of 1 GiB in the first four bytes; then an HTTP request.
    for bytes in [
        &[0x40u8, 0, 0, 0, 0][..],
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(bytes).await.unwrap();
        let mut buf = [0u8; 16];
        // The node closes the connection.
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("closed in time")
            .unwrap_or(0);
        assert_eq!(n, 0);
    }
    until("both counted as malformed", || {
        metric(
            &reg,
            "cicada_peer_refused_total",
            &[("reason", "malformed")],
        ) >= 2.0
    })
    .await;
    node.shutdown().await;
}

/// A peer that completes the handshake and then goes silent (a stopped process, a dead host behind a live
/// connection) is dropped within the peer timeout and redialled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_is_dropped_within_the_peer_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let fake = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut peers = peers(1);
    peers.insert(2, fake.local_addr().unwrap().to_string());
    let reg = prometheus::Registry::new();
    let mut c = config(1, dir.path(), &peers);
    c.peer_timeout = Duration::from_millis(600);
    let node = Cluster::start(c, Counter, &reg).await.unwrap();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (mut s, _) = fake.accept().await.unwrap();
            let b = handshake::read_handshake(&mut s, handshake::KIND_HELLO)
                .await
                .unwrap();
            let d = Hello::decode(b).unwrap();
            let a = Hello {
                lane: d.lane,
                node: 2,
                cluster: d.cluster.clone(),
                addr: "x".into(),
                nonce: handshake::nonce(),
                proof: Vec::new(),
            };
            s.write_all(&a.encode()).await.unwrap();
            held.push(s); // open, never read, never written
        }
    });
    let started = Instant::now();
    until("the raft lane dropped for silence", || {
        metric(
            &reg,
            "cicada_peer_link_down_total",
            &[("peer", "2"), ("lane", "raft"), ("reason", "timeout")],
        ) >= 1.0
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(10));
    until("and redialled", || {
        metric(
            &reg,
            "cicada_peer_link_down_total",
            &[("peer", "2"), ("lane", "raft")],
        ) >= 2.0
    })
    .await;
    silent.abort();
    node.shutdown().await;
}

/// A receiver that does not read its application frames fills the lane: the sender's `try_send_app` says
/// `Full` and `send_app` waits; raft goes on meanwhile (no election, proposals commit), and the stall lasting
/// several peer timeouts does not drop the link (a slow consumer is not a dead peer). Once the receiver reads,
/// every frame arrives, in order, none lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_application_lane_pushes_back_and_never_delays_raft() {
    let dir = tempfile::tempdir().unwrap();
    let peers = peers(3);
    let mut nodes = Vec::new();
    let regs: Vec<prometheus::Registry> = (0..3).map(|_| prometheus::Registry::new()).collect();
    for id in 1..=3u64 {
        let mut c = config(id, dir.path(), &peers);
        c.peer_timeout = Duration::from_millis(600);
        nodes.push(
            Cluster::start(c, Counter, &regs[id as usize - 1])
                .await
                .unwrap(),
        );
    }
    until("a leader", || nodes.iter().all(|n| n.leader() != 0)).await;
    let leader = nodes[0].leader();
    let term = nodes[0].status().await.unwrap().term;
    let (from, to) = (&nodes[leader as usize - 1], leader % 3 + 1);
    let mut frames = nodes[to as usize - 1].take_app_frames().await.unwrap();
    let payload = vec![7u8; 64 << 10];
    let frame = |i: u64| {
        let mut f = i.to_be_bytes().to_vec();
        f.extend_from_slice(&payload);
        Bytes::from(f)
    };
    // Until the lane stays full: the queues on both ends and the socket buffers in between.
    let mut sent = 0u64;
    let mut full_since: Option<Instant> = None;
    while full_since.is_none_or(|t| t.elapsed() < Duration::from_millis(500)) {
        match from.try_send_app(to, frame(sent)) {
            Ok(()) => {
                sent += 1;
                full_since = None;
            }
            Err(AppSendError::Full(_)) => {
                full_since.get_or_insert_with(Instant::now);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{e}"),
        }
        assert!(sent < 100_000, "the lane never filled");
    }
    // Full: a send waits.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), from.send_app(to, frame(sent)))
            .await
            .is_err(),
        "send_app waits while the lane is full"
    );
    for i in 0..50 {
        from.propose(format!("during-{i}").into_bytes())
            .await
            .unwrap();
    }
    // Stalled for more than three peer timeouts.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let down = metric(
        &regs[leader as usize - 1],
        "cicada_peer_link_down_total",
        &[("lane", "app")],
    );
    assert_eq!(down, 0.0, "the app lane stayed up through the stall");
    for n in &nodes {
        let s = n.status().await.unwrap();
        assert_eq!((s.term, s.leader), (term, leader), "no election meanwhile");
    }
    // The receiver reads: everything arrives in order (the waiting send was cancelled, not sent).
    let drain = tokio::spawn(async move {
        let mut next = 0u64;
        while next < sent {
            let (peer, f) = frames.recv().await.unwrap();
            assert_eq!(peer, leader);
            assert_eq!(u64::from_be_bytes(f[..8].try_into().unwrap()), next);
            next += 1;
        }
        next
    });
    assert_eq!(drain.await.unwrap(), sent);
    from.send_app(to, frame(sent)).await.unwrap();
    for n in &nodes {
        n.shutdown().await;
    }
}
