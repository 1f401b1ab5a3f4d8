//! MQTT 5 properties (spec 2.2.2): one struct for all packets, and a table of which packet may carry which
//! property. The decoder enforces the table, duplicates and value ranges; the encoder writes what is set.

use super::wire::{self, Reader};
use super::{DecodeError, EncodeError, PacketKind};
use bytes::{BufMut, Bytes, BytesMut};

/// Every property of MQTT 5. Fields that are absent are `None` / empty and are not encoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    /// Several in a PUBLISH (one per matching subscription), at most one in SUBSCRIBE.
    pub subscription_identifiers: Vec<u32>,
    pub session_expiry_interval: Option<u32>,
    pub assigned_client_identifier: Option<String>,
    pub server_keep_alive: Option<u16>,
    pub authentication_method: Option<String>,
    pub authentication_data: Option<Bytes>,
    pub request_problem_information: Option<bool>,
    pub will_delay_interval: Option<u32>,
    pub request_response_information: Option<bool>,
    pub response_information: Option<String>,
    pub server_reference: Option<String>,
    pub reason_string: Option<String>,
    pub receive_maximum: Option<u16>,
    pub topic_alias_maximum: Option<u16>,
    pub topic_alias: Option<u16>,
    pub maximum_qos: Option<u8>,
    pub retain_available: Option<bool>,
    /// In order; the same key may appear several times [MQTT-3.3.2-18].
    pub user_properties: Vec<(String, String)>,
    pub maximum_packet_size: Option<u32>,
    pub wildcard_subscription_available: Option<bool>,
    pub subscription_identifier_available: Option<bool>,
    pub shared_subscription_available: Option<bool>,
}

/// Property identifiers (spec table 2-4).
pub mod id {
    pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub const AUTHENTICATION_METHOD: u8 = 0x15;
    pub const AUTHENTICATION_DATA: u8 = 0x16;
    pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    pub const WILL_DELAY_INTERVAL: u8 = 0x18;
    pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    pub const RESPONSE_INFORMATION: u8 = 0x1A;
    pub const SERVER_REFERENCE: u8 = 0x1C;
    pub const REASON_STRING: u8 = 0x1F;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const MAXIMUM_QOS: u8 = 0x24;
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
}

/// Whether property `id` may appear in packet `kind` (spec table 2-4); `None` for unknown identifiers.
fn allowed(id: u8, kind: PacketKind) -> Option<bool> {
    use PacketKind as K;
    let ok = match id {
        id::PAYLOAD_FORMAT_INDICATOR
        | id::MESSAGE_EXPIRY_INTERVAL
        | id::CONTENT_TYPE
        | id::RESPONSE_TOPIC
        | id::CORRELATION_DATA => matches!(kind, K::Publish | K::Will),
        id::SUBSCRIPTION_IDENTIFIER => matches!(kind, K::Publish | K::Subscribe),
        id::SESSION_EXPIRY_INTERVAL => matches!(kind, K::Connect | K::ConnAck | K::Disconnect),
        id::ASSIGNED_CLIENT_IDENTIFIER
        | id::SERVER_KEEP_ALIVE
        | id::RESPONSE_INFORMATION
        | id::MAXIMUM_QOS
        | id::RETAIN_AVAILABLE
        | id::WILDCARD_SUBSCRIPTION_AVAILABLE
        | id::SUBSCRIPTION_IDENTIFIER_AVAILABLE
        | id::SHARED_SUBSCRIPTION_AVAILABLE => kind == K::ConnAck,
        id::AUTHENTICATION_METHOD | id::AUTHENTICATION_DATA => {
            matches!(kind, K::Connect | K::ConnAck | K::Auth)
        }
        id::REQUEST_PROBLEM_INFORMATION | id::REQUEST_RESPONSE_INFORMATION => kind == K::Connect,
        id::WILL_DELAY_INTERVAL => kind == K::Will,
        id::SERVER_REFERENCE => matches!(kind, K::ConnAck | K::Disconnect),
        id::REASON_STRING => matches!(
            kind,
            K::ConnAck
                | K::PubAck
                | K::PubRec
                | K::PubRel
                | K::PubComp
                | K::SubAck
                | K::UnsubAck
                | K::Disconnect
                | K::Auth
        ),
        id::RECEIVE_MAXIMUM | id::TOPIC_ALIAS_MAXIMUM | id::MAXIMUM_PACKET_SIZE => {
            matches!(kind, K::Connect | K::ConnAck)
        }
        id::TOPIC_ALIAS => kind == K::Publish,
        id::USER_PROPERTY => kind != K::PingReq && kind != K::PingResp,
        _ => return None,
    };
    Some(ok)
}

