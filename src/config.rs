//! Typed configuration: serde structs with documented defaults, parsed from TOML and validated once, before any
//! port is bound. Every error names the file, the line and the key (`config/cicada.toml` documents each key).

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The documented default configuration, embedded so `cicada serve` runs without a file.
pub const DEFAULT_TOML: &str = include_str!("../config/cicada.toml");

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
pub const DEFAULT_MAX_TOPIC_LEVELS: usize = 128;
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

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where durable state lives: the store (raft log and state in sled) is `{data_dir}/store`.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default)]
    pub store: StoreConfig,
    /// MQTT listeners; the first `tcp` one is what `--port` overrides.
    #[serde(default = "default_listeners", rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub mqtt: MqttConfig,
    #[serde(default)]
    pub log: LogConfig,
    /// Authentication and ACLs for every listener without its own `[listener.auth]`.
    #[serde(default)]
    pub auth: AuthConfig,
}

/// `[store]`: the replicated store's durability.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `always`: fsync before anything that depends on a write is acknowledged (safe, the default);
    /// `interval`: sled's background flush every 500 ms (faster; a crash can lose the last writes).
    pub fsync: String,
    /// MiB of sled page cache for the store (reads past it go to disk; sled's own default is 1024).
    pub cache_mb: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            fsync: "always".into(),
            cache_mb: 128,
        }
    }
}

/// `[auth]` (and `[listener.auth]`): Mosquitto's `allow_anonymous`, `password_file`, `acl_file`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Accept clients without a user name (and, without a password file, any user name).
    pub allow_anonymous: bool,
    /// A Mosquitto password file (`user:$7$...` / `user:$6$...`); relative to the config file.
    pub password_file: Option<PathBuf>,
    /// A Mosquitto ACL file; without one (and without `roles_file`) every client may publish and subscribe
    /// anywhere.
    pub acl_file: Option<PathBuf>,
    /// Role-based rules (TOML, or JSON when the name ends in .json): roles of publish / subscribe filters,
    /// users → roles, `anonymous` → roles. Combined with `acl_file` when both are set.
    pub roles_file: Option<PathBuf>,
    /// JWT as the password: a CONNECT password that is a signed token is verified with this key.
    pub jwt: Option<JwtConfig>,
}

/// `[auth.jwt]`: tokens as passwords (HS256 with a shared secret, RS256 / ES256 with a public key).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// `HS256`, `RS256` or `ES256`; a token signed with anything else is refused.
    pub algorithm: String,
    /// The HS256 secret, inline; prefer `secret_file` so the config can be shared.
    pub secret: Option<String>,
    /// A file holding the HS256 secret (trailing newline ignored); relative to the config file.
    pub secret_file: Option<PathBuf>,
    /// PEM public key (RS256: RSA; ES256: P-256) for verifying; relative to the config file.
    pub public_key: Option<PathBuf>,
    /// When set, the token's `iss` must equal it.
    pub issuer: Option<String>,
    /// When set, the token's `aud` must contain it.
    pub audience: Option<String>,
    /// The claim naming the user (default `sub`): it must equal the CONNECT user name when both are present,
    /// and becomes the user name for ACLs when CONNECT has none.
    #[serde(default = "default_username_claim")]
    pub username_claim: String,
}

fn default_username_claim() -> String {
    "sub".into()
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            allow_anonymous: true,
            password_file: None,
            acl_file: None,
            roles_file: None,
            jwt: None,
        }
    }
}

/// One MQTT listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// `tcp`, `tls`, `ws` or `wss`.
    #[serde(default = "default_kind")]
    pub kind: String,
    pub bind: String,
    /// Connections this listener accepts at once (0 = only the node-wide limit).
    #[serde(default)]
    pub max_connections: usize,
    /// New connections per second this listener accepts; faster arrivals wait in the backlog (0 = unlimited).
    #[serde(default)]
    pub max_connection_rate: u64,
    /// Overrides `[auth]` for this listener.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// Certificates for `tls` and `wss` listeners.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// The HTTP path of `ws` and `wss` listeners.
    #[serde(default = "default_ws_path")]
    pub path: String,
    /// Every connection starts with a PROXY protocol v1 or v2 header (HAProxy `send-proxy[-v2]`); its source
    /// address is the client's. Connections without one are closed.
    #[serde(default)]
    pub proxy_protocol: bool,
}

