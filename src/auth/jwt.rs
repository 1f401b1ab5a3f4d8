//! JWT as the CONNECT password: HS256 with a shared secret, RS256 / ES256 with a public key.
//!
//! A verified token may carry the client's rules as claims, `publish` and `subscribe` (lists of topic
//! filters, `%u` / `%c` substituted); they then replace the ACL file for that client. `exp` is required: the
//! broker closes the connection when it passes.

use super::acl::Acl;
use crate::config::{JwtAlgorithm, JwtConfig};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use thiserror::Error;

/// Why a key could not be loaded (names the file, or the `[auth.jwt]` key that is missing).
#[derive(Debug, Error)]
pub enum JwtKeyError {
    #[error("{}: cannot read: {source}", file.display())]
    Read {
        file: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{}: an HS256 secret needs at least 32 bytes", file.display())]
    ShortSecret { file: std::path::PathBuf },
    #[error("[auth.jwt]: HS256 needs secret or secret_file")]
    NoSecret,
    #[error("[auth.jwt]: {0} needs public_key")]
    NoPublicKey(JwtAlgorithm),
    #[error("{}: not a {algorithm} PEM public key: {source}", file.display())]
    BadKey {
        file: std::path::PathBuf,
        algorithm: JwtAlgorithm,
        source: jsonwebtoken::errors::Error,
    },
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum JwtError {
    #[error("token expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("token user {claim:?} does not match user name {username:?}")]
    WrongUser { claim: String, username: String },
}

/// What a verified token grants.
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    /// When the token stops being valid.
    pub expires: SystemTime,
    /// The user named by the token (the username claim), if any.
    pub user: Option<String>,
    /// Rules from the `publish` / `subscribe` claims; `None` when the token has neither.
    pub rules: Option<Acl>,
}

/// A loaded key and the checks a token must pass.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
    username_claim: String,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

/// Whether a password looks like a compact JWS (three base64url parts, a JSON header): only those are
/// verified as tokens, so password-file users keep working beside JWT clients.
pub fn looks_like_token(password: &[u8]) -> bool {
    password.starts_with(b"eyJ")
        && password.iter().filter(|&&b| b == b'.').count() == 2
        && password
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'='))
}

