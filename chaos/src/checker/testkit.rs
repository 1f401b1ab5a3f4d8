//! Hand-written histories for the checker's tests: one call per record, in the order recorded.

use crate::history::{BadKind, Event, FaultKind, FaultPhase, NodeId, Outcome, Record, Via};

/// A history under construction. Operations succeed, connect via node 1 and were sent 1 ms before their
/// record unless a modifier ([`History::outcome`], [`History::via`], ...) changes the last record.
#[derive(Default)]
pub(crate) struct History {
    records: Vec<Record>,
}

/// The data topic of `publisher`.
pub(crate) fn data(publisher: &str) -> String {
    format!("chaos/data/{publisher}")
}

pub(crate) fn refused(code: u8) -> Outcome {
    Outcome::Refused { code }
}

pub(crate) fn timeout() -> Outcome {
    Outcome::Timeout
}

pub(crate) fn failed() -> Outcome {
    Outcome::Failed {
        reason: "connection reset".into(),
    }
}

impl History {
    pub fn new() -> History {
        History::default()
    }

    pub fn records(self) -> Vec<Record> {
        self.records
    }

    pub fn push(mut self, t: u64, event: Event) -> History {
        self.records.push(Record { t, event });
        self
    }

    pub fn connect(
        self,
        t: u64,
        client: &str,
        conn: u64,
        clean_start: bool,
        session_present: Option<bool>,
    ) -> History {
        self.push(
            t,
            Event::Connect {
                client: client.into(),
                conn,
                via: Via::Node(1),
                clean_start,
                sent: t.saturating_sub(1),
                outcome: Outcome::Ok,
                session_present,
            },
        )
    }

    pub fn subscribe(self, t: u64, client: &str, conn: u64, filter: &str, qos: u8) -> History {
        self.push(
            t,
            Event::Subscribe {
                client: client.into(),
                conn,
                filter: filter.into(),
                qos,
                sent: t.saturating_sub(1),
                outcome: Outcome::Ok,
            },
        )
    }

    /// Message `seq` of `publisher` (who is also the client) on its data topic, acknowledged at `t`.
    pub fn publish(
        self,
        t: u64,
        sent: u64,
        publisher: &str,
        conn: u64,
        seq: u64,
        qos: u8,
    ) -> History {
        self.push(
            t,
            Event::Publish {
                client: publisher.into(),
                conn,
                publisher: publisher.into(),
                seq,
                topic: data(publisher),
                qos,
                retain: false,
                sent,
                outcome: Outcome::Ok,
            },
        )
    }

    /// Retained message `seq` of `writer` on `topic` (QoS 1), acknowledged at `t`.
    pub fn retain(self, t: u64, writer: &str, conn: u64, topic: &str, seq: u64) -> History {
        self.push(
            t,
            Event::Publish {
                client: writer.into(),
                conn,
                publisher: writer.into(),
                seq,
                topic: topic.into(),
                qos: 1,
                retain: true,
                sent: t.saturating_sub(1),
                outcome: Outcome::Ok,
            },
        )
    }

    /// Message `seq` of `publisher` handed to `client`, from the publisher's data topic, at the QoS of its
    /// latest PUBLISH recorded so far (QoS 1 when there is none); [`History::qos`] changes it.
    pub fn deliver(self, t: u64, client: &str, conn: u64, publisher: &str, seq: u64) -> History {
        let qos = self
            .records
            .iter()
            .rev()
            .find_map(|r| match &r.event {
                Event::Publish {
                    publisher: p,
                    seq: s,
                    qos,
                    ..
                } if p == publisher && *s == seq => Some(*qos),
                _ => None,
            })
            .unwrap_or(1);
        self.push(
            t,
            Event::Deliver {
                client: client.into(),
                conn,
                publisher: publisher.into(),
                seq,
                topic: data(publisher),
                qos,
                dup: false,
                retain: false,
            },
        )
    }

    pub fn read(
        self,
        t: u64,
        client: &str,
        node: NodeId,
        topic: &str,
        sent: u64,
        seq: Option<u64>,
    ) -> History {
        self.push(
            t,
            Event::RetainedRead {
                client: client.into(),
                node,
                topic: topic.into(),
                sent,
                seq,
            },
        )
    }

    pub fn fault(self, t: u64, kind: FaultKind, phase: FaultPhase, targets: &[NodeId]) -> History {
        self.push(
            t,
            Event::Fault {
                kind,
                phase,
                targets: targets.to_vec(),
                detail: String::new(),
            },
        )
    }

    pub fn disconnected(self, t: u64, client: &str, conn: u64, code: Option<u8>) -> History {
        self.push(
            t,
            Event::Disconnected {
                client: client.into(),
                conn,
                code,
                reason: "gone".into(),
            },
        )
    }

    pub fn bad(
        self,
        t: u64,
        client: &str,
        kind: BadKind,
        closed: bool,
        code: Option<u8>,
    ) -> History {
        self.push(
            t,
            Event::BadClient {
                client: client.into(),
                node: 2,
                kind,
                closed,
                code,
                ms: 5,
            },
        )
    }

    pub fn probe(self, t: u64, ok: bool) -> History {
        self.push(
            t,
            Event::Probe {
                via: Via::Haproxy,
                ok,
                latency_ms: 3,
            },
        )
    }

    /// Changes the outcome of the last record (a connect, subscribe or publish).
    pub fn outcome(mut self, new: Outcome) -> History {
        if let Some(Record { event, .. }) = self.records.last_mut() {
            match event {
                Event::Connect { outcome, .. }
                | Event::Subscribe { outcome, .. }
                | Event::Publish { outcome, .. } => *outcome = new,
                _ => panic!("the last record has no outcome"),
            }
        }
        self
    }

    /// Changes where the last record (a connect or probe) connected.
    pub fn via(mut self, new: Via) -> History {
        if let Some(Record { event, .. }) = self.records.last_mut() {
            match event {
                Event::Connect { via, .. } | Event::Probe { via, .. } => *via = new,
                _ => panic!("the last record has no via"),
            }
        }
        self
    }

    /// Changes the QoS of the last record (a publish or deliver).
    pub fn qos(mut self, new: u8) -> History {
        if let Some(Record { event, .. }) = self.records.last_mut() {
            match event {
                Event::Publish { qos, .. } | Event::Deliver { qos, .. } => *qos = new,
                _ => panic!("the last record has no QoS"),
            }
        }
        self
    }

    /// Changes the topic of the last record (a publish or deliver).
    pub fn topic(mut self, new: &str) -> History {
        if let Some(Record { event, .. }) = self.records.last_mut() {
            match event {
                Event::Publish { topic, .. } | Event::Deliver { topic, .. } => *topic = new.into(),
                _ => panic!("the last record has no topic"),
            }
        }
        self
    }
}
