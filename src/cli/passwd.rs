//! `cicada passwd`: manage a password file in Mosquitto's format, as mosquitto_passwd does (`-c` create,
//! `-b` batch, `-D` delete, `-H sha512-pbkdf2|sha512`). The file is replaced atomically and created mode 0600.

use super::CliError;
use crate::auth::password::{Hash, PasswordFile};
use clap::Args;
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Args)]
pub struct PasswdArgs {
    /// Create a new file (overwrites an existing one).
    #[arg(short = 'c')]
    pub create: bool,
    /// Delete the user instead of setting its password.
    #[arg(short = 'D', conflicts_with = "create")]
    pub delete: bool,
    /// Batch mode: the password is the last argument.
    #[arg(short = 'b')]
    pub batch: bool,
    /// Hash: sha512-pbkdf2 (default, $7$) or sha512 ($6$, for Mosquitto 1.6 and older).
    #[arg(short = 'H', default_value = "sha512-pbkdf2", value_parser = ["sha512-pbkdf2", "sha512"])]
    pub hash: String,
    /// The password file.
    pub file: PathBuf,
    /// The user name.
    pub user: String,
    /// The password (with -b).
    pub password: Option<String>,
}

pub fn run(a: PasswdArgs) -> Result<(), CliError> {
    if a.user.is_empty() || a.user.contains(':') {
        return Err(CliError::usage(
            "a user name must not be empty or contain ':'",
        ));
    }
    if a.batch != a.password.is_some() {
        return Err(CliError::usage(
            "-b takes the password as the last argument (and only -b does)",
        ));
    }
    if a.delete && a.password.is_some() {
        return Err(CliError::usage("-D takes no password"));
    }
    let mut file = if a.create {
        PasswordFile::default()
    } else {
        read(&a.file)?
    };
    if a.delete {
        if !file.remove(&a.user) {
            return Err(CliError::failure(format!(
                "user {} not found in {}",
                a.user,
                a.file.display()
            )));
        }
    } else {
        let password = match a.password {
            Some(p) => p,
            None => prompt()?,
        };
        let hash = if a.hash == "sha512" {
            Hash::new_sha512(password.as_bytes())
        } else {
            Hash::new_pbkdf2(password.as_bytes())
        }
        .map_err(|e| CliError::failure(format!("cannot get random bytes for the salt: {e}")))?;
        file.set(&a.user, hash);
    }
    write(&a.file, &file.render())
}

fn read(path: &Path) -> Result<PasswordFile, CliError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        CliError::failure(format!(
            "{}: cannot read: {e} (use -c to create it)",
            path.display()
        ))
    })?;
    PasswordFile::parse(&text, &path.display().to_string())
        .map_err(|e| CliError::failure(e.to_string()))
}

fn write(path: &Path, text: &str) -> Result<(), CliError> {
    use std::os::unix::fs::OpenOptionsExt;
    let fail =
        |e: std::io::Error| CliError::failure(format!("{}: cannot write: {e}", path.display()));
    let tmp = path.with_extension("cicada-tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(fail)?;
    f.write_all(text.as_bytes()).map_err(fail)?;
    f.sync_all().map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}

/// Asks twice, without echo on a terminal; from a pipe it reads two lines.
fn prompt() -> Result<String, CliError> {
    let stdin = std::io::stdin();
    let tty = stdin.is_terminal();
    let _echo = tty.then(EchoOff::new);
    let mut lines = stdin.lock().lines();
    let mut ask = |label: &str| -> Result<String, CliError> {
        if tty {
            eprint!("{label}");
        }
        let line = lines
            .next()
            .ok_or_else(|| CliError::failure("no password given"))?
            .map_err(|e| CliError::failure(format!("cannot read the password: {e}")))?;
        if tty {
            eprintln!();
        }
        Ok(line)
    };
    let first = ask("Password: ")?;
    let second = ask("Reenter password: ")?;
    if first != second {
        return Err(CliError::failure("passwords do not match"));
    }
    Ok(first)
}

/// Turns terminal echo off while it lives.
struct EchoOff(Option<libc::termios>);

impl EchoOff {
    fn new() -> EchoOff {
        // SAFETY: tcgetattr/tcsetattr on stdin with a zeroed, then filled, termios.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return EchoOff(None);
            }
            let saved = t;
            t.c_lflag &= !libc::ECHO;
            libc::tcsetattr(0, libc::TCSANOW, &t);
            EchoOff(Some(saved))
        }
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        if let Some(t) = self.0 {
            // SAFETY: restores the attributes read in `new`.
            unsafe {
                libc::tcsetattr(0, libc::TCSANOW, &t);
            }
        }
    }
}
