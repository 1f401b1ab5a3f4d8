//! Hand-written malformed byte strings, each with the error it must produce and the reason code the broker
//! will send for it. Inputs found by fuzzing are added here.

use super::topic::TopicError;
use super::*;
use bytes::BytesMut;

use DecodeError as E;
use ProtocolVersion::{V311, V5};

/// A packet with a correct Remaining Length around `body`.
fn pkt(header: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![header];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

fn s(text: &[u8]) -> Vec<u8> {
    let mut out = (text.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(text);
    out
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// CONNECT body with this protocol name, level and flags, keep-alive 60, client id "c".
fn connect(name: &[u8], level: u8, flags: u8, tail: &[u8]) -> Vec<u8> {
    let props: &[u8] = if level == 5 { &[0] } else { &[] };
    pkt(
        0x10,
        &cat(&[&s(name), &[level, flags, 0, 60], props, &s(b"c"), tail]),
    )
}

fn table() -> Vec<(
    &'static str,
    ProtocolVersion,
    Vec<u8>,
    DecodeError,
    ReasonCode,
)> {
    let r = ReasonCode::MALFORMED_PACKET;
    let p = ReasonCode::PROTOCOL_ERROR;
    vec![
        (
            "remaining length of five bytes",
            V311,
            vec![0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
            E::MalformedRemainingLength,
            r,
        ),
        (
            "mqtt_1_5_5_1 non-minimal remaining length",
            V311,
            vec![0xC0, 0x80, 0x00],
            E::MalformedRemainingLength,
            r,
        ),
        (
            "reserved packet type 0",
            V311,
            vec![0x00, 0x00],
            E::ReservedPacketType(0),
            r,
        ),
        (
            "AUTH below MQTT 5",
            V311,
            vec![0xF0, 0x00],
            E::ReservedPacketType(15),
            r,
        ),
        (
            "mqtt_2_1_3_1 PUBREL flags must be 0010",
            V311,
            pkt(0x60, &[0, 1]),
            E::InvalidHeaderFlags {
                kind: PacketKind::PubRel,
                flags: 0,
            },
            r,
        ),
        (
            "mqtt_2_1_3_1 SUBSCRIBE flags must be 0010",
            V311,
            pkt(0x80, &cat(&[&[0, 1], &s(b"a"), &[0]])),
            E::InvalidHeaderFlags {
                kind: PacketKind::Subscribe,
                flags: 0,
            },
            r,
        ),
        (
            "mqtt_2_1_3_1 PINGREQ flags must be 0",
            V311,
            vec![0xC1, 0x00],
            E::InvalidHeaderFlags {
                kind: PacketKind::PingReq,
                flags: 1,
            },
            r,
        ),
        (
            "mqtt_3_3_1_4 PUBLISH QoS 3",
            V311,
            pkt(0x36, &cat(&[&s(b"a"), &[0, 1]])),
            E::InvalidQoS,
            r,
        ),
        (
            "mqtt_3_3_1_2 DUP on QoS 0",
            V311,
            pkt(0x38, &s(b"a")),
            E::InvalidHeaderFlags {
                kind: PacketKind::Publish,
                flags: 0b1000,
            },
            r,
        ),
        (
            "mqtt_2_2_1_3 PUBLISH QoS 1 with packet id 0",
            V311,
            pkt(0x32, &cat(&[&s(b"a"), &[0, 0]])),
            E::ZeroPacketId,
            p,
        ),
        (
            "mqtt_3_3_2_2 wildcard in topic name",
            V311,
            pkt(0x30, &s(b"a/#")),
            E::InvalidTopicName(TopicError::WildcardInName),
            ReasonCode::TOPIC_NAME_INVALID,
        ),
        (
            "mqtt_1_5_4_1 ill-formed UTF-8",
            V311,
            pkt(0x30, &s(&[0xC3, 0x28])),
            E::InvalidUtf8,
            r,
        ),
        (
            "mqtt_1_5_4_1 UTF-16 surrogate in UTF-8",
            V311,
            pkt(0x30, &s(&[0xED, 0xA0, 0x80])),
            E::InvalidUtf8,
            r,
        ),
        (
            "mqtt_1_5_4_2 null character",
            V311,
            pkt(0x30, &s(b"a\0")),
            E::NullCharacter,
            r,
        ),
        (
            "mqtt_4_7_3_1 empty topic name",
            V311,
            pkt(0x30, &s(b"")),
            E::InvalidTopicName(TopicError::Empty),
            ReasonCode::TOPIC_NAME_INVALID,
        ),
        (
            "mqtt_3_3_2_1 v5 empty topic without alias",
            V5,
            pkt(0x30, &cat(&[&s(b""), &[0]])),
            E::MissingTopicAlias,
            p,
        ),
        (
            "mqtt_3_3_2_8 topic alias 0",
            V5,
            pkt(0x30, &cat(&[&s(b"a"), &[3, 0x23, 0, 0]])),
            E::InvalidPropertyValue(0x23),
            p,
        ),
        (
            "duplicate content type",
            V5,
            pkt(
                0x30,
                &cat(&[&s(b"a"), &[8, 0x03, 0, 1, b'x', 0x03, 0, 1, b'y']]),
            ),
            E::DuplicateProperty(0x03),
            p,
        ),
        (
            "session expiry is not a PUBLISH property",
            V5,
            pkt(0x30, &cat(&[&s(b"a"), &[5, 0x11, 0, 0, 0, 1]])),
            E::PropertyNotAllowed {
                id: 0x11,
                kind: PacketKind::Publish,
            },
            r,
        ),
        (
            "unknown property 0x7f",
            V5,
            pkt(0x30, &cat(&[&s(b"a"), &[1, 0x7F]])),
            E::UnknownProperty(0x7F),
            r,
        ),
        (
            "payload format indicator 2",
            V5,
            pkt(0x30, &cat(&[&s(b"a"), &[2, 0x01, 2]])),
            E::InvalidPropertyValue(0x01),
            p,
        ),
        (
            "property length beyond the packet",
            V5,
            pkt(0x30, &cat(&[&s(b"a"), &[10, 0x01]])),
            E::Truncated("properties"),
            r,
        ),
        (
            "non-minimal subscription identifier",
            V5,
            pkt(0x30, &cat(&[&s(b"a"), &[3, 0x0B, 0x80, 0x00]])),
            E::MalformedVarInt,
            r,
        ),
        (
            "subscription identifier 0",
            V5,
            pkt(0x30, &cat(&[&s(b"a"), &[2, 0x0B, 0x00]])),
            E::InvalidPropertyValue(0x0B),
            p,
        ),
        (
            "mqtt_3_1_2_3 CONNECT reserved flag",
            V311,
            connect(b"MQTT", 4, 0x03, &[]),
            E::ConnectReservedFlag,
            r,
        ),
        (
            "mqtt_3_1_2_1 unknown protocol name",
            V311,
            connect(b"MQTX", 4, 0x02, &[]),
            E::InvalidProtocolName("MQTX".into()),
            ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
        ),
        (
            "mqtt_3_1_2_2 unsupported protocol level",
            V311,
            connect(b"MQTT", 6, 0x02, &[]),
            E::UnsupportedProtocolLevel(6),
            ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
        ),
        (
            "mqtt_3_1_2_13 will QoS without will flag",
            V311,
            connect(b"MQTT", 4, 0x0A, &[]),
            E::InvalidWillFlags,
            r,
        ),
        (
            "mqtt_3_1_2_15 will retain without will flag",
            V311,
            connect(b"MQTT", 4, 0x22, &[]),
            E::InvalidWillFlags,
            r,
        ),
        (
            "mqtt_3_1_2_12 will QoS 3",
            V311,
            connect(b"MQTT", 4, 0x1E, &cat(&[&s(b"w"), &s(b"x")])),
            E::InvalidWillFlags,
            r,
        ),
        (
            "will topic with wildcard",
            V311,
            connect(b"MQTT", 4, 0x06, &cat(&[&s(b"w/+"), &s(b"x")])),
            E::InvalidTopicName(TopicError::WildcardInName),
            ReasonCode::TOPIC_NAME_INVALID,
        ),
        (
            "mqtt_3_1_2_22 password without user name",
            V311,
            connect(b"MQTT", 4, 0x42, &s(b"pw")),
            E::PasswordWithoutUsername,
            r,
        ),
        (
            "CONNECT ends before the client id",
            V311,
            pkt(0x10, &cat(&[&s(b"MQTT"), &[4, 2, 0, 60]])),
            E::Truncated("client identifier"),
            r,
        ),
        (
            "mqtt_3_8_3_2 SUBSCRIBE without filters",
            V311,
            pkt(0x82, &[0, 1]),
            E::NoTopicFilters(PacketKind::Subscribe),
            p,
        ),
        (
            "SUBSCRIBE packet id 0",
            V311,
            pkt(0x82, &cat(&[&[0, 0], &s(b"a"), &[0]])),
            E::ZeroPacketId,
            p,
        ),
        (
            "v3 SUBSCRIBE reserved option bits",
            V311,
            pkt(0x82, &cat(&[&[0, 1], &s(b"a"), &[0x04]])),
            E::ReservedSubscriptionBits,
            r,
        ),
        (
            "mqtt_3_8_3_5 v5 SUBSCRIBE reserved bit 6",
            V5,
            pkt(0x82, &cat(&[&[0, 1, 0], &s(b"a"), &[0x40]])),
            E::ReservedSubscriptionBits,
            r,
        ),
        (
            "retain handling 3",
            V5,
            pkt(0x82, &cat(&[&[0, 1, 0], &s(b"a"), &[0x30]])),
            E::InvalidRetainHandling,
            p,
        ),
        (
            "SUBSCRIBE QoS 3",
            V311,
            pkt(0x82, &cat(&[&[0, 1], &s(b"a"), &[0x03]])),
            E::InvalidQoS,
            r,
        ),
        (
            "mqtt_4_7_1_1 misplaced multi-level wildcard",
            V311,
            pkt(0x82, &cat(&[&[0, 1], &s(b"a#"), &[0]])),
            E::InvalidTopicFilter(TopicError::MisplacedMultiLevel),
            ReasonCode::TOPIC_FILTER_INVALID,
        ),
        (
            "mqtt_4_7_1_2 misplaced single-level wildcard",
            V311,
            pkt(0xA2, &cat(&[&[0, 1], &s(b"a/b+")])),
            E::InvalidTopicFilter(TopicError::MisplacedSingleLevel),
            ReasonCode::TOPIC_FILTER_INVALID,
        ),
        (
            "mqtt_3_8_3_4 no local on a shared subscription",
            V5,
            pkt(0x82, &cat(&[&[0, 1, 0], &s(b"$share/g/a"), &[0x04]])),
            E::NoLocalOnSharedSubscription,
            p,
        ),
        (
            "two subscription identifiers in SUBSCRIBE",
            V5,
            pkt(0x82, &cat(&[&[0, 1, 4, 0x0B, 1, 0x0B, 2], &s(b"a"), &[0]])),
            E::DuplicateProperty(0x0B),
            p,
        ),
        (
            "mqtt_3_10_3_2 UNSUBSCRIBE without filters",
            V311,
            pkt(0xA2, &[0, 1]),
            E::NoTopicFilters(PacketKind::Unsubscribe),
            p,
        ),
        (
            "PUBACK reason 0x05",
            V5,
            pkt(0x40, &[0, 1, 0x05]),
            E::InvalidReasonCode {
                kind: PacketKind::PubAck,
                code: 5,
            },
            r,
        ),
        (
            "DISCONNECT reason 0x05",
            V5,
            pkt(0xE0, &[0x05]),
            E::InvalidReasonCode {
                kind: PacketKind::Disconnect,
                code: 5,
            },
            r,
        ),
        (
            "v3 CONNACK return code 6",
            V311,
            pkt(0x20, &[0, 6]),
            E::InvalidReasonCode {
                kind: PacketKind::ConnAck,
                code: 6,
            },
            r,
        ),
        (
            "mqtt_3_2_2_1 CONNACK reserved flags",
            V311,
            pkt(0x20, &[2, 0]),
            E::ConnAckReservedFlags,
            r,
        ),
        (
            "PINGREQ with a body",
            V311,
            pkt(0xC0, &[0]),
            E::TrailingBytes(1),
            r,
        ),
        (
            "v3 PUBACK with a reason code",
            V311,
            pkt(0x40, &[0, 1, 0]),
            E::TrailingBytes(1),
            r,
        ),
        (
            "PUBLISH shorter than its topic",
            V311,
            pkt(0x30, &[0, 5, b'a']),
            E::Truncated("topic name"),
            r,
        ),
    ]
}

#[test]
fn malformed_inputs_produce_their_errors_and_reason_codes() {
    for (name, version, bytes, error, reason) in table() {
        let mut buf = BytesMut::from(&bytes[..]);
        let got = decode(&mut buf, version, 1 << 20);
        assert_eq!(got, Err(error.clone()), "{name}");
        assert_eq!(error.reason_code(), reason, "{name}");
    }
}

/// MQTT 3.1 marks a resent PUBREL, SUBSCRIBE or UNSUBSCRIBE with DUP; 3.1.1 and 5.0 refuse the bit.
#[test]
fn dup_on_pubrel_subscribe_and_unsubscribe_is_accepted_on_mqtt_3_1_only() {
    let resends = [
        (pkt(0x6A, &[0, 1]), PacketKind::PubRel),
        (
            pkt(0x8A, &cat(&[&[0, 1], &s(b"a"), &[1]])),
            PacketKind::Subscribe,
        ),
        (
            pkt(0xAA, &cat(&[&[0, 1], &s(b"a")])),
            PacketKind::Unsubscribe,
        ),
    ];
    for (bytes, kind) in resends {
        let mut buf = BytesMut::from(&bytes[..]);
        let p = decode(&mut buf, ProtocolVersion::V31, 1 << 20)
            .unwrap_or_else(|e| panic!("{kind:?} with DUP on 3.1: {e}"))
            .unwrap();
        let got = match p {
            Packet::PubRel(_) => PacketKind::PubRel,
            Packet::Subscribe(_) => PacketKind::Subscribe,
            Packet::Unsubscribe(_) => PacketKind::Unsubscribe,
            other => panic!("{other:?}"),
        };
        assert_eq!(got, kind);
        for v in [V311, V5] {
            let mut buf = BytesMut::from(&bytes[..]);
            assert_eq!(
                decode(&mut buf, v, 1 << 20).err(),
                Some(E::InvalidHeaderFlags {
                    kind,
                    flags: 0b1010
                }),
                "{kind:?} on {v:?}"
            );
        }
    }
}

#[test]
fn oversized_packet_is_refused_from_its_fixed_header_alone() {
    // Only the fixed header has arrived: the decoder must not wait for 16 KiB it will never accept.
    let mut buf = BytesMut::from(&[0x30u8, 0xFF, 0x7F][..]);
    let got = decode(&mut buf, V311, 1024);
    assert_eq!(
        got,
        Err(E::PacketTooLarge {
            size: 3 + 16_383,
            max: 1024
        })
    );
    assert_eq!(
        E::PacketTooLarge { size: 0, max: 0 }.reason_code(),
        ReasonCode::PACKET_TOO_LARGE
    );
}

#[test]
fn partial_input_asks_for_more_and_consumes_nothing() {
    let full = pkt(0x30, &cat(&[&s(b"a/b"), b"payload"]));
    for cut in 0..full.len() {
        let mut buf = BytesMut::from(&full[..cut]);
        assert_eq!(decode(&mut buf, V311, 1 << 20), Ok(None), "cut at {cut}");
        assert_eq!(buf.len(), cut);
    }
}

#[test]
fn v5_password_without_user_name_is_allowed() {
    let mut buf = BytesMut::from(&connect(b"MQTT", 5, 0x42, &s(b"pw"))[..]);
    let Ok(Some(Packet::Connect(c))) = decode(&mut buf, V5, 1 << 20) else {
        panic!("expected a CONNECT");
    };
    assert_eq!(c.username, None);
    assert_eq!(c.password.as_deref(), Some(&b"pw"[..]));
}

#[test]
fn mqtt_3_1_protocol_name_mqisdp_is_accepted() {
    let mut buf = BytesMut::from(&connect(b"MQIsdp", 3, 0x02, &[])[..]);
    let Ok(Some(Packet::Connect(c))) = decode(&mut buf, V311, 1 << 20) else {
        panic!("expected a CONNECT");
    };
    assert_eq!(c.protocol, ProtocolVersion::V31);
}

#[test]
fn decoder_learns_the_version_from_connect() {
    let mut d = Decoder::new(V311, 1 << 20);
    let mut buf = BytesMut::from(&connect(b"MQTT", 5, 0x02, &[])[..]);
    buf.extend_from_slice(&pkt(0xF0, &[]));
    assert!(matches!(d.decode(&mut buf), Ok(Some(Packet::Connect(_)))));
    assert_eq!(d.version, V5);
    assert_eq!(d.decode(&mut buf), Ok(Some(Packet::Auth(Auth::default()))));
}