fn default_ws_path() -> String {
    "/mqtt".into()
}

impl ListenerConfig {
    /// A listener of `kind` on `bind` with every other setting at its default.
    pub fn new(kind: &str, bind: &str) -> ListenerConfig {
        ListenerConfig {
            kind: kind.into(),
            bind: bind.into(),
            max_connections: 0,
            max_connection_rate: 0,
            auth: None,
            tls: None,
            path: default_ws_path(),
            proxy_protocol: false,
        }
    }
}

/// `[listener.tls]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain (PEM), server certificate first; relative to the config file.
    pub cert: PathBuf,
    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates (PEM) that client certificates must chain to.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Refuse clients without a valid certificate (needs `ca`).
    #[serde(default)]
    pub require_certificate: bool,
    /// The client certificate's CN (or first DNS SAN) is the user name for ACLs; no password is asked.
    #[serde(default)]
    pub use_identity_as_username: bool,
}

/// The HTTP endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    #[serde(default = "default_http_bind")]
    pub bind: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            bind: default_http_bind(),
        }
    }
}

/// Bounds on everything a client can make the broker hold.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_connections: usize,
    pub max_packet_size: u32,
    pub max_inflight: u16,
    pub max_queued_messages: usize,
    pub max_queued_bytes: usize,
    /// Largest payload accepted in a PUBLISH (0 = only `max_packet_size`).
    pub message_size_limit: usize,
    pub max_topic_levels: usize,
    pub topic_alias_maximum: u16,
    /// Keep-alive values below this are raised to it through Server Keep Alive (v5); 0 allows any.
    pub keep_alive_min: u16,
    /// Keep-alive values above this (and 0, "no keep-alive") are lowered to it through Server Keep Alive (v5).
    pub keep_alive_max: u16,
    /// Upper bound for a session's expiry interval, seconds.
    pub max_session_expiry: u32,
    pub memory_watermark: usize,
    pub inbound_credit: usize,
    /// PUBLISH packets per second a client may send before its reads are throttled (0 = unlimited).
    pub client_messages_per_sec: u64,
    /// Bytes per second a client may send before its reads are throttled (0 = unlimited).
    pub client_bytes_per_sec: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_packet_size: DEFAULT_MAX_PACKET_SIZE,
            max_inflight: DEFAULT_MAX_INFLIGHT,
            max_queued_messages: DEFAULT_MAX_QUEUED_MESSAGES,
            max_queued_bytes: DEFAULT_MAX_QUEUED_BYTES,
            message_size_limit: 0,
            max_topic_levels: DEFAULT_MAX_TOPIC_LEVELS,
            topic_alias_maximum: DEFAULT_TOPIC_ALIAS_MAXIMUM,
            keep_alive_min: 0,
            keep_alive_max: 65535,
            max_session_expiry: u32::MAX,
            memory_watermark: DEFAULT_MEMORY_WATERMARK,
            inbound_credit: DEFAULT_INBOUND_CREDIT,
            client_messages_per_sec: 0,
            client_bytes_per_sec: 0,
        }
    }
}

/// Protocol features the broker announces.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    pub max_qos: u8,
    pub retain_available: bool,
    pub wildcard_subscription_available: bool,
    pub subscription_identifier_available: bool,
    pub shared_subscription_available: bool,
    /// Accept an empty client id (an id is assigned; 3.1.1 requires clean session then).
    pub allow_zero_length_client_id: bool,
    /// Seconds between `$SYS/broker/...` updates (0 disables them).
    pub sys_interval: u64,
    /// Topic shards (0 = one per CPU).
    pub shards: usize,
    /// Prefix of the Response Information sent to v5 clients that request it (the client id is appended);
    /// empty: none is sent.
    pub response_information: String,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            max_qos: 2,
            retain_available: true,
            wildcard_subscription_available: true,
            subscription_identifier_available: true,
            shared_subscription_available: true,
            allow_zero_length_client_id: true,
            sys_interval: DEFAULT_SYS_INTERVAL,
            shards: 0,
            response_information: String::new(),
        }
    }
}

