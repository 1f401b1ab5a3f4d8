//! The fault windows of a history: from just before each fault's start (its record is written once the
//! fault is applied, so clients may feel it a moment earlier) to its heal plus a grace period, merged. A
//! fault is matched to its heal by kind and targets (first started, first healed); a fault never healed
//! lasts to the end of the history.
//!
//! A heal is not the end of a fault's effects: a node that is back may still be catching up. The window
//! of a healed fault therefore lasts to the later of its `End` record and the `Rejoin` records of its
//! target nodes that follow that `End` within [`REJOIN_WITHIN_MS`] (70 s), plus the grace period.

use crate::history::{Event, FaultKind, FaultPhase, NodeId, Record};
use std::collections::{HashMap, VecDeque};

/// How long after a fault heals (or its nodes rejoin) its effects are excused: clients reconnect and the
/// cluster settles. Shared by the promises that excuse what happens during faults.
pub(crate) const GRACE_MS: u64 = 10_000;

/// A `Rejoin` of a target node this long after a fault's `End` still belongs to that fault (the nemesis
/// waits up to a minute for a node to catch up before it records the rejoin).
pub(crate) const REJOIN_WITHIN_MS: u64 = 70_000;

/// Disjoint, sorted time spans `[from, to]` during which some fault was active or recently healed.
pub(crate) struct FaultWindows {
    spans: Vec<(u64, u64)>,
}

/// How long before its start record a fault counts as active: a kill, a SIGSTOP or a route takes effect
/// before the nemesis gets to write the record (the nemesis may also wait for the cluster lock).
pub(crate) const LEAD_MS: u64 = 1_000;

impl FaultWindows {
    /// The windows of the faults in `records`, each extended by `grace` ms after its heal (or the last
    /// rejoin of its targets that followed the heal).
    pub fn new(records: &[Record], grace: u64) -> FaultWindows {
        // Per node, the times of its rejoin records, sorted.
        let mut rejoins: HashMap<NodeId, Vec<u64>> = HashMap::new();
        for r in records {
            if let Event::Rejoin { node, .. } = r.event {
                rejoins.entry(node).or_default().push(r.t);
            }
        }
        rejoins.values_mut().for_each(|v| v.sort_unstable());
        // The last rejoin of `targets` in [t, t + REJOIN_WITHIN_MS], or `t`.
        let settled = |t: u64, targets: &[NodeId]| -> u64 {
            let until = t.saturating_add(REJOIN_WITHIN_MS);
            targets
                .iter()
                .filter_map(|n| {
                    let times = rejoins.get(n)?;
                    let i = times.partition_point(|&x| x <= until);
                    i.checked_sub(1).map(|i| times[i]).filter(|&x| x >= t)
                })
                .fold(t, u64::max)
        };
        let mut faults: Vec<(u64, FaultKind, FaultPhase, Vec<NodeId>)> = records
            .iter()
            .filter_map(|r| match &r.event {
                Event::Fault {
                    kind,
                    phase,
                    targets,
                    ..
                } => {
                    let mut targets = targets.clone();
                    targets.sort_unstable();
                    Some((r.t, *kind, *phase, targets))
                }
                _ => None,
            })
            .collect();
        faults.sort_by_key(|f| f.0);
        let mut open: HashMap<(FaultKind, Vec<NodeId>), VecDeque<u64>> = HashMap::new();
        let mut spans = Vec::new();
        for (t, kind, phase, targets) in faults {
            let starts = open.entry((kind, targets.clone())).or_default();
            match phase {
                FaultPhase::Start => starts.push_back(t.saturating_sub(LEAD_MS)),
                // A heal without a start (a hand-edited history) still covers its grace period.
                FaultPhase::End => {
                    let from = starts.pop_front().unwrap_or(t);
                    spans.push((from, settled(t, &targets).saturating_add(grace)));
                }
            }
        }
        spans.extend(open.into_values().flatten().map(|from| (from, u64::MAX)));
        spans.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(spans.len());
        for (from, to) in spans {
            match merged.last_mut() {
                Some(last) if from <= last.1 => last.1 = last.1.max(to),
                _ => merged.push((from, to)),
            }
        }
        FaultWindows { spans: merged }
    }

    /// Whether `[from, to]` overlaps a window.
    pub fn overlaps(&self, from: u64, to: u64) -> bool {
        let i = self.spans.partition_point(|s| s.1 < from);
        self.spans.get(i).is_some_and(|s| s.0 <= to)
    }

    /// Whether `t` is inside a window.
    pub fn contains(&self, t: u64) -> bool {
        self.overlaps(t, t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::testkit::History;
    use crate::history::FaultKind::{Kill, Partition};
    use crate::history::FaultPhase::{End, Start};

    #[test]
    fn faults_pair_by_kind_and_targets_and_merge() {
        let records = History::new()
            .fault(2000, Kill, Start, &[1])
            .fault(2050, Partition, Start, &[3, 2])
            .fault(2100, Kill, End, &[1])
            .fault(2200, Partition, End, &[2, 3])
            .fault(5000, Kill, Start, &[2])
            .records();
        let w = FaultWindows::new(&records, 10);
        // Each window opens LEAD_MS before its start record.
        assert_eq!(w.spans, vec![(1000, 2210), (4000, u64::MAX)]);
        assert!(!w.contains(999));
        assert!(w.contains(1000));
        assert!(w.contains(2210));
        assert!(!w.contains(2211));
        assert!(w.overlaps(950, 1000));
        assert!(!w.overlaps(2211, 3999));
        assert!(w.overlaps(3900, 4000));
        assert!(w.contains(u64::MAX));
    }

    #[test]
    fn a_fault_lasts_until_its_targets_rejoin_after_the_heal() {
        let rejoin = |node| Event::Rejoin {
            node,
            ok: true,
            applied: 1,
            target: 1,
            ms: 1,
        };
        let records = History::new()
            .fault(2000, Kill, Start, &[2])
            // Before the heal: not this fault's rejoin.
            .push(2500, rejoin(2))
            .fault(5000, Kill, End, &[2])
            // Another node's rejoin does not count.
            .push(50_000, rejoin(3))
            .push(30_000, rejoin(2))
            // Too late after the heal.
            .push(75_001, rejoin(2))
            .records();
        let w = FaultWindows::new(&records, 10);
        assert_eq!(w.spans, vec![(1000, 30_010)]);
        assert!(w.contains(20_000));
        assert!(!w.contains(30_011));
        assert!(!w.contains(75_001));
    }

    #[test]
    fn no_faults_no_windows() {
        let w = FaultWindows::new(&[], 10_000);
        assert!(!w.contains(0));
        assert!(!w.overlaps(0, u64::MAX));
    }
}
