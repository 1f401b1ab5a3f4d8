//! Property tests: every packet value valid at a protocol level survives encode -> decode unchanged, also
//! when the bytes arrive in two pieces.

use super::*;
use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

const LEVELS: [ProtocolVersion; 3] = [
    ProtocolVersion::V31,
    ProtocolVersion::V311,
    ProtocolVersion::V5,
];

fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 é€😀/_-]{0,12}"
}

fn topic_name() -> impl Strategy<Value = String> {
    "[a-z0-9é/$]{1,16}".prop_filter("no wildcards", |t| topic::validate_name(t).is_ok())
}

fn topic_filter() -> impl Strategy<Value = String> {
    prop_oneof![
        topic_name(),
        "[a-z]{1,4}(/\\+)?(/[a-z]{1,4})?(/#)?",
        Just("#".to_string()),
        Just("+/status".to_string()),
        "\\$share/[a-z]{1,4}/[a-z/]{1,6}",
    ]
    .prop_filter("valid filter", |f| topic::validate_filter(f).is_ok())
}

fn bin() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..24).prop_map(Bytes::from)
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

/// Properties allowed in `kind`, built from a random list of (identifier, raw values).
fn props(kind: PacketKind, version: ProtocolVersion) -> BoxedStrategy<Properties> {
    if !version.is_v5() {
        return Just(Properties::default()).boxed();
    }
    let ids: Vec<u8> = (1u8..=0x2A)
        .filter(|&i| {
            let mut p = Properties::default();
            set(&mut p, i, 1, "a".into(), Bytes::new(), kind);
            // Only identifiers the table allows for this packet.
            !p.is_empty() && allowed_here(i, kind)
        })
        .collect();
    if ids.is_empty() {
        return Just(Properties::default()).boxed();
    }
    let n = ids.len();
    prop::collection::vec((0..n, 1u32..=wire::MAX_VARINT, text(), bin()), 0..6)
        .prop_map(move |items| {
            let mut p = Properties::default();
            for (i, num, s, b) in items {
                set(&mut p, ids[i], num, s, b, kind);
            }
            p
        })
        .boxed()
}

fn allowed_here(id: u8, kind: PacketKind) -> bool {
    // Decode a one-property block and see whether the decoder accepts it in this packet.
    let mut p = Properties::default();
    set(&mut p, id, 1, "a".into(), Bytes::new(), kind);
    let mut buf = BytesMut::new();
    let len = p.body_len().unwrap();
    p.encode(&mut buf, len);
    let mut r = wire::Reader::new(buf.freeze());
    Properties::decode(&mut r, kind).is_ok()
}

fn set(p: &mut Properties, id: u8, num: u32, s: String, b: Bytes, kind: PacketKind) {
    use properties::id::*;
    let u16v = (num % 65_535 + 1) as u16;
    let flag = num % 2 == 0;
    match id {
        PAYLOAD_FORMAT_INDICATOR => p.payload_format_indicator = Some((num % 2) as u8),
        MESSAGE_EXPIRY_INTERVAL => p.message_expiry_interval = Some(num),
        CONTENT_TYPE => p.content_type = Some(s),
        RESPONSE_TOPIC => {
            p.response_topic = Some(if topic::validate_name(&s).is_ok() {
                s
            } else {
                "r/t".into()
            })
        }
        CORRELATION_DATA => p.correlation_data = Some(b),
        SUBSCRIPTION_IDENTIFIER => {
            if kind == PacketKind::Subscribe {
                p.subscription_identifiers = vec![num];
            } else {
                p.subscription_identifiers.push(num);
            }
        }
        SESSION_EXPIRY_INTERVAL => p.session_expiry_interval = Some(num),
        ASSIGNED_CLIENT_IDENTIFIER => p.assigned_client_identifier = Some(s),
        SERVER_KEEP_ALIVE => p.server_keep_alive = Some(u16v),
        AUTHENTICATION_METHOD => p.authentication_method = Some(s),
        AUTHENTICATION_DATA => p.authentication_data = Some(b),
        REQUEST_PROBLEM_INFORMATION => p.request_problem_information = Some(flag),
        WILL_DELAY_INTERVAL => p.will_delay_interval = Some(num),
        REQUEST_RESPONSE_INFORMATION => p.request_response_information = Some(flag),
        RESPONSE_INFORMATION => p.response_information = Some(s),
        SERVER_REFERENCE => p.server_reference = Some(s),
        REASON_STRING => p.reason_string = Some(s),
        RECEIVE_MAXIMUM => p.receive_maximum = Some(u16v),
        TOPIC_ALIAS_MAXIMUM => p.topic_alias_maximum = Some(u16v),
        TOPIC_ALIAS => p.topic_alias = Some(u16v),
        MAXIMUM_QOS => p.maximum_qos = Some((num % 2) as u8),
        RETAIN_AVAILABLE => p.retain_available = Some(flag),
        USER_PROPERTY => p.user_properties.push((s.clone(), s)),
        MAXIMUM_PACKET_SIZE => p.maximum_packet_size = Some(num),
        WILDCARD_SUBSCRIPTION_AVAILABLE => p.wildcard_subscription_available = Some(flag),
        SUBSCRIPTION_IDENTIFIER_AVAILABLE => p.subscription_identifier_available = Some(flag),
        SHARED_SUBSCRIPTION_AVAILABLE => p.shared_subscription_available = Some(flag),
        _ => {}
    }
}

