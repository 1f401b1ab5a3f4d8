//! What stops a Mosquitto configuration from being used: each error names the file and the line.

use std::path::PathBuf;
use thiserror::Error;

/// A Mosquitto configuration that cannot be used, at `file:line`.
#[derive(Debug, Error)]
#[error("{file}:{line}: {kind}")]
pub struct MosquittoError {
    pub file: String,
    pub line: usize,
    pub kind: MosquittoErrorKind,
}

/// Why a line of a Mosquitto configuration stops the broker.
#[derive(Debug, Error)]
pub enum MosquittoErrorKind {
    /// Neither Mosquitto 2.0 nor Cicada knows the option (a typo must not be ignored).
    #[error("unknown option `{0}`")]
    Unknown(String),
    #[error("option `{option}`: missing {what}")]
    Missing { option: String, what: &'static str },
    #[error("option `{option}`: {value:?} is not {expected}")]
    BadValue {
        option: String,
        value: String,
        expected: &'static str,
    },
    /// Mosquitto reads no comment after a value, so text there is a mistake.
    #[error("option `{option}`: unexpected {extra:?} after the value")]
    Extra { option: String, extra: String },
    /// The option has a meaning Cicada cannot honour, and ignoring it would change who may connect or what
    /// they see.
    #[error("option `{option}` is not supported: {why}")]
    Refused { option: String, why: &'static str },
    /// The option contradicts another one (or comes where Mosquitto does not accept it).
    #[error("option `{option}`: {why}")]
    Inconsistent { option: String, why: &'static str },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}
