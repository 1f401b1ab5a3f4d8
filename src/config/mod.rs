//! Typed configuration: serde structs with documented defaults, parsed from TOML and validated once, before any
//! port is bound. Every error names the file, the line and the key (`config/cicada.toml` documents each key).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use thiserror::Error;

mod cluster;
pub mod mosquitto;
#[cfg(test)]
mod tests;
mod types;
mod validate;

pub use cluster::*;
pub use types::*;

/// The documented default configuration, embedded so `cicada serve` runs without a file.
pub const DEFAULT_TOML: &str = include_str!("../../config/cicada.toml");

/// Plain MQTT port: the IANA registration.
pub const DEFAULT_MQTT_BIND: &str = "0.0.0.0:1883";
/// HTTP for /metrics, /health, /ready (ARCHITECTURE.md section 6).
pub const DEFAULT_HTTP_BIND: &str = "0.0.0.0:8080";
/// Large enough for firmware chunks and JSON documents, small enough that 10,000 clients cannot each pin
/// hundreds of megabytes (Mosquitto's default is 256 MB, EMQX's 1 MB).
pub const DEFAULT_MAX_PACKET_SIZE: u32 = 1024 * 1024;
/// Enough for an IoT fleet on one node; the OS file-descriptor limit is the other bound.
pub const DEFAULT_MAX_CONNECTIONS: usize = 100_000;
/// Receive Maximum the broker announces and the cap of its outbound window per session. Measured: with 32
/// (EMQX's default) a busy subscriber's acknowledgements wait one window per queue drain and QoS 1 fan-in
/// delivers ~7k msg/s on 2 cores; 128 gives ~80k (benches/compare.sh).
pub const DEFAULT_MAX_INFLIGHT: u16 = 128;
/// Messages queued per session beyond the in-flight window (Mosquitto's `max_queued_messages` is 1000).
pub const DEFAULT_MAX_QUEUED_MESSAGES: usize = 1000;
/// Bytes queued per session: 16 MiB lets a burst of large messages through without a slow client pinning more.
pub const DEFAULT_MAX_QUEUED_BYTES: usize = 16 * 1024 * 1024;
/// Topic levels accepted in a name or filter: deep enough for any sane hierarchy, bounds trie depth.
pub const DEFAULT_MAX_TOPIC_LEVELS: usize = 200;
/// Topic aliases accepted per MQTT 5 connection.
pub const DEFAULT_TOPIC_ALIAS_MAXIMUM: u16 = 64;
/// Node-wide bytes queued in all sessions above which reads pause on every connection (0 = no watermark).
pub const DEFAULT_MEMORY_WATERMARK: usize = 1024 * 1024 * 1024;
/// Seconds between `$SYS` updates (Mosquitto's `sys_interval` default is 10).
pub const DEFAULT_SYS_INTERVAL: u64 = 10;
/// Messages a connection may have on their way through the router before its socket reads pause. Small
/// keeps subscriber mailboxes short (acknowledgements are not stuck behind a flood); 32 measured better than
/// 256 for every scenario of benches/compare.sh.
pub const DEFAULT_INBOUND_CREDIT: usize = 32;

/// Why a configuration cannot be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}:{line}: {message}")]
    Parse {
        file: String,
        line: usize,
        message: String,
    },
    #[error("{file}:{line}: key `{key}`: {message}")]
    Invalid {
        file: String,
        line: usize,
        key: String,
        message: String,
    },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    /// A `mosquitto.conf` line Cicada cannot use.
    #[error(transparent)]
    Mosquitto(#[from] mosquitto::MosquittoError),
}

/// Environment variables with this prefix override keys of the file: `CICADA_DATA_DIR`,
/// `CICADA_LIMITS__MAX_INFLIGHT=100` (`__` between a table and its key). The value is TOML (`100`, `true`,
/// `"text"`), or taken as a string when it is not.
pub const ENV_PREFIX: &str = "CICADA_";

