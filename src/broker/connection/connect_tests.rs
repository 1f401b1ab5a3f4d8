//! CONNECT negotiation, case by case: each row is a configuration change, a CONNECT and what must come
//! out (a refusal with its reason code, or what is granted and announced).

use super::*;
use crate::protocol::LastWill;
use bytes::Bytes;

fn connect(v: ProtocolVersion, id: &str, clean: bool) -> Connect {
    Connect {
        protocol: v,
        clean_start: clean,
        keep_alive: 60,
        properties: Properties::default(),
        client_id: id.into(),
        will: None,
        username: None,
        password: None,
    }
}

fn will(topic: &str, qos: QoS, retain: bool) -> Option<LastWill> {
    Some(LastWill {
        topic: topic.into(),
        payload: Bytes::from_static(b"offline"),
        qos,
        retain,
        properties: Properties::default(),
    })
}

const V31: ProtocolVersion = ProtocolVersion::V31;
const V311: ProtocolVersion = ProtocolVersion::V311;
const V5: ProtocolVersion = ProtocolVersion::V5;
/// Longer than 3.1's 23 characters: fine from 3.1.1 on.
const LONG_ID: &str = "device-0123456789-abcdefghijklmnop";

fn run(
    cfg: &Config,
    listener_max: usize,
    open: usize,
    c: Connect,
) -> Result<Accepted, ConnectRefusal> {
    let listener = ListenerConfig {
        max_connections: listener_max,
        ..cfg.listeners[0].clone()
    };
    negotiate(c, cfg, &listener, open, || "assigned-1".to_string())
}

#[test]
fn refusals_carry_their_reason_code() {
    type Case = (
        &'static str,
        fn(&mut Config),
        usize,
        usize,
        Connect,
        ConnectRefusal,
        u8,
    );
    let cases: Vec<Case> = vec![
        (
            "node full",
            |c| c.limits.max_connections = 10,
            0,
            10,
            connect(V5, "a", true),
            ConnectRefusal::TooManyConnections,
            0x97,
        ),
        (
            "listener full",
            |_| {},
            3,
            3,
            connect(V311, "a", true),
            ConnectRefusal::TooManyConnections,
            0x97,
        ),
        (
            "enhanced auth",
            |_| {},
            0,
            0,
            {
                let mut c = connect(V5, "a", true);
                c.properties.authentication_method = Some("SCRAM-SHA-1".into());
                c
            },
            ConnectRefusal::AuthenticationMethod,
            0x8C,
        ),
        (
            "3.1.1 empty id, persistent [MQTT-3.1.3-8]",
            |_| {},
            0,
            0,
            connect(V311, "", false),
            ConnectRefusal::EmptyClientId,
            0x85,
        ),
        (
            "3.1 empty id",
            |_| {},
            0,
            0,
            connect(V31, "", true),
            ConnectRefusal::EmptyClientId,
            0x85,
        ),
        (
            "empty ids not allowed",
            |c| c.mqtt.allow_zero_length_client_id = false,
            0,
            0,
            connect(V5, "", true),
            ConnectRefusal::EmptyClientId,
            0x85,
        ),
        (
            "3.1 id of 24 characters",
            |_| {},
            0,
            0,
            connect(V31, "abcdefghijklmnopqrstuvwx", true),
            ConnectRefusal::ClientIdTooLong,
            0x85,
        ),
        (
            "Will QoS above max_qos",
            |c| c.mqtt.max_qos = QoS::AtLeastOnce,
            0,
            0,
            Connect {
                will: will("w", QoS::ExactlyOnce, false),
                ..connect(V5, "a", true)
            },
            ConnectRefusal::WillQos,
            0x9B,
        ),
        (
            "retained Will without retain",
            |c| c.mqtt.retain_available = false,
            0,
            0,
            Connect {
                will: will("w", QoS::AtMostOnce, true),
                ..connect(V5, "a", true)
            },
            ConnectRefusal::WillRetain,
            0x9A,
        ),
        (
            "Will topic too deep",
            |c| c.limits.max_topic_levels = 3,
            0,
            0,
            Connect {
                will: will("a/b/c/d", QoS::AtMostOnce, false),
                ..connect(V311, "a", true)
            },
            ConnectRefusal::WillTopicLevels,
            0x90,
        ),
    ];
    for (name, change, listener_max, open, c, refusal, code) in cases {
        let mut cfg = Config::default();
        change(&mut cfg);
        let got = run(&cfg, listener_max, open, c).err();
        assert_eq!(got, Some(refusal), "{name}");
        assert_eq!(refusal.reason_code().0, code, "{name}");
    }
}

#[test]
fn client_ids_are_kept_or_assigned() {
    let cfg = Config::default();
    // (name, CONNECT, the id the session gets, Assigned Client Identifier in the CONNACK)
    let cases = [
        ("given", connect(V5, "dev-1", false), "dev-1", None),
        (
            "3.1 id of 23",
            connect(V31, "abcdefghijklmnopqrstuvw", true),
            "abcdefghijklmnopqrstuvw",
            None,
        ),
        ("3.1.1 long id", connect(V311, LONG_ID, true), LONG_ID, None),
        (
            "3.1.1 empty, clean",
            connect(V311, "", true),
            "assigned-1",
            None,
        ),
        (
            "5 empty [MQTT-3.2.2-16]",
            connect(V5, "", false),
            "assigned-1",
            Some("assigned-1"),
        ),
    ];
    for (name, c, id, assigned) in cases {
        let a = run(&cfg, 0, 0, c).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(a.client_id, id, "{name}");
        assert_eq!(a.connect.client_id, id, "{name}");
        let p = &a.connack.properties;
        assert_eq!(p.assigned_client_identifier.as_deref(), assigned, "{name}");
    }
}

