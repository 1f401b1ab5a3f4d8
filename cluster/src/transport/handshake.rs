//! The peer link's framing and handshake.
//!
//! A frame is `len: u32` (kind byte + payload), `kind: u8`, payload. The handshake frames are read with a
//! limit of [`HANDSHAKE_MAX`] bytes, so nothing large is allocated before a peer has proved itself; later
//! frames with the link's configured limit, checked before the buffer is allocated.
//!
//! Handshake (the lower node id dials; one connection per lane):
//! 1. dialer → `HELLO` (magic, version, lane, node id, cluster id, advertised address, 32-byte nonce);
//! 2. acceptor → `HELLO` with its own nonce and, when a cluster secret is configured, a proof: HMAC-SHA256 of
//!    both nonces, both ids and the lane under the secret;
//! 3. dialer checks it and answers `AUTH` with its own proof (a different label, so neither proof can be
//!    replayed as the other).
//!
//! Without a secret no proofs are exchanged, and a node with one refuses a node without.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use ring::hmac;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest handshake frame.
pub const HANDSHAKE_MAX: usize = 1024;
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const MAGIC: &[u8; 4] = b"CCDA";
const VERSION: u8 = 2;

pub const KIND_HELLO: u8 = 0;
pub const KIND_RAFT: u8 = 1;
pub const KIND_APP: u8 = 2;
pub const KIND_AUTH: u8 = 3;
pub const KIND_PING: u8 = 4;
pub const KIND_SNAP_BEGIN: u8 = 5;
pub const KIND_SNAP_CHUNK: u8 = 6;
pub const KIND_SNAP_END: u8 = 7;
pub const KIND_SNAP_ACK: u8 = 8;

/// Which traffic a connection carries: raft never waits behind application frames or snapshot chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    Raft,
    App,
    Snapshot,
}

impl Lane {
    pub fn label(self) -> &'static str {
        match self {
            Lane::Raft => "raft",
            Lane::App => "app",
            Lane::Snapshot => "snapshot",
        }
    }
    pub fn index(self) -> usize {
        self.byte() as usize
    }
    fn byte(self) -> u8 {
        match self {
            Lane::Raft => 0,
            Lane::App => 1,
            Lane::Snapshot => 2,
        }
    }
    fn from_byte(b: u8) -> Option<Lane> {
        match b {
            0 => Some(Lane::Raft),
            1 => Some(Lane::App),
            2 => Some(Lane::Snapshot),
            _ => None,
        }
    }
}

/// Why a handshake failed (the `reason` of `cicada_peer_refused_total`).
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("no handshake within {HANDSHAKE_TIMEOUT:?}")]
    Timeout,
    #[error("malformed handshake: {0}")]
    Malformed(&'static str),
    #[error("node {node} belongs to cluster {cluster:?}")]
    Cluster { node: u64, cluster: String },
    #[error("peer is node {got}, expected {expected}")]
    Node { got: u64, expected: u64 },
    #[error("node {0} did not prove the cluster secret")]
    Auth(u64),
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    #[error("{0:?} is not a TLS server name (the host of a peer address)")]
    ServerName(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl HandshakeError {
    pub fn reason(&self) -> &'static str {
        match self {
            HandshakeError::Timeout => "timeout",
            HandshakeError::Malformed(_) => "malformed",
            HandshakeError::Cluster { .. } => "cluster",
            HandshakeError::Node { .. } => "node",
            HandshakeError::Auth(_) => "auth",
            HandshakeError::Tls(_) | HandshakeError::ServerName(_) => "tls",
            HandshakeError::Io(_) => "io",
        }
    }
}

pub fn frame(kind: u8, payload: &[u8], out: &mut BytesMut) {
    out.put_u32((payload.len() + 1) as u32);
    out.put_u8(kind);
    out.put_slice(payload);
}

/// Reads one frame of at most `max` bytes (the limit is checked before anything is allocated).
pub async fn read_frame<R: AsyncRead + Unpin>(
    rd: &mut R,
    max: usize,
) -> std::io::Result<(u8, Bytes)> {
    let len = rd.read_u32().await? as usize;
    if len == 0 || len > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {len} bytes (limit {max})"),
        ));
    }
    let mut buf = vec![0; len];
    rd.read_exact(&mut buf).await?;
    let mut b = Bytes::from(buf);
    let kind = b.get_u8();
    Ok((kind, b))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub lane: Lane,
    pub node: u64,
    pub cluster: String,
    pub addr: String,
    pub nonce: [u8; 32],
    /// The acceptor's proof (empty from a dialer, or without a secret).
    pub proof: Vec<u8>,
}

impl Hello {
    pub fn encode(&self) -> BytesMut {
        let mut p = BytesMut::new();
        p.put_slice(MAGIC);
        p.put_u8(VERSION);
        p.put_u8(self.lane.byte());
        p.put_u64(self.node);
        p.put_slice(&self.nonce);
        for s in [self.cluster.as_bytes(), self.addr.as_bytes(), &self.proof] {
            p.put_u16(s.len() as u16);
            p.put_slice(s);
        }
        let mut out = BytesMut::new();
        frame(KIND_HELLO, &p, &mut out);
        out
    }

