//! The run's result as one JSON line, for scripts and CI (issue 13):
//!
//! ```text
//! {"seed": S, "rounds": R, "faults": {kind: n}, "published": n, "acknowledged": n, "delivered": n,
//!  "violations": {promise: n}, "recovery_ms": {kind: {"median": ms, "max": ms}}, "report": DIR | null}
//! ```
//!
//! `faults` has the kinds that were injected; `violations` has every promise of [`Promise::ALL`] (0 when
//! none, and 0 for a promise the judgement has no verdict for); `recovery_ms` has the kinds with at least
//! one measured recovery, the median of an even count being the lower middle (see [`median`]).

use super::median;
use crate::checker::Judgement;
use crate::history::Promise;
use serde_json::{json, Map, Value};
use std::path::Path;

/// The JSON result of `j` for the run with `seed`; `report` is the report directory, if one was written.
pub fn json_line(seed: u64, j: &Judgement, report: Option<&Path>) -> Value {
    let c = &j.counts;
    let faults: Map<String, Value> = c
        .faults
        .iter()
        .map(|(kind, n)| (kind.name().to_string(), json!(n)))
        .collect();
    let violations: Map<String, Value> = Promise::ALL
        .into_iter()
        .map(|promise| {
            let n = j
                .verdicts
                .iter()
                .filter(|v| v.promise == promise)
                .map(|v| v.violations.len())
                .sum::<usize>();
            (promise.name().to_string(), json!(n))
        })
        .collect();
    let recovery: Map<String, Value> = j
        .recovery_ms
        .iter()
        .filter_map(|(kind, times)| {
            let median = median(times)?;
            let max = times.iter().copied().max()?;
            Some((
                kind.name().to_string(),
                json!({"median": median, "max": max}),
            ))
        })
        .collect();
    json!({
        "seed": seed,
        "rounds": c.rounds,
        "faults": faults,
        "published": c.published,
        "acknowledged": c.acknowledged,
        "delivered": c.delivered,
        "violations": violations,
        "recovery_ms": recovery,
        "report": report.map(|p| p.display().to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixtures;

    fn keys(v: &Value) -> Vec<&str> {
        let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        k.sort_unstable();
        k
    }

    #[test]
    fn the_line_has_exactly_the_issue_s_keys() {
        let v = json_line(42, &fixtures::judgement(), Some(Path::new("/tmp/r")));
        assert_eq!(
            keys(&v),
            [
                "acknowledged",
                "delivered",
                "faults",
                "published",
                "recovery_ms",
                "report",
                "rounds",
                "seed",
                "violations"
            ]
        );
        assert_eq!(v["seed"], 42);
        assert_eq!(v["rounds"], 2);
        assert_eq!(v["published"], 100);
        assert_eq!(v["acknowledged"], 90);
        assert_eq!(v["delivered"], 180);
        assert_eq!(v["report"], "/tmp/r");
        assert_eq!(v["faults"], json!({"kill": 1, "partition": 1}));
        // No recovery measured for the partition: no entry, rather than a made-up number.
        assert_eq!(
            v["recovery_ms"],
            json!({"kill": {"median": 200, "max": 400}})
        );
        assert!(!v.to_string().contains('\n'));
    }

    #[test]
    fn every_promise_has_a_violation_count() {
        let v = json_line(1, &fixtures::judgement(), None);
        assert_eq!(v["report"], Value::Null);
        let names: Vec<&str> = Promise::ALL.iter().map(|p| p.name()).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(keys(&v["violations"]), sorted);
        assert_eq!(v["violations"]["acked_delivered"], 1);
        assert_eq!(v["violations"]["rejoin"], 1);
        assert_eq!(v["violations"]["retained"], 0);
        assert_eq!(v["violations"]["sessions_survive"], 0);
    }

    #[test]
    fn a_judgement_without_verdicts_still_names_every_promise() {
        let mut j = fixtures::judgement();
        j.verdicts.clear();
        let v = json_line(1, &j, None);
        for p in Promise::ALL {
            assert_eq!(v["violations"][p.name()], 0, "{}", p.name());
        }
    }
}
