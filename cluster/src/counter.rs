//! The state machine of the crate's tests and of the `cicada-cluster-node` test binary: a command is a key;
//! applying it stores the key and increments a counter. A command applied twice or skipped shows as a counter
//! that differs from the number of keys, so "nothing lost, nothing applied twice" is two reads.
//!
//! A bulk command ([`bulk`]) stores many keys at once and adds their number: large states for the snapshot
//! tests without millions of proposals.

use crate::{StateMachine, Txn, View};

pub struct Counter;

const BULK: &[u8] = b"\x00bulk";

/// A command storing keys `b{start}`..`b{start + n - 1}` (zero-padded), each with a value of `size` bytes.
pub fn bulk(start: u64, n: u32, size: u32) -> Vec<u8> {
    let mut c = BULK.to_vec();
    c.extend_from_slice(&start.to_be_bytes());
    c.extend_from_slice(&n.to_be_bytes());
    c.extend_from_slice(&size.to_be_bytes());
    c
}

fn parse_bulk(c: &[u8]) -> Option<(u64, u32, u32)> {
    let r = c.strip_prefix(BULK)?;
    if r.len() != 16 {
        return None;
    }
    Some((
        u64::from_be_bytes(r[..8].try_into().ok()?),
        u32::from_be_bytes(r[8..12].try_into().ok()?),
        u32::from_be_bytes(r[12..].try_into().ok()?),
    ))
}

impl StateMachine for Counter {
    fn apply(&mut self, txn: &mut Txn<'_>, command: &[u8]) -> Vec<u8> {
        let before = txn
            .get(b"count")
            .ok()
            .flatten()
            .and_then(|v| v.as_slice().try_into().ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        if let Some((start, n, size)) = parse_bulk(command) {
            for i in start..start + u64::from(n) {
                let k = format!("k/b{i:012}");
                let mut v = k.clone().into_bytes();
                v.resize(size as usize, b'.');
                txn.insert(k.as_bytes(), &v);
            }
            let n = before + u64::from(n);
            txn.insert(b"count", &n.to_be_bytes());
            return n.to_be_bytes().to_vec();
        }
        let n = before + 1;
        txn.insert(b"count", &n.to_be_bytes());
        let mut k = b"k/".to_vec();
        k.extend_from_slice(command);
        txn.insert(&k, command);
        n.to_be_bytes().to_vec()
    }
}

/// The counter as applied.
pub fn count(view: &View) -> u64 {
    view.get(b"count")
        .ok()
        .flatten()
        .and_then(|v| v.as_ref().try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

/// How many keys are applied (without collecting them).
pub fn key_count(view: &View) -> u64 {
    view.scan_prefix(b"k/").count() as u64
}

/// The keys applied (without their `k/` prefix).
pub fn keys(view: &View) -> Vec<Vec<u8>> {
    view.scan_prefix(b"k/")
        .flatten()
        .map(|(k, _)| k[2..].to_vec())
        .collect()
}
