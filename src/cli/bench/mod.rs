//! `cicada bench`: a load generator in the spirit of emqtt-bench.
//!
//! - `conn`: open N connections at a rate and hold them.
//! - `pubsub`: N publishers and M subscribers; per-second progress and a summary of throughput, end-to-end
//!   latency (a send timestamp travels in the payload), losses and duplicates.
//! - `sink`: a trivial MQTT endpoint that acknowledges everything and routes nothing, to measure the
//!   generator's own ceiling.

mod conn;
mod pubsub;
mod sink;
mod stats;

use super::connect::{parse_qos, parse_version};
use super::CliError;
use crate::protocol::{ProtocolVersion, QoS};
use clap::{Args, Subcommand};

/// `cicada bench` scenarios.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Open many connections at a given rate and hold them.
    Conn(ConnArgs),
    /// Publishers and subscribers: throughput, latency, losses and duplicates.
    Pubsub(PubSubArgs),
    /// A do-nothing MQTT endpoint (acknowledges, routes nothing), to measure the generator itself.
    Sink(SinkArgs),
}

/// Target broker, shared by the scenarios.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// Broker host.
    #[arg(short = 'h', long, default_value = "localhost")]
    pub host: String,
    /// Broker port.
    #[arg(short = 'p', long, default_value_t = 1883)]
    pub port: u16,
    /// MQTT protocol version: 311 or 5.
    #[arg(short = 'V', long = "protocol-version", default_value = "311", value_parser = parse_version)]
    pub version: ProtocolVersion,
    /// Keep-alive of every client, seconds.
    #[arg(short = 'k', long = "keepalive", default_value_t = 60)]
    pub keep_alive: u16,
    /// Print the summary as one JSON line.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `bench conn`.
#[derive(Debug, Args)]
#[command(disable_help_flag = true)]
pub struct ConnArgs {
    #[command(flatten)]
    pub target: Target,
    /// Number of connections.
    #[arg(short = 'c', long = "count", default_value_t = 1000)]
    pub count: u32,
    /// New connections per second (0: as fast as possible).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Seconds to hold the connections after the last one opened (0: until interrupted).
    #[arg(long, default_value_t = 0)]
    pub hold: u64,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    pub help: Option<bool>,
}

/// Arguments of `bench pubsub`.
#[derive(Debug, Args)]
#[command(disable_help_flag = true)]
pub struct PubSubArgs {
    #[command(flatten)]
    pub target: Target,
    /// Number of publishers.
    #[arg(long, default_value_t = 1)]
    pub publishers: u32,
    /// Number of subscribers.
    #[arg(long, default_value_t = 1)]
    pub subscribers: u32,
    /// QoS of publishes and subscriptions.
    #[arg(short = 'q', long, default_value = "0", value_parser = parse_qos)]
    pub qos: QoS,
    /// Payload size in bytes (at least 20: index, sequence and timestamp).
    #[arg(short = 's', long, default_value_t = 64)]
    pub size: usize,
    /// Seconds to publish.
    #[arg(short = 'd', long, default_value_t = 10)]
    pub duration: u64,
    /// Messages per second per publisher (0: as fast as the window and socket allow).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Topic template; %i is the publisher's index.
    #[arg(long, default_value = "bench/%i")]
    pub topic: String,
    /// Filter every subscriber subscribes to ($share/{group}/... makes one group of them).
    #[arg(long, default_value = "bench/#")]
    pub filter: String,
    /// QoS 1/2 publishes in flight per publisher.
    #[arg(long, default_value_t = 100)]
    pub inflight: u16,
    /// Publish with the RETAIN flag (each one is committed to the broker's store before it is acknowledged).
    #[arg(long)]
    pub retain: bool,
    /// Subscribers keep persistent sessions (clean start 0, v5 session expiry 300 s): their QoS 1/2 copies
    /// are committed to the broker's store before the publishers' acknowledgements. Removed at the end.
    #[arg(long)]
    pub persistent: bool,
    /// Seconds to wait for the last deliveries after publishing stopped.
    #[arg(long, default_value_t = 10)]
    pub drain: u64,
    /// Port the subscribers connect to (default: --port): another node of a cluster, to measure the
    /// cross-node path.
    #[arg(long = "sub-port")]
    pub sub_port: Option<u16>,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    pub help: Option<bool>,
}

/// Arguments of `bench sink`.
#[derive(Debug, Args)]
pub struct SinkArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:1884")]
    pub bind: String,
}

/// Runs a bench scenario.
pub async fn run(cmd: BenchCommand) -> Result<(), CliError> {
    raise_fd_limit();
    match cmd {
        BenchCommand::Conn(a) => conn::run(a).await,
        BenchCommand::Pubsub(a) => pubsub::run(a).await,
        BenchCommand::Sink(a) => sink::run(a).await,
    }
}

/// Many connections need many descriptors: lift the soft limit to the hard one.
fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
