//! `[cluster]`: this node's place in a cluster of brokers (ARCHITECTURE.md section 4). Without the section a
//! node is a cluster of one, on the same code path.

use serde::Deserialize;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

/// The default peer-link port (ARCHITECTURE.md section 6).
pub const DEFAULT_PEER_BIND: &str = "0.0.0.0:7070";
/// A secret shorter than this is refused: it is the only thing between the peer port and the raft log.
pub const MIN_SECRET_BYTES: usize = 16;

/// `[cluster]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// This node's id: a positive number, unique in the cluster and never reused for another machine.
    pub node_id: u64,
    /// Where the peer link listens.
    #[serde(default = "default_peer_bind")]
    pub peer_bind: String,
    /// The address other nodes dial to reach this one (host:port); default: this node's entry in `peers`,
    /// else `peer_bind`.
    #[serde(default)]
    pub advertise: Option<String>,
    /// The initial members, `"ID@host:port"`; this node may be listed or not. Used only when the data
    /// directory is new: afterwards membership lives in the replicated state (`cicada ctl join/leave`).
    #[serde(default)]
    pub peers: Vec<String>,
    /// Nodes with another cluster id are refused on the peer link.
    #[serde(default = "default_cluster_id")]
    pub cluster_id: String,
    /// The shared secret every peer link proves (HMAC-SHA256 over both sides' nonces); prefer `secret_file`.
    #[serde(default)]
    pub secret: Option<String>,
    /// A file holding the secret (trailing newline ignored); relative to the config file.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// `true` on a node added to a running cluster: it starts with no voters and waits for the leader to add
    /// it (`cicada ctl join`).
    #[serde(default)]
    pub join: bool,
    /// Raft tick in milliseconds; an election starts after 10 silent ticks, heartbeats go every 2.
    #[serde(default = "default_tick_ms")]
    pub tick_ms: u64,
    /// Log entries kept before the log is compacted (a follower further behind gets a snapshot).
    #[serde(default = "default_snapshot_interval")]
    pub snapshot_interval: u64,
    /// Milliseconds the leader hears nothing from a node before it counts it as down: then the cluster fires
    /// the Wills of that node's connections (after their Will Delay) and expires its sessions.
    #[serde(default = "default_failure_detection_ms")]
    pub failure_detection_ms: u64,
    /// Mutual TLS on peer links: `[cluster.tls]`.
    #[serde(default)]
    pub tls: Option<PeerTlsSection>,
}

/// `[cluster.tls]`: every peer link is TLS; each node presents `cert` and accepts only peers whose
/// certificate chains to `ca` (the cluster's own CA). The dialer checks the acceptor's certificate against
/// the host of the peer address it dials (an IP address SAN for `10.0.0.1:7070`). Paths are relative to the
/// config file.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PeerTlsSection {
    /// This node's certificate chain (PEM), valid as server and as client.
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The CA certificates (PEM) peers' certificates must chain to.
    pub ca: PathBuf,
}

fn default_peer_bind() -> String {
    DEFAULT_PEER_BIND.into()
}
fn default_cluster_id() -> String {
    "cicada".into()
}
fn default_tick_ms() -> u64 {
    100
}
fn default_snapshot_interval() -> u64 {
    10_000
}
fn default_failure_detection_ms() -> u64 {
    5_000
}

/// Why the cluster settings cannot be turned into a running node's (read at start).
#[derive(Debug, thiserror::Error)]
pub enum ClusterConfigError {
    #[error("cluster.secret_file {path}: cannot read: {source}")]
    SecretFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cluster.secret_file {path}: the secret needs at least {MIN_SECRET_BYTES} bytes")]
    ShortSecret { path: PathBuf },
    #[error("cluster.tls: {0}")]
    Tls(#[from] crate::broker::tls::TlsError),
}

/// One entry of `peers`: `ID@host:port`.
pub fn parse_peer(entry: &str) -> Result<(u64, String), String> {
    let (id, addr) = entry
        .split_once('@')
        .ok_or_else(|| format!("{entry:?} is not ID@host:port"))?;
    let id: u64 = id
        .trim()
        .parse()
        .ok()
        .filter(|i| *i > 0)
        .ok_or_else(|| format!("{entry:?}: the node id must be a positive number"))?;
    let addr = addr.trim();
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {}
        _ => return Err(format!("{entry:?}: {addr:?} is not host:port")),
    }
    Ok((id, addr.to_string()))
}

