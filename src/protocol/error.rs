//! Decode and encode errors. Every decode error names the rule it enforces and maps to the reason code the
//! broker sends back (MQTT 5) before closing the connection.

use super::{PacketKind, ReasonCode};
use thiserror::Error;

/// Why bytes from the wire are not a valid packet.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The fixed header announces more than the configured maximum packet size (spec 3.1.2.11.4, 3.2.2.3.6).
    #[error("packet of {size} bytes exceeds the maximum packet size of {max} bytes")]
    PacketTooLarge { size: usize, max: usize },
    /// Remaining Length longer than 4 bytes or not in its minimal form [MQTT-1.5.5-1].
    #[error("malformed remaining length")]
    MalformedRemainingLength,
    /// A Variable Byte Integer field longer than 4 bytes or not minimal [MQTT-1.5.5-1].
    #[error("malformed variable byte integer")]
    MalformedVarInt,
    /// Packet type 0, or 15 (AUTH) below MQTT 5.
    #[error("reserved packet type {0}")]
    ReservedPacketType(u8),
    /// Fixed header flag bits that must have fixed values [MQTT-2.1.3-1].
    #[error("invalid fixed header flags {flags:#06b} for {kind:?}")]
    InvalidHeaderFlags { kind: PacketKind, flags: u8 },
    /// QoS 3 in a PUBLISH, a Will or a subscription [MQTT-3.3.1-4].
    #[error("QoS 3 is not a valid QoS")]
    InvalidQoS,
    /// The packet ended before a field it announced.
    #[error("packet ends before its {0} field")]
    Truncated(&'static str),
    /// Bytes left over after the last field of a packet whose length is fully determined.
    #[error("{0} unexpected bytes after the last field")]
    TrailingBytes(usize),
    /// A UTF-8 Encoded String that is not well-formed UTF-8 (surrogates included) [MQTT-1.5.4-1].
    #[error("string is not well-formed UTF-8")]
    InvalidUtf8,
    /// A UTF-8 Encoded String containing U+0000 [MQTT-1.5.4-2].
    #[error("string contains the null character U+0000")]
    NullCharacter,
    /// CONNECT with a protocol name other than "MQTT" / "MQIsdp" [MQTT-3.1.2-1].
    #[error("unknown protocol name {0:?}")]
    InvalidProtocolName(String),
    /// CONNECT with a protocol level this server does not speak [MQTT-3.1.2-2].
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocolLevel(u8),
    /// CONNECT flags bit 0 is reserved and must be zero [MQTT-3.1.2-3].
    #[error("CONNECT reserved flag is set")]
    ConnectReservedFlag,
    /// Will QoS or Will Retain set without the Will Flag, or Will QoS 3 [MQTT-3.1.2-11], [MQTT-3.1.2-13],
    /// [MQTT-3.1.2-15].
    #[error("invalid Will flags")]
    InvalidWillFlags,
    /// A password without a user name, forbidden before MQTT 5 [MQTT-3.1.2-22].
    #[error("password flag set without user name flag")]
    PasswordWithoutUsername,
    /// CONNACK acknowledge flags bits 7-1 are reserved [MQTT-3.2.2-1].
    #[error("CONNACK reserved flags are set")]
    ConnAckReservedFlags,
    /// A packet that needs a Packet Identifier carries 0 [MQTT-2.2.1-3].
    #[error("packet identifier must not be 0")]
    ZeroPacketId,
    /// A property identifier the specification does not define (spec 2.2.2.2).
    #[error("unknown property identifier {0:#04x}")]
    UnknownProperty(u32),
    /// A property that may not appear in this packet (spec 2.2.2.2).
    #[error("property {id:#04x} is not allowed in {kind:?}")]
    PropertyNotAllowed { id: u8, kind: PacketKind },
    /// A property that may appear at most once appears twice (spec 3.x "more than once is a Protocol Error").
    #[error("property {0:#04x} appears more than once")]
    DuplicateProperty(u8),
    /// A property whose value is outside its allowed range (e.g. Receive Maximum 0, Topic Alias 0).
    #[error("property {0:#04x} has an invalid value")]
    InvalidPropertyValue(u8),
    /// A reason code (or v3 return code) that this packet may not carry.
    #[error("reason code {code:#04x} is not valid in {kind:?}")]
    InvalidReasonCode { kind: PacketKind, code: u8 },
    /// A PUBLISH or Will topic name that is empty or holds a wildcard [MQTT-3.3.2-2], [MQTT-4.7.3-1].
    #[error("invalid topic name: {0}")]
    InvalidTopicName(super::topic::TopicError),
    /// An MQTT 5 PUBLISH with an empty topic name and no Topic Alias [MQTT-3.3.2-1].
    #[error("empty topic name without a topic alias")]
    MissingTopicAlias,
    /// A SUBSCRIBE / UNSUBSCRIBE filter that breaks the wildcard rules [MQTT-4.7.1-1], [MQTT-4.7.1-2].
    #[error("invalid topic filter: {0}")]
    InvalidTopicFilter(super::topic::TopicError),
    /// SUBSCRIBE or UNSUBSCRIBE without any topic filter [MQTT-3.8.3-2], [MQTT-3.10.3-2].
    #[error("no topic filter in {0:?}")]
    NoTopicFilters(PacketKind),
    /// Reserved bits of the subscription options byte are set [MQTT-3.8.3-5].
    #[error("reserved subscription option bits are set")]
    ReservedSubscriptionBits,
    /// Retain Handling 3 [MQTT-3.8.3-5] (a Protocol Error).
    #[error("retain handling 3 is not valid")]
    InvalidRetainHandling,
    /// No Local on a shared subscription [MQTT-3.8.3-4].
    #[error("no local is not allowed on a shared subscription")]
    NoLocalOnSharedSubscription,
}

