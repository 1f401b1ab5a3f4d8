//! Retained messages: set, replace, clear with an empty payload, delivered on subscribe with RETAIN set,
//! Retain Handling 0/1/2, message expiry.

mod common;

use bytes::Bytes;
use cicada::protocol::{
    Properties, ProtocolVersion, Publish, QoS, RetainHandling, SubscribeFilter, SubscriptionOptions,
};
use common::broker::TestBroker;
use common::next_message;

#[tokio::test]
async fn mqtt_3_3_1_5_retained_messages_are_set_replaced_and_delivered_on_subscribe() {
    let b = TestBroker::start().await;
    let (p, _pe) = b.client("r-pub", ProtocolVersion::V311).await;
    p.publish("device/1/status", QoS::AtLeastOnce, true, "offline")
        .await
        .unwrap();
    p.publish("device/1/status", QoS::AtLeastOnce, true, "online")
        .await
        .unwrap();
    p.publish("device/2/status", QoS::AtLeastOnce, true, "online")
        .await
        .unwrap();
    let (s, mut events) = b.client("r-sub", ProtocolVersion::V311).await;
    s.subscribe("device/+/status", QoS::AtLeastOnce)
        .await
        .unwrap();
    let mut got = vec![];
    for _ in 0..2 {
        let m = next_message(&mut events, "retained").await;
        assert!(m.retain, "[MQTT-3.3.1-9] RETAIN set on subscribe");
        got.push((m.topic, m.payload));
    }
    got.sort();
    assert_eq!(
        got,
        vec![
            ("device/1/status".to_string(), Bytes::from("online")),
            ("device/2/status".to_string(), Bytes::from("online"))
        ]
    );
    // Live messages to an existing subscription carry RETAIN = 0 [MQTT-3.3.1-12].
    p.publish("device/2/status", QoS::AtLeastOnce, true, "again")
        .await
        .unwrap();
    assert!(!next_message(&mut events, "live").await.retain);
}

#[tokio::test]
async fn mqtt_3_3_1_10_an_empty_retained_payload_clears_the_topic() {
    let b = TestBroker::start().await;
    let (p, _pe) = b.client("c-pub", ProtocolVersion::V5).await;
    p.publish("gone", QoS::AtLeastOnce, true, "here")
        .await
        .unwrap();
    p.publish("gone", QoS::AtLeastOnce, true, "").await.unwrap();
    p.publish("stays", QoS::AtLeastOnce, true, "yes")
        .await
        .unwrap();
    let (s, mut events) = b.client("c-sub", ProtocolVersion::V5).await;
    s.subscribe("#", QoS::AtLeastOnce).await.unwrap();
    assert_eq!(
        next_message(&mut events, "the one retained").await.topic,
        "stays"
    );
    let (_, metrics) = b.http_get("/metrics").await;
    assert!(metrics.contains("cicada_retained_messages 1"), "{metrics}");
}

#[tokio::test]
async fn mqtt_3_8_3_1_retain_handling_0_1_2() {
    let b = TestBroker::start().await;
    let (p, _pe) = b.client("rh-pub", ProtocolVersion::V5).await;
    p.publish("rh", QoS::AtLeastOnce, true, "kept")
        .await
        .unwrap();
    let (s, mut events) = b.client("rh-sub", ProtocolVersion::V5).await;
    let sub = |rh| SubscribeFilter {
        filter: "rh".into(),
        options: SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            retain_handling: rh,
            ..Default::default()
        },
    };
    s.subscribe_with(vec![sub(RetainHandling::SendIfNew)], Properties::default())
        .await
        .unwrap();
    assert_eq!(
        next_message(&mut events, "new subscription").await.payload,
        Bytes::from("kept")
    );
    s.subscribe_with(vec![sub(RetainHandling::SendIfNew)], Properties::default())
        .await
        .unwrap();
    s.subscribe_with(vec![sub(RetainHandling::DoNotSend)], Properties::default())
        .await
        .unwrap();
    s.subscribe_with(
        vec![sub(RetainHandling::SendAtSubscribe)],
        Properties::default(),
    )
    .await
    .unwrap();
    let m = next_message(&mut events, "only retain handling 0 sends again").await;
    assert_eq!(m.payload, Bytes::from("kept"));
    p.publish("rh", QoS::AtLeastOnce, false, "live")
        .await
        .unwrap();
    assert_eq!(
        next_message(&mut events, "live").await.payload,
        Bytes::from("live"),
        "nothing in between"
    );
}

