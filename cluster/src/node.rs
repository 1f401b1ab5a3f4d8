//! The one actor that owns the `RawNode`: ticks, proposals (batched into entries), the Ready / LightReady
//! loop, applying committed entries in order, snapshots, compaction, membership changes and read index.

use crate::contact::{Freshness, Lease};
use crate::crash::{CrashPoint, Crasher};
use crate::entry::{context, decode_batch, encode_batch, parse_context, peers_after, read_context};
use crate::machine::{StateMachine, Txn};
use crate::metrics::Metrics;
use crate::storage::SledStorage;
use crate::transport::{Inbound, Transport};
use crate::view::{encode_peers, Peers, View};
use crate::{
    Applied, ChangeRefused, ClusterError, Fsync, Membership, NodeStatus, StartError, StorageError,
};
use bytes::Bytes;
use protobuf::Message as _;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use raft::eraftpb::{
    ConfChange, ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, Entry,
    EntryType, Message, MessageType,
};
use raft::{RawNode, SnapshotStatus, StateRole};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

type Reply<T> = RpcReplyPort<Result<T, ClusterError>>;
/// A proposer waiting for its command's result, and when it proposed.
type Waiter = (Reply<Vec<u8>>, Instant);

pub enum NodeMsg {
    Tick,
    Step(Box<Message>),
    Unreachable(u64),
    Propose(Vec<u8>, Reply<Vec<u8>>),
    /// Turns the queued proposals into entries (sent to self after the first proposal of a burst).
    Flush,
    /// Handles raft's Ready once for every peer message that arrived before it (sent to self after the first
    /// peer message of a burst): one flush covers them all.
    Process,
    ReadIndex(Reply<u64>),
    Status(RpcReplyPort<NodeStatus>),
    Change(Membership, Reply<()>),
    TransferLeader(u64),
    /// A snapshot stream to a follower ended (`true`: the follower has it).
    SnapshotSent(u64, bool),
    /// A streamed snapshot, restored into the inactive state tree; the permit keeps that tree until the Ready
    /// that installs (or drops) it has been handled.
    StepStaged(Box<Message>, tokio::sync::OwnedSemaphorePermit),
}

/// Routes what the transport receives into the actor's mailbox.
pub(crate) struct ToActor {
    pub node: ActorRef<NodeMsg>,
}

impl Inbound for ToActor {
    fn raft(&self, message: Message) {
        let _ = self.node.cast(NodeMsg::Step(Box::new(message)));
    }
    fn unreachable(&self, peer: u64) {
        let _ = self.node.cast(NodeMsg::Unreachable(peer));
    }
}

pub struct NodeArgs {
    pub raw: RawNode<SledStorage>,
    pub db: sled::Db,
    pub view: View,
    pub machine: Box<dyn StateMachine>,
    pub transport: Transport,
    pub metrics: Metrics,
    pub applied_tx: broadcast::Sender<Applied>,
    pub fsync: Fsync,
    pub tick: Duration,
    pub max_batch: usize,
    pub max_batch_bytes: usize,
    /// The largest command: its entry must fit the peers' frame limit, or it could never replicate.
    pub max_command: usize,
    pub snapshot_interval: u64,
    pub log_retention: Duration,
    pub max_log_bytes: u64,
    pub propose_timeout: Duration,
    /// This process's incarnation, in every proposal context: an entry proposed by an earlier process of this
    /// node never answers a waiter of this one.
    pub incarnation: u64,
    pub crash: Crasher,
    pub snapshots: Arc<crate::snapshot::Snapshots>,
    /// How long contact with the cluster keeps the applied state fresh (half an election timeout).
    pub contact_window: Duration,
    /// Published for `Cluster::fresh`.
    pub freshness: Arc<Freshness>,
}

/// Whether a Ready's writes are flushed before anything that depends on them.
///
/// `Always`: every Ready. `Interval`: when raft-rs says the Ready must be synced (new entries, a term or vote
/// change, a snapshot): votes and append responses leave, and a leader counts its own entries towards a
/// commit, only once they are on disk, so a node never votes twice in a term and a committed entry is on a
/// majority's disks. What it leaves to sled's background flush is what a restart replays from the log: the
/// applied state and the commit index.
fn needs_flush(fsync: Fsync, must_sync: bool) -> bool {
    match fsync {
        Fsync::Always => true,
        Fsync::Interval => must_sync,
    }
}