fn set_once<T>(slot: &mut Option<T>, value: T, prop: u8) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::DuplicateProperty(prop));
    }
    *slot = Some(value);
    Ok(())
}

fn flag(value: u8, prop: u8) -> Result<bool, DecodeError> {
    match value {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(DecodeError::InvalidPropertyValue(prop)),
    }
}

fn nonzero_u16(value: u16, prop: u8) -> Result<u16, DecodeError> {
    if value == 0 {
        return Err(DecodeError::InvalidPropertyValue(prop));
    }
    Ok(value)
}

impl Properties {
    /// True when no property is set (used for the short forms of acks and DISCONNECT).
    pub fn is_empty(&self) -> bool {
        *self == Properties::default()
    }

    /// Reads a property length and the properties of a packet of `kind`.
    pub(crate) fn decode(r: &mut Reader, kind: PacketKind) -> Result<Properties, DecodeError> {
        let len = r.varint("property length")? as usize;
        let mut r = Reader::new(r.take(len, "properties")?);
        let mut p = Properties::default();
        while r.remaining() > 0 {
            let raw = r.varint("property identifier")?;
            let prop = u8::try_from(raw).map_err(|_| DecodeError::UnknownProperty(raw))?;
            match allowed(prop, kind) {
                None => return Err(DecodeError::UnknownProperty(raw)),
                Some(false) => return Err(DecodeError::PropertyNotAllowed { id: prop, kind }),
                Some(true) => {}
            }
            p.decode_one(&mut r, prop, kind)?;
        }
        Ok(p)
    }

