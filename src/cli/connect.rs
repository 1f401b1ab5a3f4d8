//! Connection options shared by `cicada pub` and `cicada sub`, spelled as mosquitto_pub / mosquitto_sub
//! spell them, and the MQTT 5 `-D command identifier value` property syntax.

use crate::client::{Backoff, ClientOptions};
use crate::protocol::{LastWill, Properties, ProtocolVersion, QoS};
use bytes::Bytes;
use clap::Args;

/// Options to reach and identify with a broker.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// Broker host.
    #[arg(short = 'h', long, default_value = "localhost")]
    pub host: String,
    /// Broker port.
    #[arg(short = 'p', long, default_value_t = 1883)]
    pub port: u16,
    /// Client identifier (default: a prefix and the process id).
    #[arg(short = 'i', long = "id")]
    pub id: Option<String>,
    /// Prefix for a generated client identifier.
    #[arg(short = 'I', long = "id-prefix")]
    pub id_prefix: Option<String>,
    /// User name.
    #[arg(short = 'u', long)]
    pub username: Option<String>,
    /// Password.
    #[arg(short = 'P', long = "pw")]
    pub password: Option<String>,
    /// MQTT protocol version: 31, 311 or 5 (also mqttv31, mqttv311, mqttv5).
    #[arg(short = 'V', long = "protocol-version", default_value = "311", value_parser = parse_version)]
    pub version: ProtocolVersion,
    /// Keep-alive interval in seconds (0 disables).
    #[arg(short = 'k', long = "keepalive", default_value_t = 60)]
    pub keep_alive: u16,
    /// Keep the session when disconnected (clean session / clean start = false).
    #[arg(short = 'c', long = "disable-clean-session")]
    pub no_clean: bool,
    /// MQTT 5 session expiry interval in seconds.
    #[arg(short = 'x', long = "session-expiry-interval")]
    pub session_expiry: Option<u32>,
    /// Will topic.
    #[arg(long = "will-topic")]
    pub will_topic: Option<String>,
    /// Will payload.
    #[arg(long = "will-payload", default_value = "")]
    pub will_payload: String,
    /// Will QoS.
    #[arg(long = "will-qos", default_value = "0", value_parser = parse_qos)]
    pub will_qos: QoS,
    /// Retain the Will.
    #[arg(long = "will-retain")]
    pub will_retain: bool,
    /// MQTT 5 property: -D COMMAND IDENTIFIER VALUE (user-property takes a key and a value), e.g.
    /// `-D PUBLISH user-property site berlin`, `-D CONNECT session-expiry-interval 60`.
    #[arg(short = 'D', long = "property", num_args = 3..=4, action = clap::ArgAction::Append)]
    pub property: Vec<String>,
    /// CA certificates (PEM) that may sign the broker's certificate: connect with TLS.
    #[arg(long)]
    pub cafile: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for mutual TLS; with --key and --cafile.
    #[arg(long)]
    pub cert: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long)]
    pub key: Option<std::path::PathBuf>,
    /// Print debug messages.
    #[arg(short = 'd', long)]
    pub debug: bool,
}

/// The `-D` properties, grouped by the packet they go into.
#[derive(Debug, Default, Clone)]
pub struct PacketProperties {
    pub connect: Properties,
    pub publish: Properties,
    pub subscribe: Properties,
    pub disconnect: Properties,
    pub will: Properties,
}

pub fn parse_version(s: &str) -> Result<ProtocolVersion, String> {
    match s {
        "31" | "mqttv31" | "3.1" => Ok(ProtocolVersion::V31),
        "311" | "mqttv311" | "3.1.1" => Ok(ProtocolVersion::V311),
        "5" | "mqttv5" | "5.0" => Ok(ProtocolVersion::V5),
        other => Err(format!(
            "unknown protocol version {other:?}; use 31, 311 or 5"
        )),
    }
}

pub fn parse_qos(s: &str) -> Result<QoS, String> {
    s.parse::<u8>()
        .ok()
        .and_then(QoS::from_u8)
        .ok_or_else(|| format!("QoS must be 0, 1 or 2, not {s:?}"))
}

fn number<T: std::str::FromStr>(ident: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("invalid value {value:?} for property {ident}"))
}

