//! Password files in Mosquitto's format, so an existing file works unchanged: one `user:hash` per line, where
//! the hash is `$7$ITERATIONS$SALT$HASH` (PBKDF2-HMAC-SHA512, what mosquitto_passwd writes since 2.0) or
//! `$6$SALT$HASH` (SHA-512 of password then salt, Mosquitto 1.6 and earlier); salt and hash are base64.
//! Plain-text passwords are never stored or logged.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use sha2::{Digest, Sha512};
use thiserror::Error;

/// PBKDF2 rounds mosquitto_passwd uses by default.
pub const DEFAULT_ITERATIONS: u32 = 101;
/// Salt length mosquitto_passwd uses.
const SALT_LEN: usize = 12;

/// One stored hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hash {
    Pbkdf2Sha512 {
        iterations: u32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    Sha512 {
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
}

/// A line that is not `user:hash` in a known format.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("{file}:{line}: {message}")]
pub struct PasswordFileError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

impl Hash {
    /// Parses `$7$...` or `$6$...`.
    pub fn parse(text: &str) -> Result<Hash, String> {
        let parts: Vec<&str> = text.split('$').collect();
        let b64 = |s: &str, what: &str| {
            STANDARD
                .decode(s)
                .map_err(|_| format!("{what} is not base64"))
        };
        match parts.as_slice() {
            ["", "7", iterations, salt, hash] => Ok(Hash::Pbkdf2Sha512 {
                iterations: iterations
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or("the iteration count is not a positive number")?,
                salt: b64(salt, "the salt")?,
                hash: b64(hash, "the hash")?,
            }),
            ["", "6", salt, hash] => Ok(Hash::Sha512 {
                salt: b64(salt, "the salt")?,
                hash: b64(hash, "the hash")?,
            }),
            _ => Err("not a $7$ (sha512-pbkdf2) or $6$ (sha512) hash; plain-text passwords are not accepted".into()),
        }
    }

    /// A new `$7$` hash with a random salt.
    pub fn new_pbkdf2(password: &[u8]) -> std::io::Result<Hash> {
        let salt = random_salt()?;
        let mut hash = vec![0u8; 64];
        pbkdf2::pbkdf2_hmac::<Sha512>(password, &salt, DEFAULT_ITERATIONS, &mut hash);
        Ok(Hash::Pbkdf2Sha512 {
            iterations: DEFAULT_ITERATIONS,
            salt,
            hash,
        })
    }

    /// A new `$6$` hash with a random salt (only for files older Mosquittos must read).
    pub fn new_sha512(password: &[u8]) -> std::io::Result<Hash> {
        let salt = random_salt()?;
        let hash = sha512_salted(password, &salt);
        Ok(Hash::Sha512 { salt, hash })
    }

    /// Whether `password` matches, in time independent of where the first difference is.
    pub fn verify(&self, password: &[u8]) -> bool {
        match self {
            Hash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => {
                let mut out = vec![0u8; hash.len().max(1)];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut out);
                constant_time_eq(&out, hash)
            }
            Hash::Sha512 { salt, hash } => constant_time_eq(&sha512_salted(password, salt), hash),
        }
    }
}

impl std::fmt::Display for Hash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => {
                write!(
                    f,
                    "$7${iterations}${}${}",
                    STANDARD.encode(salt),
                    STANDARD.encode(hash)
                )
            }
            Hash::Sha512 { salt, hash } => {
                write!(f, "$6${}${}", STANDARD.encode(salt), STANDARD.encode(hash))
            }
        }
    }
}

fn sha512_salted(password: &[u8], salt: &[u8]) -> Vec<u8> {
    let mut h = Sha512::new();
    h.update(password);
    h.update(salt);
    h.finalize().to_vec()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn random_salt() -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut salt = vec![0u8; SALT_LEN];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut salt)?;
    Ok(salt)
}

