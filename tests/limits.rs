//! Limits and backpressure: a subscriber that stops reading costs a bounded amount of memory and does not
//! slow the others; the node-wide memory watermark pauses publishers; the message size limit.

mod common;

use bytes::Bytes;
use cicada::client::Client;
use cicada::protocol::{ProtocolVersion, Publish, QoS, ReasonCode};
use common::broker::{connect, Raw, TestBroker};
use common::next_message;
use common::process::CicadaProcess;
use std::net::SocketAddr;

const PAYLOAD: usize = 2048;
const BATCH: usize = 500;
const BATCHES: usize = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_keeps_broker_memory_bounded_and_others_at_full_rate() {
    let broker = CicadaProcess::start(
        "[limits]\nmax_queued_messages = 100000\nmax_queued_bytes = 4194304\n",
    );
    let addr: SocketAddr = ([127, 0, 0, 1], broker.port).into();
    // The stalled subscriber: subscribes at QoS 1, then never reads its socket again.
    let mut stalled = Raw::connect(addr).await;
    stalled
        .handshake(connect("stalled", ProtocolVersion::V311))
        .await;
    stalled.subscribe(1, "load/#", QoS::AtLeastOnce).await;
    let opts = |id: &str| cicada::client::ClientOptions::new("127.0.0.1", broker.port, id);
    let (fast, mut events, _) = Client::connect(opts("fast")).await.unwrap();
    fast.subscribe("load/#", QoS::AtLeastOnce).await.unwrap();
    let (publisher, _pe, _) = Client::connect(opts("producer")).await.unwrap();
    let payload = Bytes::from(vec![b'x'; PAYLOAD]);
    // 60 batches of 500 x 2 KiB = 60 MiB through the broker; each batch must reach the fast subscriber in
    // full before the next is sent.
    for batch in 0..BATCHES {
        let mut tokens = Vec::with_capacity(BATCH);
        for i in 0..BATCH {
            let p = Publish {
                topic: format!("load/{}", i % 8),
                qos: QoS::AtLeastOnce,
                payload: payload.clone(),
                ..Publish::default()
            };
            tokens.push(publisher.publish_start(p).await.unwrap());
        }
        for t in tokens {
            assert_eq!(t.wait().await.unwrap(), ReasonCode::SUCCESS);
        }
        for _ in 0..BATCH {
            next_message(
                &mut events,
                &format!("batch {batch} at the fast subscriber"),
            )
            .await;
        }
    }
    let peak_kb = broker.status_kb("VmHWM");
    let (_, metrics) =
        common::broker::http_request(([127, 0, 0, 1], broker.http_port).into(), "GET", "/metrics")
            .await;
    let dropped: u64 = metrics
        .lines()
        .find(|l| l.starts_with("cicada_messages_dropped_total{reason=\"queue_full\"}"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    eprintln!(
        "broker peak RSS {} MiB, {dropped} dropped for the stalled subscriber",
        peak_kb / 1024
    );
    assert!(
        dropped > 0,
        "the stalled subscriber's queue overflowed and was cut at its bound"
    );
    // 60 MiB went through; the stalled queue holds at most 4 MiB plus socket buffers.
    assert!(
        peak_kb < 48 * 1024,
        "broker peak RSS {peak_kb} kB is not bounded"
    );
    drop(stalled);
}

#[tokio::test]
async fn the_memory_watermark_pauses_publishers_until_memory_is_released() {
    let b = TestBroker::with(|c| {
        c.limits.memory_watermark = 256 * 1024;
        c.limits.max_queued_bytes = 64 * 1024 * 1024;
        c.limits.max_queued_messages = 1_000_000;
    })
    .await;
    // A subscriber that stops reading: its (volatile) queue grows until the watermark. A persistent session's
    // QoS 1/2 copies would be in the store instead, not in memory.
    let mut stalled = b.raw().await;
    stalled
        .handshake(connect("hoarder", ProtocolVersion::V5))
        .await;
    stalled.subscribe(1, "wm/#", QoS::AtLeastOnce).await;
    let (publisher, _pe) = b.client("wm-pub", ProtocolVersion::V5).await;
    let payload = Bytes::from(vec![0u8; 4096]);
    let pump = {
        let publisher = publisher.clone();
        tokio::spawn(async move {
            // 2 MiB in all: far over the 256 KiB watermark.
            for _ in 0..512 {
                publisher
                    .publish("wm/x", QoS::AtLeastOnce, false, payload.clone())
                    .await
                    .unwrap();
            }
        })
    };
    // Wait for the event "reads paused for the watermark" in the metrics.
    let deadline = std::time::Instant::now() + common::WAIT;
    loop {
        let (_, m) = b.http_get("/metrics").await;
        if m.lines().any(|l| {
            l.starts_with("cicada_reads_paused_total{cause=\"memory_watermark\"}")
                && !l.ends_with(" 0")
        }) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "publisher never paused"
        );
        tokio::task::yield_now().await;
    }
    assert!(!pump.is_finished(), "the publisher is held back");
    // Ending the hoarding session releases its queue and the publisher carries on.
    let mut raw = b.raw().await;
    let mut c = connect("hoarder", ProtocolVersion::V5);
    c.clean_start = true;
    raw.handshake(c).await;
    tokio::time::timeout(common::WAIT, pump)
        .await
        .expect("publisher resumed")
        .unwrap();
}

#[tokio::test]
async fn message_size_limit_refuses_big_payloads_with_quota_exceeded() {
    let b = TestBroker::with(|c| c.limits.message_size_limit = 100).await;
    let (s, mut events) = b.client("sz-sub", ProtocolVersion::V5).await;
    s.subscribe("sz", QoS::AtLeastOnce).await.unwrap();
    let (p, _pe) = b.client("sz-pub", ProtocolVersion::V5).await;
    let refused = p
        .publish("sz", QoS::AtLeastOnce, false, vec![0u8; 101])
        .await;
    assert!(
        matches!(
            refused,
            Err(cicada::client::ClientError::Rejected(
                ReasonCode::QUOTA_EXCEEDED
            ))
        ),
        "{refused:?}"
    );
    p.publish("sz", QoS::AtLeastOnce, false, vec![1u8; 100])
        .await
        .unwrap();
    assert_eq!(
        next_message(&mut events, "the small one")
            .await
            .payload
            .len(),
        100
    );
}

#[tokio::test]
async fn receive_maximum_exceeded_for_too_many_unreleased_qos2() {
    let b = TestBroker::with(|c| c.limits.max_inflight = 2).await;
    let mut raw = b.raw().await;
    raw.handshake(connect("greedy", ProtocolVersion::V5)).await;
    for pkid in 1..=3u16 {
        raw.send(&cicada::protocol::Packet::Publish(Publish {
            topic: "q2".into(),
            qos: QoS::ExactlyOnce,
            pkid,
            payload: Bytes::from_static(b"x"),
            ..Publish::default()
        }))
        .await;
    }
    assert_eq!(
        raw.expect_close().await,
        Some(ReasonCode::RECEIVE_MAXIMUM_EXCEEDED),
        "[MQTT-3.3.4-7]"
    );
}

/// Retained QoS 1 PUBLISHes have their PUBACK held until the commit: a v5 client that sends more than the
/// server's Receive Maximum before they leave is past it, as with QoS 2 [MQTT-3.3.4-7].
#[tokio::test]
async fn receive_maximum_holds_qos1_too_while_acknowledgements_wait_for_commits() {
    let b = TestBroker::with(|c| c.limits.max_inflight = 1).await;
    let mut raw = b.raw().await;
    raw.handshake(connect("greedy-1", ProtocolVersion::V5))
        .await;
    let mut out = bytes::BytesMut::new();
    for pkid in 1..=3u16 {
        let p = cicada::protocol::Packet::Publish(Publish {
            topic: "r1".into(),
            qos: QoS::AtLeastOnce,
            retain: true,
            pkid,
            payload: Bytes::from_static(b"x"),
            ..Publish::default()
        });
        cicada::protocol::encode(&p, ProtocolVersion::V5, &mut out).unwrap();
    }
    raw.send_bytes(&out).await;
    assert_eq!(
        raw.expect_close().await,
        Some(ReasonCode::RECEIVE_MAXIMUM_EXCEEDED),
        "[MQTT-3.3.4-7]"
    );
}

/// A client that publishes QoS 1 and never reads its PUBACKs: once its writer queue backs up its reads stop
/// (counted), instead of acknowledgements piling up in memory; when it reads again every PUBACK comes, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_publishes_and_never_reads_is_paused_not_buffered() {
    const N: u32 = 100_000;
    let b = TestBroker::start().await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(b.addr).await.unwrap();
    let mut raw = Raw::from_stream(stream);
    raw.handshake(connect("deaf", ProtocolVersion::V311)).await;
    let (mut rd, mut wr) = raw.stream.into_split();
    let pump = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let mut out = bytes::BytesMut::new();
        for i in 0..N {
            let p = cicada::protocol::Packet::Publish(Publish {
                topic: "deaf".into(),
                qos: QoS::AtLeastOnce,
                pkid: (i % 65_535) as u16 + 1,
                payload: Bytes::from_static(b"x"),
                ..Publish::default()
            });
            cicada::protocol::encode(&p, ProtocolVersion::V311, &mut out).unwrap();
            if out.len() > 16 * 1024 {
                wr.write_all(&out).await.unwrap();
                out.clear();
            }
        }
        wr.write_all(&out).await.unwrap();
        wr
    });
    let deadline = std::time::Instant::now() + common::WAIT;
    loop {
        let (_, m) = b.http_get("/metrics").await;
        if metric(&m, "cicada_reads_paused_total{cause=\"writer\"}") > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "reads never paused for the writer"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // Reading again: every PUBACK, in order.
    let mut decoder = cicada::protocol::Decoder::new(ProtocolVersion::V311, 1 << 20);
    let mut buf = bytes::BytesMut::new();
    let mut next = 0u32;
    while next < N {
        use tokio::io::AsyncReadExt;
        while let Some(p) = decoder.decode(&mut buf).unwrap() {
            match p {
                cicada::protocol::Packet::PubAck(a) => {
                    assert_eq!(a.pkid, (next % 65_535) as u16 + 1);
                    next += 1;
                }
                other => panic!("{other:?}"),
            }
        }
        if next == N {
            break;
        }
        let n = tokio::time::timeout(common::WAIT, rd.read_buf(&mut buf))
            .await
            .expect("PUBACKs keep coming")
            .unwrap();
        assert!(n > 0, "closed after {next} PUBACKs");
    }
    tokio::time::timeout(common::WAIT, pump)
        .await
        .expect("the client carried on")
        .unwrap();
}

