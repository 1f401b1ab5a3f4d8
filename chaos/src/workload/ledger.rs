//! What the workload knows while it runs: which data messages were acknowledged and which each persistent
//! subscriber has got, so the run's last phase can wait until every subscriber has caught up instead of
//! waiting a fixed time. (The checker judges the history, not this.)

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

#[derive(Default)]
pub struct Ledger {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// (sent ms, publisher, seq) of every acknowledged QoS 1/2 data message.
    acked: Vec<(u64, String, u64)>,
    subscribers: HashMap<String, Progress>,
}

struct Progress {
    /// When the subscription was acknowledged: messages sent after it are expected.
    since: u64,
    seen: HashSet<(String, u64)>,
}

impl Ledger {
    pub fn acked(&self, sent: u64, publisher: &str, seq: u64) {
        self.lock().acked.push((sent, publisher.to_string(), seq));
    }

    /// `client`'s subscription was acknowledged at `since` (the first time counts).
    pub fn subscribed(&self, client: &str, since: u64) {
        self.lock()
            .subscribers
            .entry(client.to_string())
            .or_insert_with(|| Progress {
                since,
                seen: HashSet::new(),
            });
    }

    pub fn delivered(&self, client: &str, publisher: &str, seq: u64) {
        if let Some(p) = self.lock().subscribers.get_mut(client) {
            p.seen.insert((publisher.to_string(), seq));
        }
    }

    /// How many acknowledged messages the subscribers are still missing, in all.
    pub fn missing(&self) -> usize {
        let inner = self.lock();
        inner
            .subscribers
            .values()
            .map(|p| {
                inner
                    .acked
                    .iter()
                    .filter(|(sent, publisher, seq)| {
                        *sent > p.since && !p.seen.contains(&(publisher.clone(), *seq))
                    })
                    .count()
            })
            .sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscriber_misses_only_what_was_acknowledged_after_it_subscribed() {
        let l = Ledger::default();
        l.acked(5, "p", 1);
        l.subscribed("s", 10);
        l.acked(11, "p", 2);
        l.acked(12, "p", 3);
        assert_eq!(l.missing(), 2);
        l.delivered("s", "p", 2);
        l.delivered("s", "p", 1);
        assert_eq!(l.missing(), 1);
        l.delivered("s", "p", 3);
        assert_eq!(l.missing(), 0);
    }
}
