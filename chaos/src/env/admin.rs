//! A tiny HTTP/1.1 GET client for a node's admin endpoints (`/ready`, `/api/v1/cluster`,
//! `/api/v1/sessions/{id}`): one connection per request, `Connection: close`, bounded in time and size.

use crate::history::NodeId;
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long one request may take, connect to last byte.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

/// The largest answer read (a cluster status is a few kilobytes).
const MAX_ANSWER: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{addr}: no answer within {REQUEST_TIMEOUT:?}")]
    Timeout { addr: SocketAddr },
    #[error("{addr}: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("not an HTTP answer")]
    NotHttp,
    #[error("the body is not the expected JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// A node's raft state, from `GET /api/v1/cluster`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    pub ready: bool,
    /// raft's role: "Leader", "Follower", "Candidate", "PreCandidate".
    pub role: String,
    /// The leader this node knows, if any.
    pub leader: Option<NodeId>,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
}

impl NodeStatus {
    pub fn is_leader(&self) -> bool {
        self.role == "Leader"
    }
}

/// Status code and body of `GET path` on `addr`.
pub async fn get(addr: SocketAddr, path: &str) -> Result<(u16, Vec<u8>), AdminError> {
    let io = |source| AdminError::Io { addr, source };
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.map_err(io)?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.map_err(io)?;
        let mut raw = Vec::new();
        s.take(MAX_ANSWER).read_to_end(&mut raw).await.map_err(io)?;
        Ok::<_, AdminError>(raw)
    };
    let raw = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| AdminError::Timeout { addr })??;
    parse_response(&raw)
}

/// Status code and body of a whole HTTP/1.1 answer (plain or chunked body).
pub fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), AdminError> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or(AdminError::NotHttp)?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| AdminError::NotHttp)?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or(AdminError::NotHttp)?;
    if !status_line.starts_with("HTTP/1.") {
        return Err(AdminError::NotHttp);
    }
    let code = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or(AdminError::NotHttp)?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = &raw[end + 4..];
    let body = if chunked {
        dechunk(body).ok_or(AdminError::NotHttp)?
    } else {
        body.to_vec()
    };
    Ok((code, body))
}

fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&body[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

/// The status code of `GET /ready` (200 ready, 503 no leader or draining).
pub async fn ready(addr: SocketAddr) -> Result<u16, AdminError> {
    Ok(get(addr, "/ready").await?.0)
}

/// The node's raft state.
pub async fn status(addr: SocketAddr) -> Result<NodeStatus, AdminError> {
    let (code, body) = get(addr, "/api/v1/cluster").await?;
    if code != 200 {
        return Err(AdminError::NotHttp);
    }
    parse_status(&serde_json::from_slice(&body)?)
}

/// A [`NodeStatus`] from the JSON of `/api/v1/cluster`.
pub fn parse_status(v: &Value) -> Result<NodeStatus, AdminError> {
    let num = |k: &str| v[k].as_u64().unwrap_or(0);
    if !v.is_object() {
        return Err(AdminError::NotHttp);
    }
    Ok(NodeStatus {
        ready: v["ready"].as_bool().unwrap_or(false),
        role: v["role"].as_str().unwrap_or("").to_string(),
        leader: u8::try_from(num("leader")).ok().filter(|l| *l != 0),
        term: num("term"),
        commit_index: num("commit_index"),
        applied_index: num("applied_index"),
    })
}

/// The node owning `client`'s stored session (`owner_node`), as `addr` knows it; `None` when it has no
/// stored session or no owner.
pub async fn owner(addr: SocketAddr, client: &str) -> Result<Option<NodeId>, AdminError> {
    let (code, body) = get(
        addr,
        &format!("/api/v1/sessions/{}", encode_segment(client)),
    )
    .await?;
    if code != 200 {
        return Ok(None);
    }
    let v: Value = serde_json::from_slice(&body)?;
    Ok(v["owner_node"].as_u64().and_then(|n| u8::try_from(n).ok()))
}

/// Percent-encodes everything but unreserved characters (a client id in a path segment).
fn encode_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse_plain_and_chunked() {
        let plain = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 7\r\n\r\nno lead";
        assert_eq!(parse_response(plain).unwrap(), (503, b"no lead".to_vec()));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).unwrap(), (200, b"abcde".to_vec()));
        assert!(parse_response(b"garbage").is_err());
    }

    #[test]
    fn a_cluster_status_parses_with_no_leader_as_none() {
        let v = serde_json::json!({"role": "Follower", "leader": 0, "term": 3, "commit_index": 9,
            "applied_index": 8, "ready": false});
        let s = parse_status(&v).unwrap();
        assert_eq!(s.leader, None);
        assert_eq!((s.term, s.commit_index, s.applied_index), (3, 9, 8));
        let v = serde_json::json!({"role": "Leader", "leader": 2, "ready": true});
        assert!(parse_status(&v).unwrap().is_leader());
        assert_eq!(parse_status(&v).unwrap().leader, Some(2));
    }

    #[test]
    fn client_ids_are_encoded_for_the_path() {
        assert_eq!(encode_segment("a b/c"), "a%20b%2Fc");
    }
}
