//! Mosquitto's `mosquitto.conf`, read as is (`cicada serve --mosquitto-conf FILE`, `cicada config import
//! FILE`). Each option is mapped to Cicada's configuration, ignored with a reason reported with its line,
//! or refused with its line; an unknown option or a malformed value stops the broker like any config error.
//!
//! The parser is pure: text in, the TOML table of the equivalent `cicada.toml` out. That table goes through
//! [`Config`]'s own deserialization and validation, so a value Cicada refuses in a `cicada.toml` is refused
//! here by the same check, named at the Mosquitto line that set it. Files are read by the caller's function
//! (`include_dir`), so the parser is tested without a disk.
//!
//! Where Mosquitto 2.0 and Cicada differ:
//! - Without any listener Mosquitto listens on 127.0.0.1:1883 with anonymous clients allowed ("local only
//!   mode"); otherwise `allow_anonymous` defaults to false (Cicada's own default is true).
//! - `persistence false` is ignored: Cicada always keeps retained messages and persistent sessions in its
//!   store, under `persistence_location` (the data directory; `./data` without it).
//! - `max_queued_messages 0` / `max_queued_bytes 0` ("no maximum") become the largest value a TOML integer
//!   holds, 2^63-1: no queue reaches it, and `[limits] memory_watermark` still pauses publishers when all
//!   queues together grow too big, so an "unlimited" queue costs memory, never the process.
//! - `max_inflight_messages 0` ("no maximum") becomes 65,535, the largest Receive Maximum.
//! - `message_size_limit` is Cicada's `message_size_limit` (largest payload), and raises `max_packet_size`
//!   (default 1 MiB) so that such a payload fits (0: MQTT's own limit, as Mosquitto).
//! - Options not given keep Cicada's defaults (documented in config/cicada.toml), e.g. an in-flight window
//!   of 128 (Mosquitto: 20) and 16 MiB of queued bytes per session (Mosquitto: no maximum).
//!
//! # Layout
//! - `options`: one line into the draft; the tables of ignored and refused options with their reasons.
//! - `draft`: what the file said, and its translation into a TOML table.
//! - `error`: [`MosquittoError`].

mod draft;
mod error;
mod options;
#[cfg(test)]
mod tests;

pub use error::*;

use super::{Config, ConfigError};
use draft::{Draft, Origin};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// An option read and not applied, with why; reported once, with its line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ignored {
    pub file: String,
    pub line: usize,
    pub option: String,
    pub why: &'static str,
}

impl fmt::Display for Ignored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: option `{}` ignored: {}",
            self.file, self.line, self.option, self.why
        )
    }
}

/// The `.conf` files of an `include_dir` directory with their text, in the order to read them.
pub type ReadDir<'a> = &'a dyn Fn(&Path) -> std::io::Result<Vec<(PathBuf, String)>>;

/// A Mosquitto configuration translated: the TOML table of the equivalent `cicada.toml`.
#[derive(Debug, Clone)]
pub struct Imported {
    pub table: toml::Table,
    /// Options read and not applied, in file order.
    pub ignored: Vec<Ignored>,
    /// The line that set each key of `table` (`limits.max_inflight`).
    origins: BTreeMap<String, Origin>,
    file: String,
}

/// Parses `text` (named `file` in errors). Relative paths stay as written (Mosquitto reads them from its
/// working directory), or are made absolute against `relative_to`.
pub fn parse(
    text: &str,
    file: &str,
    read_dir: ReadDir,
    relative_to: Option<&Path>,
) -> Result<Imported, MosquittoError> {
    let mut draft = Draft::default();
    let mut ignored = Vec::new();
    feed(
        &mut draft,
        &mut ignored,
        text,
        file,
        Some(read_dir),
        relative_to,
    )?;
    let (table, origins) = draft.emit()?;
    Ok(Imported {
        table,
        ignored,
        origins,
        file: file.to_string(),
    })
}

