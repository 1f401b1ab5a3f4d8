//! What the run did: rounds, faults started per kind, publishes, acknowledgements and deliveries.

use super::Counts;
use crate::history::{Event, FaultPhase, Record};

/// Counts the operations of `records`.
pub(crate) fn count(records: &[Record]) -> Counts {
    let mut c = Counts::default();
    for r in records {
        match &r.event {
            Event::End { rounds } => c.rounds = *rounds,
            Event::Fault {
                kind,
                phase: FaultPhase::Start,
                ..
            } => *c.faults.entry(*kind).or_default() += 1,
            Event::Publish { outcome, .. } => {
                c.published += 1;
                if outcome.is_ok() {
                    c.acknowledged += 1;
                }
            }
            Event::Deliver { .. } => c.delivered += 1,
            _ => {}
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::testkit::{timeout, History};
    use crate::history::FaultKind::{Kill, Pause};
    use crate::history::FaultPhase::{End, Start};

    #[test]
    fn counts_rounds_faults_publishes_and_deliveries() {
        let records = History::new()
            .fault(1, Kill, Start, &[1])
            .fault(2, Kill, End, &[1])
            .fault(3, Kill, Start, &[2])
            .fault(4, Pause, Start, &[3])
            .publish(10, 5, "p1", 1, 1, 1)
            .publish(11, 6, "p1", 1, 2, 1)
            .outcome(timeout())
            .deliver(12, "s", 2, "p1", 1)
            .push(20, Event::End { rounds: 3 })
            .records();
        let c = count(&records);
        assert_eq!(c.rounds, 3);
        assert_eq!(c.faults.get(&Kill), Some(&2));
        assert_eq!(c.faults.get(&Pause), Some(&1));
        assert_eq!((c.published, c.acknowledged, c.delivered), (2, 1, 1));
    }

    #[test]
    fn an_unfinished_run_has_no_rounds() {
        assert_eq!(count(&[]), Counts::default());
    }
}