/// Logging.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter (`info`, `cicada=debug`, ...); `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
        }
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./data")
}
fn default_listeners() -> Vec<ListenerConfig> {
    vec![ListenerConfig::new(&default_kind(), DEFAULT_MQTT_BIND)]
}
fn default_kind() -> String {
    "tcp".into()
}
fn default_http_bind() -> String {
    DEFAULT_HTTP_BIND.into()
}

impl Default for Config {
    fn default() -> Self {
        Config::parse(DEFAULT_TOML, "<embedded cicada.toml>")
            .expect("the embedded default configuration is valid")
    }
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
        let mut merged = base.clone();
        for (var, raw) in vars {
            // TOML when it parses as TOML and fits the key; else the text as a string (paths, addresses).
            let typed = toml::from_str::<toml::Table>(&format!("v = {raw}"))
                .ok()
                .and_then(|mut t| t.remove("v"));
            let mut chosen = None;
            let mut failure = String::new();
            for value in typed.into_iter().chain([toml::Value::String(raw.clone())]) {
                let mut one = base.clone();
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
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: file.to_string(),
            line: e.span().map(|s| line_of(text, s.start)).unwrap_or(1),
            message: e.message().trim().to_string(),
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
            match self.listeners.iter_mut().find(|l| l.kind == "tcp") {
                Some(l) => l.bind = with_port(&l.bind, port),
                None => self
                    .listeners
                    .push(ListenerConfig::new("tcp", &format!("0.0.0.0:{port}"))),
            }
        }
        if let Some(port) = o.http_port {
            self.http.bind = with_port(&self.http.bind, port);
        }
        if let Some(dir) = &o.data_dir {
            self.data_dir = dir.clone();
        }
    }

