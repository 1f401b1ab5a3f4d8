//! Retained messages on subscribe in a cluster (ARCHITECTURE §5 promise 2, issue 12): a node reads a
//! SUBSCRIBE's retained messages from its own index only after a read barrier through the leader asked after
//! the SUBSCRIBE, so a node that lags — just woken from SIGSTOP, or a follower a few milliseconds behind —
//! never serves a value older than one already acknowledged. Without a leader it serves none: the SUBACK
//! comes, the retained delivery waits until a barrier completes, and live messages keep flowing meanwhile.

mod common;

use bytes::Bytes;
use cicada::protocol::{
    Packet, Properties, ProtocolVersion, Publish, QoS, ReasonCode, Subscribe, SubscribeFilter,
    SubscriptionOptions,
};
use common::broker::{connect, http_request, Raw};
use common::cluster::Cluster;
use common::process::metric;
use common::WAIT;
use std::time::{Duration, Instant};

fn addr(port: u16) -> std::net::SocketAddr {
    format!("127.0.0.1:{port}").parse().unwrap()
}

fn retained(topic: &str, payload: &'static [u8]) -> Packet {
    Packet::Publish(Publish {
        topic: topic.into(),
        qos: QoS::AtLeastOnce,
        pkid: 1,
        retain: true,
        payload: Bytes::from_static(payload),
        ..Publish::default()
    })
}

fn subscribe(filter: &str) -> Packet {
    Packet::Subscribe(Subscribe {
        pkid: 1,
        properties: Properties::default(),
        filters: vec![SubscribeFilter {
            filter: filter.into(),
            options: SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..Default::default()
            },
        }],
    })
}

