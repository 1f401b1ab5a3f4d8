//! What a `mosquitto.conf` said, option by option with the line that said it, and its translation into the
//! TOML table of a `cicada.toml` (with Mosquitto 2.0's defaults where they differ from Cicada's and matter:
//! anonymous clients refused, local-only mode without listeners).

use super::{MosquittoError, MosquittoErrorKind as Kind};
use crate::config::DEFAULT_MAX_PACKET_SIZE;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use toml::{Table, Value};

/// The line an option came from, to name it when Cicada's validation refuses the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: String,
    pub line: usize,
    pub option: String,
}

/// Room for the topic (up to 65,535 bytes), properties and headers around a payload of
/// `message_size_limit` bytes when the packet size is derived from it.
const PACKET_HEADROOM: u64 = 128 * 1024;
/// MQTT's largest packet: a remaining length of 268,435,455 plus the fixed header.
const MQTT_MAX_PACKET: u64 = 268_435_455 + 5;

/// A log level from `log_type`; later variants log more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error,
    Warn,
    Info,
    Debug,
}

/// Where logs go (`log_dest`).
#[derive(Debug, Default)]
pub struct Dest {
    pub stderr: bool,
    pub stdout: bool,
    pub file: Option<(String, Origin)>,
}

/// A listener as Mosquitto's options describe it.
#[derive(Debug, Default)]
pub struct ListenerDraft {
    /// The `listener`, `port` or `bind_address` line.
    pub origin: Option<Origin>,
    pub port: Option<u16>,
    pub ip: Option<IpAddr>,
    pub websockets: bool,
    pub cafile: Option<(String, Origin)>,
    pub certfile: Option<(String, Origin)>,
    pub keyfile: Option<(String, Origin)>,
    pub require_certificate: Option<(bool, Origin)>,
    pub use_identity_as_username: Option<(bool, Origin)>,
    pub max_connections: Option<(u64, Origin)>,
    /// Its own authentication (`per_listener_settings true`).
    pub auth: AuthDraft,
    /// For the default listener: an option set it, so Mosquitto opens it (on 1883 without `port`).
    pub touched: bool,
}

#[derive(Debug, Default)]
pub struct AuthDraft {
    pub allow_anonymous: Option<(bool, Origin)>,
    pub password_file: Option<(String, Origin)>,
    pub acl_file: Option<(String, Origin)>,
}

/// Everything read so far.
#[derive(Debug, Default)]
pub struct Draft {
    pub per_listener_settings: bool,
    /// A listener or an authentication option came already (`per_listener_settings` must precede them).
    pub security_seen: bool,
    /// `port`, `bind_address` and listener options before the first `listener` line.
    pub default: ListenerDraft,
    pub listeners: Vec<ListenerDraft>,
    /// Authentication for every listener (with `per_listener_settings`, for the default listener).
    pub auth: AuthDraft,
    /// Keys of the TOML document (`limits.max_inflight`), last one given wins.
    pub globals: BTreeMap<&'static str, (Value, Origin)>,
    pub message_size_limit: Option<(u64, Origin)>,
    pub log_dest: Option<Dest>,
    /// The most verbose `log_type` level; `Some((None, _))` after `log_type none`.
    pub log_level: Option<(Option<Level>, Origin)>,
}

impl Draft {
    /// The listener options apply to: the last `listener`, or the default one.
    pub fn current(&mut self) -> &mut ListenerDraft {
        match self.listeners.last_mut() {
            Some(l) => l,
            None => {
                self.default.touched = true;
                &mut self.default
            }
        }
    }

    /// Where an authentication option goes: the last listener with `per_listener_settings true`, else
    /// every listener.
    pub fn auth_target(&mut self) -> &mut AuthDraft {
        match self.listeners.last_mut() {
            Some(l) if self.per_listener_settings => &mut l.auth,
            _ => &mut self.auth,
        }
    }

    pub fn set(&mut self, key: &'static str, value: Value, origin: Origin) {
        self.globals.insert(key, (value, origin));
    }

