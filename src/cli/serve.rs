//! `cicada serve`: run a broker from the embedded defaults or a file, with flag overrides; SIGINT/SIGTERM
//! shut it down gracefully (MQTT 5 clients get 0x8B Server shutting down); SIGHUP re-reads password and ACL
//! files without dropping connections.

use super::CliError;
use crate::broker::{Broker, StartError};
use crate::config::mosquitto::{self, Ignored};
use crate::config::{Config, Overrides};
use clap::Args;
use std::path::PathBuf;

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Configuration file (TOML; see config/cicada.toml). Without it the embedded defaults apply.
    #[arg(short = 'c', long, conflicts_with = "mosquitto_conf")]
    pub config: Option<PathBuf>,
    /// A Mosquitto configuration file, read as Mosquitto 2.0 reads it (`cicada config import FILE` shows the
    /// equivalent cicada.toml). Options with no meaning here are reported with their line and ignored.
    #[arg(long = "mosquitto-conf", value_name = "FILE")]
    pub mosquitto_conf: Option<PathBuf>,
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
    /// The validated configuration: file (or defaults), then `CICADA_...` environment variables, then flags;
    /// with `--mosquitto-conf`, also the options it ignored.
    pub fn load(&self) -> Result<(Config, Vec<Ignored>), CliError> {
        // vars_os: a variable that is not UTF-8 (none of ours can be) must not stop the broker.
        let env: Vec<(String, String)> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        let mut ignored = Vec::new();
        let mut config = match (&self.config, &self.mosquitto_conf) {
            (_, Some(path)) => mosquitto::load(path, None).and_then(|imported| {
                ignored = imported.ignored.clone();
                let config = imported.to_config()?;
                if env
                    .iter()
                    .any(|(k, _)| k.starts_with(crate::config::ENV_PREFIX))
                {
                    // The variables go over the translated document, as over a cicada.toml.
                    Config::parse_with_env(&imported.to_toml(), &path.display().to_string(), &env)
                } else {
                    Ok(config)
                }
            }),
            (Some(path), None) => Config::load_with_env(path, &env),
            (None, None) => {
                Config::parse_with_env(crate::config::DEFAULT_TOML, "<embedded cicada.toml>", &env)
            }
        }
        .map_err(|e| CliError::usage(e.to_string()))?;
        config.apply(&Overrides {
            port: self.port,
            http_port: self.http_port,
            data_dir: self.data_dir.clone(),
        });
        Ok((config, ignored))
    }
}

/// Runs until SIGINT or SIGTERM; SIGHUP re-reads the password and ACL files.
pub async fn run(config: Config) -> Result<(), CliError> {
    use tokio::signal::unix::{signal, SignalKind};
    let broker = Broker::start(config).await.map_err(|e| match e {
        // A bad password or ACL file is a configuration error, like a bad key.
        StartError::Auth(_)
        | StartError::Tls(_)
        | StartError::Cluster(_)
        | StartError::AdminToken { .. } => CliError::usage(e.to_string()),
        _ => CliError::failure(e.to_string()),
    })?;
    for addr in &broker.mqtt_addrs {
        tracing::info!(%addr, "cicada ready");
    }
    let watch = |kind: SignalKind| {
        signal(kind).map_err(|e| CliError::failure(format!("cannot watch signals: {e}")))
    };
    let mut term = watch(SignalKind::terminate())?;
    let mut hup = watch(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT"); break; }
            _ = term.recv() => { tracing::info!("SIGTERM"); break; }
            _ = hup.recv() => { tracing::info!("SIGHUP"); broker.reload(); }
            _ = broker.ctx.drain_requested.notified() => { tracing::info!("drain requested"); break; }
        }
    }
    broker.shutdown().await;
    Ok(())
}
