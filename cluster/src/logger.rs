//! raft-rs logs through slog; this drain forwards its records to tracing (target `raft`).

use slog::{Drain, Level, OwnedKVList, Record};

struct TracingDrain;

impl Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, r: &Record<'_>, _: &OwnedKVList) -> Result<(), slog::Never> {
        match r.level() {
            Level::Critical | Level::Error => tracing::error!(target: "raft", "{}", r.msg()),
            Level::Warning => tracing::warn!(target: "raft", "{}", r.msg()),
            // Elections and membership are logged by the node actor at info; raft-rs detail stays at debug.
            Level::Info => tracing::debug!(target: "raft", "{}", r.msg()),
            Level::Debug | Level::Trace => tracing::trace!(target: "raft", "{}", r.msg()),
        }
        Ok(())
    }
}

pub fn logger(node: u64) -> slog::Logger {
    slog::Logger::root(TracingDrain.fuse(), slog::o!("raft_id" => node))
}
