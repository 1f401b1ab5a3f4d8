//! The checker: judges a history, one verdict per promise of ARCHITECTURE §5, with the evidence of every
//! violation, plus the recovery time after each healed fault and the run's counts. Pure: records in,
//! judgement out, so a saved history can be judged again.
//!
//! # Layout
//! One module per promise ([`delivery`] with `groups` for shared subscriptions, [`retained`], [`sessions`], [`connections`], [`bad_input`],
//! [`rejoin`]), each with the rule it applies and what its `checked` counts; [`recovery`] and [`counts`]
//! for the rest of the judgement; `conns`, `subscriptions` and `windows` are lookups shared between them
//! (connections by number and client, persistent subscriptions, fault windows). Every pass groups records
//! by client, topic or connection, so a history of a million records is judged in a few passes.

pub mod bad_input;
pub mod connections;
mod conns;
pub mod counts;
pub mod delivery;
mod groups;
pub mod recovery;
pub mod rejoin;
pub mod retained;
pub mod sessions;
mod subscriptions;
#[cfg(test)]
mod testkit;
mod windows;

use crate::history::{FaultKind, Promise, Record};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Everything the checker concluded about one history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Judgement {
    /// One per promise, in the order of [`Promise::ALL`].
    pub verdicts: Vec<Verdict>,
    /// Per fault kind, for each healed fault: milliseconds from the heal to the first successful probe (a
    /// persistent connect) through one of the nodes it acted on (any probe for a fault on every node).
    pub recovery_ms: BTreeMap<FaultKind, Vec<u64>>,
    pub counts: Counts,
}

/// One promise's verdict: how many things were checked and what broke it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub promise: Promise,
    /// How many items the promise was checked on (expected deliveries, reads, connects, ...).
    pub checked: u64,
    pub violations: Vec<Violation>,
}

/// One violation, at a time of the history, with what shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// Milliseconds since the start: when the violation showed (or the operation it concerns).
    pub t: u64,
    pub evidence: String,
}

/// What the run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Fault rounds (from the `end` record).
    pub rounds: u64,
    /// Faults started, per kind.
    pub faults: BTreeMap<FaultKind, u64>,
    /// PUBLISH attempts, acknowledged ones, and messages handed to subscribers.
    pub published: u64,
    pub acknowledged: u64,
    pub delivered: u64,
}

impl Judgement {
    /// The verdict for `promise`.
    pub fn verdict(&self, promise: Promise) -> &Verdict {
        self.verdicts
            .iter()
            .find(|v| v.promise == promise)
            .expect("a verdict for every promise")
    }

    /// Violations over all promises.
    pub fn violations(&self) -> usize {
        self.verdicts.iter().map(|v| v.violations.len()).sum()
    }
}

/// Judges `records` (in the order recorded).
pub fn check(records: &[Record]) -> Judgement {
    let connects = conns::Connects::new(records);
    Judgement {
        verdicts: vec![
            delivery::check(records, &connects),
            retained::check(records),
            sessions::check(&connects),
            connections::check(records, &connects),
            bad_input::check(records, &connects),
            rejoin::check(records),
        ],
        recovery_ms: recovery::recovery_ms(records),
        counts: counts::count(records),
    }
}

#[cfg(test)]
mod tests {
    use super::testkit::History;
    use super::*;
    use crate::history::BadKind;
    use crate::history::Event;
    use crate::history::FaultKind::Kill;
    use crate::history::FaultPhase::{End, Start};

    /// A little of everything, all as promised.
    fn clean() -> History {
        History::new()
            .connect(10, "sub", 1, false, Some(false))
            .subscribe(20, "sub", 1, "chaos/data/+", 2)
            .connect(15, "p1", 2, true, Some(false))
            .publish(40, 30, "p1", 2, 1, 2)
            .deliver(45, "sub", 1, "p1", 1)
            .retain(50, "w", 3, "chaos/retained/1", 1)
            .read(70, "r", 2, "chaos/retained/1", 60, Some(1))
            .bad(80, "bad", BadKind::Oversized, true, Some(0x95))
            .fault(100, Kill, Start, &[2])
            .disconnected(101, "sub", 1, None)
            .fault(200, Kill, End, &[2])
            .connect(210, "sub", 4, false, Some(true))
            .probe(250, true)
            .via(crate::history::Via::Node(2))
            .publish(300, 290, "p1", 2, 2, 1)
            .deliver(305, "sub", 4, "p1", 2)
            .push(
                400,
                Event::Rejoin {
                    node: 2,
                    ok: true,
                    applied: 9,
                    target: 9,
                    ms: 190,
                },
            )
            .push(500, Event::End { rounds: 1 })
    }

    #[test]
    fn a_clean_history_passes_every_promise_in_order() {
        let j = check(&clean().records());
        let order: Vec<Promise> = j.verdicts.iter().map(|v| v.promise).collect();
        assert_eq!(order, Promise::ALL.to_vec());
        assert_eq!(j.violations(), 0, "{:?}", j.verdicts);
        let checked: Vec<u64> = j.verdicts.iter().map(|v| v.checked).collect();
        // 2 deliveries, 1 read, 1 reconnect, 1 superseded connection, 1 bad attempt + 3 good
        // publishes (the retained one too), 1 rejoin.
        assert_eq!(checked, vec![2, 1, 1, 1, 4, 1]);
        assert_eq!(j.recovery_ms.get(&Kill), Some(&vec![50]));
        assert_eq!(j.counts.rounds, 1);
        assert_eq!(j.counts.published, 3);
        assert_eq!(j.counts.acknowledged, 3);
        assert_eq!(j.counts.delivered, 2);
    }

    #[test]
    fn a_broken_history_shows_under_each_promise() {
        let j = check(
            &clean()
                .publish(600, 590, "p1", 2, 3, 2)
                // After the kill's window (its heal, the rejoin of node 2, 10 s of grace).
                .read(30_700, "r", 3, "chaos/retained/1", 30_650, None)
                .connect(800, "sub", 5, false, Some(false))
                .publish(900, 850, "sub", 4, 1, 1)
                .bad(20_000, "bad", BadKind::Garbage, false, None)
                .push(
                    999,
                    Event::Rejoin {
                        node: 3,
                        ok: false,
                        applied: 1,
                        target: 9,
                        ms: 100,
                    },
                )
                .records(),
        );
        for v in &j.verdicts {
            assert!(!v.violations.is_empty(), "{:?} passed", v.promise);
        }
    }

    #[test]
    fn a_million_records_are_judged_in_a_few_passes() {
        let mut h = History::new();
        let subs = ["s1", "s2", "s3", "s4"];
        for (i, s) in subs.iter().enumerate() {
            h = h.connect(1, s, i as u64, false, Some(false)).subscribe(
                2,
                s,
                i as u64,
                "chaos/data/#",
                2,
            );
        }
        let publishers: Vec<String> = (0..10).map(|p| format!("p{p}")).collect();
        for seq in 1..=20_000u64 {
            for (n, p) in publishers.iter().enumerate() {
                let t = 10 + seq;
                h = h.publish(t, t - 1, p, 100 + n as u64, seq, 2);
                for (i, s) in subs.iter().enumerate() {
                    h = h.deliver(t + 1, s, i as u64, p, seq);
                }
            }
        }
        let records = h.records();
        assert!(records.len() >= 1_000_000);
        let started = std::time::Instant::now();
        let j = check(&records);
        let took = started.elapsed();
        assert_eq!(j.violations(), 0);
        assert_eq!(j.verdict(Promise::AckedDelivered).checked, 800_000);
        assert!(took.as_secs() < 20, "took {took:?}");
    }
}
