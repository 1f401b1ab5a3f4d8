//! The report of a run, written from the history and the checker's [`Judgement`]: a plain-text summary
//! for stdout, one JSON line for scripts, and a report directory with a timeline picture.
//!
//! # Layout
//! - [`summary`]: the text table (one row per promise, faults with recovery times, counts, the seed).
//! - [`json`]: the one-line JSON result.
//! - [`timeline`]: `timeline.svg`, throughput and p99 latency per second with fault windows and violations.
//! - [`write_dir`] (here): the report directory, `summary.txt`, `judgement.json`, `timeline.svg`,
//!   `violations.txt`. `history.jsonl` is written by the [`Recorder`](crate::history::Recorder) during
//!   the run, not here.

mod buckets;
pub mod json;
pub mod summary;
pub mod timeline;

pub use json::json_line;
pub use summary::summary;
pub use timeline::timeline_svg;

use crate::checker::Judgement;
use crate::history::{Promise, Record};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Why a report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A file or the directory could not be created or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The judgement could not be serialised (it holds only strings, numbers and maps with string-like
    /// keys, so this is not expected).
    #[error("judgement as JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// plotters failed to lay out or write the picture.
    #[error("{path}: drawing the timeline: {message}")]
    Plot { path: PathBuf, message: String },
}

/// Writes the report directory `dir` (created if missing): `summary.txt` (as [`summary`]),
/// `judgement.json` (the judgement, pretty-printed), `timeline.svg` (as [`timeline_svg`]) and
/// `violations.txt` (as [`violations_text`]).
pub fn write_dir(
    dir: &Path,
    seed: u64,
    namespaces: bool,
    records: &[Record],
    j: &Judgement,
) -> Result<(), ReportError> {
    std::fs::create_dir_all(dir).map_err(|source| ReportError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    write_file(&dir.join("summary.txt"), &summary(seed, namespaces, j))?;
    let mut judgement = serde_json::to_string_pretty(j)?;
    judgement.push('\n');
    write_file(&dir.join("judgement.json"), &judgement)?;
    write_file(&dir.join("violations.txt"), &violations_text(j))?;
    timeline_svg(records, j, &dir.join("timeline.svg"))
}

/// Every violation of every promise, one per line, `promise t=<ms>ms evidence`, in time order (ties in
/// the order of [`Promise::ALL`]); newlines inside evidence become spaces. Empty when nothing broke.
pub fn violations_text(j: &Judgement) -> String {
    let mut all: Vec<(u64, Promise, &str)> = j
        .verdicts
        .iter()
        .flat_map(|v| {
            v.violations
                .iter()
                .map(move |x| (x.t, v.promise, x.evidence.as_str()))
        })
        .collect();
    all.sort_by_key(|&(t, promise, _)| (t, promise));
    let mut out = String::new();
    for (t, promise, evidence) in all {
        let _ = writeln!(out, "{} t={t}ms {}", promise.name(), one_line(evidence));
    }
    out
}

/// The median of `values` in any order; for an even count the lower of the two middle values, so the
/// median is always a time that was observed. `None` when empty.
pub fn median(values: &[u64]) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    Some(sorted[(sorted.len() - 1) / 2])
}

/// `s` with line breaks and tabs turned into spaces, for one-line output.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r', '\t'], " ")
}

fn write_file(path: &Path, contents: &str) -> Result<(), ReportError> {
    std::fs::write(path, contents).map_err(|source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Hand-made judgements for the report's tests (the checker is tested on its own).

    use crate::checker::{Counts, Judgement, Verdict, Violation};
    use crate::history::{Event, FaultKind, Outcome, Promise, Record};
    use std::collections::BTreeMap;

    /// A data PUBLISH of `p1` (numbered by its time) sent at `sent`, ended at `t` with `outcome`.
    pub fn publish(t: u64, sent: u64, outcome: Outcome) -> Record {
        Record {
            t,
            event: Event::Publish {
                client: "p1".into(),
                conn: 1,
                publisher: "p1".into(),
                seq: t,
                topic: "chaos/data/p1".into(),
                qos: 1,
                retain: false,
                sent,
                outcome,
            },
        }
    }

    /// Two faults (kill, partition), one violation of `acked_delivered`, one of `rejoin`.
    pub fn judgement() -> Judgement {
        let verdicts = Promise::ALL
            .into_iter()
            .map(|promise| Verdict {
                promise,
                checked: 10,
                violations: match promise {
                    Promise::AckedDelivered => vec![Violation {
                        t: 2500,
                        evidence: "p1 seq 7 acknowledged at 2400ms\nnever delivered to s1".into(),
                    }],
                    Promise::Rejoin => vec![Violation {
                        t: 900,
                        evidence: "x".repeat(300),
                    }],
                    _ => Vec::new(),
                },
            })
            .collect();
        Judgement {
            verdicts,
            recovery_ms: BTreeMap::from([
                (FaultKind::Kill, vec![400, 100, 300, 200]),
                (FaultKind::Partition, vec![]),
            ]),
            counts: Counts {
                rounds: 2,
                faults: BTreeMap::from([(FaultKind::Kill, 1), (FaultKind::Partition, 1)]),
                published: 100,
                acknowledged: 90,
                delivered: 180,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_of_an_even_count_is_the_lower_middle() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[5]), Some(5));
        assert_eq!(median(&[400, 100, 300, 200]), Some(200));
        assert_eq!(median(&[3, 1, 2]), Some(2));
    }

    #[test]
    fn violations_are_listed_one_per_line_in_time_order() {
        let text = violations_text(&fixtures::judgement());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].starts_with("rejoin t=900ms xxx"), "{text}");
        assert_eq!(
            lines[1],
            "acked_delivered t=2500ms p1 seq 7 acknowledged at 2400ms never delivered to s1"
        );
    }

    #[test]
    fn the_report_directory_holds_its_four_files() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("run-7");
        let j = fixtures::judgement();
        write_dir(&out, 7, false, &[], &j).unwrap();
        for name in [
            "summary.txt",
            "judgement.json",
            "timeline.svg",
            "violations.txt",
        ] {
            assert!(out.join(name).is_file(), "{name} missing");
        }
        assert!(!out.join("history.jsonl").exists());
        let back: Judgement =
            serde_json::from_str(&std::fs::read_to_string(out.join("judgement.json")).unwrap())
                .unwrap();
        assert_eq!(back, j);
        let summary = std::fs::read_to_string(out.join("summary.txt")).unwrap();
        assert!(summary.contains("seed 7"), "{summary}");
    }

    #[test]
    fn an_unwritable_directory_is_an_io_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain-file");
        std::fs::write(&file, "").unwrap();
        let e = write_dir(&file.join("sub"), 1, false, &[], &fixtures::judgement()).unwrap_err();
        assert!(matches!(e, ReportError::Io { .. }), "{e}");
        assert!(e.to_string().contains("plain-file"), "{e}");
    }
}
