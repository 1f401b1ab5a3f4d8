//! What the timeline plots, computed from the history in one pass: acknowledged publishes, deliveries
//! and the p99 publish latency per time bucket, the fault windows and the violation times. A bucket is one
//! second, or a whole number of seconds when the run is longer than [`MAX_BUCKETS`] seconds, so a picture
//! of a million records stays small.

use crate::checker::Judgement;
use crate::history::{Event, FaultKind, FaultPhase, NodeId, Promise, Record};
use std::collections::{BTreeMap, HashMap};

/// The most points a series of the timeline has; longer runs merge seconds into wider buckets.
pub(crate) const MAX_BUCKETS: u64 = 2000;

/// The timeline's data.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Buckets {
    /// Width of one bucket, a whole number of seconds in milliseconds.
    pub width_ms: u64,
    /// The latest time of any record, fault window or violation (ms).
    pub end_ms: u64,
    /// Acknowledged publishes per bucket (`Publish` records with outcome `ok`, by their record time).
    pub acked: Vec<u64>,
    /// Messages handed to subscribers per bucket.
    pub delivered: Vec<u64>,
    /// p99 latency (`t - sent`, ms) of the bucket's acknowledged publishes; `None` when it has none.
    pub p99_ms: Vec<Option<u64>>,
    /// Fault windows, in order of start.
    pub windows: Vec<Window>,
    /// Violation times per promise with any, at most one per bucket (the earliest), in time order.
    pub violations: BTreeMap<Promise, Vec<u64>>,
}

/// One fault, from its start to its heal (or to the end of the history when it was never healed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Window {
    pub kind: FaultKind,
    pub start_ms: u64,
    pub end_ms: u64,
}

