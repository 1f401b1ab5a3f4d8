//! Promise 1: an acknowledged QoS 1 or QoS 2 PUBLISH that matches a persistent subscription is delivered
//! to that subscriber, at least once for QoS 1 and exactly once for QoS 2; no refused message is delivered
//! to it, and nothing is delivered that was never published.
//!
//! A persistent subscription is a (client, filter) whose first successful SUBSCRIBE was made on a
//! connection that succeeded with clean start = false; its granted QoS is that SUBSCRIBE's. A message
//! concerns a subscription when it is not retained, has QoS 1 or 2, matches the filter and its PUBLISH was
//! sent after the SUBACK came. A clean start of the client (successful, or of unknown outcome) ends the
//! subscription: messages whose PUBLISH ended after that CONNECT was sent do not concern it, and a later
//! SUBSCRIBE starts a new subscription.
//!
//! - Missing: a message that concerns a subscription and whose PUBLISH was acknowledged must reach the
//!   client at least once.
//! - Exactly once: a message that concerns a subscription at effective QoS 2 (publish QoS 2, subscription
//!   QoS 2) must not reach the client more than once per matching subscription, whatever its PUBLISH's
//!   outcome (acknowledged, timed out, failed, refused): an unacknowledged QoS 2 message may be lost, never
//!   doubled.
//! - QoS: no copy of a message may come at a QoS below the lowest min(publish QoS, subscription QoS) of
//!   the client's subscriptions it concerns (each overlapping subscription may bring its own copy at its
//!   own QoS), whatever the PUBLISH's outcome.
//!
//! `checked` counts expected (client, acknowledged message) pairs, and (group, acknowledged message) pairs
//! of shared groups, which `groups` judges.

use super::conns::Connects;
use super::subscriptions::subscriptions;
use super::{Verdict, Violation};
use crate::history::{Event, Outcome, Promise, Record};
use cicada::protocol::topic::matches;
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};

/// Topics under this prefix carry data messages even when the history holds no PUBLISH on them.
const DATA_PREFIX: &str = "chaos/data/";

/// One PUBLISH record.
struct Publish<'a> {
    t: u64,
    publisher: &'a str,
    seq: u64,
    topic: &'a str,
    qos: u8,
    retain: bool,
    sent: u64,
    outcome: &'a Outcome,
}

/// The copies of one message handed to one client.
struct Copies {
    count: u32,
    second: u64,
    /// The lowest QoS a copy came at, and the first copy at that QoS (time, connection).
    lowest_qos: u8,
    lowest_at: u64,
    lowest_conn: u64,
}

impl Default for Copies {
    fn default() -> Copies {
        Copies {
            count: 0,
            second: 0,
            lowest_qos: u8::MAX,
            lowest_at: 0,
            lowest_conn: 0,
        }
    }
}

/// How a PUBLISH ended, for the evidence.
fn ended(p: &Publish<'_>) -> String {
    match p.outcome {
        Outcome::Ok => format!("acknowledged at {} ms", p.t),
        Outcome::Timeout => format!("timed out at {} ms", p.t),
        Outcome::Failed { .. } => format!("failed at {} ms", p.t),
        Outcome::Refused { code } => format!("refused with 0x{code:02X} at {} ms", p.t),
    }
}