fn reason_for(kind: PacketKind, version: ProtocolVersion) -> BoxedStrategy<ReasonCode> {
    if !version.is_v5() {
        return match kind {
            PacketKind::ConnAck => (0u8..=5)
                .prop_map(|c| ReasonCode::from_v3_connack(c).unwrap_or_default())
                .boxed(),
            PacketKind::SubAck => prop_oneof![Just(0u8), Just(1), Just(2), Just(0x80)]
                .prop_map(ReasonCode)
                .boxed(),
            _ => Just(ReasonCode::SUCCESS).boxed(),
        };
    }
    let codes: Vec<u8> = (0u8..=255)
        .filter(|&c| reason::allowed_v5(kind, c))
        .collect();
    prop::sample::select(codes).prop_map(ReasonCode).boxed()
}

fn will(version: ProtocolVersion) -> impl Strategy<Value = Option<LastWill>> {
    prop::option::of(
        (
            topic_name(),
            bin(),
            qos(),
            any::<bool>(),
            props(PacketKind::Will, version),
        )
            .prop_map(|(topic, payload, qos, retain, properties)| LastWill {
                topic,
                payload,
                qos,
                retain,
                properties,
            }),
    )
}

fn connect(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (
        any::<bool>(),
        any::<u16>(),
        props(PacketKind::Connect, version),
        "[a-zA-Z0-9]{0,23}",
        will(version),
        prop::option::of(text()),
        prop::option::of(bin()),
    )
        .prop_map(
            move |(clean_start, keep_alive, properties, client_id, will, username, password)| {
                // Before MQTT 5 a password needs a user name [MQTT-3.1.2-22].
                let password = if version.is_v5() || username.is_some() {
                    password
                } else {
                    None
                };
                Packet::Connect(Box::new(Connect {
                    protocol: version,
                    clean_start,
                    keep_alive,
                    properties,
                    client_id,
                    will,
                    username,
                    password,
                }))
            },
        )
}

fn pkid() -> impl Strategy<Value = u16> {
    1u16..
}

fn ack(kind: PacketKind, version: ProtocolVersion) -> impl Strategy<Value = PubAck> {
    (pkid(), reason_for(kind, version), props(kind, version)).prop_map(
        |(pkid, reason, properties)| PubAck {
            pkid,
            reason,
            properties,
        },
    )
}

fn publish(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (
        any::<bool>(),
        qos(),
        any::<bool>(),
        topic_name(),
        pkid(),
        props(PacketKind::Publish, version),
        bin(),
    )
        .prop_map(|(dup, qos, retain, topic, pkid, properties, payload)| {
            let (dup, pkid) = if qos == QoS::AtMostOnce {
                (false, 0)
            } else {
                (dup, pkid)
            };
            Packet::Publish(Publish {
                dup,
                qos,
                retain,
                topic,
                pkid,
                properties,
                payload,
            })
        })
}

fn subscription_options(version: ProtocolVersion) -> impl Strategy<Value = SubscriptionOptions> {
    (qos(), any::<bool>(), any::<bool>(), 0u8..3).prop_map(move |(qos, no_local, rap, rh)| {
        if !version.is_v5() {
            return SubscriptionOptions {
                qos,
                ..SubscriptionOptions::default()
            };
        }
        let retain_handling = match rh {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendIfNew,
            _ => RetainHandling::DoNotSend,
        };
        SubscriptionOptions {
            qos,
            no_local,
            retain_as_published: rap,
            retain_handling,
        }
    })
}

