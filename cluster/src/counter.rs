//! The state machine of the crate's tests and of the `cicada-cluster-node` test binary: a command is a key;
//! applying it stores the key and increments a counter. A command applied twice or skipped shows as a counter
//! that differs from the number of keys, so "nothing lost, nothing applied twice" is two reads.

use crate::{StateMachine, Txn, View};

pub struct Counter;

impl StateMachine for Counter {
    fn apply(&mut self, txn: &mut Txn<'_>, command: &[u8]) -> Vec<u8> {
        let n = txn
            .get(b"count")
            .ok()
            .flatten()
            .and_then(|v| v.as_slice().try_into().ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0)
            + 1;
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

/// The keys applied (without their `k/` prefix).
pub fn keys(view: &View) -> Vec<Vec<u8>> {
    view.scan_prefix(b"k/")
        .flatten()
        .map(|(k, _)| k[2..].to_vec())
        .collect()
}
