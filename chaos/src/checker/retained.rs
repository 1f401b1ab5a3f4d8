//! Promise 2: an acknowledged retained message is seen by every later subscriber on every node, and no
//! node serves a retained value older than one it has already served.
//!
//! Monotonic: a read on node n whose SUBSCRIBE was sent after an earlier read on n (of the same topic)
//! completed must see a sequence number at least as high ("nothing" is below every number). Fresh: a read
//! whose SUBSCRIBE was sent after a retained PUBLISH of that topic was acknowledged must see at least that
//! message.
//!
//! A read that got nothing while a fault was active is not judged (for either rule): a node without a
//! leader defers retained deliveries rather than serve values it cannot vouch for, and the reader gives up
//! after a few seconds. That is a read whose span from its SUBSCRIBE to its record overlaps a fault window
//! (the shared windows: from just before the fault's start to `GRACE_MS` (10 s) after its heal or the
//! rejoin of its nodes). A stale value (a number lower than required) is always judged, in or out of
//! faults. `checked` counts the reads judged.

use super::windows::{FaultWindows, GRACE_MS};
use super::{Verdict, Violation};
use crate::history::{Event, NodeId, Outcome, Promise, Record};
use std::collections::HashMap;

/// One retained read.
struct Read<'a> {
    t: u64,
    client: &'a str,
    node: NodeId,
    topic: &'a str,
    sent: u64,
    seq: Option<u64>,
}

/// The highest sequence number seen up to a time, and where it was seen.
#[derive(Clone, Copy)]
struct Best<'a> {
    seq: u64,
    /// When it was seen (acknowledged or served).
    at: u64,
    client: &'a str,
}

/// Something seen at a time: a retained message acknowledged, or a read (`seq` is `None` when it got
/// nothing).
struct Seen<'a> {
    t: u64,
    seq: Option<u64>,
    client: &'a str,
}

/// Events ordered by time with the running maximum of their sequence numbers, to ask "what is the highest
/// number seen before t".
#[derive(Default)]
struct Timeline<'a> {
    events: Vec<Seen<'a>>,
    best: Vec<Option<Best<'a>>>,
}

impl<'a> Timeline<'a> {
    fn push(&mut self, seen: Seen<'a>) {
        self.events.push(seen);
    }

    /// Orders the events and computes the running maximum; call once, after the last push.
    fn seal(&mut self) {
        self.events.sort_by_key(|e| e.t);
        let mut best: Option<Best> = None;
        self.best = self
            .events
            .iter()
            .map(|e| {
                if let Some(s) = e.seq {
                    if best.is_none_or(|b| s > b.seq) {
                        best = Some(Best {
                            seq: s,
                            at: e.t,
                            client: e.client,
                        });
                    }
                }
                best
            })
            .collect();
    }

    /// The highest number among the events recorded strictly before `before`.
    fn best_before(&self, before: u64) -> Option<Best<'a>> {
        let n = self.events.partition_point(|e| e.t < before);
        n.checked_sub(1)
            .and_then(|i| self.best.get(i).copied().flatten())
    }
}

fn shown(seq: Option<u64>) -> String {
    seq.map_or_else(|| "nothing".to_string(), |s| format!("#{s}"))
}

