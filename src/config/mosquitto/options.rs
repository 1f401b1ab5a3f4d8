//! One line of `mosquitto.conf` into the draft: the table of what each option means here (mapped, ignored
//! with a reason, refused with a reason). Mosquitto's rules followed: `#` starts a comment line, an option
//! and its value are separated by spaces, options after a `listener` line belong to that listener, and with
//! `per_listener_settings true` so do the authentication options.

use super::draft::{Dest, Draft, Level, ListenerDraft, Origin};
use super::{Ignored, MosquittoError, MosquittoErrorKind as Kind};
use std::net::IpAddr;
use std::path::Path;

/// Options Cicada reads and does without: the reason is reported with the line.
const IGNORED: &[(&str, &str)] = &[
    ("autosave_interval", "cicada's store commits every change before acknowledging it; there is no snapshot to save"),
    ("autosave_on_changes", "cicada's store commits every change before acknowledging it; there is no snapshot to save"),
    ("persistence_file", "cicada's store is the directory {persistence_location}/store"),
    ("log_timestamp", "cicada's log lines always start with an RFC 3339 timestamp"),
    ("log_timestamp_format", "cicada's log lines always start with an RFC 3339 timestamp"),
    ("log_facility", "cicada does not log to syslog"),
    ("connection_messages", "cicada logs connects and disconnects at the information level"),
    ("user", "cicada does not change user: start it as the user it should run as"),
    ("pid_file", "cicada writes no pid file (a service manager tracks it)"),
    ("set_tcp_nodelay", "cicada always sets TCP_NODELAY"),
    ("websockets_log_level", "WebSocket handshakes log through log_type like everything else"),
    ("websockets_headers_size", "cicada's WebSocket handshake has its own bound"),
    ("allow_duplicate_messages", "cicada sends one copy per matching session (the choice MQTT 5 allows in 3.3.4)"),
    ("check_retain_source", "cicada checks the subscriber's ACL on every retained delivery, not the publisher's"),
    ("max_inflight_bytes", "cicada bounds the in-flight window by count (max_inflight_messages)"),
    ("memory_limit", "cicada pauses reads above [limits] memory_watermark instead of refusing allocations"),
    ("queue_qos0_messages", "cicada does not queue QoS 0 messages for offline sessions"),
    ("persistent_client_expiration", "cicada keeps an MQTT 3.1.1 persistent session until it is cleaned; MQTT 5 sessions expire by their expiry interval"),
    ("socket_domain", "cicada binds the address given (without one, 0.0.0.0: IPv4)"),
    ("ciphers", "cicada offers rustls's cipher suites only (AEAD with forward secrecy)"),
    ("ciphers_tls1.3", "cicada offers rustls's cipher suites only (AEAD with forward secrecy)"),
    ("dhparamfile", "cicada uses ECDHE key exchange; no DH parameters are needed"),
    ("http_dir", "cicada's WebSocket listeners serve no files"),
    ("auto_id_prefix", "cicada assigns its own client ids"),
];

/// Options whose meaning Cicada cannot honour and that cannot be ignored without changing who may connect
/// or what clients see.
const REFUSED: &[(&str, &str)] = &[
    ("mount_point", "cicada has no per-listener topic prefix (ignoring it would show these clients every topic)"),
    ("auth_plugin", "cicada loads no plugins (password_file, acl_file, roles and JWT are built in)"),
    ("plugin", "cicada loads no plugins (password_file, acl_file, roles and JWT are built in)"),
    ("auth_plugin_deny_special_chars", "cicada loads no plugins"),
    ("psk_file", "TLS-PSK is not supported"),
    ("psk_hint", "TLS-PSK is not supported"),
    ("use_subject_as_username", "only use_identity_as_username (the certificate's CN) is supported"),
    ("crlfile", "certificate revocation lists are not supported (ignoring one would let revoked certificates in)"),
    ("capath", "give the CA certificates as one PEM file with cafile"),
    ("clientid_prefixes", "client id prefixes are not supported (an ACL with %c patterns can restrict clients)"),
    ("use_username_as_clientid", "not supported (ignoring it would let a client take another's id)"),
    ("bind_interface", "give the interface's address to `listener` instead (ignoring it would listen on every interface)"),
    ("upgrade_outgoing_qos", "cicada delivers at the QoS the MQTT specification says"),
    ("max_qos", "cicada's maximum QoS is node-wide: [mqtt] max_qos in a cicada.toml"),
    ("max_topic_alias", "cicada's topic alias maximum is node-wide: [limits] topic_alias_maximum in a cicada.toml"),
    ("tls_engine", "OpenSSL engines are not supported"),
    ("tls_engine_kpass_sha1", "OpenSSL engines are not supported"),
    ("connection", "bridges are not supported"),
];