/// A parsed password file, in file order (kept when rewritten by `cicada passwd`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PasswordFile {
    pub users: Vec<(String, Hash)>,
}

impl PasswordFile {
    /// Parses the file's text; blank lines and `#` comments are skipped.
    pub fn parse(text: &str, file: &str) -> Result<PasswordFile, PasswordFileError> {
        let mut file_out = PasswordFile::default();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim_end_matches('\r');
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let err = |message: String| PasswordFileError {
                file: file.to_string(),
                line: i + 1,
                message,
            };
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| err("expected user:hash".into()))?;
            if user.is_empty() {
                return Err(err("empty user name".into()));
            }
            let hash = Hash::parse(hash).map_err(|m| err(format!("user {user:?}: {m}")))?;
            file_out.set(user, hash);
        }
        Ok(file_out)
    }

    /// Whether the user exists and the password matches.
    pub fn check(&self, user: &str, password: &[u8]) -> bool {
        self.get(user).is_some_and(|h| h.verify(password))
    }

    pub fn get(&self, user: &str) -> Option<&Hash> {
        self.users.iter().find(|(u, _)| u == user).map(|(_, h)| h)
    }

    /// Adds a user at the end, or replaces its hash in place.
    pub fn set(&mut self, user: &str, hash: Hash) {
        match self.users.iter_mut().find(|(u, _)| u == user) {
            Some(slot) => slot.1 = hash,
            None => self.users.push((user.to_string(), hash)),
        }
    }

    /// Removes a user; false if it was not there.
    pub fn remove(&mut self, user: &str) -> bool {
        let before = self.users.len();
        self.users.retain(|(u, _)| u != user);
        self.users.len() != before
    }

    /// The file's text.
    pub fn render(&self) -> String {
        self.users
            .iter()
            .map(|(u, h)| format!("{u}:{h}\n"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written by Debian's mosquitto_passwd 2.0.11 (`-b`, and `-H sha512 -b`).
    const MOSQUITTO: &str = "alice:$7$101$kB7n9L/id7U7F0n3$Fkt3naljnKDjOPjg47Gqh3W30v9BQCyVfhUf35pMkSGVDNQxMeVvzmrtg8a9ANTWFNpEykyhwqrGbcbeI6T/wA==\n\
carol:$6$HbSwe9i8IUPsALZc$6Vt1OboaMR5UaSi3M8NUMgkNDFGGikn3D7sKqTtP3Ahf4MtuOrLyqCdRxUKgQ3N8Jqp3ZY0qql7fkWy+O6mjVg==\n";

    #[test]
    fn mosquitto_passwd_hashes_verify() {
        let f = PasswordFile::parse(MOSQUITTO, "pw").unwrap();
        assert!(f.check("alice", b"secret"));
        assert!(!f.check("alice", b"Secret"));
        assert!(f.check("carol", b"pass6"));
        assert!(!f.check("carol", b""));
        assert!(!f.check("mallory", b"secret"));
    }

    #[test]
    fn new_hashes_round_trip_through_the_text_form() {
        for h in [
            Hash::new_pbkdf2(b"pw").unwrap(),
            Hash::new_sha512(b"pw").unwrap(),
        ] {
            let again = Hash::parse(&h.to_string()).unwrap();
            assert_eq!(again, h);
            assert!(again.verify(b"pw"));
            assert!(!again.verify(b"px"));
        }
    }

    #[test]
    fn bad_lines_name_file_and_line_and_never_accept_plain_text() {
        let e = PasswordFile::parse("# comment\n\nbob:hunter2\n", "pw").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.to_string().starts_with("pw:3: user \"bob\""), "{e}");
        assert!(
            !e.to_string().contains("hunter2"),
            "the secret is not echoed"
        );
        assert_eq!(PasswordFile::parse("nocolon\n", "pw").unwrap_err().line, 1);
        assert!(PasswordFile::parse("x:$7$0$AAAA$AAAA\n", "pw").is_err());
    }
}