/// Judges promise 2.
pub(crate) fn check(records: &[Record]) -> Verdict {
    let windows = FaultWindows::new(records, GRACE_MS);
    let mut reads = Vec::new();
    let mut acked: HashMap<&str, Timeline> = HashMap::new();
    for r in records {
        match &r.event {
            Event::RetainedRead {
                client,
                node,
                topic,
                sent,
                seq,
            } if seq.is_some() || !windows.overlaps(*sent, r.t) => reads.push(Read {
                t: r.t,
                client,
                node: *node,
                topic,
                sent: *sent,
                seq: *seq,
            }),
            Event::Publish {
                client,
                seq,
                topic,
                retain: true,
                outcome: Outcome::Ok,
                ..
            } => acked.entry(topic).or_default().push(Seen {
                t: r.t,
                seq: Some(*seq),
                client,
            }),
            _ => {}
        }
    }

    let mut violations = Vec::new();
    acked.values_mut().for_each(Timeline::seal);
    for read in &reads {
        let Some(best) = acked.get(read.topic).and_then(|l| l.best_before(read.sent)) else {
            continue;
        };
        if read.seq.is_none_or(|s| s < best.seq) {
            violations.push(Violation {
                t: read.t,
                evidence: format!(
                    "a subscriber ({}) on node {} at {} ms got {} of {} after #{} was acknowledged at {} ms",
                    read.client,
                    read.node,
                    read.sent,
                    shown(read.seq),
                    read.topic,
                    best.seq,
                    best.at
                ),
            });
        }
    }

    let mut served: HashMap<(NodeId, &str), Timeline> = HashMap::new();
    for read in &reads {
        served
            .entry((read.node, read.topic))
            .or_default()
            .push(Seen {
                t: read.t,
                seq: read.seq,
                client: read.client,
            });
    }
    served.values_mut().for_each(Timeline::seal);
    for read in &reads {
        let Some(best) = served
            .get(&(read.node, read.topic))
            .and_then(|l| l.best_before(read.sent))
        else {
            continue;
        };
        if read.seq.is_none_or(|s| s < best.seq) {
            violations.push(Violation {
                t: read.t,
                evidence: format!(
                    "node {} served {} {} to {} at {} ms (SUBSCRIBE sent at {} ms) after serving #{} to {} at {} ms",
                    read.node,
                    read.topic,
                    shown(read.seq),
                    read.client,
                    read.t,
                    read.sent,
                    best.seq,
                    best.client,
                    best.at
                ),
            });
        }
    }

    violations.sort_by_key(|v| v.t);
    Verdict {
        promise: Promise::Retained,
        checked: reads.len() as u64,
        violations,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::testkit::{timeout, History};
    use crate::history::FaultKind::Kill;
    use crate::history::FaultPhase::{End, Start};

    const T: &str = "chaos/retained/3";

    fn judge(h: History) -> Verdict {
        check(&h.records())
    }

    #[test]
    fn reads_that_keep_up_with_the_writer_pass() {
        let v = judge(
            History::new()
                .read(5, "r1", 1, T, 1, None)
                .retain(10, "w", 1, T, 1)
                .read(20, "r1", 1, T, 11, Some(1))
                .read(21, "r2", 2, T, 11, Some(1))
                .retain(30, "w", 1, T, 2)
                // Sent before #2 was acknowledged: #1 is still fine.
                .read(40, "r2", 3, T, 29, Some(1))
                .read(50, "r1", 1, T, 31, Some(2))
                // A later message that timed out may already show.
                .retain(60, "w", 1, T, 3)
                .outcome(timeout())
                .read(70, "r2", 2, T, 61, Some(3)),
        );
        assert_eq!(v.checked, 6);
        assert!(v.violations.is_empty(), "{:?}", v.violations);
    }

    #[test]
    fn a_node_serving_an_older_value_than_before_is_a_violation() {
        // No acknowledged write: only monotonicity is judged.
        let v = judge(
            History::new()
                .retain(10, "w", 1, T, 7)
                .outcome(timeout())
                .read(2800, "r2", 2, T, 2700, Some(7))
                .read(3000, "r1", 2, T, 2900, Some(5))
                // Another node may lag.
                .read(3001, "r3", 1, T, 2900, Some(5))
                // A read that overlapped the first one is not ordered after it.
                .read(3002, "r4", 2, T, 2750, Some(4)),
        );
        assert_eq!(v.checked, 4);
        assert_eq!(v.violations.len(), 1);
        assert_eq!(v.violations[0].t, 3000);
        assert_eq!(
            v.violations[0].evidence,
            "node 2 served chaos/retained/3 #5 to r1 at 3000 ms (SUBSCRIBE sent at 2900 ms) after serving #7 to r2 at 2800 ms"
        );
    }

    #[test]
    fn a_read_missing_an_acknowledged_message_is_a_violation() {
        let v = judge(
            History::new()
                .retain(1000, "w", 1, "chaos/retained/1", 4)
                .retain(1100, "w", 1, "chaos/retained/1", 6)
                .read(1250, "r1", 3, "chaos/retained/1", 1200, Some(4))
                .read(1260, "r2", 1, "chaos/retained/1", 1200, None),
        );
        assert_eq!(v.checked, 2);
        assert_eq!(v.violations.len(), 2);
        assert_eq!(
            v.violations[0].evidence,
            "a subscriber (r1) on node 3 at 1200 ms got #4 of chaos/retained/1 after #6 was acknowledged at 1100 ms"
        );
        assert!(v.violations[1]
            .evidence
            .contains("(r2) on node 1 at 1200 ms got nothing"));
    }

    #[test]
    fn a_read_that_got_nothing_during_a_fault_is_not_judged_but_a_stale_one_is() {
        let v = judge(
            History::new()
                .retain(1000, "w", 1, T, 4)
                .read(1100, "r1", 2, T, 1050, Some(4))
                .fault(20_000, Kill, Start, &[1])
                // Nothing on node 2 while node 1 (the leader) is down: not judged.
                .read(21_000, "r1", 2, T, 19_500, None)
                // A stale value is judged even during the fault.
                .read(22_000, "r2", 2, T, 21_500, Some(3))
                .fault(30_000, Kill, End, &[1])
                // Within the grace period after the heal: not judged.
                .read(39_000, "r1", 2, T, 37_000, None)
                // After it: judged (freshness and monotonicity).
                .read(42_000, "r1", 2, T, 40_001, None),
        );
        assert_eq!(v.checked, 3);
        let e: Vec<&str> = v.violations.iter().map(|v| v.evidence.as_str()).collect();
        assert_eq!(
            e,
            vec![
                "a subscriber (r2) on node 2 at 21500 ms got #3 of chaos/retained/3 after #4 was acknowledged at 1000 ms",
                "node 2 served chaos/retained/3 #3 to r2 at 22000 ms (SUBSCRIBE sent at 21500 ms) after serving #4 to r1 at 1100 ms",
                "a subscriber (r1) on node 2 at 40001 ms got nothing of chaos/retained/3 after #4 was acknowledged at 1000 ms",
                "node 2 served chaos/retained/3 nothing to r1 at 42000 ms (SUBSCRIBE sent at 40001 ms) after serving #4 to r1 at 1100 ms",
            ]
        );
    }
}