#[tokio::test]
async fn expired_retained_messages_are_not_delivered() {
    let b = TestBroker::start().await;
    let (p, _pe) = b.client("re-pub", ProtocolVersion::V5).await;
    let mut m = Publish {
        topic: "re/short".into(),
        qos: QoS::AtLeastOnce,
        retain: true,
        payload: Bytes::from_static(b"short"),
        ..Publish::default()
    };
    m.properties.message_expiry_interval = Some(1);
    p.publish_message(m).await.unwrap();
    p.publish("re/long", QoS::AtLeastOnce, true, "long")
        .await
        .unwrap();
    // Let the broker's clock pass the 1 s expiry.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (s, mut events) = b.client("re-sub", ProtocolVersion::V5).await;
    s.subscribe("re/#", QoS::AtLeastOnce).await.unwrap();
    assert_eq!(
        next_message(&mut events, "unexpired").await.topic,
        "re/long"
    );
    p.publish("re/marker", QoS::AtLeastOnce, false, "m")
        .await
        .unwrap();
    assert_eq!(
        next_message(&mut events, "marker").await.topic,
        "re/marker",
        "the expired one never came"
    );
}

#[tokio::test]
async fn retain_not_available_disconnects_a_retained_publish_with_0x9a() {
    let b = TestBroker::with(|c| c.mqtt.retain_available = false).await;
    let mut raw = b.raw().await;
    raw.handshake(common::broker::connect("no-retain", ProtocolVersion::V5))
        .await;
    let p = Publish {
        topic: "x".into(),
        retain: true,
        payload: Bytes::from_static(b"x"),
        ..Publish::default()
    };
    raw.send(&cicada::protocol::Packet::Publish(p)).await;
    assert_eq!(
        raw.expect_close().await,
        Some(cicada::protocol::ReasonCode::RETAIN_NOT_SUPPORTED)
    );
}

/// Mosquitto's test/broker 04-retain-qos1-expiry: a retained QoS 1 message with Message Expiry Interval 4,
/// read 10 ms later, still says 4 on the live copy, the retained copy and a persistent session's queued
/// copy. Before, the stored record rounded to whole Unix seconds twice and delivery floored again: the
/// retained copy said 2 and the live one 3 [MQTT-3.3.2-6].
#[tokio::test]
async fn message_expiry_loses_only_the_time_waited() {
    let b = TestBroker::start().await;
    let (live, mut live_events) = b.client("rx-live", ProtocolVersion::V5).await;
    live.subscribe("rx/#", QoS::AtLeastOnce).await.unwrap();
    // A persistent session, offline when the message comes: it is queued in the store.
    let opts = || {
        b.options("rx-queued", ProtocolVersion::V5)
            .clean_start(false)
            .session_expiry(600)
    };
    let (q, _qe, _) = cicada::client::Client::connect(opts()).await.unwrap();
    q.subscribe("rx/#", QoS::AtLeastOnce).await.unwrap();
    q.disconnect().await.unwrap();
    let (p, _pe) = b.client("rx-pub", ProtocolVersion::V5).await;
    let mut m = Publish {
        topic: "rx/flag".into(),
        qos: QoS::AtLeastOnce,
        retain: true,
        payload: Bytes::from_static(b"on"),
        ..Publish::default()
    };
    m.properties.message_expiry_interval = Some(4);
    p.publish_message(m).await.unwrap();
    let got = next_message(&mut live_events, "the live copy").await;
    assert_eq!(got.properties.message_expiry_interval, Some(4), "live copy");
    let (s, mut events) = b.client("rx-sub", ProtocolVersion::V5).await;
    s.subscribe("rx/flag", QoS::AtLeastOnce).await.unwrap();
    let got = next_message(&mut events, "the retained copy").await;
    assert!(got.retain);
    assert_eq!(
        got.properties.message_expiry_interval,
        Some(4),
        "retained copy"
    );
    let (_q, mut qe, present) = cicada::client::Client::connect(opts()).await.unwrap();
    assert!(present.session_present, "the session was kept");
    let got = next_message(&mut qe, "the queued copy").await;
    assert_eq!(
        got.properties.message_expiry_interval,
        Some(4),
        "queued copy"
    );
}
