//! What a client connects with: identity, session, Will, credentials, limits and reconnect policy.

use super::transport::{Connector, TcpConnector};
use crate::protocol::{LastWill, Properties, ProtocolVersion};
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

/// Default keep-alive: Mosquitto's clients use 60 s, and most brokers expect something of that order.
pub const DEFAULT_KEEP_ALIVE: u16 = 60;
/// Default in-flight window for QoS 1/2 publishes; the broker's Receive Maximum may lower it.
pub const DEFAULT_INFLIGHT: u16 = 100;
/// Default largest packet accepted from the broker: 1 MiB more than the common 256 MiB MQTT maximum is
/// absurd for a client, so stay at a size a device can hold.
pub const DEFAULT_MAX_PACKET_SIZE: usize = 16 * 1024 * 1024;
/// Default time allowed for the TCP connect plus CONNACK.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Exponential reconnect backoff: `initial`, then times `multiplier` after each failure, capped at `max`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub multiplier: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            multiplier: 2.0,
        }
    }
}

impl Backoff {
    /// The delay before attempt `attempt` (0-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = self.multiplier.max(1.0).powi(attempt.min(64) as i32);
        let secs = (self.initial.as_secs_f64() * factor).min(self.max.as_secs_f64());
        Duration::from_secs_f64(secs.max(0.0))
    }
}

/// Everything the client needs to connect and behave.
#[derive(Clone)]
pub struct ClientOptions {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub version: ProtocolVersion,
    /// Clean Start (v5) / Clean Session (v3).
    pub clean_start: bool,
    /// Seconds; 0 disables keep-alive.
    pub keep_alive: u16,
    /// MQTT 5 Session Expiry Interval, seconds.
    pub session_expiry: Option<u32>,
    pub will: Option<LastWill>,
    pub username: Option<String>,
    pub password: Option<Bytes>,
    /// Further CONNECT properties (v5): receive maximum, topic alias maximum, user properties, ...
    pub connect_properties: Properties,
    /// Reconnect automatically after a lost connection, resuming the session; `None` to give up.
    pub reconnect: Option<Backoff>,
    /// Most QoS 1/2 publishes awaiting acknowledgement at once.
    pub inflight: u16,
    pub max_packet_size: usize,
    pub connect_timeout: Duration,
    pub connector: Arc<dyn Connector>,
}

impl ClientOptions {
    /// Options for a client with this id talking to `host:port`, MQTT 3.1.1, clean session, no reconnect.
    pub fn new(host: impl Into<String>, port: u16, client_id: impl Into<String>) -> ClientOptions {
        ClientOptions {
            host: host.into(),
            port,
            client_id: client_id.into(),
            version: ProtocolVersion::V311,
            clean_start: true,
            keep_alive: DEFAULT_KEEP_ALIVE,
            session_expiry: None,
            will: None,
            username: None,
            password: None,
            connect_properties: Properties::default(),
            reconnect: None,
            inflight: DEFAULT_INFLIGHT,
            max_packet_size: DEFAULT_MAX_PACKET_SIZE,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            connector: Arc::new(TcpConnector),
        }
    }

    pub fn version(mut self, version: ProtocolVersion) -> Self {
        self.version = version;
        self
    }

    pub fn clean_start(mut self, clean: bool) -> Self {
        self.clean_start = clean;
        self
    }

    pub fn keep_alive(mut self, secs: u16) -> Self {
        self.keep_alive = secs;
        self
    }

    pub fn session_expiry(mut self, secs: u32) -> Self {
        self.session_expiry = Some(secs);
        self
    }

    pub fn will(mut self, will: LastWill) -> Self {
        self.will = Some(will);
        self
    }

    pub fn credentials(mut self, username: impl Into<String>, password: impl Into<Bytes>) -> Self {
        self.username = Some(username.into());
        self.password = Some(password.into());
        self
    }

    pub fn reconnect(mut self, backoff: Backoff) -> Self {
        self.reconnect = Some(backoff);
        self
    }

    pub fn inflight(mut self, window: u16) -> Self {
        self.inflight = window.max(1);
        self
    }

    pub fn connector(mut self, connector: Arc<dyn Connector>) -> Self {
        self.connector = connector;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            multiplier: 2.0,
        };
        assert_eq!(b.delay(0), Duration::from_millis(100));
        assert_eq!(b.delay(1), Duration::from_millis(200));
        assert_eq!(b.delay(3), Duration::from_millis(800));
        assert_eq!(b.delay(4), Duration::from_secs(1));
        assert_eq!(b.delay(1000), Duration::from_secs(1));
    }
}
