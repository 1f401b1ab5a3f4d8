//! The sections of the configuration, with their documented defaults.

use super::*;
use crate::protocol::QoS;
use serde::{Deserialize, Deserializer};
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
    /// A token signed with any other algorithm is refused.
    pub algorithm: JwtAlgorithm,
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

/// The signature algorithm of `[auth.jwt]` (written as in a token's `alg` header).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum JwtAlgorithm {
    /// HMAC-SHA256 with a shared secret.
    HS256,
    /// RSA PKCS#1 v1.5 with SHA-256, verified with an RSA public key.
    RS256,
    /// ECDSA P-256 with SHA-256, verified with a P-256 public key.
    ES256,
}

impl std::fmt::Display for JwtAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JwtAlgorithm::HS256 => "HS256",
            JwtAlgorithm::RS256 => "RS256",
            JwtAlgorithm::ES256 => "ES256",
        })
    }
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
    #[serde(default)]
    pub kind: ListenerKind,
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

/// What a listener speaks on its socket.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ListenerKind {
    /// MQTT on plain TCP (the default).
    #[default]
    Tcp,
    /// MQTT over TLS (needs `[listener.tls]`).
    Tls,
    /// MQTT over WebSocket.
    Ws,
    /// MQTT over WebSocket over TLS (needs `[listener.tls]`).
    Wss,
}

impl ListenerKind {
    /// Whether the listener terminates TLS (and so needs `[listener.tls]`).
    pub fn is_tls(self) -> bool {
        matches!(self, ListenerKind::Tls | ListenerKind::Wss)
    }
}

impl std::fmt::Display for ListenerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ListenerKind::Tcp => "tcp",
            ListenerKind::Tls => "tls",
            ListenerKind::Ws => "ws",
            ListenerKind::Wss => "wss",
        })
    }
}

fn default_ws_path() -> String {
    "/mqtt".into()
}

impl ListenerConfig {
    /// A listener of `kind` on `bind` with every other setting at its default.
    pub fn new(kind: ListenerKind, bind: &str) -> ListenerConfig {
        ListenerConfig {
            kind,
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
    /// The highest QoS clients may publish and subscribe with (TOML: `0`, `1` or `2`).
    #[serde(deserialize_with = "qos_from_number")]
    pub max_qos: QoS,
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

/// A QoS written as its number; anything but 0, 1 or 2 is refused at load.
fn qos_from_number<'de, D: Deserializer<'de>>(d: D) -> Result<QoS, D::Error> {
    struct Number;
    impl serde::de::Visitor<'_> for Number {
        type Value = QoS;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("0, 1 or 2")
        }
        fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<QoS, E> {
            qos(n)
        }
        fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<QoS, E> {
            qos(n)
        }
    }
    fn qos<E: serde::de::Error, N: Copy + std::fmt::Display + TryInto<u8>>(n: N) -> Result<QoS, E> {
        n.try_into()
            .ok()
            .and_then(QoS::from_u8)
            .ok_or_else(|| E::custom(format!("must be 0, 1 or 2, not {n}")))
    }
    d.deserialize_any(Number)
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            max_qos: QoS::ExactlyOnce,
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
    vec![ListenerConfig::new(ListenerKind::Tcp, DEFAULT_MQTT_BIND)]
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
