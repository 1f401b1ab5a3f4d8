//! A client's own packets take effect in the order it sent them (issue 14): a SUBSCRIBE followed by a
//! PUBLISH in the same write gets the client its own message back, at QoS 0, 1 and 2, in 3.1.1 and 5.0, for
//! exact and wildcard filters; an UNSUBSCRIBE followed by a PUBLISH does not; retained messages sent on
//! subscribe come before live messages published after the SUBSCRIBE. Before, the PUBLISH could reach the
//! topic shard before the subscription did (0 of 200 tries got their own message back).

mod common;

use bytes::{Bytes, BytesMut};
use cicada::protocol::{
    encode, Packet, ProtocolVersion, Publish, QoS, Subscribe, SubscribeFilter, SubscriptionOptions,
    Unsubscribe,
};
use common::broker::{connect, Raw, TestBroker};

const TRIES: usize = 10;

fn subscribe(pkid: u16, filter: &str, qos: QoS) -> Packet {
    Packet::Subscribe(Subscribe {
        pkid,
        properties: Default::default(),
        filters: vec![SubscribeFilter {
            filter: filter.into(),
            options: SubscriptionOptions {
                qos,
                ..Default::default()
            },
        }],
    })
}

fn publish(topic: &str, qos: QoS, pkid: u16, payload: &'static [u8], retain: bool) -> Packet {
    Packet::Publish(Publish {
        topic: topic.into(),
        qos,
        retain,
        pkid: if qos == QoS::AtMostOnce { 0 } else { pkid },
        payload: Bytes::from_static(payload),
        ..Publish::default()
    })
}

/// The packets encoded back to back, sent in one write.
async fn one_write(raw: &mut Raw, packets: &[Packet]) {
    let mut out = BytesMut::new();
    for p in packets {
        encode(p, raw.decoder.version, &mut out).unwrap();
    }
    raw.send_bytes(&out).await;
}

/// The payloads of the PUBLISHes received until one on `until` (included).
async fn publishes_until(raw: &mut Raw, until: &str) -> Vec<(String, Bytes, bool)> {
    let mut out = Vec::new();
    loop {
        match raw.recv().await {
            Some(Packet::Publish(p)) => {
                let last = p.topic == until;
                out.push((p.topic, p.payload, p.retain));
                if last {
                    return out;
                }
            }
            Some(_) => {}
            None => panic!("closed while waiting for {until}: got {out:?}"),
        }
    }
}

#[tokio::test]
async fn a_publish_right_behind_a_subscribe_is_matched_against_it() {
    let b = TestBroker::start().await;
    let mut n = 0;
    for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            for (filter, topic) in [
                ("req/own", "req/own"),
                ("req/+/x", "req/a/x"),
                ("req/#", "req/b"),
            ] {
                for _ in 0..TRIES {
                    n += 1;
                    let mut raw = b.raw().await;
                    raw.handshake(connect(&format!("rr-{n}"), version)).await;
                    one_write(
                        &mut raw,
                        &[
                            subscribe(1, filter, qos),
                            publish(topic, qos, 2, b"mine", false),
                        ],
                    )
                    .await;
                    let got = publishes_until(&mut raw, topic).await;
                    assert_eq!(got.len(), 1, "{version:?} {qos:?} {filter}: {got:?}");
                }
            }
        }
    }
}

#[tokio::test]
async fn a_publish_right_behind_an_unsubscribe_is_not_delivered() {
    let b = TestBroker::start().await;
    for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
        for i in 0..TRIES {
            let mut raw = b.raw().await;
            raw.handshake(connect(&format!("un-{version:?}-{i}"), version))
                .await;
            raw.subscribe(1, "gone/#", QoS::AtLeastOnce).await;
            raw.subscribe(2, "marker", QoS::AtLeastOnce).await;
            one_write(
                &mut raw,
                &[
                    Packet::Unsubscribe(Unsubscribe {
                        pkid: 3,
                        properties: Default::default(),
                        filters: vec!["gone/#".into()],
                    }),
                    publish("gone/1", QoS::AtLeastOnce, 4, b"late", false),
                    // One publisher's messages are delivered in order: the marker comes after "gone/1".
                    publish("marker", QoS::AtLeastOnce, 5, b"end", false),
                ],
            )
            .await;
            let got = publishes_until(&mut raw, "marker").await;
            assert_eq!(
                got.len(),
                1,
                "{version:?}: delivered after its UNSUBSCRIBE: {got:?}"
            );
        }
    }
}

