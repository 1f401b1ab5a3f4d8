//! Durable state through `kill -9`: retained messages, persistent sessions and the QoS 1/2 messages waiting
//! for them are committed to the store (raft log and state in sled) before they are acknowledged, so a broker
//! killed at any point comes back with every acknowledged one.

mod common;

use cicada::client::{Client, ClientOptions};
use cicada::protocol::{ProtocolVersion, QoS};
use common::process::{metric, CicadaProcess};
use common::{next_message, WAIT};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

async fn client(port: u16, id: &str) -> (Client, cicada::client::Events) {
    let (c, e, _) =
        Client::connect(ClientOptions::new("127.0.0.1", port, id).version(ProtocolVersion::V5))
            .await
            .expect("connect");
    (c, e)
}

/// Subscribes to `filter` and collects the retained messages delivered on subscribe (topic → payload) until
/// `done` holds (a missing one fails the test when no message comes in time).
async fn retained(
    port: u16,
    filter: &str,
    done: impl Fn(&HashMap<String, String>) -> bool,
) -> HashMap<String, String> {
    let (c, mut e) = client(port, "reader").await;
    c.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    let mut out = HashMap::new();
    while !done(&out) {
        let m = next_message(&mut e, "a retained message").await;
        assert!(m.retain);
        out.insert(m.topic, String::from_utf8_lossy(&m.payload).into_owned());
    }
    c.disconnect().await.ok();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_survive_kill_9() {
    // No $SYS: its retained topics are the broker's own (kept in memory) and would count in the metric.
    let mut broker = CicadaProcess::start("[mqtt]\nsys_interval = 0");
    let (p, _e) = client(broker.port, "devices").await;
    for i in 0..200 {
        p.publish(
            format!("device/{i}/status"),
            QoS::AtLeastOnce,
            true,
            "online",
        )
        .await
        .unwrap();
    }
    // Replaced and cleared ones come back replaced and cleared.
    p.publish("device/0/status", QoS::AtLeastOnce, true, "offline")
        .await
        .unwrap();
    p.publish("device/1/status", QoS::AtLeastOnce, true, "")
        .await
        .unwrap();
    broker.kill9_and_restart();
    let got = retained(broker.port, "device/+/status", |g| g.len() >= 199).await;
    assert_eq!(got.len(), 199);
    assert_eq!(got["device/0/status"], "offline");
    assert!(!got.contains_key("device/1/status"));
    assert_eq!(got["device/199/status"], "online");
    let (_, metrics) = common::broker::http_request(
        format!("127.0.0.1:{}", broker.http_port).parse().unwrap(),
        "GET",
        "/metrics",
    )
    .await;
    assert!(
        metrics.contains("cicada_retained_messages 199"),
        "{metrics}"
    );
}

/// Publishes a QoS 1 stream (`{prefix}/{i}`, retained or not) from a fresh client until `kill_after`
/// messages are acknowledged, kills the broker with SIGKILL mid-stream, restarts it, and returns the topics
/// that were acknowledged before the kill.
async fn stream_until_killed(
    broker: &mut CicadaProcess,
    client_id: &str,
    prefix: &str,
    retain: bool,
    kill_after: usize,
) -> Vec<String> {
    let (p, _e) = client(broker.port, client_id).await;
    let acked = Arc::new(Mutex::new(Vec::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let notify = Arc::new(tokio::sync::Notify::new());
    let publisher = {
        let (acked, count, notify) = (acked.clone(), count.clone(), notify.clone());
        let prefix = prefix.to_string();
        tokio::spawn(async move {
            for i in 0.. {
                let topic = format!("{prefix}/{i}");
                if p.publish(topic.clone(), QoS::AtLeastOnce, retain, "v")
                    .await
                    .is_err()
                {
                    break;
                }
                acked.lock().unwrap().push(topic);
                count.fetch_add(1, Ordering::AcqRel);
                notify.notify_one();
            }
        })
    };
    tokio::time::timeout(WAIT, async {
        while count.load(Ordering::Acquire) < kill_after {
            notify.notified().await;
        }
    })
    .await
    .expect("the publisher makes progress");
    broker.kill9_and_restart();
    tokio::time::timeout(WAIT, publisher)
        .await
        .expect("the publisher notices the kill")
        .unwrap();
    let acked = acked.lock().unwrap().clone();
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_publish_stream_loses_nothing_acknowledged() {
    let mut broker = CicadaProcess::start("");
    let mut acked_all: Vec<String> = Vec::new();
    // Bounded rounds; each kills the broker after a different number of acknowledgements, while the
    // publisher is in the middle of its stream.
    for (round, kill_after) in [(0usize, 37usize), (1, 151), (2, 90)] {
        let prefix = format!("stream/{round}");
        let id = format!("stream-{round}");
        acked_all.extend(stream_until_killed(&mut broker, &id, &prefix, true, kill_after).await);
    }
    let got = retained(broker.port, "stream/#", |g| {
        acked_all.iter().all(|t| g.contains_key(t))
    })
    .await;
    for t in &acked_all {
        assert!(got.contains_key(t), "acknowledged {t} lost");
    }
}

fn persistent(port: u16, id: &str, version: ProtocolVersion) -> ClientOptions {
    let o = ClientOptions::new("127.0.0.1", port, id)
        .version(version)
        .clean_start(false);
    if version.is_v5() {
        o.session_expiry(3600)
    } else {
        o
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_messages_of_offline_sessions_survive_kill_9() {
    let mut broker = CicadaProcess::start("[mqtt]\nsys_interval = 0");
    let versions = [ProtocolVersion::V5, ProtocolVersion::V311];
    for v in versions {
        let (c, _e, _) = Client::connect(persistent(broker.port, &format!("sink-{v:?}"), v))
            .await
            .unwrap();
        c.subscribe("cmd/#", QoS::ExactlyOnce).await.unwrap();
        c.disconnect().await.unwrap();
    }
    // Acknowledged while both subscribers are away: every one is in their inboxes.
    let (p, _pe) = client(broker.port, "backend").await;
    for i in 0..100 {
        let qos = if i % 10 == 9 {
            QoS::ExactlyOnce
        } else {
            QoS::AtLeastOnce
        };
        p.publish(format!("cmd/{i}"), qos, false, format!("m{i}"))
            .await
            .unwrap();
    }
    p.publish("cmd/zero", QoS::AtMostOnce, false, "qos 0 is not kept")
        .await
        .unwrap();
    assert_eq!(
        metric(broker.http_port, "cicada_store_inbox_messages").await,
        200.0,
        "every acknowledged QoS 1/2 copy is committed, QoS 0 is not stored"
    );
    broker.kill9_and_restart();
    let mut left = 200.0;
    for v in versions {
        let id = format!("sink-{v:?}");
        let (c, mut e, ack) = Client::connect(persistent(broker.port, &id, v))
            .await
            .unwrap();
        assert!(ack.session_present, "{id}: session present after kill -9");
        for i in 0..100 {
            let m = next_message(&mut e, "a queued message").await;
            assert_eq!(
                (m.topic.as_str(), &m.payload[..]),
                (format!("cmd/{i}").as_str(), format!("m{i}").as_bytes()),
                "{id}: in order, none lost"
            );
            assert_eq!(
                m.qos,
                if i % 10 == 9 {
                    QoS::ExactlyOnce
                } else {
                    QoS::AtLeastOnce
                }
            );
        }
        // Acknowledged (QoS 2: completed) while connected: removed from the store.
        left -= 100.0;
        let deadline = std::time::Instant::now() + WAIT;
        while metric(broker.http_port, "cicada_store_inbox_messages").await != left {
            assert!(
                std::time::Instant::now() < deadline,
                "{id}: acknowledgements not applied"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        c.disconnect().await.unwrap();
    }
    // Gone from the store, so another kill -9 brings nothing back.
    broker.kill9_and_restart();
    for v in versions {
        let id = format!("sink-{v:?}");
        let (_c, mut e, ack) = Client::connect(persistent(broker.port, &id, v))
            .await
            .unwrap();
        assert!(ack.session_present);
        let (p, _pe) = client(broker.port, &format!("marker-{v:?}")).await;
        p.publish("cmd/marker", QoS::AtLeastOnce, false, "after")
            .await
            .unwrap();
        let m = next_message(&mut e, "the marker").await;
        assert_eq!(
            m.topic, "cmd/marker",
            "{id}: acknowledged messages are not delivered again"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_stream_to_an_offline_session_loses_nothing_acknowledged() {
    let mut broker = CicadaProcess::start("[mqtt]\nsys_interval = 0");
    let (c, _e, _) = Client::connect(persistent(broker.port, "sink", ProtocolVersion::V5))
        .await
        .unwrap();
    c.subscribe("q/#", QoS::AtLeastOnce).await.unwrap();
    c.disconnect().await.unwrap();
    let mut acked_all: Vec<String> = Vec::new();
    for (round, kill_after) in [(0usize, 53usize), (1, 120), (2, 8)] {
        let prefix = format!("q/{round}");
        let id = format!("q-{round}");
        acked_all.extend(stream_until_killed(&mut broker, &id, &prefix, false, kill_after).await);
    }
    let (_c, mut e, ack) = Client::connect(persistent(broker.port, "sink", ProtocolVersion::V5))
        .await
        .unwrap();
    assert!(ack.session_present);
    let mut got = std::collections::HashSet::new();
    while !acked_all.iter().all(|t| got.contains(t)) {
        // A message that was not acknowledged may be there too (committed just before the kill).
        got.insert(next_message(&mut e, "an acknowledged message").await.topic);
    }
}

/// A counter from the broker's /metrics.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_sessions_and_their_subscriptions_survive_kill_9() {
    let mut broker = CicadaProcess::start("[mqtt]\nsys_interval = 0");
    let port = broker.port;
    let applied = "cicada_raft_applied_commands_total";
    let before = metric(broker.http_port, applied).await;
    let persistent = || {
        ClientOptions::new("127.0.0.1", port, "dev-1")
            .version(ProtocolVersion::V5)
            .clean_start(false)
            .session_expiry(3600)
    };
    let (c, _e, ack) = Client::connect(persistent()).await.unwrap();
    assert!(!ack.session_present);
    c.subscribe("cmd/dev-1", QoS::AtLeastOnce).await.unwrap();
    c.disconnect().await.unwrap();
    // A clean session leaves nothing in the store.
    let (clean, _ce) = client(port, "dashboard").await;
    clean.subscribe("cmd/#", QoS::AtMostOnce).await.unwrap();
    // Connect, subscribe and disconnect of the persistent session are three commands: wait until they are
    // applied (stored), then kill.
    let deadline = std::time::Instant::now() + WAIT;
    while metric(broker.http_port, applied).await < before + 3.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "session state not stored"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    broker.kill9_and_restart();
    // Same config, same port.
    let (c, mut e, ack) = Client::connect(persistent()).await.unwrap();
    assert!(ack.session_present, "session present after kill -9");
    // Its subscription is there without subscribing again.
    let (p, _pe) = client(broker.port, "backend").await;
    p.publish("cmd/dev-1", QoS::AtLeastOnce, false, "reboot")
        .await
        .unwrap();
    let m = next_message(&mut e, "the command").await;
    assert_eq!(&m.payload[..], b"reboot");
    c.disconnect().await.unwrap();
    let (_, _, ack) = Client::connect(
        ClientOptions::new("127.0.0.1", broker.port, "dashboard")
            .version(ProtocolVersion::V5)
            .clean_start(false)
            .session_expiry(60),
    )
    .await
    .unwrap();
    assert!(!ack.session_present, "a clean session is not restored");
}

/// An MQTT 5 CONNECT that resumes `id`'s persistent session (clean start 0, expiry one hour).
fn resume(id: &str) -> cicada::protocol::Connect {
    let mut c = common::broker::connect(id, ProtocolVersion::V5);
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(3600);
    c
}

/// Waits until the store holds no inbox entry (`what` did not happen otherwise).
async fn until_inbox_empty(http_port: u16, what: &str) {
    let deadline = std::time::Instant::now() + WAIT;
    while metric(http_port, "cicada_store_inbox_messages").await != 0.0 {
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_received_qos2_message_gets_its_pubrel_again_after_kill_9_not_a_second_publish() {
    use cicada::protocol::{Packet, PubAck, ReasonCode};
    let mut broker = CicadaProcess::start("[mqtt]\nsys_interval = 0");
    let addr = ([127, 0, 0, 1], broker.port).into();
    let login = || resume("exactly-once");
    let mut raw = common::broker::Raw::connect(addr).await;
    raw.handshake(login()).await;
    assert_eq!(
        raw.subscribe(1, "meter/#", QoS::ExactlyOnce).await,
        [ReasonCode::GRANTED_QOS_2]
    );
    let (p, _pe) = client(broker.port, "meter").await;
    p.publish("meter/1", QoS::ExactlyOnce, false, "42 kWh")
        .await
        .unwrap();
    let Some(Packet::Publish(m)) = raw.recv().await else {
        panic!("expected the PUBLISH");
    };
    raw.send(&Packet::PubRec(PubAck::new(m.pkid))).await;
    assert_eq!(raw.recv().await, Some(Packet::PubRel(PubAck::new(m.pkid))));
    // No PUBCOMP. A retained publish commits after the release (the store heard of it before PUBREL went).
    p.publish("barrier", QoS::AtLeastOnce, true, "x")
        .await
        .unwrap();
    broker.kill9_and_restart();
    let mut raw = common::broker::Raw::connect(addr).await;
    let (reason, session_present, _) = raw.handshake(login()).await;
    assert_eq!((reason, session_present), (ReasonCode::SUCCESS, true));
    assert_eq!(
        raw.recv().await,
        Some(Packet::PubRel(PubAck::new(m.pkid))),
        "PUBREL again with the same packet id [MQTT-4.4.0-1]"
    );
    raw.send(&Packet::PubComp(PubAck::new(m.pkid))).await;
    until_inbox_empty(broker.http_port, "PUBCOMP not applied").await;
}

/// Copies sent but not acknowledged when the broker died come again after the restart with the packet ids
/// they had and DUP set [MQTT-4.4.0-1], so a QoS 2 receiver that already holds one does not deliver it twice;
/// a copy that never left the queue (the client's Receive Maximum held it) goes out too, also with DUP (the
/// store does not record sends, so every restored copy may have been sent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_copies_come_again_with_their_packet_ids_and_dup_after_kill_9() {
    use cicada::protocol::{Packet, PubAck, ReasonCode};
    let mut broker = CicadaProcess::start("[mqtt]\nsys_interval = 0");
    let addr = ([127, 0, 0, 1], broker.port).into();
    let login = || {
        let mut c = resume("dashboard");
        c.properties.receive_maximum = Some(2);
        c
    };
    let mut raw = common::broker::Raw::connect(addr).await;
    raw.handshake(login()).await;
    assert_eq!(
        raw.subscribe(1, "meter/#", QoS::ExactlyOnce).await,
        [ReasonCode::GRANTED_QOS_2]
    );
    let (p, _pe) = client(broker.port, "meter").await;
    // One delivered and acknowledged first, so the ids below do not start at 1 (after the restart a fresh
    // allocator would start there).
    p.publish("meter/0", QoS::AtLeastOnce, false, "zero")
        .await
        .unwrap();
    let Some(Packet::Publish(m)) = raw.recv().await else {
        panic!("expected a PUBLISH");
    };
    raw.send(&Packet::PubAck(PubAck::new(m.pkid))).await;
    // Acknowledged to the publisher, so committed to the subscriber's inbox.
    p.publish("meter/1", QoS::AtLeastOnce, false, "one")
        .await
        .unwrap();
    p.publish("meter/2", QoS::ExactlyOnce, false, "two")
        .await
        .unwrap();
    p.publish("meter/3", QoS::ExactlyOnce, false, "three")
        .await
        .unwrap();
    let mut first = Vec::new();
    for _ in 0..2 {
        let Some(Packet::Publish(m)) = raw.recv().await else {
            panic!("expected a PUBLISH");
        };
        first.push((m.topic.clone(), m.pkid, m.dup));
    }
    assert!(first.iter().all(|(_, _, dup)| !dup), "{first:?}");
    // No acknowledgements: the broker dies with both in flight and the third queued behind the window.
    broker.kill9_and_restart();

    let mut raw = common::broker::Raw::connect(addr).await;
    let (reason, session_present, _) = raw.handshake(login()).await;
    assert_eq!((reason, session_present), (ReasonCode::SUCCESS, true));
    let mut again = Vec::new();
    for _ in 0..2 {
        let Some(Packet::Publish(m)) = raw.recv().await else {
            panic!("expected a PUBLISH");
        };
        again.push((m.topic.clone(), m.pkid, m.dup));
    }
    let resent: Vec<_> = first
        .iter()
        .map(|(t, pkid, _)| (t.clone(), *pkid, true))
        .collect();
    assert_eq!(again, resent, "same packet ids, DUP set, same order");
    // Acknowledge them: PUBREL for the second, and the third leaves the queue (in either order).
    raw.send(&Packet::PubAck(PubAck::new(again[0].1))).await;
    raw.send(&Packet::PubRec(PubAck::new(again[1].1))).await;
    let mut third = None;
    let mut released = false;
    while third.is_none() || !released {
        match raw.recv().await {
            Some(Packet::PubRel(r)) if r.pkid == again[1].1 && !released => released = true,
            Some(Packet::Publish(m)) if third.is_none() => third = Some(m),
            other => panic!("unexpected {other:?}"),
        }
    }
    raw.send(&Packet::PubComp(PubAck::new(again[1].1))).await;
    let m = third.unwrap();
    assert_eq!(m.topic, "meter/3");
    assert!(
        m.dup,
        "the store cannot tell whether a restored copy was sent before the crash: DUP"
    );
    raw.send(&Packet::PubRec(PubAck::new(m.pkid))).await;
    assert_eq!(raw.recv().await, Some(Packet::PubRel(PubAck::new(m.pkid))));
    raw.send(&Packet::PubComp(PubAck::new(m.pkid))).await;
    until_inbox_empty(broker.http_port, "acknowledgements not applied").await;
}

/// Logs in a raw MQTT 5 client to `$share/workers/jobs/#` at QoS 1; persistent when `expiry` > 0.
async fn worker(addr: std::net::SocketAddr, id: &str, expiry: u32) -> common::broker::Raw {
    let mut c = common::broker::connect(id, ProtocolVersion::V5);
    c.clean_start = expiry == 0;
    c.properties.session_expiry_interval = Some(expiry);
    let mut raw = common::broker::Raw::connect(addr).await;
    raw.handshake(c).await;
    assert_eq!(
        raw.subscribe(1, "$share/workers/jobs/#", QoS::AtLeastOnce)
            .await,
        [cicada::protocol::ReasonCode::GRANTED_QOS_1]
    );
    raw
}

async fn next_publish(raw: &mut common::broker::Raw) -> cicada::protocol::Publish {
    match raw.recv().await {
        Some(cicada::protocol::Packet::Publish(m)) => m,
        other => panic!("expected a PUBLISH, got {other:?}"),
    }
}

/// A persistent member leaves a shared group with a copy it never acknowledged. The copy is durable: it waits
/// in that member's stored inbox (MQTT 5 4.8.2 lets the server wait for the client), through `kill -9`, and
/// comes back to it with its packet id and DUP; it is never handed to a member whose session is less safe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_shared_members_copy_waits_for_it_through_kill_9() {
    let mut broker = CicadaProcess::start("[mqtt]\nsys_interval = 0");
    let addr = ([127, 0, 0, 1], broker.port).into();
    let mut a = worker(addr, "worker-a", 3600).await;
    let (p, _pe) = client(broker.port, "scheduler").await;
    p.publish("jobs/1", QoS::AtLeastOnce, false, "build")
        .await
        .unwrap();
    let first = next_publish(&mut a).await;
    let _b = worker(addr, "worker-b", 0).await;
    drop(a); // gone without PUBACK
    assert_eq!(
        metric(broker.http_port, "cicada_store_inbox_messages").await,
        1.0
    );
    broker.kill9_and_restart();
    assert_eq!(
        metric(broker.http_port, "cicada_store_inbox_messages").await,
        1.0,
        "still in the first member's inbox"
    );
    let mut a = common::broker::Raw::connect(addr).await;
    let (_, session_present, _) = a.handshake(resume("worker-a")).await;
    assert!(session_present);
    let again = next_publish(&mut a).await;
    assert_eq!(
        (
            again.topic.as_str(),
            &again.payload[..],
            again.pkid,
            again.dup
        ),
        ("jobs/1", &b"build"[..], first.pkid, true)
    );
    a.send(&cicada::protocol::Packet::PubAck(
        cicada::protocol::PubAck::new(again.pkid),
    ))
    .await;
    until_inbox_empty(broker.http_port, "the acknowledgement was not applied").await;
}
