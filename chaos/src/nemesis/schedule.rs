//! The nemesis's schedule, from the seed alone: rounds of a quiet period then one fault held a while, so the
//! same seed replays the same faults at the same times.

use crate::history::FaultKind;
use crate::rng::Rng;

/// The stream of the seed the schedule draws from (the workload uses others).
const SCHEDULE_STREAM: u64 = 0x4E45_4D45; // "NEME"

/// Quiet time before each fault, ms: long enough for the cluster to settle and the workload to make progress.
const QUIET_MS: (u64, u64) = (3_000, 6_000);

/// How long a fault is held, ms: longer than raft's election timeout (1 s), short enough for many rounds.
const HOLD_MS: (u64, u64) = (3_000, 10_000);

/// The time a rolling restart is expected to take (three drains and catch-ups); it is held as long as it
/// takes, and the schedule leaves it this much.
pub const ROLLING_BUDGET_MS: u64 = 45_000;

/// One fault of the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// When it starts, ms after the nemesis starts.
    pub at_ms: u64,
    pub kind: FaultKind,
    /// How long it is held before it heals; 0 for a rolling restart (as long as it takes).
    pub hold_ms: u64,
    /// Drawn for the fault's random choices (which node).
    pub pick: u64,
}

impl Step {
    /// How much of the timeline the step takes.
    pub fn span_ms(&self) -> u64 {
        match self.kind {
            FaultKind::Rolling => ROLLING_BUDGET_MS,
            _ => self.hold_ms,
        }
    }
}

/// The faults of a run of `total_ms` with faults of `kinds` (empty `kinds`: none). Every step ends (by its
/// span) within `total_ms`.
pub fn schedule(seed: u64, kinds: &[FaultKind], total_ms: u64) -> Vec<Step> {
    let mut rng = Rng::new(seed).fork(SCHEDULE_STREAM);
    let mut steps = Vec::new();
    if kinds.is_empty() {
        return steps;
    }
    let mut t = 0;
    // Kinds are dealt from a shuffled deck: every kind once before any comes again, so even a short run
    // meets each kind it was given.
    let mut deck: Vec<FaultKind> = Vec::new();
    loop {
        let at_ms = t + rng.range(QUIET_MS.0, QUIET_MS.1);
        if deck.is_empty() {
            deck = kinds.to_vec();
            for i in (1..deck.len()).rev() {
                let j = rng.below(i as u64 + 1) as usize;
                deck.swap(i, j);
            }
        }
        let Some(kind) = deck.pop() else {
            return steps;
        };
        let hold = rng.range(HOLD_MS.0, HOLD_MS.1);
        let step = Step {
            at_ms,
            kind,
            hold_ms: if kind == FaultKind::Rolling { 0 } else { hold },
            pick: rng.next_u64(),
        };
        if step.at_ms + step.span_ms() > total_ms {
            return steps;
        }
        t = step.at_ms + step.span_ms();
        steps.push(step);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use FaultKind::*;

    #[test]
    fn every_kind_comes_once_before_any_comes_again() {
        for seed in 0..20 {
            let steps = schedule(seed, &FaultKind::ALL, 3_600_000);
            let n = FaultKind::ALL.len();
            let mut first: Vec<FaultKind> = steps[..n].iter().map(|s| s.kind).collect();
            first.sort();
            assert_eq!(first, FaultKind::ALL.to_vec(), "seed {seed}");
        }
    }

    #[test]
    fn schedules_replay_by_seed_and_stay_within_the_run() {
        let cases: [(u64, &[FaultKind], u64); 5] = [
            (1, &[Kill], 60_000),
            (2, &[Kill, Pause], 120_000),
            (3, &FaultKind::ALL, 300_000),
            (4, &[Rolling], 200_000),
            (5, &[Partition, Netem, KillLeader, KillOwner], 90_000),
        ];
        for (seed, kinds, total) in cases {
            let a = schedule(seed, kinds, total);
            assert_eq!(a, schedule(seed, kinds, total), "seed {seed}");
            assert_ne!(a, schedule(seed + 100, kinds, total), "seed {seed}");
            assert!(!a.is_empty(), "seed {seed}");
            let mut end = 0;
            for s in &a {
                assert!(kinds.contains(&s.kind), "seed {seed}: {s:?}");
                assert!(s.at_ms >= end + QUIET_MS.0, "seed {seed}: {s:?} overlaps");
                end = s.at_ms + s.span_ms();
                assert!(end <= total, "seed {seed}: {s:?} past {total}");
                if s.kind == Rolling {
                    assert_eq!(s.hold_ms, 0);
                } else {
                    assert!((HOLD_MS.0..=HOLD_MS.1).contains(&s.hold_ms), "{s:?}");
                }
            }
        }
    }

    #[test]
    fn no_kinds_or_no_time_means_no_faults() {
        assert!(schedule(1, &[], 1_000_000).is_empty());
        assert!(schedule(1, &[Kill], 2_000).is_empty());
    }
}
