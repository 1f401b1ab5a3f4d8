//! Three `cicada serve` processes as one cluster (issue 12): messages cross nodes at every QoS, with
//! wildcards, overlapping subscriptions and shared groups spread over nodes; retained messages set on one
//! node are served by the others; a client id resumes its session on another node, whose old connection
//! gets 0x8E; a node without a leader refuses what needs the store and keeps serving clean sessions.

mod common;

use bytes::Bytes;
use cicada::client::{Client, ClientOptions, Events};
use cicada::protocol::{Packet, Properties, ProtocolVersion, QoS, ReasonCode};
use common::broker::{connect, Raw};
use common::cluster::Cluster;
use common::{next_message, WAIT};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

async fn client(port: u16, id: &str) -> (Client, Events) {
    let (c, e, _) =
        Client::connect(ClientOptions::new("127.0.0.1", port, id).version(ProtocolVersion::V5))
            .await
            .expect("connect");
    (c, e)
}

fn addr(port: u16) -> std::net::SocketAddr {
    format!("127.0.0.1:{port}").parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_cross_nodes_at_every_qos_with_wildcards_overlaps_and_shared_groups() {
    let c = Cluster::three("", "");
    // Node 2: overlapping filters of one session (one copy, the higher QoS); node 3 and node 1: members of
    // one shared group; node 3 also a plain subscriber on another filter.
    let (s2, mut e2) = client(c.port(2), "sub-2").await;
    s2.subscribe("device/+/status", QoS::ExactlyOnce)
        .await
        .unwrap();
    s2.subscribe("device/#", QoS::AtLeastOnce).await.unwrap();
    let (g1, mut eg1) = client(c.port(1), "worker-1").await;
    let (g3, mut eg3) = client(c.port(3), "worker-3").await;
    g1.subscribe("$share/workers/device/+/status", QoS::AtLeastOnce)
        .await
        .unwrap();
    g3.subscribe("$share/workers/device/+/status", QoS::AtLeastOnce)
        .await
        .unwrap();
    let (p3, mut ep3) = client(c.port(3), "plain-3").await;
    p3.subscribe("other/+", QoS::AtMostOnce).await.unwrap();

    // Once SUBACKs are in, a publish on node 1 reaches node 2 and 3, in order, at each QoS.
    let (pubr, _pe) = client(c.port(1), "publisher").await;
    let n = 30;
    for i in 0..n {
        let qos = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce][i % 3];
        pubr.publish(format!("device/{i}/status"), qos, false, format!("{i}"))
            .await
            .unwrap();
    }
    pubr.publish("other/x", QoS::AtMostOnce, false, "o")
        .await
        .unwrap();
    // Messages of one publisher on one topic keep their order; topics go through different shards.
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let m = next_message(&mut e2, "node 2 subscriber").await;
        let i: usize = String::from_utf8_lossy(&m.payload).parse().unwrap();
        assert_eq!(m.topic, format!("device/{i}/status"));
        let published = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce][i % 3];
        assert_eq!(
            m.qos, published,
            "one copy, at min(published, the highest granted)"
        );
        assert!(seen.insert(i, ()).is_none(), "message {i} twice");
    }
    for i in 0..n {
        pubr.publish(
            "device/same/status",
            QoS::AtLeastOnce,
            false,
            format!("{i}"),
        )
        .await
        .unwrap();
    }
    for i in 0..n {
        let m = next_message(&mut e2, "node 2 subscriber, one topic").await;
        assert_eq!(m.payload, Bytes::from(format!("{i}")), "in publish order");
    }
    let o = next_message(&mut ep3, "plain subscriber on node 3").await;
    assert_eq!(o.topic, "other/x");
    // The group got each message once, spread over its members on nodes 1 and 3.
    let mut got: BTreeMap<String, usize> = BTreeMap::new();
    let mut per_member = [0, 0];
    while got.len() < 2 * n {
        tokio::select! {
            m = next_message(&mut eg1, "group member on node 1") => { per_member[0] += 1; *got.entry(format!("{}:{}", m.topic, String::from_utf8_lossy(&m.payload))).or_default() += 1; }
            m = next_message(&mut eg3, "group member on node 3") => { per_member[1] += 1; *got.entry(format!("{}:{}", m.topic, String::from_utf8_lossy(&m.payload))).or_default() += 1; }
        }
    }
    assert!(
        got.values().all(|v| *v == 1),
        "each message once to the group: {got:?}"
    );
    assert!(
        per_member[0] > 0 && per_member[1] > 0,
        "both nodes' members got work: {per_member:?}"
    );
    // Nothing more arrives: no duplicates across nodes.
    let extra = tokio::time::timeout(Duration::from_millis(300), e2.next_message()).await;
    assert!(extra.is_err(), "no second copy on node 2: {extra:?}");
    assert!(
        common::process::metric(
            c.nodes[0].http_port,
            "cicada_forwarded_messages_total{direction=\"out\",peer=\"2\"}"
        )
        .await
            >= 2.0 * n as f64,
        "forwarded frames are counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_message_set_on_node_1_is_served_on_node_3() {
    let c = Cluster::three("", "");
    let (p, _pe) = client(c.port(1), "device-7").await;
    let rc = p
        .publish("device/7/online", QoS::AtLeastOnce, true, "true")
        .await
        .unwrap();
    assert_eq!(rc, ReasonCode::SUCCESS, "acknowledged once committed");
    // Applied on node 3 at its own pace: a subscriber there gets it (retry until applied, bounded).
    let deadline = Instant::now() + WAIT;
    loop {
        let (s, mut e) = client(c.port(3), "dashboard").await;
        s.subscribe("device/+/online", QoS::AtLeastOnce)
            .await
            .unwrap();
        match tokio::time::timeout(Duration::from_millis(500), e.next_message()).await {
            Ok(Some(m)) => {
                assert!(m.retain && m.payload == "true");
                break;
            }
            _ => assert!(
                Instant::now() < deadline,
                "node 3 never served the retained message"
            ),
        }
    }
    // On every node, a SUBSCRIBE right behind a retained QoS 0 PUBLISH in one write gets it: the
    // connection's next packet waits until the retained change is applied on its node [MQTT-3.3.1-5].
    // Before, the SUBSCRIBE read the index ahead of the commit (a round trip to a majority).
    for node in 1..=3 {
        for i in 0..5 {
            let mut raw = Raw::connect(addr(c.port(node))).await;
            raw.handshake(connect(&format!("rq0-{node}-{i}"), ProtocolVersion::V5))
                .await;
            let topic = format!("fresh/{node}/{i}");
            let mut out = bytes::BytesMut::new();
            for p in [
                Packet::Publish(cicada::protocol::Publish {
                    topic: topic.clone(),
                    retain: true,
                    payload: Bytes::from_static(b"set"),
                    ..Default::default()
                }),
                subscribe_packet(&topic),
            ] {
                cicada::protocol::encode(&p, ProtocolVersion::V5, &mut out).unwrap();
            }
            raw.send_bytes(&out).await;
            loop {
                match raw.recv().await {
                    Some(Packet::Publish(p)) => {
                        assert_eq!((p.topic.as_str(), p.retain), (topic.as_str(), true));
                        break;
                    }
                    Some(Packet::SubAck(_)) => {}
                    other => panic!("node {node} try {i}: {other:?} before the retained message"),
                }
            }
        }
    }
}

