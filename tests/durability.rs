//! Durable state through `kill -9`: retained messages are committed to the store (raft log and state in sled)
//! before they are acknowledged, so a broker killed at any point comes back with every acknowledged one.

mod common;

use cicada::client::{Client, ClientOptions};
use cicada::protocol::{ProtocolVersion, QoS};
use common::process::CicadaProcess;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_publish_stream_loses_nothing_acknowledged() {
    let mut broker = CicadaProcess::start("");
    let mut acked_all: Vec<String> = Vec::new();
    // Bounded rounds; each kills the broker after a different number of acknowledgements, while the
    // publisher is in the middle of its stream.
    for (round, kill_after) in [(0usize, 37usize), (1, 151), (2, 90)] {
        let (p, _e) = client(broker.port, &format!("stream-{round}")).await;
        let acked = Arc::new(Mutex::new(Vec::new()));
        let count = Arc::new(AtomicUsize::new(0));
        let notify = Arc::new(tokio::sync::Notify::new());
        let publisher = {
            let (acked, count, notify) = (acked.clone(), count.clone(), notify.clone());
            tokio::spawn(async move {
                for i in 0.. {
                    let topic = format!("stream/{round}/{i}");
                    if p.publish(topic.clone(), QoS::AtLeastOnce, true, "v")
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
        acked_all.extend(acked.lock().unwrap().iter().cloned());
    }
    let got = retained(broker.port, "stream/#", |g| {
        acked_all.iter().all(|t| g.contains_key(t))
    })
    .await;
    for t in &acked_all {
        assert!(got.contains_key(t), "acknowledged {t} lost");
    }
}

/// A counter from the broker's /metrics.
async fn metric(http_port: u16, name: &str) -> f64 {
    let (_, body) = common::broker::http_request(
        format!("127.0.0.1:{http_port}").parse().unwrap(),
        "GET",
        "/metrics",
    )
    .await;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

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
