//! The checker: judges a history, one verdict per promise of ARCHITECTURE §5, with the evidence of every
//! violation, plus the recovery time after each healed fault and the run's counts. Pure: records in,
//! judgement out, so a saved history can be judged again.

use crate::history::{FaultKind, Promise, Record};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Everything the checker concluded about one history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Judgement {
    /// One per promise, in the order of [`Promise::ALL`].
    pub verdicts: Vec<Verdict>,
    /// Per fault kind, for each healed fault: milliseconds from the heal to the first persistent connect
    /// that succeeded.
    pub recovery_ms: BTreeMap<FaultKind, Vec<u64>>,
    pub counts: Counts,
}

/// One promise's verdict: how many things were checked and what broke it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub promise: Promise,
    /// How many items the promise was checked on (expected deliveries, reads, connects, ...).
    pub checked: u64,
    pub violations: Vec<Violation>,
}

/// One violation, at a time of the history, with what shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// Milliseconds since the start: when the violation showed (or the operation it concerns).
    pub t: u64,
    pub evidence: String,
}

/// What the run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Fault rounds (from the `end` record).
    pub rounds: u64,
    /// Faults started, per kind.
    pub faults: BTreeMap<FaultKind, u64>,
    /// PUBLISH attempts, acknowledged ones, and messages handed to subscribers.
    pub published: u64,
    pub acknowledged: u64,
    pub delivered: u64,
}

impl Judgement {
    /// The verdict for `promise`.
    pub fn verdict(&self, promise: Promise) -> &Verdict {
        self.verdicts
            .iter()
            .find(|v| v.promise == promise)
            .expect("a verdict for every promise")
    }

    /// Violations over all promises.
    pub fn violations(&self) -> usize {
        self.verdicts.iter().map(|v| v.violations.len()).sum()
    }
}

/// Judges `records` (in the order recorded).
pub fn check(records: &[Record]) -> Judgement {
    let _ = records;
    Judgement {
        verdicts: Promise::ALL
            .into_iter()
            .map(|promise| Verdict {
                promise,
                checked: 0,
                violations: Vec::new(),
            })
            .collect(),
        recovery_ms: BTreeMap::new(),
        counts: Counts::default(),
    }
}
