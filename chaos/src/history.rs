//! The history of a run: every operation of the workload with its outcome and time, every fault of the
//! nemesis, every observation of the nodes. One JSON object per line (`history.jsonl`); the checker judges
//! a history alone, so a saved one can be judged again (`cicada-chaos check`).
//!
//! Times are milliseconds since the run started, read from one monotonic clock in the chaos process, so
//! "before" and "after" between records of different clients are real orderings (a publish sent after a
//! CONNACK was received was read by the broker after it sent that CONNACK).

use serde::{Deserialize, Serialize};
use std::io::{self, BufRead, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A node of the cluster under test, 1-based.
pub type NodeId = u8;

/// One line of the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Milliseconds since the run started, when the record was made (the operation's completion).
    pub t: u64,
    #[serde(flatten)]
    pub event: Event,
}

/// Where a client connected: straight to a node, or through HAProxy (which picks the node).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    Node(NodeId),
    Haproxy,
}

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Acknowledged with success (CONNACK 0, SUBACK granted, PUBACK/PUBCOMP below 0x80).
    Ok,
    /// Refused by the broker with this reason or return code.
    Refused { code: u8 },
    /// No answer within the workload's deadline: the operation may or may not have taken effect.
    Timeout,
    /// The connection failed before an answer (network error, connection lost): indeterminate.
    Failed { reason: String },
}

impl Outcome {
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok)
    }
}

/// The kinds of fault the nemesis injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// kill -9 of a random node, restarted when the fault heals.
    Kill,
    /// kill -9 of the raft leader.
    KillLeader,
    /// kill -9 of the node that owns a given persistent session.
    KillOwner,
    /// SIGSTOP, then SIGCONT when the fault heals.
    Pause,
    /// One node cut off from the other two (network namespaces only).
    Partition,
    /// Delay, loss and reordering on every node's link (tc netem; network namespaces only).
    Netem,
    /// Every node drained (`cicada ctl drain`) and restarted, one at a time.
    Rolling,
    /// One node's wall clock moved forward or back (libfaketime), set right when the fault heals.
    ClockJump,
}

impl FaultKind {
    pub const ALL: [FaultKind; 8] = [
        FaultKind::Kill,
        FaultKind::KillLeader,
        FaultKind::KillOwner,
        FaultKind::Pause,
        FaultKind::Partition,
        FaultKind::Netem,
        FaultKind::Rolling,
        FaultKind::ClockJump,
    ];

    /// Whether the fault needs network namespaces (it acts on links, not processes).
    pub fn needs_namespaces(self) -> bool {
        matches!(self, FaultKind::Partition | FaultKind::Netem)
    }

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::KillLeader => "kill_leader",
            FaultKind::KillOwner => "kill_owner",
            FaultKind::Pause => "pause",
            FaultKind::Partition => "partition",
            FaultKind::Netem => "netem",
            FaultKind::Rolling => "rolling",
            FaultKind::ClockJump => "clock_jump",
        }
    }

    /// The kind named `s` (as in `--faults kill,partition`); `None` for an unknown name.
    pub fn parse(s: &str) -> Option<FaultKind> {
        FaultKind::ALL.into_iter().find(|k| k.name() == s)
    }
}

/// The promises of ARCHITECTURE §5, one verdict each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Promise {
    /// 1. Acknowledged QoS 1/2 messages reach their persistent subscribers (QoS 2 exactly once).
    AckedDelivered,
    /// 2. Acknowledged retained messages are seen by later subscribers; no node goes back in time.
    Retained,
    /// 3. Persistent sessions survive the loss of a minority.
    SessionsSurvive,
    /// 4. At most one live connection per client id.
    SingleConnection,
    /// 5. Bad input affects only its client.
    BadInputIsolated,
    /// 6. A node restarted after kill -9 rejoins and catches up.
    Rejoin,
}

