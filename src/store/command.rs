//! The commands the broker proposes to the store. Encoded by [`format`](super::format): a format byte, the
//! command in postcard, then for [`Command::SetRetained`], [`Command::Publish`], [`Command::InboxAppend`] and
//! [`Command::InboxPush`] the value to store as a raw tail (borrowed at apply, never copied into the header).
//! New commands go at the end: a command's number in the log never changes.
//!
//! Every command about a session names its incarnation, and apply ignores it unless that incarnation is the
//! stored one: a replaced or deleted session's late commands change nothing, whatever order they commit in.

use super::format::{self, FormatError};
use super::record::SessionRecord;
use serde::{Deserialize, Serialize};

/// A change to durable broker state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command<'a> {
    /// Stores a retained message for its topic; the tail is its record.
    SetRetained {
        topic: &'a str,
    },
    ClearRetained {
        topic: &'a str,
    },
    /// Begins a new life of a persistent session: apply assigns its incarnation (the next value of a counter
    /// in the state machine) and answers it; whatever a previous incarnation left (inbox, inbound QoS 2 ids)
    /// goes.
    CreateSession {
        client_id: &'a str,
        /// Identifies this create, for [`Command::AbandonSession`].
        creator: u64,
        record: SessionRecord,
    },
    /// Removes the session a create with this `creator` made, if it is still the stored one: the proposer
    /// refused its client after the create's outcome was lost (a timeout), so nobody knows of that session.
    AbandonSession {
        client_id: &'a str,
        creator: u64,
    },
    /// Replaces a session's record; applied only while `incarnation` is the stored one.
    PutSession {
        client_id: &'a str,
        incarnation: u64,
        record: SessionRecord,
    },
    /// Forgets a session (expiry, clean start, expiry set to 0); applied only while `incarnation` is the
    /// stored one, so it never removes a newer life of the session.
    DeleteSession {
        client_id: &'a str,
        incarnation: u64,
    },
    /// A message for a persistent session; the tail is its inbox entry. `once`: a QoS 2 message of a
    /// persistent publisher (its client id and packet id), stored at most once per session until that
    /// publisher releases the id, so a resend that is routed again after a crash adds no second copy.
    InboxAppend {
        client_id: &'a str,
        incarnation: u64,
        seq: u64,
        #[serde(borrow)]
        once: Option<(&'a str, u16)>,
    },
    /// QoS 2: the client sent PUBREC for the copy, which it received with packet id `pkid`.
    InboxRelease {
        client_id: &'a str,
        incarnation: u64,
        seq: u64,
        pkid: u16,
    },
    /// A persistent session's client sent a QoS 2 PUBLISH with this packet id, which was routed: until PUBREL
    /// a resend with the id is not routed again, whatever restarts or takeovers come between
    /// [MQTT-4.3.3-9].
    Qos2Received {
        client_id: &'a str,
        incarnation: u64,
        pkid: u16,
    },
    /// The client released it (PUBREL): the id is free again.
    Qos2Released {
        client_id: &'a str,
        incarnation: u64,
        pkid: u16,
    },
    /// Messages the client acknowledged (or that left the session otherwise): removed from the inbox.
    InboxAck {
        client_id: &'a str,
        incarnation: u64,
        seqs: Vec<u64>,
    },
    /// Node `node` has subscribers for `filter` (`$share/{group}/{filter}` for members of a shared group):
    /// other nodes forward matching messages to it. Proposed by that node only; idempotent.
    AddRoute {
        node: u64,
        filter: &'a str,
    },
    /// Node `node` has no subscriber for `filter` any more. Idempotent.
    RemoveRoute {
        node: u64,
        filter: &'a str,
    },
    /// Node `node` holds the client's connection from now on, after a clean start (`token` names this
    /// claim). Apply gives the claim an epoch from a counter (the log orders claims), drops a stored
    /// session of the client that another node owns (a clean start ends it, even when that node is down) and tells every node, so any
    /// other node with a connection for the client closes it (0x8E): one live connection per client id.
    Claim {
        client_id: &'a str,
        node: u64,
        token: u64,
        /// The owner epoch the proposer saw: if another node claimed the client since, this claim is stale
        /// (it waited in a queue while its client went elsewhere) and apply ignores it.
        seen: u64,
    },
    /// [`Command::CreateSession`] proposed by node `node`, which owns the new session from then on (a claim
    /// with the creator as its token).
    CreateSessionOn {
        client_id: &'a str,
        creator: u64,
        node: u64,
        record: SessionRecord,
    },
    /// Node `node` takes the client's stored session over (a client resumed it there): the session gets a
    /// new incarnation, its inbox moves to it unchanged (same seqs), and the claim is made. Every later
    /// command of the old incarnation (its previous node still running) is ignored. Answers the new
    /// incarnation, or `Ignored` when there is no stored session (the claim is made all the same).
    TakeSession {
        client_id: &'a str,
        node: u64,
        token: u64,
        /// As for [`Command::Claim`]: ignored if another node claimed the client after this epoch.
        seen: u64,
    },
    /// A QoS 1/2 message for every persistent session whose subscriptions match it (the replicated
    /// [`PersistentIndex`](super::index::PersistentIndex)): apply appends each one's copy to its inbox with
    /// the next seq of that inbox, within the quota named here (the proposer's limits, so every node
    /// decides alike), and answers how many were stored and how many refused. The tail is the message as a
    /// retained one is stored. One command per message, whichever node owns each session: a session's copy
    /// is in the store before the publisher is acknowledged, even if its node is down.
    Publish {
        topic: &'a str,
        qos: u8,
        retain: bool,
        /// The publishing client, for No Local.
        publisher: Option<&'a str>,
        /// As for [`Command::InboxAppend`].
        #[serde(borrow)]
        once: Option<(&'a str, u16)>,
        /// What the copy counts against each session's bytes quota (see `Message::weight`).
        weight: u64,
        max_messages: u64,
        max_bytes: u64,
        /// (proposing node, id): on that node apply takes the message from memory instead of decoding it.
        origin: (u64, u64),
    },
    /// One session's copy (a retained message sent on subscribe, a shared subscription's message, a message
    /// whose publisher's node did not know of this session's subscription yet): appended with the inbox's
    /// next seq, within the quota; the tail is its inbox entry. Answers the seq.
    InboxPush {
        client_id: &'a str,
        incarnation: u64,
        #[serde(borrow)]
        once: Option<(&'a str, u16)>,
        max_messages: u64,
        max_bytes: u64,
    },
    /// [`Command::CreateSessionOn`] whose inbox seqs go on after `last_seq` (an earlier life of the session
    /// in the same process: a copy of that life still in flight never shares a seq with a new one).
    CreateSessionAfter {
        client_id: &'a str,
        creator: u64,
        node: u64,
        record: SessionRecord,
        last_seq: u64,
    },
    /// The client's connection on `node` has this Will (the tail: the message as a retained one is stored),
    /// with its delay and the session's expiry: if the node dies, the cluster fires it. Applied only while
    /// `node` owns the client; replaces an earlier one.
    SetWill {
        client_id: &'a str,
        node: u64,
        /// The connection (on `node`) whose Will it is.
        conn: u64,
        delay: u32,
        expiry: u32,
        /// The Will's Message Expiry Interval: counted from when it fires (the tail's message has none).
        message_expiry: Option<u32>,
    },
    /// The Will connection `conn` of `node` recorded for the client is gone (published or cancelled there).
    ClearWill {
        client_id: &'a str,
        node: u64,
        conn: u64,
    },
    /// `node`, the owner of the client's connection, is down: its recorded Will fires, once (the record
    /// goes). Every node's apply hands it to its own subscribers; persistent sessions' copies are appended
    /// as for [`Command::Publish`] within this quota. Ignored when no such record is left (the client
    /// connected again, or it fired already).
    FireWill {
        client_id: &'a str,
        node: u64,
        max_messages: u64,
        max_bytes: u64,
        /// When the proposer fired it (unix seconds): the Will's Message Expiry counts from here, the same on
        /// every node.
        now: u64,
    },
    /// `node` left the cluster (`cicada ctl leave`, proposed after its removal from the raft group): its
    /// routes go, its sessions that were online count as offline from `now` (unix seconds, the proposer's),
    /// and it is recorded as departed, which the failure detector counts as down for good.
    DropNode {
        node: u64,
        now: u64,
    },
    /// `node` joins (again): it no longer counts as departed. Proposed before it is added to the raft group.
    AdmitNode {
        node: u64,
    },
}

impl<'a> Command<'a> {
    /// The command alone (no tail).
    pub fn encode(&self) -> Vec<u8> {
        format::encode(self)
    }

    /// The command followed by the tail `tail` writes.
    pub fn encode_with(&self, tail: impl FnOnce(&mut bytes::BytesMut)) -> Vec<u8> {
        format::encode_with(self, tail)
    }

    /// The command and its tail, borrowing from `bytes`.
    pub fn decode(bytes: &'a [u8]) -> Result<(Command<'a>, &'a [u8]), FormatError> {
        format::decode(bytes)
    }
}