fn packet(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let v = version;
    let mut options: Vec<BoxedStrategy<Packet>> = vec![
        connect(v).boxed(),
        (
            any::<bool>(),
            reason_for(PacketKind::ConnAck, v),
            props(PacketKind::ConnAck, v),
        )
            .prop_map(move |(sp, reason, properties)| {
                // 3.1 has no Session Present flag; v5 forbids it with an error [MQTT-3.2.2-6].
                let session_present = sp && v != ProtocolVersion::V31 && !reason.is_error();
                Packet::ConnAck(ConnAck {
                    session_present,
                    reason,
                    properties,
                })
            })
            .boxed(),
        publish(v).boxed(),
        ack(PacketKind::PubAck, v).prop_map(Packet::PubAck).boxed(),
        ack(PacketKind::PubRec, v).prop_map(Packet::PubRec).boxed(),
        ack(PacketKind::PubRel, v).prop_map(Packet::PubRel).boxed(),
        ack(PacketKind::PubComp, v)
            .prop_map(Packet::PubComp)
            .boxed(),
        (
            pkid(),
            props(PacketKind::Subscribe, v),
            prop::collection::vec((topic_filter(), subscription_options(v)), 1..4),
        )
            .prop_map(move |(pkid, properties, fs)| {
                let filters = fs
                    .into_iter()
                    .map(|(filter, mut options)| {
                        if topic::parse_shared(&filter).is_some() {
                            options.no_local = false;
                        }
                        SubscribeFilter { filter, options }
                    })
                    .collect();
                Packet::Subscribe(Subscribe {
                    pkid,
                    properties,
                    filters,
                })
            })
            .boxed(),
        (
            pkid(),
            props(PacketKind::SubAck, v),
            prop::collection::vec(reason_for(PacketKind::SubAck, v), 1..4),
        )
            .prop_map(|(pkid, properties, reasons)| {
                Packet::SubAck(SubAck {
                    pkid,
                    properties,
                    reasons,
                })
            })
            .boxed(),
        (
            pkid(),
            props(PacketKind::Unsubscribe, v),
            prop::collection::vec(topic_filter(), 1..4),
        )
            .prop_map(|(pkid, properties, filters)| {
                Packet::Unsubscribe(Unsubscribe {
                    pkid,
                    properties,
                    filters,
                })
            })
            .boxed(),
        (
            pkid(),
            props(PacketKind::UnsubAck, v),
            prop::collection::vec(reason_for(PacketKind::UnsubAck, v), 1..4),
        )
            .prop_map(move |(pkid, properties, reasons)| {
                let reasons = if v.is_v5() { reasons } else { Vec::new() };
                Packet::UnsubAck(UnsubAck {
                    pkid,
                    properties,
                    reasons,
                })
            })
            .boxed(),
        Just(Packet::PingReq).boxed(),
        Just(Packet::PingResp).boxed(),
        (
            reason_for(PacketKind::Disconnect, v),
            props(PacketKind::Disconnect, v),
        )
            .prop_map(|(reason, properties)| Packet::Disconnect(Disconnect { reason, properties }))
            .boxed(),
    ];
    if v.is_v5() {
        options.push(
            (reason_for(PacketKind::Auth, v), props(PacketKind::Auth, v))
                .prop_map(|(reason, properties)| Packet::Auth(Auth { reason, properties }))
                .boxed(),
        );
    }
    prop::strategy::Union::new(options).boxed()
}

fn any_level_packet() -> impl Strategy<Value = (ProtocolVersion, Packet)> {
    prop::sample::select(LEVELS.to_vec()).prop_flat_map(|v| packet(v).prop_map(move |p| (v, p)))
}

