//! Promise 6: a node restarted after kill -9 (or a pause, or a rolling restart) rejoins and catches up
//! without manual steps: the nemesis records whether it reached the leader's commit index in time.
//! `checked` counts the rejoins.

use super::{Verdict, Violation};
use crate::history::{Event, Promise, Record};

/// Judges promise 6.
pub(crate) fn check(records: &[Record]) -> Verdict {
    let mut checked = 0;
    let mut violations = Vec::new();
    for r in records {
        let Event::Rejoin {
            node,
            ok,
            applied,
            target,
            ms,
        } = &r.event
        else {
            continue;
        };
        checked += 1;
        if !ok {
            violations.push(Violation {
                t: r.t,
                evidence: format!(
                    "node {node} restarted at {} ms did not catch up: applied {applied} < {target} after {ms} ms",
                    r.t.saturating_sub(*ms)
                ),
            });
        }
    }
    Verdict {
        promise: Promise::Rejoin,
        checked,
        violations,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::testkit::History;

    fn rejoin(node: u8, ok: bool, applied: u64, target: u64, ms: u64) -> Event {
        Event::Rejoin {
            node,
            ok,
            applied,
            target,
            ms,
        }
    }

    #[test]
    fn nodes_that_caught_up_pass() {
        let v = check(
            &History::new()
                .push(1000, rejoin(1, true, 60, 57, 800))
                .push(9000, rejoin(3, true, 90, 90, 1200))
                .records(),
        );
        assert_eq!(v.checked, 2);
        assert!(v.violations.is_empty());
    }

    #[test]
    fn a_node_that_did_not_catch_up_is_named() {
        let v = check(
            &History::new()
                .push(1000, rejoin(1, true, 60, 57, 800))
                .push(70_000, rejoin(2, false, 40, 57, 60_000))
                .records(),
        );
        assert_eq!(v.checked, 2);
        assert_eq!(v.violations.len(), 1);
        assert_eq!(v.violations[0].t, 70_000);
        assert_eq!(
            v.violations[0].evidence,
            "node 2 restarted at 10000 ms did not catch up: applied 40 < 57 after 60000 ms"
        );
    }
}
