//! Why the broker ends a connection because of what the client did (or a limit it hit): a typed reason
//! with its DISCONNECT reason code, its text (the Reason String a v5 client reads) and its metric label.

use crate::protocol::{DecodeError, PacketKind, ReasonCode};
use cicada_cluster::ClusterError;

#[derive(Debug, thiserror::Error)]
pub(super) enum Violation {
    #[error("{0}")]
    Decode(#[from] DecodeError),
    /// No packet within one and a half Keep Alive periods [MQTT-3.1.2-24]; the keep alive in seconds.
    #[error("no packet in {}s", *.0 as f32 * 1.5)]
    KeepAlive(u16),
    #[error("token expired")]
    TokenExpired,
    #[error("session expiry set at DISCONNECT after 0 at CONNECT [MQTT-3.14.2-2]")]
    ExpiryAfterZero,
    #[error("second CONNECT [MQTT-3.1.0-2]")]
    SecondConnect,
    #[error("{0:?} is not sent by clients")]
    ServerPacket(PacketKind),
    #[error("QoS above Maximum QoS [MQTT-3.2.2-11]")]
    QosAboveMaximum,
    #[error("RETAIN without retain support [MQTT-3.2.2-14]")]
    RetainNotAvailable,
    #[error("topic alias {0} [MQTT-3.3.2-9]")]
    TopicAliasOutOfRange(u16),
    #[error("unknown topic alias {0}")]
    UnknownTopicAlias(u16),
    #[error("too many topic levels")]
    TopicLevels,
    #[error("too many QoS 2 messages in flight [MQTT-3.3.4-7]")]
    Qos2InFlight,
    #[error("more unacknowledged QoS 1 and 2 messages than Receive Maximum [MQTT-3.3.4-7]")]
    ReceiveMaximum,
    /// A QoS 1/2 PUBLISH this node cannot decide on (see `Reader::ensure_fresh`).
    #[error("this node cannot check its state with a raft leader ({0}): QoS 1/2 messages are refused until it can")]
    NoLeader(ClusterError),
}

impl Violation {
    /// The DISCONNECT's reason (v5).
    pub(super) fn reason_code(&self) -> ReasonCode {
        match self {
            Violation::Decode(e) => e.reason_code(),
            Violation::KeepAlive(_) => ReasonCode::KEEP_ALIVE_TIMEOUT,
            Violation::TokenExpired => ReasonCode::NOT_AUTHORIZED,
            Violation::ExpiryAfterZero
            | Violation::SecondConnect
            | Violation::ServerPacket(_)
            | Violation::UnknownTopicAlias(_) => ReasonCode::PROTOCOL_ERROR,
            Violation::QosAboveMaximum => ReasonCode::QOS_NOT_SUPPORTED,
            Violation::RetainNotAvailable => ReasonCode::RETAIN_NOT_SUPPORTED,
            Violation::TopicAliasOutOfRange(_) => ReasonCode::TOPIC_ALIAS_INVALID,
            Violation::TopicLevels => ReasonCode::TOPIC_NAME_INVALID,
            Violation::Qos2InFlight | Violation::ReceiveMaximum => {
                ReasonCode::RECEIVE_MAXIMUM_EXCEEDED
            }
            // 0x88 is not a DISCONNECT reason [MQTT-3.14.2.1]: 0x80 with the reason string.
            Violation::NoLeader(_) => ReasonCode::UNSPECIFIED_ERROR,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_violation_has_its_disconnect_reason() {
        let cases = [
            (Violation::KeepAlive(10), 0x8D, "no packet in 15s"),
            (Violation::TokenExpired, 0x87, "token expired"),
            (
                Violation::SecondConnect,
                0x82,
                "second CONNECT [MQTT-3.1.0-2]",
            ),
            (
                Violation::ServerPacket(PacketKind::ConnAck),
                0x82,
                "ConnAck is not sent by clients",
            ),
            (
                Violation::QosAboveMaximum,
                0x9B,
                "QoS above Maximum QoS [MQTT-3.2.2-11]",
            ),
            (
                Violation::RetainNotAvailable,
                0x9A,
                "RETAIN without retain support [MQTT-3.2.2-14]",
            ),
            (
                Violation::TopicAliasOutOfRange(70),
                0x94,
                "topic alias 70 [MQTT-3.3.2-9]",
            ),
            (
                Violation::UnknownTopicAlias(3),
                0x82,
                "unknown topic alias 3",
            ),
            (Violation::TopicLevels, 0x90, "too many topic levels"),
            (
                Violation::Qos2InFlight,
                0x93,
                "too many QoS 2 messages in flight [MQTT-3.3.4-7]",
            ),
            (
                Violation::NoLeader(ClusterError::NoLeader),
                0x80,
                "this node cannot check",
            ),
        ];
        for (v, code, text) in cases {
            assert_eq!(v.reason_code().0, code, "{v:?}");
            assert!(v.to_string().starts_with(text), "{v}");
        }
    }
}