/// A random incarnation (never 0, which marks contexts written before incarnations existed).
pub fn incarnation() -> Result<u64, StartError> {
    let mut b = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .map_err(|_| StartError::NoRandomness)?;
    Ok(u64::from_be_bytes(b).max(1))
}

/// Answers `Timeout` to the calls waiting longer than `limit`.
fn time_out<T>(calls: &mut HashMap<u64, (Instant, Reply<T>)>, limit: Duration) {
    let expired: Vec<u64> = calls
        .iter()
        .filter(|(_, (t, _))| t.elapsed() > limit)
        .map(|(k, _)| *k)
        .collect();
    for id in expired {
        if let Some((_, r)) = calls.remove(&id) {
            let _ = r.send(Err(ClusterError::Timeout));
        }
    }
}

pub struct NodeState {
    a: NodeArgs,
    queued: Vec<(Vec<u8>, Reply<Vec<u8>>, Instant)>,
    flush_scheduled: bool,
    process_scheduled: bool,
    next_id: u64,
    /// Proposal batches of this node in the log, by batch id.
    pending: HashMap<u64, (Instant, Vec<Waiter>)>,
    changes: HashMap<u64, (Instant, Reply<()>)>,
    reads: HashMap<u64, (Instant, Reply<u64>)>,
    /// Read index answers waiting for the applied index to reach them.
    ready_reads: Vec<(u64, Instant, Reply<u64>)>,
    leader: u64,
    staged_permit: Option<tokio::sync::OwnedSemaphorePermit>,
    /// The applied index at the last compaction check.
    compaction_checked: u64,
    /// When each peer was last heard from (raft messages), for log retention.
    last_seen: HashMap<u64, Instant>,
    /// The background read barrier that keeps this node's applied state fresh.
    lease: Lease,
}

pub struct Node;

/// A freeze no stream has used for this long is released (its pre-images cost every apply).
const FREEZE_IDLE: Duration = Duration::from_secs(30);

/// Room in a peer-link frame for the raft message around the largest command.
const FRAME_MARGIN: usize = 1 << 20;

/// The largest command peers with this frame limit can replicate (at least 1 byte).
pub fn max_command(max_frame: usize) -> usize {
    max_frame.saturating_sub(FRAME_MARGIN).max(1)
}

fn storage_err(e: sled::Error) -> ClusterError {
    ClusterError::Storage(StorageError::Sled(e))
}

impl Actor for Node {
    type Msg = NodeMsg;
    type State = NodeState;
    type Arguments = NodeArgs;

    async fn pre_start(
        &self,
        me: ActorRef<NodeMsg>,
        a: NodeArgs,
    ) -> Result<NodeState, ActorProcessingErr> {
        me.send_interval(a.tick, || NodeMsg::Tick);
        a.snapshots.set_node(me.clone());
        Ok(NodeState {
            queued: Vec::new(),
            flush_scheduled: false,
            process_scheduled: false,
            next_id: 1,
            pending: HashMap::new(),
            changes: HashMap::new(),
            reads: HashMap::new(),
            ready_reads: Vec::new(),
            leader: 0,
            compaction_checked: 0,
            staged_permit: None,
            last_seen: HashMap::new(),
            lease: Lease::new(a.contact_window),
            a,
        })
    }

    async fn post_stop(
        &self,
        _me: ActorRef<NodeMsg>,
        s: &mut NodeState,
    ) -> Result<(), ActorProcessingErr> {
        s.a.transport.shutdown();
        let _ = s.a.db.flush();
        Ok(())
    }

    async fn handle(
        &self,
        me: ActorRef<NodeMsg>,
        msg: NodeMsg,
        s: &mut NodeState,
    ) -> Result<(), ActorProcessingErr> {
        self.handle_msg(me, msg, s).await
    }
}

