//! The persistent subscriptions of a history (promise 1's subjects): a (client, filter) whose first
//! successful SUBSCRIBE was made on a connection that succeeded with clean start = false. A clean start of
//! the client (successful, or of unknown outcome: the broker may have read it) ends the subscription, and
//! a later SUBSCRIBE of the same filter starts a new one.

use super::conns::Connects;
use crate::history::{Event, Outcome, Record};
use std::collections::HashMap;

/// One persistent subscription.
pub(crate) struct Subscription<'a> {
    pub client: &'a str,
    pub filter: &'a str,
    pub qos: u8,
    /// When its SUBACK came: messages sent after this are expected.
    pub since: u64,
    /// When a clean start of the client was sent: messages acknowledged from then on are not expected.
    pub until: Option<u64>,
}

/// The persistent subscriptions of the history, each from its first successful SUBSCRIBE.
pub(crate) fn subscriptions<'a>(
    records: &'a [Record],
    connects: &Connects<'a>,
) -> Vec<Subscription<'a>> {
    // Per client, the times (outcome, sent) of the CONNECTs that may have cleaned its session.
    let mut cleans: HashMap<&str, Vec<(u64, u64)>> = HashMap::new();
    for (client, list) in connects.by_client() {
        let times: Vec<(u64, u64)> = list
            .iter()
            .filter(|c| c.may_have_cleaned())
            .map(|c| (c.t, c.sent))
            .collect();
        if !times.is_empty() {
            cleans.insert(client, times);
        }
    }
    // (client, filter, sessions cleaned before it) -> index in `subs`.
    let mut first: HashMap<(&str, &str, usize), usize> = HashMap::new();
    let mut subs: Vec<Subscription> = Vec::new();
    for r in records {
        let Event::Subscribe {
            client,
            conn,
            filter,
            qos,
            outcome: Outcome::Ok,
            ..
        } = &r.event
        else {
            continue;
        };
        let persistent = connects
            .get(*conn)
            .is_some_and(|c| c.ok() && !c.clean_start);
        if !persistent {
            continue;
        }
        let cleaned = cleans.get(client.as_str()).map_or(&[][..], Vec::as_slice);
        let epoch = cleaned.partition_point(|&(t, _)| t <= r.t);
        let until = cleaned.get(epoch).map(|&(_, sent)| sent);
        let sub = Subscription {
            client,
            filter,
            qos: *qos,
            since: r.t,
            until,
        };
        match first.get(&(client.as_str(), filter.as_str(), epoch)) {
            Some(&i) => {
                if r.t < subs[i].since {
                    subs[i] = sub;
                }
            }
            None => {
                first.insert((client, filter, epoch), subs.len());
                subs.push(sub);
            }
        }
    }
    subs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::testkit::{refused, timeout, History};

    fn subs(h: History) -> Vec<(String, String, u8, u64, Option<u64>)> {
        let records = h.records();
        subscriptions(&records, &Connects::new(&records))
            .into_iter()
            .map(|s| (s.client.into(), s.filter.into(), s.qos, s.since, s.until))
            .collect()
    }

    #[test]
    fn only_the_first_subscribe_on_a_persistent_connection_counts() {
        let got = subs(
            History::new()
                .connect(10, "a", 1, false, Some(false))
                .subscribe(30, "a", 1, "x/#", 1)
                .subscribe(20, "a", 1, "x/#", 2)
                .subscribe(25, "a", 1, "y", 1)
                .outcome(refused(0x87))
                .connect(40, "b", 2, true, Some(false))
                .subscribe(50, "b", 2, "x/#", 1)
                .connect(60, "c", 3, false, None)
                .outcome(timeout())
                .subscribe(70, "c", 3, "x/#", 1)
                .subscribe(80, "d", 99, "x/#", 1),
        );
        assert_eq!(got, vec![("a".into(), "x/#".into(), 2, 20, None)]);
    }

    #[test]
    fn a_clean_start_ends_a_subscription_and_the_next_subscribe_starts_one() {
        let got = subs(
            History::new()
                .connect(10, "a", 1, false, Some(false))
                .subscribe(20, "a", 1, "x/#", 1)
                .connect(100, "a", 2, true, None)
                .outcome(timeout())
                .connect(200, "a", 3, false, Some(true))
                .subscribe(210, "a", 3, "x/#", 2)
                .connect(300, "a", 4, true, None)
                .outcome(refused(0x85)),
        );
        assert_eq!(
            got,
            vec![
                ("a".into(), "x/#".into(), 1, 20, Some(99)),
                ("a".into(), "x/#".into(), 2, 210, None),
            ]
        );
    }
}
