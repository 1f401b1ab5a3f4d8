//! The `cicada` command: `serve` (the broker), `pub`, `sub`, `bench`, `passwd`, `ctl` and `config`.

use cicada::cli::{
    self, bench::BenchCommand, config::ConfigCommand, passwd::PasswdArgs, publish::PubArgs,
    serve::ServeArgs, subscribe::SubArgs,
};
use cicada::config::{LogConfig, LogFormat};
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
    /// Run the broker (embedded defaults, --config FILE, or --mosquitto-conf FILE).
    Serve(ServeArgs),
    /// Publish messages (options as mosquitto_pub).
    Pub(PubArgs),
    /// Subscribe and print messages (options as mosquitto_sub).
    Sub(SubArgs),
    /// Manage a password file in Mosquitto's format (as mosquitto_passwd).
    Passwd(PasswdArgs),
    /// Load generator.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Operate a running cluster through a node's admin API (status, sessions, leadership).
    Ctl(cli::ctl::CtlArgs),
    /// Configuration tools: `import` prints the cicada.toml equivalent to a mosquitto.conf.
    #[command(subcommand)]
    Config(ConfigCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match &cli.command {
        Command::Pub(a) if a.connect.debug => "debug".to_string(),
        Command::Sub(a) if a.connect.debug => "debug".to_string(),
        Command::Serve(_)
        | Command::Pub(_)
        | Command::Sub(_)
        | Command::Bench(_)
        | Command::Passwd(_)
        | Command::Ctl(_)
        | Command::Config(_) => "warn".to_string(),
    };
    // The broker's configuration is validated before anything starts; its errors name file, line and key.
    let serve_config = match &cli.command {
        Command::Serve(a) => match a.load() {
            Ok((c, ignored)) => {
                // Reported before logging starts, so a log file or level does not hide them.
                for i in &ignored {
                    eprintln!("warning: {i}");
                }
                Some(c)
            }
            Err(e) => {
                eprintln!("Error: {e}");
                return ExitCode::from(e.code as u8);
            }
        },
        _ => None,
    };
    let level = serve_config
        .as_ref()
        .map(|c| c.log.level.clone())
        .unwrap_or(default_level);
    if let Err(e) = init_tracing(level, serve_config.as_ref().map(|c| &c.log)) {
        eprintln!("Error: {e}");
        return ExitCode::from(cli::EXIT_USAGE as u8);
    }
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
            Command::Serve(_) => match serve_config {
                Some(config) => cli::serve::run(config).await,
                None => Err(cli::CliError::usage("no configuration")),
            },
            Command::Pub(a) => cli::publish::run(a).await,
            Command::Sub(a) => cli::subscribe::run(a).await,
            Command::Bench(b) => cli::bench::run(b).await,
            Command::Passwd(a) => cli::passwd::run(a),
            Command::Ctl(a) => cli::ctl::run(a).await,
            Command::Config(c) => cli::config::run(c),
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

/// Logs to the destinations of `[log]` (the broker) or stderr (the tools).
fn init_tracing(default: String, log: Option<&LogConfig>) -> anyhow::Result<()> {
    use tracing_subscriber::fmt::writer::{BoxMakeWriter, MakeWriterExt};
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let (stderr, stdout, file) = log.map_or((true, false, None), |l| {
        (l.stderr, l.stdout, l.file.as_ref())
    });
    let mut writer = BoxMakeWriter::new(std::io::sink);
    if stderr {
        writer = BoxMakeWriter::new(writer.and(std::io::stderr));
    }
    if stdout {
        writer = BoxMakeWriter::new(writer.and(std::io::stdout));
    }
    if let Some(path) = file {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| anyhow::anyhow!("log file {}: {e}", path.display()))?;
        writer = BoxMakeWriter::new(writer.and(std::sync::Mutex::new(f)));
    }
    // Colour only for a person at a terminal: a file, a pipe or a log shipper gets plain text.
    let ansi =
        stderr && !stdout && file.is_none() && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match log.map_or(LogFormat::Text, |l| l.format) {
        LogFormat::Text => fmt.with_ansi(ansi).init(),
        LogFormat::Json => fmt.json().with_current_span(true).init(),
    }
    Ok(())
}