/// Options that only exist inside a bridge (`connection`) section: refused like the bridge itself.
const BRIDGE: &[&str] = &[
    "address",
    "addresses",
    "topic",
    "cleansession",
    "local_cleansession",
    "keepalive_interval",
    "idle_timeout",
    "local_clientid",
    "local_password",
    "local_username",
    "notifications",
    "notifications_local_only",
    "notification_topic",
    "remote_clientid",
    "remote_password",
    "remote_username",
    "restart_timeout",
    "round_robin",
    "start_type",
    "threshold",
    "try_private",
    "clientid",
];

/// MQTT's largest packet: a remaining length of 268,435,455 plus the fixed header.
const MQTT_MAX_PACKET: u64 = 268_435_455 + 5;

/// One option line, split.
struct Line<'a> {
    option: &'a str,
    /// Everything after the option name, trimmed (a path may hold spaces).
    rest: &'a str,
    origin: Origin,
}

impl Line<'_> {
    fn err(&self, kind: Kind) -> MosquittoError {
        MosquittoError {
            file: self.origin.file.clone(),
            line: self.origin.line,
            kind,
        }
    }
    fn missing(&self, what: &'static str) -> MosquittoError {
        self.err(Kind::Missing {
            option: self.option.into(),
            what,
        })
    }
    fn bad(&self, value: &str, expected: &'static str) -> MosquittoError {
        self.err(Kind::BadValue {
            option: self.option.into(),
            value: value.into(),
            expected,
        })
    }
    fn tokens(&self) -> Vec<&str> {
        self.rest.split_whitespace().collect()
    }
    /// Exactly one word.
    fn one(&self, what: &'static str) -> Result<&str, MosquittoError> {
        match self.tokens().as_slice() {
            [] => Err(self.missing(what)),
            [v] => Ok(v),
            [_, extra @ ..] => Err(self.err(Kind::Extra {
                option: self.option.into(),
                extra: extra.join(" "),
            })),
        }
    }
    fn bool(&self) -> Result<bool, MosquittoError> {
        match self.one("true or false")? {
            "true" => Ok(true),
            "false" => Ok(false),
            v => Err(self.bad(v, "true or false")),
        }
    }
    /// A whole number up to `max`.
    fn uint(&self, max: u64, expected: &'static str) -> Result<u64, MosquittoError> {
        let v = self.one("a number")?;
        v.parse::<u64>()
            .ok()
            .filter(|n| *n <= max)
            .ok_or_else(|| self.bad(v, expected))
    }
    /// The rest of the line as a path, made absolute against `relative_to` when given.
    fn path(&self, relative_to: Option<&Path>) -> Result<String, MosquittoError> {
        if self.rest.is_empty() {
            return Err(self.missing("a path"));
        }
        Ok(match relative_to {
            Some(base) if Path::new(self.rest).is_relative() => {
                base.join(self.rest).display().to_string()
            }
            _ => self.rest.to_string(),
        })
    }
}

/// An address to bind: an IP address, or `localhost` (Cicada resolves no other host name).
fn bind_ip(line: &Line, addr: &str) -> Result<IpAddr, MosquittoError> {
    if addr == "localhost" {
        return Ok(IpAddr::from([127, 0, 0, 1]));
    }
    addr.parse().map_err(|_| {
        line.bad(
            addr,
            "an IP address (host names other than localhost are not resolved)",
        )
    })
}

