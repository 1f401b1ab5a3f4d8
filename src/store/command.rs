//! The commands the broker proposes to the store, and their byte layout.

pub(super) const SET_RETAINED: u8 = 1;
const CLEAR_RETAINED: u8 = 2;
const PUT_SESSION: u8 = 3;
const DELETE_SESSION: u8 = 4;
const INBOX_APPEND: u8 = 5;
const INBOX_ACK: u8 = 6;
const INBOX_RELEASE: u8 = 7;
const QOS2_RECEIVED: u8 = 8;
const QOS2_RELEASED: u8 = 9;
const INBOX_APPEND_ONCE: u8 = 10;

/// A change to durable broker state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Stores a retained message record (see the module doc) for its topic.
    SetRetained {
        topic: String,
        record: Vec<u8>,
    },
    ClearRetained {
        topic: String,
    },
    /// Stores a persistent session's record; applied only if `version` is newer than the stored one
    /// (a session's proposals may commit out of order).
    PutSession {
        client_id: String,
        version: u64,
        record: Vec<u8>,
    },
    /// Forgets a session (clean start, expiry); applied only if `version` is newer than the stored one.
    DeleteSession {
        client_id: String,
        version: u64,
    },
    /// A message for a persistent session (see [`encode_delivery`]); applied only while the stored session
    /// is this incarnation. `once`: a QoS 2 message of a persistent publisher (its client id and packet id),
    /// stored at most once per session until that publisher releases the id, so a resend that is routed again
    /// after a crash adds no second copy.
    InboxAppend {
        client_id: String,
        incarnation: u64,
        seq: u64,
        record: Vec<u8>,
        once: Option<(String, u16)>,
    },
    /// QoS 2: the client sent PUBREC for the copy, which it received with packet id `pkid`.
    InboxRelease {
        client_id: String,
        incarnation: u64,
        seq: u64,
        pkid: u16,
    },
    /// A persistent session's client sent a QoS 2 PUBLISH with this packet id, which was routed: until PUBREL
    /// a resend with the id is not routed again, whatever restarts or takeovers come between
    /// [MQTT-4.3.3-9]. Applied only while the session is stored.
    Qos2Received {
        client_id: String,
        pkid: u16,
    },
    /// The client released it (PUBREL): the id is free again.
    Qos2Released {
        client_id: String,
        pkid: u16,
    },
    /// Messages the client acknowledged (or that left the session otherwise): removed from the inbox.
    InboxAck {
        client_id: String,
        incarnation: u64,
        seqs: Vec<u64>,
    },
}

/// Reads the fixed-size fields and length-prefixed strings of an encoded command.
pub(super) struct Reader<'a>(pub(super) &'a [u8]);

impl<'a> Reader<'a> {
    pub(super) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }
    pub(super) fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
    pub(super) fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    pub(super) fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    pub(super) fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    pub(super) fn str32(&mut self) -> Option<String> {
        let n = self.u32()? as usize;
        Some(std::str::from_utf8(self.take(n)?).ok()?.to_string())
    }
    pub(super) fn str16(&mut self) -> Option<String> {
        let n = usize::from(self.u16()?);
        Some(std::str::from_utf8(self.take(n)?).ok()?.to_string())
    }
    pub(super) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
    pub(super) fn rest_str(&mut self) -> Option<String> {
        Some(std::str::from_utf8(self.rest()).ok()?.to_string())
    }
}

fn put_str32(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(&(s.len() as u32).to_be_bytes());
    b.extend_from_slice(s.as_bytes());
}