    fn decode_one(
        &mut self,
        r: &mut Reader,
        prop: u8,
        kind: PacketKind,
    ) -> Result<(), DecodeError> {
        const F: &str = "property value";
        match prop {
            id::PAYLOAD_FORMAT_INDICATOR => {
                let v = r.u8(F)?;
                flag(v, prop)?;
                set_once(&mut self.payload_format_indicator, v, prop)
            }
            id::MESSAGE_EXPIRY_INTERVAL => {
                set_once(&mut self.message_expiry_interval, r.u32(F)?, prop)
            }
            id::CONTENT_TYPE => set_once(&mut self.content_type, r.string(F)?, prop),
            id::RESPONSE_TOPIC => {
                let topic = r.string(F)?;
                // The Response Topic is a Topic Name [MQTT-3.3.2-14].
                super::topic::validate_name(&topic)
                    .map_err(|_| DecodeError::InvalidPropertyValue(prop))?;
                set_once(&mut self.response_topic, topic, prop)
            }
            id::CORRELATION_DATA => set_once(&mut self.correlation_data, r.binary(F)?, prop),
            id::SUBSCRIPTION_IDENTIFIER => {
                let v = r.varint(F)?;
                if v == 0 {
                    return Err(DecodeError::InvalidPropertyValue(prop));
                }
                if kind == PacketKind::Subscribe && !self.subscription_identifiers.is_empty() {
                    return Err(DecodeError::DuplicateProperty(prop));
                }
                self.subscription_identifiers.push(v);
                Ok(())
            }
            id::SESSION_EXPIRY_INTERVAL => {
                set_once(&mut self.session_expiry_interval, r.u32(F)?, prop)
            }
            id::ASSIGNED_CLIENT_IDENTIFIER => {
                set_once(&mut self.assigned_client_identifier, r.string(F)?, prop)
            }
            id::SERVER_KEEP_ALIVE => set_once(&mut self.server_keep_alive, r.u16(F)?, prop),
            id::AUTHENTICATION_METHOD => {
                set_once(&mut self.authentication_method, r.string(F)?, prop)
            }
            id::AUTHENTICATION_DATA => set_once(&mut self.authentication_data, r.binary(F)?, prop),
            id::REQUEST_PROBLEM_INFORMATION => {
                let v = flag(r.u8(F)?, prop)?;
                set_once(&mut self.request_problem_information, v, prop)
            }
            id::WILL_DELAY_INTERVAL => set_once(&mut self.will_delay_interval, r.u32(F)?, prop),
            id::REQUEST_RESPONSE_INFORMATION => {
                let v = flag(r.u8(F)?, prop)?;
                set_once(&mut self.request_response_information, v, prop)
            }
            id::RESPONSE_INFORMATION => {
                set_once(&mut self.response_information, r.string(F)?, prop)
            }
            id::SERVER_REFERENCE => set_once(&mut self.server_reference, r.string(F)?, prop),
            id::REASON_STRING => set_once(&mut self.reason_string, r.string(F)?, prop),
            id::RECEIVE_MAXIMUM => {
                let v = nonzero_u16(r.u16(F)?, prop)?;
                set_once(&mut self.receive_maximum, v, prop)
            }
            id::TOPIC_ALIAS_MAXIMUM => set_once(&mut self.topic_alias_maximum, r.u16(F)?, prop),
            id::TOPIC_ALIAS => {
                // A Topic Alias of 0 is not permitted [MQTT-3.3.2-8].
                let v = nonzero_u16(r.u16(F)?, prop)?;
                set_once(&mut self.topic_alias, v, prop)
            }
            id::MAXIMUM_QOS => {
                let v = r.u8(F)?;
                flag(v, prop)?;
                set_once(&mut self.maximum_qos, v, prop)
            }
            id::RETAIN_AVAILABLE => {
                let v = flag(r.u8(F)?, prop)?;
                set_once(&mut self.retain_available, v, prop)
            }
            id::USER_PROPERTY => {
                let key = r.string(F)?;
                let value = r.string(F)?;
                self.user_properties.push((key, value));
                Ok(())
            }
            id::MAXIMUM_PACKET_SIZE => {
                let v = r.u32(F)?;
                if v == 0 {
                    return Err(DecodeError::InvalidPropertyValue(prop));
                }
                set_once(&mut self.maximum_packet_size, v, prop)
            }
            id::WILDCARD_SUBSCRIPTION_AVAILABLE => {
                let v = flag(r.u8(F)?, prop)?;
                set_once(&mut self.wildcard_subscription_available, v, prop)
            }
            id::SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
                let v = flag(r.u8(F)?, prop)?;
                set_once(&mut self.subscription_identifier_available, v, prop)
            }
            id::SHARED_SUBSCRIPTION_AVAILABLE => {
                let v = flag(r.u8(F)?, prop)?;
                set_once(&mut self.shared_subscription_available, v, prop)
            }
            other => Err(DecodeError::UnknownProperty(u32::from(other))),
        }
    }

    /// Bytes of the properties themselves, without the property length prefix.
    pub(crate) fn body_len(&self) -> Result<usize, EncodeError> {
        let s = |v: &Option<String>, name| {
            v.as_ref()
                .map_or(Ok(0), |v| wire::field_len(v.len(), name).map(|l| 1 + l))
        };
        let b = |v: &Option<Bytes>, name| {
            v.as_ref()
                .map_or(Ok(0), |v| wire::field_len(v.len(), name).map(|l| 1 + l))
        };
        let n = |present: bool, width: usize| if present { 1 + width } else { 0 };
        let mut len = 0;
        len += n(self.payload_format_indicator.is_some(), 1);
        len += n(self.message_expiry_interval.is_some(), 4);
        len += s(&self.content_type, "content type")?;
        len += s(&self.response_topic, "response topic")?;
        len += b(&self.correlation_data, "correlation data")?;
        for &sid in &self.subscription_identifiers {
            if sid == 0 || sid > wire::MAX_VARINT {
                return Err(EncodeError::OutOfRange("subscription identifier"));
            }
            len += 1 + wire::varint_len(sid);
        }
        len += n(self.session_expiry_interval.is_some(), 4);
        len += s(
            &self.assigned_client_identifier,
            "assigned client identifier",
        )?;
        len += n(self.server_keep_alive.is_some(), 2);
        len += s(&self.authentication_method, "authentication method")?;
        len += b(&self.authentication_data, "authentication data")?;
        len += n(self.request_problem_information.is_some(), 1);
        len += n(self.will_delay_interval.is_some(), 4);
        len += n(self.request_response_information.is_some(), 1);
        len += s(&self.response_information, "response information")?;
        len += s(&self.server_reference, "server reference")?;
        len += s(&self.reason_string, "reason string")?;
        len += n(self.receive_maximum.is_some(), 2);
        len += n(self.topic_alias_maximum.is_some(), 2);
        len += n(self.topic_alias.is_some(), 2);
        len += n(self.maximum_qos.is_some(), 1);
        len += n(self.retain_available.is_some(), 1);
        for (k, v) in &self.user_properties {
            len += 1
                + wire::field_len(k.len(), "user property")?
                + wire::field_len(v.len(), "user property")?;
        }
        len += n(self.maximum_packet_size.is_some(), 4);
        len += n(self.wildcard_subscription_available.is_some(), 1);
        len += n(self.subscription_identifier_available.is_some(), 1);
        len += n(self.shared_subscription_available.is_some(), 1);
        Ok(len)
    }

    /// Bytes of the property length prefix plus the properties.
    pub(crate) fn encoded_len(&self) -> Result<usize, EncodeError> {
        let body = self.body_len()?;
        Ok(wire::varint_len(body as u32) + body)
    }

    /// Writes the property length and the properties; `body_len` is the value [`Properties::body_len`] gave.
    pub(crate) fn encode(&self, buf: &mut BytesMut, body_len: usize) {
        wire::put_varint(buf, body_len as u32);
        let put_str = |buf: &mut BytesMut, prop: u8, v: &Option<String>| {
            if let Some(v) = v {
                buf.put_u8(prop);
                wire::put_binary(buf, v.as_bytes());
            }
        };
        let put_bin = |buf: &mut BytesMut, prop: u8, v: &Option<Bytes>| {
            if let Some(v) = v {
                buf.put_u8(prop);
                wire::put_binary(buf, v);
            }
        };
        let put_u8 = |buf: &mut BytesMut, prop: u8, v: Option<u8>| {
            if let Some(v) = v {
                buf.put_u8(prop);
                buf.put_u8(v);
            }
        };
        let put_u16 = |buf: &mut BytesMut, prop: u8, v: Option<u16>| {
            if let Some(v) = v {
                buf.put_u8(prop);
                buf.put_u16(v);
            }
        };
        let put_u32 = |buf: &mut BytesMut, prop: u8, v: Option<u32>| {
            if let Some(v) = v {
                buf.put_u8(prop);
                buf.put_u32(v);
            }
        };
        let b = |v: Option<bool>| v.map(u8::from);
        put_u8(
            buf,
            id::PAYLOAD_FORMAT_INDICATOR,
            self.payload_format_indicator,
        );
        put_u32(
            buf,
            id::MESSAGE_EXPIRY_INTERVAL,
            self.message_expiry_interval,
        );
        put_str(buf, id::CONTENT_TYPE, &self.content_type);
        put_str(buf, id::RESPONSE_TOPIC, &self.response_topic);
        put_bin(buf, id::CORRELATION_DATA, &self.correlation_data);
        for &sid in &self.subscription_identifiers {
            buf.put_u8(id::SUBSCRIPTION_IDENTIFIER);
            wire::put_varint(buf, sid);
        }
        put_u32(
            buf,
            id::SESSION_EXPIRY_INTERVAL,
            self.session_expiry_interval,
        );
        put_str(
            buf,
            id::ASSIGNED_CLIENT_IDENTIFIER,
            &self.assigned_client_identifier,
        );
        put_u16(buf, id::SERVER_KEEP_ALIVE, self.server_keep_alive);
        put_str(buf, id::AUTHENTICATION_METHOD, &self.authentication_method);
        put_bin(buf, id::AUTHENTICATION_DATA, &self.authentication_data);
        put_u8(
            buf,
            id::REQUEST_PROBLEM_INFORMATION,
            b(self.request_problem_information),
        );
        put_u32(buf, id::WILL_DELAY_INTERVAL, self.will_delay_interval);
        put_u8(
            buf,
            id::REQUEST_RESPONSE_INFORMATION,
            b(self.request_response_information),
        );
        put_str(buf, id::RESPONSE_INFORMATION, &self.response_information);
        put_str(buf, id::SERVER_REFERENCE, &self.server_reference);
        put_str(buf, id::REASON_STRING, &self.reason_string);
        put_u16(buf, id::RECEIVE_MAXIMUM, self.receive_maximum);
        put_u16(buf, id::TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        put_u16(buf, id::TOPIC_ALIAS, self.topic_alias);
        put_u8(buf, id::MAXIMUM_QOS, self.maximum_qos);
        put_u8(buf, id::RETAIN_AVAILABLE, b(self.retain_available));
        for (k, v) in &self.user_properties {
            buf.put_u8(id::USER_PROPERTY);
            wire::put_binary(buf, k.as_bytes());
            wire::put_binary(buf, v.as_bytes());
        }
        put_u32(buf, id::MAXIMUM_PACKET_SIZE, self.maximum_packet_size);
        put_u8(
            buf,
            id::WILDCARD_SUBSCRIPTION_AVAILABLE,
            b(self.wildcard_subscription_available),
        );
        put_u8(
            buf,
            id::SUBSCRIPTION_IDENTIFIER_AVAILABLE,
            b(self.subscription_identifier_available),
        );
        put_u8(
            buf,
            id::SHARED_SUBSCRIPTION_AVAILABLE,
            b(self.shared_subscription_available),
        );
    }
}
