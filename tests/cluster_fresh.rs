//! A node decides which persistent sessions a QoS 1/2 message is for from its own applied state: one that
//! stalled (SIGSTOP) while a persistent subscription was made elsewhere — its SUBACK stopped waiting for the
//! frozen node — reads through the leader before the first publish it handles after waking, so the message
//! reaches the subscription (issue 12: once a client has its SUBACK, any PUBLISH received afterwards by any
//! node with a leader reaches it). A node without a leader refuses QoS 1/2 instead of acknowledging what it
//! cannot check. And a node that stalled through a takeover acknowledges nothing on the old connection,
//! neither a PUBLISH it reads after waking nor one whose acknowledgement waited for a commit (promise 4).

mod common;

use bytes::Bytes;
use cicada::protocol::{Packet, ProtocolVersion, Publish, QoS, ReasonCode};
use common::broker::{connect, Raw};
use common::cluster::Cluster;
use common::process::metric;
use common::WAIT;
use std::time::Instant;

fn addr(port: u16) -> std::net::SocketAddr {
    format!("127.0.0.1:{port}").parse().unwrap()
}

fn publish(topic: &str, pkid: u16, payload: &'static [u8]) -> Packet {
    Packet::Publish(Publish {
        topic: topic.into(),
        qos: QoS::AtLeastOnce,
        pkid,
        payload: Bytes::from_static(payload),
        ..Publish::default()
    })
}

