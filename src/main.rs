//! The `cicada` command: `pub`, `sub` and `bench` today; `serve`, `passwd` and `ctl` arrive with the broker.

use cicada::cli::{self, bench::BenchCommand, publish::PubArgs, subscribe::SubArgs};
use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "cicada",
    version,
    about = "A clustered MQTT 3.1 / 3.1.1 / 5.0 broker and its tools"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Publish messages (options as mosquitto_pub).
    Pub(PubArgs),
    /// Subscribe and print messages (options as mosquitto_sub).
    Sub(SubArgs),
    /// Load generator.
    #[command(subcommand)]
    Bench(BenchCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let debug = match &cli.command {
        Command::Pub(a) => a.connect.debug,
        Command::Sub(a) => a.connect.debug,
        Command::Bench(_) => false,
    };
    init_tracing(debug);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: cannot start the runtime: {e}");
            return ExitCode::from(cli::EXIT_FAILURE as u8);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Pub(a) => cli::publish::run(a).await,
            Command::Sub(a) => cli::subscribe::run(a).await,
            Command::Bench(b) => cli::bench::run(b).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e}");
            ExitCode::from(e.code.clamp(1, 255) as u8)
        }
    }
}

fn init_tracing(debug: bool) {
    let default = if debug { "debug" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
