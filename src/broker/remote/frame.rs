//! The frames brokers send each other on the peer link's application lane. Version byte first, so a node
//! never misreads a frame of another release: it counts and drops it.
//!
//! `FORWARD`: a message published on the sending node, for the receiver's local subscribers: the shared
//! groups it is to deliver to (postcard), then the message as the store encodes a retained one (its expiry
//! and an MQTT 5 PUBLISH: every property survives).
//!
//! `SYNC` (id, index): "answer once you have applied the log up to `index`"; `SYNCED` (id) is the answer.
//! A SUBACK whose route is new waits for them, so every node routes by the new route before the client
//! can publish to it.
//!
//! `FORWARD_ANSWERED` (id, then a `FORWARD`'s body): a forward that names shared groups for a QoS 1/2 message
//! whose publisher waits for its copies: the receiver answers `FORWARD_ACK` (id, outcome) once the group's
//! copy is stored (a persistent member) or handed over (a clean one), so the publisher is acknowledged only
//! then (issue 12: a QoS 1/2 publish matching a persistent session is stored before it is acknowledged,
//! shared groups included). A kind of its own, so a node of an earlier build still reads every other frame
//! during a rolling upgrade; it drops this one as unknown, and the publisher, never answered, is refused.
//!
//! `RELEASE` (id, index, client id): as `SYNC`, and once applied the receiver's registry has ended its
//! session for the client if another node now holds it (its connection closed, 0x8E, and settled) before
//! `SYNCED` goes back. A takeover's CONNACK waits for it (one live connection per client id).

use super::plan::GroupRef;
use crate::broker::message::Message;
use crate::broker::ticket::AckOutcome;
use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

const VERSION: u8 = 2;
const FORWARD: u8 = 1;
const SYNC: u8 = 2;
const SYNCED: u8 = 3;
const RELEASE: u8 = 4;
const FORWARD_ACK: u8 = 5;
const FORWARD_ANSWERED: u8 = 6;
/// A client id is at most 65535 bytes (MQTT's string length).
const MAX_CLIENT_ID: usize = 65_535;

#[derive(Serialize, Deserialize)]
struct ForwardHeader<'a> {
    #[serde(borrow)]
    groups: Vec<(&'a str, &'a str)>,
    /// A persistent publisher's QoS 2 message: (its client id, packet id), so persistent subscribers on the
    /// receiving node store it at most once too (see `Message::qos2_origin`).
    #[serde(borrow)]
    origin: Option<(&'a str, u16)>,
    /// The sending node proposed the message's fan-out to persistent sessions through the store (see
    /// `Message::stored_fanout`).
    fanout: bool,
}

/// Why a frame was not understood.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame version {0}; this build speaks {VERSION}")]
    Version(u8),
    #[error("unknown frame kind {0}")]
    Kind(u8),
    #[error("malformed frame")]
    Malformed,
    #[error("the message expired on its way")]
    Expired,
}

/// A frame as received.
#[derive(Debug)]
pub enum Frame {
    Forward {
        message: Box<Message>,
        groups: Vec<GroupRef>,
        ack: Option<u64>,
    },
    ForwardAck {
        id: u64,
        outcome: AckOutcome,
    },
    Sync {
        id: u64,
        index: u64,
    },
    Synced {
        id: u64,
    },
    Release {
        id: u64,
        index: u64,
        client_id: String,
    },
}

pub fn release(id: u64, index: u64, client_id: &str) -> Bytes {
    let id_bytes = &client_id.as_bytes()[..client_id.len().min(MAX_CLIENT_ID)];
    let mut buf = BytesMut::with_capacity(18 + id_bytes.len());
    buf.put_u8(VERSION);
    buf.put_u8(RELEASE);
    buf.put_u64(id);
    buf.put_u64(index);
    buf.put_slice(id_bytes);
    buf.freeze()
}

pub fn sync(id: u64, index: u64) -> Bytes {
    let mut buf = BytesMut::with_capacity(18);
    buf.put_u8(VERSION);
    buf.put_u8(SYNC);
    buf.put_u64(id);
    buf.put_u64(index);
    buf.freeze()
}

pub fn synced(id: u64) -> Bytes {
    let mut buf = BytesMut::with_capacity(10);
    buf.put_u8(VERSION);
    buf.put_u8(SYNCED);
    buf.put_u64(id);
    buf.freeze()
}