fn persistent(id: &str) -> cicada::protocol::Connect {
    let mut c = connect(id, ProtocolVersion::V5);
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(600);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_stalled_checks_with_the_leader_before_matching_a_qos1_publish() {
    let c = Cluster::three("", "");
    // The publisher is connected to node 3 before it freezes.
    let mut publisher = Raw::connect(addr(c.port(3))).await;
    assert_eq!(
        publisher
            .handshake(connect("pub", ProtocolVersion::V5))
            .await
            .0,
        ReasonCode::SUCCESS
    );
    c.nodes[2].signal(libc::SIGSTOP);
    // While node 3 is frozen, a persistent subscriber on node 1 subscribes (its SUBACK gives up waiting for
    // node 3) and goes offline.
    let mut sub = Raw::connect(addr(c.port(1))).await;
    assert_eq!(
        sub.handshake(persistent("archiver")).await.0,
        ReasonCode::SUCCESS
    );
    assert_eq!(
        sub.subscribe(1, "fence/#", QoS::AtLeastOnce).await,
        [ReasonCode::GRANTED_QOS_1]
    );
    sub.send(&Packet::Disconnect(Default::default())).await;
    assert_eq!(sub.expect_close().await, None);
    // The PUBLISH waits in node 3's socket; node 3 handles it as soon as it wakes.
    publisher
        .send(&publish("fence/1", 1, b"after the SUBACK"))
        .await;
    c.nodes[2].signal(libc::SIGCONT);
    match publisher.recv().await {
        Some(Packet::PubAck(a)) => assert_eq!(a.reason, ReasonCode::SUCCESS),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    assert!(
        metric(
            c.nodes[2].http_port,
            "cicada_cluster_read_barriers_total{outcome=\"ok\"}"
        )
        .await
            >= 1.0
    );
    // The subscriber resumes and has it.
    let mut back = Raw::connect(addr(c.port(1))).await;
    let (code, present, _) = back.handshake(persistent("archiver")).await;
    assert_eq!((code, present), (ReasonCode::SUCCESS, true));
    match back.recv().await {
        Some(Packet::Publish(p)) => assert_eq!(&p.payload[..], b"after the SUBACK"),
        other => panic!("expected the message published after the SUBACK, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_leader_refuses_a_qos1_publish_after_taking_qos0() {
    let mut c = Cluster::three("", "");
    c.leave_node_1_alone();
    let http = c.nodes[0].http_port;
    let mut p = Raw::connect(addr(c.port(1))).await;
    assert_eq!(
        p.handshake(connect("lonely", ProtocolVersion::V5)).await.0,
        ReasonCode::SUCCESS
    );
    p.send(&Packet::Publish(Publish {
        topic: "x".into(),
        qos: QoS::AtMostOnce,
        payload: Bytes::from_static(b"q0"),
        ..Publish::default()
    }))
    .await;
    let started = Instant::now();
    p.send(&publish("x", 1, b"q1")).await;
    // Never acknowledged: DISCONNECT 0x80 (0x88 is a CONNACK code only), in bounded time.
    assert_eq!(p.expect_close().await, Some(ReasonCode::UNSPECIFIED_ERROR));
    assert!(started.elapsed() < WAIT);
    assert!(
        metric(
            http,
            "cicada_cluster_read_barriers_total{outcome=\"refused\"}"
        )
        .await
            >= 1.0
    );
}

/// Promise 4 (one live connection per client id), as `cicada-chaos` found it broken: a client connected
/// to node 3 while node 3 is frozen connects again on node 1 (the takeover commits without node 3); once
/// node 3 wakes, a QoS 1 PUBLISH on the old connection must not be acknowledged (node 3 reads through the
/// leader, learns of the takeover and closes the old connection with 0x8E).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_stalled_through_a_takeover_acknowledges_nothing_on_the_old_connection() {
    let c = Cluster::three("", "");
    let mut old = Raw::connect(addr(c.port(3))).await;
    assert_eq!(
        old.handshake(persistent("roamer")).await.0,
        ReasonCode::SUCCESS
    );
    c.nodes[2].signal(libc::SIGSTOP);
    let mut new = Raw::connect(addr(c.port(1))).await;
    let (code, present, _) = new.handshake(persistent("roamer")).await;
    assert_eq!((code, present), (ReasonCode::SUCCESS, true));
    // Sent after the new connection's CONNACK; node 3 reads it as soon as it wakes.
    old.send(&publish("roam/1", 1, b"from the old connection"))
        .await;
    c.nodes[2].signal(libc::SIGCONT);
    match old.recv().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, ReasonCode::SESSION_TAKEN_OVER),
        None => {}
        other => panic!("the old connection was still served: {other:?}"),
    }
    // The new connection works on.
    new.send(&publish("roam/1", 2, b"from the new connection"))
        .await;
    match new.recv().await {
        Some(Packet::PubAck(a)) => assert!(!a.reason.is_error(), "{a:?}"),
        other => panic!("expected PUBACK on the new connection, got {other:?}"),
    }
}

/// Promise 4 again, for an acknowledgement that waits for a commit (a QoS 1 copy for a persistent
/// session): the commit is on its way when the publisher's node freezes; the client connects again on
/// another node, which takes the session over (its CONNACK stops waiting for the frozen node). When that
/// node wakes it applies the message and the take together: the held PUBACK must not leave on the old
/// connection (it checks, after the wait, that the node still holds the client). The message itself was
/// committed before the take: its subscriber gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledgement_held_for_a_commit_through_a_stall_and_a_takeover_never_leaves() {
    let c = Cluster::three("", "");
    let l = c.leader().await;
    // `old`: the node the client is on; `other`: the third node, where it connects again.
    let old_node = (l + 1) % 3;
    let other = (l + 2) % 3;
    let (old_port, other_port) = (c.nodes[old_node].port, c.nodes[other].port);
    let mut sub = Raw::connect(addr(old_port)).await;
    assert_eq!(
        sub.handshake(persistent("keeper")).await.0,
        ReasonCode::SUCCESS
    );
    assert_eq!(
        sub.subscribe(1, "held/#", QoS::AtLeastOnce).await,
        [ReasonCode::GRANTED_QOS_1]
    );
    sub.send(&Packet::Disconnect(Default::default())).await;
    assert_eq!(sub.expect_close().await, None);
    let mut old = Raw::connect(addr(old_port)).await;
    assert_eq!(
        old.handshake(persistent("roamer")).await.0,
        ReasonCode::SUCCESS
    );
    let proposals = |n: usize| metric(c.nodes[n].http_port, "cicada_raft_proposals_total");
    let before = proposals(old_node).await;
    // The leader freezes: the copy's proposal waits in its socket.
    c.nodes[l].signal(libc::SIGSTOP);
    old.send(&publish("held/1", 1, b"committed before the take"))
        .await;
    let deadline = Instant::now() + WAIT;
    while proposals(old_node).await <= before {
        assert!(Instant::now() < deadline, "the copy was never proposed");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // A margin for the forwarded proposal to be written to the leader's socket (the node proposes, then its
    // peer link writes), well under an election timeout.
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    c.nodes[old_node].signal(libc::SIGSTOP);
    c.nodes[l].signal(libc::SIGCONT);
    // The copy commits without the frozen node; then the client connects again elsewhere.
    let mut new = Raw::connect(addr(other_port)).await;
    let (code, present, _) = new.handshake(persistent("roamer")).await;
    assert_eq!((code, present), (ReasonCode::SUCCESS, true));
    c.nodes[old_node].signal(libc::SIGCONT);
    match old.recv().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, ReasonCode::SESSION_TAKEN_OVER),
        None => {}
        other => panic!("the old connection was still served after the new CONNACK: {other:?}"),
    }
    // The held acknowledgement was checked and withheld (it may be checked after the close arrived).
    let deadline = Instant::now() + WAIT;
    while metric(
        c.nodes[old_node].http_port,
        "cicada_cluster_read_barriers_total{outcome=\"taken_over\"}",
    )
    .await
        < 1.0
    {
        assert!(
            Instant::now() < deadline,
            "the held acknowledgement was never checked against the takeover"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Committed before the take: the subscriber has it.
    let mut back = Raw::connect(addr(other_port)).await;
    let (code, present, _) = back.handshake(persistent("keeper")).await;
    assert_eq!((code, present), (ReasonCode::SUCCESS, true));
    match back.recv().await {
        Some(Packet::Publish(p)) => assert_eq!(&p.payload[..], b"committed before the take"),
        other => panic!("expected the committed message, got {other:?}"),
    }
}

/// The owner of `client_id` as node `http_port` has applied it.
async fn owner_on(http_port: u16, client_id: &str) -> Option<u64> {
    let (status, body) = common::broker::http_request(
        addr(http_port),
        "GET",
        &format!("/api/v1/sessions/{client_id}"),
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    (status == 200).then(|| v["owner_node"].as_u64()).flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hopping_over_three_nodes_is_not_told_connected_before_the_first_let_go() {
    let c = Cluster::three("", "");
    // A and B are followers, C leads: with A frozen, B and C still commit.
    let leader = c.leader().await;
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let (a, b, cc) = (others[0], others[1], leader);
    let mut hop = connect("hop", ProtocolVersion::V5);
    hop.properties.session_expiry_interval = Some(600);
    let mut old = Raw::connect(addr(c.nodes[a].port)).await;
    assert_eq!(old.handshake(hop.clone()).await.0, ReasonCode::SUCCESS);
    // A stalls with the client's connection open.
    c.nodes[a].signal(libc::SIGSTOP);
    // The client resumes on B: B's take commits, and its CONNACK waits for A to let go.
    hop.clean_start = false;
    let b_port = c.nodes[b].port;
    let b_hop = hop.clone();
    let on_b = tokio::spawn(async move {
        let mut s = Raw::connect(addr(b_port)).await;
        s.decoder.version = ProtocolVersion::V5;
        s.send(&Packet::Connect(Box::new(b_hop))).await;
        s.recv_or_close().await
    });
    let deadline = Instant::now() + WAIT;
    while owner_on(c.nodes[cc].http_port, "hop").await != Some(b as u64 + 1) {
        assert!(Instant::now() < deadline, "B's take never applied on C");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // Then on C, while B still waits for A: C's CONNACK waits for B, and B answers only once its own wait
    // for A is over (A answered, or its lease ran out: it can no longer serve the old connection).
    let mut on_c = Raw::connect(addr(c.nodes[cc].port)).await;
    assert_eq!(on_c.handshake(hop.clone()).await.0, ReasonCode::SUCCESS);
    let b_waited = metric(
        c.nodes[b].http_port,
        "cicada_cluster_release_waits_total{outcome=\"lease_ran_out\"}",
    )
    .await;
    assert_eq!(
        b_waited, 1.0,
        "C's client was told it is connected while B still waited for A to let go"
    );
    // B's connection never got the session (C took it meanwhile).
    assert!(!matches!(
        on_b.await.unwrap(),
        Some(Packet::ConnAck(ack)) if ack.reason == ReasonCode::SUCCESS
    ));
    // A wakes, applies the claims and closes the old connection.
    c.nodes[a].signal(libc::SIGCONT);
    assert_eq!(old.expect_close().await, Some(ReasonCode(0x8E)));
}
