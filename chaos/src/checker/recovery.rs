//! Recovery time: for each healed fault, how long until the first successful probe (a persistent session
//! connect) at or after the heal. A heal with no successful probe after it gets no time.

use crate::history::{Event, FaultKind, FaultPhase, Record};
use std::collections::BTreeMap;

/// Milliseconds from each heal to the next successful probe, per fault kind, in the order of the heals.
pub(crate) fn recovery_ms(records: &[Record]) -> BTreeMap<FaultKind, Vec<u64>> {
    let mut probes: Vec<u64> = records
        .iter()
        .filter(|r| matches!(r.event, Event::Probe { ok: true, .. }))
        .map(|r| r.t)
        .collect();
    probes.sort_unstable();
    let mut heals: Vec<(u64, FaultKind)> = records
        .iter()
        .filter_map(|r| match r.event {
            Event::Fault {
                kind,
                phase: FaultPhase::End,
                ..
            } => Some((r.t, kind)),
            _ => None,
        })
        .collect();
    heals.sort_by_key(|h| h.0);
    let mut out: BTreeMap<FaultKind, Vec<u64>> = BTreeMap::new();
    for (t_end, kind) in heals {
        let i = probes.partition_point(|&t| t < t_end);
        if let Some(&t) = probes.get(i) {
            out.entry(kind).or_default().push(t - t_end);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::testkit::History;
    use crate::history::FaultKind::{Kill, Partition};
    use crate::history::FaultPhase::{End, Start};

    #[test]
    fn each_heal_gets_the_time_to_the_next_successful_probe() {
        let records = History::new()
            .probe(50, true)
            .fault(100, Kill, Start, &[1])
            .probe(150, true)
            .fault(200, Kill, End, &[1])
            .probe(250, false)
            .probe(200, true)
            .fault(300, Partition, Start, &[2])
            .fault(400, Partition, End, &[2])
            .probe(900, false)
            .probe(1000, true)
            .fault(2000, Kill, Start, &[3])
            .fault(3000, Kill, End, &[3])
            .probe(2999, true)
            .records();
        let r = recovery_ms(&records);
        assert_eq!(r.get(&Kill), Some(&vec![0]));
        assert_eq!(r.get(&Partition), Some(&vec![600]));
        assert_eq!(r.len(), 2);
    }
}
