//! Incremental decoding. A partial packet is `Ok(None)`; the maximum packet size is enforced from the fixed
//! header, before the body is buffered.

use super::wire::{self, Reader};
use super::*;
use bytes::{Buf, Bytes, BytesMut};

/// A stateful decoder for one connection: it learns the protocol level from CONNECT (server side) or is
/// told it (client side), and holds the maximum packet size this side accepts.
#[derive(Debug, Clone)]
pub struct Decoder {
    /// Protocol level for every packet but CONNECT, which carries its own.
    pub version: ProtocolVersion,
    /// Largest packet, fixed header included, that this side accepts.
    pub max_packet_size: usize,
}

impl Decoder {
    /// A decoder that accepts packets up to `max_packet_size` bytes.
    pub fn new(version: ProtocolVersion, max_packet_size: usize) -> Decoder {
        Decoder {
            version,
            max_packet_size,
        }
    }

    /// Decodes the next packet from `buf`, consuming its bytes; a decoded CONNECT sets the version.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Packet>, DecodeError> {
        let packet = decode(buf, self.version, self.max_packet_size)?;
        if let Some(Packet::Connect(connect)) = &packet {
            self.version = connect.protocol;
        }
        Ok(packet)
    }
}

/// Decodes one packet from the front of `buf` and removes its bytes; `Ok(None)` (with `buf` untouched) if
/// the packet is not complete yet. `version` governs every packet but CONNECT.
pub fn decode(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max_packet_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    let Some(&header) = buf.first() else {
        return Ok(None);
    };
    let kind = kind_of(header, version)?;
    let Some((remaining, len_bytes)) =
        wire::read_varint(&buf[1..]).map_err(|_| DecodeError::MalformedRemainingLength)?
    else {
        return Ok(None);
    };
    let size = 1 + len_bytes + remaining as usize;
    if size > max_packet_size {
        return Err(DecodeError::PacketTooLarge {
            size,
            max: max_packet_size,
        });
    }
    if buf.len() < size {
        buf.reserve(size - buf.len());
        return Ok(None);
    }
    let mut body = buf.split_to(size).freeze();
    body.advance(1 + len_bytes);
    decode_body(kind, header & 0x0F, body, version).map(Some)
}

/// The packet kind of a fixed header byte, with its flag bits checked [MQTT-2.1.3-1].
fn kind_of(header: u8, version: ProtocolVersion) -> Result<PacketKind, DecodeError> {
    let flags = header & 0x0F;
    let kind = match header >> 4 {
        1 => PacketKind::Connect,
        2 => PacketKind::ConnAck,
        3 => {
            if (flags >> 1) & 0b11 == 3 {
                return Err(DecodeError::InvalidQoS);
            }
            return Ok(PacketKind::Publish);
        }
        4 => PacketKind::PubAck,
        5 => PacketKind::PubRec,
        6 => PacketKind::PubRel,
        7 => PacketKind::PubComp,
        8 => PacketKind::Subscribe,
        9 => PacketKind::SubAck,
        10 => PacketKind::Unsubscribe,
        11 => PacketKind::UnsubAck,
        12 => PacketKind::PingReq,
        13 => PacketKind::PingResp,
        14 => PacketKind::Disconnect,
        15 if version.is_v5() => PacketKind::Auth,
        other => return Err(DecodeError::ReservedPacketType(other)),
    };
    let expected = match kind {
        PacketKind::PubRel | PacketKind::Subscribe | PacketKind::Unsubscribe => 0b0010,
        _ => 0,
    };
    // MQTT 3.1 sets DUP on a resent PUBREL, SUBSCRIBE or UNSUBSCRIBE (its QoS 1 bit is fixed); 3.1.1 and 5.0
    // made the flags exactly 0010.
    let v31_resend = version == ProtocolVersion::V31 && expected == 0b0010 && flags == 0b1010;
    if flags != expected && !v31_resend {
        return Err(DecodeError::InvalidHeaderFlags { kind, flags });
    }
    Ok(kind)
}