fn subscribe_packet(filter: &str) -> Packet {
    Packet::Subscribe(cicada::protocol::Subscribe {
        pkid: 1,
        properties: Properties::default(),
        filters: vec![cicada::protocol::SubscribeFilter {
            filter: filter.into(),
            options: Default::default(),
        }],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_resumed_on_another_node_is_taken_over_with_its_subscriptions_and_stored_messages(
) {
    let c = Cluster::three("", "");
    // A persistent session on node 1 with a subscription, then offline.
    let mut first = Raw::connect(addr(c.port(1))).await;
    let mut conn = connect("phone", ProtocolVersion::V5);
    conn.clean_start = true;
    conn.properties.session_expiry_interval = Some(600);
    assert_eq!(first.handshake(conn.clone()).await.0, ReasonCode::SUCCESS);
    first.subscribe(1, "cmd/phone/#", QoS::AtLeastOnce).await;
    first.send(&Packet::Disconnect(Default::default())).await;
    assert_eq!(first.expect_close().await, None);
    // QoS 1 messages published on node 3 while it is offline: stored in its inbox (on node 1's session).
    let (p, _pe) = client(c.port(3), "backend").await;
    for i in 0..5 {
        assert_eq!(
            p.publish("cmd/phone/ring", QoS::AtLeastOnce, false, format!("{i}"))
                .await
                .unwrap(),
            ReasonCode::SUCCESS
        );
    }
    // Stored before each PUBACK (apply's fan-out); the inbox is replicated: node 2 counts it too, once it
    // applied them.
    let deadline = Instant::now() + WAIT;
    while common::process::metric(c.nodes[1].http_port, "cicada_store_inbox_messages").await < 5.0 {
        assert!(
            Instant::now() < deadline,
            "the offline session's copies were never stored"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The client comes back on node 2: session present, the stored messages, in order.
    let mut second = Raw::connect(addr(c.port(2))).await;
    conn.clean_start = false;
    let (code, present, _) = second.handshake(conn.clone()).await;
    assert_eq!(
        (code, present),
        (ReasonCode::SUCCESS, true),
        "session present on another node"
    );
    for i in 0..5 {
        match second.recv().await {
            Some(Packet::Publish(m)) => {
                assert_eq!(
                    m.payload,
                    Bytes::from(format!("{i}")),
                    "stored messages in order"
                );
                second
                    .send(&Packet::PubAck(cicada::protocol::PubAck {
                        pkid: m.pkid,
                        reason: ReasonCode::SUCCESS,
                        properties: Properties::default(),
                    }))
                    .await;
            }
            other => panic!("expected stored message {i}, got {other:?}"),
        }
    }
    // New messages published on node 3 now reach it on node 2 (its subscription moved with it).
    let deadline = Instant::now() + WAIT;
    let mut k = 0;
    loop {
        p.publish(format!("cmd/phone/new{k}"), QoS::AtLeastOnce, false, "n")
            .await
            .unwrap();
        match tokio::time::timeout(Duration::from_millis(300), second.recv()).await {
            Ok(Some(Packet::Publish(m))) => {
                assert!(m.topic.starts_with("cmd/phone/new"));
                break;
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => assert!(
                Instant::now() < deadline,
                "the subscription never followed the session"
            ),
        }
        k += 1;
    }
    // The client connects again on node 3 while still connected on node 2: node 2 closes it with 0x8E.
    let mut third = Raw::connect(addr(c.port(3))).await;
    let (code, present, _) = third.handshake(conn.clone()).await;
    assert_eq!((code, present), (ReasonCode::SUCCESS, true));
    let mut closed = None;
    while let Some(p) = second.recv().await {
        if let Packet::Disconnect(d) = p {
            closed = Some(d.reason);
        }
    }
    assert_eq!(closed, Some(ReasonCode::SESSION_TAKEN_OVER));
    third.send(&Packet::PingReq).await;
    loop {
        match third.recv().await {
            Some(Packet::PingResp) => break,
            Some(_) => continue,
            None => panic!("the new connection must stay open"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_session_on_another_node_closes_the_old_connection_with_0x8e() {
    let c = Cluster::three("", "");
    let mut old = Raw::connect(addr(c.port(1))).await;
    assert_eq!(
        old.handshake(connect("sensor-9", ProtocolVersion::V5))
            .await
            .0,
        ReasonCode::SUCCESS
    );
    let mut new = Raw::connect(addr(c.port(3))).await;
    assert_eq!(
        new.handshake(connect("sensor-9", ProtocolVersion::V5))
            .await
            .0,
        ReasonCode::SUCCESS
    );
    assert_eq!(
        old.expect_close().await,
        Some(ReasonCode::SESSION_TAKEN_OVER)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_leader_refuses_persistent_sessions_and_keeps_clean_ones_working() {
    let mut c = Cluster::three("", "");
    c.leave_node_1_alone();
    // Resuming a persistent session needs the store: refused with 0x88 in bounded time, never accepted.
    let started = Instant::now();
    let mut raw = Raw::connect(addr(c.port(1))).await;
    let mut conn = connect("durable", ProtocolVersion::V5);
    conn.clean_start = false;
    conn.properties.session_expiry_interval = Some(600);
    assert_eq!(raw.handshake(conn).await.0, ReasonCode::SERVER_UNAVAILABLE);
    assert!(started.elapsed() < WAIT);
    // MQTT 3.1.1: return code 3.
    let mut raw = Raw::connect(addr(c.port(1))).await;
    let mut conn = connect("durable-3", ProtocolVersion::V311);
    conn.clean_start = false;
    assert_eq!(raw.handshake(conn).await.0, ReasonCode::SERVER_UNAVAILABLE);
    // Clean sessions and QoS 0 work on the node alone.
    let (s, mut e) = client(c.port(1), "local-sub").await;
    s.subscribe("local/#", QoS::AtMostOnce).await.unwrap();
    let (p, _pe) = client(c.port(1), "local-pub").await;
    p.publish("local/x", QoS::AtMostOnce, false, "hi")
        .await
        .unwrap();
    assert_eq!(
        next_message(&mut e, "local delivery").await.payload,
        Bytes::from("hi")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_racing_for_one_id_on_two_nodes_end_with_one_live_connection() {
    let c = Cluster::three("", "");
    for round in 0..3 {
        let id = format!("racer-{round}");
        let (a, b) = (addr(c.port(1)), addr(c.port(2)));
        let (mut ra, mut rb) = (Raw::connect(a).await, Raw::connect(b).await);
        let (ca, cb) = tokio::join!(
            ra.handshake(connect(&id, ProtocolVersion::V5)),
            rb.handshake(connect(&id, ProtocolVersion::V5))
        );
        assert_eq!((ca.0, cb.0), (ReasonCode::SUCCESS, ReasonCode::SUCCESS));
        // One of them is closed with 0x8E; then the other still answers a ping: one live connection.
        let (loser_a, reason) = tokio::select! {
            r = ra.expect_close() => (true, r),
            r = rb.expect_close() => (false, r),
        };
        assert_eq!(
            reason,
            Some(ReasonCode::SESSION_TAKEN_OVER),
            "round {round}"
        );
        let winner = if loser_a { &mut rb } else { &mut ra };
        winner.send(&Packet::PingReq).await;
        loop {
            match winner.recv().await {
                Some(Packet::PingResp) => break,
                Some(_) => continue,
                None => panic!("round {round}: both connections were closed"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_with_sigkill_rejoins_catches_up_and_serves_what_was_committed_meanwhile() {
    let mut c = Cluster::three("", "");
    c.nodes[2].signal(libc::SIGKILL);
    c.nodes[2].wait_exit();
    // The two others elect a leader among themselves if node 3 led.
    let deadline = Instant::now() + WAIT;
    loop {
        let leader = common::process::metric(c.nodes[0].http_port, "cicada_raft_leader").await;
        if leader == 1.0 || leader == 2.0 {
            break;
        }
        assert!(Instant::now() < deadline, "no leader among nodes 1 and 2");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Retained messages committed by the two others while node 3 is down.
    let (p, _pe) = client(c.port(1), "writer").await;
    for i in 0..20 {
        let rc = p
            .publish(format!("state/{i}"), QoS::AtLeastOnce, true, format!("{i}"))
            .await
            .unwrap();
        assert_eq!(rc, ReasonCode::SUCCESS);
    }
    c.nodes[2].kill9_and_spawn_after_exit();
    c.nodes[2].wait_listening();
    common::cluster::wait_ready(c.nodes[2].http_port);
    // Node 3 serves all 20 (it waits for its quorum and applies the log before serving).
    let (s, mut e) = client(c.port(3), "reader").await;
    s.subscribe("state/#", QoS::AtLeastOnce).await.unwrap();
    let mut got = std::collections::BTreeSet::new();
    while got.len() < 20 {
        let m = next_message(&mut e, "retained message on the restarted node").await;
        assert!(m.retain);
        got.insert(m.topic);
    }
}
