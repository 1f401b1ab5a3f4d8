//! Authentication and authorisation with Mosquitto's files: [`password`] (mosquitto_passwd hashes) and
//! [`acl`] (topic / pattern rules). One [`Auth`] per distinct `[auth]` table; re-read on SIGHUP.

pub mod acl;
pub mod jwt;
pub mod password;

use crate::config::AuthConfig;
use crate::protocol::ReasonCode;
use acl::{Acl, Who};
use jwt::{Grant, JwtError, Verifier};
use password::PasswordFile;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use thiserror::Error;

/// First delay after a failed login from an address; doubles per failure up to [`MAX_FAILURE_DELAY`].
pub const FAILURE_DELAY: Duration = Duration::from_millis(100);
/// Longest delay before answering a failed login: guessing stays slow, a typo costs little.
pub const MAX_FAILURE_DELAY: Duration = Duration::from_secs(5);
/// Addresses remembered for failure delays; the table is reset past this (bounded memory under a scan).
const MAX_TRACKED: usize = 65_536;

#[derive(Debug, Error)]
pub enum AuthError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Password(#[from] password::PasswordFileError),
    #[error(transparent)]
    Acl(#[from] acl::AclError),
    #[error(transparent)]
    Jwt(#[from] jwt::JwtKeyError),
}

#[derive(Debug, Default)]
struct Loaded {
    passwords: Option<PasswordFile>,
    acl: Option<Acl>,
    jwt: Option<Verifier>,
}

/// Why a CONNECT was refused (the metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    BadCredentials,
    Anonymous,
    TokenInvalid,
    TokenExpired,
}

impl Refused {
    pub fn reason_code(self) -> ReasonCode {
        match self {
            Refused::BadCredentials | Refused::TokenInvalid | Refused::TokenExpired => {
                ReasonCode::BAD_USER_NAME_OR_PASSWORD
            }
            Refused::Anonymous => ReasonCode::NOT_AUTHORIZED,
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            Refused::BadCredentials => "bad_credentials",
            Refused::Anonymous => "anonymous_not_allowed",
            Refused::TokenInvalid => "jwt_invalid",
            Refused::TokenExpired => "jwt_expired",
        }
    }
}

/// The checks of one auth configuration.
#[derive(Debug)]
pub struct Auth {
    pub config: AuthConfig,
    loaded: RwLock<Loaded>,
    failures: Mutex<HashMap<IpAddr, u32>>,
}

fn read(path: &std::path::Path) -> Result<(String, String), AuthError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
        file: file.clone(),
        source,
    })?;
    Ok((text, file))
}

impl Auth {
    /// Reads the files the configuration names; any error stops the start.
    pub fn load(config: AuthConfig) -> Result<Auth, AuthError> {
        let loaded = Self::read_files(&config)?;
        Ok(Auth {
            config,
            loaded: RwLock::new(loaded),
            failures: Mutex::new(HashMap::new()),
        })
    }

    fn read_files(config: &AuthConfig) -> Result<Loaded, AuthError> {
        let mut loaded = Loaded::default();
        if let Some(p) = &config.password_file {
            let (text, file) = read(p)?;
            loaded.passwords = Some(PasswordFile::parse(&text, &file)?);
        }
        if let Some(p) = &config.acl_file {
            let (text, file) = read(p)?;
            loaded.acl = Some(Acl::parse(&text, &file)?);
        }
        if let Some(p) = &config.roles_file {
            let (text, file) = read(p)?;
            let json = p.extension().is_some_and(|e| e == "json");
            let roles = Acl::from_roles(&text, &file, json)?;
            match loaded.acl.as_mut() {
                Some(acl) => acl.merge(roles),
                None => loaded.acl = Some(roles),
            }
        }
        if let Some(j) = &config.jwt {
            loaded.jwt = Some(Verifier::load(j)?);
        }
        Ok(loaded)
    }

    /// Re-reads the files (SIGHUP). On an error the old rules stay in force and the error is returned.
    pub fn reload(&self) -> Result<(), AuthError> {
        let fresh = Self::read_files(&self.config)?;
        *self.loaded.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }

