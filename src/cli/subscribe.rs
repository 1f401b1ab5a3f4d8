//! `cicada sub`: subscribe and print messages (like mosquitto_sub), reconnecting when the connection drops.

use super::connect::{parse_qos, ConnectArgs};
use super::{CliError, EXIT_TIMEOUT};
use crate::client::{Client, Event};
use crate::protocol::{Publish, QoS, RetainHandling, SubscribeFilter, SubscriptionOptions};
use clap::Args;
use std::io::Write;
use std::time::Duration;

/// Arguments of `cicada sub`.
#[derive(Debug, Args)]
#[command(disable_help_flag = true)]
pub struct SubArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Topic filter to subscribe to (repeat for several).
    #[arg(short = 't', long, required = true)]
    pub topic: Vec<String>,
    /// Subscription QoS.
    #[arg(short = 'q', long, default_value = "0", value_parser = parse_qos)]
    pub qos: QoS,
    /// Print the topic before each payload.
    #[arg(short = 'v', long)]
    pub verbose: bool,
    /// Exit after this many messages.
    #[arg(short = 'C', long)]
    pub count: Option<u64>,
    /// Exit with code 27 if no (or not enough) messages arrive within this many seconds.
    #[arg(short = 'W', long)]
    pub timeout: Option<u64>,
    /// Do not print a newline after each payload.
    #[arg(short = 'N')]
    pub no_newline: bool,
    /// Do not print retained messages that were stored before the subscription ("stale").
    #[arg(short = 'R')]
    pub no_retained: bool,
    /// Print only retained messages; exit at the first message that is not retained.
    #[arg(long = "retained-only")]
    pub retained_only: bool,
    /// Exit right after the subscription is acknowledged.
    #[arg(short = 'E')]
    pub exit_after_subscribe: bool,
    /// MQTT 5 no local: do not receive our own publishes.
    #[arg(long = "nl")]
    pub no_local: bool,
    /// MQTT 5 retain as published.
    #[arg(long = "rap")]
    pub retain_as_published: bool,
    /// MQTT 5 retain handling: 0 send, 1 send if new, 2 do not send.
    #[arg(long = "rh", default_value_t = 0)]
    pub retain_handling: u8,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    pub help: Option<bool>,
}

/// Runs `cicada sub`.
pub async fn run(args: SubArgs) -> Result<(), CliError> {
    let props = args.connect.properties().map_err(CliError::usage)?;
    let options = args
        .connect
        .client_options("cicada-sub-", &props)
        .map_err(CliError::usage)?
        .reconnect(ConnectArgs::backoff());
    let retain_handling = match args.retain_handling {
        0 => RetainHandling::SendAtSubscribe,
        1 => RetainHandling::SendIfNew,
        2 => RetainHandling::DoNotSend,
        other => {
            return Err(CliError::usage(format!(
                "retain handling must be 0, 1 or 2, not {other}"
            )))
        }
    };
    let filters: Vec<SubscribeFilter> = args
        .topic
        .iter()
        .map(|t| SubscribeFilter {
            filter: t.clone(),
            options: SubscriptionOptions {
                qos: args.qos,
                no_local: args.no_local,
                retain_as_published: args.retain_as_published,
                retain_handling,
            },
        })
        .collect();
    let deadline = args
        .timeout
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    let work = async {
        let (client, mut events, _) = Client::connect(options)
            .await
            .map_err(|e| CliError::failure(format!("Connection error: {e}")))?;
        let ack = client
            .subscribe_with(filters, props.subscribe.clone())
            .await?;
        if ack.reasons.iter().all(|r| r.is_error()) {
            let reason = ack
                .reasons
                .first()
                .map(|r| r.to_string())
                .unwrap_or_default();
            return Err(CliError::failure(format!(
                "All subscription requests were denied: {reason}"
            )));
        }
        for (topic, reason) in args.topic.iter().zip(&ack.reasons) {
            if reason.is_error() {
                eprintln!("Subscription to {topic} denied: {reason}");
            }
        }
        if args.exit_after_subscribe {
            let _ = client.disconnect().await;
            return Ok(());
        }
        let mut received = 0u64;
        let mut stdout = std::io::stdout().lock();
        while let Some(event) = events.recv().await {
            let message = match event {
                Event::Message(m) => m,
                Event::Disconnected(e) => {
                    if args.connect.debug {
                        eprintln!("Connection lost: {e}; reconnecting");
                    }
                    continue;
                }
                Event::Reconnected(_) => continue,
            };
            if args.retained_only && !message.retain {
                break;
            }
            if args.no_retained && message.retain {
                continue;
            }
            print_message(&mut stdout, &message, args.verbose, args.no_newline)
                .map_err(|e| CliError::failure(format!("cannot write to stdout: {e}")))?;
            received += 1;
            if args.count.is_some_and(|c| received >= c) {
                break;
            }
        }
        drop(stdout);
        let _ = client.disconnect().await;
        Ok(())
    };
    match deadline {
        Some(at) => match tokio::time::timeout_at(at, work).await {
            Ok(result) => result,
            Err(_) => Err(CliError {
                code: EXIT_TIMEOUT,
                message: "Timed out".into(),
            }),
        },
        None => work.await,
    }
}

fn print_message(
    out: &mut impl Write,
    m: &Publish,
    verbose: bool,
    no_newline: bool,
) -> std::io::Result<()> {
    if verbose {
        write!(out, "{} ", m.topic)?;
    }
    out.write_all(&m.payload)?;
    if !no_newline {
        out.write_all(b"\n")?;
    }
    out.flush()
}
