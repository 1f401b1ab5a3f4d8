//! What a raft entry carries besides raft's own fields: a batch of commands as the entry's data, and the
//! proposal context that tells the proposing process (and only it) which waiters the entry answers; a conf
//! change's context also carries the members' addresses after it. Read contexts likewise.

use crate::view::{decode_peers, Peers};
use bytes::{Buf, BufMut, BytesMut};
use raft::eraftpb::{ConfChangeType, ConfChangeV2};

pub(crate) fn encode_batch<'a>(cmds: impl ExactSizeIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_u32(cmds.len() as u32);
    for c in cmds {
        b.put_u32(c.len() as u32);
        b.put_slice(c);
    }
    b.to_vec()
}

pub(crate) fn decode_batch(mut b: &[u8]) -> Option<Vec<Vec<u8>>> {
    if b.len() < 4 {
        return None;
    }
    let n = b.get_u32() as usize;
    let mut out = Vec::with_capacity(n.min(65_536));
    for _ in 0..n {
        if b.len() < 4 {
            return None;
        }
        let len = b.get_u32() as usize;
        if b.len() < len {
            return None;
        }
        out.push(b[..len].to_vec());
        b.advance(len);
    }
    Some(out)
}

pub(crate) const CONTEXT_V1: u8 = 1;

/// A read index request's context: this process's incarnation and the read's id.
pub(crate) fn read_context(incarnation: u64, id: u64) -> Vec<u8> {
    let mut c = incarnation.to_be_bytes().to_vec();
    c.extend_from_slice(&id.to_be_bytes());
    c
}

/// Proposal context: the proposing node, its process incarnation and the batch id, so that process (and only
/// it) answers when the entry applies; conf changes carry the resulting peer addresses after it.
pub(crate) fn context(node: u64, incarnation: u64, id: u64, extra: &[u8]) -> Vec<u8> {
    let mut c = Vec::with_capacity(25 + extra.len());
    c.push(CONTEXT_V1);
    c.extend_from_slice(&node.to_be_bytes());
    c.extend_from_slice(&incarnation.to_be_bytes());
    c.extend_from_slice(&id.to_be_bytes());
    c.extend_from_slice(extra);
    c
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Context<'a> {
    pub node: u64,
    /// 0 for contexts written before incarnations (node id first: its top byte is 0); never ours.
    pub incarnation: u64,
    pub id: u64,
    pub extra: &'a [u8],
}

pub(crate) fn parse_context(c: &[u8]) -> Option<Context<'_>> {
    let u = |b: &[u8]| b.try_into().ok().map(u64::from_be_bytes);
    match c.first() {
        Some(&CONTEXT_V1) if c.len() >= 25 => Some(Context {
            node: u(&c[1..9])?,
            incarnation: u(&c[9..17])?,
            id: u(&c[17..25])?,
            extra: &c[25..],
        }),
        Some(0) if c.len() >= 16 => Some(Context {
            node: u(&c[..8])?,
            incarnation: 0,
            id: u(&c[8..16])?,
            extra: &c[16..],
        }),
        _ => None,
    }
}

/// The peer addresses a conf change entry leaves: its context's map, or (contexts written before the map) the
/// stored ones with the single address it names.
pub(crate) fn peers_after(stored: &Peers, ctx: Option<&Context<'_>>, cc: &ConfChangeV2) -> Peers {
    let mut peers = match ctx {
        Some(c) if c.incarnation != 0 => decode_peers(c.extra).unwrap_or_else(|| stored.clone()),
        Some(c) if !c.extra.is_empty() => {
            let mut p = stored.clone();
            for ch in cc.get_changes() {
                if ch.get_change_type() != ConfChangeType::RemoveNode {
                    p.insert(ch.node_id, String::from_utf8_lossy(c.extra).into_owned());
                }
            }
            p
        }
        _ => stored.clone(),
    };
    for ch in cc.get_changes() {
        if ch.get_change_type() == ConfChangeType::RemoveNode {
            peers.remove(&ch.node_id);
        }
    }
    peers
}
