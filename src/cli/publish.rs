//! `cicada pub`: publish one message, a file, stdin, or stdin line by line (like mosquitto_pub).

use super::connect::{parse_qos, ConnectArgs};
use super::CliError;
use crate::client::Client;
use crate::protocol::{Disconnect, Publish, QoS};
use bytes::Bytes;
use clap::Args;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

/// Arguments of `cicada pub`.
#[derive(Debug, Args)]
#[command(disable_help_flag = true)]
pub struct PubArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Topic to publish to.
    #[arg(short = 't', long)]
    pub topic: String,
    /// Message payload.
    #[arg(short = 'm', long, group = "source")]
    pub message: Option<String>,
    /// Send the contents of a file as the message.
    #[arg(short = 'f', long, group = "source")]
    pub file: Option<std::path::PathBuf>,
    /// Read stdin and send each line as a message.
    #[arg(short = 'l', long = "stdin-line", group = "source")]
    pub stdin_line: bool,
    /// Read stdin and send it whole as one message.
    #[arg(short = 's', long = "stdin-file", group = "source")]
    pub stdin_file: bool,
    /// Send an empty message (clears a retained message).
    #[arg(short = 'n', long = "null-message", group = "source")]
    pub null_message: bool,
    /// QoS of the message.
    #[arg(short = 'q', long, default_value = "0", value_parser = parse_qos)]
    pub qos: QoS,
    /// Retain the message.
    #[arg(short = 'r', long)]
    pub retain: bool,
    /// Publish the message this many times.
    #[arg(long, default_value_t = 1)]
    pub repeat: u32,
    /// Seconds between repeats.
    #[arg(long = "repeat-delay", default_value_t = 0.0)]
    pub repeat_delay: f64,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    pub help: Option<bool>,
}

/// Runs `cicada pub`.
pub async fn run(args: PubArgs) -> Result<(), CliError> {
    let props = args.connect.properties().map_err(CliError::usage)?;
    let options = args
        .connect
        .client_options("cicada-pub-", &props)
        .map_err(CliError::usage)?;
    let source_given = args.message.is_some()
        || args.file.is_some()
        || args.stdin_line
        || args.stdin_file
        || args.null_message;
    if !source_given {
        return Err(CliError::usage("give a message: -m, -f, -l, -s or -n"));
    }
    let template = Publish {
        topic: args.topic.clone(),
        qos: args.qos,
        retain: args.retain,
        properties: props.publish.clone(),
        ..Publish::default()
    };
    // Read a file before connecting, so a missing file fails without touching the broker.
    let fixed = if let Some(path) = &args.file {
        let data = tokio::fs::read(path)
            .await
            .map_err(|e| CliError::failure(format!("cannot read {}: {e}", path.display())))?;
        Some(Bytes::from(data))
    } else if args.stdin_file {
        let mut data = Vec::new();
        tokio::io::stdin()
            .read_to_end(&mut data)
            .await
            .map_err(|e| CliError::failure(format!("cannot read stdin: {e}")))?;
        Some(Bytes::from(data))
    } else if args.null_message {
        Some(Bytes::new())
    } else {
        args.message.clone().map(Bytes::from)
    };
    let (client, _events, _) = Client::connect(options)
        .await
        .map_err(|e| CliError::failure(format!("Connection error: {e}")))?;
    let result = publish_all(&client, &args, &template, fixed).await;
    let disconnect = Disconnect {
        properties: props.disconnect,
        ..Disconnect::default()
    };
    let _ = client.disconnect_with(disconnect).await;
    result
}

async fn publish_all(
    client: &Client,
    args: &PubArgs,
    template: &Publish,
    fixed: Option<Bytes>,
) -> Result<(), CliError> {
    let send = |payload: Bytes| {
        let mut p = template.clone();
        p.payload = payload;
        client.publish_message(p)
    };
    match fixed {
        Some(payload) => {
            for i in 0..args.repeat.max(1) {
                if i > 0 && args.repeat_delay > 0.0 {
                    tokio::time::sleep(std::time::Duration::from_secs_f64(args.repeat_delay)).await;
                }
                send(payload.clone())
                    .await
                    .map_err(|e| CliError::failure(format!("Publish failed: {e}")))?;
            }
        }
        None => {
            let mut lines = BufReader::new(tokio::io::stdin()).lines();
            while let Some(line) = lines
                .next_line()
                .await
                .map_err(|e| CliError::failure(format!("cannot read stdin: {e}")))?
            {
                send(Bytes::from(line))
                    .await
                    .map_err(|e| CliError::failure(format!("Publish failed: {e}")))?;
            }
        }
    }
    Ok(())
}
