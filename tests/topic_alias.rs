//! Topic aliases in both directions (MQTT 5).

mod common;

use bytes::Bytes;
use cicada::protocol::{Packet, Properties, ProtocolVersion, Publish, QoS, ReasonCode};
use common::broker::{connect, TestBroker};
use common::next_message;

fn aliased(topic: &str, alias: u16, body: &str) -> Packet {
    Packet::Publish(Publish {
        topic: topic.into(),
        qos: QoS::AtMostOnce,
        payload: Bytes::from(body.to_string()),
        properties: Properties {
            topic_alias: Some(alias),
            ..Default::default()
        },
        ..Publish::default()
    })
}

#[tokio::test]
async fn mqtt_3_3_2_12_inbound_aliases_resolve_to_their_topic() {
    let b = TestBroker::start().await;
    let (s, mut events) = b.client("alias-sub", ProtocolVersion::V5).await;
    s.subscribe("sensors/#", QoS::AtMostOnce).await.unwrap();
    let mut raw = b.raw().await;
    raw.handshake(connect("alias-pub", ProtocolVersion::V5))
        .await;
    raw.send(&aliased("sensors/very/long/topic/name", 1, "first"))
        .await;
    raw.send(&aliased("", 1, "second")).await;
    raw.send(&aliased("sensors/other", 1, "remapped")).await;
    raw.send(&aliased("", 1, "third")).await;
    for (topic, body) in [
        ("sensors/very/long/topic/name", "first"),
        ("sensors/very/long/topic/name", "second"),
        ("sensors/other", "remapped"),
        ("sensors/other", "third"),
    ] {
        let m = next_message(&mut events, body).await;
        assert_eq!((m.topic.as_str(), m.payload), (topic, Bytes::from(body)));
        assert_eq!(
            m.properties.topic_alias, None,
            "aliases are per connection, never forwarded"
        );
    }
}

#[tokio::test]
async fn mqtt_3_3_2_9_an_alias_above_the_maximum_is_refused_with_0x94() {
    let b = TestBroker::with(|c| c.limits.topic_alias_maximum = 2).await;
    let mut raw = b.raw().await;
    raw.handshake(connect("too-big", ProtocolVersion::V5)).await;
    raw.send(&aliased("t", 3, "x")).await;
    assert_eq!(
        raw.expect_close().await,
        Some(ReasonCode::TOPIC_ALIAS_INVALID)
    );
    let mut raw = b.raw().await;
    raw.handshake(connect("unknown", ProtocolVersion::V5)).await;
    raw.send(&aliased("", 2, "x")).await;
    assert_eq!(
        raw.expect_close().await,
        Some(ReasonCode::PROTOCOL_ERROR),
        "an alias never set"
    );
}

#[tokio::test]
async fn outbound_aliases_are_used_up_to_the_clients_maximum() {
    let b = TestBroker::start().await;
    let mut raw = b.raw().await;
    let mut c = connect("alias-recv", ProtocolVersion::V5);
    c.properties.topic_alias_maximum = Some(1);
    raw.handshake(c).await;
    raw.subscribe(1, "out/#", QoS::AtMostOnce).await;
    let (p, _pe) = b.client("alias-src", ProtocolVersion::V5).await;
    for t in ["out/a", "out/a", "out/b", "out/a"] {
        p.publish(t, QoS::AtLeastOnce, false, t).await.unwrap();
    }
    let mut got = Vec::new();
    for _ in 0..4 {
        match raw.recv().await {
            Some(Packet::Publish(m)) => got.push((m.topic, m.properties.topic_alias)),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        got,
        vec![
            ("out/a".to_string(), Some(1)),
            (String::new(), Some(1)),
            ("out/b".to_string(), None),
            (String::new(), Some(1)),
        ]
    );
}
