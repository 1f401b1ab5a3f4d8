//! The MQTT 3.1 / 3.1.1 / 5.0 wire format. Pure: bytes in, packets out, and back; no I/O.
//!
//! # Layout
//! - [`packet`]: the packet values, one struct per control packet.
//! - [`decode`]: incremental decoding from a `BytesMut` (`Ok(None)` means "need more bytes").
//! - [`encode`]: sizing and encoding into a `BytesMut`.
//! - [`properties`]: MQTT 5 properties and the table of where each may appear.
//! - [`reason`]: reason codes, and their v3 return-code equivalents.
//! - [`topic`]: topic name / filter rules and matching.
//! - [`wire`]: the primitive data types of spec section 1.5.

pub mod decode;
pub mod encode;
mod error;
pub mod packet;
pub mod properties;
pub mod reason;
pub mod topic;
mod wire;

pub use decode::{decode, Decoder};
pub use encode::{encode, encode_publish, encoded_len};
pub use error::{DecodeError, EncodeError};
pub use packet::*;
pub use properties::Properties;
pub use reason::ReasonCode;

/// The protocol level a connection speaks, fixed by its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProtocolVersion {
    /// MQTT 3.1: protocol name "MQIsdp", level 3.
    V31,
    /// MQTT 3.1.1: protocol name "MQTT", level 4.
    V311,
    /// MQTT 5.0: protocol name "MQTT", level 5.
    V5,
}

impl ProtocolVersion {
    /// The protocol level byte of CONNECT.
    pub fn level(self) -> u8 {
        match self {
            ProtocolVersion::V31 => 3,
            ProtocolVersion::V311 => 4,
            ProtocolVersion::V5 => 5,
        }
    }

    /// The protocol name of CONNECT.
    pub fn name(self) -> &'static str {
        match self {
            ProtocolVersion::V31 => "MQIsdp",
            _ => "MQTT",
        }
    }

    /// True for MQTT 5, which has properties and reason codes everywhere.
    pub fn is_v5(self) -> bool {
        self == ProtocolVersion::V5
    }
}

/// Quality of service of a message or subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum QoS {
    #[default]
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    /// The QoS for bits 0-2 of a header or options byte; `None` for 3, which is malformed [MQTT-3.3.1-4].
    pub fn from_u8(value: u8) -> Option<QoS> {
        match value {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// The kind of a control packet (the fixed header's type), plus `Will` for the Will properties of CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketKind {
    Connect = 1,
    ConnAck = 2,
    Publish = 3,
    PubAck = 4,
    PubRec = 5,
    PubRel = 6,
    PubComp = 7,
    Subscribe = 8,
    SubAck = 9,
    Unsubscribe = 10,
    UnsubAck = 11,
    PingReq = 12,
    PingResp = 13,
    Disconnect = 14,
    Auth = 15,
    /// Not a packet: the Will Properties inside CONNECT, which have their own allowed set.
    Will = 16,
}
#[cfg(test)]
mod malformed_tests;
#[cfg(test)]
mod roundtrip_tests;
