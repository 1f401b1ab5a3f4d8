//! Encoding. A packet is sized first (which also checks every length limit), then written in one pass
//! into the caller's buffer, so many packets can be batched into one write.

use super::wire::{self, MAX_VARINT};
use super::*;
use bytes::{BufMut, BytesMut};

/// Total bytes the packet takes on the wire at `version`, fixed header included.
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> Result<usize, EncodeError> {
    let remaining = remaining_len(packet, version)?;
    Ok(1 + wire::varint_len(remaining as u32) + remaining)
}

/// Appends the packet to `buf`. On error nothing is written.
pub fn encode(
    packet: &Packet,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    let remaining = remaining_len(packet, version)?;
    buf.reserve(1 + 4 + remaining);
    buf.put_u8(header_byte(packet));
    wire::put_varint(buf, remaining as u32);
    write_body(packet, version, buf)
}

/// Appends a PUBLISH to `buf` without wrapping it in a [`Packet`] (the client keeps the value for resends).
pub fn encode_publish(
    publish: &Publish,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<usize, EncodeError> {
    let remaining = publish_len(publish, version)?;
    let total = 1 + wire::varint_len(remaining as u32) + remaining;
    buf.reserve(total);
    buf.put_u8(publish_header(publish));
    wire::put_varint(buf, remaining as u32);
    write_publish(publish, version, buf)?;
    Ok(total)
}

fn publish_header(p: &Publish) -> u8 {
    ((PacketKind::Publish as u8) << 4)
        | (u8::from(p.dup) << 3)
        | ((p.qos as u8) << 1)
        | u8::from(p.retain)
}

fn publish_len(p: &Publish, version: ProtocolVersion) -> Result<usize, EncodeError> {
    let pkid = if p.qos == QoS::AtMostOnce { 0 } else { 2 };
    let len = wire::field_len(p.topic.len(), "topic name")?
        + pkid
        + props_len(&p.properties, version)?
        + p.payload.len();
    if len > MAX_VARINT as usize {
        return Err(EncodeError::PacketTooLarge(len));
    }
    Ok(len)
}

fn write_publish(
    p: &Publish,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    wire::put_binary(buf, p.topic.as_bytes());
    if p.qos != QoS::AtMostOnce {
        buf.put_u16(p.pkid);
    }
    put_props(buf, &p.properties, version)?;
    buf.put_slice(&p.payload);
    Ok(())
}

fn header_byte(packet: &Packet) -> u8 {
    let flags = match packet {
        Packet::Publish(p) => return publish_header(p),
        Packet::PubRel(_) | Packet::Subscribe(_) | Packet::Unsubscribe(_) => 0b0010,
        _ => 0,
    };
    ((packet.kind() as u8) << 4) | flags
}

fn props_len(p: &Properties, version: ProtocolVersion) -> Result<usize, EncodeError> {
    if version.is_v5() {
        p.encoded_len()
    } else {
        Ok(0)
    }
}

fn put_props(
    buf: &mut BytesMut,
    p: &Properties,
    version: ProtocolVersion,
) -> Result<(), EncodeError> {
    if version.is_v5() {
        p.encode(buf, p.body_len()?);
    }
    Ok(())
}

/// Whether a v5 ack / DISCONNECT / AUTH can use its short form: reason omitted (Success, no properties) or
/// properties omitted (spec 3.4.2.1, 3.14.2.1, 3.15.2.1).
fn short_form(reason: ReasonCode, p: &Properties) -> (bool, bool) {
    let no_props = p.is_empty();
    (no_props && reason == ReasonCode::SUCCESS, no_props)
}

fn remaining_len(packet: &Packet, version: ProtocolVersion) -> Result<usize, EncodeError> {
    let len = match packet {
        Packet::Connect(c) => {
            let v = c.protocol;
            let mut len = wire::field_len(v.name().len(), "protocol name")? + 1 + 1 + 2;
            len += props_len(&c.properties, v)?;
            len += wire::field_len(c.client_id.len(), "client identifier")?;
            if let Some(w) = &c.will {
                len += props_len(&w.properties, v)?;
                len += wire::field_len(w.topic.len(), "will topic")?;
                len += wire::field_len(w.payload.len(), "will payload")?;
            }
            if let Some(u) = &c.username {
                len += wire::field_len(u.len(), "user name")?;
            }
            if let Some(p) = &c.password {
                len += wire::field_len(p.len(), "password")?;
            }
            len
        }
        Packet::ConnAck(c) => 2 + props_len(&c.properties, version)?,
        Packet::Publish(p) => publish_len(p, version)?,
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            2 + reason_len(a.reason, &a.properties, version)?
        }
        Packet::Subscribe(s) => {
            let mut len = 2 + props_len(&s.properties, version)?;
            for f in &s.filters {
                len += wire::field_len(f.filter.len(), "topic filter")? + 1;
            }
            len
        }
        Packet::SubAck(s) => 2 + props_len(&s.properties, version)? + s.reasons.len(),
        Packet::Unsubscribe(u) => {
            let mut len = 2 + props_len(&u.properties, version)?;
            for f in &u.filters {
                len += wire::field_len(f.len(), "topic filter")?;
            }
            len
        }
        Packet::UnsubAck(u) => {
            if version.is_v5() {
                2 + props_len(&u.properties, version)? + u.reasons.len()
            } else {
                2
            }
        }
        Packet::PingReq | Packet::PingResp => 0,
        Packet::Disconnect(d) => reason_len(d.reason, &d.properties, version)?,
        Packet::Auth(a) => {
            if !version.is_v5() {
                return Err(EncodeError::OutOfRange("AUTH below MQTT 5"));
            }
            reason_len(a.reason, &a.properties, version)?
        }
    };
    if len > MAX_VARINT as usize {
        return Err(EncodeError::PacketTooLarge(len));
    }
    Ok(len)
}

