//! PUBLISH at QoS 0/1/2 in both directions and at every protocol level, DUP on redelivery, exactly-once
//! inbound QoS 2, ordering, expiry, forwarded properties, QoS downgrade, overlapping subscriptions.

mod common;

use bytes::Bytes;
use cicada::protocol::{
    Packet, Properties, ProtocolVersion, PubAck, Publish, QoS, ReasonCode, Subscribe,
    SubscribeFilter, SubscriptionOptions,
};
use common::broker::{connect, TestBroker};
use common::next_message;

fn publish(topic: &str, qos: QoS, pkid: u16, body: &str) -> Publish {
    Publish {
        topic: topic.into(),
        qos,
        pkid,
        payload: Bytes::from(body.to_string()),
        ..Publish::default()
    }
}

#[tokio::test]
async fn publish_and_receive_at_every_qos_and_level() {
    let b = TestBroker::start().await;
    for v in [ProtocolVersion::V311, ProtocolVersion::V5] {
        let (sub, mut events) = b.client(&format!("sub-{v:?}"), v).await;
        sub.subscribe("q/#", QoS::ExactlyOnce).await.unwrap();
        let (publisher, _pe) = b.client(&format!("pub-{v:?}"), v).await;
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let body = format!("{v:?} {qos:?}");
            let code = publisher
                .publish(format!("q/{}", qos as u8), qos, false, body.clone())
                .await
                .unwrap();
            assert!(!code.is_error());
            let m = next_message(&mut events, "the message").await;
            assert_eq!(
                (m.topic.as_str(), m.qos),
                (format!("q/{}", qos as u8).as_str(), qos)
            );
            assert_eq!(m.payload, Bytes::from(body));
        }
    }
    // MQTT 3.1 (MQIsdp) too, through a raw peer.
    let mut old = b.raw().await;
    old.handshake(connect("v31", ProtocolVersion::V31)).await;
    assert_eq!(
        old.subscribe(1, "old/+", QoS::AtLeastOnce).await,
        vec![ReasonCode::GRANTED_QOS_1]
    );
    let (publisher, _pe) = b.client("pub-for-31", ProtocolVersion::V311).await;
    publisher
        .publish("old/x", QoS::AtLeastOnce, false, "hi")
        .await
        .unwrap();
    match old.recv().await {
        Some(Packet::Publish(p)) => {
            assert_eq!((p.topic.as_str(), &p.payload[..]), ("old/x", &b"hi"[..]))
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn mqtt_3_8_4_6_qos_is_downgraded_to_the_granted_maximum() {
    let b = TestBroker::start().await;
    let (sub, mut events) = b.client("down", ProtocolVersion::V5).await;
    sub.subscribe("d", QoS::AtMostOnce).await.unwrap();
    let (publisher, _pe) = b.client("down-pub", ProtocolVersion::V5).await;
    publisher
        .publish("d", QoS::ExactlyOnce, false, "x")
        .await
        .unwrap();
    assert_eq!(
        next_message(&mut events, "downgraded").await.qos,
        QoS::AtMostOnce
    );
}

#[tokio::test]
async fn mqtt_4_3_3_10_a_resent_qos2_publish_before_pubrel_is_delivered_once() {
    let b = TestBroker::start().await;
    let (sub, mut events) = b.client("eo-sub", ProtocolVersion::V5).await;
    sub.subscribe("eo", QoS::ExactlyOnce).await.unwrap();
    let mut raw = b.raw().await;
    raw.handshake(connect("eo-raw", ProtocolVersion::V5)).await;
    let p = publish("eo", QoS::ExactlyOnce, 9, "once");
    raw.send(&Packet::Publish(p.clone())).await;
    assert!(matches!(raw.recv().await, Some(Packet::PubRec(a)) if a.pkid == 9));
    let mut dup = p.clone();
    dup.dup = true;
    raw.send(&Packet::Publish(dup)).await;
    assert!(
        matches!(raw.recv().await, Some(Packet::PubRec(a)) if a.pkid == 9),
        "PUBREC again"
    );
    raw.send(&Packet::PubRel(PubAck::new(9))).await;
    assert!(
        matches!(raw.recv().await, Some(Packet::PubComp(a)) if a.pkid == 9 && a.reason == ReasonCode::SUCCESS)
    );
    // A marker proves nothing else is coming.
    raw.send(&Packet::Publish(publish(
        "eo",
        QoS::AtMostOnce,
        0,
        "marker",
    )))
    .await;
    assert_eq!(
        next_message(&mut events, "the message").await.payload,
        Bytes::from("once")
    );
    assert_eq!(
        next_message(&mut events, "the marker").await.payload,
        Bytes::from("marker")
    );
    // PUBREL for an unknown id: PUBCOMP 0x92.
    raw.send(&Packet::PubRel(PubAck::new(77))).await;
    assert!(
        matches!(raw.recv().await, Some(Packet::PubComp(a)) if a.reason == ReasonCode::PACKET_IDENTIFIER_NOT_FOUND)
    );
}

#[tokio::test]
async fn mqtt_4_6_0_messages_on_a_topic_arrive_in_order() {
    // The burst must fit the subscriber's queue: beyond max_queued_messages messages are dropped (counted).
    let b = TestBroker::with(|c| c.limits.max_queued_messages = 10_000).await;
    let (sub, mut events) = b.client("order-sub", ProtocolVersion::V311).await;
    sub.subscribe("order/#", QoS::AtLeastOnce).await.unwrap();
    let (publisher, _pe) = b.client("order-pub", ProtocolVersion::V311).await;
    let mut tokens = Vec::new();
    for i in 0..2000u32 {
        let p = Publish {
            topic: "order/a".into(),
            qos: QoS::AtLeastOnce,
            payload: Bytes::from(i.to_be_bytes().to_vec()),
            ..Publish::default()
        };
        tokens.push(publisher.publish_start(p).await.unwrap());
    }
    for t in tokens {
        t.wait().await.unwrap();
    }
    for i in 0..2000u32 {
        assert_eq!(
            next_message(&mut events, "ordered").await.payload,
            Bytes::from(i.to_be_bytes().to_vec())
        );
    }
}

#[tokio::test]
async fn mqtt_4_4_0_1_unacknowledged_messages_are_resent_with_dup_on_reconnect() {
    let b = TestBroker::start().await;
    let mut c = connect("dup-me", ProtocolVersion::V311);
    c.clean_start = false;
    let mut raw = b.raw().await;
    raw.handshake(c.clone()).await;
    raw.subscribe(1, "dup/t", QoS::AtLeastOnce).await;
    let (publisher, _pe) = b.client("dup-pub", ProtocolVersion::V311).await;
    publisher
        .publish("dup/t", QoS::AtLeastOnce, false, "again")
        .await
        .unwrap();
    let first = match raw.recv().await {
        Some(Packet::Publish(p)) => p,
        other => panic!("{other:?}"),
    };
    assert!(!first.dup);
    drop(raw); // never acknowledged
    let mut raw = b.raw().await;
    let (_, present, _) = raw.handshake(c).await;
    assert!(present);
    match raw.recv().await {
        Some(Packet::Publish(p)) => {
            assert!(p.dup, "DUP set on redelivery");
            assert_eq!((p.pkid, &p.payload[..]), (first.pkid, &b"again"[..]));
            raw.send(&Packet::PubAck(PubAck::new(p.pkid))).await;
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn v5_properties_are_forwarded_unchanged_and_expiry_counts_down() {
    let b = TestBroker::start().await;
    let (sub, mut events) = b.client("props-sub", ProtocolVersion::V5).await;
    sub.subscribe("props", QoS::AtLeastOnce).await.unwrap();
    let (publisher, _pe) = b.client("props-pub", ProtocolVersion::V5).await;
    let props = Properties {
        payload_format_indicator: Some(1),
        content_type: Some("application/json".into()),
        response_topic: Some("reply/here".into()),
        correlation_data: Some(Bytes::from_static(b"\x00\x01corr")),
        user_properties: vec![
            ("site".into(), "berlin".into()),
            ("site".into(), "paris".into()),
        ],
        message_expiry_interval: Some(3600),
        ..Default::default()
    };
    let p = Publish {
        topic: "props".into(),
        qos: QoS::AtLeastOnce,
        payload: Bytes::from_static(b"{}"),
        properties: props.clone(),
        ..Publish::default()
    };
    publisher.publish_message(p).await.unwrap();
    let m = next_message(&mut events, "message with properties").await;
    assert_eq!(m.properties.payload_format_indicator, Some(1));
    assert_eq!(m.properties.content_type, props.content_type);
    assert_eq!(m.properties.response_topic, props.response_topic);
    assert_eq!(m.properties.correlation_data, props.correlation_data);
    assert_eq!(
        m.properties.user_properties, props.user_properties,
        "order and duplicates kept"
    );
    let left = m
        .properties
        .message_expiry_interval
        .expect("remaining expiry forwarded [MQTT-3.3.2-6]");
    assert!((3590..=3600).contains(&left));
}

#[tokio::test]
async fn mqtt_3_3_2_5_expired_messages_are_not_delivered() {
    let b = TestBroker::start().await;
    // A persistent subscriber that is away while its message expires.
    let mut opts = b
        .options("expiring", ProtocolVersion::V5)
        .clean_start(false)
        .session_expiry(300);
    opts.keep_alive = 60;
    let (sub, _events, _) = cicada::client::Client::connect(opts.clone()).await.unwrap();
    sub.subscribe("exp", QoS::AtLeastOnce).await.unwrap();
    sub.disconnect().await.unwrap();
    let (publisher, _pe) = b.client("exp-pub", ProtocolVersion::V5).await;
    let mut p = publish("exp", QoS::AtLeastOnce, 0, "short-lived");
    p.properties.message_expiry_interval = Some(1);
    publisher.publish_message(p).await.unwrap();
    publisher
        .publish_message(publish("exp", QoS::AtLeastOnce, 0, "lasting"))
        .await
        .unwrap();
    // Wait out the expiry on the broker's clock: a QoS 0 round trip after 1.1 s of real time.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (sub, mut events, ack) = cicada::client::Client::connect(opts).await.unwrap();
    assert!(ack.session_present);
    assert_eq!(
        next_message(&mut events, "the lasting message")
            .await
            .payload,
        Bytes::from("lasting")
    );
    drop(sub);
}

#[tokio::test]
async fn overlapping_subscriptions_give_one_copy_with_every_subscription_identifier() {
    let b = TestBroker::start().await;
    let (sub, mut events) = b.client("overlap", ProtocolVersion::V5).await;
    for (filter, id, qos) in [
        ("ov/#", 1u32, QoS::AtMostOnce),
        ("ov/+", 2, QoS::AtLeastOnce),
    ] {
        let props = Properties {
            subscription_identifiers: vec![id],
            ..Default::default()
        };
        let f = SubscribeFilter {
            filter: filter.into(),
            options: SubscriptionOptions {
                qos,
                ..Default::default()
            },
        };
        sub.subscribe_with(vec![f], props).await.unwrap();
    }
    let (publisher, _pe) = b.client("overlap-pub", ProtocolVersion::V5).await;
    publisher
        .publish("ov/x", QoS::AtLeastOnce, false, "one")
        .await
        .unwrap();
    publisher
        .publish("ov/x/y", QoS::AtLeastOnce, false, "two")
        .await
        .unwrap();
    let m = next_message(&mut events, "overlapping").await;
    assert_eq!(m.qos, QoS::AtLeastOnce, "the highest granted QoS");
    let mut ids = m.properties.subscription_identifiers.clone();
    ids.sort();
    assert_eq!(ids, vec![1, 2]);
    let m = next_message(&mut events, "only ov/#").await;
    assert_eq!(
        (
            m.payload.as_ref(),
            m.properties.subscription_identifiers.as_slice()
        ),
        (&b"two"[..], &[1u32][..])
    );
}

#[tokio::test]
async fn no_local_and_retain_as_published_options() {
    let b = TestBroker::start().await;
    let (c, mut events) = b.client("self", ProtocolVersion::V5).await;
    let f = |filter: &str, no_local, rap| SubscribeFilter {
        filter: filter.into(),
        options: SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            no_local,
            retain_as_published: rap,
            ..Default::default()
        },
    };
    c.subscribe_with(
        vec![
            f("nl", true, false),
            f("rap", false, true),
            f("norap", false, false),
        ],
        Properties::default(),
    )
    .await
    .unwrap();
    c.publish("nl", QoS::AtLeastOnce, false, "mine")
        .await
        .unwrap();
    c.publish("rap", QoS::AtLeastOnce, true, "kept flag")
        .await
        .unwrap();
    c.publish("norap", QoS::AtLeastOnce, true, "cleared flag")
        .await
        .unwrap();
    let m = next_message(&mut events, "rap").await;
    assert_eq!(
        (m.topic.as_str(), m.retain),
        ("rap", true),
        "own message on nl never arrives; RAP keeps RETAIN"
    );
    let m = next_message(&mut events, "norap").await;
    assert_eq!(
        (m.topic.as_str(), m.retain),
        ("norap", false),
        "[MQTT-3.3.1-12] RETAIN cleared"
    );
}

#[tokio::test]
async fn subscribe_reason_codes_per_filter() {
    let b = TestBroker::with(|c| {
        c.mqtt.max_qos = QoS::AtLeastOnce;
        c.mqtt.wildcard_subscription_available = false;
    })
    .await;
    let mut raw = b.raw().await;
    raw.handshake(connect("codes", ProtocolVersion::V5)).await;
    raw.send(&Packet::Subscribe(Subscribe {
        pkid: 3,
        properties: Properties::default(),
        filters: vec![
            SubscribeFilter {
                filter: "plain".into(),
                options: SubscriptionOptions {
                    qos: QoS::ExactlyOnce,
                    ..Default::default()
                },
            },
            SubscribeFilter {
                filter: "wild/#".into(),
                options: SubscriptionOptions::default(),
            },
        ],
    }))
    .await;
    match raw.recv().await {
        Some(Packet::SubAck(a)) => assert_eq!(
            a.reasons,
            vec![
                ReasonCode::GRANTED_QOS_1,
                ReasonCode::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED
            ]
        ),
        other => panic!("{other:?}"),
    }
    raw.send(&Packet::Unsubscribe(cicada::protocol::Unsubscribe {
        pkid: 4,
        properties: Properties::default(),
        filters: vec!["plain".into(), "never".into()],
    }))
    .await;
    match raw.recv().await {
        Some(Packet::UnsubAck(a)) => assert_eq!(
            a.reasons,
            vec![ReasonCode::SUCCESS, ReasonCode::NO_SUBSCRIPTION_EXISTED]
        ),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn mqtt_4_7_2_1_wildcards_do_not_match_dollar_topics() {
    let b = TestBroker::with(|c| c.mqtt.sys_interval = 1).await;
    let (c, mut events) = b.client("dollar", ProtocolVersion::V311).await;
    c.subscribe("#", QoS::AtMostOnce).await.unwrap();
    c.subscribe("$SYS/broker/uptime", QoS::AtMostOnce)
        .await
        .unwrap();
    let m = next_message(&mut events, "$SYS uptime").await;
    assert_eq!(
        m.topic, "$SYS/broker/uptime",
        "only the explicit $SYS subscription matches"
    );
    c.publish("plain/t", QoS::AtLeastOnce, false, "x")
        .await
        .unwrap();
    loop {
        let m = next_message(&mut events, "plain").await;
        if m.topic == "plain/t" {
            break;
        }
        assert_eq!(
            m.topic, "$SYS/broker/uptime",
            "# never delivers other $SYS topics"
        );
    }
}