#[test]
fn session_expiry_is_granted_within_the_limit() {
    let mut cfg = Config::default();
    cfg.limits.max_session_expiry = 3600;
    let v5 = |asked: Option<u32>, clean: bool| {
        let mut c = connect(V5, "a", clean);
        c.properties.session_expiry_interval = asked;
        c
    };
    // (name, CONNECT, granted, Session Expiry Interval announced in the CONNACK)
    let cases = [
        ("5 absent: 0", v5(None, false), 0, None),
        ("5 within", v5(Some(600), false), 600, None),
        (
            "5 above the limit [MQTT-3.2.2-13]",
            v5(Some(86_400), false),
            3600,
            Some(3600),
        ),
        (
            "5 never expires, capped",
            v5(Some(u32::MAX), true),
            3600,
            Some(3600),
        ),
        ("3.1.1 clean session", connect(V311, "a", true), 0, None),
        (
            "3.1.1 persistent: never expires",
            connect(V311, "a", false),
            u32::MAX,
            None,
        ),
        ("3.1 persistent", connect(V31, "a", false), u32::MAX, None),
    ];
    for (name, c, granted, announced) in cases {
        let a = run(&cfg, 0, 0, c).unwrap();
        assert_eq!(a.expiry, granted, "{name}");
        assert_eq!(
            a.connack.properties.session_expiry_interval, announced,
            "{name}"
        );
    }
}

#[test]
fn keep_alive_is_held_within_the_limits_in_mqtt_5_only() {
    let mut cfg = Config::default();
    cfg.limits.keep_alive_min = 10;
    cfg.limits.keep_alive_max = 600;
    // (name, level, asked, used, Server Keep Alive announced)
    let cases = [
        ("5 within", V5, 60, 60, None),
        ("5 zero: the maximum", V5, 0, 600, Some(600)),
        ("5 above", V5, 1000, 600, Some(600)),
        ("5 below", V5, 5, 10, Some(10)),
        ("3.1.1 has no Server Keep Alive", V311, 1000, 1000, None),
        ("3.1.1 zero stays zero", V311, 0, 0, None),
    ];
    for (name, v, asked, used, announced) in cases {
        let mut c = connect(v, "a", true);
        c.keep_alive = asked;
        let a = run(&cfg, 0, 0, c).unwrap();
        assert_eq!(a.keep_alive, used, "{name}");
        assert_eq!(a.connack.properties.server_keep_alive, announced, "{name}");
    }
}

#[test]
fn mqtt_5_connack_announces_the_limits_and_what_is_not_available() {
    let mut cfg = Config::default();
    let a = run(&cfg, 0, 0, connect(V5, "a", true)).unwrap();
    let p = &a.connack.properties;
    assert_eq!(p.receive_maximum, Some(cfg.limits.max_inflight));
    assert_eq!(p.maximum_packet_size, Some(cfg.limits.max_packet_size));
    assert_eq!(p.topic_alias_maximum, Some(cfg.limits.topic_alias_maximum));
    // Defaults are not repeated [MQTT-3.2.2-9 and on]: absent means available.
    assert_eq!(p.maximum_qos, None);
    assert_eq!(p.retain_available, None);
    assert_eq!(p.wildcard_subscription_available, None);
    assert_eq!(p.subscription_identifier_available, None);
    assert_eq!(p.shared_subscription_available, None);
    assert_eq!(p.response_information, None);
    assert_eq!(
        (a.connack.reason, a.connack.session_present),
        (ReasonCode::SUCCESS, false)
    );

    cfg.mqtt.max_qos = QoS::AtLeastOnce;
    cfg.mqtt.retain_available = false;
    cfg.mqtt.wildcard_subscription_available = false;
    cfg.mqtt.subscription_identifier_available = false;
    cfg.mqtt.shared_subscription_available = false;
    cfg.mqtt.response_information = "replies/".into();
    let mut c = connect(V5, "dev-9", true);
    c.properties.request_response_information = Some(true);
    let a = run(&cfg, 0, 0, c).unwrap();
    let p = &a.connack.properties;
    assert_eq!(p.maximum_qos, Some(1));
    assert_eq!(p.retain_available, Some(false));
    assert_eq!(p.wildcard_subscription_available, Some(false));
    assert_eq!(p.subscription_identifier_available, Some(false));
    assert_eq!(p.shared_subscription_available, Some(false));
    assert_eq!(p.response_information.as_deref(), Some("replies/dev-9"));

    // Response Information only when asked for [MQTT-3.1.2-28].
    let a = run(&cfg, 0, 0, connect(V5, "dev-9", true)).unwrap();
    assert_eq!(a.connack.properties.response_information, None);
    // Before MQTT 5 the CONNACK has no properties.
    let a = run(&cfg, 0, 0, connect(V311, "dev-9", true)).unwrap();
    assert_eq!(a.connack.properties, Properties::default());
}
