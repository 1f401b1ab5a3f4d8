//! CONNECT / CONNACK: protocol levels, client ids, negotiated limits, keep-alive, takeover.

mod common;

use cicada::protocol::{Packet, Properties, ProtocolVersion, QoS, ReasonCode};
use common::broker::{connect, TestBroker};

#[tokio::test]
async fn mqtt_3_1_2_2_unsupported_protocol_level_gets_return_code_1() {
    let b = TestBroker::start().await;
    let mut raw = b.raw().await;
    // CONNECT "MQTT" level 6.
    raw.send_bytes(&[0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 6, 2, 0, 60, 0, 0])
        .await;
    match raw.recv().await {
        Some(Packet::ConnAck(a)) => assert_eq!(a.reason, ReasonCode::UNSUPPORTED_PROTOCOL_VERSION),
        other => panic!("expected CONNACK 1, got {other:?}"),
    }
    assert_eq!(raw.recv().await, None, "then the connection closes");
}

#[tokio::test]
async fn mqtt_3_1_0_1_a_connection_must_start_with_connect() {
    let b = TestBroker::start().await;
    let mut raw = b.raw().await;
    raw.send_bytes(&[0xC0, 0]).await; // PINGREQ
    assert_eq!(raw.recv().await, None, "closed without an answer");
}

#[tokio::test]
async fn mqtt_3_1_0_2_a_second_connect_is_a_protocol_error() {
    let b = TestBroker::start().await;
    let mut raw = b.raw().await;
    let (code, _, _) = raw.handshake(connect("twice", ProtocolVersion::V5)).await;
    assert_eq!(code, ReasonCode::SUCCESS);
    raw.send(&Packet::Connect(Box::new(connect(
        "twice",
        ProtocolVersion::V5,
    ))))
    .await;
    assert_eq!(raw.expect_close().await, Some(ReasonCode::PROTOCOL_ERROR));
}

#[tokio::test]
async fn mqtt_3_1_3_8_empty_client_id_needs_clean_session_in_3_1_1() {
    let b = TestBroker::start().await;
    let mut c = connect("", ProtocolVersion::V311);
    c.clean_start = false;
    let mut raw = b.raw().await;
    let (code, _, _) = raw.handshake(c).await;
    assert_eq!(
        code,
        ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
        "return code 2"
    );
    let mut raw = b.raw().await;
    let (code, _, _) = raw.handshake(connect("", ProtocolVersion::V311)).await;
    assert_eq!(
        code,
        ReasonCode::SUCCESS,
        "with clean session an id is assigned"
    );
}

#[tokio::test]
async fn mqtt_3_2_2_16_empty_client_id_is_assigned_in_v5() {
    let b = TestBroker::start().await;
    let mut raw = b.raw().await;
    let (code, _, props) = raw.handshake(connect("", ProtocolVersion::V5)).await;
    assert_eq!(code, ReasonCode::SUCCESS);
    let id = props
        .assigned_client_identifier
        .expect("an Assigned Client Identifier");
    assert!(!id.is_empty());
}

#[tokio::test]
async fn connack_announces_the_configured_limits_and_features() {
    let b = TestBroker::with(|c| {
        c.mqtt.max_qos = QoS::AtLeastOnce;
        c.mqtt.retain_available = false;
        c.mqtt.shared_subscription_available = false;
        c.limits.max_inflight = 7;
        c.limits.max_packet_size = 4096;
        c.limits.topic_alias_maximum = 5;
        c.limits.keep_alive_max = 30;
        c.limits.max_session_expiry = 100;
    })
    .await;
    let mut raw = b.raw().await;
    let mut c = connect("limits", ProtocolVersion::V5);
    c.keep_alive = 0;
    c.properties.session_expiry_interval = Some(1000);
    let (code, present, p) = raw.handshake(c).await;
    assert_eq!(code, ReasonCode::SUCCESS);
    assert!(!present);
    assert_eq!(p.receive_maximum, Some(7));
    assert_eq!(p.maximum_packet_size, Some(4096));
    assert_eq!(p.topic_alias_maximum, Some(5));
    assert_eq!(p.maximum_qos, Some(1));
    assert_eq!(p.retain_available, Some(false));
    assert_eq!(p.shared_subscription_available, Some(false));
    assert_eq!(
        p.server_keep_alive,
        Some(30),
        "keep-alive 0 is lowered to keep_alive_max [MQTT-3.2.2-21]"
    );
    assert_eq!(
        p.session_expiry_interval,
        Some(100),
        "session expiry capped"
    );
}

#[tokio::test]
async fn mqtt_3_1_2_24_keep_alive_timeout_disconnects_with_0x8d() {
    let b = TestBroker::start().await;
    let mut raw = b.raw().await;
    let mut c = connect("sleepy", ProtocolVersion::V5);
    c.keep_alive = 1;
    raw.handshake(c).await;
    // Nothing is sent: after 1.5 s the broker gives up.
    assert_eq!(
        raw.expect_close().await,
        Some(ReasonCode::KEEP_ALIVE_TIMEOUT)
    );
}

#[tokio::test]
async fn pingreq_gets_pingresp_and_keeps_the_connection() {
    let b = TestBroker::start().await;
    let mut raw = b.raw().await;
    raw.handshake(connect("pinger", ProtocolVersion::V311))
        .await;
    raw.send(&Packet::PingReq).await;
    assert_eq!(raw.recv().await, Some(Packet::PingResp));
}

