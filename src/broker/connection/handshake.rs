//! The CONNECT handshake: reading CONNECT, checking it against the protocol rules and the limits, building
//! the CONNACK properties, and refusing with the right code.

use super::super::Context;
use crate::config::ListenerConfig;
use crate::protocol::{
    encode, ConnAck, Connect, DecodeError, Decoder, Packet, Properties, ProtocolVersion, QoS,
    ReasonCode,
};
use bytes::BytesMut;
use std::sync::atomic::Ordering;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Why a CONNECT is not accepted.
pub(super) enum Refusal {
    /// Close without a CONNACK (not MQTT, or not CONNECT first [MQTT-3.1.0-1]).
    Silent(String),
    /// Answer with this CONNACK reason, encoded for this protocol level, and close.
    Connack(ReasonCode, ProtocolVersion, String),
}

pub(super) async fn read_connect<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    decoder: &mut Decoder,
    ctx: &Context,
) -> Result<Box<Connect>, Refusal> {
    loop {
        match decoder.decode(buf) {
            Ok(Some(Packet::Connect(c))) => return Ok(c),
            Ok(Some(other)) => {
                return Err(Refusal::Silent(format!(
                    "{:?} before CONNECT",
                    other.kind()
                )))
            }
            Ok(None) => {}
            Err(
                e
                @ (DecodeError::UnsupportedProtocolLevel(_) | DecodeError::InvalidProtocolName(_)),
            ) => {
                // [MQTT-3.1.2-2]: return code 1 in the 3.1.1 form, which every level understands.
                return Err(Refusal::Connack(
                    e.reason_code(),
                    ProtocolVersion::V311,
                    e.to_string(),
                ));
            }
            Err(e) => {
                // A malformed CONNECT: a v5 client is told why (0x81, 0x82, 0x95) when its level is known.
                let v5 = buf.len() > 8 && buf.windows(5).any(|w| w == b"MQTT\x05");
                return Err(if v5 {
                    Refusal::Connack(e.reason_code(), ProtocolVersion::V5, e.to_string())
                } else {
                    Refusal::Silent(e.to_string())
                });
            }
        }
        match rd.read_buf(buf).await {
            Ok(0) => return Err(Refusal::Silent("closed".into())),
            Ok(n) => ctx.metrics.bytes_received.inc_by(n as u64),
            Err(e) => return Err(Refusal::Silent(e.to_string())),
        }
    }
}

pub(super) async fn refuse<W: AsyncWrite + Unpin>(
    wr: &mut W,
    version: ProtocolVersion,
    code: ReasonCode,
    ctx: &Context,
) {
    let mut out = BytesMut::new();
    let ack = Packet::ConnAck(ConnAck {
        session_present: false,
        reason: code,
        properties: Properties::default(),
    });
    if encode(&ack, version, &mut out).is_ok() {
        let _ = wr.write_all(&out).await;
        let _ = wr.shutdown().await;
    }
    ctx.metrics
        .connack
        .with_label_values(&[&format!("{:#04x}", code.0)])
        .inc();
}

/// A CONNECT the broker accepts, with what it negotiated.
pub(super) struct Accepted {
    pub(super) connect: Connect,
    pub(super) client_id: String,
    pub(super) expiry: u32,
    pub(super) keep_alive: u16,
    pub(super) connack: ConnAck,
}

