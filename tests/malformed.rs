//! Bad input from one client: the right reason code (MQTT 5) or a plain close (3.1.1), and nobody else is
//! affected (promise 5 of ARCHITECTURE.md).

mod common;

use bytes::Bytes;
use cicada::protocol::{ProtocolVersion, QoS, ReasonCode};
use common::broker::{connect, TestBroker};
use common::next_message;

/// (what, bytes after a v5 CONNECT, the DISCONNECT reason).
const CASES: &[(&str, &[u8], ReasonCode)] = &[
    (
        "reserved packet type 0",
        &[0x00, 0x00],
        ReasonCode::MALFORMED_PACKET,
    ),
    (
        "PUBLISH with QoS 3",
        &[0x36, 0x04, 0x00, 0x01, b'a', 0x00],
        ReasonCode::MALFORMED_PACKET,
    ),
    (
        "remaining length of 5 bytes",
        &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
        ReasonCode::MALFORMED_PACKET,
    ),
    (
        "SUBSCRIBE with wrong fixed flags",
        &[0x80, 0x06, 0x00, 0x01, 0x00, 0x00, 0x01, b'a'],
        ReasonCode::MALFORMED_PACKET,
    ),
    (
        "PUBLISH topic with a wildcard",
        &[0x30, 0x04, 0x00, 0x01, b'+', 0x00],
        ReasonCode::TOPIC_NAME_INVALID,
    ),
    (
        "PUBLISH QoS 1 with packet id 0",
        &[0x32, 0x06, 0x00, 0x01, b'a', 0x00, 0x00, 0x00],
        ReasonCode::PROTOCOL_ERROR,
    ),
    (
        "invalid UTF-8 topic",
        &[0x30, 0x05, 0x00, 0x02, 0xC3, 0x28, 0x00],
        ReasonCode::MALFORMED_PACKET,
    ),
    (
        "topic with U+0000",
        &[0x30, 0x05, 0x00, 0x02, b'a', 0x00, 0x00],
        ReasonCode::MALFORMED_PACKET,
    ),
    (
        "duplicate property",
        &[
            0x30, 0x09, 0x00, 0x01, b'a', 0x04, 0x01, 0x01, 0x01, 0x01, b'x',
        ],
        ReasonCode::PROTOCOL_ERROR,
    ),
    (
        "property not allowed in PUBLISH",
        &[0x30, 0x08, 0x00, 0x01, b'a', 0x03, 0x21, 0x00, 0x01, b'x'],
        ReasonCode::MALFORMED_PACKET,
    ),
    (
        "SUBSCRIBE retain handling 3",
        &[0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x30],
        ReasonCode::PROTOCOL_ERROR,
    ),
    (
        "CONNACK from a client",
        &[0x20, 0x03, 0x00, 0x00, 0x00],
        ReasonCode::PROTOCOL_ERROR,
    ),
];

#[tokio::test]
async fn malformed_packets_get_their_reason_code_and_others_are_unaffected() {
    let b = TestBroker::start().await;
    let (bystander, mut events) = b.client("bystander", ProtocolVersion::V5).await;
    bystander
        .subscribe("alive", QoS::AtLeastOnce)
        .await
        .unwrap();
    for (i, (what, bytes, reason)) in CASES.iter().enumerate() {
        let mut raw = b.raw().await;
        raw.handshake(connect(&format!("bad-{i}"), ProtocolVersion::V5))
            .await;
        raw.send_bytes(bytes).await;
        assert_eq!(raw.expect_close().await, Some(*reason), "{what}");
        bystander
            .publish("alive", QoS::AtLeastOnce, false, format!("{i}"))
            .await
            .unwrap();
        assert_eq!(
            next_message(&mut events, what).await.payload,
            Bytes::from(format!("{i}")),
            "after {what}"
        );
    }
}

#[tokio::test]
async fn v3_clients_are_simply_disconnected() {
    let b = TestBroker::start().await;
    let mut raw = b.raw().await;
    raw.handshake(connect("v3-bad", ProtocolVersion::V311))
        .await;
    raw.send_bytes(&[0x36, 0x03, 0x00, 0x01, b'a']).await;
    assert_eq!(
        raw.expect_close().await,
        None,
        "no DISCONNECT before MQTT 5"
    );
}

#[tokio::test]
async fn mqtt_3_2_2_6_a_packet_over_the_maximum_size_gets_0x95_before_its_body_is_read() {
    let b = TestBroker::with(|c| c.limits.max_packet_size = 1024).await;
    let mut raw = b.raw().await;
    raw.handshake(connect("big", ProtocolVersion::V5)).await;
    // Announce a 1 MiB PUBLISH and send only its header: the broker must not wait for the body.
    raw.send_bytes(&[0x30, 0x80, 0x80, 0x40]).await;
    assert_eq!(raw.expect_close().await, Some(ReasonCode::PACKET_TOO_LARGE));
}

#[tokio::test]
async fn garbage_instead_of_connect_is_closed_and_the_broker_keeps_serving() {
    let b = TestBroker::start().await;
    for junk in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        &[0xFF; 64][..],
        &[0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF][..],
    ] {
        let mut raw = b.raw().await;
        raw.send_bytes(junk).await;
        assert_eq!(raw.recv().await, None);
    }
    let (c, _e) = b.client("still-fine", ProtocolVersion::V311).await;
    c.publish("x", QoS::AtLeastOnce, false, "ok").await.unwrap();
}
