//! `cicada serve`: run a broker from the embedded defaults or a file, with flag overrides; SIGINT/SIGTERM
//! shut it down gracefully (MQTT 5 clients get 0x8B Server shutting down).

use super::CliError;
use crate::broker::Broker;
use crate::config::{Config, Overrides};
use clap::Args;
use std::path::PathBuf;

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Configuration file (TOML; see config/cicada.toml). Without it the embedded defaults apply.
    #[arg(short = 'c', long)]
    pub config: Option<PathBuf>,
    /// Port of the plain TCP MQTT listener (overrides the file).
    #[arg(long)]
    pub port: Option<u16>,
    /// Port of the HTTP endpoint for /metrics, /health, /ready (overrides the file).
    #[arg(long = "http-port")]
    pub http_port: Option<u16>,
    /// Data directory (overrides the file).
    #[arg(long = "data-dir")]
    pub data_dir: Option<PathBuf>,
}

impl ServeArgs {
    /// The validated configuration: file (or defaults), then flags.
    pub fn load(&self) -> Result<Config, CliError> {
        let mut config = match &self.config {
            Some(path) => Config::load(path).map_err(|e| CliError::usage(e.to_string()))?,
            None => Config::default(),
        };
        config.apply(&Overrides {
            port: self.port,
            http_port: self.http_port,
            data_dir: self.data_dir.clone(),
        });
        Ok(config)
    }
}

/// Runs until a signal.
pub async fn run(config: Config) -> Result<(), CliError> {
    let broker = Broker::start(config)
        .await
        .map_err(|e| CliError::failure(e.to_string()))?;
    for addr in &broker.mqtt_addrs {
        tracing::info!(%addr, "cicada ready");
    }
    wait_for_signal().await;
    broker.shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only SIGINT stops the broker");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT"),
        _ = term.recv() => tracing::info!("SIGTERM"),
    }
}