fn reason_len(
    reason: ReasonCode,
    p: &Properties,
    version: ProtocolVersion,
) -> Result<usize, EncodeError> {
    if !version.is_v5() {
        return Ok(0);
    }
    Ok(match short_form(reason, p) {
        (true, _) => 0,
        (false, true) => 1,
        (false, false) => 1 + p.encoded_len()?,
    })
}

fn put_reason(
    buf: &mut BytesMut,
    reason: ReasonCode,
    p: &Properties,
    version: ProtocolVersion,
) -> Result<(), EncodeError> {
    if !version.is_v5() {
        return Ok(());
    }
    match short_form(reason, p) {
        (true, _) => {}
        (false, true) => buf.put_u8(reason.0),
        (false, false) => {
            buf.put_u8(reason.0);
            put_props(buf, p, version)?;
        }
    }
    Ok(())
}

fn write_body(
    packet: &Packet,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    match packet {
        Packet::Connect(c) => {
            let v = c.protocol;
            wire::put_binary(buf, v.name().as_bytes());
            buf.put_u8(v.level());
            let mut flags = u8::from(c.clean_start) << 1;
            if let Some(w) = &c.will {
                flags |= 0x04 | ((w.qos as u8) << 3) | (u8::from(w.retain) << 5);
            }
            flags |= u8::from(c.password.is_some()) << 6;
            flags |= u8::from(c.username.is_some()) << 7;
            buf.put_u8(flags);
            buf.put_u16(c.keep_alive);
            put_props(buf, &c.properties, v)?;
            wire::put_binary(buf, c.client_id.as_bytes());
            if let Some(w) = &c.will {
                put_props(buf, &w.properties, v)?;
                wire::put_binary(buf, w.topic.as_bytes());
                wire::put_binary(buf, &w.payload);
            }
            if let Some(u) = &c.username {
                wire::put_binary(buf, u.as_bytes());
            }
            if let Some(p) = &c.password {
                wire::put_binary(buf, p);
            }
        }
        Packet::ConnAck(c) => {
            let session_present = c.session_present && version != ProtocolVersion::V31;
            buf.put_u8(u8::from(session_present));
            buf.put_u8(if version.is_v5() {
                c.reason.0
            } else {
                c.reason.to_v3_connack()
            });
            put_props(buf, &c.properties, version)?;
        }
        Packet::Publish(p) => write_publish(p, version, buf)?,
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            buf.put_u16(a.pkid);
            put_reason(buf, a.reason, &a.properties, version)?;
        }
        Packet::Subscribe(s) => {
            buf.put_u16(s.pkid);
            put_props(buf, &s.properties, version)?;
            for f in &s.filters {
                wire::put_binary(buf, f.filter.as_bytes());
                let o = f.options;
                let mut byte = o.qos as u8;
                if version.is_v5() {
                    byte |= (u8::from(o.no_local) << 2)
                        | (u8::from(o.retain_as_published) << 3)
                        | ((o.retain_handling as u8) << 4);
                }
                buf.put_u8(byte);
            }
        }
        Packet::SubAck(s) => {
            buf.put_u16(s.pkid);
            put_props(buf, &s.properties, version)?;
            for r in &s.reasons {
                // v3 knows only granted QoS 0-2 and failure 0x80.
                let code = if version.is_v5() || r.0 <= 2 {
                    r.0
                } else {
                    0x80
                };
                buf.put_u8(code);
            }
        }
        Packet::Unsubscribe(u) => {
            buf.put_u16(u.pkid);
            put_props(buf, &u.properties, version)?;
            for f in &u.filters {
                wire::put_binary(buf, f.as_bytes());
            }
        }
        Packet::UnsubAck(u) => {
            buf.put_u16(u.pkid);
            if version.is_v5() {
                put_props(buf, &u.properties, version)?;
                for r in &u.reasons {
                    buf.put_u8(r.0);
                }
            }
        }
        Packet::PingReq | Packet::PingResp => {}
        Packet::Disconnect(d) => put_reason(buf, d.reason, &d.properties, version)?,
        Packet::Auth(a) => put_reason(buf, a.reason, &a.properties, version)?,
    }
    Ok(())
}
