//! Sessions: persistent sessions keep subscriptions and queue QoS 1/2 while offline (bounded), clean start
//! discards, expiry (also changed at DISCONNECT), session present.

mod common;

use bytes::Bytes;
use cicada::client::{Client, ClientError};
use cicada::protocol::{Disconnect, Packet, ProtocolVersion, QoS, ReasonCode};
use common::broker::{connect, TestBroker};
use common::next_message;

#[tokio::test]
async fn mqtt_3_2_2_2_persistent_session_keeps_subscriptions_and_queues_qos1_while_offline() {
    let b = TestBroker::start().await;
    for v in [ProtocolVersion::V311, ProtocolVersion::V5] {
        let id = format!("backend-{v:?}");
        let mut opts = b.options(&id, v).clean_start(false);
        if v.is_v5() {
            opts = opts.session_expiry(600);
        }
        let (c, _e, ack) = Client::connect(opts.clone()).await.unwrap();
        assert!(!ack.session_present);
        c.subscribe(format!("jobs/{v:?}/#"), QoS::AtLeastOnce)
            .await
            .unwrap();
        c.disconnect().await.unwrap();
        let (p, _pe) = b.client(&format!("producer-{v:?}"), v).await;
        for i in 0..5 {
            p.publish(
                format!("jobs/{v:?}/{i}"),
                QoS::AtLeastOnce,
                false,
                format!("job {i}"),
            )
            .await
            .unwrap();
        }
        p.publish(
            format!("jobs/{v:?}/q0"),
            QoS::AtMostOnce,
            false,
            "not queued",
        )
        .await
        .unwrap();
        let (_c, mut events, ack) = Client::connect(opts).await.unwrap();
        assert!(ack.session_present, "[MQTT-3.2.2-2]");
        for i in 0..5 {
            let m = next_message(&mut events, "a queued message").await;
            assert_eq!(m.payload, Bytes::from(format!("job {i}")));
        }
        // The subscription survived: a live message arrives too, and QoS 0 was not queued.
        p.publish(format!("jobs/{v:?}/live"), QoS::AtLeastOnce, false, "live")
            .await
            .unwrap();
        assert_eq!(
            next_message(&mut events, "live").await.payload,
            Bytes::from("live")
        );
    }
}

#[tokio::test]
async fn mqtt_3_1_2_4_clean_start_discards_the_session() {
    let b = TestBroker::start().await;
    let mut c = connect("fresh", ProtocolVersion::V311);
    c.clean_start = false;
    let mut raw = b.raw().await;
    raw.handshake(c.clone()).await;
    raw.subscribe(1, "fresh/t", QoS::AtLeastOnce).await;
    raw.send(&Packet::Disconnect(Disconnect::default())).await;
    assert_eq!(raw.recv().await, None);
    let mut clean = connect("fresh", ProtocolVersion::V311);
    clean.clean_start = true;
    let mut raw = b.raw().await;
    let (_, present, _) = raw.handshake(clean).await;
    assert!(!present);
    raw.send(&Packet::Disconnect(Disconnect::default())).await;
    let mut raw = b.raw().await;
    let (_, present, _) = raw.handshake(c).await;
    assert!(!present, "the clean session ended with its connection");
}

#[tokio::test]
async fn mqtt_3_1_2_11_session_expires_after_its_interval() {
    let b = TestBroker::start().await;
    let mut c = connect("expiring", ProtocolVersion::V5);
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(1);
    let mut raw = b.raw().await;
    raw.handshake(c.clone()).await;
    raw.send(&Packet::Disconnect(Disconnect::default())).await;
    assert_eq!(raw.recv().await, None);
    // Wait for the broker's expiry timer to run out (1 s), then the session is gone.
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    let mut raw = b.raw().await;
    let (_, present, _) = raw.handshake(c).await;
    assert!(!present);
}

#[tokio::test]
async fn mqtt_3_14_2_2_session_expiry_changed_at_disconnect() {
    let b = TestBroker::start().await;
    // 600 s at CONNECT, 0 at DISCONNECT: the session ends now.
    let mut c = connect("shorten", ProtocolVersion::V5);
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(600);
    let mut raw = b.raw().await;
    raw.handshake(c.clone()).await;
    let mut d = Disconnect::default();
    d.properties.session_expiry_interval = Some(0);
    raw.send(&Packet::Disconnect(d)).await;
    assert_eq!(raw.recv().await, None);
    let mut raw = b.raw().await;
    let (_, present, _) = raw.handshake(c).await;
    assert!(!present);
    // 0 at CONNECT, non-zero at DISCONNECT: a protocol error [MQTT-3.14.2-2].
    let mut raw = b.raw().await;
    raw.handshake(connect("lengthen", ProtocolVersion::V5))
        .await;
    let mut d = Disconnect::default();
    d.properties.session_expiry_interval = Some(60);
    raw.send(&Packet::Disconnect(d)).await;
    assert_eq!(raw.expect_close().await, Some(ReasonCode::PROTOCOL_ERROR));
}

