//! Promise 5: bad input from a client affects only that client. The misbehaving client gets a reason code
//! its misdeed allows and is disconnected (a flood need not be); every other client ("good": its id never
//! appears in a bad-client record) is neither disconnected nor slowed outside the fault windows (each fault
//! from just before its start to `GRACE_MS` (10 s) after its heal, or after the rejoin of its nodes).
//!
//! A bad client that sent a wildcard topic, an oversized packet or a second CONNECT did so over MQTT 5
//! after its CONNACK: the broker must close it with a DISCONNECT that carries a reason code, so a close
//! without one is a violation too (garbage and floods may be closed silently). An attempt that overlaps a
//! fault window is not judged for how it was (or was not) closed: a paused or cut-off node closes nothing.
//!
//! A good client's disconnection is excused when its connection was superseded: the same client had
//! another connection accepted after this one's and no later than `SUPERSEDED_MS` (5 s) after the
//! disconnection (the 0x8E Session taken over may be lost in a race with a failing write).
//!
//! `checked` counts the bad attempts and the good clients' PUBLISHes judged for slowness.

use super::conns::Connects;
use super::windows::{FaultWindows, GRACE_MS};
use super::{Verdict, Violation};
use crate::history::{BadKind, Event, Outcome, Promise, Record};
use std::collections::HashSet;

/// A good client's connection lost no later than this before another of its connections was accepted was
/// superseded, not harmed.
const SUPERSEDED_MS: u64 = 5_000;

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

/// Whether `kind` is sent over an MQTT 5 connection after its CONNACK, so that the broker must close it
/// with a DISCONNECT carrying a reason code.
fn needs_disconnect_code(kind: BadKind) -> bool {
    matches!(
        kind,
        BadKind::WildcardTopic | BadKind::Oversized | BadKind::SecondConnect
    )
}

/// Whether connection `conn` of `client`, lost at `t`, was superseded: another connection of the client was
/// accepted after `conn`'s own accept and no later than [`SUPERSEDED_MS`] after `t`.
fn superseded(connects: &Connects<'_>, client: &str, conn: u64, t: u64) -> bool {
    let Some(own) = connects.get(conn).filter(|c| c.ok() && c.client == client) else {
        return false;
    };
    let list = connects.of_client(client);
    let from = list.partition_point(|c| c.t <= own.t);
    list[from..]
        .iter()
        .take_while(|c| c.t <= t.saturating_add(SUPERSEDED_MS))
        .any(|c| c.ok() && c.conn != conn)
}

/// Judges promise 5.
pub(crate) fn check(records: &[Record], connects: &Connects<'_>) -> Verdict {
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
        if needs_disconnect_code(*kind) && *closed && code.is_none() && !faulted {
            violations.push(Violation {
                t: r.t,
                evidence: format!(
                    "the broker closed {client}'s connection on node {node} after {what} at {} ms without the DISCONNECT reason code MQTT 5 requires (expected {})",
                    r.t,
                    expected(*kind)
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
                if *code == Some(TAKEN_OVER)
                    || windows.contains(r.t)
                    || superseded(connects, client, *conn, r.t)
                {
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

    fn check(records: &[Record]) -> Verdict {
        super::check(records, &Connects::new(records))
    }

    #[test]
    fn bad_clients_closed_with_the_right_codes_and_good_clients_unharmed_pass() {
        let v = check(
            &History::new()
                .bad(10, "bad-1", BadKind::Garbage, true, Some(0x81))
                .bad(11, "bad-1", BadKind::Garbage, true, Some(0x84))
                .bad(12, "bad-2", BadKind::WildcardTopic, true, Some(0x90))
                .bad(13, "bad-3", BadKind::Oversized, true, Some(0x95))
                .bad(14, "bad-4", BadKind::SecondConnect, true, Some(0x82))
                // Garbage and a flood may be closed without a reason code.
                .bad(16, "bad-6", BadKind::Garbage, true, None)
                .bad(17, "bad-5", BadKind::Flood, true, None)
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
        assert_eq!(v.checked, 8 + 3);
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

    #[test]
    fn an_mqtt5_bad_client_closed_without_a_reason_code_is_a_violation_outside_faults() {
        let v = check(
            &History::new()
                .bad(500, "bad-1", BadKind::Oversized, true, None)
                .bad(600, "bad-2", BadKind::WildcardTopic, true, None)
                .bad(700, "bad-3", BadKind::SecondConnect, true, None)
                .bad(800, "bad-4", BadKind::Garbage, true, None)
                .bad(900, "bad-5", BadKind::Flood, true, None)
                // Under a fault: not judged.
                .fault(20_000, Pause, Start, &[2])
                .bad(20_500, "bad-6", BadKind::Oversized, true, None)
                .fault(21_000, Pause, End, &[2])
                .records(),
        );
        assert_eq!(v.checked, 6);
        assert_eq!(v.violations.len(), 3, "{:?}", v.violations);
        assert_eq!(
            v.violations[0].evidence,
            "the broker closed bad-1's connection on node 2 after an oversized packet at 500 ms without the DISCONNECT reason code MQTT 5 requires (expected 0x95)"
        );
        assert!(v.violations[1].evidence.contains("bad-2's connection"));
        assert!(v.violations[2].evidence.contains("bad-3's connection"));
    }

    #[test]
    fn a_good_client_disconnected_because_it_reconnected_elsewhere_is_excused() {
        let v = check(
            &History::new()
                .connect(100, "sub", 1, false, Some(false))
                .connect(200, "pub", 2, true, Some(false))
                .connect(300, "obs", 3, true, Some(false))
                .connect(400, "old", 4, true, Some(false))
                // Superseded: conn 5 accepted 4 s after conn 1 was lost (its 0x8E lost in the race).
                .disconnected(20_000, "sub", 1, None)
                .connect(24_000, "sub", 5, false, Some(true))
                // Not superseded: the next accept comes more than 5 s later ...
                .disconnected(30_000, "pub", 2, None)
                .connect(35_001, "pub", 6, true, Some(false))
                // ... or is refused ...
                .disconnected(40_000, "obs", 3, None)
                .connect(40_100, "obs", 7, true, None)
                .outcome(crate::checker::testkit::refused(0x89))
                // ... or was accepted before this connection's own accept.
                .connect(399, "old", 8, true, Some(false))
                .disconnected(50_000, "old", 4, Some(0x8B))
                .records(),
        );
        assert_eq!(v.violations.len(), 3, "{:?}", v.violations);
        assert!(v.violations[0].evidence.contains("pub (conn 2)"));
        assert!(v.violations[1].evidence.contains("obs (conn 3)"));
        assert!(v.violations[2].evidence.contains("old (conn 4)"));
    }
}
