//! The CONNECT handshake's I/O: reading CONNECT and refusing with the right code (what is negotiated is
//! decided in `connect`).

use super::super::Context;
use crate::protocol::{
    encode, ConnAck, Connect, DecodeError, Decoder, Packet, Properties, ProtocolVersion, ReasonCode,
};
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Why a CONNECT is not accepted.
pub(super) enum Refusal {
    /// Close without a CONNACK (not MQTT, or not CONNECT first [MQTT-3.1.0-1]).
    Silent(String),
    /// Answer with this CONNACK reason, encoded for this protocol level, and close.
    Connack(ReasonCode, ProtocolVersion, String),
}

pub(super) async fn read_connect<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    decoder: &mut Decoder,
    ctx: &Context,
) -> Result<Box<Connect>, Refusal> {
    loop {
        match decoder.decode(buf) {
            Ok(Some(Packet::Connect(c))) => return Ok(c),
            Ok(Some(other)) => {
                return Err(Refusal::Silent(format!(
                    "{:?} before CONNECT",
                    other.kind()
                )))
            }
            Ok(None) => {}
            Err(
                e
                @ (DecodeError::UnsupportedProtocolLevel(_) | DecodeError::InvalidProtocolName(_)),
            ) => {
                // [MQTT-3.1.2-2]: return code 1 in the 3.1.1 form, which every level understands.
                return Err(Refusal::Connack(
                    e.reason_code(),
                    ProtocolVersion::V311,
                    e.to_string(),
                ));
            }
            Err(e) => {
                // A malformed CONNECT: a v5 client is told why (0x81, 0x82, 0x95) when its level is known.
                let v5 = buf.len() > 8 && buf.windows(5).any(|w| w == b"MQTT\x05");
                return Err(if v5 {
                    Refusal::Connack(e.reason_code(), ProtocolVersion::V5, e.to_string())
                } else {
                    Refusal::Silent(e.to_string())
                });
            }
        }
        match rd.read_buf(buf).await {
            Ok(0) => return Err(Refusal::Silent("closed".into())),
            Ok(n) => ctx.metrics.bytes_received.inc_by(n as u64),
            Err(e) => return Err(Refusal::Silent(e.to_string())),
        }
    }
}

pub(super) async fn refuse<W: AsyncWrite + Unpin>(
    wr: &mut W,
    version: ProtocolVersion,
    code: ReasonCode,
    ctx: &Context,
) {
    let mut out = BytesMut::new();
    let ack = Packet::ConnAck(ConnAck {
        session_present: false,
        reason: code,
        properties: Properties::default(),
    });
    if encode(&ack, version, &mut out).is_ok() {
        let _ = wr.write_all(&out).await;
        let _ = wr.shutdown().await;
    }
    ctx.metrics
        .connack
        .with_label_values(&[&format!("{:#04x}", code.0)])
        .inc();
}

/// Some per-process entropy for assigned client ids, without a random-number crate.
pub(super) fn rand_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}