impl Draft {
    /// Applies one line (1-based `line` of `file`); comments and blank lines do nothing. `include_dir`
    /// is the caller's (it reads files).
    pub(super) fn line(
        &mut self,
        raw: &str,
        file: &str,
        line: usize,
        relative_to: Option<&Path>,
        ignored: &mut Vec<Ignored>,
    ) -> Result<(), MosquittoError> {
        let text = raw.trim();
        if text.is_empty() || text.starts_with('#') {
            return Ok(());
        }
        let (option, rest) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
        let l = Line {
            option,
            rest: rest.trim(),
            origin: Origin {
                file: file.to_string(),
                line,
                option: option.to_string(),
            },
        };
        let ignore = |ignored: &mut Vec<Ignored>, why: &'static str| {
            ignored.push(Ignored {
                file: file.to_string(),
                line,
                option: option.to_string(),
                why,
            })
        };
        let origin = l.origin.clone();
        match option {
            "listener" => {
                let t = l.tokens();
                let (port, addr) = match t.as_slice() {
                    [] => return Err(l.missing("a port")),
                    [p] => (*p, None),
                    [p, a] => (*p, Some(*a)),
                    [_, _, extra @ ..] => {
                        return Err(l.err(Kind::Extra {
                            option: option.into(),
                            extra: extra.join(" "),
                        }))
                    }
                };
                if port == "0" && addr.is_some() {
                    return Err(l.err(Kind::Refused {
                        option: option.into(),
                        why: "Unix socket listeners (port 0) are not supported",
                    }));
                }
                let port = port
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| l.bad(port, "a port number (1-65535)"))?;
                let ip = addr.map(|a| bind_ip(&l, a)).transpose()?;
                self.listeners.push(ListenerDraft {
                    origin: Some(origin),
                    port: Some(port),
                    ip,
                    ..ListenerDraft::default()
                });
                self.security_seen = true;
            }
            "port" => {
                let p = l.uint(65535, "a port number (1-65535)")?;
                if p == 0 {
                    return Err(l.bad("0", "a port number (1-65535)"));
                }
                self.default.port = Some(p as u16);
                self.default.origin.get_or_insert(origin);
                self.default.touched = true;
            }
            "bind_address" => {
                let ip = bind_ip(&l, l.one("an address")?)?;
                self.default.ip = Some(ip);
                self.default.origin.get_or_insert(origin);
                self.default.touched = true;
            }
            "protocol" => {
                let websockets = match l.one("mqtt or websockets")? {
                    "mqtt" => false,
                    "websockets" => true,
                    v => return Err(l.bad(v, "mqtt or websockets")),
                };
                self.current().websockets = websockets;
            }
            "cafile" => self.current().cafile = Some((l.path(relative_to)?, origin)),
            "certfile" => self.current().certfile = Some((l.path(relative_to)?, origin)),
            "keyfile" => self.current().keyfile = Some((l.path(relative_to)?, origin)),
            "require_certificate" => self.current().require_certificate = Some((l.bool()?, origin)),
            "use_identity_as_username" => {
                self.current().use_identity_as_username = Some((l.bool()?, origin))
            }
            "max_connections" => {
                let v = l.one("a number")?;
                let n = match v.parse::<i64>() {
                    // Mosquitto's "unlimited": only the node-wide [limits] max_connections applies.
                    Ok(-1) => 0,
                    Ok(n) if n > 0 => n as u64,
                    _ => return Err(l.bad(v, "a positive number or -1 (unlimited)")),
                };
                self.current().max_connections = Some((n, origin));
            }
            "allow_anonymous" => {
                let v = l.bool()?;
                self.security_seen = true;
                self.auth_target().allow_anonymous = Some((v, origin));
            }
            "password_file" => {
                let v = l.path(relative_to)?;
                self.security_seen = true;
                self.auth_target().password_file = Some((v, origin));
            }
            "acl_file" => {
                let v = l.path(relative_to)?;
                self.security_seen = true;
                self.auth_target().acl_file = Some((v, origin));
            }
            "per_listener_settings" => {
                let v = l.bool()?;
                if v && self.security_seen {
                    return Err(l.err(Kind::Inconsistent {
                        option: option.into(),
                        why: "must come before any listener and any authentication option",
                    }));
                }
                self.per_listener_settings = v;
            }
            "persistence" => {
                if !l.bool()? {
                    ignore(
                        ignored,
                        "cicada always persists sessions and retained messages",
                    );
                }
            }
            "persistence_location" => self.set("data_dir", l.path(relative_to)?.into(), origin),
            "max_queued_messages" | "max_queued_bytes" => {
                // 0 is Mosquitto's "no maximum": the largest value a TOML integer holds, which no queue
                // reaches ([limits] memory_watermark still pauses publishers node-wide).
                let n = match l.uint(i64::MAX as u64, "a number")? {
                    0 => i64::MAX,
                    n => n as i64,
                };
                let key = if option == "max_queued_messages" {
                    "limits.max_queued_messages"
                } else {
                    "limits.max_queued_bytes"
                };
                self.set(key, n.into(), origin);
            }
            "max_inflight_messages" => {
                // 0 is Mosquitto's "no maximum": the largest Receive Maximum MQTT 5 can announce.
                let n = match l.uint(65535, "a number from 0 (no maximum) to 65535")? {
                    0 => 65535,
                    n => n,
                };
                self.set("limits.max_inflight", (n as i64).into(), origin);
            }
            "message_size_limit" => {
                let n = l.uint(268_435_455, "a payload size up to 268435455 bytes")?;
                self.message_size_limit = Some((n, origin));
            }
            "max_packet_size" => {
                // 0 is Mosquitto's default, "no limit": MQTT's own.
                let n = match l.uint(MQTT_MAX_PACKET, "a packet size up to 268435460 bytes")? {
                    0 => MQTT_MAX_PACKET,
                    n => n,
                };
                self.set("limits.max_packet_size", (n as i64).into(), origin);
            }
            "max_keepalive" => {
                let n = l.uint(65535, "a number of seconds up to 65535")?;
                self.set("limits.keep_alive_max", (n as i64).into(), origin);
            }
            "sys_interval" => {
                let n = l.uint(i64::MAX as u64, "a number of seconds")?;
                self.set("mqtt.sys_interval", (n as i64).into(), origin);
            }
            "retain_available" => self.set("mqtt.retain_available", l.bool()?.into(), origin),
            "allow_zero_length_clientid" => {
                let v = l.bool()?;
                if self.per_listener_settings && !self.listeners.is_empty() {
                    return Err(l.err(Kind::Refused {
                        option: option.into(),
                        why: "cicada's allow_zero_length_client_id is node-wide, not per listener",
                    }));
                }
                self.set("mqtt.allow_zero_length_client_id", v.into(), origin);
            }
            "log_dest" => self.log_dest(&l, relative_to, ignored)?,
            "log_type" => {
                let level = match l.one("a log type")? {
                    "none" => None,
                    "error" => Some(Level::Error),
                    "warning" => Some(Level::Warn),
                    "notice" | "information" => Some(Level::Info),
                    "debug" | "all" => Some(Level::Debug),
                    "subscribe" | "unsubscribe" | "websockets" => {
                        ignore(ignored, "cicada has no log categories; these events follow the log level");
                        return Ok(());
                    }
                    v => {
                        return Err(l.bad(
                            v,
                            "debug, error, warning, notice, information, subscribe, unsubscribe, websockets, none or all",
                        ))
                    }
                };
                // `none` clears the types given before it, as in Mosquitto.
                let cur = self.log_level.take().and_then(|(lv, _)| lv);
                let next = level.map(|lv| cur.map_or(lv, |c| c.max(lv)));
                self.log_level = Some((next, origin));
            }
            "tls_version" => match l.one("a TLS version")? {
                "tlsv1.2" | "tlsv1.1" => {
                    ignore(ignored, "cicada accepts TLS 1.2 and 1.3, never older")
                }
                "tlsv1.3" => {
                    return Err(l.err(Kind::Refused {
                        option: option.into(),
                        why: "cicada accepts TLS 1.2 and 1.3 and cannot be restricted to 1.3",
                    }))
                }
                v => return Err(l.bad(v, "tlsv1.3, tlsv1.2 or tlsv1.1")),
            },
            "tls_keyform" => match l.one("pem or engine")? {
                "pem" => ignore(ignored, "cicada reads PEM keys"),
                _ => {
                    return Err(l.err(Kind::Refused {
                        option: option.into(),
                        why: "OpenSSL engines are not supported",
                    }))
                }
            },
            _ => {
                if let Some((_, why)) = IGNORED.iter().find(|(o, _)| *o == option) {
                    ignore(ignored, why);
                } else if let Some((_, why)) = REFUSED.iter().find(|(o, _)| *o == option) {
                    return Err(l.err(Kind::Refused {
                        option: option.into(),
                        why,
                    }));
                } else if BRIDGE.contains(&option) || option.starts_with("bridge_") {
                    return Err(l.err(Kind::Refused {
                        option: option.into(),
                        why: "bridges are not supported",
                    }));
                } else if option.starts_with("auth_opt_") || option.starts_with("plugin_opt_") {
                    return Err(l.err(Kind::Refused {
                        option: option.into(),
                        why: "cicada loads no plugins",
                    }));
                } else {
                    return Err(l.err(Kind::Unknown(option.into())));
                }
            }
        }
        Ok(())
    }

    /// `log_dest stdout | stderr | file PATH | none | syslog | topic | dlt`: the first one given replaces
    /// the default (stderr); `none` clears what came before it.
    fn log_dest(
        &mut self,
        l: &Line,
        relative_to: Option<&Path>,
        ignored: &mut Vec<Ignored>,
    ) -> Result<(), MosquittoError> {
        let (kind, rest) = l
            .rest
            .split_once(char::is_whitespace)
            .unwrap_or((l.rest, ""));
        let mut dest = self.log_dest.take().unwrap_or(Dest {
            stderr: false,
            stdout: false,
            file: None,
        });
        let single = |dest: Dest, this: &mut Draft| -> Result<(), MosquittoError> {
            if !rest.trim().is_empty() {
                return Err(l.err(Kind::Extra {
                    option: l.option.into(),
                    extra: rest.trim().into(),
                }));
            }
            this.log_dest = Some(dest);
            Ok(())
        };
        let why = match kind {
            "" => return Err(l.missing("a destination")),
            "stdout" => {
                dest.stdout = true;
                return single(dest, self);
            }
            "stderr" => {
                dest.stderr = true;
                return single(dest, self);
            }
            "none" => {
                return single(
                    Dest {
                        stderr: false,
                        stdout: false,
                        file: None,
                    },
                    self,
                )
            }
            "file" => {
                let path = Line {
                    option: l.option,
                    rest: rest.trim(),
                    origin: l.origin.clone(),
                }
                .path(relative_to)?;
                // Mosquitto keeps one log file: the last one given.
                dest.file = Some((path, l.origin.clone()));
                self.log_dest = Some(dest);
                return Ok(());
            }
            "syslog" => {
                dest.stderr = true;
                "cicada logs to stderr instead of syslog (under systemd, stderr goes to the journal)"
            }
            "topic" => "cicada does not publish its log under $SYS/broker/log",
            "dlt" => "cicada does not log to DLT",
            other => {
                return Err(l.bad(
                    other,
                    "stdout, stderr, file PATH, syslog, topic, dlt or none",
                ))
            }
        };
        self.log_dest = Some(dest);
        ignored.push(Ignored {
            file: l.origin.file.clone(),
            line: l.origin.line,
            option: format!("log_dest {kind}"),
            why,
        });
        Ok(())
    }
}
