//! Will messages: on abnormal close, keep-alive timeout and server-initiated disconnect; not on a normal
//! DISCONNECT (v5: unless 0x04); Will Delay Interval, cancelled by a reconnect in time; Will retain and QoS.

mod common;

use bytes::Bytes;
use cicada::client::Client;
use cicada::protocol::{
    Disconnect, LastWill, Packet, Properties, ProtocolVersion, QoS, ReasonCode,
};
use common::broker::{connect, TestBroker};
use common::next_message;

fn will(topic: &str, retain: bool, delay: Option<u32>) -> LastWill {
    LastWill {
        topic: topic.into(),
        payload: Bytes::from_static(b"offline"),
        qos: QoS::AtLeastOnce,
        retain,
        properties: Properties {
            will_delay_interval: delay,
            ..Default::default()
        },
    }
}

#[tokio::test]
async fn mqtt_3_1_2_8_will_is_published_when_the_connection_drops() {
    let b = TestBroker::start().await;
    let (watch, mut events) = b.client("watcher", ProtocolVersion::V311).await;
    watch
        .subscribe("device/+/status", QoS::AtLeastOnce)
        .await
        .unwrap();
    for v in [ProtocolVersion::V311, ProtocolVersion::V5] {
        let mut raw = b.raw().await;
        let mut c = connect(&format!("dev-{v:?}"), v);
        c.will = Some(will(&format!("device/{v:?}/status"), false, None));
        raw.handshake(c).await;
        drop(raw); // no DISCONNECT
        let m = next_message(&mut events, "the Will").await;
        assert_eq!(
            (m.topic, m.payload, m.qos),
            (
                format!("device/{v:?}/status"),
                Bytes::from("offline"),
                QoS::AtLeastOnce
            )
        );
    }
}

#[tokio::test]
async fn mqtt_3_1_2_10_no_will_after_a_normal_disconnect_but_with_reason_0x04() {
    let b = TestBroker::start().await;
    let (watch, mut events) = b.client("w2", ProtocolVersion::V5).await;
    watch.subscribe("w/#", QoS::AtLeastOnce).await.unwrap();
    let opts = b
        .options("polite", ProtocolVersion::V5)
        .will(will("w/polite", false, None));
    let (c, _e, _) = Client::connect(opts).await.unwrap();
    c.disconnect().await.unwrap();
    let opts = b
        .options("with-will", ProtocolVersion::V5)
        .will(will("w/with-will", false, None));
    let (c, _e, _) = Client::connect(opts).await.unwrap();
    c.disconnect_with(Disconnect {
        reason: ReasonCode::DISCONNECT_WITH_WILL,
        properties: Properties::default(),
    })
    .await
    .unwrap();
    assert_eq!(
        next_message(&mut events, "the 0x04 Will").await.topic,
        "w/with-will",
        "the polite one sent none"
    );
}

#[tokio::test]
async fn will_is_published_on_keep_alive_timeout_and_protocol_errors() {
    let b = TestBroker::start().await;
    let (watch, mut events) = b.client("w3", ProtocolVersion::V311).await;
    watch.subscribe("w3/#", QoS::AtLeastOnce).await.unwrap();
    let mut silent = b.raw().await;
    let mut c = connect("silent", ProtocolVersion::V311);
    c.keep_alive = 1;
    c.will = Some(will("w3/silent", false, None));
    silent.handshake(c).await;
    assert_eq!(
        next_message(&mut events, "keep-alive Will").await.topic,
        "w3/silent"
    );
    let mut rude = b.raw().await;
    let mut c = connect("rude", ProtocolVersion::V5);
    c.will = Some(will("w3/rude", false, None));
    rude.handshake(c).await;
    rude.send_bytes(&[0x30, 0x04, 0x00, 0x01, b'#', 0x00]).await; // PUBLISH to a wildcard topic
    assert_eq!(
        rude.expect_close().await,
        Some(ReasonCode::TOPIC_NAME_INVALID)
    );
    assert_eq!(
        next_message(&mut events, "protocol-error Will").await.topic,
        "w3/rude"
    );
}

#[tokio::test]
async fn will_retain_is_stored_for_later_subscribers() {
    let b = TestBroker::start().await;
    // A live watcher sees the Will arrive; only then does a late subscriber look for the retained copy.
    let (watch, mut live) = b.client("early", ProtocolVersion::V311).await;
    watch
        .subscribe("dev/9/status", QoS::AtLeastOnce)
        .await
        .unwrap();
    let mut raw = b.raw().await;
    let mut c = connect("ret-will", ProtocolVersion::V311);
    c.will = Some(will("dev/9/status", true, None));
    raw.handshake(c).await;
    drop(raw);
    assert_eq!(
        next_message(&mut live, "the Will, live").await.payload,
        Bytes::from("offline")
    );
    let (s, mut events) = b.client("late", ProtocolVersion::V311).await;
    s.subscribe("dev/9/status", QoS::AtLeastOnce).await.unwrap();
    let m = next_message(&mut events, "the retained Will").await;
    assert!(m.retain);
    assert_eq!(m.payload, Bytes::from("offline"));
}

#[tokio::test]
async fn mqtt_3_1_3_9_will_delay_is_cancelled_by_a_reconnect_in_time() {
    let b = TestBroker::start().await;
    let (watch, mut events) = b.client("w4", ProtocolVersion::V5).await;
    watch.subscribe("w4/#", QoS::AtLeastOnce).await.unwrap();
    // Delay 30 s, session 60 s: reconnecting at once cancels it.
    let mut c = connect("flaky", ProtocolVersion::V5);
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(60);
    c.will = Some(will("w4/flaky", false, Some(30)));
    let mut raw = b.raw().await;
    raw.handshake(c.clone()).await;
    drop(raw);
    let mut raw = b.raw().await;
    let (_, present, _) = raw.handshake(c).await;
    assert!(present);
    // Delay 1 s: published after it.
    let mut d = connect("gone-for-good", ProtocolVersion::V5);
    d.properties.session_expiry_interval = Some(60);
    d.will = Some(will("w4/gone", false, Some(1)));
    let mut raw2 = b.raw().await;
    raw2.handshake(d).await;
    let start = std::time::Instant::now();
    drop(raw2);
    let m = next_message(&mut events, "the delayed Will").await;
    assert_eq!(m.topic, "w4/gone", "and never w4/flaky");
    assert!(
        start.elapsed() >= std::time::Duration::from_millis(900),
        "not before its delay"
    );
    raw.send(&Packet::PingReq).await;
    assert_eq!(raw.recv().await, Some(Packet::PingResp));
}

#[tokio::test]
async fn will_of_a_session_that_ends_before_the_delay_is_published_then() {
    let b = TestBroker::start().await;
    let (watch, mut events) = b.client("w5", ProtocolVersion::V5).await;
    watch.subscribe("w5/#", QoS::AtLeastOnce).await.unwrap();
    // Session expiry 0 ends the session with the connection: the Will goes at once despite a 60 s delay.
    let mut c = connect("short-session", ProtocolVersion::V5);
    c.will = Some(will("w5/x", false, Some(60)));
    let mut raw = b.raw().await;
    raw.handshake(c).await;
    drop(raw);
    assert_eq!(
        next_message(&mut events, "the Will at session end")
            .await
            .topic,
        "w5/x"
    );
}