fn u64_at(b: &[u8], at: usize) -> Result<u64, FrameError> {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or(FrameError::Malformed)
}

pub fn forward_ack(id: u64, outcome: AckOutcome) -> Bytes {
    let mut buf = BytesMut::with_capacity(11);
    buf.put_u8(VERSION);
    buf.put_u8(FORWARD_ACK);
    buf.put_u64(id);
    buf.put_u8(match outcome {
        AckOutcome::Stored => 0,
        AckOutcome::QuotaExceeded => 1,
        AckOutcome::Failed => 2,
    });
    buf.freeze()
}

/// A `FORWARD`, or with `ack` a `FORWARD_ANSWERED` the receiver answers with that id.
pub fn forward(message: &Message, groups: &[GroupRef], ack: Option<u64>) -> Bytes {
    let mut buf = BytesMut::with_capacity(message.payload.len() + message.topic.len() + 72);
    buf.put_u8(VERSION);
    match ack {
        None => buf.put_u8(FORWARD),
        Some(id) => {
            buf.put_u8(FORWARD_ANSWERED);
            buf.put_u64(id);
        }
    }
    let header = ForwardHeader {
        groups: groups.iter().map(|(f, g)| (&**f, &**g)).collect(),
        origin: message
            .qos2_origin
            .as_ref()
            .map(|o| (o.client_id.as_str(), o.pkid)),
        fanout: message.stored_fanout,
    };
    let taken = std::mem::take(&mut buf);
    buf = postcard::to_extend(&header, taken).expect("postcard into a BytesMut");
    crate::store::put_record(&mut buf, message);
    buf.freeze()
}