    pub fn decode(mut b: Bytes) -> Result<Hello, HandshakeError> {
        let bad = HandshakeError::Malformed;
        if b.len() < 4 + 1 + 1 + 8 + 32 || &b[..4] != MAGIC {
            return Err(bad("not a cicada peer hello"));
        }
        b.advance(4);
        if b.get_u8() != VERSION {
            return Err(bad("another peer protocol version"));
        }
        let lane = Lane::from_byte(b.get_u8()).ok_or(bad("unknown lane"))?;
        let node = b.get_u64();
        let mut nonce = [0; 32];
        b.copy_to_slice(&mut nonce);
        let field = |b: &mut Bytes| -> Result<Vec<u8>, HandshakeError> {
            if b.len() < 2 {
                return Err(bad("short hello"));
            }
            let n = b.get_u16() as usize;
            if b.len() < n {
                return Err(bad("short hello"));
            }
            Ok(b.split_to(n).to_vec())
        };
        let cluster = String::from_utf8(field(&mut b)?).map_err(|_| bad("cluster id not UTF-8"))?;
        let addr = String::from_utf8(field(&mut b)?).map_err(|_| bad("address not UTF-8"))?;
        let proof = field(&mut b)?;
        Ok(Hello {
            lane,
            node,
            cluster,
            addr,
            nonce,
            proof,
        })
    }
}

/// Reads a handshake frame of `kind` (small limit, bounded time).
pub async fn read_handshake<R: AsyncRead + Unpin>(
    rd: &mut R,
    kind: u8,
) -> Result<Bytes, HandshakeError> {
    let (k, b) = tokio::time::timeout(HANDSHAKE_TIMEOUT, read_frame(rd, HANDSHAKE_MAX))
        .await
        .map_err(|_| HandshakeError::Timeout)?
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => {
                HandshakeError::Malformed("a frame over the handshake limit")
            }
            _ => HandshakeError::Io(e),
        })?;
    if k != kind {
        return Err(HandshakeError::Malformed(
            "unexpected frame in the handshake",
        ));
    }
    Ok(b)
}

pub fn nonce() -> [u8; 32] {
    let mut n = [0u8; 32];
    // Without randomness there is no proof worth making: an all-zero nonce still lets the link work
    // without a secret, and with one the peer's own nonce keeps the proof fresh.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut n);
    n
}

/// The cluster secret, keyed for HMAC-SHA256.
#[derive(Clone)]
pub struct Secret(hmac::Key);

impl Secret {
    pub fn new(secret: &[u8]) -> Secret {
        Secret(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    fn message(role: &[u8], dialer: &Hello, acceptor: &Hello) -> Vec<u8> {
        let mut m = Vec::with_capacity(128);
        m.extend_from_slice(b"cicada-peer/");
        m.extend_from_slice(role);
        m.push(dialer.lane.byte());
        m.extend_from_slice(&dialer.node.to_be_bytes());
        m.extend_from_slice(&acceptor.node.to_be_bytes());
        m.extend_from_slice(&dialer.nonce);
        m.extend_from_slice(&acceptor.nonce);
        m.extend_from_slice(dialer.cluster.as_bytes());
        m
    }

    pub fn acceptor_proof(&self, dialer: &Hello, acceptor: &Hello) -> Vec<u8> {
        hmac::sign(&self.0, &Self::message(b"acceptor/", dialer, acceptor))
            .as_ref()
            .to_vec()
    }

    pub fn dialer_proof(&self, dialer: &Hello, acceptor: &Hello) -> Vec<u8> {
        hmac::sign(&self.0, &Self::message(b"dialer/", dialer, acceptor))
            .as_ref()
            .to_vec()
    }

    pub fn check_acceptor(&self, dialer: &Hello, acceptor: &Hello) -> bool {
        hmac::verify(
            &self.0,
            &Self::message(b"acceptor/", dialer, acceptor),
            &acceptor.proof,
        )
        .is_ok()
    }

    pub fn check_dialer(&self, dialer: &Hello, acceptor: &Hello, proof: &[u8]) -> bool {
        hmac::verify(&self.0, &Self::message(b"dialer/", dialer, acceptor), proof).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(node: u64, lane: Lane) -> Hello {
        Hello {
            lane,
            node,
            cluster: "c".into(),
            addr: "127.0.0.1:1".into(),
            nonce: nonce(),
            proof: Vec::new(),
        }
    }

    #[tokio::test]
    async fn hellos_round_trip_and_a_large_or_foreign_frame_is_refused_before_allocation() {
        let mut h = hello(3, Lane::App);
        h.proof = vec![9; 32];
        let enc = h.encode();
        let mut rd = &enc[..];
        let b = read_handshake(&mut rd, KIND_HELLO).await.unwrap();
        assert_eq!(Hello::decode(b).unwrap(), h);
        // A length of 1 GiB is refused from its four bytes.
        let huge = [0x40u8, 0, 0, 0, KIND_HELLO];
        let mut rd = &huge[..];
        assert!(matches!(
            read_handshake(&mut rd, KIND_HELLO).await,
            Err(HandshakeError::Malformed(_))
        ));
        let mut http = BytesMut::new();
        frame(KIND_HELLO, b"GET / HTTP/1.1\r\n", &mut http);
        let mut rd = &http[..];
        let b = read_handshake(&mut rd, KIND_HELLO).await.unwrap();
        assert!(matches!(
            Hello::decode(b),
            Err(HandshakeError::Malformed(_))
        ));
    }

    #[test]
    fn proofs_need_the_secret_and_are_bound_to_the_nonces_and_roles() {
        let s = Secret::new(b"s3cret");
        let d = hello(1, Lane::Raft);
        let mut a = hello(2, Lane::Raft);
        a.proof = s.acceptor_proof(&d, &a);
        assert!(s.check_acceptor(&d, &a));
        assert!(!Secret::new(b"other").check_acceptor(&d, &a));
        let p = s.dialer_proof(&d, &a);
        assert!(s.check_dialer(&d, &a, &p));
        assert!(
            !s.check_dialer(&d, &a, &a.proof),
            "the acceptor's proof is not the dialer's"
        );
        let replay = hello(1, Lane::Raft);
        assert!(
            !s.check_dialer(&replay, &a, &p),
            "another nonce, another proof"
        );
    }
}