impl Verifier {
    /// Reads the key the configuration names.
    pub fn load(config: &JwtConfig) -> Result<Verifier, JwtKeyError> {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|source| JwtKeyError::Read {
                file: p.to_path_buf(),
                source,
            })
        };
        let bad_key = |p: &std::path::Path, source| JwtKeyError::BadKey {
            file: p.to_path_buf(),
            algorithm: config.algorithm,
            source,
        };
        let (algorithm, key) = match config.algorithm {
            JwtAlgorithm::HS256 => {
                let secret = match (&config.secret, &config.secret_file) {
                    (Some(s), _) => s.as_bytes().to_vec(),
                    (None, Some(p)) => {
                        let mut s = read(p)?;
                        while s.last().is_some_and(|b| b.is_ascii_whitespace()) {
                            s.pop();
                        }
                        if s.len() < 32 {
                            return Err(JwtKeyError::ShortSecret {
                                file: p.to_path_buf(),
                            });
                        }
                        s
                    }
                    (None, None) => return Err(JwtKeyError::NoSecret),
                };
                (Algorithm::HS256, DecodingKey::from_secret(&secret))
            }
            alg @ (JwtAlgorithm::RS256 | JwtAlgorithm::ES256) => {
                let Some(p) = &config.public_key else {
                    return Err(JwtKeyError::NoPublicKey(alg));
                };
                let pem = read(p)?;
                if alg == JwtAlgorithm::RS256 {
                    let k = DecodingKey::from_rsa_pem(&pem).map_err(|e| bad_key(p, e))?;
                    (Algorithm::RS256, k)
                } else {
                    let k = DecodingKey::from_ec_pem(&pem).map_err(|e| bad_key(p, e))?;
                    (Algorithm::ES256, k)
                }
            }
        };
        let mut validation = Validation::new(algorithm);
        // Expiry is exact: the connection is closed at `exp`, so admitting a token past it would be inconsistent.
        validation.leeway = 0;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        match &config.audience {
            Some(a) => validation.set_audience(&[a]),
            None => validation.validate_aud = false,
        }
        if let Some(i) = &config.issuer {
            validation.set_issuer(&[i]);
        }
        Ok(Verifier {
            key,
            validation,
            username_claim: config.username_claim.clone(),
        })
    }

    /// Verifies `token` for a client connecting with `username` and `client_id`.
    pub fn verify(&self, token: &[u8], username: Option<&str>) -> Result<Grant, JwtError> {
        let token =
            std::str::from_utf8(token).map_err(|_| JwtError::Invalid("not UTF-8".into()))?;
        let data = jsonwebtoken::decode::<serde_json::Map<String, Value>>(
            token,
            &self.key,
            &self.validation,
        )
        .map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => JwtError::Expired,
            _ => JwtError::Invalid(e.to_string()),
        })?;
        let claims = data.claims;
        let exp = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or_else(|| JwtError::Invalid("exp is not a number of seconds".into()))?;
        let expires = UNIX_EPOCH + Duration::from_secs(exp);
        // jsonwebtoken compares whole seconds; a token expiring within this second is already over.
        if expires <= SystemTime::now() {
            return Err(JwtError::Expired);
        }
        let user = match claims.get(&self.username_claim) {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                return Err(JwtError::Invalid(format!(
                    "claim {:?} is not a string",
                    self.username_claim
                )))
            }
        };
        if let (Some(claim), Some(name)) = (&user, username) {
            if claim != name {
                return Err(JwtError::WrongUser {
                    claim: claim.clone(),
                    username: name.to_string(),
                });
            }
        }
        let filters = |name: &str| -> Result<Option<Vec<String>>, JwtError> {
            match claims.get(name) {
                None => Ok(None),
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|v| {
                        v.as_str().map(str::to_string).ok_or_else(|| {
                            JwtError::Invalid(format!("claim {name:?} must list strings"))
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(Some),
                Some(_) => Err(JwtError::Invalid(format!(
                    "claim {name:?} must be a list of topic filters"
                ))),
            }
        };
        let (publish, subscribe) = (filters("publish")?, filters("subscribe")?);
        let rules = if publish.is_none() && subscribe.is_none() {
            None
        } else {
            Some(
                Acl::from_filters(&publish.unwrap_or_default(), &subscribe.unwrap_or_default())
                    .map_err(JwtError::Invalid)?,
            )
        };
        Ok(Grant {
            expires,
            user,
            rules,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::acl::Who;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn config() -> JwtConfig {
        JwtConfig {
            algorithm: JwtAlgorithm::HS256,
            secret: Some(SECRET.into()),
            secret_file: None,
            public_key: None,
            issuer: None,
            audience: None,
            username_claim: "sub".into(),
        }
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn token(claims: Value, secret: &str) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn a_valid_token_grants_its_expiry_user_and_rules() {
        let v = Verifier::load(&config()).unwrap();
        let t = token(
            json!({"sub": "dev1", "exp": now() + 60, "publish": ["device/%u/status"], "subscribe": ["device/%u/command"]}),
            SECRET,
        );
        assert!(looks_like_token(t.as_bytes()));
        let g = v.verify(t.as_bytes(), Some("dev1")).unwrap();
        assert_eq!(g.user.as_deref(), Some("dev1"));
        assert!(g.expires > SystemTime::now());
        let rules = g.rules.unwrap();
        let who = Who {
            username: Some("dev1"),
            client_id: "c",
        };
        assert!(rules.can_publish(who, "device/dev1/status"));
        assert!(!rules.can_publish(who, "device/dev2/status"));
        assert!(rules.can_subscribe(who, "device/dev1/command"));
        assert!(!rules.can_subscribe(who, "device/+/command"));
    }

    #[test]
    fn bad_tokens_are_refused_with_their_reason() {
        let v = Verifier::load(&config()).unwrap();
        let t = token(
            json!({"sub": "a", "exp": now() + 60}),
            "another secret of 32 bytes or more!!",
        );
        assert!(matches!(
            v.verify(t.as_bytes(), None),
            Err(JwtError::Invalid(_))
        ));
        let t = token(json!({"sub": "a", "exp": now() - 1}), SECRET);
        assert_eq!(v.verify(t.as_bytes(), None), Err(JwtError::Expired));
        let t = token(json!({"sub": "a"}), SECRET);
        assert!(
            matches!(v.verify(t.as_bytes(), None), Err(JwtError::Invalid(_))),
            "exp is required"
        );
        let t = token(json!({"sub": "a", "exp": now() + 60}), SECRET);
        assert!(matches!(
            v.verify(t.as_bytes(), Some("b")),
            Err(JwtError::WrongUser { .. })
        ));
        let t = token(
            json!({"sub": "a", "exp": now() + 60, "publish": "x/#"}),
            SECRET,
        );
        assert!(matches!(
            v.verify(t.as_bytes(), None),
            Err(JwtError::Invalid(_))
        ));
        let t = token(
            json!({"sub": "a", "exp": now() + 60, "subscribe": ["a/#/b"]}),
            SECRET,
        );
        assert!(
            matches!(v.verify(t.as_bytes(), None), Err(JwtError::Invalid(_))),
            "invalid filter"
        );
        assert!(!looks_like_token(b"plain password"));
    }

    #[test]
    fn issuer_and_audience_are_checked_when_configured() {
        let mut c = config();
        c.issuer = Some("https://auth.example".into());
        c.audience = Some("cicada".into());
        let v = Verifier::load(&c).unwrap();
        let good = token(
            json!({"exp": now() + 60, "iss": "https://auth.example", "aud": "cicada"}),
            SECRET,
        );
        assert!(v.verify(good.as_bytes(), None).is_ok());
        let wrong = token(
            json!({"exp": now() + 60, "iss": "elsewhere", "aud": "cicada"}),
            SECRET,
        );
        assert!(v.verify(wrong.as_bytes(), None).is_err());
        let wrong = token(
            json!({"exp": now() + 60, "iss": "https://auth.example", "aud": "other"}),
            SECRET,
        );
        assert!(v.verify(wrong.as_bytes(), None).is_err());
    }
}