/// Sets the key `var` names in `table`.
fn set_from_env(table: &mut toml::Table, var: &str, value: toml::Value) -> Result<(), ConfigError> {
    let err = |message: String| ConfigError::Env {
        var: var.to_string(),
        message,
    };
    let name = var[ENV_PREFIX.len()..].to_lowercase();
    let path: Vec<&str> = name.split("__").collect();
    if path.iter().any(|p| p.is_empty()) {
        return Err(err(
            "not a key: write CICADA_KEY or CICADA_TABLE__KEY".into()
        ));
    }
    let (last, parents) = path.split_last().expect("split yields one part at least");
    let mut cur = table;
    for p in parents {
        cur = match cur
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        {
            toml::Value::Table(t) => t,
            _ => return Err(err(format!("`{p}` is not a table"))),
        };
    }
    cur.insert(last.to_string(), value);
    Ok(())
}

/// The `CICADA_...` variable names of `env`, for an error that more than one of them causes together.
fn env_names(env: &[(String, String)]) -> String {
    env.iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| k.starts_with(ENV_PREFIX))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Command-line overrides, applied after the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub port: Option<u16>,
    pub http_port: Option<u16>,
    pub data_dir: Option<PathBuf>,
}

impl Config {
    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with_env(path, &[])
    }

    /// Reads and validates a file, then applies the `CICADA_...` variables of `env` (see [`ENV_PREFIX`]).
    pub fn load_with_env(path: &Path, env: &[(String, String)]) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        let mut config = Config::parse_with_env(&text, &file, env)?;
        // Files named in the config are found next to it, whatever the working directory.
        if let Some(dir) = path.parent() {
            let fix = |p: &mut Option<PathBuf>| {
                if let Some(f) = p.as_mut().filter(|f| f.is_relative()) {
                    *f = dir.join(&*f);
                }
            };
            let mut auths: Vec<&mut AuthConfig> = vec![&mut config.auth];
            auths.extend(config.listeners.iter_mut().filter_map(|l| l.auth.as_mut()));
            for a in auths {
                fix(&mut a.password_file);
                fix(&mut a.acl_file);
                fix(&mut a.roles_file);
                if let Some(j) = a.jwt.as_mut() {
                    fix(&mut j.secret_file);
                    fix(&mut j.public_key);
                }
            }
            for t in config.listeners.iter_mut().filter_map(|l| l.tls.as_mut()) {
                for p in [&mut t.cert, &mut t.key] {
                    if p.is_relative() {
                        *p = dir.join(&*p);
                    }
                }
                fix(&mut t.ca);
            }
            fix(&mut config.http.token_file);
            fix(&mut config.log.file);
            if let Some(c) = config.cluster.as_mut() {
                fix(&mut c.secret_file);
                if let Some(t) = c.tls.as_mut() {
                    for p in [&mut t.cert, &mut t.key, &mut t.ca] {
                        if p.is_relative() {
                            *p = dir.join(&*p);
                        }
                    }
                }
            }
        }
        Ok(config)
    }

    /// The auth configuration of a listener.
    pub fn auth_for(&self, listener: &ListenerConfig) -> AuthConfig {
        listener.auth.clone().unwrap_or_else(|| self.auth.clone())
    }

    /// Parses and validates TOML text, then the `CICADA_...` variables of `env` over it. The text alone is
    /// checked first (errors name its line), then each variable on its own (errors name the variable).
    pub fn parse_with_env(
        text: &str,
        file: &str,
        env: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let config = Config::parse(text, file)?;
        let vars: Vec<&(String, String)> = env
            .iter()
            .filter(|(k, _)| k.len() > ENV_PREFIX.len() && k.starts_with(ENV_PREFIX))
            .collect();
        if vars.is_empty() {
            return Ok(config);
        }
        let base: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: file.to_string(),
            line: 1,
            message: e.message().to_string(),
        })?;
        // TOML when it parses as TOML and fits the key; else the text as a string (paths, addresses).
        let typed = |raw: &str| {
            toml::from_str::<toml::Table>(&format!("v = {raw}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
        };
        let first_reading =
            |raw: &str| typed(raw).unwrap_or_else(|| toml::Value::String(raw.into()));
        let mut merged = base.clone();
        for (var, raw) in &vars {
            // Each variable is read against the file and the first reading of the others (a table such as
            // `[cluster]` may be completed key by key), so an error names the variable that causes it.
            let mut others = base.clone();
            for (other, other_raw) in vars.iter().filter(|(o, _)| o != var) {
                let _ = set_from_env(&mut others, other, first_reading(other_raw));
            }
            let mut chosen = None;
            let mut failure = String::new();
            for value in typed(raw)
                .into_iter()
                .chain([toml::Value::String(raw.clone())])
            {
                let mut one = others.clone();
                set_from_env(&mut one, var, value.clone())?;
                match Config::from_table(one) {
                    Ok(_) => {
                        chosen = Some(value);
                        break;
                    }
                    Err(m) if failure.is_empty() => failure = m,
                    Err(_) => {}
                }
            }
            let value = chosen.ok_or_else(|| ConfigError::Env {
                var: var.clone(),
                message: failure,
            })?;
            set_from_env(&mut merged, var, value)?;
        }
        Config::from_table(merged).map_err(|message| ConfigError::Env {
            var: env_names(env),
            message,
        })
    }

    /// Deserializes and validates a table; the error names the key.
    fn from_table(table: toml::Table) -> Result<Config, String> {
        let config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| e.message().trim().to_string())?;
        config.validate().map_err(|(section, key, message)| {
            if section.is_empty() {
                format!("key `{key}`: {message}")
            } else {
                format!("key `{section}.{key}`: {message}")
            }
        })?;
        Ok(config)
    }

    /// Parses and validates TOML text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let (file, line) = (file.to_string(), e.span().map(|s| line_of(text, s.start)));
            let message = e.message().trim().to_string();
            match key_of(&e) {
                // A value serde refused (an unknown enum variant, a QoS of 3): the key it was for.
                Some(key) => ConfigError::Invalid {
                    file,
                    line: line.unwrap_or(1),
                    key,
                    message,
                },
                None => ConfigError::Parse {
                    file,
                    line: line.unwrap_or(1),
                    message,
                },
            }
        })?;
        config
            .validate()
            .map_err(|(section, key, message)| ConfigError::Invalid {
                file: file.to_string(),
                line: locate(text, section, key),
                key: if section.is_empty() {
                    key.to_string()
                } else {
                    format!("{section}.{key}")
                },
                message,
            })?;
        Ok(config)
    }

    /// Applies command-line flags.
    pub fn apply(&mut self, o: &Overrides) {
        if let Some(port) = o.port {
            match self
                .listeners
                .iter_mut()
                .find(|l| l.kind == ListenerKind::Tcp)
            {
                Some(l) => l.bind = with_port(&l.bind, port),
                None => self.listeners.push(ListenerConfig::new(
                    ListenerKind::Tcp,
                    &format!("0.0.0.0:{port}"),
                )),
            }
        }
        if let Some(port) = o.http_port {
            self.http.bind = with_port(&self.http.bind, port);
        }
        if let Some(dir) = &o.data_dir {
            self.data_dir = dir.clone();
        }
    }
    /// The topic shard count after resolving 0 to the CPU count.
    pub fn shard_count(&self) -> usize {
        match self.mqtt.shards {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            n => n,
        }
    }
}