fn metric(m: &str, name: &str) -> u64 {
    m.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("{name} in {m}"))
}

#[tokio::test]
async fn client_rate_limits_throttle_without_dropping() {
    // 30 messages of 1000 B: at 20 msg/s, or at 15,000 B/s; each with a one-second burst.
    for (messages, bytes, label) in [(20, 0, "client_messages"), (0, 15_000, "client_bytes")] {
        let b = TestBroker::with(|c| {
            c.limits.client_messages_per_sec = messages;
            c.limits.client_bytes_per_sec = bytes;
        })
        .await;
        let (s, mut events) = b.client("rl-sub", ProtocolVersion::V5).await;
        s.subscribe("rl/#", QoS::AtLeastOnce).await.unwrap();
        let (p, _pe) = b.client("rl-pub", ProtocolVersion::V5).await;
        let start = std::time::Instant::now();
        for i in 0..30 {
            p.publish(format!("rl/{i}"), QoS::AtLeastOnce, false, vec![0u8; 1000])
                .await
                .unwrap();
        }
        for i in 0..30 {
            assert_eq!(
                next_message(&mut events, "every message").await.topic,
                format!("rl/{i}")
            );
        }
        // Beyond the burst the rest waits: at least 0.45 s (a lower bound on the behaviour, not a speed target).
        assert!(
            start.elapsed() >= std::time::Duration::from_millis(450),
            "{label}: {:?}",
            start.elapsed()
        );
        let (_, m) = b.http_get("/metrics").await;
        assert!(
            metric(
                &m,
                &format!("cicada_rate_limited_total{{limit=\"{label}\"}}")
            ) > 0,
            "{m}"
        );
        assert_eq!(
            metric(&m, "cicada_messages_dropped_total{reason=\"queue_full\"}"),
            0
        );
    }
}

