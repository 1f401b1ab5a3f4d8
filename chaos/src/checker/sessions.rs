//! Promise 3: a persistent session survives the loss of a minority of nodes: once a client's session was
//! established by a successful CONNECT with clean start = false, every later successful CONNECT of that
//! client with clean start = false gets Session Present = 1, on whichever node it lands.
//!
//! A clean start in between (successful, or of unknown outcome since the broker may have read it) ends the
//! session; the next clean start = false CONNECT establishes a new one. `checked` counts the reconnects
//! judged.

use super::conns::{via, Connects};
use super::{Verdict, Violation};
use crate::history::Promise;

/// Judges promise 3.
pub(crate) fn check(connects: &Connects<'_>) -> Verdict {
    let mut checked = 0;
    let mut violations = Vec::new();
    for (client, list) in connects.by_client() {
        // The CONNECT that established the current session: (conn, time).
        let mut established: Option<(u64, u64)> = None;
        for c in list {
            if c.clean_start {
                if c.may_have_cleaned() {
                    established = None;
                }
                continue;
            }
            if !c.ok() {
                continue;
            }
            match established {
                None => established = Some((c.conn, c.t)),
                Some((first, since)) => {
                    checked += 1;
                    if c.session_present != Some(true) {
                        let got = match c.session_present {
                            Some(false) => "session present = false",
                            _ => "no session present flag",
                        };
                        violations.push(Violation {
                            t: c.t,
                            evidence: format!(
                                "{client} reconnected with clean start = false on conn {} via {} at {} ms and got {got} (its session was established on conn {first} at {since} ms)",
                                c.conn,
                                via(c.via),
                                c.t
                            ),
                        });
                    }
                }
            }
        }
    }
    violations.sort_by(|a, b| (a.t, &a.evidence).cmp(&(b.t, &b.evidence)));
    Verdict {
        promise: Promise::SessionsSurvive,
        checked,
        violations,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::testkit::{refused, timeout, History};
    use crate::history::Via;

    fn judge(h: History) -> Verdict {
        let records = h.records();
        check(&Connects::new(&records))
    }

    #[test]
    fn reconnects_that_find_their_session_pass() {
        let v = judge(
            History::new()
                .connect(10, "dev-1", 1, false, Some(false))
                .connect(20, "dev-1", 2, false, Some(true))
                .via(Via::Node(2))
                .connect(30, "dev-1", 3, false, None)
                .outcome(timeout())
                .connect(40, "dev-1", 4, false, Some(true))
                .via(Via::Haproxy)
                .connect(50, "dev-2", 5, false, Some(false)),
        );
        assert_eq!(v.checked, 2);
        assert!(v.violations.is_empty(), "{:?}", v.violations);
    }

    #[test]
    fn a_lost_session_names_client_conn_via_and_time() {
        let v = judge(
            History::new()
                .connect(1000, "dev-3", 12, false, Some(false))
                .connect(5000, "dev-3", 15, false, Some(false))
                .via(Via::Node(2))
                .connect(6000, "dev-3", 16, false, Some(true)),
        );
        assert_eq!(v.checked, 2);
        assert_eq!(v.violations.len(), 1);
        assert_eq!(v.violations[0].t, 5000);
        assert_eq!(
            v.violations[0].evidence,
            "dev-3 reconnected with clean start = false on conn 15 via node 2 at 5000 ms and got session present = false (its session was established on conn 12 at 1000 ms)"
        );
    }

    #[test]
    fn a_clean_start_in_between_excuses_a_new_session_but_a_refused_one_does_not() {
        let v = judge(
            History::new()
                .connect(10, "dev-1", 1, false, Some(false))
                .connect(20, "dev-1", 2, true, Some(false))
                .connect(30, "dev-1", 3, false, Some(false))
                .connect(40, "dev-1", 4, true, None)
                .outcome(timeout())
                .connect(50, "dev-1", 5, false, Some(false))
                .connect(60, "dev-1", 6, true, None)
                .outcome(refused(0x87))
                .connect(70, "dev-1", 7, false, Some(false)),
        );
        assert_eq!(v.checked, 1);
        assert_eq!(v.violations.len(), 1);
        assert!(v.violations[0]
            .evidence
            .contains("on conn 7 via node 1 at 70 ms"));
    }
}