impl ConnectArgs {
    /// Parses the flattened `-D` values: each group is COMMAND IDENTIFIER VALUE [VALUE].
    pub fn properties(&self) -> Result<PacketProperties, String> {
        let mut out = PacketProperties::default();
        let mut rest = self.property.iter().map(String::as_str);
        while let Some(command) = rest.next() {
            let ident = rest
                .next()
                .ok_or("-D needs a command, an identifier and a value")?;
            let value = rest
                .next()
                .ok_or("-D needs a command, an identifier and a value")?;
            let target = match command.to_ascii_lowercase().as_str() {
                "connect" => &mut out.connect,
                "publish" => &mut out.publish,
                "subscribe" => &mut out.subscribe,
                "disconnect" => &mut out.disconnect,
                "will" => &mut out.will,
                other => return Err(format!("unknown -D command {other:?}")),
            };
            match ident {
                "user-property" => {
                    let v = rest.next().ok_or("user-property needs a key and a value")?;
                    target
                        .user_properties
                        .push((value.to_string(), v.to_string()));
                }
                "content-type" => target.content_type = Some(value.into()),
                "response-topic" => target.response_topic = Some(value.into()),
                "correlation-data" => {
                    target.correlation_data = Some(Bytes::from(value.to_string()))
                }
                "reason-string" => target.reason_string = Some(value.into()),
                "payload-format-indicator" => {
                    target.payload_format_indicator = Some(number(ident, value)?)
                }
                "message-expiry-interval" => {
                    target.message_expiry_interval = Some(number(ident, value)?)
                }
                "session-expiry-interval" => {
                    target.session_expiry_interval = Some(number(ident, value)?)
                }
                "will-delay-interval" => target.will_delay_interval = Some(number(ident, value)?),
                "receive-maximum" => target.receive_maximum = Some(number(ident, value)?),
                "topic-alias-maximum" => target.topic_alias_maximum = Some(number(ident, value)?),
                "topic-alias" => target.topic_alias = Some(number(ident, value)?),
                "maximum-packet-size" => target.maximum_packet_size = Some(number(ident, value)?),
                "subscription-identifier" => {
                    target.subscription_identifiers = vec![number(ident, value)?]
                }
                "request-problem-information" => {
                    target.request_problem_information = Some(value != "0")
                }
                "request-response-information" => {
                    target.request_response_information = Some(value != "0")
                }
                other => return Err(format!("unknown property identifier {other:?}")),
            }
        }
        if !self.property.is_empty() && !self.version.is_v5() {
            return Err("-D properties need MQTT 5 (-V 5)".into());
        }
        Ok(out)
    }

    /// Client options from these arguments; `default_prefix` names the tool in generated ids.
    pub fn client_options(
        &self,
        default_prefix: &str,
        props: &PacketProperties,
    ) -> Result<ClientOptions, String> {
        let id = match (&self.id, &self.id_prefix) {
            (Some(id), _) => id.clone(),
            (None, prefix) => format!(
                "{}{}",
                prefix.as_deref().unwrap_or(default_prefix),
                std::process::id()
            ),
        };
        if self.no_clean && self.id.is_none() {
            return Err("a persistent session (-c) needs a client id (-i)".into());
        }
        let mut opts = ClientOptions::new(self.host.clone(), self.port, id)
            .version(self.version)
            .clean_start(!self.no_clean)
            .keep_alive(self.keep_alive);
        opts.connect_properties = props.connect.clone();
        if let Some(secs) = self.session_expiry {
            opts = opts.session_expiry(secs);
        } else if self.no_clean
            && self.version.is_v5()
            && props.connect.session_expiry_interval.is_none()
        {
            // Like mosquitto: -c in MQTT 5 means a session that never expires.
            opts = opts.session_expiry(u32::MAX);
        }
        if let Some(topic) = &self.will_topic {
            opts = opts.will(LastWill {
                topic: topic.clone(),
                payload: Bytes::from(self.will_payload.clone()),
                qos: self.will_qos,
                retain: self.will_retain,
                properties: props.will.clone(),
            });
        }
        match (&self.username, &self.password) {
            (Some(u), p) => {
                opts.username = Some(u.clone());
                opts.password = p.as_ref().map(|p| Bytes::from(p.clone()));
            }
            (None, Some(p)) if self.version.is_v5() => opts.password = Some(Bytes::from(p.clone())),
            (None, Some(_)) => {
                return Err("a password (-P) needs a user name (-u) before MQTT 5".into())
            }
            (None, None) => {}
        }
        let client_cert = match (&self.cert, &self.key) {
            (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
            (None, None) => None,
            _ => return Err("--cert and --key go together".into()),
        };
        match &self.cafile {
            Some(ca) => {
                let tls = crate::client::transport::TlsConnector::from_files(ca, client_cert)?;
                opts = opts.connector(std::sync::Arc::new(tls));
            }
            None if client_cert.is_some() => {
                return Err("--cert and --key need --cafile (TLS)".into())
            }
            None => {}
        }
        Ok(opts)
    }

    /// The reconnect policy of long-running tools (sub).
    pub fn backoff() -> Backoff {
        Backoff::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    #[command(disable_help_flag = true)]
    struct T {
        #[command(flatten)]
        c: ConnectArgs,
    }

    #[test]
    fn dash_d_groups_are_split_by_identifier() {
        let t = T::parse_from([
            "t",
            "-V",
            "5",
            "-D",
            "PUBLISH",
            "user-property",
            "k",
            "v",
            "-D",
            "connect",
            "session-expiry-interval",
            "60",
            "-D",
            "publish",
            "content-type",
            "text/plain",
        ]);
        let p = t.c.properties().unwrap();
        assert_eq!(
            p.publish.user_properties,
            vec![("k".to_string(), "v".to_string())]
        );
        assert_eq!(p.publish.content_type.as_deref(), Some("text/plain"));
        assert_eq!(p.connect.session_expiry_interval, Some(60));
    }

    #[test]
    fn properties_need_mqtt5_and_known_identifiers() {
        let t = T::parse_from(["t", "-D", "publish", "content-type", "x"]);
        assert!(t.c.properties().unwrap_err().contains("MQTT 5"));
        let t = T::parse_from(["t", "-V", "5", "-D", "publish", "colour", "x"]);
        assert!(t.c.properties().unwrap_err().contains("colour"));
    }

    #[test]
    fn versions_parse_in_mosquitto_spellings() {
        assert_eq!(parse_version("mqttv5"), Ok(ProtocolVersion::V5));
        assert_eq!(parse_version("311"), Ok(ProtocolVersion::V311));
        assert!(parse_version("4").is_err());
    }
}