    /// Cross-field checks; an error is (section, key, message).
    fn validate(&self) -> Result<(), (&'static str, &'static str, String)> {
        for l in &self.listeners {
            match (l.kind.as_str(), &l.tls) {
                ("tcp", _) | ("ws", _) => {}
                ("tls" | "wss", Some(t)) => {
                    if (t.require_certificate || t.use_identity_as_username) && t.ca.is_none() {
                        return Err((
                            "listener.tls",
                            "ca",
                            "require_certificate and use_identity_as_username need a CA file"
                                .into(),
                        ));
                    }
                }
                ("tls" | "wss", None) => {
                    return Err((
                        "listener",
                        "kind",
                        "a tls or wss listener needs a [listener.tls] table with cert and key"
                            .into(),
                    ))
                }
                (other, _) => {
                    return Err((
                        "listener",
                        "kind",
                        format!("unsupported listener kind {other:?} (tcp, tls, ws or wss)"),
                    ))
                }
            }
            if !l.path.starts_with('/') {
                return Err((
                    "listener",
                    "path",
                    format!("{:?} must start with /", l.path),
                ));
            }
            l.bind.parse::<SocketAddr>().map_err(|e| {
                (
                    "listener",
                    "bind",
                    format!("{:?} is not an address:port: {e}", l.bind),
                )
            })?;
        }
        let auths = std::iter::once(("auth.jwt", &self.auth)).chain(
            self.listeners
                .iter()
                .filter_map(|l| Some(("listener.auth.jwt", l.auth.as_ref()?))),
        );
        for (section, jwt) in auths.filter_map(|(s, a)| Some((s, a.jwt.as_ref()?))) {
            match jwt.algorithm.as_str() {
                "HS256" => {
                    if jwt.secret.is_some() == jwt.secret_file.is_some() {
                        return Err((
                            section,
                            "secret",
                            "HS256 needs exactly one of secret and secret_file".into(),
                        ));
                    }
                    if jwt.secret.as_ref().is_some_and(|s| s.len() < 32) {
                        return Err((
                            section,
                            "secret",
                            "an HS256 secret needs at least 32 bytes".into(),
                        ));
                    }
                }
                "RS256" | "ES256" => {
                    if jwt.public_key.is_none() {
                        return Err((
                            section,
                            "public_key",
                            format!("{} needs a PEM public key file", jwt.algorithm),
                        ));
                    }
                }
                other => {
                    return Err((
                        section,
                        "algorithm",
                        format!("unsupported algorithm {other:?} (HS256, RS256 or ES256)"),
                    ));
                }
            }
        }
        if !matches!(self.store.fsync.as_str(), "always" | "interval") {
            return Err((
                "store",
                "fsync",
                format!("{:?} is not always or interval", self.store.fsync),
            ));
        }
        if self.store.cache_mb == 0 {
            return Err(("store", "cache_mb", "must be at least 1".into()));
        }
        if self.listeners.is_empty() {
            return Err(("", "listener", "at least one listener is needed".into()));
        }
        self.http.bind.parse::<SocketAddr>().map_err(|e| {
            (
                "http",
                "bind",
                format!("{:?} is not an address:port: {e}", self.http.bind),
            )
        })?;
        let l = &self.limits;
        if l.max_packet_size < 64 {
            return Err((
                "limits",
                "max_packet_size",
                "must be at least 64 bytes".into(),
            ));
        }
        if l.max_packet_size > 268_435_455 + 5 {
            return Err((
                "limits",
                "max_packet_size",
                "MQTT packets cannot exceed 268435460 bytes".into(),
            ));
        }
        if l.max_inflight == 0 {
            return Err(("limits", "max_inflight", "must be at least 1".into()));
        }
        if l.max_connections == 0 {
            return Err(("limits", "max_connections", "must be at least 1".into()));
        }
        if l.max_topic_levels == 0 {
            return Err(("limits", "max_topic_levels", "must be at least 1".into()));
        }
        if l.inbound_credit == 0 {
            return Err(("limits", "inbound_credit", "must be at least 1".into()));
        }
        if l.keep_alive_max == 0 || l.keep_alive_min > l.keep_alive_max {
            return Err((
                "limits",
                "keep_alive_max",
                "must be at least 1 and not below keep_alive_min".into(),
            ));
        }
        if self.mqtt.max_qos > 2 {
            return Err(("mqtt", "max_qos", "must be 0, 1 or 2".into()));
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_parse_and_match_the_constants() {
        let c = Config::default();
        assert_eq!(c.listeners[0].bind, DEFAULT_MQTT_BIND);
        assert_eq!(c.http.bind, DEFAULT_HTTP_BIND);
        assert_eq!(c.limits.max_packet_size, DEFAULT_MAX_PACKET_SIZE);
        assert_eq!(c.limits.max_queued_messages, DEFAULT_MAX_QUEUED_MESSAGES);
        assert_eq!(c.data_dir, PathBuf::from("./data"));
    }

    #[test]
    fn an_unknown_key_names_file_and_line() {
        let e =
            Config::parse("[limits]\nmax_inflight = 10\nmax_infligth = 3\n", "x.toml").unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("x.toml:3:"), "{s}");
        assert!(s.contains("max_infligth"), "{s}");
    }

    #[test]
    fn a_wrong_type_names_file_and_line() {
        let e = Config::parse("\n[mqtt]\nsys_interval = \"soon\"\n", "y.toml").unwrap_err();
        assert!(e.to_string().starts_with("y.toml:3:"), "{e}");
    }

    #[test]
    fn an_invalid_value_names_file_line_and_key() {
        let e = Config::parse("[limits]\n\nmax_inflight = 0\n", "z.toml").unwrap_err();
        assert_eq!(
            e.to_string(),
            "z.toml:3: key `limits.max_inflight`: must be at least 1"
        );
        let e = Config::parse("[[listener]]\nbind = \"nowhere\"\n", "l.toml").unwrap_err();
        assert!(
            e.to_string().starts_with("l.toml:2: key `listener.bind`"),
            "{e}"
        );
    }

    #[test]
    fn a_tls_listener_needs_its_certificates() {
        let e = Config::parse(
            "[[listener]]\nkind = \"tls\"\nbind = \"0.0.0.0:8883\"\n",
            "t.toml",
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("t.toml:2: key `listener.kind`: a tls or wss listener needs"),
            "{e}"
        );
        let e = Config::parse(
            "[[listener]]\nkind = \"tls\"\nbind = \"0.0.0.0:8883\"\n[listener.tls]\ncert = \"c\"\nkey = \"k\"\nrequire_certificate = true\n",
            "t.toml",
        )
        .unwrap_err();
        assert!(e.to_string().contains("key `listener.tls.ca`"), "{e}");
        let e = Config::parse(
            "[[listener]]\nkind = \"quic\"\nbind = \"0.0.0.0:8083\"\n",
            "t.toml",
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("unsupported listener kind \"quic\""),
            "{e}"
        );
    }

    #[test]
    fn jwt_settings_are_checked_per_algorithm() {
        let base = "[[listener]]\nbind = \"0.0.0.0:1883\"\n[auth.jwt]\n";
        let e = Config::parse(
            &format!("{base}algorithm = \"HS256\"\nsecret = \"short\"\n"),
            "j.toml",
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "j.toml:5: key `auth.jwt.secret`: an HS256 secret needs at least 32 bytes"
        );
        let e = Config::parse(&format!("{base}algorithm = \"RS256\"\n"), "j.toml").unwrap_err();
        assert!(
            e.to_string()
                .contains("key `auth.jwt.public_key`: RS256 needs"),
            "{e}"
        );
        let e = Config::parse(&format!("{base}algorithm = \"none\"\n"), "j.toml").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("j.toml:4: key `auth.jwt.algorithm`"),
            "{e}"
        );
        let ok = Config::parse(
            &format!("{base}algorithm = \"ES256\"\npublic_key = \"k.pem\"\n"),
            "j.toml",
        )
        .unwrap();
        assert_eq!(ok.auth.jwt.unwrap().username_claim, "sub");
    }