impl Command {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        match self {
            Command::SetRetained { topic, record } => {
                b.push(SET_RETAINED);
                b.extend_from_slice(&(topic.len() as u32).to_be_bytes());
                b.extend_from_slice(topic.as_bytes());
                b.extend_from_slice(record);
            }
            Command::ClearRetained { topic } => {
                b.push(CLEAR_RETAINED);
                b.extend_from_slice(topic.as_bytes());
            }
            Command::PutSession {
                client_id,
                version,
                record,
            } => {
                b.push(PUT_SESSION);
                b.extend_from_slice(&version.to_be_bytes());
                b.extend_from_slice(&(client_id.len() as u32).to_be_bytes());
                b.extend_from_slice(client_id.as_bytes());
                b.extend_from_slice(record);
            }
            Command::DeleteSession { client_id, version } => {
                b.push(DELETE_SESSION);
                b.extend_from_slice(&version.to_be_bytes());
                b.extend_from_slice(client_id.as_bytes());
            }
            Command::InboxAppend {
                client_id,
                incarnation,
                seq,
                record,
                once,
            } => {
                b.push(if once.is_some() {
                    INBOX_APPEND_ONCE
                } else {
                    INBOX_APPEND
                });
                put_str32(&mut b, client_id);
                b.extend_from_slice(&incarnation.to_be_bytes());
                b.extend_from_slice(&seq.to_be_bytes());
                if let Some((publisher, pkid)) = once {
                    put_str32(&mut b, publisher);
                    b.extend_from_slice(&pkid.to_be_bytes());
                }
                b.extend_from_slice(record);
            }
            Command::InboxRelease {
                client_id,
                incarnation,
                seq,
                pkid,
            } => {
                b.push(INBOX_RELEASE);
                put_str32(&mut b, client_id);
                b.extend_from_slice(&incarnation.to_be_bytes());
                b.extend_from_slice(&seq.to_be_bytes());
                b.extend_from_slice(&pkid.to_be_bytes());
            }
            Command::Qos2Received { client_id, pkid }
            | Command::Qos2Released { client_id, pkid } => {
                b.push(if matches!(self, Command::Qos2Received { .. }) {
                    QOS2_RECEIVED
                } else {
                    QOS2_RELEASED
                });
                b.extend_from_slice(&pkid.to_be_bytes());
                b.extend_from_slice(client_id.as_bytes());
            }
            Command::InboxAck {
                client_id,
                incarnation,
                seqs,
            } => {
                b.push(INBOX_ACK);
                put_str32(&mut b, client_id);
                b.extend_from_slice(&incarnation.to_be_bytes());
                for seq in seqs {
                    b.extend_from_slice(&seq.to_be_bytes());
                }
            }
        }
        b
    }

    pub fn decode(b: &[u8]) -> Option<Command> {
        let (&kind, rest) = b.split_first()?;
        let mut r = Reader(rest);
        match kind {
            SET_RETAINED => Some(Command::SetRetained {
                topic: r.str32()?,
                record: r.rest().to_vec(),
            }),
            CLEAR_RETAINED => Some(Command::ClearRetained {
                topic: r.rest_str()?,
            }),
            PUT_SESSION => {
                let version = r.u64()?;
                Some(Command::PutSession {
                    client_id: r.str32()?,
                    version,
                    record: r.rest().to_vec(),
                })
            }
            DELETE_SESSION => {
                let version = r.u64()?;
                Some(Command::DeleteSession {
                    client_id: r.rest_str()?,
                    version,
                })
            }
            INBOX_APPEND | INBOX_APPEND_ONCE => {
                let client_id = r.str32()?;
                let incarnation = r.u64()?;
                let seq = r.u64()?;
                let once = if kind == INBOX_APPEND_ONCE {
                    Some((r.str32()?, r.u16()?))
                } else {
                    None
                };
                Some(Command::InboxAppend {
                    client_id,
                    incarnation,
                    seq,
                    record: r.rest().to_vec(),
                    once,
                })
            }
            INBOX_RELEASE => {
                let cmd = Command::InboxRelease {
                    client_id: r.str32()?,
                    incarnation: r.u64()?,
                    seq: r.u64()?,
                    pkid: r.u16()?,
                };
                r.0.is_empty().then_some(cmd)
            }
            QOS2_RECEIVED | QOS2_RELEASED => {
                let pkid = r.u16()?;
                let client_id = r.rest_str()?;
                Some(if kind == QOS2_RECEIVED {
                    Command::Qos2Received { client_id, pkid }
                } else {
                    Command::Qos2Released { client_id, pkid }
                })
            }
            INBOX_ACK => {
                let client_id = r.str32()?;
                let incarnation = r.u64()?;
                let mut seqs = Vec::new();
                while !r.0.is_empty() {
                    seqs.push(r.u64()?);
                }
                Some(Command::InboxAck {
                    client_id,
                    incarnation,
                    seqs,
                })
            }
            _ => None,
        }
    }
}