    /// Checks a CONNECT's credentials. With `[auth.jwt]`, a password that is a token is verified as one and
    /// what it grants is returned. Without a password file a user name is unverified, so it is accepted
    /// only where anonymous clients are.
    pub fn authenticate(
        &self,
        username: Option<&str>,
        password: Option<&[u8]>,
    ) -> Result<Option<Grant>, Refused> {
        let loaded = self.loaded.read().unwrap_or_else(|e| e.into_inner());
        if let (Some(verifier), Some(token)) = (&loaded.jwt, password) {
            if jwt::looks_like_token(token) {
                return match verifier.verify(token, username) {
                    Ok(grant) => Ok(Some(grant)),
                    Err(JwtError::Expired) => Err(Refused::TokenExpired),
                    Err(e) => {
                        tracing::debug!(error = %e, "token refused");
                        Err(Refused::TokenInvalid)
                    }
                };
            }
        }
        match (username, &loaded.passwords) {
            (Some(user), Some(file)) => {
                if file.check(user, password.unwrap_or_default()) {
                    Ok(None)
                } else {
                    Err(Refused::BadCredentials)
                }
            }
            _ if self.config.allow_anonymous => Ok(None),
            (Some(_), None) => Err(Refused::BadCredentials),
            (None, _) => Err(Refused::Anonymous),
        }
    }

    /// How long to wait before answering a failed login from `ip`, counting this failure.
    pub fn failure_delay(&self, ip: IpAddr) -> Duration {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if f.len() >= MAX_TRACKED {
            f.clear();
        }
        let n = f.entry(ip).or_insert(0);
        *n = n.saturating_add(1);
        FAILURE_DELAY
            .saturating_mul(1u32 << (*n - 1).min(16))
            .min(MAX_FAILURE_DELAY)
    }

    /// A successful login forgets the address's failures.
    pub fn succeeded(&self, ip: IpAddr) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&ip);
    }

    fn with_acl(&self, f: impl FnOnce(&Acl) -> bool) -> bool {
        match &self.loaded.read().unwrap_or_else(|e| e.into_inner()).acl {
            Some(acl) => f(acl),
            None => true,
        }
    }

    fn can_publish(&self, who: Who<'_>, topic: &str) -> bool {
        self.with_acl(|a| a.can_publish(who, topic))
    }

    fn can_read(&self, who: Who<'_>, topic: &str) -> bool {
        self.with_acl(|a| a.can_read(who, topic))
    }

    fn can_subscribe(&self, who: Who<'_>, filter: &str) -> bool {
        self.with_acl(|a| a.can_subscribe(who, filter))
    }

    /// Whether an ACL file is in force (callers skip per-message checks otherwise).
    fn has_acl(&self) -> bool {
        self.loaded
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .acl
            .is_some()
    }
}

/// What one client may do: its token's rules when the token carried any, else the listener's ACL.
#[derive(Debug, Clone)]
pub struct Permissions {
    auth: Arc<Auth>,
    token_rules: Option<Arc<Acl>>,
}

impl Permissions {
    pub fn new(auth: Arc<Auth>, token_rules: Option<Acl>) -> Permissions {
        Permissions {
            auth,
            token_rules: token_rules.map(Arc::new),
        }
    }

    /// Whether any rule applies (callers skip per-message checks otherwise).
    pub fn enforced(&self) -> bool {
        self.token_rules.is_some() || self.auth.has_acl()
    }

    pub fn can_publish(&self, who: Who<'_>, topic: &str) -> bool {
        match &self.token_rules {
            Some(r) => r.can_publish(who, topic),
            None => self.auth.can_publish(who, topic),
        }
    }

    pub fn can_read(&self, who: Who<'_>, topic: &str) -> bool {
        match &self.token_rules {
            Some(r) => r.can_read(who, topic),
            None => self.auth.can_read(who, topic),
        }
    }

    pub fn can_subscribe(&self, who: Who<'_>, filter: &str) -> bool {
        match &self.token_rules {
            Some(r) => r.can_subscribe(who, filter),
            None => self.auth.can_subscribe(who, filter),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_and_unverified_names_follow_allow_anonymous() {
        let open = Auth::load(AuthConfig {
            allow_anonymous: true,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(open.authenticate(None, None), Ok(None));
        assert_eq!(open.authenticate(Some("anyone"), None), Ok(None));
        let closed = Auth::load(AuthConfig {
            allow_anonymous: false,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(closed.authenticate(None, None), Err(Refused::Anonymous));
        assert_eq!(
            closed.authenticate(Some("x"), Some(b"y")),
            Err(Refused::BadCredentials)
        );
    }

    #[test]
    fn failure_delays_double_per_address_and_reset_on_success() {
        let a = Auth::load(AuthConfig::default()).unwrap();
        let ip: IpAddr = [10, 0, 0, 1].into();
        assert_eq!(a.failure_delay(ip), FAILURE_DELAY);
        assert_eq!(a.failure_delay(ip), FAILURE_DELAY * 2);
        assert_eq!(
            a.failure_delay([10, 0, 0, 2].into()),
            FAILURE_DELAY,
            "per address"
        );
        for _ in 0..20 {
            assert!(a.failure_delay(ip) <= MAX_FAILURE_DELAY);
        }
        a.succeeded(ip);
        assert_eq!(a.failure_delay(ip), FAILURE_DELAY);
    }
}
