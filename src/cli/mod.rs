//! Command-line tools: `cicada serve` (the broker), `cicada config import` and, built on the client, `cicada pub`, `cicada sub` and
//! `cicada bench`.
//!
//! Exit codes a script can rely on: 0 success, 1 connection or protocol failure (the message says which,
//! with the server's reason code when there is one), 2 bad usage, 27 `sub -W` timed out (as mosquitto_sub).

pub mod bench;
pub mod config;
pub mod connect;
pub mod ctl;
pub mod passwd;
pub mod publish;
pub mod serve;
pub mod subscribe;

use std::fmt;

/// Exit code for a failure to connect, publish or subscribe.
pub const EXIT_FAILURE: i32 = 1;
/// Exit code for invalid arguments (clap uses the same).
pub const EXIT_USAGE: i32 = 2;
/// Exit code when `sub -W` expires before the wanted messages arrived; the value mosquitto_sub uses.
pub const EXIT_TIMEOUT: i32 = 27;

/// A CLI failure: the message for stderr and the exit code.
#[derive(Debug)]
pub struct CliError {
    pub code: i32,
    pub message: String,
}

impl CliError {
    pub fn failure(message: impl Into<String>) -> Self {
        CliError {
            code: EXIT_FAILURE,
            message: message.into(),
        }
    }

    pub fn usage(message: impl Into<String>) -> Self {
        CliError {
            code: EXIT_USAGE,
            message: message.into(),
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<crate::client::ClientError> for CliError {
    fn from(e: crate::client::ClientError) -> Self {
        CliError::failure(e.to_string())
    }
}