fn decode_body(
    kind: PacketKind,
    flags: u8,
    body: Bytes,
    version: ProtocolVersion,
) -> Result<Packet, DecodeError> {
    let mut r = Reader::new(body);
    let packet = match kind {
        PacketKind::Connect => Packet::Connect(Box::new(connect(&mut r)?)),
        PacketKind::ConnAck => Packet::ConnAck(connack(&mut r, version)?),
        PacketKind::Publish => return publish(&mut r, flags, version).map(Packet::Publish),
        PacketKind::PubAck => Packet::PubAck(puback(&mut r, kind, version)?),
        PacketKind::PubRec => Packet::PubRec(puback(&mut r, kind, version)?),
        PacketKind::PubRel => Packet::PubRel(puback(&mut r, kind, version)?),
        PacketKind::PubComp => Packet::PubComp(puback(&mut r, kind, version)?),
        PacketKind::Subscribe => Packet::Subscribe(subscribe(&mut r, version)?),
        PacketKind::SubAck => Packet::SubAck(suback(&mut r, version)?),
        PacketKind::Unsubscribe => Packet::Unsubscribe(unsubscribe(&mut r, version)?),
        PacketKind::UnsubAck => Packet::UnsubAck(unsuback(&mut r, version)?),
        PacketKind::PingReq => Packet::PingReq,
        PacketKind::PingResp => Packet::PingResp,
        PacketKind::Disconnect => {
            let (reason, properties) = reason_and_properties(&mut r, kind, version)?;
            Packet::Disconnect(Disconnect { reason, properties })
        }
        PacketKind::Auth => {
            let (reason, properties) = reason_and_properties(&mut r, kind, version)?;
            Packet::Auth(Auth { reason, properties })
        }
        // `kind_of` never yields `Will`; answering as for a reserved type keeps this free of panics.
        PacketKind::Will => return Err(DecodeError::ReservedPacketType(0)),
    };
    r.expect_end()?;
    Ok(packet)
}

fn pkid(r: &mut Reader) -> Result<u16, DecodeError> {
    match r.u16("packet identifier")? {
        0 => Err(DecodeError::ZeroPacketId),
        id => Ok(id),
    }
}

fn properties(
    r: &mut Reader,
    kind: PacketKind,
    version: ProtocolVersion,
) -> Result<Properties, DecodeError> {
    if version.is_v5() {
        Properties::decode(r, kind)
    } else {
        Ok(Properties::default())
    }
}

fn reason(kind: PacketKind, code: u8) -> Result<ReasonCode, DecodeError> {
    if reason::allowed_v5(kind, code) {
        Ok(ReasonCode(code))
    } else {
        Err(DecodeError::InvalidReasonCode { kind, code })
    }
}

