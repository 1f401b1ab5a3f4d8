//! The inbox of a persistent session is the store (issue: durable delivery without holes). Through real
//! `cicada serve` processes, SIGTERM and `kill -9`: every copy acknowledged with 0x00 comes back to its
//! session after a restart, whatever the queue bounds; a copy past the stored quota is refused to the
//! publisher (MQTT 5: 0x97) instead of being acknowledged and lost; a backlog of a million messages costs
//! disk, not memory, and restoring it at start reads none of it.

mod common;

use cicada::client::{Client, ClientError, ClientOptions};
use cicada::protocol::{Packet, ProtocolVersion, PubAck, Publish, QoS, ReasonCode};
use common::broker::Raw;
use common::process::{metric, CicadaProcess};
use common::WAIT;
use std::collections::BTreeSet;

async fn until_metric(http_port: u16, name: &str, want: f64) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let got = metric(http_port, name).await;
        if got == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} stayed at {got}, not {want}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A raw MQTT 5 persistent session (expiry 3600) with a small Receive Maximum, subscribed to `m/#` at QoS 1
/// on its first connect, resumed (clean start 0) afterwards.
async fn meter(port: u16, first: bool) -> Raw {
    let mut c = common::broker::connect("meter", ProtocolVersion::V5);
    c.clean_start = first;
    c.properties.session_expiry_interval = Some(3600);
    c.properties.receive_maximum = Some(10);
    let mut raw = Raw::connect(([127, 0, 0, 1], port).into()).await;
    let (reason, present, _) = raw.handshake(c).await;
    assert_eq!((reason, present), (ReasonCode::SUCCESS, !first));
    if first {
        assert_eq!(
            raw.subscribe(1, "m/#", QoS::AtLeastOnce).await,
            [ReasonCode::GRANTED_QOS_1]
        );
    }
    raw
}

/// Publishes `n` QoS 1 messages (payload = its number) from an MQTT 5 client, pipelined; returns the numbers
/// acknowledged with success and how many were refused with 0x97.
async fn publish_numbers(port: u16, n: usize) -> (BTreeSet<usize>, usize) {
    let (p, _events, _) = Client::connect(
        ClientOptions::new("127.0.0.1", port, "sensor")
            .version(ProtocolVersion::V5)
            .inflight(100),
    )
    .await
    .expect("connect");
    let mut tokens = Vec::with_capacity(n);
    for i in 0..n {
        let publish = Publish {
            topic: format!("m/{}", i % 7),
            qos: QoS::AtLeastOnce,
            payload: i.to_string().into(),
            ..Publish::default()
        };
        tokens.push((i, p.publish_start(publish).await.expect("queued")));
    }
    let (mut acked, mut refused) = (BTreeSet::new(), 0);
    for (i, t) in tokens {
        match t.wait().await {
            Ok(ReasonCode::SUCCESS) => {
                acked.insert(i);
            }
            Err(ClientError::Rejected(ReasonCode::QUOTA_EXCEEDED)) => refused += 1,
            other => panic!("publish {i}: {other:?}"),
        }
    }
    p.disconnect().await.ok();
    (acked, refused)
}

/// Takes every message the session has (acknowledging each) until `want` distinct numbers came; returns them
/// and how many arrived twice.
async fn drain(raw: &mut Raw, want: usize) -> (BTreeSet<usize>, usize) {
    let (mut got, mut twice) = (BTreeSet::new(), 0);
    while got.len() < want {
        match raw.recv().await {
            Some(Packet::Publish(m)) => {
                let i: usize = std::str::from_utf8(&m.payload).unwrap().parse().unwrap();
                if !got.insert(i) {
                    twice += 1;
                }
                raw.send(&Packet::PubAck(PubAck::new(m.pkid))).await;
            }
            Some(other) => panic!("unexpected {other:?}"),
            None => panic!("closed after {} of {want}", got.len()),
        }
    }
    (got, twice)
}

