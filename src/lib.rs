//! Cicada: a clustered MQTT 3.1 / 3.1.1 / 5.0 broker.
//!
//! # Layout
//! - [`protocol`]: the wire format, pure and free of I/O.
//! - [`auth`]: Mosquitto-compatible password files and ACLs.
//! - [`broker`]: the broker of one node as actors (connections, sessions, registry, topic shards).
//! - [`config`]: typed configuration with file/line/key errors; [`http`]: `/metrics`, `/health`, `/ready`.
//! - [`client`]: an async MQTT client (3.1.1 and 5.0) with automatic reconnect, used by the CLI, the tests
//!   and the load generator.
//! - [`ws`]: MQTT over WebSocket as a byte stream, for the broker's ws/wss listeners and the client.
//! - [`cli`]: the `cicada serve`, `pub`, `sub` and `bench` commands.

pub mod auth;
pub mod broker;
pub mod cli;
pub mod client;
pub mod config;
pub mod http;
pub mod protocol;
pub mod store;
pub mod ws;