#[tokio::test]
async fn retained_messages_on_subscribe_come_before_later_live_ones() {
    let b = TestBroker::start().await;
    let mut setter = b.raw().await;
    setter
        .handshake(connect("setter", ProtocolVersion::V5))
        .await;
    setter
        .send(&publish(
            "state/lamp",
            QoS::AtLeastOnce,
            1,
            b"retained",
            true,
        ))
        .await;
    match setter.recv().await {
        Some(Packet::PubAck(_)) => {}
        other => panic!("expected PUBACK, got {other:?}"),
    }
    for i in 0..TRIES {
        let mut raw = b.raw().await;
        raw.handshake(connect(&format!("ret-{i}"), ProtocolVersion::V5))
            .await;
        one_write(
            &mut raw,
            &[
                subscribe(1, "state/#", QoS::AtLeastOnce),
                publish("state/lamp", QoS::AtMostOnce, 0, b"live", false),
            ],
        )
        .await;
        let mut got = Vec::new();
        while got.len() < 2 {
            match raw.recv().await {
                Some(Packet::Publish(p)) => got.push((p.payload, p.retain)),
                Some(_) => {}
                None => panic!("closed: {got:?}"),
            }
        }
        assert_eq!(
            got,
            [
                (Bytes::from_static(b"retained"), true),
                (Bytes::from_static(b"live"), false)
            ]
        );
    }
}

/// The same for a persistent session, whose QoS 1/2 messages are matched through the store when another
/// persistent session wants the topic too (the fan-out is applied from the stored subscriptions): its own
/// message right behind its SUBSCRIBE still comes back.
#[tokio::test]
async fn a_persistent_session_gets_its_own_message_right_behind_its_subscribe() {
    let b = TestBroker::start().await;
    // Another persistent session on the same topics makes every QoS 1/2 publish a stored fan-out.
    let mut other = b.raw().await;
    let mut oc = connect("other-archiver", ProtocolVersion::V5);
    oc.clean_start = false;
    oc.properties.session_expiry_interval = Some(600);
    other.handshake(oc).await;
    other.subscribe(1, "req/#", QoS::AtLeastOnce).await;
    for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
        for i in 0..TRIES {
            let mut raw = b.raw().await;
            let mut c = connect(&format!("durable-{qos:?}-{i}"), ProtocolVersion::V5);
            c.clean_start = true;
            c.properties.session_expiry_interval = Some(600);
            raw.handshake(c).await;
            let topic = format!("req/{i}");
            one_write(
                &mut raw,
                &[
                    subscribe(1, "req/+", qos),
                    publish(&topic, qos, 2, b"mine", false),
                ],
            )
            .await;
            let got = publishes_until(&mut raw, &topic).await;
            assert_eq!(got.len(), 1, "{qos:?}: {got:?}");
        }
    }
}

/// Mosquitto's test/broker 04-retain-qos0-fresh: two retained QoS 0 PUBLISHes then, in the same write, a
/// SUBSCRIBE to the second topic. The retained message is in the index before anything after it is handled
/// [MQTT-3.3.1-5]; before, the SUBSCRIBE read the index ahead of the store's apply (0 of 10 tries got it).
#[tokio::test]
async fn a_subscribe_right_behind_a_retained_publish_gets_it() {
    let b = TestBroker::start().await;
    for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
        for i in 0..TRIES {
            let mut raw = b.raw().await;
            raw.handshake(connect(&format!("rq0-{version:?}-{i}"), version))
                .await;
            let (old, new) = (
                format!("rq0/{version:?}/{i}/x"),
                format!("rq0/{version:?}/{i}/new"),
            );
            one_write(
                &mut raw,
                &[
                    publish(&old, QoS::AtMostOnce, 0, b"old", true),
                    publish(&new, QoS::AtMostOnce, 0, b"fresh", true),
                    subscribe(1, &new, QoS::AtMostOnce),
                ],
            )
            .await;
            let got = publishes_until(&mut raw, &new).await;
            assert_eq!(
                got,
                vec![(new.clone(), Bytes::from_static(b"fresh"), true)],
                "{version:?} try {i}: the retained message on subscribe"
            );
        }
    }
}

/// Once a live copy of a retained message has arrived anywhere, the index holds it: a subscriber that got
/// the live copy and subscribes again receives it retained. Before, the live copy could overtake the
/// store's apply (about half the tries missed the retained copy).
#[tokio::test]
async fn a_live_copy_of_a_retained_message_never_overtakes_the_index() {
    let b = TestBroker::start().await;
    let mut sub = b.raw().await;
    sub.handshake(connect("rl-sub", ProtocolVersion::V5)).await;
    sub.subscribe(1, "rl/#", QoS::AtMostOnce).await;
    let mut publisher = b.raw().await;
    publisher
        .handshake(connect("rl-pub", ProtocolVersion::V5))
        .await;
    let mut pkid = 1;
    for i in 0..TRIES {
        let topic = format!("rl/{i}");
        publisher
            .send(&publish(&topic, QoS::AtMostOnce, 0, b"flag", true))
            .await;
        let live = publishes_until(&mut sub, &topic).await;
        assert_eq!(
            live,
            vec![(topic.clone(), Bytes::from_static(b"flag"), false)]
        );
        pkid += 1;
        sub.send(&Packet::Unsubscribe(Unsubscribe {
            pkid,
            properties: Default::default(),
            filters: vec![topic.clone()],
        }))
        .await;
        pkid += 1;
        one_write(&mut sub, &[subscribe(pkid, &topic, QoS::AtMostOnce)]).await;
        let again = publishes_until(&mut sub, &topic).await;
        assert_eq!(
            again,
            vec![(topic.clone(), Bytes::from_static(b"flag"), true)],
            "try {i}: the retained copy after the live one"
        );
    }
}