/// A `FORWARD`'s body: its header, then the message.
fn decode_forward(rest: &[u8], ack: Option<u64>) -> Result<Frame, FrameError> {
    let (h, tail): (ForwardHeader<'_>, &[u8]) =
        postcard::take_from_bytes(rest).map_err(|_| FrameError::Malformed)?;
    // An expired message and a broken one both decode to nothing: tell them apart by the header.
    let mut message = crate::store::decode_record(tail).ok_or(if tail.len() > 2 {
        FrameError::Expired
    } else {
        FrameError::Malformed
    })?;
    message.stored_fanout = h.fanout;
    message.qos2_origin = h.origin.map(|(client_id, pkid)| {
        std::sync::Arc::new(crate::broker::message::Qos2Origin {
            client_id: client_id.to_string(),
            pkid,
        })
    });
    Ok(Frame::Forward {
        message: Box::new(message),
        groups: h
            .groups
            .into_iter()
            .map(|(f, g)| (f.into(), g.into()))
            .collect(),
        ack,
    })
}

pub fn decode(frame: &[u8]) -> Result<Frame, FrameError> {
    match frame {
        [VERSION, FORWARD, rest @ ..] => decode_forward(rest, None),
        [VERSION, FORWARD_ANSWERED, rest @ ..] => decode_forward(
            rest.get(8..).ok_or(FrameError::Malformed)?,
            Some(u64_at(rest, 0)?),
        ),
        [VERSION, FORWARD_ACK, rest @ ..] if rest.len() == 9 => Ok(Frame::ForwardAck {
            id: u64_at(rest, 0)?,
            outcome: match rest[8] {
                0 => AckOutcome::Stored,
                1 => AckOutcome::QuotaExceeded,
                2 => AckOutcome::Failed,
                _ => return Err(FrameError::Malformed),
            },
        }),
        [VERSION, SYNC, rest @ ..] if rest.len() == 16 => Ok(Frame::Sync {
            id: u64_at(rest, 0)?,
            index: u64_at(rest, 8)?,
        }),
        [VERSION, SYNCED, rest @ ..] if rest.len() == 8 => Ok(Frame::Synced {
            id: u64_at(rest, 0)?,
        }),
        [VERSION, RELEASE, rest @ ..] if rest.len() >= 16 && rest.len() <= 16 + MAX_CLIENT_ID => {
            Ok(Frame::Release {
                id: u64_at(rest, 0)?,
                index: u64_at(rest, 8)?,
                client_id: std::str::from_utf8(&rest[16..])
                    .map_err(|_| FrameError::Malformed)?
                    .to_string(),
            })
        }
        [VERSION, SYNC | SYNCED | RELEASE | FORWARD_ACK, ..] => Err(FrameError::Malformed),
        [VERSION, kind, ..] => Err(FrameError::Kind(*kind)),
        [v, ..] => Err(FrameError::Version(*v)),
        [] => Err(FrameError::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Properties, QoS};
    use std::time::{Duration, Instant};

    #[test]
    fn a_forwarded_message_keeps_its_properties_flags_expiry_and_groups() {
        let mut properties = Properties::default();
        properties.user_properties.push(("k".into(), "v".into()));
        properties.content_type = Some("text/plain".into());
        let m = Message {
            topic: "device/7/status".into(),
            payload: Bytes::from_static(b"online"),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties,
            expires_at: Some(Instant::now() + Duration::from_secs(100)),
            publisher: Some(9),
            received: Instant::now(),
            stored_fanout: true,
            qos2_origin: Some(std::sync::Arc::new(crate::broker::message::Qos2Origin {
                client_id: "publisher-1".into(),
                pkid: 77,
            })),
        };
        let groups: Vec<GroupRef> = vec![("device/+/status".into(), "workers".into())];
        let Ok(Frame::Forward {
            message,
            groups: g,
            ack,
        }) = decode(&forward(&m, &groups, Some(41)))
        else {
            panic!("a forward decodes as one");
        };
        assert_eq!((g, ack), (groups.clone(), Some(41)));
        // Without an answer id: the frame an earlier build reads.
        let plain = forward(&m, &groups, None);
        assert_eq!(plain[..2], [2, FORWARD]);
        assert!(matches!(
            decode(&plain),
            Ok(Frame::Forward { ack: None, .. })
        ));
        assert_eq!(
            decode(&[VERSION, FORWARD_ANSWERED, 1, 2]).unwrap_err(),
            FrameError::Malformed
        );
        assert_eq!(
            (
                message.topic.as_str(),
                &message.payload[..],
                message.qos,
                message.retain
            ),
            ("device/7/status", &b"online"[..], QoS::ExactlyOnce, true)
        );
        assert_eq!(
            message.properties.user_properties,
            m.properties.user_properties
        );
        assert_eq!(
            message.properties.content_type.as_deref(),
            Some("text/plain")
        );
        assert_eq!(
            message.publisher, None,
            "a session id means nothing on another node"
        );
        assert!(message.stored_fanout, "persistent sessions there skip it");
        let left = message.expires_at.unwrap() - Instant::now();
        assert!(
            left > Duration::from_secs(90) && left <= Duration::from_secs(101),
            "{left:?}"
        );
    }

    #[test]
    fn frames_of_another_version_or_kind_and_garbage_are_errors() {
        assert_eq!(decode(&[]).unwrap_err(), FrameError::Malformed);
        assert_eq!(decode(&[9, 1]).unwrap_err(), FrameError::Version(9));
        assert_eq!(decode(&[VERSION, 7]).unwrap_err(), FrameError::Kind(7));
        assert_eq!(
            decode(&[VERSION, SYNC, 1]).unwrap_err(),
            FrameError::Malformed
        );
        assert!(matches!(
            decode(&sync(7, 99)),
            Ok(Frame::Sync { id: 7, index: 99 })
        ));
        assert!(matches!(decode(&synced(7)), Ok(Frame::Synced { id: 7 })));
        for outcome in [
            AckOutcome::Stored,
            AckOutcome::QuotaExceeded,
            AckOutcome::Failed,
        ] {
            match decode(&forward_ack(7, outcome)) {
                Ok(Frame::ForwardAck { id: 7, outcome: o }) => assert_eq!(o, outcome),
                other => panic!("{other:?}"),
            }
        }
        let mut bad = forward_ack(7, AckOutcome::Stored).to_vec();
        *bad.last_mut().unwrap() = 9;
        assert_eq!(decode(&bad).unwrap_err(), FrameError::Malformed);
        assert_eq!(
            decode(&[VERSION, FORWARD_ACK, 1]).unwrap_err(),
            FrameError::Malformed
        );
        match decode(&release(7, 99, "dev-1")) {
            Ok(Frame::Release {
                id: 7,
                index: 99,
                client_id,
            }) => assert_eq!(client_id, "dev-1"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            decode(&[VERSION, RELEASE, 1, 2]).unwrap_err(),
            FrameError::Malformed
        );
        assert_eq!(
            decode(&[VERSION, FORWARD, 0xff, 0xff]).unwrap_err(),
            FrameError::Malformed
        );
    }
}