/// Reads one file's lines into the draft; `read_dir` is `None` inside an included file (Mosquitto reads
/// `include_dir` from the main file only).
fn feed(
    draft: &mut Draft,
    ignored: &mut Vec<Ignored>,
    text: &str,
    file: &str,
    read_dir: Option<ReadDir>,
    relative_to: Option<&Path>,
) -> Result<(), MosquittoError> {
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let trimmed = raw.trim();
        let Some(rest) = trimmed
            .strip_prefix("include_dir")
            .filter(|r| r.is_empty() || r.starts_with(char::is_whitespace))
        else {
            draft.line(raw, file, line, relative_to, ignored)?;
            continue;
        };
        let err = |kind| MosquittoError {
            file: file.to_string(),
            line,
            kind,
        };
        let Some(read_dir) = read_dir else {
            return Err(err(MosquittoErrorKind::Inconsistent {
                option: "include_dir".into(),
                why: "is read from the main configuration file only (as in Mosquitto)",
            }));
        };
        let dir = rest.trim();
        if dir.is_empty() {
            return Err(err(MosquittoErrorKind::Missing {
                option: "include_dir".into(),
                what: "a directory",
            }));
        }
        let dir = match relative_to {
            Some(base) => base.join(dir),
            None => PathBuf::from(dir),
        };
        let files = read_dir(&dir).map_err(|source| {
            err(MosquittoErrorKind::Read {
                path: dir.clone(),
                source,
            })
        })?;
        for (path, text) in files {
            feed(
                draft,
                ignored,
                &text,
                &path.display().to_string(),
                None,
                relative_to,
            )?;
        }
    }
    Ok(())
}

/// Reads `path`, and the `.conf` files of its `include_dir` directories, from the disk.
pub fn load(path: &Path, relative_to: Option<&Path>) -> Result<Imported, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: file.clone(),
        source,
    })?;
    Ok(parse(&text, &file, &read_conf_dir, relative_to)?)
}

/// The `*.conf` files of `dir` in Mosquitto's order: alphabetical, each letter's upper case before its
/// lower case (`A.conf`, `a.conf`, `B.conf`).
fn read_conf_dir(dir: &Path) -> std::io::Result<Vec<(PathBuf, String)>> {
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "conf") && path.is_file() {
            paths.push(path);
        }
    }
    paths.sort_by_key(|p| include_order(&p.file_name().unwrap_or_default().to_string_lossy()));
    paths
        .into_iter()
        .map(|p| Ok((p.clone(), std::fs::read_to_string(&p)?)))
        .collect()
}

/// The sort key of a file name in `include_dir`.
fn include_order(name: &str) -> Vec<(char, bool)> {
    name.chars()
        .map(|c| (c.to_ascii_lowercase(), c.is_ascii_lowercase()))
        .collect()
}

impl Imported {
    /// The validated configuration: Cicada's checks, with the Mosquitto line of a refused value.
    pub fn to_config(&self) -> Result<Config, ConfigError> {
        let config: Config =
            toml::Value::Table(self.table.clone())
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    file: self.file.clone(),
                    line: 1,
                    message: e.message().trim().to_string(),
                })?;
        config.validate().map_err(|(section, key, message)| {
            let path = if section.is_empty() {
                key.to_string()
            } else {
                format!("{section}.{key}")
            };
            match self.origins.get(&path) {
                Some(o) => ConfigError::Invalid {
                    file: o.file.clone(),
                    line: o.line,
                    key: o.option.clone(),
                    message: format!("{message} (cicada key `{path}`)"),
                },
                None => ConfigError::Invalid {
                    file: self.file.clone(),
                    line: 1,
                    key: path,
                    message,
                },
            }
        })?;
        Ok(config)
    }

    /// The equivalent `cicada.toml`, with what was ignored as comments.
    pub fn to_toml(&self) -> String {
        let mut out = format!(
            "# Translated from {} by `cicada config import`; every key is documented in config/cicada.toml.\n",
            self.file
        );
        for i in &self.ignored {
            out.push_str(&format!("# {i}\n"));
        }
        out.push('\n');
        out.push_str(&toml::to_string(&self.table).expect("a table of plain values serializes"));
        out
    }
}