/// The case: a persistent subscriber that has not acknowledged, 1,100 QoS 1 publishes, a restart;
/// `quota` = None runs on the defaults (max_queued_messages = 1000), Some(n) past them.
async fn acknowledged_copies_come_back_after(signal: i32, quota: Option<usize>) {
    let extra = match quota {
        Some(n) => format!("[mqtt]\nsys_interval = 0\n[limits]\nmax_queued_messages = {n}\n"),
        None => "[mqtt]\nsys_interval = 0\n".to_string(),
    };
    let mut broker = CicadaProcess::start(&extra);
    let mut sub = meter(broker.port, true).await;
    let (acked, refused) = publish_numbers(broker.port, 1_100).await;
    let stored = quota.unwrap_or(1000).min(1_100);
    assert_eq!(
        (acked.len(), refused),
        (stored, 1_100 - stored),
        "what the quota holds is acknowledged, the rest refused with 0x97"
    );
    // The subscriber took some (never acknowledged) before the restart.
    for _ in 0..10 {
        assert!(matches!(sub.recv().await, Some(Packet::Publish(_))));
    }
    drop(sub);
    until_metric(
        broker.http_port,
        "cicada_store_inbox_messages",
        stored as f64,
    )
    .await;
    broker.restart_after(signal);
    assert_eq!(
        metric(broker.http_port, "cicada_store_inbox_messages").await,
        stored as f64,
        "nothing stored is dropped at restore"
    );
    let mut sub = meter(broker.port, false).await;
    let (got, twice) = drain(&mut sub, acked.len()).await;
    assert_eq!(got, acked, "every acknowledged message, and only those");
    assert_eq!(twice, 0);
    until_metric(broker.http_port, "cicada_store_inbox_messages", 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_default_quota_publishers_get_0x97_and_every_acknowledged_copy_survives_sigterm() {
    acknowledged_copies_come_back_after(libc::SIGTERM, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_default_quota_publishers_get_0x97_and_every_acknowledged_copy_survives_kill_9() {
    acknowledged_copies_come_back_after(libc::SIGKILL, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_larger_quota_all_1100_survive_kill_9() {
    acknowledged_copies_come_back_after(libc::SIGKILL, Some(5_000)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_larger_quota_all_1100_survive_sigterm() {
    acknowledged_copies_come_back_after(libc::SIGTERM, Some(5_000)).await;
}

/// The quota is also in bytes, and a publish that matches another session with room is acknowledged (that
/// session has it); only a publish every matching session refused gets 0x97.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_session_refuses_only_what_no_other_session_takes() {
    let broker =
        CicadaProcess::start("[mqtt]\nsys_interval = 0\n[limits]\nmax_queued_bytes = 4000\n");
    let sub = meter(broker.port, true).await;
    drop(sub); // offline: everything queues
    let (p, _e, _) = Client::connect(
        ClientOptions::new("127.0.0.1", broker.port, "big").version(ProtocolVersion::V5),
    )
    .await
    .unwrap();
    let payload = vec![b'x'; 1000];
    let mut outcomes = Vec::new();
    for _ in 0..5 {
        outcomes.push(
            p.publish("m/big", QoS::AtLeastOnce, false, payload.clone())
                .await,
        );
    }
    assert!(outcomes[..3].iter().all(|o| o.is_ok()), "{outcomes:?}");
    assert!(
        matches!(
            outcomes[4],
            Err(ClientError::Rejected(ReasonCode::QUOTA_EXCEEDED))
        ),
        "{outcomes:?}"
    );
    // Another subscriber with room: the publish is acknowledged though the meter's inbox is full.
    let (other, mut other_events, _) = Client::connect(
        ClientOptions::new("127.0.0.1", broker.port, "other").version(ProtocolVersion::V5),
    )
    .await
    .unwrap();
    other.subscribe("m/#", QoS::AtLeastOnce).await.unwrap();
    assert_eq!(
        p.publish("m/big", QoS::AtLeastOnce, false, payload.clone())
            .await
            .unwrap(),
        ReasonCode::SUCCESS
    );
    common::next_message(&mut other_events, "the other subscriber's copy").await;
    assert!(
        metric(
            broker.http_port,
            "cicada_messages_dropped_total{reason=\"quota_exceeded\"}"
        )
        .await
            >= 2.0
    );
}

/// A million QoS 1 messages queue for an offline persistent session. Memory stays bounded while they are
/// stored, a restart does not read them, and the session, reconnecting, gets every one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_queued_messages_cost_disk_not_memory_and_all_arrive() {
    const N: usize = 1_000_000;
    let mut broker = CicadaProcess::start(
        "[mqtt]\nsys_interval = 0\n[limits]\nmax_queued_messages = 2000000\nmax_queued_bytes = 1000000000\n[store]\ncache_mb = 32\n",
    );
    drop(meter(broker.port, true).await);
    let (p, _events, _) = Client::connect(
        ClientOptions::new("127.0.0.1", broker.port, "firehose")
            .version(ProtocolVersion::V5)
            .inflight(1000),
    )
    .await
    .expect("connect");
    let mut pending = std::collections::VecDeque::new();
    for i in 0..N {
        let publish = Publish {
            topic: "m/q".into(),
            qos: QoS::AtLeastOnce,
            payload: i.to_string().into(),
            ..Publish::default()
        };
        pending.push_back(p.publish_start(publish).await.expect("queued"));
        if pending.len() >= 4000 {
            let t = pending.pop_front().unwrap();
            assert_eq!(t.wait().await.unwrap(), ReasonCode::SUCCESS);
        }
    }
    for t in pending {
        assert_eq!(t.wait().await.unwrap(), ReasonCode::SUCCESS);
    }
    let stored_rss = broker.status_kb("VmRSS");
    broker.term_and_restart();
    until_metric(broker.http_port, "cicada_store_inbox_messages", N as f64).await;
    let restart_rss = broker.status_kb("VmRSS");
    let started = std::time::Instant::now();
    let mut sub = meter(broker.port, false).await;
    let connack = started.elapsed();
    let (got, twice) = drain(&mut sub, N).await;
    let drained = started.elapsed();
    assert_eq!((got.len(), twice), (N, 0));
    assert_eq!(got.iter().next_back(), Some(&(N - 1)));
    let peak = broker.status_kb("VmHWM");
    eprintln!(
        "RSS after storing {N}: {stored_rss} kB; after the restart: {restart_rss} kB; peak while delivering: {peak} kB; \
         reconnect to CONNACK {connack:?}, all {N} received and acknowledged after {drained:?}"
    );
    // The messages alone are over 60 MB as stored; a queue in memory would hold all of them.
    assert!(
        restart_rss < 120 * 1024,
        "restart read the backlog: {restart_rss} kB"
    );
    assert!(peak < 250 * 1024, "delivery held the backlog: {peak} kB");
}