    /// The TOML document and, for each key, the line that set it.
    pub fn emit(self) -> Result<(Table, BTreeMap<String, Origin>), MosquittoError> {
        let mut out = Emitter::default();
        for (key, (value, origin)) in &self.globals {
            out.put(key, value.clone(), origin);
        }
        if let Some((n, origin)) = &self.message_size_limit {
            out.put("limits.message_size_limit", (*n as i64).into(), origin);
            if !self.globals.contains_key("limits.max_packet_size") {
                // A payload of that size must fit in a packet (Mosquitto's packets are unbounded by default).
                let packet = match n {
                    0 => MQTT_MAX_PACKET,
                    n => {
                        (n + PACKET_HEADROOM).clamp(DEFAULT_MAX_PACKET_SIZE as u64, MQTT_MAX_PACKET)
                    }
                };
                out.put("limits.max_packet_size", (packet as i64).into(), origin);
            }
        }
        // Mosquitto 2.0 without any listener: "local only mode", loopback with anonymous clients allowed.
        let local_only = self.listeners.is_empty() && !self.default.touched;
        let mut listeners = Vec::new();
        if self.default.touched || local_only {
            let ip = self.default.ip.unwrap_or(if local_only {
                IpAddr::from([127, 0, 0, 1])
            } else {
                IpAddr::from([0, 0, 0, 0])
            });
            listeners.push(listener(&self.default, ip, false, &mut out)?);
        }
        for l in &self.listeners {
            let ip = l.ip.unwrap_or(IpAddr::from([0, 0, 0, 0]));
            listeners.push(listener(l, ip, self.per_listener_settings, &mut out)?);
        }
        out.table.insert("listener".into(), Value::Array(listeners));
        let auth = auth_table(&self.auth, local_only, "auth", &mut out);
        out.table.insert("auth".into(), Value::Table(auth));
        let mut log = Table::new();
        if let Some((level, origin)) = &self.log_level {
            let filter = match level {
                None => "off",
                Some(Level::Error) => "error",
                Some(Level::Warn) => "warn",
                Some(Level::Info) => "info",
                // Cicada's own debug events; its dependencies stay at info.
                Some(Level::Debug) => "info,cicada=debug,cicada_cluster=debug",
            };
            log.insert("level".into(), filter.into());
            out.origin("log.level", origin);
        }
        if let Some(d) = &self.log_dest {
            log.insert("stderr".into(), d.stderr.into());
            log.insert("stdout".into(), d.stdout.into());
            if let Some((path, origin)) = &d.file {
                log.insert("file".into(), path.as_str().into());
                out.origin("log.file", origin);
            }
        }
        if !log.is_empty() {
            out.table.insert("log".into(), Value::Table(log));
        }
        Ok((out.table, out.origins))
    }
}

#[derive(Default)]
struct Emitter {
    table: Table,
    origins: BTreeMap<String, Origin>,
}

impl Emitter {
    /// Sets `section.key` (or a top-level `key`).
    fn put(&mut self, path: &str, value: Value, origin: &Origin) {
        let target = match path.split_once('.') {
            None => &mut self.table,
            Some((section, _)) => self
                .table
                .entry(section)
                .or_insert_with(|| Value::Table(Table::new()))
                .as_table_mut()
                .expect("sections are tables"),
        };
        target.insert(path.rsplit('.').next().unwrap_or(path).into(), value);
        self.origin(path, origin);
    }

    /// The first line setting a key (listeners share keys; the first is where validation starts).
    fn origin(&mut self, path: &str, origin: &Origin) {
        self.origins
            .entry(path.to_string())
            .or_insert_with(|| origin.clone());
    }
}

fn inconsistent(origin: &Origin, why: &'static str) -> MosquittoError {
    MosquittoError {
        file: origin.file.clone(),
        line: origin.line,
        kind: Kind::Inconsistent {
            option: origin.option.clone(),
            why,
        },
    }
}