impl Promise {
    pub const ALL: [Promise; 6] = [
        Promise::AckedDelivered,
        Promise::Retained,
        Promise::SessionsSurvive,
        Promise::SingleConnection,
        Promise::BadInputIsolated,
        Promise::Rejoin,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Promise::AckedDelivered => "acked_delivered",
            Promise::Retained => "retained",
            Promise::SessionsSurvive => "sessions_survive",
            Promise::SingleConnection => "single_connection",
            Promise::BadInputIsolated => "bad_input_isolated",
            Promise::Rejoin => "rejoin",
        }
    }
}

/// What a misbehaving client sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BadKind {
    /// Bytes that are not MQTT (a bad packet type or remaining length).
    Garbage,
    /// A PUBLISH whose topic has a wildcard (protocol error, 0x82 / 0x90).
    WildcardTopic,
    /// A packet larger than the broker's maximum packet size (0x95).
    Oversized,
    /// A second CONNECT on one connection (protocol error).
    SecondConnect,
    /// PUBLISHes as fast as the socket takes them, never reading.
    Flood,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// The run began.
    Start {
        seed: u64,
        nodes: u8,
        /// Whether the nodes run in network namespaces (else on 127.0.0.x).
        namespaces: bool,
        faults: Vec<FaultKind>,
    },
    /// A CONNECT's outcome. `conn` numbers the connections of the whole run (unique per connection, in
    /// the order they were opened).
    Connect {
        client: String,
        conn: u64,
        via: Via,
        clean_start: bool,
        /// When the CONNECT was sent (ms since the start).
        sent: u64,
        #[serde(flatten)]
        outcome: Outcome,
        /// CONNACK's Session Present, when the connect succeeded.
        session_present: Option<bool>,
    },
    /// A connection ended without the client asking: `code` is the DISCONNECT reason when the server sent
    /// one (0x8E taken over, 0x8B shutting down, ...), `None` when the connection was just lost.
    Disconnected {
        client: String,
        conn: u64,
        code: Option<u8>,
        reason: String,
    },
    /// A SUBSCRIBE's outcome.
    Subscribe {
        client: String,
        conn: u64,
        filter: String,
        qos: u8,
        sent: u64,
        #[serde(flatten)]
        outcome: Outcome,
    },
    /// A PUBLISH of message `seq` of `publisher` (sequence numbers count up from 1 per publisher, one per
    /// attempt: a message is never published twice under one number).
    Publish {
        client: String,
        conn: u64,
        publisher: String,
        seq: u64,
        topic: String,
        qos: u8,
        retain: bool,
        sent: u64,
        #[serde(flatten)]
        outcome: Outcome,
    },
    /// A message handed to the application of subscriber `client` (after the client's own QoS 2
    /// de-duplication). `publisher`/`seq` come from the payload.
    Deliver {
        client: String,
        conn: u64,
        publisher: String,
        seq: u64,
        topic: String,
        qos: u8,
        dup: bool,
        retain: bool,
    },
    /// What a fresh subscriber on `node` got for retained `topic`: the sequence number of the retained
    /// message's writer, or `None` when nothing came within the wait. The SUBSCRIBE was sent at `sent`.
    RetainedRead {
        client: String,
        node: NodeId,
        topic: String,
        sent: u64,
        seq: Option<u64>,
    },
    /// A fault began (`phase = start`) or was healed (`phase = end`). `targets` are the nodes it acted on.
    Fault {
        kind: FaultKind,
        phase: FaultPhase,
        targets: Vec<NodeId>,
        detail: String,
    },
    /// A persistent session connect made only to measure availability (through HAProxy unless `via` says).
    Probe { via: Via, ok: bool, latency_ms: u64 },
    /// A node restarted after a fault (kill, pause, rolling restart) and checked for catching up: `ok` when
    /// it answered `/ready` 200 with an applied index at least `target` (the leader's commit index when it
    /// came back) within the nemesis's bound.
    Rejoin {
        node: NodeId,
        ok: bool,
        applied: u64,
        target: u64,
        ms: u64,
    },
    /// A misbehaving client's attempt and what the broker did: `closed` when it closed the connection,
    /// `code` the reason code it sent (CONNACK or DISCONNECT), if any.
    BadClient {
        client: String,
        node: NodeId,
        kind: BadKind,
        closed: bool,
        code: Option<u8>,
        ms: u64,
    },
    /// The run ended (faults healed, subscribers drained).
    End { rounds: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultPhase {
    Start,
    End,
}

/// Records events with their time, in memory and to `history.jsonl`. Cheap to clone; every clone shares
/// one clock and one file.
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<Mutex<Inner>>,
    start: Instant,
}