impl ClusterSection {
    /// Checks that do not read files; an error is (key, message).
    pub(super) fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.node_id == 0 {
            return Err(("node_id", "must be a positive number".into()));
        }
        self.peer_bind
            .parse::<std::net::SocketAddr>()
            .map_err(|e| {
                (
                    "peer_bind",
                    format!("{:?} is not an address:port: {e}", self.peer_bind),
                )
            })?;
        let mut seen = HashMap::new();
        for entry in &self.peers {
            let (id, addr) = parse_peer(entry).map_err(|m| ("peers", m))?;
            if let Some(other) = seen.insert(id, addr.clone()) {
                return Err((
                    "peers",
                    format!("node {id} is listed twice ({other} and {addr})"),
                ));
            }
        }
        if let Some(a) = &self.advertise {
            parse_peer(&format!("1@{a}"))
                .map_err(|_| ("advertise", format!("{a:?} is not host:port")))?;
        }
        if self.cluster_id.is_empty() || self.cluster_id.len() > 64 {
            return Err(("cluster_id", "needs 1 to 64 bytes".into()));
        }
        if self.secret.is_some() && self.secret_file.is_some() {
            return Err(("secret", "set secret or secret_file, not both".into()));
        }
        if let Some(s) = &self.secret {
            if s.len() < MIN_SECRET_BYTES {
                return Err(("secret", format!("needs at least {MIN_SECRET_BYTES} bytes")));
            }
        }
        let others = seen.keys().any(|id| *id != self.node_id);
        if self.join && !others {
            return Err((
                "peers",
                "a node with join = true lists the running members it joins (\"ID@host:port\"): only they may link to it".into(),
            ));
        }
        if (others || self.join) && self.secret.is_none() && self.secret_file.is_none() {
            return Err((
                "secret",
                "a cluster of more than one node needs secret or secret_file: it is what a peer proves before the raft log trusts it".into(),
            ));
        }
        if !(10..=10_000).contains(&self.tick_ms) {
            return Err(("tick_ms", "must be between 10 and 10000".into()));
        }
        if self.snapshot_interval == 0 {
            return Err(("snapshot_interval", "must be at least 1".into()));
        }
        // Below an election timeout (10 ticks) a node that is only slow would count as down.
        if self.failure_detection_ms < self.tick_ms * 10 || self.failure_detection_ms > 3_600_000 {
            return Err((
                "failure_detection_ms",
                format!(
                    "must be between 10 raft ticks ({} ms) and 3600000",
                    self.tick_ms * 10
                ),
            ));
        }
        Ok(())
    }

    /// The address this node announces to its peers.
    pub fn advertised(&self) -> String {
        if let Some(a) = &self.advertise {
            return a.clone();
        }
        self.peers
            .iter()
            .filter_map(|p| parse_peer(p).ok())
            .find(|(id, _)| *id == self.node_id)
            .map(|(_, a)| a)
            .unwrap_or_else(|| self.peer_bind.clone())
    }

    /// The initial voters: every listed peer and this node.
    pub fn members(&self) -> HashMap<u64, String> {
        let mut m: HashMap<u64, String> = self
            .peers
            .iter()
            .filter_map(|p| parse_peer(p).ok())
            .collect();
        m.insert(self.node_id, self.advertised());
        m
    }

    /// The secret, read from `secret_file` when that is how it is given.
    pub fn secret_bytes(&self) -> Result<Option<Vec<u8>>, ClusterConfigError> {
        if let Some(s) = &self.secret {
            return Ok(Some(s.as_bytes().to_vec()));
        }
        let Some(path) = &self.secret_file else {
            return Ok(None);
        };
        let text = std::fs::read(path).map_err(|source| ClusterConfigError::SecretFile {
            path: path.clone(),
            source,
        })?;
        let mut s = text.as_slice();
        while let [rest @ .., b'\n' | b'\r'] = s {
            s = rest;
        }
        if s.len() < MIN_SECRET_BYTES {
            return Err(ClusterConfigError::ShortSecret { path: path.clone() });
        }
        Ok(Some(s.to_vec()))
    }

    pub fn tick(&self) -> Duration {
        Duration::from_millis(self.tick_ms)
    }
}
