//! Promise 5: bad input from a client affects only that client. The misbehaving client gets a reason code
//! its misdeed allows and is disconnected (a flood need not be); every other client ("good": its id never
//! appears in a bad-client record) is neither disconnected nor slowed outside the fault windows (each fault
//! from its start to `GRACE_MS` (10 s) after its heal).
//!
//! `checked` counts the bad attempts and the good clients' PUBLISHes judged for slowness.

use super::windows::FaultWindows;
use super::{Verdict, Violation};
use crate::history::{BadKind, Event, Outcome, Promise, Record};
use std::collections::HashSet;

/// How long after a fault heals its effects are excused: clients reconnect and the cluster settles.
pub(crate) const GRACE_MS: u64 = 10_000;

/// A good client's PUBLISH taking longer than this to be acknowledged (or timing out) is slowed.
const SLOW_MS: u64 = 5_000;

/// Reason code of a taken-over connection (0x8E Session taken over): not bad input's doing.
const TAKEN_OVER: u8 = 0x8E;

/// Malformed Packet.
const MALFORMED: u8 = 0x81;
/// Protocol Error.
const PROTOCOL_ERROR: u8 = 0x82;
/// Topic Name invalid.
const TOPIC_NAME_INVALID: u8 = 0x90;
/// Packet too large.
const PACKET_TOO_LARGE: u8 = 0x95;

/// Codes a CONNACK may refuse with: MQTT 5 (spec 3.2.2.2) and 3.1.1 return codes 1 to 5 (a garbage
/// CONNECT may claim an older protocol version).
const CONNACK_REFUSALS: [u8; 26] = [
    0x01, 0x02, 0x03, 0x04, 0x05, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A,
    0x8C, 0x90, 0x95, 0x97, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
];

/// Whether the broker may answer `kind` with `code`.
fn allowed(kind: BadKind, code: u8) -> bool {
    match kind {
        BadKind::Garbage => code == MALFORMED || CONNACK_REFUSALS.contains(&code),
        BadKind::WildcardTopic => code == PROTOCOL_ERROR || code == TOPIC_NAME_INVALID,
        BadKind::Oversized => code == PACKET_TOO_LARGE,
        BadKind::SecondConnect => code == PROTOCOL_ERROR,
        BadKind::Flood => true,
    }
}

/// What the allowed codes of `kind` are, for the evidence.
fn expected(kind: BadKind) -> &'static str {
    match kind {
        BadKind::Garbage => "0x81 or a CONNACK refusal",
        BadKind::WildcardTopic => "0x82 or 0x90",
        BadKind::Oversized => "0x95",
        BadKind::SecondConnect => "0x82",
        BadKind::Flood => "any",
    }
}

fn described(kind: BadKind) -> &'static str {
    match kind {
        BadKind::Garbage => "garbage",
        BadKind::WildcardTopic => "a PUBLISH to a wildcard topic",
        BadKind::Oversized => "an oversized packet",
        BadKind::SecondConnect => "a second CONNECT",
        BadKind::Flood => "a flood",
    }
}

