//! Token buckets for rate limits: per client messages/s and bytes/s inbound, per listener connections/s.
//! Over the limit nobody is dropped: the caller waits the returned time (its socket reads, or accepts,
//! pause), which is what "throttled" means here. Pure: time is passed in.

use std::time::{Duration, Instant};

/// A bucket of `burst` tokens refilled at `rate` per second.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// `rate` per second with a burst of one second's worth (at least one token).
    pub fn new(rate: u64, now: Instant) -> TokenBucket {
        let burst = (rate as f64).max(1.0);
        TokenBucket {
            rate: rate as f64,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes `n` tokens (going into debt if needed) and says how long to wait until that debt is paid.
    pub fn take(&mut self, n: u64, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// An optional bucket: a rate of 0 means unlimited.
pub fn bucket(rate: u64, now: Instant) -> Option<TokenBucket> {
    (rate > 0).then(|| TokenBucket::new(rate, now))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, t0);
        for _ in 0..10 {
            assert_eq!(b.take(1, t0), Duration::ZERO);
        }
        assert_eq!(b.take(1, t0), Duration::from_millis(100));
        // Half a second later five tokens came back, minus the one borrowed.
        let t1 = t0 + Duration::from_millis(500);
        for _ in 0..4 {
            assert_eq!(b.take(1, t1), Duration::ZERO);
        }
        assert!(b.take(1, t1) > Duration::ZERO);
    }

    #[test]
    fn large_takes_wait_in_proportion() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, t0);
        assert_eq!(
            b.take(3000, t0),
            Duration::from_secs(2),
            "bytes over the burst wait for the rate"
        );
        assert!(bucket(0, t0).is_none());
    }
}