impl DecodeError {
    /// The reason code a server sends in CONNACK or DISCONNECT for this error.
    pub fn reason_code(&self) -> ReasonCode {
        use DecodeError::*;
        match self {
            PacketTooLarge { .. } => ReasonCode::PACKET_TOO_LARGE,
            InvalidProtocolName(_) | UnsupportedProtocolLevel(_) => {
                ReasonCode::UNSUPPORTED_PROTOCOL_VERSION
            }
            ZeroPacketId
            | DuplicateProperty(_)
            | InvalidPropertyValue(_)
            | MissingTopicAlias
            | NoTopicFilters(_)
            | InvalidRetainHandling
            | NoLocalOnSharedSubscription => ReasonCode::PROTOCOL_ERROR,
            InvalidTopicName(_) => ReasonCode::TOPIC_NAME_INVALID,
            InvalidTopicFilter(_) => ReasonCode::TOPIC_FILTER_INVALID,
            MalformedRemainingLength
            | MalformedVarInt
            | ReservedPacketType(_)
            | InvalidHeaderFlags { .. }
            | InvalidQoS
            | Truncated(_)
            | TrailingBytes(_)
            | InvalidUtf8
            | NullCharacter
            | ConnectReservedFlag
            | InvalidWillFlags
            | PasswordWithoutUsername
            | ConnAckReservedFlags
            | UnknownProperty(_)
            | PropertyNotAllowed { .. }
            | InvalidReasonCode { .. }
            | ReservedSubscriptionBits => ReasonCode::MALFORMED_PACKET,
        }
    }
}

/// Why a packet value cannot be put on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EncodeError {
    /// The encoded packet would exceed 268,435,455 bytes of Remaining Length (spec 2.1.4).
    #[error("packet body of {0} bytes exceeds the protocol limit")]
    PacketTooLarge(usize),
    /// A string or binary field longer than 65,535 bytes (spec 1.5.4, 1.5.6).
    #[error("{0} is longer than 65535 bytes")]
    FieldTooLong(&'static str),
    /// A value the protocol cannot express (e.g. a subscription identifier above 268,435,455).
    #[error("{0} is out of range")]
    OutOfRange(&'static str),
}