/// One `[[listener]]` table.
fn listener(
    l: &ListenerDraft,
    ip: IpAddr,
    own_auth: bool,
    out: &mut Emitter,
) -> Result<Value, MosquittoError> {
    let mut t = Table::new();
    let bind = SocketAddr::new(ip, l.port.unwrap_or(1883));
    t.insert("bind".into(), bind.to_string().into());
    if let Some(o) = &l.origin {
        out.origin("listener.bind", o);
        out.origin("listener.kind", o);
    }
    let tls = match (&l.certfile, &l.keyfile) {
        (Some((cert, _)), Some((key, _))) => {
            let mut tls = Table::new();
            tls.insert("cert".into(), cert.as_str().into());
            tls.insert("key".into(), key.as_str().into());
            if let Some((ca, o)) = &l.cafile {
                tls.insert("ca".into(), ca.as_str().into());
                out.origin("listener.tls.ca", o);
            }
            for (name, setting) in [
                ("require_certificate", &l.require_certificate),
                ("use_identity_as_username", &l.use_identity_as_username),
            ] {
                if let Some((v, o)) = setting {
                    if *v && l.cafile.is_none() {
                        return Err(inconsistent(o, "needs cafile on the same listener"));
                    }
                    tls.insert(name.into(), (*v).into());
                    out.origin(&format!("listener.tls.{name}"), o);
                }
            }
            Some(tls)
        }
        (Some((_, o)), None) => return Err(inconsistent(o, "needs keyfile on the same listener")),
        (None, Some((_, o))) => return Err(inconsistent(o, "needs certfile on the same listener")),
        (None, None) => {
            // Without a certificate Mosquitto serves plain TCP and these settings do nothing; a listener the
            // file means to protect must not open unprotected.
            let tls_only = [
                l.cafile.as_ref().map(|(_, o)| o),
                l.require_certificate.as_ref().map(|(_, o)| o),
                l.use_identity_as_username.as_ref().map(|(_, o)| o),
            ];
            if let Some(o) = tls_only.into_iter().flatten().next() {
                return Err(inconsistent(
                    o,
                    "needs certfile and keyfile on the same listener",
                ));
            }
            None
        }
    };
    let kind = match (l.websockets, tls.is_some()) {
        (false, false) => "tcp",
        (false, true) => "tls",
        (true, false) => "ws",
        (true, true) => "wss",
    };
    t.insert("kind".into(), kind.into());
    if l.websockets {
        // Mosquitto serves MQTT over WebSocket at every path; browser clients use "/", "/mqtt", "/ws".
        t.insert("path".into(), crate::ws::ANY_PATH.into());
    }
    if let Some(tls) = tls {
        t.insert("tls".into(), Value::Table(tls));
    }
    if let Some((n, o)) = &l.max_connections {
        t.insert("max_connections".into(), (*n as i64).into());
        out.origin("listener.max_connections", o);
    }
    if own_auth {
        let auth = auth_table(&l.auth, false, "listener.auth", out);
        t.insert("auth".into(), Value::Table(auth));
    }
    Ok(Value::Table(t))
}

/// An `[auth]` table; `allow_anonymous` defaults to Mosquitto 2.0's (false, true in local-only mode).
fn auth_table(a: &AuthDraft, local_only: bool, section: &str, out: &mut Emitter) -> Table {
    let mut t = Table::new();
    let anonymous = a.allow_anonymous.as_ref().map_or(local_only, |(v, _)| *v);
    t.insert("allow_anonymous".into(), anonymous.into());
    if let Some((_, o)) = &a.allow_anonymous {
        out.origin(&format!("{section}.allow_anonymous"), o);
    }
    for (name, v) in [
        ("password_file", &a.password_file),
        ("acl_file", &a.acl_file),
    ] {
        if let Some((path, o)) = v {
            t.insert(name.into(), path.as_str().into());
            out.origin(&format!("{section}.{name}"), o);
        }
    }
    t
}
