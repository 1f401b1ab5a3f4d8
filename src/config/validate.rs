//! Cross-field checks of a parsed configuration.

use super::*;

impl Config {
    /// Cross-field checks; an error is (section, key, message).
    pub(super) fn validate(&self) -> Result<(), (&'static str, &'static str, String)> {
        for l in &self.listeners {
            match (l.kind.is_tls(), &l.tls) {
                (false, _) => {}
                (true, Some(t)) => {
                    if (t.require_certificate || t.use_identity_as_username) && t.ca.is_none() {
                        return Err((
                            "listener.tls",
                            "ca",
                            "require_certificate and use_identity_as_username need a CA file"
                                .into(),
                        ));
                    }
                }
                (true, None) => {
                    return Err((
                        "listener",
                        "kind",
                        "a tls or wss listener needs a [listener.tls] table with cert and key"
                            .into(),
                    ))
                }
            }
            if !l.path.starts_with('/') && l.path != crate::ws::ANY_PATH {
                return Err((
                    "listener",
                    "path",
                    format!("{:?} must start with / (or be \"*\": any path)", l.path),
                ));
            }
            l.bind.parse::<SocketAddr>().map_err(|e| {
                (
                    "listener",
                    "bind",
                    format!("{:?} is not an address:port: {e}", l.bind),
                )
            })?;
        }
        let auths = std::iter::once(("auth.jwt", &self.auth)).chain(
            self.listeners
                .iter()
                .filter_map(|l| Some(("listener.auth.jwt", l.auth.as_ref()?))),
        );
        for (section, jwt) in auths.filter_map(|(s, a)| Some((s, a.jwt.as_ref()?))) {
            match jwt.algorithm {
                JwtAlgorithm::HS256 => {
                    if jwt.secret.is_some() == jwt.secret_file.is_some() {
                        return Err((
                            section,
                            "secret",
                            "HS256 needs exactly one of secret and secret_file".into(),
                        ));
                    }
                    if jwt.secret.as_ref().is_some_and(|s| s.len() < 32) {
                        return Err((
                            section,
                            "secret",
                            "an HS256 secret needs at least 32 bytes".into(),
                        ));
                    }
                }
                JwtAlgorithm::RS256 | JwtAlgorithm::ES256 => {
                    if jwt.public_key.is_none() {
                        return Err((
                            section,
                            "public_key",
                            format!("{} needs a PEM public key file", jwt.algorithm),
                        ));
                    }
                }
            }
        }
        if let Some(c) = &self.cluster {
            c.validate().map_err(|(key, m)| ("cluster", key, m))?;
        }
        if self.http.token.is_some() && self.http.token_file.is_some() {
            return Err(("http", "token", "set token or token_file, not both".into()));
        }
        if self.http.token.as_ref().is_some_and(|t| t.len() < 16) {
            return Err(("http", "token", "needs at least 16 bytes".into()));
        }
        if self.store.cache_mb == 0 {
            return Err(("store", "cache_mb", "must be at least 1".into()));
        }
        if self.listeners.is_empty() {
            return Err(("", "listener", "at least one listener is needed".into()));
        }
        self.http.bind.parse::<SocketAddr>().map_err(|e| {
            (
                "http",
                "bind",
                format!("{:?} is not an address:port: {e}", self.http.bind),
            )
        })?;
        let l = &self.limits;
        if l.max_packet_size < 64 {
            return Err((
                "limits",
                "max_packet_size",
                "must be at least 64 bytes".into(),
            ));
        }
        if l.max_packet_size > 268_435_455 + 5 {
            return Err((
                "limits",
                "max_packet_size",
                "MQTT packets cannot exceed 268435460 bytes".into(),
            ));
        }
        if l.max_inflight == 0 {
            return Err(("limits", "max_inflight", "must be at least 1".into()));
        }
        if l.max_connections == 0 {
            return Err(("limits", "max_connections", "must be at least 1".into()));
        }
        if l.max_topic_levels == 0 {
            return Err(("limits", "max_topic_levels", "must be at least 1".into()));
        }
        if l.inbound_credit == 0 {
            return Err(("limits", "inbound_credit", "must be at least 1".into()));
        }
        if l.keep_alive_max == 0 || l.keep_alive_min > l.keep_alive_max {
            return Err((
                "limits",
                "keep_alive_max",
                "must be at least 1 and not below keep_alive_min".into(),
            ));
        }
        Ok(())
    }
}