    #[test]
    fn store_settings_are_checked() {
        let base = "[[listener]]\nbind = \"0.0.0.0:1883\"\n[store]\n";
        let e = Config::parse(&format!("{base}cache_mb = 0\n"), "s.toml").unwrap_err();
        assert_eq!(
            e.to_string(),
            "s.toml:4: key `store.cache_mb`: must be at least 1"
        );
        let e = Config::parse(&format!("{base}fsync = \"sometimes\"\n"), "s.toml").unwrap_err();
        assert!(
            e.to_string().starts_with("s.toml:4: key `store.fsync`"),
            "{e}"
        );
        let ok = Config::parse(&format!("{base}cache_mb = 512\n"), "s.toml").unwrap();
        assert_eq!(ok.store.cache_mb, 512);
    }

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn environment_variables_override_keys_and_errors_name_them() {
        let c = Config::parse_with_env(
            DEFAULT_TOML,
            "d.toml",
            &env(&[
                ("CICADA_DATA_DIR", "/var/lib/cicada"),
                ("CICADA_LIMITS__MAX_INFLIGHT", "7"),
                ("CICADA_STORE__FSYNC", "interval"),
                ("CICADA_HTTP__BIND", "127.0.0.1:9100"),
                ("CICADA_MQTT__RETAIN_AVAILABLE", "false"),
                ("PATH", "/usr/bin"),
            ]),
        )
        .unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/cicada"));
        assert_eq!(c.limits.max_inflight, 7);
        assert_eq!(c.store.fsync, "interval");
        assert_eq!(c.http.bind, "127.0.0.1:9100");
        assert!(!c.mqtt.retain_available);

        for (var, value, wanted) in [
            (
                "CICADA_LIMITS__MAX_INFLIGHT",
                "0",
                "key `limits.max_inflight`: must be at least 1",
            ),
            ("CICADA_LIMITS__MAX_INFLIGHT", "many", "invalid type"),
            (
                "CICADA_LIMITS__NO_SUCH_KEY",
                "1",
                "unknown field `no_such_key`",
            ),
            ("CICADA_STORE__FSYNC__DEEP", "1", "`fsync` is not a table"),
            ("CICADA_LIMITS__", "1", "not a key"),
        ] {
            let e = Config::parse_with_env(DEFAULT_TOML, "d.toml", &env(&[(var, value)]))
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with(&format!("environment variable {var}: ")) && e.contains(wanted),
                "{var}={value}: {e}"
            );
        }
        // The file's own errors still name its line, whatever the environment says.
        let e = Config::parse_with_env(
            "[limits]\nmax_inflight = 0\n",
            "f.toml",
            &env(&[("CICADA_DATA_DIR", "/d")]),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("f.toml:2: key `limits.max_inflight`"),
            "{e}"
        );
    }

    #[test]
    fn flags_override_the_file() {
        let mut c = Config::default();
        c.apply(&Overrides {
            port: Some(1999),
            http_port: Some(8999),
            data_dir: Some("/tmp/d".into()),
        });
        assert_eq!(c.listeners[0].bind, "0.0.0.0:1999");
        assert_eq!(c.http.bind, "0.0.0.0:8999");
        assert_eq!(c.data_dir, PathBuf::from("/tmp/d"));
    }
}
