//! The keys of the broker's state in the store: `r/` retained, `s/` sessions, `i/` inboxes, `c/` inbox
//! counters, `q/` inbound QoS 2 ids, `o/` QoS 2 copies stored at most once, `n/` counters of the whole
//! state machine, `w/` which node owns each client id, `W/` the Wills of live connections, `R/` the cluster's routes (`R/{node, 8 bytes big-endian}{filter}`), `D/` nodes removed from the
//! cluster (`D/{node, 8 bytes big-endian}`).

pub(super) const RETAINED_PREFIX: &[u8] = b"r/";
pub(super) const SESSION_PREFIX: &[u8] = b"s/";
pub(super) const INBOX_PREFIX: &[u8] = b"i/";
pub(super) const COUNTER_PREFIX: &[u8] = b"c/";
pub(super) const QOS2_PREFIX: &[u8] = b"q/";
pub(super) const ONCE_PREFIX: &[u8] = b"o/";
/// The last session incarnation apply assigned: incarnations are ordered by the raft log, not by any clock
/// or node.
pub(super) const OWNER_PREFIX: &[u8] = b"w/";
/// The last claim epoch apply assigned.
pub(super) const LAST_EPOCH: &[u8] = b"n/epoch";
pub(super) const ROUTE_PREFIX: &[u8] = b"R/";
/// `W/{client id}`: the Will of the client's live connection, for the cluster to fire if its node dies.
pub(super) const WILL_PREFIX: &[u8] = b"W/";
pub(super) const LAST_INCARNATION: &[u8] = b"n/incarnation";
/// `D/{node}`: a node removed from the cluster (`cicada ctl leave`): it counts as down for good, so the
/// Wills its connections left fire and its sessions expire.
pub(super) const DEPARTED_PREFIX: &[u8] = b"D/";

pub(super) fn departed_key(node: u64) -> Vec<u8> {
    let mut k = DEPARTED_PREFIX.to_vec();
    k.extend_from_slice(&node.to_be_bytes());
    k
}

pub(super) fn session_key(client_id: &str) -> Vec<u8> {
    let mut k = SESSION_PREFIX.to_vec();
    k.extend_from_slice(client_id.as_bytes());
    k
}

/// `i/{client id}\0`: every inbox entry of the client, whatever the incarnation.
pub(super) fn inbox_prefix(client_id: &str) -> Vec<u8> {
    let mut k = INBOX_PREFIX.to_vec();
    k.extend_from_slice(client_id.as_bytes());
    k.push(0);
    k
}

pub(super) fn inbox_key(client_id: &str, incarnation: u64, seq: u64) -> Vec<u8> {
    let mut k = inbox_prefix(client_id);
    k.extend_from_slice(&incarnation.to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// `q/{client id}\0`: the client's inbound QoS 2 ids awaiting PUBREL.
pub(super) fn qos2_prefix(client_id: &str) -> Vec<u8> {
    let mut k = QOS2_PREFIX.to_vec();
    k.extend_from_slice(client_id.as_bytes());
    k.push(0);
    k
}

pub(super) fn qos2_key(client_id: &str, pkid: u16) -> Vec<u8> {
    let mut k = qos2_prefix(client_id);
    k.extend_from_slice(&pkid.to_be_bytes());
    k
}

/// `o/{publisher}\0{pkid}`: the sessions that stored a copy of the publisher's QoS 2 message with that id.
pub(super) fn once_prefix(publisher: &str, pkid: Option<u16>) -> Vec<u8> {
    let mut k = ONCE_PREFIX.to_vec();
    k.extend_from_slice(publisher.as_bytes());
    k.push(0);
    if let Some(pkid) = pkid {
        k.extend_from_slice(&pkid.to_be_bytes());
    }
    k
}

pub(super) fn counter_key(client_id: &str) -> Vec<u8> {
    let mut k = COUNTER_PREFIX.to_vec();
    k.extend_from_slice(client_id.as_bytes());
    k
}

pub(super) fn retained_key(topic: &str) -> Vec<u8> {
    let mut k = RETAINED_PREFIX.to_vec();
    k.extend_from_slice(topic.as_bytes());
    k
}

pub(super) fn route_key(node: u64, filter: &str) -> Vec<u8> {
    let mut k = ROUTE_PREFIX.to_vec();
    k.extend_from_slice(&node.to_be_bytes());
    k.extend_from_slice(filter.as_bytes());
    k
}

/// (node, filter) of a route key.
pub(super) fn parse_route_key(k: &[u8]) -> Option<(u64, &str)> {
    let rest = k.strip_prefix(ROUTE_PREFIX)?;
    let node = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
    Some((node, std::str::from_utf8(rest.get(8..)?).ok()?))
}

pub(super) fn owner_key(client_id: &str) -> Vec<u8> {
    let mut k = OWNER_PREFIX.to_vec();
    k.extend_from_slice(client_id.as_bytes());
    k
}

pub(super) fn will_key(client_id: &str) -> Vec<u8> {
    let mut k = WILL_PREFIX.to_vec();
    k.extend_from_slice(client_id.as_bytes());
    k
}
