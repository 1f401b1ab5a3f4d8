//! Latency percentiles and the per-subscriber record of what arrived.

use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch: publisher and subscriber share the machine's clock.
pub fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The value at percentile `p` (0-100) of sorted microsecond samples, in milliseconds.
pub fn percentile_ms(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let idx = ((p / 100.0) * (sorted_us.len() - 1) as f64).round() as usize;
    f64::from(sorted_us[idx.min(sorted_us.len() - 1)]) / 1000.0
}

/// What one subscriber received: counts, latencies since the last report, and which (publisher, sequence)
/// pairs it has seen, as bitsets, to count duplicates and losses.
#[derive(Default)]
pub struct Record {
    pub delivered: u64,
    pub latencies_us: Vec<u32>,
    pub seen: Vec<Vec<u64>>,
}

impl Record {
    /// Notes one delivery; returns false if it was a duplicate.
    pub fn note(&mut self, publisher: usize, seq: u64, latency_us: u32) -> bool {
        self.delivered += 1;
        self.latencies_us.push(latency_us);
        if self.seen.len() <= publisher {
            self.seen.resize_with(publisher + 1, Vec::new);
        }
        let bits = &mut self.seen[publisher];
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if bits.len() <= word {
            bits.resize(word + 1, 0);
        }
        let fresh = bits[word] & (1 << bit) == 0;
        bits[word] |= 1 << bit;
        fresh
    }
}

/// Distinct (publisher, sequence) pairs across a set of records (one record, or one shared group).
pub fn unique(records: &[&Record]) -> u64 {
    let mut merged: Vec<Vec<u64>> = Vec::new();
    for r in records {
        for (p, bits) in r.seen.iter().enumerate() {
            if merged.len() <= p {
                merged.resize_with(p + 1, Vec::new);
            }
            let m = &mut merged[p];
            if m.len() < bits.len() {
                m.resize(bits.len(), 0);
            }
            for (w, b) in bits.iter().enumerate() {
                m[w] |= b;
            }
        }
    }
    merged
        .iter()
        .flatten()
        .map(|w| u64::from(w.count_ones()))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let v: Vec<u32> = (1..=100).map(|x| x * 1000).collect();
        assert_eq!(percentile_ms(&v, 50.0), 51.0);
        assert_eq!(percentile_ms(&v, 99.0), 99.0);
        assert_eq!(percentile_ms(&v, 100.0), 100.0);
        assert_eq!(percentile_ms(&[], 50.0), 0.0);
    }

    #[test]
    fn duplicates_and_unions_are_counted() {
        let mut a = Record::default();
        assert!(a.note(0, 5, 10));
        assert!(!a.note(0, 5, 10));
        assert!(a.note(1, 200, 10));
        let mut b = Record::default();
        b.note(0, 5, 10);
        b.note(0, 6, 10);
        assert_eq!(unique(&[&a]), 2);
        assert_eq!(unique(&[&a, &b]), 3);
    }
}
