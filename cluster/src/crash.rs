//! Deterministic crash points for the multi-process tests: a node configured with [`CrashAt`] makes everything
//! written so far durable and aborts (as `kill -9` would) right after the chosen write, on its n-th time.
//! Production configurations leave it unset; the check is one branch.

use std::str::FromStr;

/// The writes a crash can follow. Each is one atomic sled write; a crash after one and before the next is
/// what these points model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// Entries and hard state of a Ready, before the commit index.
    Persisted,
    /// The commit index of a light ready, before its entries are applied.
    Committed,
    /// A batch of applied entries with its applied index, before the commit index is raised to it.
    Applied,
    /// Log compaction (entries dropped, snapshot marker moved).
    Compacted,
    /// A received snapshot restored into the inactive state tree, before the switch.
    Staged,
    /// The switch to a restored snapshot, before the old state is cleared.
    Installed,
}

/// Crash right after the `hit`-th (1-based) write of `point`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashAt {
    pub point: CrashPoint,
    pub hit: u32,
}

#[derive(Debug, thiserror::Error)]
#[error("crash point {0:?}: expected POINT:N with POINT one of persisted, committed, applied, compacted, staged, installed")]
pub struct CrashParseError(String);

impl FromStr for CrashAt {
    type Err = CrashParseError;
    fn from_str(s: &str) -> Result<CrashAt, CrashParseError> {
        let bad = || CrashParseError(s.to_string());
        let (p, n) = s.split_once(':').ok_or_else(bad)?;
        let point = match p {
            "persisted" => CrashPoint::Persisted,
            "committed" => CrashPoint::Committed,
            "applied" => CrashPoint::Applied,
            "compacted" => CrashPoint::Compacted,
            "staged" => CrashPoint::Staged,
            "installed" => CrashPoint::Installed,
            _ => return Err(bad()),
        };
        let hit = n.parse().ok().filter(|&n| n > 0).ok_or_else(bad)?;
        Ok(CrashAt { point, hit })
    }
}

pub struct Crasher {
    at: Option<CrashAt>,
    seen: u32,
}

impl Crasher {
    pub fn new(at: Option<CrashAt>) -> Crasher {
        Crasher { at, seen: 0 }
    }

    /// Called right after the write `point`: aborts the process when it is the configured one.
    pub(crate) fn reached(&mut self, point: CrashPoint, db: &sled::Db) {
        let Some(at) = self.at else { return };
        if at.point != point {
            return;
        }
        self.seen += 1;
        if self.seen == at.hit {
            // Everything written so far is on disk, nothing after it will be.
            let _ = db.flush();
            eprintln!(
                "cicada-cluster: crash point {point:?} #{} reached; aborting",
                at.hit
            );
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_points_parse_and_bad_ones_are_refused() {
        assert_eq!(
            "staged:2".parse::<CrashAt>().unwrap(),
            CrashAt {
                point: CrashPoint::Staged,
                hit: 2
            }
        );
        for bad in ["staged", "staged:0", "later:1", "applied:x"] {
            assert!(bad.parse::<CrashAt>().is_err(), "{bad}");
        }
    }
}
