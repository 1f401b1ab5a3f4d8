//! Control packet values. Fields that a protocol level lacks (properties, reason codes before MQTT 5) are
//! left at their defaults and are neither encoded nor decoded at that level.

use super::{PacketKind, Properties, ProtocolVersion, QoS, ReasonCode};
use bytes::Bytes;

/// Any control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Connect(Box<Connect>),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(PubAck),
    PubRec(PubAck),
    PubRel(PubAck),
    PubComp(PubAck),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    Auth(Auth),
}

impl Packet {
    /// The packet's kind, for logs and errors.
    pub fn kind(&self) -> PacketKind {
        match self {
            Packet::Connect(_) => PacketKind::Connect,
            Packet::ConnAck(_) => PacketKind::ConnAck,
            Packet::Publish(_) => PacketKind::Publish,
            Packet::PubAck(_) => PacketKind::PubAck,
            Packet::PubRec(_) => PacketKind::PubRec,
            Packet::PubRel(_) => PacketKind::PubRel,
            Packet::PubComp(_) => PacketKind::PubComp,
            Packet::Subscribe(_) => PacketKind::Subscribe,
            Packet::SubAck(_) => PacketKind::SubAck,
            Packet::Unsubscribe(_) => PacketKind::Unsubscribe,
            Packet::UnsubAck(_) => PacketKind::UnsubAck,
            Packet::PingReq => PacketKind::PingReq,
            Packet::PingResp => PacketKind::PingResp,
            Packet::Disconnect(_) => PacketKind::Disconnect,
            Packet::Auth(_) => PacketKind::Auth,
        }
    }
}

/// CONNECT (spec 3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub protocol: ProtocolVersion,
    /// Clean Start (v5) or Clean Session (v3).
    pub clean_start: bool,
    /// Seconds; 0 disables keep-alive.
    pub keep_alive: u16,
    pub properties: Properties,
    pub client_id: String,
    pub will: Option<LastWill>,
    pub username: Option<String>,
    pub password: Option<Bytes>,
}

/// The Will Message carried in CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastWill {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// Will Properties (v5): delay, expiry, content type, response topic, correlation data, user properties.
    pub properties: Properties,
}

/// CONNACK (spec 3.2). `reason` is the v5 reason code; at v3 it is mapped to and from the return code.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnAck {
    pub session_present: bool,
    pub reason: ReasonCode,
    pub properties: Properties,
}

/// PUBLISH (spec 3.3). The payload shares the read buffer's allocation and is cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// Empty only in MQTT 5 when a Topic Alias property names the topic.
    pub topic: String,
    /// 0 for QoS 0, non-zero otherwise.
    pub pkid: u16,
    pub properties: Properties,
    pub payload: Bytes,
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP share one shape (spec 3.4-3.7).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PubAck {
    pub pkid: u16,
    pub reason: ReasonCode,
    pub properties: Properties,
}

impl PubAck {
    /// A successful acknowledgement without properties.
    pub fn new(pkid: u16) -> PubAck {
        PubAck {
            pkid,
            ..PubAck::default()
        }
    }
}

/// Retain Handling subscription option (spec 3.8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RetainHandling {
    /// Send retained messages at the time of the subscribe.
    #[default]
    SendAtSubscribe = 0,
    /// Send retained messages only if the subscription does not already exist.
    SendIfNew = 1,
    /// Do not send retained messages.
    DoNotSend = 2,
}

/// Subscription options (spec 3.8.3.1). Below MQTT 5 only `qos` is on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SubscriptionOptions {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
}

/// One topic filter of a SUBSCRIBE with its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeFilter {
    pub filter: String,
    pub options: SubscriptionOptions,
}

/// SUBSCRIBE (spec 3.8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub pkid: u16,
    pub properties: Properties,
    pub filters: Vec<SubscribeFilter>,
}

/// SUBACK (spec 3.9): one reason per filter, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    pub pkid: u16,
    pub properties: Properties,
    pub reasons: Vec<ReasonCode>,
}

/// UNSUBSCRIBE (spec 3.10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub pkid: u16,
    pub properties: Properties,
    pub filters: Vec<String>,
}

/// UNSUBACK (spec 3.11). Below MQTT 5 it carries no reasons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    pub pkid: u16,
    pub properties: Properties,
    pub reasons: Vec<ReasonCode>,
}

/// DISCONNECT (spec 3.14). Below MQTT 5 it has no body.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Disconnect {
    pub reason: ReasonCode,
    pub properties: Properties,
}

/// AUTH (spec 3.15), MQTT 5 only.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Auth {
    pub reason: ReasonCode,
    pub properties: Properties,
}

impl Default for ReasonCode {
    fn default() -> Self {
        ReasonCode::SUCCESS
    }
}
