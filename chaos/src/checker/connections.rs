//! Promise 4: at most one live connection per client id in the whole cluster. Once a later connection B
//! of a client was accepted (its CONNACK read at tB), an earlier connection A of that client must be gone:
//! an operation on A sent after tB must not succeed.
//!
//! `checked` counts the superseded connections: each accepted connection that a later accepted connection
//! of the same client should have ended.

use super::conns::Connects;
use super::{Verdict, Violation};
use crate::history::{Event, Outcome, Promise, Record};
use std::collections::HashMap;

/// The connection that superseded another.
struct Successor<'a> {
    client: &'a str,
    conn: u64,
    /// When its CONNACK was read.
    t: u64,
}

/// Judges promise 4.
pub(crate) fn check(records: &[Record], connects: &Connects<'_>) -> Verdict {
    let mut superseded: HashMap<u64, Successor> = HashMap::new();
    for (client, list) in connects.by_client() {
        let accepted: Vec<_> = list.iter().filter(|c| c.ok()).collect();
        for a in &accepted {
            let later = accepted.partition_point(|c| c.t <= a.t);
            if let Some(b) = accepted[later..].iter().find(|b| b.conn != a.conn) {
                superseded.insert(
                    a.conn,
                    Successor {
                        client,
                        conn: b.conn,
                        t: b.t,
                    },
                );
            }
        }
    }

    let mut violations = Vec::new();
    for r in records {
        let (conn, sent, what) = match &r.event {
            Event::Publish {
                conn,
                sent,
                publisher,
                seq,
                outcome: Outcome::Ok,
                ..
            } => (*conn, *sent, format!("PUBLISH {publisher}#{seq}")),
            Event::Subscribe {
                conn,
                sent,
                filter,
                outcome: Outcome::Ok,
                ..
            } => (*conn, *sent, format!("SUBSCRIBE {filter}")),
            _ => continue,
        };
        let Some(b) = superseded.get(&conn) else {
            continue;
        };
        if sent > b.t {
            violations.push(Violation {
                t: r.t,
                evidence: format!(
                    "conn {conn} of {client} had a {what} acknowledged at {} ms (sent at {sent} ms) after conn {} of {client} was accepted at {} ms",
                    r.t,
                    b.conn,
                    b.t,
                    client = b.client
                ),
            });
        }
    }
    violations.sort_by_key(|v| v.t);
    Verdict {
        promise: Promise::SingleConnection,
        checked: superseded.len() as u64,
        violations,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::testkit::{refused, timeout, History};

    fn judge(h: History) -> Verdict {
        let records = h.records();
        check(&records, &Connects::new(&records))
    }

    #[test]
    fn operations_before_the_takeover_or_refused_after_it_pass() {
        let v = judge(
            History::new()
                .connect(1000, "dev-3", 12, false, Some(false))
                .publish(4990, 4900, "dev-3", 12, 1, 1)
                .connect(5000, "dev-3", 15, false, Some(true))
                // Sent before conn 15 was accepted: may still be acknowledged.
                .publish(5020, 4999, "dev-3", 12, 2, 1)
                .publish(5030, 5010, "dev-3", 12, 3, 1)
                .outcome(timeout())
                .subscribe(5040, "dev-3", 12, "a/b", 1)
                .outcome(refused(0x8E))
                .publish(5050, 5040, "dev-3", 15, 4, 1)
                // A refused connect supersedes nothing.
                .connect(6000, "dev-3", 16, false, None)
                .outcome(refused(0x87))
                .publish(6050, 6040, "dev-3", 15, 5, 1),
        );
        assert_eq!(v.checked, 1);
        assert!(v.violations.is_empty(), "{:?}", v.violations);
    }

    #[test]
    fn an_operation_acknowledged_on_a_superseded_connection_is_a_violation() {
        let v = judge(
            History::new()
                .connect(1000, "dev-3", 12, false, Some(false))
                .connect(5000, "dev-3", 15, false, Some(true))
                .publish(5020, 5010, "dev-3", 12, 9, 1)
                .subscribe(5030, "dev-3", 12, "chaos/data/#", 1)
                .connect(5001, "dev-4", 16, false, Some(false)),
        );
        assert_eq!(v.checked, 1);
        assert_eq!(v.violations.len(), 2);
        assert_eq!(v.violations[0].t, 5020);
        assert_eq!(
            v.violations[0].evidence,
            "conn 12 of dev-3 had a PUBLISH dev-3#9 acknowledged at 5020 ms (sent at 5010 ms) after conn 15 of dev-3 was accepted at 5000 ms"
        );
        assert!(v.violations[1].evidence.contains("SUBSCRIBE chaos/data/#"));
    }
}
