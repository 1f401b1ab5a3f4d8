//! Clock jumps: each node's wall clock (CLOCK_REALTIME, what `SystemTime::now` reads) can be moved by an
//! offset through libfaketime, preloaded into the node's process with the offset read from a file of the
//! node's own (re-read at most once a second). The monotonic clock (timers, raft ticks, leases) stays real:
//! a jump is what NTP stepping the clock, or a host waking with a wrong RTC, does to a node.
//!
//! The broker orders and versions nothing by the wall clock; it stamps session and message expiry with it
//! (MQTT's expiry intervals are wall-clock durations). A jump shows whether that stays harmless.

use std::io;
use std::path::{Path, PathBuf};

/// Debian's libfaketime (package `libfaketime`, installed by `.ci/install`).
pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// Whether clock jumps can be injected on this machine.
pub fn available() -> bool {
    Path::new(LIBFAKETIME).is_file()
}

/// One node's clock offset file.
#[derive(Debug, Clone)]
pub struct Clock {
    file: PathBuf,
}

impl Clock {
    /// A clock without offset, its file in `dir`.
    pub fn new(dir: &Path) -> io::Result<Clock> {
        let c = Clock {
            file: dir.join("clock.offset"),
        };
        c.set(0)?;
        Ok(c)
    }

    /// The offset file.
    pub fn path(&self) -> &Path {
        &self.file
    }

    /// The environment a node's process starts with.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("LD_PRELOAD", LIBFAKETIME.to_string()),
            ("FAKETIME_TIMESTAMP_FILE", self.file.display().to_string()),
            ("FAKETIME_CACHE_DURATION", "1".into()),
            ("DONT_FAKE_MONOTONIC", "1".into()),
        ]
    }

    /// Moves the node's wall clock `secs` seconds from real time (0: real time again). Written to a temporary
    /// file and renamed, so the process never reads half a line.
    pub fn set(&self, secs: i64) -> io::Result<()> {
        let tmp = self.file.with_extension("tmp");
        std::fs::write(&tmp, format!("{}\n", offset(secs)))?;
        std::fs::rename(&tmp, &self.file)
    }
}

/// libfaketime's relative offset syntax: `+N` or `-N` seconds.
fn offset(secs: i64) -> String {
    if secs < 0 {
        format!("{secs}")
    } else {
        format!("+{secs}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_written_in_libfaketime_syntax() {
        assert_eq!(offset(0), "+0");
        assert_eq!(offset(3600), "+3600");
        assert_eq!(offset(-600), "-600");
        let dir = tempfile::tempdir().unwrap();
        let c = Clock::new(dir.path()).unwrap();
        c.set(-90).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("clock.offset")).unwrap(),
            "-90\n"
        );
    }
}