/// Judges promise 1.
pub(crate) fn check(records: &[Record], connects: &Connects<'_>) -> Verdict {
    let subs = subscriptions(records, connects);
    let mut publishes: HashMap<(&str, u64), Publish> = HashMap::new();
    let mut order = Vec::new();
    let mut copies: HashMap<(&str, &str, u64), Copies> = HashMap::new();
    for r in records {
        match &r.event {
            Event::Publish {
                publisher,
                seq,
                topic,
                qos,
                retain,
                sent,
                outcome,
                ..
            } => {
                let key = (publisher.as_str(), *seq);
                if let Entry::Vacant(e) = publishes.entry(key) {
                    order.push(key);
                    e.insert(Publish {
                        t: r.t,
                        publisher,
                        seq: *seq,
                        topic,
                        qos: *qos,
                        retain: *retain,
                        sent: *sent,
                        outcome,
                    });
                }
            }
            Event::Deliver {
                client,
                conn,
                publisher,
                seq,
                qos,
                ..
            } => {
                let c = copies
                    .entry((client.as_str(), publisher.as_str(), *seq))
                    .or_default();
                c.count += 1;
                if c.count == 2 {
                    c.second = r.t;
                }
                if *qos < c.lowest_qos {
                    c.lowest_qos = *qos;
                    c.lowest_at = r.t;
                    c.lowest_conn = *conn;
                }
            }
            _ => {}
        }
    }

    let mut checked = 0;
    let mut violations = Vec::new();
    let mut matching: HashMap<&str, Vec<usize>> = HashMap::new();
    for key in &order {
        let Some(p) = publishes.get(key) else {
            continue;
        };
        if p.qos == 0 || p.retain {
            continue;
        }
        let subs_of_topic = matching.entry(p.topic).or_insert_with(|| {
            (0..subs.len())
                .filter(|&i| matches(subs[i].filter, p.topic))
                .collect()
        });
        // Per subscribed client: the effective QoS (the highest over its matching subscriptions), the
        // lowest, and how many subscriptions match (each may bring its own copy).
        let mut expected: Vec<(&str, u8, u8, u32)> = Vec::new();
        for &i in subs_of_topic.iter() {
            let s = &subs[i];
            if p.sent <= s.since || s.until.is_some_and(|u| p.t >= u) {
                continue;
            }
            let qos = p.qos.min(s.qos);
            match expected.iter_mut().find(|e| e.0 == s.client) {
                Some(e) => {
                    e.1 = e.1.max(qos);
                    e.2 = e.2.min(qos);
                    e.3 += 1;
                }
                None => expected.push((s.client, qos, qos, 1)),
            }
        }
        for (client, qos, lowest, subscriptions) in expected {
            let got = copies.get(&(client, p.publisher, p.seq));
            let count = got.map_or(0, |c| c.count);
            if let Some(c) = got.filter(|c| c.lowest_qos < lowest) {
                violations.push(Violation {
                    t: c.lowest_at,
                    evidence: format!(
                        "{client} (conn {}) got {}#{} at {} ms delivered at QoS {}, expected {lowest} (published at QoS {}, {})",
                        c.lowest_conn,
                        p.publisher,
                        p.seq,
                        c.lowest_at,
                        c.lowest_qos,
                        p.qos,
                        ended(p)
                    ),
                });
            }
            if p.outcome.is_ok() {
                checked += 1;
            }
            if count == 0 && p.outcome.is_ok() {
                violations.push(Violation {
                    t: p.t,
                    evidence: format!(
                        "{client} never got {}#{} (QoS {qos}, acknowledged at {} ms)",
                        p.publisher, p.seq, p.t
                    ),
                });
            } else if qos == 2 && count > subscriptions {
                let second = got.map_or(p.t, |c| c.second);
                violations.push(Violation {
                    t: second,
                    evidence: format!(
                        "{client} got {}#{} {count} times (QoS 2, {}, second copy at {second} ms)",
                        p.publisher,
                        p.seq,
                        ended(p)
                    ),
                });
            }
        }
    }

    let data_topics: HashSet<&str> = publishes
        .values()
        .filter(|p| !p.retain)
        .map(|p| p.topic)
        .collect();
    let persistent: HashSet<&str> = subs.iter().map(|s| s.client).collect();
    for r in records {
        let Event::Deliver {
            client,
            conn,
            publisher,
            seq,
            topic,
            ..
        } = &r.event
        else {
            continue;
        };
        if !data_topics.contains(topic.as_str()) && !topic.starts_with(DATA_PREFIX) {
            continue;
        }
        match publishes.get(&(publisher.as_str(), *seq)) {
            None => violations.push(Violation {
                t: r.t,
                evidence: format!(
                    "{client} (conn {conn}) got {publisher}#{seq} on {topic} at {} ms, which was never published (phantom)",
                    r.t
                ),
            }),
            Some(p) => {
                if let (Outcome::Refused { code }, false, true) =
                    (p.outcome, p.retain, persistent.contains(client.as_str()))
                {
                    violations.push(Violation {
                        t: r.t,
                        evidence: format!(
                            "a refused message was delivered: {client} (conn {conn}) got {publisher}#{seq} at {} ms, whose PUBLISH was refused with 0x{code:02X} at {} ms",
                            r.t, p.t
                        ),
                    });
                }
            }
        }
    }

    // Shared groups: one member per message (see `groups`).
    let (group_checked, group_violations) = super::groups::check(records, &subs);
    checked += group_checked;
    violations.extend(group_violations);
    violations.sort_by_key(|v| v.t);
    Verdict {
        promise: Promise::AckedDelivered,
        checked,
        violations,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::testkit::{failed, refused, timeout, History};

    fn judge(h: History) -> Verdict {
        let records = h.records();
        check(&records, &Connects::new(&records))
    }

    /// A persistent subscriber `sub` (QoS `qos`, subscribed at 20 ms) and a publisher `p1` connected.
    fn subscribed(qos: u8) -> History {
        History::new()
            .connect(10, "sub", 1, false, Some(false))
            .subscribe(20, "sub", 1, "chaos/data/#", qos)
            .connect(15, "p1", 2, true, Some(false))
    }

    #[test]
    fn every_acknowledged_message_delivered_once_passes() {
        let v = judge(
            subscribed(2)
                .publish(40, 30, "p1", 2, 1, 2)
                .publish(60, 50, "p1", 2, 2, 1)
                .deliver(45, "sub", 1, "p1", 1)
                .deliver(65, "sub", 1, "p1", 2)
                .deliver(66, "sub", 1, "p1", 2),
        );
        assert_eq!(v.checked, 2);
        assert!(v.violations.is_empty(), "{:?}", v.violations);
    }

    #[test]
    fn a_missing_acknowledged_message_names_client_publisher_seq_and_ack_time() {
        let v = judge(
            subscribed(2)
                .publish(1234, 1200, "p1", 2, 17, 2)
                .publish(1300, 1250, "p1", 2, 18, 1)
                .deliver(1301, "sub", 1, "p1", 18),
        );
        assert_eq!(v.checked, 2);
        assert_eq!(v.violations.len(), 1);
        assert_eq!(v.violations[0].t, 1234);
        assert_eq!(
            v.violations[0].evidence,
            "sub never got p1#17 (QoS 2, acknowledged at 1234 ms)"
        );
    }

    #[test]
    fn a_qos2_message_delivered_twice_is_a_violation_but_qos1_twice_is_not() {
        let v = judge(
            subscribed(2)
                .publish(40, 30, "p1", 2, 1, 2)
                .publish(41, 31, "p1", 2, 2, 1)
                .deliver(45, "sub", 1, "p1", 1)
                .deliver(46, "sub", 1, "p1", 2)
                .deliver(47, "sub", 1, "p1", 2)
                .deliver(50, "sub", 1, "p1", 1),
        );
        assert_eq!(v.violations.len(), 1);
        assert_eq!(v.violations[0].t, 50);
        assert!(
            v.violations[0]
                .evidence
                .contains("sub got p1#1 2 times (QoS 2"),
            "{}",
            v.violations[0].evidence
        );
    }

    #[test]
    fn effective_qos_is_the_lower_of_publish_and_subscription() {
        // QoS 2 publish to a QoS 1 subscription: duplicates are allowed.
        let v = judge(
            subscribed(1)
                .publish(40, 30, "p1", 2, 1, 2)
                .deliver(45, "sub", 1, "p1", 1)
                .deliver(46, "sub", 1, "p1", 1),
        );
        assert_eq!(v.checked, 1);
        assert!(v.violations.is_empty(), "{:?}", v.violations);
    }

    #[test]
    fn unacknowledged_early_qos0_and_unmatched_messages_are_not_expected() {
        let v = judge(
            subscribed(2)
                // Sent before the SUBACK.
                .publish(25, 19, "p1", 2, 1, 2)
                .publish(40, 30, "p1", 2, 2, 2)
                .outcome(timeout())
                .publish(41, 31, "p1", 2, 3, 2)
                .outcome(failed())
                .publish(42, 32, "p1", 2, 4, 2)
                .outcome(refused(0x97))
                .publish(43, 33, "p1", 2, 5, 0)
                .publish(44, 34, "p1", 2, 6, 2)
                .topic("other/p1"),
        );
        assert_eq!(v.checked, 0);
        assert!(v.violations.is_empty(), "{:?}", v.violations);
    }

    #[test]
    fn a_clean_start_sub_session_is_not_persistent() {
        let v = judge(
            History::new()
                .connect(10, "sub", 1, true, Some(false))
                .subscribe(20, "sub", 1, "chaos/data/+", 2)
                .publish(40, 30, "p1", 2, 1, 2),
        );
        assert_eq!(v.checked, 0);
        assert!(v.violations.is_empty());
    }

    #[test]
    fn a_clean_start_ends_the_expectation_and_a_new_subscribe_starts_another() {
        let v = judge(
            subscribed(1)
                .publish(40, 30, "p1", 2, 1, 1)
                .connect(100, "sub", 3, true, Some(false))
                // Sent before the clean start, acknowledged after it was sent: may be discarded.
                .publish(101, 98, "p1", 2, 2, 1)
                .publish(120, 110, "p1", 2, 3, 1)
                .connect(200, "sub", 4, false, Some(true))
                .subscribe(210, "sub", 4, "chaos/data/#", 1)
                .publish(230, 220, "p1", 2, 4, 1),
        );
        // p1#1 (first subscription) and p1#4 (second) are expected, both missing.
        assert_eq!(v.checked, 2);
        assert_eq!(v.violations.len(), 2);
        assert!(v.violations[0].evidence.contains("p1#1"));
        assert!(v.violations[1].evidence.contains("p1#4"));
    }

    #[test]
    fn a_refused_message_delivered_to_a_persistent_subscriber_is_a_violation() {
        let v = judge(
            subscribed(1)
                .publish(40, 30, "p1", 2, 7, 1)
                .outcome(refused(0x97))
                .deliver(50, "sub", 1, "p1", 7)
                .publish(60, 55, "p1", 2, 8, 1)
                .outcome(timeout())
                .deliver(70, "sub", 1, "p1", 8),
        );
        assert_eq!(v.violations.len(), 1);
        assert_eq!(v.violations[0].t, 50);
        let e = &v.violations[0].evidence;
        assert!(
            e.starts_with("a refused message was delivered: sub (conn 1) got p1#7"),
            "{e}"
        );
        assert!(e.contains("0x97"), "{e}");
    }

    #[test]
    fn a_phantom_delivery_is_a_violation_but_retained_topics_are_ignored() {
        let v = judge(
            subscribed(1)
                .publish(40, 30, "p1", 2, 1, 1)
                .deliver(45, "sub", 1, "p1", 1)
                .deliver(50, "sub", 1, "p1", 99)
                .deliver(51, "sub", 1, "w", 3)
                .topic("chaos/retained/1"),
        );
        assert_eq!(v.violations.len(), 1);
        assert_eq!(
            v.violations[0].evidence,
            "sub (conn 1) got p1#99 on chaos/data/p1 at 50 ms, which was never published (phantom)"
        );
    }

    #[test]
    fn overlapping_subscriptions_may_each_bring_a_copy() {
        let v = judge(
            subscribed(2)
                .subscribe(21, "sub", 1, "chaos/data/p1", 2)
                .publish(40, 30, "p1", 2, 1, 2)
                .deliver(45, "sub", 1, "p1", 1)
                .deliver(46, "sub", 1, "p1", 1),
        );
        assert_eq!(v.checked, 1);
        assert!(v.violations.is_empty(), "{:?}", v.violations);
    }

    #[test]
    fn an_unacknowledged_qos2_message_delivered_twice_is_a_violation() {
        let v = judge(
            subscribed(2)
                .publish(40, 30, "p1", 2, 1, 2)
                .outcome(timeout())
                .publish(41, 31, "p1", 2, 2, 2)
                .outcome(failed())
                .publish(42, 32, "p1", 2, 3, 2)
                .outcome(refused(0x97))
                // QoS 1 duplicates are allowed, whatever the outcome.
                .publish(43, 33, "p1", 2, 4, 1)
                .outcome(timeout())
                // Sent before the SUBACK: not judged.
                .publish(44, 19, "p1", 2, 5, 2)
                .outcome(timeout())
                // Lost: fine, it was never acknowledged.
                .publish(45, 35, "p1", 2, 6, 2)
                .outcome(timeout())
                .deliver(50, "sub", 1, "p1", 1)
                .deliver(51, "sub", 1, "p1", 1)
                .deliver(52, "sub", 1, "p1", 2)
                .deliver(53, "sub", 1, "p1", 2)
                .deliver(54, "sub", 1, "p1", 3)
                .deliver(55, "sub", 1, "p1", 3)
                .deliver(56, "sub", 1, "p1", 4)
                .deliver(57, "sub", 1, "p1", 4)
                .deliver(58, "sub", 1, "p1", 5)
                .deliver(59, "sub", 1, "p1", 5),
        );
        assert_eq!(v.checked, 0);
        let e: Vec<&str> = v.violations.iter().map(|v| v.evidence.as_str()).collect();
        assert_eq!(
            e,
            vec![
                "sub got p1#1 2 times (QoS 2, timed out at 40 ms, second copy at 51 ms)",
                "sub got p1#2 2 times (QoS 2, failed at 41 ms, second copy at 53 ms)",
                "a refused message was delivered: sub (conn 1) got p1#3 at 54 ms, whose PUBLISH was refused with 0x97 at 42 ms",
                "sub got p1#3 2 times (QoS 2, refused with 0x97 at 42 ms, second copy at 55 ms)",
                "a refused message was delivered: sub (conn 1) got p1#3 at 55 ms, whose PUBLISH was refused with 0x97 at 42 ms",
            ]
        );
    }

    #[test]
    fn a_copy_delivered_below_the_effective_qos_is_a_violation() {
        let v = judge(
            subscribed(1)
                .publish(40, 30, "p1", 2, 1, 1)
                .deliver(45, "sub", 1, "p1", 1)
                .deliver(46, "sub", 1, "p1", 1)
                .qos(0)
                // Unacknowledged: still judged.
                .publish(50, 47, "p1", 2, 2, 2)
                .outcome(timeout())
                .deliver(55, "sub", 1, "p1", 2)
                .qos(0)
                // min(QoS 2 publish, QoS 1 subscription) = 1: a QoS 1 copy is right.
                .publish(60, 57, "p1", 2, 3, 2)
                .deliver(65, "sub", 1, "p1", 3)
                .qos(1)
                // QoS 0 publishes and subscribers of other clients are not judged.
                .publish(70, 67, "p1", 2, 4, 0)
                .deliver(75, "sub", 1, "p1", 4)
                .deliver(76, "other", 9, "p1", 3)
                .qos(0),
        );
        assert_eq!(v.checked, 2);
        let e: Vec<&str> = v.violations.iter().map(|v| v.evidence.as_str()).collect();
        assert_eq!(
            e,
            vec![
                "sub (conn 1) got p1#1 at 46 ms delivered at QoS 0, expected 1 (published at QoS 1, acknowledged at 40 ms)",
                "sub (conn 1) got p1#2 at 55 ms delivered at QoS 0, expected 1 (published at QoS 2, timed out at 50 ms)",
            ]
        );
    }

    #[test]
    fn with_overlapping_subscriptions_a_copy_may_come_at_the_lower_qos() {
        let v = judge(
            subscribed(2)
                .subscribe(21, "sub", 1, "chaos/data/p1", 1)
                .publish(40, 30, "p1", 2, 1, 2)
                .deliver(45, "sub", 1, "p1", 1)
                .deliver(46, "sub", 1, "p1", 1)
                .qos(1),
        );
        assert!(v.violations.is_empty(), "{:?}", v.violations);
    }
}