#[tokio::test]
async fn listener_connection_rate_makes_new_connections_wait() {
    let b = TestBroker::with(|c| c.listeners[0].max_connection_rate = 5).await;
    let mut clients = Vec::new();
    for i in 0..8 {
        let mut raw = b.raw().await;
        assert_eq!(
            raw.handshake(connect(&format!("c{i}"), ProtocolVersion::V5))
                .await
                .0,
            ReasonCode::SUCCESS
        );
        clients.push(raw);
    }
    let (_, m) = b.http_get("/metrics").await;
    assert!(
        metric(
            &m,
            "cicada_rate_limited_total{limit=\"listener_connections\"}"
        ) > 0,
        "{m}"
    );
}

#[tokio::test]
async fn by_default_a_filter_of_200_levels_is_taken_and_one_of_201_refused() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw().await;
    raw.handshake(connect("deep", ProtocolVersion::V5)).await;
    let deep = |n: usize| vec!["l"; n].join("/");
    assert_eq!(
        raw.subscribe(1, &deep(200), QoS::AtLeastOnce).await,
        vec![ReasonCode(1)]
    );
    assert_eq!(
        raw.subscribe(2, &deep(201), QoS::AtLeastOnce).await,
        vec![ReasonCode::TOPIC_FILTER_INVALID]
    );
}
