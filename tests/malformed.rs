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

/// A client still sending when the broker disconnects it reads the DISCONNECT and its reason, and the
/// connection ends cleanly: the broker shuts its write side down and reads and discards until the client
/// closes (up to 2 s), instead of closing with unread bytes, which resets the connection and fails the
/// client's next write (issue 14; the Paho `test_flow_control2` client got a broken pipe instead of its
/// DISCONNECT).
#[tokio::test]
async fn a_client_still_sending_reads_the_disconnect_reason_and_is_not_reset() {
    use cicada::protocol::{encode, Decoder, Packet};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = TestBroker::start().await;
    for round in 0..5 {
        let mut stream = tokio::net::TcpStream::connect(b.addr).await.unwrap();
        let mut out = bytes::BytesMut::new();
        let c = connect(&format!("noisy-{round}"), ProtocolVersion::V5);
        encode(&Packet::Connect(Box::new(c)), ProtocolVersion::V5, &mut out).unwrap();
        // A packet of reserved type 0 (malformed), then more the broker will not process.
        out.extend_from_slice(&[0x00, 0x00]);
        for _ in 0..1_000 {
            out.extend_from_slice(&[0xC0, 0x00]);
        }
        stream.write_all(&out).await.unwrap();
        let mut decoder = Decoder::new(ProtocolVersion::V5, 1 << 20);
        let mut buf = bytes::BytesMut::new();
        let mut packets = Vec::new();
        loop {
            while let Some(p) = decoder.decode(&mut buf).unwrap() {
                packets.push(p);
            }
            let n = tokio::time::timeout(common::WAIT, stream.read_buf(&mut buf))
                .await
                .expect("an answer or a close")
                .unwrap_or_else(|e| {
                    panic!("round {round}: reset before the DISCONNECT was read: {e}")
                });
            if n == 0 {
                break;
            }
        }
        match packets.last() {
            Some(Packet::Disconnect(d)) => assert_eq!(d.reason, ReasonCode::MALFORMED_PACKET),
            other => panic!("round {round}: expected DISCONNECT 0x81 last, got {other:?}"),
        }
        // The client had more to send: it goes through, and its close ends the connection without a reset.
        stream.write_all(&[0xC0, 0x00]).await.unwrap();
        stream.shutdown().await.unwrap();
        let mut rest = [0u8; 16];
        let r = tokio::time::timeout(common::WAIT, stream.read(&mut rest))
            .await
            .unwrap();
        assert!(matches!(r, Ok(0)), "round {round}: {r:?}");
    }
}
