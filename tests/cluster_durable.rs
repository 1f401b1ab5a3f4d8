//! Durable delivery across nodes (issue 12): a QoS 1/2 message published on one node for a persistent
//! session owned by another is in that session's replicated inbox before its publisher is acknowledged, so
//! killing the owner with SIGKILL loses nothing acknowledged: the client resumes on a third node and gets
//! every acknowledged message, each QoS 2 message once, including those acknowledged while the owner was
//! frozen and could not have received them. The Will of a connection on a killed node fires once, from the
//! cluster. A rolling restart of all three nodes (SIGTERM drains) under load loses no acknowledged message.

mod common;

use cicada::client::{Client, ClientOptions, Events};
use cicada::protocol::{Packet, Properties, ProtocolVersion, PubAck, QoS, ReasonCode};
use common::broker::{connect, Raw};
use common::cluster::{resume_on, Cluster};
use common::WAIT;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn addr(port: u16) -> std::net::SocketAddr {
    format!("127.0.0.1:{port}").parse().unwrap()
}

/// Publishes `count` messages on `port` (odd ones QoS 2, even ones QoS 1), one at a time; a publish that
/// fails or is refused is tried again with a new payload on a new connection. Returns the payloads
/// acknowledged with success, with their QoS.
async fn publisher(
    port: u16,
    name: String,
    count: usize,
    acked: Arc<AtomicUsize>,
) -> Vec<(String, QoS)> {
    let mut out = Vec::new();
    let mut client: Option<(Client, Events)> = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0..count {
        let qos = if i % 2 == 1 {
            QoS::ExactlyOnce
        } else {
            QoS::AtLeastOnce
        };
        let mut attempt = 0;
        loop {
            assert!(
                Instant::now() < deadline,
                "{name}: publishing never recovered"
            );
            if client.is_none() {
                let opts = ClientOptions::new("127.0.0.1", port, format!("{name}-{attempt}"))
                    .version(ProtocolVersion::V5);
                match tokio::time::timeout(WAIT, Client::connect(opts)).await {
                    Ok(Ok((c, events, _))) => client = Some((c, events)),
                    _ => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        attempt += 1;
                        continue;
                    }
                }
            }
            let payload = format!("{name}-{i}-{attempt}");
            let c = &client.as_ref().unwrap().0;
            let sent = c.publish("dur/data", qos, false, payload.clone());
            match tokio::time::timeout(WAIT, sent).await {
                Ok(Ok(rc)) if rc.0 < 0x80 => {
                    out.push((payload, qos));
                    acked.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                // Refused or failed (a node died under it, an election): not acknowledged; try again.
                _ => {
                    client = None;
                    attempt += 1;
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_owner_of_a_persistent_subscriber_loses_no_acknowledged_qos1_or_qos2_message() {
    let mut c = Cluster::three("", "");
    // The persistent subscriber on node 2, online, taking messages without acknowledging any: everything
    // it was sent stays in its inbox.
    let mut sub = Raw::connect(addr(c.port(2))).await;
    let mut conn = connect("field-unit", ProtocolVersion::V5);
    conn.clean_start = true;
    conn.properties.session_expiry_interval = Some(600);
    assert_eq!(sub.handshake(conn.clone()).await.0, ReasonCode::SUCCESS);
    assert_eq!(
        sub.subscribe(1, "dur/#", QoS::ExactlyOnce).await,
        vec![ReasonCode(2)]
    );
    let drain = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut sub.stream, &mut tokio::io::sink()).await;
    });

    // Publishers on nodes 1 and 3; more messages than the session's read-ahead holds in memory.
    const PER_PUBLISHER: usize = 200;
    let acked = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = [(1, "pub-a"), (3, "pub-b")]
        .into_iter()
        .map(|(node, name)| {
            tokio::spawn(publisher(
                c.port(node),
                name.to_string(),
                PER_PUBLISHER,
                acked.clone(),
            ))
        })
        .collect();
    // Node 2 dies with SIGKILL while they publish.
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.load(Ordering::Relaxed) < PER_PUBLISHER / 2 {
        assert!(Instant::now() < deadline, "nothing was acknowledged");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // First frozen (SIGSTOP): what is acknowledged meanwhile cannot have reached the session on node 2 at
    // all, only the replicated store; then killed.
    let before = acked.load(Ordering::Relaxed);
    c.nodes[1].signal(libc::SIGSTOP);
    while acked.load(Ordering::Relaxed) < before + PER_PUBLISHER / 2 {
        assert!(
            Instant::now() < deadline,
            "nothing acknowledged with node 2 frozen"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    c.nodes[1].signal(libc::SIGKILL);
    c.nodes[1].wait_exit();
    let _ = drain.await;
    let mut published = Vec::new();
    for t in tasks {
        published.extend(t.await.expect("publisher"));
    }
    assert_eq!(published.len(), 2 * PER_PUBLISHER);

    // The client resumes on node 3 (retried while the two survivors elect a leader, if node 2 led).
    let mut sub = resume_on(c.port(3), &conn).await;
    let wanted: BTreeMap<String, QoS> = published.into_iter().collect();
    let mut got: BTreeMap<String, usize> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !wanted.keys().all(|k| got.contains_key(k)) {
        assert!(
            Instant::now() < deadline,
            "missing after the owner died: {:?}",
            wanted
                .keys()
                .filter(|k| !got.contains_key(*k))
                .take(20)
                .collect::<Vec<_>>()
        );
        match sub.recv().await {
            Some(Packet::Publish(m)) => {
                let payload = String::from_utf8(m.payload.to_vec()).unwrap();
                *got.entry(payload).or_default() += 1;
                let ack = PubAck {
                    pkid: m.pkid,
                    reason: ReasonCode::SUCCESS,
                    properties: Properties::default(),
                };
                match m.qos {
                    QoS::AtLeastOnce => sub.send(&Packet::PubAck(ack)).await,
                    QoS::ExactlyOnce => sub.send(&Packet::PubRec(ack)).await,
                    QoS::AtMostOnce => {}
                }
            }
            Some(Packet::PubRel(r)) => {
                sub.send(&Packet::PubComp(PubAck {
                    pkid: r.pkid,
                    reason: ReasonCode::SUCCESS,
                    properties: Properties::default(),
                }))
                .await
            }
            Some(_) => {}
            None => panic!("the resumed connection closed"),
        }
    }
    let twice: BTreeSet<&String> = got
        .iter()
        .filter(|(p, n)| **n > 1 && wanted.get(*p) == Some(&QoS::ExactlyOnce))
        .map(|(p, _)| p)
        .collect();
    assert!(
        twice.is_empty(),
        "QoS 2 delivered more than once: {twice:?}"
    );
}

/// Waits until `name` on the node with this HTTP port reads `want`.
async fn until_metric(http_port: u16, name: &str, want: f64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = common::process::metric(http_port, name).await;
        if v == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} stayed {v}, wanted {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn with_will(id: &str, topic: &str, delay: Option<u32>) -> cicada::protocol::Connect {
    let mut c = connect(id, ProtocolVersion::V5);
    c.clean_start = true;
    c.properties.session_expiry_interval = Some(600);
    let properties = Properties {
        will_delay_interval: delay,
        ..Default::default()
    };
    c.will = Some(cicada::protocol::LastWill {
        topic: topic.into(),
        payload: "offline".into(),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties,
    });
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_will_of_a_connection_on_a_killed_node_fires_once_from_the_cluster_unless_its_client_came_back(
) {
    let mut c = Cluster::three("", "failure_detection_ms = 1500");
    // A clean subscriber on node 1, and a persistent one on node 3 that is offline when the Will fires.
    let opts = ClientOptions::new("127.0.0.1", c.port(1), "dashboard").version(ProtocolVersion::V5);
    let (watch, mut events, _) = Client::connect(opts).await.unwrap();
    watch.subscribe("status/#", QoS::AtLeastOnce).await.unwrap();
    let mut archiver = Raw::connect(addr(c.port(3))).await;
    let mut ac = connect("archiver", ProtocolVersion::V5);
    ac.clean_start = true;
    ac.properties.session_expiry_interval = Some(600);
    assert_eq!(archiver.handshake(ac.clone()).await.0, ReasonCode::SUCCESS);
    archiver.subscribe(1, "status/#", QoS::AtLeastOnce).await;
    archiver.send(&Packet::Disconnect(Default::default())).await;
    assert_eq!(archiver.expect_close().await, None);
    // A shared group with members on node 1 and node 3: one of them gets the Will, once cluster-wide.
    let mut ops = Vec::new();
    for (node, id) in [(1, "ops-1"), (3, "ops-3")] {
        let opts = ClientOptions::new("127.0.0.1", c.port(node), id).version(ProtocolVersion::V5);
        let (member, events, _) = Client::connect(opts).await.unwrap();
        member
            .subscribe("$share/ops/status/#", QoS::AtLeastOnce)
            .await
            .unwrap();
        ops.push((member, events));
    }
    // Two devices with Wills on node 2: dev-1 stays away after the crash; dev-2 (Will Delay 30 s) connects
    // again on node 3 within its delay.
    let mut d1 = Raw::connect(addr(c.port(2))).await;
    assert_eq!(
        d1.handshake(with_will("dev-1", "status/dev-1", None))
            .await
            .0,
        ReasonCode::SUCCESS
    );
    let mut d2 = Raw::connect(addr(c.port(2))).await;
    let c2 = with_will("dev-2", "status/dev-2", Some(30));
    assert_eq!(d2.handshake(c2.clone()).await.0, ReasonCode::SUCCESS);
    for n in [0, 2] {
        until_metric(c.nodes[n].http_port, "cicada_cluster_wills_recorded", 2.0).await;
    }

    c.nodes[1].signal(libc::SIGKILL);
    c.nodes[1].wait_exit();
    let mut again = c2.clone();
    again.will = None;
    let mut _d2 = resume_on(c.port(3), &again).await;

    // dev-1's Will reaches the subscriber on node 1 once the leader counts node 2 as down.
    let m = common::next_message(&mut events, "dev-1's Will from the cluster").await;
    assert_eq!(
        (m.topic.as_str(), &m.payload[..]),
        ("status/dev-1", &b"offline"[..])
    );
    let (first, m) = {
        let (a, b) = ops.split_at_mut(1);
        let (e1, e3) = (&mut a[0].1, &mut b[0].1);
        tokio::select! {
            m = common::next_message(e1, "the Will on the group's member on node 1") => (0, m),
            m = common::next_message(e3, "the Will on the group's member on node 3") => (1, m),
        }
    };
    assert_eq!(m.topic, "status/dev-1", "the group gets the fired Will");
    let other = &mut ops[1 - first].1;
    let extra = tokio::time::timeout(Duration::from_millis(300), other.next_message()).await;
    assert!(
        extra.is_err(),
        "one member of the group, cluster-wide: {extra:?}"
    );
    // Nothing is left to fire (dev-2's record went with its new connection, which has no Will), and it
    // fired once.
    for n in [0, 2] {
        until_metric(c.nodes[n].http_port, "cicada_cluster_wills_recorded", 0.0).await;
    }
    let fired = common::process::metric(c.nodes[0].http_port, "cicada_cluster_wills_fired_total")
        .await
        + common::process::metric(c.nodes[2].http_port, "cicada_cluster_wills_fired_total").await;
    assert_eq!(fired, 1.0, "one Will fired, once");
    // The persistent subscriber has it in its inbox, once, wherever it resumes.
    until_metric(c.nodes[0].http_port, "cicada_store_inbox_messages", 1.0).await;
    let mut back = Raw::connect(addr(c.port(1))).await;
    ac.clean_start = false;
    let (code, present, _) = back.handshake(ac).await;
    assert_eq!((code, present), (ReasonCode::SUCCESS, true));
    match back.recv().await {
        Some(Packet::Publish(m)) => {
            assert_eq!(m.topic, "status/dev-1");
        }
        other => panic!("expected the Will, got {other:?}"),
    }
    drop(d1);
    drop(d2);
}

/// Publishes QoS 1 messages until `stop`, each on the next node that takes it (a draining or restarting
/// node refuses or closes: the same message is then tried, with a new payload, on the next node). Returns
/// the payloads acknowledged with success.
async fn rolling_publisher(
    ports: Vec<u16>,
    name: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
    acked: Arc<AtomicUsize>,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut client: Option<(Client, Events)> = None;
    let (mut i, mut attempt) = (0usize, 0usize);
    while !stop.load(Ordering::Relaxed) {
        if client.is_none() {
            let port = ports[attempt % ports.len()];
            let opts = ClientOptions::new("127.0.0.1", port, format!("{name}-{attempt}"))
                .version(ProtocolVersion::V5);
            match tokio::time::timeout(WAIT, Client::connect(opts)).await {
                Ok(Ok((c, events, _))) => client = Some((c, events)),
                _ => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        }
        let payload = format!("{name}-{i}-{attempt}");
        let sent = client.as_ref().unwrap().0.publish(
            "fleet/data",
            QoS::AtLeastOnce,
            false,
            payload.clone(),
        );
        match tokio::time::timeout(WAIT, sent).await {
            Ok(Ok(rc)) if rc.0 < 0x80 => {
                out.push(payload);
                acked.fetch_add(1, Ordering::Relaxed);
                i += 1;
                // Paced: a load, not a flood.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            _ => {
                client = None;
                attempt += 1;
            }
        }
    }
    out
}

/// A persistent QoS 1 subscriber that follows its session from node to node: whenever its connection
/// ends (its node drains: DISCONNECT 0x8B), it resumes on the next node. Acknowledges everything; stops
/// once it has every payload in `want` (or at its deadline).
async fn roaming_subscriber(
    ports: Vec<u16>,
    got: Arc<std::sync::Mutex<BTreeSet<String>>>,
    done: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut n = 0usize;
    let mut conn = connect("fleet-archiver", ProtocolVersion::V5);
    conn.clean_start = false;
    conn.properties.session_expiry_interval = Some(600);
    while !done.load(Ordering::Relaxed) {
        let port = ports[n % ports.len()];
        n += 1;
        let Ok(Ok(stream)) =
            tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(addr(port))).await
        else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let mut s = Raw::from_stream(stream);
        s.decoder.version = ProtocolVersion::V5;
        s.send(&Packet::Connect(Box::new(conn.clone()))).await;
        loop {
            if done.load(Ordering::Relaxed) {
                return;
            }
            let p = match tokio::time::timeout(Duration::from_millis(200), s.recv_or_close()).await
            {
                Ok(p) => p,
                Err(_) => continue,
            };
            match p {
                Some(Packet::ConnAck(a)) if a.reason != ReasonCode::SUCCESS => break,
                Some(Packet::Publish(m)) => {
                    got.lock()
                        .unwrap()
                        .insert(String::from_utf8(m.payload.to_vec()).unwrap());
                    s.send(&Packet::PubAck(PubAck::new(m.pkid))).await;
                }
                Some(_) => {}
                None => break,
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_all_three_nodes_under_load_loses_no_acknowledged_message() {
    let mut c = Cluster::three("", "");
    let ports: Vec<u16> = (1..=3).map(|n| c.port(n)).collect();
    // The subscriber's session exists before the load starts.
    let mut first = Raw::connect(addr(ports[0])).await;
    let mut sc = connect("fleet-archiver", ProtocolVersion::V5);
    sc.clean_start = true;
    sc.properties.session_expiry_interval = Some(600);
    assert_eq!(first.handshake(sc).await.0, ReasonCode::SUCCESS);
    first.subscribe(1, "fleet/#", QoS::AtLeastOnce).await;
    first.send(&Packet::Disconnect(Default::default())).await;
    let got = Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sub = tokio::spawn(roaming_subscriber(ports.clone(), got.clone(), done.clone()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let pubs: Vec<_> = (0..2)
        .map(|k| {
            let mut order = ports.clone();
            order.rotate_left(k + 1);
            tokio::spawn(rolling_publisher(
                order,
                format!("pub{k}"),
                stop.clone(),
                acked.clone(),
            ))
        })
        .collect();
    // Each node in turn: drained with SIGTERM (exit 0), started again, ready before the next one goes.
    for n in 0..3 {
        let before = acked.load(Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(30);
        while acked.load(Ordering::Relaxed) < before + 100 {
            assert!(
                Instant::now() < deadline,
                "the load stalled before node {}",
                n + 1
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        c.nodes[n].signal(libc::SIGTERM);
        assert!(c.nodes[n].wait_exit().success(), "a drain exits 0");
        c.nodes[n].kill9_and_spawn_after_exit();
        c.nodes[n].wait_listening();
        common::cluster::wait_ready(c.nodes[n].http_port);
    }
    let before = acked.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.load(Ordering::Relaxed) < before + 100 {
        assert!(
            Instant::now() < deadline,
            "the load stalled after the restarts"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut published = Vec::new();
    for p in pubs {
        published.extend(p.await.expect("publisher"));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let missing: Vec<String> = {
            let got = got.lock().unwrap();
            published
                .iter()
                .filter(|p| !got.contains(*p))
                .take(10)
                .cloned()
                .collect()
        };
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "acknowledged and never delivered (of {}): {missing:?}",
            published.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    done.store(true, Ordering::Relaxed);
    let _ = sub.await;
}

/// Figures for the notes, not a check (`cargo test --release --test cluster_durable -- --ignored
/// --nocapture`): kill -9 of the leader, which owns a persistent session, until that session connects
/// again (session present) on another node; ten runs, median and max.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn failover_time_figures() {
    let mut times = Vec::new();
    for run in 0..10 {
        let mut c = Cluster::three("", "");
        let leader = loop {
            let l = common::process::metric(c.nodes[0].http_port, "cicada_raft_leader").await;
            if l > 0.0 {
                break l as usize;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let mut s = Raw::connect(addr(c.port(leader))).await;
        let mut conn = connect(&format!("failover-{run}"), ProtocolVersion::V5);
        conn.clean_start = true;
        conn.properties.session_expiry_interval = Some(600);
        assert_eq!(s.handshake(conn.clone()).await.0, ReasonCode::SUCCESS);
        s.subscribe(1, "f/#", QoS::AtLeastOnce).await;
        c.nodes[leader - 1].signal(libc::SIGKILL);
        let t0 = Instant::now();
        c.nodes[leader - 1].wait_exit();
        conn.clean_start = false;
        let others: Vec<usize> = (1..=3).filter(|n| *n != leader).collect();
        let mut k = 0;
        loop {
            let node = others[k % 2];
            k += 1;
            let mut s = Raw::connect(addr(c.port(node))).await;
            let (code, present, _) = s.handshake(conn.clone()).await;
            if code == ReasonCode::SUCCESS {
                assert!(present);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        println!("run {run}: leader {leader} killed, session back after {ms:.0} ms");
        times.push(ms);
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "failover: median {:.0} ms, max {:.0} ms (10 runs, tick 100 ms)",
        (times[4] + times[5]) / 2.0,
        times[9]
    );
}