#[test]
fn generators_cover_every_property_of_each_packet() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    // The union of many generated CONNACK / PUBLISH property sets must hit every allowed property, or the
    // round trip above would silently skip some.
    let mut runner = TestRunner::deterministic();
    for (kind, expected) in [
        (PacketKind::ConnAck, 17),
        (PacketKind::Publish, 8),
        (PacketKind::Connect, 9),
    ] {
        let strategy = props(kind, ProtocolVersion::V5);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..400 {
            let p = strategy.new_tree(&mut runner).unwrap().current();
            let mut buf = BytesMut::new();
            p.encode(&mut buf, p.body_len().unwrap());
            let mut r = wire::Reader::new(buf.freeze());
            assert_eq!(Properties::decode(&mut r, kind).unwrap(), p);
            for id in present_ids(&p) {
                seen.insert(id);
            }
        }
        assert_eq!(seen.len(), expected, "{kind:?}: properties seen {seen:?}");
    }
}

fn present_ids(p: &Properties) -> Vec<u8> {
    use properties::id::*;
    let mut ids = Vec::new();
    let mut add = |present: bool, id: u8| {
        if present {
            ids.push(id)
        }
    };
    add(
        p.payload_format_indicator.is_some(),
        PAYLOAD_FORMAT_INDICATOR,
    );
    add(p.message_expiry_interval.is_some(), MESSAGE_EXPIRY_INTERVAL);
    add(p.content_type.is_some(), CONTENT_TYPE);
    add(p.response_topic.is_some(), RESPONSE_TOPIC);
    add(p.correlation_data.is_some(), CORRELATION_DATA);
    add(
        !p.subscription_identifiers.is_empty(),
        SUBSCRIPTION_IDENTIFIER,
    );
    add(p.session_expiry_interval.is_some(), SESSION_EXPIRY_INTERVAL);
    add(
        p.assigned_client_identifier.is_some(),
        ASSIGNED_CLIENT_IDENTIFIER,
    );
    add(p.server_keep_alive.is_some(), SERVER_KEEP_ALIVE);
    add(p.authentication_method.is_some(), AUTHENTICATION_METHOD);
    add(p.authentication_data.is_some(), AUTHENTICATION_DATA);
    add(
        p.request_problem_information.is_some(),
        REQUEST_PROBLEM_INFORMATION,
    );
    add(p.will_delay_interval.is_some(), WILL_DELAY_INTERVAL);
    add(
        p.request_response_information.is_some(),
        REQUEST_RESPONSE_INFORMATION,
    );
    add(p.response_information.is_some(), RESPONSE_INFORMATION);
    add(p.server_reference.is_some(), SERVER_REFERENCE);
    add(p.reason_string.is_some(), REASON_STRING);
    add(p.receive_maximum.is_some(), RECEIVE_MAXIMUM);
    add(p.topic_alias_maximum.is_some(), TOPIC_ALIAS_MAXIMUM);
    add(p.topic_alias.is_some(), TOPIC_ALIAS);
    add(p.maximum_qos.is_some(), MAXIMUM_QOS);
    add(p.retain_available.is_some(), RETAIN_AVAILABLE);
    add(!p.user_properties.is_empty(), USER_PROPERTY);
    add(p.maximum_packet_size.is_some(), MAXIMUM_PACKET_SIZE);
    add(
        p.wildcard_subscription_available.is_some(),
        WILDCARD_SUBSCRIPTION_AVAILABLE,
    );
    add(
        p.subscription_identifier_available.is_some(),
        SUBSCRIPTION_IDENTIFIER_AVAILABLE,
    );
    add(
        p.shared_subscription_available.is_some(),
        SHARED_SUBSCRIPTION_AVAILABLE,
    );
    ids
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn every_packet_round_trips_at_every_level((version, packet) in any_level_packet(), split in 0usize..64) {
        let mut buf = BytesMut::new();
        encode(&packet, version, &mut buf).unwrap();
        prop_assert_eq!(buf.len(), encoded_len(&packet, version).unwrap());
        // Feed the bytes in two parts: the first part alone must ask for more, never fail.
        let split = split.min(buf.len());
        let mut incoming = BytesMut::from(&buf[..split]);
        if split < buf.len() {
            prop_assert_eq!(decode(&mut incoming, version, usize::MAX), Ok(None));
        }
        incoming.extend_from_slice(&buf[split..]);
        let decoded = decode(&mut incoming, version, usize::MAX);
        prop_assert_eq!(decoded, Ok(Some(packet)));
        prop_assert!(incoming.is_empty());
    }

    #[test]
    fn decoder_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256), v in 0usize..3) {
        let mut buf = BytesMut::from(&bytes[..]);
        let _ = decode(&mut buf, LEVELS[v], 1 << 20);
    }
}