/// A retained QoS 1 PUBLISH through the node on `port`, retried (new connection) until it is acknowledged.
async fn set_retained(port: u16, topic: &str, payload: &'static [u8]) {
    let deadline = Instant::now() + WAIT;
    for attempt in 0.. {
        let mut raw = Raw::connect(addr(port)).await;
        let id = format!("writer-{attempt}");
        if raw.handshake(connect(&id, ProtocolVersion::V5)).await.0 == ReasonCode::SUCCESS {
            raw.send(&retained(topic, payload)).await;
            if let Some(Packet::PubAck(a)) = raw.recv().await {
                if a.reason == ReasonCode::SUCCESS {
                    return;
                }
            }
        }
        assert!(Instant::now() < deadline, "{topic} never acknowledged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The next PUBLISH on the connection (after the SUBACK), within `within`.
async fn next_publish(raw: &mut Raw, within: Duration) -> Publish {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, raw.recv_or_close()).await {
            Ok(Some(Packet::Publish(p))) => return p,
            Ok(Some(_)) => {}
            Ok(None) => panic!("closed before a PUBLISH"),
            Err(_) => panic!("no PUBLISH within {within:?}"),
        }
    }
}

/// Polls (fresh subscribers, bounded) until the node on `port` serves `payload` as `topic`'s retained value.
async fn wait_served(port: u16, topic: &str, payload: &[u8]) {
    let deadline = Instant::now() + WAIT;
    for i in 0.. {
        let mut raw = Raw::connect(addr(port)).await;
        raw.handshake(connect(&format!("probe-{i}"), ProtocolVersion::V5))
            .await;
        raw.send(&subscribe(topic)).await;
        let got = tokio::time::timeout(Duration::from_secs(1), async {
            loop {
                match raw.recv_or_close().await {
                    Some(Packet::Publish(p)) => return Some(p.payload),
                    Some(_) => {}
                    None => return None,
                }
            }
        })
        .await;
        if matches!(got, Ok(Some(p)) if p == payload) {
            return;
        }
        assert!(Instant::now() < deadline, "{topic} never served on {port}");
    }
}

/// Waits until the leader is known and is not `node`, asking a leader that is to hand over.
async fn lead_elsewhere(c: &Cluster, node: usize) {
    let deadline = Instant::now() + WAIT;
    loop {
        let leader = metric(c.nodes[0].http_port, "cicada_raft_leader").await as usize;
        if leader != 0 && leader != node {
            return;
        }
        if leader == node {
            let to = if node == 1 { 2 } else { 1 };
            let http = addr(c.nodes[node - 1].http_port);
            let path = format!("/api/v1/cluster/transfer-leader?to={to}");
            let _ = http_request(http, "POST", &path).await;
        }
        assert!(Instant::now() < deadline, "leadership stayed on {node}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn retained_reads(http_port: u16) -> f64 {
    metric(http_port, "cicada_retained_reads_total{result=\"fresh\"}").await
        + metric(
            http_port,
            "cicada_retained_reads_total{result=\"deferred\"}",
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_woken_from_sigstop_serves_the_retained_value_acknowledged_while_it_slept() {
    let c = Cluster::three("", "");
    set_retained(c.port(1), "lamp/state", b"old").await;
    wait_served(c.port(3), "lamp/state", b"old").await;
    // Node 3 follows (the value is replaced by a quorum of nodes 1 and 2 while it sleeps).
    lead_elsewhere(&c, 3).await;
    let mut sub = Raw::connect(addr(c.port(3))).await;
    assert_eq!(
        sub.handshake(connect("dashboard", ProtocolVersion::V5))
            .await
            .0,
        ReasonCode::SUCCESS
    );
    c.nodes[2].signal(libc::SIGSTOP);
    set_retained(c.port(1), "lamp/state", b"new").await;
    // The SUBSCRIBE waits in node 3's socket: node 3 reads it the moment it wakes, before it hears from
    // the leader.
    sub.send(&subscribe("lamp/#")).await;
    c.nodes[2].signal(libc::SIGCONT);
    let p = next_publish(&mut sub, WAIT).await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..], p.retain),
        ("lamp/state", &b"new"[..], true),
        "node 3 served a retained value older than one acknowledged before the SUBSCRIBE"
    );
    assert!(retained_reads(c.nodes[2].http_port).await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_leader_defers_retained_messages_until_a_barrier_completes() {
    let mut c = Cluster::three("", "");
    set_retained(c.port(1), "door/state", b"closed").await;
    wait_served(c.port(3), "door/state", b"closed").await;
    c.leave_alone(3);
    let http = c.nodes[2].http_port;
    let mut sub = Raw::connect(addr(c.port(3))).await;
    sub.handshake(connect("alone-sub", ProtocolVersion::V5))
        .await;
    // The SUBACK comes (a clean session works on the node alone)...
    assert_eq!(
        sub.subscribe(1, "door/#", QoS::AtLeastOnce).await,
        [ReasonCode::GRANTED_QOS_1]
    );
    // ...but no retained value: a PINGRESP comes before any PUBLISH (before the fix, the stale local value
    // followed the SUBACK at once)...
    sub.send(&Packet::PingReq).await;
    match sub.recv().await {
        Some(Packet::PingResp) => {}
        other => panic!("expected PINGRESP before any retained message, got {other:?}"),
    }
    // ...the retained delivery is deferred (no barrier without a leader), and live messages keep flowing.
    let deadline = Instant::now() + WAIT;
    while metric(http, "cicada_retained_reads_total{result=\"deferred\"}").await < 1.0 {
        assert!(Instant::now() < deadline, "the deferral was never counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut publisher = Raw::connect(addr(c.port(3))).await;
    publisher
        .handshake(connect("alone-pub", ProtocolVersion::V5))
        .await;
    publisher
        .send(&Packet::Publish(Publish {
            topic: "door/bell".into(),
            payload: Bytes::from_static(b"ring"),
            ..Publish::default()
        }))
        .await;
    let live = next_publish(&mut sub, WAIT).await;
    assert_eq!(
        (live.topic.as_str(), live.retain),
        ("door/bell", false),
        "the live message, not a retained one"
    );
    // Nodes 1 and 2 come back: a leader, a barrier, and the deferred retained value.
    c.nodes[0].kill9_and_spawn_after_exit();
    c.nodes[1].kill9_and_spawn_after_exit();
    let p = next_publish(&mut sub, 3 * WAIT).await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..], p.retain),
        ("door/state", &b"closed"[..], true)
    );
}