#[tokio::test]
async fn max_connections_refuses_with_quota_exceeded() {
    let b = TestBroker::with(|c| c.limits.max_connections = 1).await;
    let mut first = b.raw().await;
    assert_eq!(
        first.handshake(connect("one", ProtocolVersion::V5)).await.0,
        ReasonCode::SUCCESS
    );
    let mut second = b.raw().await;
    assert_eq!(
        second
            .handshake(connect("two", ProtocolVersion::V5))
            .await
            .0,
        ReasonCode::QUOTA_EXCEEDED
    );
    let mut third = b.raw().await;
    assert_eq!(
        third
            .handshake(connect("three", ProtocolVersion::V311))
            .await
            .0,
        ReasonCode::SERVER_UNAVAILABLE,
        "3.1.1 return code 3"
    );
}

#[tokio::test]
async fn enhanced_authentication_is_refused_with_bad_authentication_method() {
    let b = TestBroker::start().await;
    let mut raw = b.raw().await;
    let mut c = connect("scram", ProtocolVersion::V5);
    c.properties = Properties {
        authentication_method: Some("SCRAM-SHA-1".into()),
        ..Default::default()
    };
    assert_eq!(
        raw.handshake(c).await.0,
        ReasonCode::BAD_AUTHENTICATION_METHOD
    );
}

#[tokio::test]
async fn mqtt_3_1_4_3_same_client_id_takes_the_session_over_with_0x8e() {
    let b = TestBroker::start().await;
    let mut old = b.raw().await;
    old.handshake(connect("dup-id", ProtocolVersion::V5)).await;
    let mut new = b.raw().await;
    let (code, _, _) = new.handshake(connect("dup-id", ProtocolVersion::V5)).await;
    assert_eq!(code, ReasonCode::SUCCESS);
    assert_eq!(
        old.expect_close().await,
        Some(ReasonCode::SESSION_TAKEN_OVER)
    );
    new.send(&Packet::PingReq).await;
    assert_eq!(
        new.recv().await,
        Some(Packet::PingResp),
        "the new connection is unaffected"
    );
}

#[tokio::test]
async fn mqtt_3_1_v31_clients_connect_with_mqisdp() {
    let b = TestBroker::start().await;
    let mut raw = b.raw().await;
    assert_eq!(
        raw.handshake(connect("old-device", ProtocolVersion::V31))
            .await
            .0,
        ReasonCode::SUCCESS
    );
}

#[tokio::test]
async fn response_information_is_given_when_requested_and_configured() {
    let b = TestBroker::with(|c| c.mqtt.response_information = "reply/".into()).await;
    let mut raw = b.raw().await;
    let mut c = connect("asker", ProtocolVersion::V5);
    c.properties.request_response_information = Some(true);
    let (_, _, props) = raw.handshake(c).await;
    assert_eq!(props.response_information.as_deref(), Some("reply/asker"));
    let mut raw = b.raw().await;
    let (_, _, props) = raw.handshake(connect("silent", ProtocolVersion::V5)).await;
    assert_eq!(props.response_information, None, "only when requested");
}

#[tokio::test]
async fn server_disconnects_carry_a_reason_string() {
    let b = TestBroker::start().await;
    let mut raw = b.raw().await;
    raw.handshake(connect("explain", ProtocolVersion::V5)).await;
    raw.send(&Packet::Connect(Box::new(connect(
        "explain",
        ProtocolVersion::V5,
    ))))
    .await;
    match raw.recv().await {
        Some(Packet::Disconnect(d)) => {
            assert_eq!(d.reason, ReasonCode::PROTOCOL_ERROR);
            assert!(d
                .properties
                .reason_string
                .unwrap_or_default()
                .contains("second CONNECT"));
        }
        other => panic!("{other:?}"),
    }
}

/// [MQTT-3.1.2-24]: the CONNACK fits the client's Maximum Packet Size (what the client can do without is
/// dropped); when even the one with the restrictions it must know does not, the connection closes without one.
#[tokio::test]
async fn the_connack_respects_the_clients_maximum_packet_size() {
    use tokio::io::AsyncReadExt;
    let b = TestBroker::start().await;
    // The default CONNACK's restrictions (Receive Maximum 128, Maximum Packet Size) take 13 bytes.
    for (max, limit) in [
        (2u32, None),
        (5, None),
        (10, None),
        (13, Some(13usize)),
        (1 << 20, Some(1 << 20)),
    ] {
        let mut raw = b.raw().await;
        let mut c = connect(&format!("mps-{max}"), ProtocolVersion::V5);
        c.properties.maximum_packet_size = Some(max);
        raw.decoder.version = ProtocolVersion::V5;
        raw.send(&Packet::Connect(Box::new(c))).await;
        // Read one packet (its remaining length fits one byte here), or up to the close.
        let mut got = Vec::new();
        let closed = loop {
            if got.len() >= 2 && got.len() >= 2 + got[1] as usize {
                break false;
            }
            let mut chunk = [0u8; 256];
            let n = tokio::time::timeout(common::WAIT, raw.stream.read(&mut chunk))
                .await
                .expect("an answer or a close")
                .unwrap_or(0);
            if n == 0 {
                break true;
            }
            got.extend_from_slice(&chunk[..n]);
        };
        match limit {
            None => assert!(
                closed && got.is_empty(),
                "max {max}: nothing sent, got {got:?}"
            ),
            Some(limit) => {
                assert!(!closed, "max {max}: accepted");
                assert!(
                    got.len() <= limit,
                    "max {max}: {} bytes: {got:?}",
                    got.len()
                );
                assert_eq!((got[0], got[3]), (0x20, 0), "a successful CONNACK");
                if max == 1 << 20 {
                    assert!(got.len() > 10, "with room, every property: {got:?}");
                }
            }
        }
    }
}