fn with_port(bind: &str, port: u16) -> String {
    match bind.parse::<SocketAddr>() {
        Ok(mut a) => {
            a.set_port(port);
            a.to_string()
        }
        Err(_) => format!("0.0.0.0:{port}"),
    }
}

/// The dotted key a deserialization error is about (`listener.kind`); `None` for a TOML syntax error. toml
/// keeps the path private and writes it only in the error's text without its input: `in `a.b``.
fn key_of(e: &toml::de::Error) -> Option<String> {
    let mut bare = e.clone();
    bare.set_input(None);
    let text = bare.to_string();
    let key = text
        .lines()
        .last()?
        .strip_prefix("in `")?
        .strip_suffix('`')?;
    Some(key.to_string())
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The line where `key` is set inside `[section]` (or `[[section]]`), or the section header, or 1.
fn locate(text: &str, section: &str, key: &str) -> usize {
    let mut current = String::new();
    let mut header_line = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.starts_with('[') {
            current = line
                .trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_string();
            if current == section && header_line.is_none() {
                header_line = Some(i + 1);
            }
            continue;
        }
        let Some((k, _)) = line.split_once('=') else {
            continue;
        };
        if current == section && k.trim() == key {
            return i + 1;
        }
    }
    header_line.unwrap_or(1)
}