/// Checks a CONNECT against the protocol rules and the limits; builds the CONNACK properties.
pub(super) fn accept(
    mut c: Connect,
    listener: &ListenerConfig,
    ctx: &Context,
) -> Result<Accepted, (ReasonCode, ProtocolVersion, String)> {
    let v = c.protocol;
    let cfg = &ctx.config;
    let refuse = |code: ReasonCode, why: &str| Err((code, v, why.to_string()));
    let mut props = Properties::default();
    let open = ctx.connections.load(Ordering::Acquire);
    if open >= cfg.limits.max_connections
        || (listener.max_connections != 0 && open >= listener.max_connections)
    {
        return refuse(ReasonCode::QUOTA_EXCEEDED, "max_connections reached");
    }
    if c.properties.authentication_method.is_some() {
        return refuse(
            ReasonCode::BAD_AUTHENTICATION_METHOD,
            "enhanced authentication is not supported",
        );
    }
    let mut client_id = c.client_id.clone();
    if client_id.is_empty() {
        // [MQTT-3.1.3-7], [MQTT-3.1.3-8]: an empty id needs a clean session before MQTT 5; 3.1 needs an id.
        if !cfg.mqtt.allow_zero_length_client_id
            || v == ProtocolVersion::V31
            || (v == ProtocolVersion::V311 && !c.clean_start)
        {
            return refuse(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID, "empty client id");
        }
        client_id = format!(
            "cicada-{:016x}",
            ctx.next_conn_id.fetch_add(1, Ordering::Relaxed) ^ rand_seed()
        );
        if v.is_v5() {
            props.assigned_client_identifier = Some(client_id.clone());
        }
    } else if v == ProtocolVersion::V31 && client_id.len() > 23 {
        return refuse(
            ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
            "MQTT 3.1 client ids have at most 23 characters",
        );
    }
    let max_qos = cfg.mqtt.max_qos;
    if let Some(w) = &c.will {
        if w.qos > max_qos {
            return refuse(ReasonCode::QOS_NOT_SUPPORTED, "Will QoS above the maximum");
        }
        if w.retain && !cfg.mqtt.retain_available {
            return refuse(
                ReasonCode::RETAIN_NOT_SUPPORTED,
                "retained Will without retain support",
            );
        }
        if w.topic.split('/').count() > cfg.limits.max_topic_levels {
            return refuse(
                ReasonCode::TOPIC_NAME_INVALID,
                "Will topic has too many levels",
            );
        }
    }
    let expiry = if v.is_v5() {
        let asked = c.properties.session_expiry_interval.unwrap_or(0);
        let granted = asked.min(cfg.limits.max_session_expiry);
        if granted != asked {
            props.session_expiry_interval = Some(granted);
        }
        granted
    } else if c.clean_start {
        0
    } else {
        // A 3.1.1 persistent session does not expire (Mosquitto's default).
        u32::MAX
    };
    let asked_ka = c.keep_alive;
    let (min, max) = (cfg.limits.keep_alive_min, cfg.limits.keep_alive_max);
    let mut keep_alive = asked_ka;
    if v.is_v5() {
        if asked_ka > max || (asked_ka == 0 && max < u16::MAX) {
            keep_alive = max;
        } else if asked_ka != 0 && asked_ka < min {
            keep_alive = min;
        }
        if keep_alive != asked_ka {
            // [MQTT-3.2.2-21]: the client must use the Server Keep Alive.
            props.server_keep_alive = Some(keep_alive);
        }
    }
    if v.is_v5() {
        props.receive_maximum = Some(cfg.limits.max_inflight);
        props.maximum_packet_size = Some(cfg.limits.max_packet_size);
        props.topic_alias_maximum = Some(cfg.limits.topic_alias_maximum);
        if max_qos < QoS::ExactlyOnce {
            props.maximum_qos = Some(max_qos as u8);
        }
        if !cfg.mqtt.retain_available {
            props.retain_available = Some(false);
        }
        if !cfg.mqtt.wildcard_subscription_available {
            props.wildcard_subscription_available = Some(false);
        }
        if !cfg.mqtt.subscription_identifier_available {
            props.subscription_identifier_available = Some(false);
        }
        if !cfg.mqtt.shared_subscription_available {
            props.shared_subscription_available = Some(false);
        }
        if c.properties.request_response_information == Some(true)
            && !cfg.mqtt.response_information.is_empty()
        {
            props.response_information =
                Some(format!("{}{client_id}", cfg.mqtt.response_information));
        }
    }
    c.client_id = client_id.clone();
    Ok(Accepted {
        connect: c,
        client_id,
        expiry,
        keep_alive,
        connack: ConnAck {
            session_present: false,
            reason: ReasonCode::SUCCESS,
            properties: props,
        },
    })
}

/// Some per-process entropy for assigned client ids, without a random-number crate.
pub(super) fn rand_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}
