//! CONNECT negotiation, a pure function: from the CONNECT, the configuration and the node's open
//! connections to the CONNACK's properties and what the session is opened with, or a typed refusal with
//! its reason code. Table-tested below, like `protocol/malformed_tests.rs`.

use crate::config::{Config, ListenerConfig};
use crate::protocol::{ConnAck, Connect, Properties, ProtocolVersion, QoS, ReasonCode};

/// Why a CONNECT is refused with a CONNACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum ConnectRefusal {
    #[error("max_connections reached")]
    TooManyConnections,
    #[error("enhanced authentication is not supported")]
    AuthenticationMethod,
    /// Before MQTT 5 an empty id needs a clean session; 3.1 needs an id; `allow_zero_length_client_id`.
    #[error("empty client id")]
    EmptyClientId,
    #[error("MQTT 3.1 client ids have at most 23 characters")]
    ClientIdTooLong,
    #[error("Will QoS above the maximum")]
    WillQos,
    #[error("retained Will without retain support")]
    WillRetain,
    #[error("Will topic has too many levels")]
    WillTopicLevels,
}

impl ConnectRefusal {
    /// The CONNACK's reason (mapped to a 3.x return code by the encoder).
    pub(super) fn reason_code(self) -> ReasonCode {
        match self {
            ConnectRefusal::TooManyConnections => ReasonCode::QUOTA_EXCEEDED,
            ConnectRefusal::AuthenticationMethod => ReasonCode::BAD_AUTHENTICATION_METHOD,
            ConnectRefusal::EmptyClientId | ConnectRefusal::ClientIdTooLong => {
                ReasonCode::CLIENT_IDENTIFIER_NOT_VALID
            }
            ConnectRefusal::WillQos => ReasonCode::QOS_NOT_SUPPORTED,
            ConnectRefusal::WillRetain => ReasonCode::RETAIN_NOT_SUPPORTED,
            ConnectRefusal::WillTopicLevels => ReasonCode::TOPIC_NAME_INVALID,
        }
    }
}

/// A CONNECT the broker accepts, with what it negotiated.
pub(super) struct Accepted {
    pub(super) connect: Connect,
    pub(super) client_id: String,
    pub(super) expiry: u32,
    pub(super) keep_alive: u16,
    pub(super) connack: ConnAck,
}

/// Checks a CONNECT against the protocol rules and the limits and builds the CONNACK properties: a pure
/// function of the CONNECT, the configuration, the connections open on the node and, for a client that
/// sent no id, the id to assign.
pub(super) fn negotiate(
    mut c: Connect,
    cfg: &Config,
    listener: &ListenerConfig,
    open: usize,
    assign_id: impl FnOnce() -> String,
) -> Result<Accepted, ConnectRefusal> {
    let v = c.protocol;
    let mut props = Properties::default();
    if open >= cfg.limits.max_connections
        || (listener.max_connections != 0 && open >= listener.max_connections)
    {
        return Err(ConnectRefusal::TooManyConnections);
    }
    if c.properties.authentication_method.is_some() {
        return Err(ConnectRefusal::AuthenticationMethod);
    }
    let mut client_id = c.client_id.clone();
    if client_id.is_empty() {
        // [MQTT-3.1.3-7], [MQTT-3.1.3-8]: an empty id needs a clean session before MQTT 5; 3.1 needs an id.
        if !cfg.mqtt.allow_zero_length_client_id
            || v == ProtocolVersion::V31
            || (v == ProtocolVersion::V311 && !c.clean_start)
        {
            return Err(ConnectRefusal::EmptyClientId);
        }
        client_id = assign_id();
        if v.is_v5() {
            props.assigned_client_identifier = Some(client_id.clone());
        }
    } else if v == ProtocolVersion::V31 && client_id.len() > 23 {
        return Err(ConnectRefusal::ClientIdTooLong);
    }
    let max_qos = cfg.mqtt.max_qos;
    if let Some(w) = &c.will {
        if w.qos > max_qos {
            return Err(ConnectRefusal::WillQos);
        }
        if w.retain && !cfg.mqtt.retain_available {
            return Err(ConnectRefusal::WillRetain);
        }
        if w.topic.split('/').count() > cfg.limits.max_topic_levels {
            return Err(ConnectRefusal::WillTopicLevels);
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

#[cfg(test)]
#[path = "connect_tests.rs"]
mod tests;