/// Judges promise 5.
pub(crate) fn check(records: &[Record]) -> Verdict {
    let windows = FaultWindows::new(records, GRACE_MS);
    let mut bad: HashSet<&str> = HashSet::new();
    let mut checked = 0;
    let mut violations = Vec::new();
    for r in records {
        let Event::BadClient {
            client,
            node,
            kind,
            closed,
            code,
            ms,
        } = &r.event
        else {
            continue;
        };
        bad.insert(client);
        checked += 1;
        let what = described(*kind);
        // A node paused, killed or cut off meanwhile cannot close anything: not judged then.
        let faulted = windows.overlaps(r.t.saturating_sub(*ms), r.t);
        if *kind != BadKind::Flood && !closed && !faulted {
            violations.push(Violation {
                t: r.t,
                evidence: format!(
                    "the broker kept a connection open after {what} from {client} on node {node} at {} ms",
                    r.t
                ),
            });
        }
        if let Some(code) = code {
            if !allowed(*kind, *code) {
                violations.push(Violation {
                    t: r.t,
                    evidence: format!(
                        "{client} sent {what} to node {node} at {} ms and got 0x{code:02X}, expected {}",
                        r.t,
                        expected(*kind)
                    ),
                });
            }
        }
    }

    for r in records {
        match &r.event {
            Event::Disconnected {
                client,
                conn,
                code,
                reason,
            } if !bad.contains(client.as_str()) => {
                if *code == Some(TAKEN_OVER) || windows.contains(r.t) {
                    continue;
                }
                let how = code.map_or_else(
                    || "the connection was lost".to_string(),
                    |c| format!("DISCONNECT 0x{c:02X}"),
                );
                violations.push(Violation {
                    t: r.t,
                    evidence: format!(
                        "good client {client} (conn {conn}) was disconnected at {} ms outside any fault: {how} ({reason})",
                        r.t
                    ),
                });
            }
            Event::Publish {
                client,
                publisher,
                seq,
                sent,
                outcome,
                ..
            } if !bad.contains(client.as_str())
                && matches!(outcome, Outcome::Ok | Outcome::Timeout) =>
            {
                checked += 1;
                let took = r.t.saturating_sub(*sent);
                if took <= SLOW_MS || windows.overlaps(*sent, r.t) {
                    continue;
                }
                let how = match outcome {
                    Outcome::Ok => format!(
                        "took {took} ms (sent at {sent} ms, acknowledged at {} ms)",
                        r.t
                    ),
                    _ => format!("timed out after {took} ms (sent at {sent} ms)"),
                };
                violations.push(Violation {
                    t: r.t,
                    evidence: format!(
                        "good client {client} was slowed: PUBLISH {publisher}#{seq} {how} outside any fault"
                    ),
                });
            }
            _ => {}
        }
    }

    violations.sort_by_key(|v| v.t);
    Verdict {
        promise: Promise::BadInputIsolated,
        checked,
        violations,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::testkit::{timeout, History};
    use crate::history::FaultKind::Pause;
    use crate::history::FaultPhase::{End, Start};

    #[test]
    fn bad_clients_closed_with_the_right_codes_and_good_clients_unharmed_pass() {
        let v = check(
            &History::new()
                .bad(10, "bad-1", BadKind::Garbage, true, Some(0x81))
                .bad(11, "bad-1", BadKind::Garbage, true, Some(0x84))
                .bad(12, "bad-2", BadKind::WildcardTopic, true, Some(0x90))
                .bad(13, "bad-3", BadKind::Oversized, true, Some(0x95))
                .bad(14, "bad-4", BadKind::SecondConnect, true, None)
                .bad(15, "bad-5", BadKind::Flood, false, None)
                // A bad client's own troubles are not judged.
                .disconnected(20, "bad-5", 9, Some(0x97))
                .publish(9000, 100, "bad-5", 9, 1, 1)
                // Good clients: taken over, or disconnected and slowed inside a fault window.
                .disconnected(30, "sub", 1, Some(0x8E))
                .fault(1000, Pause, Start, &[2])
                .publish(1500, 1400, "p1", 2, 1, 1)
                .fault(2000, Pause, End, &[2])
                .disconnected(11_999, "sub", 2, None)
                .publish(18_000, 11_000, "p1", 2, 2, 1)
                .publish(30_000, 29_000, "p1", 2, 3, 1)
                .records(),
        );
        assert_eq!(v.checked, 6 + 3);
        assert!(v.violations.is_empty(), "{:?}", v.violations);
    }

    #[test]
    fn a_bad_client_left_connected_is_a_violation_but_a_flood_may_stay() {
        let v = check(
            &History::new()
                .bad(500, "bad-1", BadKind::Oversized, false, Some(0x95))
                .bad(600, "bad-2", BadKind::Flood, false, None)
                .records(),
        );
        assert_eq!(v.checked, 2);
        assert_eq!(v.violations.len(), 1);
        assert_eq!(
            v.violations[0].evidence,
            "the broker kept a connection open after an oversized packet from bad-1 on node 2 at 500 ms"
        );
    }

    #[test]
    fn a_bad_client_on_a_node_under_a_fault_is_not_judged_for_staying_connected() {
        // The attempt (ms = 0 in the kit) ends at 88_445 while node 2 is paused (80_000 .. 89_000).
        let v = check(
            &History::new()
                .fault(80_000, Pause, Start, &[2])
                .bad(88_445, "bad-36", BadKind::Garbage, false, None)
                .fault(89_000, Pause, End, &[2])
                .records(),
        );
        assert!(v.violations.is_empty(), "{:?}", v.violations);
    }

    #[test]
    fn a_disconnect_just_before_a_fault_is_recorded_counts_as_the_fault() {
        // The kill acts before the nemesis writes its start record.
        let v = check(
            &History::new()
                .disconnected(142_824, "pub-4", 2, None)
                .fault(142_825, crate::history::FaultKind::Kill, Start, &[1])
                .fault(151_000, crate::history::FaultKind::Kill, End, &[1])
                .records(),
        );
        assert!(v.violations.is_empty(), "{:?}", v.violations);
    }

    #[test]
    fn a_wrong_reason_code_is_a_violation() {
        let v = check(
            &History::new()
                .bad(500, "bad-1", BadKind::SecondConnect, true, Some(0x95))
                .bad(600, "bad-2", BadKind::WildcardTopic, true, Some(0x81))
                .bad(700, "bad-3", BadKind::Garbage, true, Some(0x00))
                .bad(800, "bad-4", BadKind::Flood, true, Some(0x00))
                .records(),
        );
        assert_eq!(v.violations.len(), 3);
        assert_eq!(
            v.violations[0].evidence,
            "bad-1 sent a second CONNECT to node 2 at 500 ms and got 0x95, expected 0x82"
        );
        assert!(v.violations[1].evidence.contains("bad-2"));
        assert!(v.violations[2].evidence.contains("bad-3"));
    }

    #[test]
    fn a_good_client_disconnected_outside_faults_is_a_violation() {
        let v = check(
            &History::new()
                .bad(10, "bad-1", BadKind::Garbage, true, Some(0x81))
                .fault(1000, Pause, Start, &[2])
                .fault(2000, Pause, End, &[2])
                .disconnected(12_001, "sub-1", 12, Some(0x8B))
                .disconnected(12_002, "sub-2", 13, None)
                .records(),
        );
        assert_eq!(v.violations.len(), 2);
        assert_eq!(
            v.violations[0].evidence,
            "good client sub-1 (conn 12) was disconnected at 12001 ms outside any fault: DISCONNECT 0x8B (gone)"
        );
        assert!(v.violations[1].evidence.contains("sub-2 (conn 13)"));
        assert!(v.violations[1].evidence.contains("the connection was lost"));
    }

    #[test]
    fn a_slow_or_timed_out_publish_outside_faults_is_a_violation() {
        let v = check(
            &History::new()
                .publish(7200, 1000, "p1", 2, 17, 1)
                .publish(9000, 2000, "p2", 3, 4, 2)
                .outcome(timeout())
                // Under the limit.
                .publish(9100, 4100, "p1", 2, 18, 1)
                // A fault that never heals covers the rest of the run.
                .fault(12_000, Pause, Start, &[1])
                .publish(60_000, 20_000, "p1", 2, 19, 1)
                .records(),
        );
        assert_eq!(v.checked, 4);
        assert_eq!(v.violations.len(), 2);
        assert_eq!(
            v.violations[0].evidence,
            "good client p1 was slowed: PUBLISH p1#17 took 6200 ms (sent at 1000 ms, acknowledged at 7200 ms) outside any fault"
        );
        assert_eq!(
            v.violations[1].evidence,
            "good client p2 was slowed: PUBLISH p2#4 timed out after 7000 ms (sent at 2000 ms) outside any fault"
        );
    }
}
