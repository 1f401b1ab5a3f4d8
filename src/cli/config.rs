//! `cicada config import FILE`: a Mosquitto configuration translated into the equivalent `cicada.toml` on
//! stdout; what it ignores is reported on stderr (and kept as comments in the output).

use super::CliError;
use crate::config::mosquitto;
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Clone, Subcommand)]
pub enum ConfigCommand {
    /// Print the cicada.toml equivalent to a mosquitto.conf (relative paths made absolute against the
    /// working directory, where Mosquitto reads them).
    Import(ImportArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ImportArgs {
    /// The mosquitto.conf to translate.
    pub file: PathBuf,
}

pub fn run(c: ConfigCommand) -> Result<(), CliError> {
    match c {
        ConfigCommand::Import(a) => {
            let cwd = std::env::current_dir()
                .map_err(|e| CliError::failure(format!("working directory: {e}")))?;
            let imported =
                mosquitto::load(&a.file, Some(&cwd)).map_err(|e| CliError::usage(e.to_string()))?;
            // The same checks as `serve --mosquitto-conf`: what is printed is a configuration that loads.
            imported
                .to_config()
                .map_err(|e| CliError::usage(e.to_string()))?;
            for i in &imported.ignored {
                eprintln!("warning: {i}");
            }
            print!("{}", imported.to_toml());
            Ok(())
        }
    }
}
