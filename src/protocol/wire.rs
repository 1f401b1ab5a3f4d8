//! Primitive data types of spec section 1.5: two- and four-byte integers, Variable Byte Integers,
//! UTF-8 Encoded Strings and Binary Data, read from a frozen packet body and written into a `BytesMut`.

use super::{DecodeError, EncodeError};
use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Largest value a Variable Byte Integer can hold (spec 1.5.5).
pub const MAX_VARINT: u32 = 268_435_455;

/// A cursor over one packet's body. Slices of it (payloads, binary data) share the packet's allocation.
pub(crate) struct Reader {
    buf: Bytes,
}

impl Reader {
    pub fn new(buf: Bytes) -> Self {
        Reader { buf }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        if self.buf.is_empty() {
            return Err(DecodeError::Truncated(field));
        }
        Ok(self.buf.get_u8())
    }

    pub fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        if self.buf.len() < 2 {
            return Err(DecodeError::Truncated(field));
        }
        Ok(self.buf.get_u16())
    }

    pub fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        if self.buf.len() < 4 {
            return Err(DecodeError::Truncated(field));
        }
        Ok(self.buf.get_u32())
    }

    /// A Variable Byte Integer; at most four bytes and in minimal form [MQTT-1.5.5-1].
    pub fn varint(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        match read_varint(&self.buf)? {
            Some((value, used)) => {
                self.buf.advance(used);
                Ok(value)
            }
            None => Err(DecodeError::Truncated(field)),
        }
    }

    pub fn binary(&mut self, field: &'static str) -> Result<Bytes, DecodeError> {
        let len = self.u16(field)? as usize;
        self.take(len, field)
    }

    pub fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let raw = self.binary(field)?;
        utf8(&raw)
    }

    pub fn take(&mut self, len: usize, field: &'static str) -> Result<Bytes, DecodeError> {
        if self.buf.len() < len {
            return Err(DecodeError::Truncated(field));
        }
        Ok(self.buf.split_to(len))
    }

    /// Everything that is left (a PUBLISH payload).
    pub fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    pub fn expect_end(&self) -> Result<(), DecodeError> {
        match self.buf.len() {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }
}

/// Validates a UTF-8 Encoded String: well-formed (which excludes surrogates) [MQTT-1.5.4-1] and free of
/// U+0000 [MQTT-1.5.4-2].
pub(crate) fn utf8(raw: &[u8]) -> Result<String, DecodeError> {
    let s = std::str::from_utf8(raw).map_err(|_| DecodeError::InvalidUtf8)?;
    if s.contains('\0') {
        return Err(DecodeError::NullCharacter);
    }
    Ok(s.to_owned())
}

/// Decodes a Variable Byte Integer at the start of `buf`: `Ok(None)` if more bytes are needed, the value
/// and the number of bytes used otherwise.
pub(crate) fn read_varint(buf: &[u8]) -> Result<Option<(u32, usize)>, DecodeError> {
    let mut value: u32 = 0;
    for i in 0..4 {
        let Some(&byte) = buf.get(i) else {
            return Ok(None);
        };
        value |= u32::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            // A final zero byte after a continuation is a non-minimal encoding [MQTT-1.5.5-1].
            if i > 0 && byte == 0 {
                return Err(DecodeError::MalformedVarInt);
            }
            return Ok(Some((value, i + 1)));
        }
    }
    Err(DecodeError::MalformedVarInt)
}

/// Bytes a Variable Byte Integer of this value takes.
pub(crate) fn varint_len(value: u32) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

pub(crate) fn put_varint(buf: &mut BytesMut, mut value: u32) {
    loop {
        let mut byte = (value & 0x7F) as u8;
        value >>= 7;
        if value > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if value == 0 {
            break;
        }
    }
}

/// Length on the wire of a string or binary field, or an error if it is over 65,535 bytes.
pub(crate) fn field_len(len: usize, field: &'static str) -> Result<usize, EncodeError> {
    if len > usize::from(u16::MAX) {
        return Err(EncodeError::FieldTooLong(field));
    }
    Ok(2 + len)
}

/// Writes a length-prefixed field; its length was checked by [`field_len`] when the packet was sized.
pub(crate) fn put_binary(buf: &mut BytesMut, data: &[u8]) {
    buf.put_u16(data.len() as u16);
    buf.put_slice(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_boundaries_round_trip() {
        for value in [
            0, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, MAX_VARINT,
        ] {
            let mut buf = BytesMut::new();
            put_varint(&mut buf, value);
            assert_eq!(buf.len(), varint_len(value));
            assert_eq!(read_varint(&buf).unwrap(), Some((value, buf.len())));
        }
    }

    #[test]
    fn mqtt_1_5_5_1_varint_must_be_minimal_and_at_most_four_bytes() {
        assert_eq!(
            read_varint(&[0x80, 0x00]),
            Err(DecodeError::MalformedVarInt)
        );
        assert_eq!(
            read_varint(&[0xFF, 0xFF, 0xFF, 0xFF, 0x01]),
            Err(DecodeError::MalformedVarInt)
        );
        assert_eq!(read_varint(&[0x80, 0x80]), Ok(None));
    }

    #[test]
    fn mqtt_1_5_4_strings_reject_null_and_ill_formed_utf8() {
        assert_eq!(utf8(b"a\0b"), Err(DecodeError::NullCharacter));
        // An encoded UTF-16 surrogate (U+D800) is not well-formed UTF-8.
        assert_eq!(utf8(&[0xED, 0xA0, 0x80]), Err(DecodeError::InvalidUtf8));
        assert_eq!(utf8("héllo".as_bytes()).unwrap(), "héllo");
    }
}