struct Inner {
    records: Vec<Record>,
    file: Option<io::BufWriter<std::fs::File>>,
    /// Set by [`Recorder::seal`]: later records are dropped, so the file and the judged records agree.
    sealed: bool,
}

impl Recorder {
    /// A recorder whose clock starts now, writing to `path` when given.
    pub fn new(path: Option<&Path>) -> io::Result<Recorder> {
        let file = match path {
            Some(p) => Some(io::BufWriter::new(std::fs::File::create(p)?)),
            None => None,
        };
        Ok(Recorder {
            inner: Arc::new(Mutex::new(Inner {
                records: Vec::new(),
                file,
                sealed: false,
            })),
            // The chaos process's own monotonic clock, for the history's times (not the broker's).
            start: Instant::now(),
        })
    }

    /// Milliseconds since the run started.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Records `event` now.
    pub fn record(&self, event: Event) {
        let record = Record {
            t: self.now(),
            event,
        };
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.sealed {
            return;
        }
        if let Some(f) = inner.file.as_mut() {
            // A history that cannot be written is reported at the end (flush); the run goes on.
            let _ = serde_json::to_writer(&mut *f, &record).map_err(io::Error::from);
            let _ = f.write_all(b"\n");
        }
        inner.records.push(record);
    }

    /// Ends the history: records made after this (a client task still winding down) are dropped.
    pub fn seal(&self) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).sealed = true;
    }

    /// Every record so far, in the order recorded.
    pub fn snapshot(&self) -> Vec<Record> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .records
            .clone()
    }

    /// Writes what is buffered to the file.
    pub fn flush(&self) -> io::Result<()> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match inner.file.as_mut() {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

/// Why a saved history could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{path}:{line}: not a history record: {source}")]
    Parse {
        path: String,
        line: usize,
        source: serde_json::Error,
    },
}

/// Reads a history written by [`Recorder`]; blank lines are skipped.
pub fn load(path: &Path) -> Result<Vec<Record>, HistoryError> {
    let shown = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| HistoryError::Io {
        path: shown.clone(),
        source,
    })?;
    let mut records = Vec::new();
    for (i, line) in io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|source| HistoryError::Io {
            path: shown.clone(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let record = serde_json::from_str(&line).map_err(|source| HistoryError::Parse {
            path: shown.clone(),
            line: i + 1,
            source,
        })?;
        records.push(record);
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_through_one_json_line() {
        let r = Record {
            t: 12,
            event: Event::Publish {
                client: "p1".into(),
                conn: 3,
                publisher: "p1".into(),
                seq: 7,
                topic: "chaos/data/p1".into(),
                qos: 1,
                retain: false,
                sent: 10,
                outcome: Outcome::Refused { code: 0x97 },
            },
        };
        let line = serde_json::to_string(&r).unwrap();
        assert!(line.contains("\"type\":\"publish\""), "{line}");
        assert!(line.contains("\"outcome\":\"refused\""), "{line}");
        assert_eq!(serde_json::from_str::<Record>(&line).unwrap(), r);
    }

    #[test]
    fn a_saved_history_loads_and_a_bad_line_names_its_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.jsonl");
        let rec = Recorder::new(Some(&path)).unwrap();
        rec.record(Event::End { rounds: 2 });
        rec.flush().unwrap();
        let loaded = load(&path).unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].event, Event::End { rounds: 2 });
        std::fs::write(&path, "\n{\"t\":1,\"type\":\"nope\"}\n").unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("h.jsonl:2:"), "{e}");
    }

    #[test]
    fn fault_kinds_parse_by_name() {
        for k in FaultKind::ALL {
            assert_eq!(FaultKind::parse(k.name()), Some(k));
        }
        assert_eq!(FaultKind::parse("meteor"), None);
    }
}