impl Node {
    async fn handle_msg(
        &self,
        me: ActorRef<NodeMsg>,
        msg: NodeMsg,
        s: &mut NodeState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            NodeMsg::Tick => {
                s.a.raw.tick();
                let id = s.next_id;
                if s.lease.tick(Instant::now(), id) {
                    s.next_id += 1;
                    s.a.raw.read_index(read_context(s.a.incarnation, id));
                }
                s.expire();
                s.a.view.freezer().release_idle(FREEZE_IDLE);
                // raft-rs drops a read index asked before the leader committed in its term (or with no
                // leader): ask again until a read state answers it.
                for id in s.reads.keys() {
                    s.a.raw.read_index(read_context(s.a.incarnation, *id));
                }
            }
            NodeMsg::Step(m) => {
                if m.from != 0 {
                    s.last_seen.insert(m.from, Instant::now());
                }
                // Snapshots arrive streamed (StepStaged), never on the raft lane.
                if m.get_msg_type() == MessageType::MsgSnapshot {
                    tracing::warn!(from = m.from, "a snapshot on the raft lane ignored");
                    return Ok(());
                }
                if let Err(e) = s.a.raw.step(*m) {
                    tracing::debug!(error = %e, "raft message ignored");
                }
                if !s.process_scheduled {
                    s.process_scheduled = true;
                    let _ = me.cast(NodeMsg::Process);
                }
                return Ok(());
            }
            NodeMsg::Process => s.process_scheduled = false,
            NodeMsg::SnapshotSent(to, ok) => {
                let status = if ok {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                };
                s.a.raw.report_snapshot(to, status);
            }
            NodeMsg::StepStaged(m, permit) => {
                s.last_seen.insert(m.from, Instant::now());
                if let Err(e) = s.a.raw.step(*m) {
                    tracing::debug!(error = %e, "streamed snapshot ignored");
                }
                s.staged_permit = Some(permit);
            }
            NodeMsg::Unreachable(peer) => s.a.raw.report_unreachable(peer),
            NodeMsg::Propose(cmd, reply) => {
                if cmd.len() > s.a.max_command {
                    let _ = reply.send(Err(ClusterError::TooLarge(cmd.len())));
                    return Ok(());
                }
                s.queued.push((cmd, reply, Instant::now()));
                if !s.flush_scheduled {
                    s.flush_scheduled = true;
                    let _ = me.cast(NodeMsg::Flush);
                }
                return Ok(());
            }
            NodeMsg::Flush => {
                s.flush_scheduled = false;
                s.flush_proposals();
            }
            NodeMsg::ReadIndex(reply) => {
                let id = s.next_id;
                s.next_id += 1;
                s.reads.insert(id, (Instant::now(), reply));
                s.a.raw.read_index(read_context(s.a.incarnation, id));
            }
            NodeMsg::Status(reply) => {
                let _ = reply.send(s.status());
            }
            NodeMsg::Change(change, reply) => s.propose_change(change, reply),
            NodeMsg::TransferLeader(to) => s.a.raw.transfer_leader(to),
        }
        if let Err(e) = s.on_ready() {
            tracing::error!(error = %e, "raft storage failed; stopping this node");
            me.stop(Some(e.to_string()));
        }
        // The staged snapshot was installed or dropped by that Ready: its tree may be staged again.
        s.staged_permit = None;
        Ok(())
    }
}

impl NodeState {
    fn me(&self) -> u64 {
        self.a.raw.raft.id
    }

