//! The plain-text summary printed at the end of a run: one row per promise, the faults with their recovery
//! times, the run's counts and its seed. The caller prints how to replay (`cicada-chaos run --seed S ...`).

use super::{median, one_line};
use crate::checker::Judgement;
use crate::history::{FaultKind, Promise};
use std::collections::BTreeSet;
use std::fmt::Write as _;

/// How many characters of a promise's first evidence the table shows.
const EVIDENCE_CHARS: usize = 100;

/// The summary table of `j` for the run with `seed`, `namespaces` telling whether the nodes ran in
/// network namespaces. A promise without a verdict in `j` is shown as unchecked ("-"), not as passed.
pub fn summary(seed: u64, namespaces: bool, j: &Judgement) -> String {
    let mut out = String::new();
    let total = j.violations();
    let _ = writeln!(
        out,
        "cicada-chaos: seed {seed}, network namespaces {}, {}",
        if namespaces { "on" } else { "off" },
        if total == 0 {
            "PASS".to_string()
        } else {
            format!(
                "FAIL ({total} violation{})",
                if total == 1 { "" } else { "s" }
            )
        }
    );
    out.push('\n');
    promises(&mut out, j);
    out.push('\n');
    faults(&mut out, j);
    out.push('\n');
    let c = &j.counts;
    let _ = writeln!(
        out,
        "published {}, acknowledged {}, delivered {}, rounds {}",
        c.published, c.acknowledged, c.delivered, c.rounds
    );
    out
}

fn promises(out: &mut String, j: &Judgement) {
    let _ = writeln!(
        out,
        "{:<20} {:>10} {:>10}  {:<7} first evidence",
        "promise", "checked", "violations", "verdict"
    );
    for promise in Promise::ALL {
        let Some(v) = j.verdicts.iter().find(|v| v.promise == promise) else {
            let _ = writeln!(out, "{:<20} {:>10} {:>10}  -", promise.name(), "-", "-");
            continue;
        };
        let verdict = if v.violations.is_empty() {
            "PASS"
        } else {
            "FAIL"
        };
        let evidence = v
            .violations
            .first()
            .map(|x| format!("t={}ms {}", x.t, one_line(&x.evidence)))
            .map(|e| truncate(&e, EVIDENCE_CHARS))
            .unwrap_or_default();
        let row = format!(
            "{:<20} {:>10} {:>10}  {:<7} {evidence}",
            promise.name(),
            v.checked,
            v.violations.len(),
            verdict
        );
        let _ = writeln!(out, "{}", row.trim_end());
    }
}

fn faults(out: &mut String, j: &Judgement) {
    let kinds: BTreeSet<FaultKind> = j
        .counts
        .faults
        .keys()
        .chain(j.recovery_ms.keys())
        .copied()
        .collect();
    if kinds.is_empty() {
        let _ = writeln!(out, "faults: none");
        return;
    }
    let _ = writeln!(
        out,
        "{:<20} {:>10} {:>19} {:>16}",
        "fault", "count", "recovery median ms", "recovery max ms"
    );
    for kind in kinds {
        let count = j.counts.faults.get(&kind).copied().unwrap_or(0);
        let times = j.recovery_ms.get(&kind).map(Vec::as_slice).unwrap_or(&[]);
        let shown = |x: Option<u64>| x.map_or_else(|| "-".to_string(), |ms| ms.to_string());
        let _ = writeln!(
            out,
            "{:<20} {:>10} {:>19} {:>16}",
            kind.name(),
            count,
            shown(median(times)),
            shown(times.iter().copied().max())
        );
    }
}

/// `s` cut to at most `max` characters (not bytes), ending in "..." when cut.
fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut cut: String = s.chars().take(max.saturating_sub(3)).collect();
    cut.push_str("...");
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixtures;

    #[test]
    fn one_row_per_promise_with_verdict_and_first_evidence() {
        let s = summary(42, true, &fixtures::judgement());
        assert!(s.contains("seed 42"), "{s}");
        assert!(s.contains("namespaces on"), "{s}");
        assert!(s.contains("FAIL (2 violations)"), "{s}");
        for promise in Promise::ALL {
            let row = s
                .lines()
                .find(|l| l.starts_with(&format!("{} ", promise.name())))
                .unwrap_or_else(|| panic!("no row for {}: {s}", promise.name()));
            let failed = matches!(promise, Promise::AckedDelivered | Promise::Rejoin);
            assert_eq!(row.contains("FAIL"), failed, "{row}");
            assert_eq!(row.contains("PASS"), !failed, "{row}");
        }
        let acked = s
            .lines()
            .find(|l| l.starts_with("acked_delivered"))
            .unwrap();
        assert!(
            acked.ends_with("t=2500ms p1 seq 7 acknowledged at 2400ms never delivered to s1"),
            "{acked}"
        );
    }

    #[test]
    fn long_evidence_is_cut_to_about_a_hundred_characters() {
        let s = summary(1, false, &fixtures::judgement());
        let rejoin = s.lines().find(|l| l.starts_with("rejoin")).unwrap();
        let evidence = &rejoin[rejoin.find("t=900ms").unwrap()..];
        assert_eq!(evidence.chars().count(), EVIDENCE_CHARS, "{evidence}");
        assert!(evidence.ends_with("..."), "{evidence}");
        assert_eq!(truncate("héllo", 5), "héllo");
        assert_eq!(truncate("héllo wörld", 8), "héllo...");
    }

    #[test]
    fn faults_show_count_and_recovery_median_and_max() {
        let s = summary(1, false, &fixtures::judgement());
        let kill: Vec<&str> = s
            .lines()
            .find(|l| l.starts_with("kill "))
            .unwrap()
            .split_whitespace()
            .collect();
        assert_eq!(kill, ["kill", "1", "200", "400"]);
        let partition: Vec<&str> = s
            .lines()
            .find(|l| l.starts_with("partition "))
            .unwrap()
            .split_whitespace()
            .collect();
        assert_eq!(partition, ["partition", "1", "-", "-"]);
        assert!(
            s.contains("published 100, acknowledged 90, delivered 180, rounds 2"),
            "{s}"
        );
    }

    #[test]
    fn a_clean_run_without_faults_passes() {
        let mut j = fixtures::judgement();
        for v in &mut j.verdicts {
            v.violations.clear();
        }
        j.recovery_ms.clear();
        j.counts.faults.clear();
        let s = summary(3, false, &j);
        assert!(s.starts_with("cicada-chaos: seed 3, network namespaces off, PASS"));
        assert!(s.contains("faults: none"), "{s}");
        assert!(!s.contains("FAIL"), "{s}");
    }
}