fn connect(r: &mut Reader) -> Result<Connect, DecodeError> {
    let name = r.string("protocol name")?;
    let level = r.u8("protocol level")?;
    let protocol = match (name.as_str(), level) {
        ("MQIsdp", 3) => ProtocolVersion::V31,
        ("MQTT", 4) => ProtocolVersion::V311,
        ("MQTT", 5) => ProtocolVersion::V5,
        ("MQTT", _) | ("MQIsdp", _) => return Err(DecodeError::UnsupportedProtocolLevel(level)),
        _ => return Err(DecodeError::InvalidProtocolName(name)),
    };
    let flags = r.u8("connect flags")?;
    if flags & 0x01 != 0 {
        return Err(DecodeError::ConnectReservedFlag);
    }
    let clean_start = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0b11;
    let will_retain = flags & 0x20 != 0;
    let has_password = flags & 0x40 != 0;
    let has_username = flags & 0x80 != 0;
    if !will_flag && (will_qos != 0 || will_retain) {
        return Err(DecodeError::InvalidWillFlags);
    }
    let will_qos = QoS::from_u8(will_qos).ok_or(DecodeError::InvalidWillFlags)?;
    if has_password && !has_username && !protocol.is_v5() {
        return Err(DecodeError::PasswordWithoutUsername);
    }
    let keep_alive = r.u16("keep alive")?;
    let properties = properties(r, PacketKind::Connect, protocol)?;
    let client_id = r.string("client identifier")?;
    let will = if will_flag {
        let properties = properties_will(r, protocol)?;
        let topic = r.string("will topic")?;
        topic::validate_name(&topic).map_err(DecodeError::InvalidTopicName)?;
        let payload = r.binary("will payload")?;
        Some(LastWill {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = if has_username {
        Some(r.string("user name")?)
    } else {
        None
    };
    let password = if has_password {
        Some(r.binary("password")?)
    } else {
        None
    };
    Ok(Connect {
        protocol,
        clean_start,
        keep_alive,
        properties,
        client_id,
        will,
        username,
        password,
    })
}

fn properties_will(r: &mut Reader, protocol: ProtocolVersion) -> Result<Properties, DecodeError> {
    properties(r, PacketKind::Will, protocol)
}

fn connack(r: &mut Reader, version: ProtocolVersion) -> Result<ConnAck, DecodeError> {
    let flags = r.u8("acknowledge flags")?;
    // MQTT 3.1 has no Session Present bit: the whole byte is reserved.
    let reserved = if version == ProtocolVersion::V31 {
        0xFF
    } else {
        0xFE
    };
    if flags & reserved != 0 {
        return Err(DecodeError::ConnAckReservedFlags);
    }
    let code = r.u8("return code")?;
    let reason_code = if version.is_v5() {
        reason(PacketKind::ConnAck, code)?
    } else {
        ReasonCode::from_v3_connack(code).ok_or(DecodeError::InvalidReasonCode {
            kind: PacketKind::ConnAck,
            code,
        })?
    };
    let properties = properties(r, PacketKind::ConnAck, version)?;
    Ok(ConnAck {
        session_present: flags & 1 != 0,
        reason: reason_code,
        properties,
    })
}

fn publish(r: &mut Reader, flags: u8, version: ProtocolVersion) -> Result<Publish, DecodeError> {
    let qos = QoS::from_u8((flags >> 1) & 0b11).ok_or(DecodeError::InvalidQoS)?;
    let dup = flags & 0b1000 != 0;
    // The DUP flag MUST be 0 for all QoS 0 messages [MQTT-3.3.1-2].
    if dup && qos == QoS::AtMostOnce {
        return Err(DecodeError::InvalidHeaderFlags {
            kind: PacketKind::Publish,
            flags,
        });
    }
    let topic = r.string("topic name")?;
    let pkid = if qos == QoS::AtMostOnce { 0 } else { pkid(r)? };
    let properties = properties(r, PacketKind::Publish, version)?;
    if topic.is_empty() && version.is_v5() {
        if properties.topic_alias.is_none() {
            return Err(DecodeError::MissingTopicAlias);
        }
    } else {
        topic::validate_name(&topic).map_err(DecodeError::InvalidTopicName)?;
    }
    // A PUBLISH from a client carries no Subscription Identifier [MQTT-3.3.4-6]; a server's does, so the
    // decoder accepts it and the broker rejects it on ingress.
    let payload = r.rest();
    Ok(Publish {
        dup,
        qos,
        retain: flags & 1 != 0,
        topic,
        pkid,
        properties,
        payload,
    })
}

fn puback(
    r: &mut Reader,
    kind: PacketKind,
    version: ProtocolVersion,
) -> Result<PubAck, DecodeError> {
    let pkid = pkid(r)?;
    let (reason, properties) = reason_and_properties(r, kind, version)?;
    Ok(PubAck {
        pkid,
        reason,
        properties,
    })
}

/// The optional reason code and properties of acks, DISCONNECT and AUTH: absent means Success and none
/// (spec 3.4.2.1, 3.14.2.1, 3.15.2.1).
fn reason_and_properties(
    r: &mut Reader,
    kind: PacketKind,
    version: ProtocolVersion,
) -> Result<(ReasonCode, Properties), DecodeError> {
    if !version.is_v5() || r.remaining() == 0 {
        return Ok((ReasonCode::SUCCESS, Properties::default()));
    }
    let code = reason(kind, r.u8("reason code")?)?;
    let properties = if r.remaining() == 0 {
        Properties::default()
    } else {
        Properties::decode(r, kind)?
    };
    Ok((code, properties))
}

fn subscribe(r: &mut Reader, version: ProtocolVersion) -> Result<Subscribe, DecodeError> {
    let pkid = pkid(r)?;
    let properties = properties(r, PacketKind::Subscribe, version)?;
    let mut filters = Vec::new();
    while r.remaining() > 0 {
        let filter = r.string("topic filter")?;
        topic::validate_filter(&filter).map_err(DecodeError::InvalidTopicFilter)?;
        let options = subscription_options(r.u8("subscription options")?, version)?;
        if options.no_local && version.is_v5() && topic::parse_shared(&filter).is_some() {
            return Err(DecodeError::NoLocalOnSharedSubscription);
        }
        filters.push(SubscribeFilter { filter, options });
    }
    if filters.is_empty() {
        return Err(DecodeError::NoTopicFilters(PacketKind::Subscribe));
    }
    Ok(Subscribe {
        pkid,
        properties,
        filters,
    })
}

fn subscription_options(
    byte: u8,
    version: ProtocolVersion,
) -> Result<SubscriptionOptions, DecodeError> {
    let reserved = if version.is_v5() {
        0b1100_0000
    } else {
        0b1111_1100
    };
    if byte & reserved != 0 {
        return Err(DecodeError::ReservedSubscriptionBits);
    }
    let qos = QoS::from_u8(byte & 0b11).ok_or(DecodeError::InvalidQoS)?;
    let retain_handling = match (byte >> 4) & 0b11 {
        0 => RetainHandling::SendAtSubscribe,
        1 => RetainHandling::SendIfNew,
        2 => RetainHandling::DoNotSend,
        _ => return Err(DecodeError::InvalidRetainHandling),
    };
    Ok(SubscriptionOptions {
        qos,
        no_local: byte & 0b0100 != 0,
        retain_as_published: byte & 0b1000 != 0,
        retain_handling,
    })
}

fn suback(r: &mut Reader, version: ProtocolVersion) -> Result<SubAck, DecodeError> {
    let pkid = pkid(r)?;
    let properties = properties(r, PacketKind::SubAck, version)?;
    let mut reasons = Vec::with_capacity(r.remaining());
    while r.remaining() > 0 {
        let code = r.u8("reason code")?;
        let valid = if version.is_v5() {
            reason::allowed_v5(PacketKind::SubAck, code)
        } else {
            matches!(code, 0..=2 | 0x80)
        };
        if !valid {
            return Err(DecodeError::InvalidReasonCode {
                kind: PacketKind::SubAck,
                code,
            });
        }
        reasons.push(ReasonCode(code));
    }
    Ok(SubAck {
        pkid,
        properties,
        reasons,
    })
}

fn unsubscribe(r: &mut Reader, version: ProtocolVersion) -> Result<Unsubscribe, DecodeError> {
    let pkid = pkid(r)?;
    let properties = properties(r, PacketKind::Unsubscribe, version)?;
    let mut filters = Vec::new();
    while r.remaining() > 0 {
        let filter = r.string("topic filter")?;
        topic::validate_filter(&filter).map_err(DecodeError::InvalidTopicFilter)?;
        filters.push(filter);
    }
    if filters.is_empty() {
        return Err(DecodeError::NoTopicFilters(PacketKind::Unsubscribe));
    }
    Ok(Unsubscribe {
        pkid,
        properties,
        filters,
    })
}

fn unsuback(r: &mut Reader, version: ProtocolVersion) -> Result<UnsubAck, DecodeError> {
    let pkid = pkid(r)?;
    let properties = properties(r, PacketKind::UnsubAck, version)?;
    let mut reasons = Vec::new();
    if version.is_v5() {
        while r.remaining() > 0 {
            reasons.push(reason(PacketKind::UnsubAck, r.u8("reason code")?)?);
        }
    }
    Ok(UnsubAck {
        pkid,
        properties,
        reasons,
    })
}