    fn flush_proposals(&mut self) {
        while !self.queued.is_empty() {
            // Bounded in commands and in bytes; a single command larger than the byte bound goes alone.
            let mut n = 0;
            let mut bytes = 0;
            for (c, _, _) in &self.queued {
                if n > 0 && (n >= self.a.max_batch || bytes + c.len() > self.a.max_batch_bytes) {
                    break;
                }
                n += 1;
                bytes += c.len();
            }
            let batch: Vec<_> = self.queued.drain(..n).collect();
            let id = self.next_id;
            self.next_id += 1;
            let data = encode_batch(batch.iter().map(|(c, _, _)| c.as_slice()));
            self.a.metrics.proposals.inc_by(n as u64);
            self.a.metrics.proposal_entries.inc();
            let ctx = context(self.me(), self.a.incarnation, id, &[]);
            match self.a.raw.propose(ctx, data) {
                Ok(()) => {
                    let waiters = batch.into_iter().map(|(_, r, t)| (r, t)).collect();
                    self.pending.insert(id, (Instant::now(), waiters));
                }
                Err(e) => {
                    // A leader drops a proposal when its uncommitted entries reach the limit (or while it
                    // hands leadership over): the caller should slow down, not look for another leader.
                    let why = if self.a.raw.raft.state == StateRole::Leader {
                        ClusterError::Busy
                    } else {
                        ClusterError::NoLeader
                    };
                    tracing::debug!(error = %e, %why, "proposal dropped");
                    self.a.metrics.proposals_failed.inc_by(n as u64);
                    for (_, r, _) in batch {
                        let _ = r.send(Err(why.clone()));
                    }
                }
            }
        }
    }

    fn propose_change(&mut self, change: Membership, reply: Reply<()>) {
        // raft-rs would turn a second change into an empty entry while one is pending: nobody would answer.
        if self.a.raw.raft.has_pending_conf() {
            let _ = reply.send(Err(ClusterError::Rejected(ChangeRefused::Pending)));
            return;
        }
        // The entry carries every member's address after the change, so every node (and a node that replays
        // the log from its start) records the same map.
        let mut peers = match self.a.view.peers() {
            Ok(p) => p,
            Err(e) => {
                let _ = reply.send(Err(storage_err(e)));
                return;
            }
        };
        let changes = match &change {
            Membership::AddLearner { id, addr } => {
                peers.insert(*id, addr.clone());
                vec![(ConfChangeType::AddLearnerNode, *id)]
            }
            Membership::Promote { id } => vec![(ConfChangeType::AddNode, *id)],
            Membership::Remove { id } => {
                peers.remove(id);
                vec![(ConfChangeType::RemoveNode, *id)]
            }
        };
        let addr = encode_peers(&peers);
        let mut cc = ConfChangeV2::default();
        cc.set_transition(ConfChangeTransition::Auto);
        for (t, id) in changes {
            let mut s = ConfChangeSingle::default();
            s.set_change_type(t);
            s.node_id = id;
            cc.mut_changes().push(s);
        }
        let id = self.next_id;
        self.next_id += 1;
        match self
            .a
            .raw
            .propose_conf_change(context(self.me(), self.a.incarnation, id, &addr), cc)
        {
            Ok(()) => {
                self.changes.insert(id, (Instant::now(), reply));
            }
            Err(e) => {
                let why = if self.a.raw.raft.state == StateRole::Leader {
                    ClusterError::Rejected(ChangeRefused::Raft(std::sync::Arc::new(e)))
                } else {
                    ClusterError::NoLeader
                };
                let _ = reply.send(Err(why));
            }
        }
    }

