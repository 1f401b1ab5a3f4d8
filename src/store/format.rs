//! The versioned encoding of everything the store keeps: commands in the raft log and values in sled.
//!
//! Each starts with a format byte ([`FORMAT`]), then a header in postcard (serde's compact binary format),
//! then, for the kinds that carry one, a raw tail (a message as encoded by our MQTT codec) that is neither
//! length-prefixed nor copied into the header: a durable copy is encoded once, straight into the command,
//! and apply borrows the header's strings and the tail from the log entry. A change of a layout is a new
//! format byte, so a build never misreads what another build wrote: it reports [`FormatError::Version`].

use serde::{Deserialize, Serialize};

/// The format this build writes and reads.
/// 2: stored message expiry in unix milliseconds (1: seconds).
pub const FORMAT: u8 = 2;

/// Why stored bytes could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("empty value")]
    Empty,
    #[error("written in format {0}; this build reads format {FORMAT} (a data directory from another release?)")]
    Version(u8),
    #[error("invalid subscription options {0:#04x}")]
    Options(u8),
    #[error("malformed: {0}")]
    Malformed(#[from] postcard::Error),
}

/// Appends `FORMAT` and `header` to a `BytesMut` (where our codec writes), without a buffer of its own.
pub fn encode_into_bytes<T: Serialize>(buf: &mut bytes::BytesMut, header: &T) {
    buf.extend_from_slice(&[FORMAT]);
    // Taking an empty BytesMut allocates nothing; serializing into it cannot fail for our types.
    let taken = std::mem::take(buf);
    *buf = postcard::to_extend(header, taken).expect("postcard into a BytesMut");
}

/// `FORMAT` and `header`, then whatever `tail` writes (our codec writes into a `BytesMut`): the tail is
/// written once, in place, and the buffer becomes the result without a copy.
pub fn encode_with(header: &impl Serialize, tail: impl FnOnce(&mut bytes::BytesMut)) -> Vec<u8> {
    let mut buf = bytes::BytesMut::new();
    encode_into_bytes(&mut buf, header);
    tail(&mut buf);
    buf.into()
}

/// `FORMAT` and `header`, with no tail.
pub fn encode<T: Serialize>(header: &T) -> Vec<u8> {
    encode_with(header, |_| {})
}

/// The header and the tail after it, borrowing from `bytes`.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<(T, &'a [u8]), FormatError> {
    match bytes.split_first() {
        None => Err(FormatError::Empty),
        Some((&FORMAT, rest)) => Ok(postcard::take_from_bytes(rest)?),
        Some((&v, _)) => Err(FormatError::Version(v)),
    }
}

/// The header alone: a tail is an error.
pub fn decode_exact<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, FormatError> {
    match decode(bytes)? {
        (v, []) => Ok(v),
        _ => Err(FormatError::Malformed(
            postcard::Error::DeserializeBadEncoding,
        )),
    }
}
