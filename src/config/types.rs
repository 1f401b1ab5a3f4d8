//! The sections of the configuration, with their documented defaults.

use super::*;
use serde::Deserialize;
use std::path::PathBuf;

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
    /// This node's cluster; `None`: a cluster of one.
    #[serde(default)]
    pub cluster: Option<ClusterSection>,
}

/// `[store]`: the replicated store's durability.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub fsync: FsyncMode,
    /// MiB of sled page cache for the store (reads past it go to disk; sled's own default is 1024).
    pub cache_mb: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            fsync: FsyncMode::Always,
            cache_mb: 128,
        }
    }
}

/// When the store's log is made durable.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FsyncMode {
    /// fsync before anything that depends on a write is acknowledged (safe, the default).
    Always,
    /// sled's background flush every 500 ms (faster; a crash can lose the last writes).
    Interval,
}

impl From<FsyncMode> for cicada_cluster::Fsync {
    fn from(m: FsyncMode) -> Self {
        match m {
            FsyncMode::Always => cicada_cluster::Fsync::Always,
            FsyncMode::Interval => cicada_cluster::Fsync::Interval,
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
    /// The HTTP path of `ws` and `wss` listeners; `"*"` accepts any path (as Mosquitto does).
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
    /// A bearer token the admin API (`/api/v1`) requires; prefer `token_file`. Without either the API is
    /// open to whoever reaches the HTTP port (bind it to a private address).
    #[serde(default)]
    pub token: Option<String>,
    /// A file holding the token (trailing newline ignored); relative to the config file.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

impl HttpConfig {
    /// The admin API's token, read from `token_file` when that is how it is given.
    pub fn admin_token(&self) -> Result<Option<String>, std::io::Error> {
        if let Some(t) = &self.token {
            return Ok(Some(t.clone()));
        }
        match &self.token_file {
            None => Ok(None),
            Some(p) => Ok(Some(
                std::fs::read_to_string(p)?
                    .trim_end_matches(['\n', '\r'])
                    .to_string(),
            )),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            bind: default_http_bind(),
            token: None,
            token_file: None,
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

impl Limits {
    /// What a persistent session's stored inbox may hold (copies, bytes), in flight or not.
    pub fn stored_quota(&self) -> (u64, u64) {
        (
            self.max_queued_messages as u64,
            self.max_queued_bytes as u64,
        )
    }
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
    /// Sent as Server Reference with the DISCONNECT 0x8B (Server shutting down) of a drain or stop (MQTT 5):
    /// where clients should connect instead, e.g. the load balancer (`host:port`).
    pub server_reference: Option<String>,
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
            server_reference: None,
        }
    }
}

/// Logging: a level and where the lines go (any of stderr, stdout and a file).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter (`info`, `cicada=debug`, ...); `RUST_LOG` wins when set.
    pub level: String,
    /// Write to stderr (coloured when it is a terminal).
    pub stderr: bool,
    /// Write to stdout.
    pub stdout: bool,
    /// Also append to this file (created if missing, never coloured); relative to the config file.
    pub file: Option<PathBuf>,
    /// `text` (for people) or `json` (one object per line, for log shippers).
    pub format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `2026-12-05T14:40:56Z  INFO cicada::broker: message key=value`, coloured only on a terminal.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields` (with `message`), `spans`.
    Json,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            stderr: true,
            stdout: false,
            file: None,
            format: LogFormat::Text,
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