    /// Answers what waited too long (a proposal lost with a leader change, a read with no leader).
    fn expire(&mut self) {
        let limit = self.a.propose_timeout;
        let old = |t: &Instant| t.elapsed() > limit;
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, (t, _))| old(t))
            .map(|(k, _)| *k)
            .collect();
        for k in expired {
            if let Some((_, waiters)) = self.pending.remove(&k) {
                self.a.metrics.proposals_failed.inc_by(waiters.len() as u64);
                for (r, _) in waiters {
                    let _ = r.send(Err(ClusterError::Timeout));
                }
            }
        }
        // Expired calls are told so (dropping the reply would read as "stopped").
        time_out(&mut self.reads, limit);
        time_out(&mut self.changes, limit);
    }

    fn send(&mut self, msgs: Vec<Message>) {
        for m in msgs {
            if m.get_msg_type() != MessageType::MsgSnapshot {
                self.a.transport.send_raft(m);
                continue;
            }
            // A snapshot travels on its own lane, streamed from the freeze its data names; raft-rs hears
            // how it went when the follower answers (or the stream fails).
            let to = m.to;
            let frozen = crate::snapshot::frozen_id(&m.get_snapshot().data)
                .and_then(|id| self.a.view.freezer().stream(id));
            match frozen {
                Some((f, guard)) => {
                    self.a.metrics.snapshots_sent.inc();
                    self.a.snapshots.stream(to, m, f, guard);
                }
                None => {
                    tracing::warn!(peer = to, "snapshot's freeze is gone; raft retries");
                    self.a.raw.report_snapshot(to, SnapshotStatus::Failure);
                }
            }
        }
    }

    /// Makes this Ready's writes durable when what leaves next depends on them.
    fn sync(&self, must_sync: bool) -> Result<(), ClusterError> {
        if needs_flush(self.a.fsync, must_sync) {
            self.a.db.flush().map_err(storage_err)?;
            self.a.metrics.syncs.inc();
        }
        Ok(())
    }

    /// Restores a received snapshot into the inactive state tree, then switches to it and restarts the log
    /// after it in one write (see [`crate::view`]).
    fn install(&mut self, snap: &raft::eraftpb::Snapshot) -> Result<(), ClusterError> {
        let m = snap.get_metadata();
        // Streamed snapshots are restored off this actor before raft-rs sees them.
        let staged = crate::snapshot::staged(&snap.data)
            .ok_or(StorageError::SnapshotNotStaged { index: m.index })?;
        if !self
            .a
            .view
            .is_staged(staged, m.index)
            .map_err(storage_err)?
        {
            return Err(StorageError::SnapshotNoLongerStaged { index: m.index }.into());
        }
        let to = staged.tree;
        self.a.crash.reached(CrashPoint::Staged, &self.a.db);
        self.a
            .raw
            .mut_store()
            .install(snap, to)
            .map_err(storage_err)?;
        self.a.crash.reached(CrashPoint::Installed, &self.a.db);
        self.a.view.switch(to);
        self.a.machine.restored(&self.a.view);
        match self.a.view.peers() {
            Ok(peers) => {
                for (id, addr) in peers {
                    self.a.transport.add_peer(id, &addr);
                }
            }
            Err(e) => tracing::warn!(error = %e, "peer addresses of the snapshot unreadable"),
        }
        self.a.metrics.snapshots_applied.inc();
        tracing::info!(index = m.index, term = m.term, "installed a snapshot");
        Ok(())
    }

    fn on_ready(&mut self) -> Result<(), ClusterError> {
        while self.a.raw.has_ready() {
            self.on_ready_once()?;
        }
        Ok(())
    }

    fn on_ready_once(&mut self) -> Result<(), ClusterError> {
        let mut ready = self.a.raw.ready();
        if let Some(ss) = ready.ss() {
            let m = &self.a.metrics;
            m.role.set(match ss.raft_state {
                StateRole::Follower => 0,
                StateRole::Candidate => 1,
                StateRole::Leader => 2,
                StateRole::PreCandidate => 3,
            });
            if ss.leader_id != self.leader {
                self.leader = ss.leader_id;
                m.leader.set(ss.leader_id as i64);
                m.leader_changes.inc();
                tracing::info!(
                    leader = ss.leader_id,
                    term = self.a.raw.raft.term,
                    "raft leader changed"
                );
            }
        }
        if !ready.messages().is_empty() {
            let msgs = ready.take_messages();
            self.send(msgs);
        }
        if !ready.snapshot().is_empty() {
            let snap = ready.snapshot().clone();
            self.install(&snap)?;
        }
        let committed = ready.take_committed_entries();
        self.apply(committed)?;
        let hs = ready.hs().cloned();
        if !ready.entries().is_empty() || hs.is_some() {
            // Entries and hard state in one write: never a term or vote without the entries, or the reverse.
            self.a
                .raw
                .mut_store()
                .persist(ready.entries(), hs.as_ref())
                .map_err(storage_err)?;
            self.a.crash.reached(CrashPoint::Persisted, &self.a.db);
        }
        for rs in ready.take_read_states() {
            // Only this process's reads: an answer to a read of an earlier process (queued on a link across
            // the restart) must not answer a new read with the same id.
            let id = (rs.request_ctx.len() == 16
                && rs.request_ctx[..8] == self.a.incarnation.to_be_bytes())
            .then(|| u64::from_be_bytes(rs.request_ctx[8..].try_into().expect("8 bytes")));
            if id.is_some_and(|id| self.lease.answered(id, rs.index)) {
                continue;
            }
            if let Some((asked, reply)) = id.and_then(|id| self.reads.remove(&id)) {
                self.ready_reads.push((rs.index, asked, reply));
            }
        }
        // Group commit: one flush covers every entry of this Ready.
        self.sync(ready.must_sync())?;
        if !ready.persisted_messages().is_empty() {
            let msgs = ready.take_persisted_messages();
            self.send(msgs);
        }
        let mut light = self.a.raw.advance(ready);
        if let Some(c) = light.commit_index() {
            self.a.raw.mut_store().set_commit(c).map_err(storage_err)?;
            self.a.crash.reached(CrashPoint::Committed, &self.a.db);
        }
        let msgs = light.take_messages();
        self.send(msgs);
        let committed = light.take_committed_entries();
        self.apply(committed)?;
        self.a.raw.advance_apply();
        self.answer_reads();
        self.update_metrics();
        Ok(())
    }

    fn answer_reads(&mut self) {
        let applied = self.a.raw.raft.raft_log.applied;
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.ready_reads)
            .into_iter()
            .partition(|(i, _, _)| *i <= applied);
        self.ready_reads = waiting;
        // A completed barrier: the applied state holds what the leader had committed when it was asked.
        let window = self.lease.window();
        if let Some(until) = self.lease.applied(applied) {
            self.a.freshness.extend(until);
        }
        for (i, asked, r) in done {
            self.a.freshness.extend(asked + window);
            let _ = r.send(Ok(i));
        }
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), ClusterError> {
        let Some(last) = entries.last().map(|e| e.index) else {
            return Ok(());
        };
        let me = self.me();
        let view = self.a.view.clone();
        let mut txn = Txn::new(&view);
        let mut answers: Vec<(u64, Vec<Vec<u8>>)> = Vec::new();
        let mut changed: Vec<u64> = Vec::new();
        // Peer addresses as changed by conf changes earlier in this batch (not yet in the view).
        let mut peers: Option<Peers> = None;
        for e in entries {
            match e.get_entry_type() {
                EntryType::EntryNormal => {
                    if e.data.is_empty() {
                        continue; // the empty entry of a new leader
                    }
                    let Some(cmds) = decode_batch(&e.data) else {
                        tracing::error!(index = e.index, "undecodable entry skipped");
                        continue;
                    };
                    let mut results = Vec::with_capacity(cmds.len());
                    for c in cmds {
                        let r = self.a.machine.apply(&mut txn, &c);
                        self.a.metrics.applied_commands.inc();
                        let _ = self.a.applied_tx.send(Applied {
                            index: e.index,
                            command: Bytes::from(c),
                        });
                        results.push(r);
                    }
                    if let Some(c) = parse_context(&e.context) {
                        if c.node == me && c.incarnation == self.a.incarnation {
                            answers.push((c.id, results));
                        }
                    }
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    let cc = if e.get_entry_type() == EntryType::EntryConfChange {
                        ConfChange::parse_from_bytes(&e.data).map(raft_proto::ConfChangeI::into_v2)
                    } else {
                        ConfChangeV2::parse_from_bytes(&e.data)
                    };
                    let cc = match cc {
                        Ok(cc) => cc,
                        Err(err) => {
                            tracing::error!(index = e.index, error = %err, "undecodable conf change skipped");
                            continue;
                        }
                    };
                    let cs = match self.a.raw.apply_conf_change(&cc) {
                        Ok(cs) => cs,
                        Err(err) => {
                            tracing::warn!(index = e.index, error = %err, "conf change refused");
                            continue;
                        }
                    };
                    let ctx = parse_context(&e.context);
                    let stored = match &peers {
                        Some(p) => p.clone(),
                        None => self.a.view.peers().map_err(storage_err)?,
                    };
                    let after = peers_after(&stored, ctx.as_ref(), &cc);
                    // The conf state and addresses are written with this batch's applied index.
                    txn.set_membership(&cs, &after).map_err(storage_err)?;
                    self.a.raw.mut_store().set_conf_state(&cs);
                    for ch in cc.get_changes() {
                        match ch.get_change_type() {
                            ConfChangeType::RemoveNode => self.a.transport.remove_peer(ch.node_id),
                            _ => {
                                if let Some(addr) = after.get(&ch.node_id) {
                                    self.a.transport.add_peer(ch.node_id, addr);
                                }
                            }
                        }
                    }
                    peers = Some(after);
                    tracing::info!(voters = ?cs.voters, learners = ?cs.learners, "membership changed");
                    if let Some(c) = ctx {
                        if c.node == me && c.incarnation == self.a.incarnation {
                            changed.push(c.id);
                        }
                    }
                }
            }
        }
        txn.commit(last).map_err(storage_err)?;
        self.a.machine.committed();
        self.a.crash.reached(CrashPoint::Applied, &self.a.db);
        self.a
            .raw
            .mut_store()
            .set_commit(last)
            .map_err(storage_err)?;
        for (id, results) in answers {
            if let Some((_, waiters)) = self.pending.remove(&id) {
                for ((reply, started), r) in waiters.into_iter().zip(results) {
                    self.a
                        .metrics
                        .proposal_latency
                        .observe(started.elapsed().as_secs_f64());
                    let _ = reply.send(Ok(r));
                }
            }
        }
        for id in changed {
            if let Some((_, reply)) = self.changes.remove(&id) {
                let _ = reply.send(Ok(()));
            }
        }
        // The log never starts at index 1 once that entry is applied: the voters a cluster was bootstrapped
        // with are in no entry, only in the stored conf state, so a node that joins later must get them
        // from a snapshot, never by replaying the log from its start (it would count itself the only voter).
        if self.a.raw.store().snap_index() == 0 && last >= 1 {
            self.a.db.flush().map_err(storage_err)?;
            self.a.raw.mut_store().compact(1).map_err(storage_err)?;
        }
        let interval = self.a.snapshot_interval;
        if self.a.raw.store().len() >= interval
            && last.saturating_sub(self.compaction_checked) >= (interval / 4).max(1)
        {
            self.compaction_checked = last;
            self.compact(last)?;
        }
        Ok(())
    }

    /// Drops the log up to what every recently active follower has (so a short absence costs a log
    /// catch-up, not a snapshot), but never keeps more than `max_log_bytes` after the applied index allows.
    fn compact(&mut self, applied: u64) -> Result<(), ClusterError> {
        let me = self.me();
        let mut to = applied;
        if self.a.raw.raft.state == StateRole::Leader {
            let window = self.a.log_retention;
            for (id, pr) in self.a.raw.raft.prs().iter() {
                let recent = self.last_seen.get(id).is_some_and(|t| t.elapsed() < window);
                if *id != me && recent {
                    to = to.min(pr.matched);
                }
            }
        }
        let store = self.a.raw.store();
        let to = store
            .within_cap(to, applied, self.a.max_log_bytes)
            .map_err(storage_err)?;
        if to <= store.snap_index() {
            return Ok(());
        }
        // Everything applied is in the state tree (written before this): the log up to it can go.
        self.a.db.flush().map_err(storage_err)?;
        self.a.raw.mut_store().compact(to).map_err(storage_err)?;
        self.a.crash.reached(CrashPoint::Compacted, &self.a.db);
        self.a.metrics.compactions.inc();
        tracing::debug!(to, applied, "raft log compacted");
        Ok(())
    }

    fn update_metrics(&self) {
        let m = &self.a.metrics;
        let raft = &self.a.raw.raft;
        m.term.set(raft.term as i64);
        m.commit_index.set(raft.raft_log.committed as i64);
        m.applied_index.set(raft.raft_log.applied as i64);
        m.apply_lag.set(
            raft.raft_log
                .committed
                .saturating_sub(raft.raft_log.applied) as i64,
        );
        m.log_entries.set(self.a.raw.store().len() as i64);
    }
}

#[path = "node_status.rs"]
mod status;

#[cfg(test)]
#[path = "node_tests.rs"]
mod tests;