#[tokio::test]
async fn offline_queue_is_a_stored_quota_and_publishers_are_told_when_it_is_full() {
    let b = TestBroker::with(|c| c.limits.max_queued_messages = 10).await;
    let opts = b
        .options("bounded", ProtocolVersion::V5)
        .clean_start(false)
        .session_expiry(600);
    let (c, _e, _) = Client::connect(opts.clone()).await.unwrap();
    c.subscribe("flood", QoS::AtLeastOnce).await.unwrap();
    c.disconnect().await.unwrap();
    let (p, _pe) = b.client("flooder", ProtocolVersion::V5).await;
    for i in 0..25 {
        let r = p
            .publish("flood", QoS::AtLeastOnce, false, format!("{i}"))
            .await;
        if i < 10 {
            assert_eq!(r.unwrap(), ReasonCode::SUCCESS);
        } else {
            // The only matching session's quota is full: refused, not acknowledged and dropped.
            assert!(
                matches!(r, Err(ClientError::Rejected(ReasonCode::QUOTA_EXCEEDED))),
                "{i}: {r:?}"
            );
        }
    }
    // The refusals are counted before the subscriber returns.
    let (_, metrics) = b.http_get("/metrics").await;
    assert!(
        metrics.contains("cicada_messages_dropped_total{reason=\"quota_exceeded\"} 15"),
        "{metrics}"
    );
    let (_c, mut events, _) = Client::connect(opts).await.unwrap();
    for i in 0..10 {
        assert_eq!(
            next_message(&mut events, "queued").await.payload,
            Bytes::from(format!("{i}"))
        );
    }
    p.publish("flood", QoS::AtLeastOnce, false, "after")
        .await
        .unwrap();
    assert_eq!(
        next_message(&mut events, "live").await.payload,
        Bytes::from("after"),
        "exactly the acknowledged ones were kept"
    );
}

#[tokio::test]
async fn takeover_resumes_the_same_session() {
    let b = TestBroker::start().await;
    let opts = b
        .options("roamer", ProtocolVersion::V5)
        .clean_start(false)
        .session_expiry(600);
    let (c1, _e1, _) = Client::connect(opts.clone()).await.unwrap();
    c1.subscribe("roam", QoS::AtLeastOnce).await.unwrap();
    let (_c2, mut e2, ack) = Client::connect(opts).await.unwrap();
    assert!(
        ack.session_present,
        "the second connection takes the live session over"
    );
    let (p, _pe) = b.client("roam-pub", ProtocolVersion::V5).await;
    p.publish("roam", QoS::AtLeastOnce, false, "to the new one")
        .await
        .unwrap();
    assert_eq!(
        next_message(&mut e2, "delivery after takeover")
            .await
            .payload,
        Bytes::from("to the new one")
    );
}

/// A session with expiry 0 (3.1.1 Clean Session 1, v5 Session Expiry 0) ends with its connection, even when
/// a new connection for the client arrives while the old one is still open or just ending: the newcomer
/// (Clean Start 0) gets Session Present 0 and none of the old subscriptions [MQTT-3.1.2-6], [MQTT-3.2.2-2]
/// (issue 14, Mosquitto's test suite found Session Present 1 and the old subscription still delivering).
#[tokio::test]
async fn a_clean_session_is_not_resumed_by_a_later_connection() {
    use cicada::protocol::{Publish, Subscribe, SubscribeFilter, SubscriptionOptions};
    let b = TestBroker::start().await;
    let publish = |topic: &str| {
        Packet::Publish(Publish {
            topic: topic.into(),
            qos: QoS::AtMostOnce,
            payload: Bytes::from_static(b"x"),
            ..Publish::default()
        })
    };
    let mut publisher = b.raw().await;
    publisher
        .handshake(connect("pub", ProtocolVersion::V5))
        .await;
    for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
        let id = format!("x-{version:?}");
        // (a) The clean connection is still open.
        let mut old = b.raw().await;
        old.handshake(connect(&id, version)).await;
        old.subscribe(1, "to/own", QoS::AtMostOnce).await;
        let mut resume = connect(&id, version);
        resume.clean_start = false;
        resume.properties.session_expiry_interval = version.is_v5().then_some(60);
        let mut new = b.raw().await;
        let (code, present, _) = new.handshake(resume.clone()).await;
        assert_eq!((code, present), (ReasonCode::SUCCESS, false), "{version:?}");
        if version.is_v5() {
            assert_eq!(
                old.expect_close().await,
                Some(ReasonCode::SESSION_TAKEN_OVER)
            );
        }
        new.send(&Packet::Subscribe(Subscribe {
            pkid: 2,
            properties: Default::default(),
            filters: vec![SubscribeFilter {
                filter: "marker".into(),
                options: SubscriptionOptions::default(),
            }],
        }))
        .await;
        match new.recv().await {
            Some(Packet::SubAck(_)) => {}
            other => panic!("expected SUBACK, got {other:?}"),
        }
        publisher.send(&publish("to/own")).await;
        publisher.send(&publish("marker")).await;
        match new.recv().await {
            Some(Packet::Publish(p)) => assert_eq!(
                p.topic, "marker",
                "{version:?}: the old subscription delivered"
            ),
            other => panic!("expected the marker, got {other:?}"),
        }
        // (b) A clean client that leaves and comes back at once, without Clean Start: a new session each
        // time, never an error before its CONNACK.
        for i in 0..20 {
            let id = format!("b-{version:?}-{i}");
            let mut first = b.raw().await;
            first.handshake(connect(&id, version)).await;
            first.subscribe(1, "to/own", QoS::AtMostOnce).await;
            first.send(&Packet::Disconnect(Disconnect::default())).await;
            let mut again = connect(&id, version);
            again.clean_start = false;
            again.properties.session_expiry_interval = version.is_v5().then_some(60);
            let mut second = b.raw().await;
            let (code, present, _) = second.handshake(again).await;
            assert_eq!(
                (code, present),
                (ReasonCode::SUCCESS, false),
                "{version:?} try {i}"
            );
        }
    }
}