impl Buckets {
    /// The buckets of `records`, with the violations of `j`.
    pub fn of(records: &[Record], j: &Judgement) -> Buckets {
        let last_record = records.iter().map(|r| r.t).max().unwrap_or(0);
        let seconds = last_record / 1000 + 1;
        let width_ms = 1000 * seconds.div_ceil(MAX_BUCKETS);
        let n = if records.is_empty() {
            0
        } else {
            (last_record / width_ms + 1) as usize
        };
        let mut b = Buckets {
            width_ms,
            end_ms: last_record,
            acked: vec![0; n],
            delivered: vec![0; n],
            p99_ms: Vec::with_capacity(n),
            windows: Vec::new(),
            violations: BTreeMap::new(),
        };
        let mut latencies: Vec<Vec<u64>> = vec![Vec::new(); n];
        // Starts not yet healed, per kind and targets, oldest first.
        let mut open: HashMap<(FaultKind, &[NodeId]), Vec<u64>> = HashMap::new();
        for r in records {
            let i = (r.t / width_ms) as usize;
            match &r.event {
                Event::Publish { sent, outcome, .. } if outcome.is_ok() => {
                    b.acked[i] += 1;
                    latencies[i].push(r.t.saturating_sub(*sent));
                }
                Event::Deliver { .. } => b.delivered[i] += 1,
                Event::Fault {
                    kind,
                    phase,
                    targets,
                    ..
                } => {
                    let starts = open.entry((*kind, targets.as_slice())).or_default();
                    match phase {
                        FaultPhase::Start => starts.push(r.t),
                        FaultPhase::End => {
                            // A heal without a start (a history cut at the front) has no window.
                            if !starts.is_empty() {
                                b.windows.push(Window {
                                    kind: *kind,
                                    start_ms: starts.remove(0),
                                    end_ms: r.t,
                                });
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        for ((kind, _), starts) in open {
            b.windows.extend(starts.into_iter().map(|start_ms| Window {
                kind,
                start_ms,
                end_ms: last_record,
            }));
        }
        b.windows.sort_by_key(|w| (w.start_ms, w.kind, w.end_ms));
        b.p99_ms = latencies.iter_mut().map(|l| p99(l)).collect();
        for v in &j.verdicts {
            let mut firsts: BTreeMap<u64, u64> = BTreeMap::new();
            for x in &v.violations {
                let t = firsts.entry(x.t / width_ms).or_insert(x.t);
                *t = (*t).min(x.t);
            }
            if !firsts.is_empty() {
                let times = b.violations.entry(v.promise).or_default();
                times.extend(firsts.into_values());
                times.sort_unstable();
            }
        }
        let last_violation = b.violations.values().flatten().max().copied();
        b.end_ms = b.end_ms.max(last_violation.unwrap_or(0));
        b
    }

    /// The time axis's length in seconds: the whole history, and at least one second.
    pub fn span_s(&self) -> f64 {
        let buckets_ms = self.acked.len() as u64 * self.width_ms;
        (self.end_ms.max(buckets_ms) as f64 / 1000.0).max(1.0)
    }

    /// Where bucket `i` is plotted: its middle, in seconds.
    pub fn x_s(&self, i: usize) -> f64 {
        (i as f64 + 0.5) * self.width_ms as f64 / 1000.0
    }

    /// A bucket's count as a rate per second.
    pub fn per_second(&self, count: u64) -> f64 {
        count as f64 * 1000.0 / self.width_ms as f64
    }
}

/// The 99th percentile of `values` by nearest rank (the smallest value at least 99% of them do not
/// exceed); `None` when empty. Reorders `values`.
pub(crate) fn p99(values: &mut [u64]) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    let rank = (values.len() * 99).div_ceil(100);
    let (_, v, _) = values.select_nth_unstable(rank - 1);
    Some(*v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::Violation;
    use crate::history::Outcome;
    use crate::report::fixtures;

    use fixtures::publish;

    fn fault(t: u64, kind: FaultKind, phase: FaultPhase, targets: Vec<NodeId>) -> Record {
        Record {
            t,
            event: Event::Fault {
                kind,
                phase,
                targets,
                detail: String::new(),
            },
        }
    }

    #[test]
    fn p99_is_the_nearest_rank() {
        assert_eq!(p99(&mut []), None);
        assert_eq!(p99(&mut [7]), Some(7));
        let mut hundred: Vec<u64> = (1..=100).rev().collect();
        assert_eq!(p99(&mut hundred), Some(99));
        let mut two_hundred: Vec<u64> = (1..=200).collect();
        assert_eq!(p99(&mut two_hundred), Some(198));
    }

    #[test]
    fn only_acknowledged_publishes_count_and_their_latency_is_t_minus_sent() {
        let records = vec![
            publish(100, 90, Outcome::Ok),
            publish(200, 150, Outcome::Ok),
            publish(300, 0, Outcome::Timeout),
            publish(1500, 1400, Outcome::Ok),
            publish(1600, 1590, Outcome::Refused { code: 0x97 }),
        ];
        let b = Buckets::of(&records, &fixtures::judgement());
        assert_eq!(b.width_ms, 1000);
        assert_eq!(b.acked, [2, 1]);
        assert_eq!(b.delivered, [0, 0]);
        assert_eq!(b.p99_ms, [Some(50), Some(100)]);
        assert_eq!(b.per_second(3), 3.0);
    }

    #[test]
    fn faults_pair_by_kind_and_targets_and_an_unhealed_one_lasts_to_the_end() {
        let records = vec![
            fault(1000, FaultKind::Kill, FaultPhase::Start, vec![1]),
            fault(1500, FaultKind::Pause, FaultPhase::Start, vec![2]),
            fault(2000, FaultKind::Kill, FaultPhase::Start, vec![3]),
            fault(3000, FaultKind::Kill, FaultPhase::End, vec![1]),
            fault(3500, FaultKind::Kill, FaultPhase::End, vec![2]),
            fault(4000, FaultKind::Kill, FaultPhase::End, vec![3]),
            publish(9000, 8990, Outcome::Ok),
        ];
        let b = Buckets::of(&records, &fixtures::judgement());
        let w = |kind, start_ms, end_ms| Window {
            kind,
            start_ms,
            end_ms,
        };
        assert_eq!(
            b.windows,
            [
                w(FaultKind::Kill, 1000, 3000),
                w(FaultKind::Pause, 1500, 9000),
                w(FaultKind::Kill, 2000, 4000),
            ]
        );
    }

    #[test]
    fn a_long_run_merges_seconds_and_keeps_one_violation_per_bucket() {
        let end = (MAX_BUCKETS * 3 + 10) * 1000;
        let records: Vec<Record> = (0..=end / 500)
            .map(|i| publish(i * 500, i * 500, Outcome::Ok))
            .collect();
        let mut j = fixtures::judgement();
        j.verdicts[0].violations = [4100, 4000, 4500, 9000]
            .into_iter()
            .map(|t| Violation {
                t,
                evidence: String::new(),
            })
            .collect();
        let b = Buckets::of(&records, &j);
        assert_eq!(b.width_ms, 4000);
        assert!(b.acked.len() as u64 <= MAX_BUCKETS);
        assert_eq!(b.acked[0], 8);
        assert_eq!(b.per_second(8), 2.0);
        assert_eq!(b.violations[&Promise::AckedDelivered], [4000, 9000]);
        assert_eq!(b.violations[&Promise::Rejoin], [900]);
        assert!(b.span_s() >= end as f64 / 1000.0);
    }

    #[test]
    fn an_empty_history_has_no_buckets_and_a_one_second_axis() {
        let b = Buckets::of(&[], &fixtures::judgement());
        assert!(b.acked.is_empty() && b.p99_ms.is_empty() && b.windows.is_empty());
        assert_eq!(b.width_ms, 1000);
        assert_eq!(b.span_s(), 2.5);
    }
}
