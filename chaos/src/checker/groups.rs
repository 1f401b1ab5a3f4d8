//! Promise 1 for shared subscriptions: an acknowledged QoS 1 or QoS 2 PUBLISH that matches a shared group
//! with persistent members reaches the group, one member per message: at least once for QoS 1, exactly
//! once over all the members for QoS 2.
//!
//! A group is the persistent subscriptions (see `subscriptions`) to `$share/{group}/{filter}` of the same
//! group and filter. A message concerns the group when it is not retained, has QoS 1 or 2, matches the
//! filter and its PUBLISH was sent after the SUBACK of a member whose subscription still holds (no clean
//! start of that member since). Its members are judged by every copy they got of a message: the
//! workload's members subscribe to nothing else.
//!
//! - Missing: an acknowledged message that concerns the group must reach at least one member.
//! - Exactly once: a message at QoS 2 that concerns a group whose members all subscribed at QoS 2 must not
//!   reach the group more than once in all, whatever its PUBLISH's outcome.
//!
//! `checked` counts expected (group, acknowledged message) pairs.

use super::subscriptions::Subscription;
use super::Violation;
use crate::history::{Event, Record};
use cicada::protocol::topic::{matches, parse_shared};
use std::collections::{BTreeMap, HashMap, HashSet};

/// One group's members: (client, QoS, since, until).
type Members<'a> = Vec<(&'a str, u8, u64, Option<u64>)>;

/// Judges the shared groups among `subs`: (checked, violations).
pub(crate) fn check(records: &[Record], subs: &[Subscription<'_>]) -> (u64, Vec<Violation>) {
    let mut groups: BTreeMap<(&str, &str), Members> = BTreeMap::new();
    for s in subs {
        if let Some(Ok(shared)) = parse_shared(s.filter) {
            groups
                .entry((shared.group, shared.filter))
                .or_default()
                .push((s.client, s.qos, s.since, s.until));
        }
    }
    if groups.is_empty() {
        return (0, Vec::new());
    }
    let members: HashSet<&str> = groups.values().flatten().map(|m| m.0).collect();
    // Copies per (client, publisher, seq), members only; the first of each publish.
    let mut copies: HashMap<(&str, &str, u64), (u32, u64)> = HashMap::new();
    let mut seen = HashSet::new();
    let mut publishes = Vec::new();
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
            } if *qos > 0 && !*retain && seen.insert((publisher.as_str(), *seq)) => {
                publishes.push((
                    r.t,
                    publisher.as_str(),
                    *seq,
                    topic.as_str(),
                    *qos,
                    *sent,
                    outcome,
                ));
            }
            Event::Deliver {
                client,
                publisher,
                seq,
                ..
            } if members.contains(client.as_str()) => {
                let c = copies
                    .entry((client.as_str(), publisher.as_str(), *seq))
                    .or_default();
                c.0 += 1;
                if c.0 == 1 {
                    c.1 = r.t;
                }
            }
            _ => {}
        }
    }
    let mut checked = 0;
    let mut violations = Vec::new();
    for ((group, filter), members) in &groups {
        let names: Vec<&str> = members.iter().map(|m| m.0).collect();
        for &(t, publisher, seq, topic, qos, sent, outcome) in &publishes {
            if !matches(filter, topic) {
                continue;
            }
            let active: Vec<_> = members
                .iter()
                .filter(|m| sent > m.2 && m.3.is_none_or(|u| t < u))
                .collect();
            if active.is_empty() {
                continue;
            }
            let got: Vec<(&str, u32, u64)> = names
                .iter()
                .filter_map(|c| copies.get(&(*c, publisher, seq)).map(|n| (*c, n.0, n.1)))
                .collect();
            let total: u32 = got.iter().map(|g| g.1).sum();
            if outcome.is_ok() {
                checked += 1;
                if total == 0 {
                    violations.push(Violation {
                        t,
                        evidence: format!(
                            "shared group {group} ({}) never got {publisher}#{seq} (QoS {qos}, acknowledged at {t} ms)",
                            names.join(", ")
                        ),
                    });
                }
            }
            if qos == 2 && active.iter().all(|m| m.1 == 2) && total > 1 {
                let second = got.iter().map(|g| g.2).max().unwrap_or(t);
                violations.push(Violation {
                    t: second,
                    evidence: format!(
                        "shared group {group} got {publisher}#{seq} {total} times (QoS 2): {}",
                        got.iter()
                            .map(|(c, n, at)| format!("{c} {n}x from {at} ms"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
            }
        }
    }
    (checked, violations)
}

#[cfg(test)]
mod tests {
    use crate::checker::conns::Connects;
    use crate::checker::delivery;
    use crate::checker::testkit::{refused, History};
    use crate::checker::Verdict;

    fn judge(h: History) -> Verdict {
        let records = h.records();
        delivery::check(&records, &Connects::new(&records))
    }

    /// Two persistent members of group g (QoS 2), subscribed at 20 and 30 ms, and a publisher.
    fn group() -> History {
        History::new()
            .connect(10, "m1", 1, false, Some(false))
            .connect(11, "m2", 2, false, Some(false))
            .subscribe(20, "m1", 1, "$share/g/chaos/data/#", 2)
            .subscribe(30, "m2", 2, "$share/g/chaos/data/#", 2)
            .connect(15, "p1", 3, true, Some(false))
    }

    #[test]
    fn each_acknowledged_message_reaching_one_member_passes() {
        let v = judge(
            group()
                .publish(40, 35, "p1", 3, 1, 2)
                .publish(41, 36, "p1", 3, 2, 1)
                .deliver(45, "m1", 1, "p1", 1)
                .deliver(46, "m2", 2, "p1", 2)
                .deliver(47, "m2", 2, "p1", 2),
        );
        assert_eq!(v.checked, 2, "one per (group, message)");
        assert!(v.violations.is_empty(), "{:?}", v.violations);
    }

    #[test]
    fn a_message_no_member_got_and_a_qos2_message_two_members_got_are_violations() {
        let v = judge(
            group()
                .publish(40, 35, "p1", 3, 1, 2)
                .publish(50, 45, "p1", 3, 2, 2)
                .deliver(55, "m1", 1, "p1", 2)
                .deliver(60, "m2", 2, "p1", 2),
        );
        assert_eq!(v.violations.len(), 2, "{:?}", v.violations);
        assert_eq!(
            v.violations[0].evidence,
            "shared group g (m1, m2) never got p1#1 (QoS 2, acknowledged at 40 ms)"
        );
        assert_eq!(v.violations[1].t, 60);
        assert!(
            v.violations[1]
                .evidence
                .starts_with("shared group g got p1#2 2 times (QoS 2)"),
            "{}",
            v.violations[1].evidence
        );
    }

    #[test]
    fn a_message_sent_before_any_member_subscribed_or_refused_is_not_expected() {
        let v = judge(
            group()
                .publish(19, 12, "p1", 3, 1, 1)
                .publish(42, 35, "p1", 3, 2, 1)
                .outcome(refused(0x80)),
        );
        assert_eq!(v.checked, 0);
        assert!(v.violations.is_empty(), "{:?}", v.violations);
    }
}
