//! The one actor that owns the `RawNode`: ticks, proposals (batched into entries), the Ready / LightReady
//! loop, applying committed entries in order, snapshots, compaction, membership changes and read index.

use crate::machine::{StateMachine, Txn, View};
use crate::metrics::Metrics;
use crate::storage::SledStorage;
use crate::transport::{Inbound, Transport};
use crate::{Applied, ClusterError, Fsync, Membership, NodeStatus};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use protobuf::Message as _;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use raft::eraftpb::{
    ConfChange, ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, Entry,
    EntryType, Message, MessageType,
};
use raft::{RawNode, SnapshotStatus, StateRole};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc};

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
}

/// Routes what the transport receives into the actor's mailbox.
pub(crate) struct ToActor {
    pub node: ActorRef<NodeMsg>,
    pub app: mpsc::Sender<(u64, Bytes)>,
}

impl Inbound for ToActor {
    fn raft(&self, message: Message) {
        let _ = self.node.cast(NodeMsg::Step(Box::new(message)));
    }
    fn app(&self, from: u64, frame: Bytes) {
        let _ = self.app.try_send((from, frame));
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
    pub snapshot_interval: u64,
    pub propose_timeout: Duration,
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
    ready_reads: Vec<(u64, Reply<u64>)>,
    leader: u64,
    since_compaction: u64,
}

pub struct Node;

fn encode_batch(cmds: &[Vec<u8>]) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_u32(cmds.len() as u32);
    for c in cmds {
        b.put_u32(c.len() as u32);
        b.put_slice(c);
    }
    b.to_vec()
}

fn decode_batch(mut b: &[u8]) -> Option<Vec<Vec<u8>>> {
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

/// Proposal context: the proposing node and its batch id, so that node can answer when the entry applies.
fn context(node: u64, id: u64, extra: &[u8]) -> Vec<u8> {
    let mut c = Vec::with_capacity(16 + extra.len());
    c.extend_from_slice(&node.to_be_bytes());
    c.extend_from_slice(&id.to_be_bytes());
    c.extend_from_slice(extra);
    c
}

fn parse_context(c: &[u8]) -> Option<(u64, u64, &[u8])> {
    if c.len() < 16 {
        return None;
    }
    let node = u64::from_be_bytes(c[..8].try_into().ok()?);
    let id = u64::from_be_bytes(c[8..16].try_into().ok()?);
    Some((node, id, &c[16..]))
}

fn storage_err(e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Storage(e.to_string())
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
        Ok(NodeState {
            a,
            queued: Vec::new(),
            flush_scheduled: false,
            process_scheduled: false,
            next_id: 1,
            pending: HashMap::new(),
            changes: HashMap::new(),
            reads: HashMap::new(),
            ready_reads: Vec::new(),
            leader: 0,
            since_compaction: 0,
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
        match msg {
            NodeMsg::Tick => {
                s.a.raw.tick();
                s.expire();
                // raft-rs drops a read index asked before the leader committed in its term (or with no
                // leader): ask again until a read state answers it.
                for id in s.reads.keys() {
                    s.a.raw.read_index(id.to_be_bytes().to_vec());
                }
            }
            NodeMsg::Step(m) => {
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
            NodeMsg::Unreachable(peer) => s.a.raw.report_unreachable(peer),
            NodeMsg::Propose(cmd, reply) => {
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
                s.a.raw.read_index(id.to_be_bytes().to_vec());
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
        Ok(())
    }
}

impl NodeState {
    fn me(&self) -> u64 {
        self.a.raw.raft.id
    }

    fn flush_proposals(&mut self) {
        while !self.queued.is_empty() {
            let n = self.queued.len().min(self.a.max_batch);
            let batch: Vec<_> = self.queued.drain(..n).collect();
            let cmds: Vec<Vec<u8>> = batch.iter().map(|(c, _, _)| c.clone()).collect();
            let id = self.next_id;
            self.next_id += 1;
            let data = encode_batch(&cmds);
            self.a.metrics.proposals.inc_by(n as u64);
            self.a.metrics.proposal_entries.inc();
            match self.a.raw.propose(context(self.me(), id, &[]), data) {
                Ok(()) => {
                    let waiters = batch.into_iter().map(|(_, r, t)| (r, t)).collect();
                    self.pending.insert(id, (Instant::now(), waiters));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "proposal dropped");
                    self.a.metrics.proposals_failed.inc_by(n as u64);
                    for (_, r, _) in batch {
                        let _ = r.send(Err(ClusterError::NoLeader));
                    }
                }
            }
        }
    }

    fn propose_change(&mut self, change: Membership, reply: Reply<()>) {
        let (changes, addr) = match &change {
            Membership::AddLearner { id, addr } => (
                vec![(ConfChangeType::AddLearnerNode, *id)],
                addr.as_bytes().to_vec(),
            ),
            Membership::Promote { id } => (vec![(ConfChangeType::AddNode, *id)], Vec::new()),
            Membership::Remove { id } => (vec![(ConfChangeType::RemoveNode, *id)], Vec::new()),
        };
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
            .propose_conf_change(context(self.me(), id, &addr), cc)
        {
            Ok(()) => {
                self.changes.insert(id, (Instant::now(), reply));
            }
            Err(e) => {
                let _ = reply.send(Err(ClusterError::Rejected(e.to_string())));
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
        self.reads.retain(|_, (t, _)| !old(t));
        self.changes.retain(|_, (t, _)| !old(t));
    }

    fn send(&mut self, msgs: Vec<Message>) {
        for m in msgs {
            let snapshot = m.get_msg_type() == MessageType::MsgSnapshot;
            let to = m.to;
            self.a.transport.send_raft(m);
            if snapshot {
                self.a.metrics.snapshots_sent.inc();
                // The message is queued on the link; the follower's answer moves its progress on.
                self.a.raw.report_snapshot(to, SnapshotStatus::Finish);
            }
        }
    }

    fn sync(&self) -> Result<(), ClusterError> {
        if self.a.fsync == Fsync::Always {
            self.a.db.flush().map_err(storage_err)?;
        }
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
            let index = snap.get_metadata().index;
            self.a
                .view
                .restore(index, &snap.data)
                .map_err(storage_err)?;
            self.a
                .raw
                .mut_store()
                .apply_snapshot(&snap)
                .map_err(storage_err)?;
            self.a.machine.restored(&self.a.view);
            self.a.metrics.snapshots_applied.inc();
            tracing::info!(index, "installed a snapshot");
        }
        let committed = ready.take_committed_entries();
        self.apply(committed)?;
        if !ready.entries().is_empty() {
            self.a
                .raw
                .mut_store()
                .append(ready.entries())
                .map_err(storage_err)?;
        }
        if let Some(hs) = ready.hs() {
            self.a
                .raw
                .mut_store()
                .set_hard_state(hs)
                .map_err(storage_err)?;
        }
        for rs in ready.take_read_states() {
            let id = rs
                .request_ctx
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes);
            if let Some((_, reply)) = id.and_then(|id| self.reads.remove(&id)) {
                self.ready_reads.push((rs.index, reply));
            }
        }
        // Group commit: one flush covers every entry of this Ready.
        self.sync()?;
        if !ready.persisted_messages().is_empty() {
            let msgs = ready.take_persisted_messages();
            self.send(msgs);
        }
        let mut light = self.a.raw.advance(ready);
        if let Some(c) = light.commit_index() {
            self.a.raw.mut_store().set_commit(c).map_err(storage_err)?;
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
            .partition(|(i, _)| *i <= applied);
        self.ready_reads = waiting;
        for (i, r) in done {
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
                    if let Some((node, id, _)) = parse_context(&e.context) {
                        if node == me {
                            answers.push((id, results));
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
                    self.a
                        .raw
                        .mut_store()
                        .set_conf_state(&cs)
                        .map_err(storage_err)?;
                    let ctx = parse_context(&e.context);
                    for ch in cc.get_changes() {
                        match ch.get_change_type() {
                            ConfChangeType::RemoveNode => self.a.transport.remove_peer(ch.node_id),
                            _ => {
                                if let Some((_, _, addr)) = ctx.filter(|(_, _, a)| !a.is_empty()) {
                                    self.a
                                        .transport
                                        .add_peer(ch.node_id, &String::from_utf8_lossy(addr));
                                }
                            }
                        }
                    }
                    tracing::info!(voters = ?cs.voters, learners = ?cs.learners, "membership changed");
                    if let Some((node, id, _)) = ctx {
                        if node == me {
                            changed.push(id);
                        }
                    }
                }
            }
        }
        txn.commit(last).map_err(storage_err)?;
        self.a
            .raw
            .mut_store()
            .set_commit(last)
            .map_err(storage_err)?;
        self.since_compaction += 1;
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
        let store = self.a.raw.store();
        if store.len() >= self.a.snapshot_interval {
            // Everything applied is in the state tree (written above): the log up to it can go.
            self.a.db.flush().map_err(storage_err)?;
            self.a.raw.mut_store().compact(last).map_err(storage_err)?;
            self.a.metrics.compactions.inc();
            self.since_compaction = 0;
        }
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

    fn status(&self) -> NodeStatus {
        let raft = &self.a.raw.raft;
        let cs = self.a.raw.store().conf_state();
        let peers = if raft.state == StateRole::Leader {
            let mut p: Vec<(u64, u64)> = raft
                .prs()
                .iter()
                .map(|(id, pr)| (*id, pr.matched))
                .collect();
            p.sort_unstable();
            p
        } else {
            Vec::new()
        };
        NodeStatus {
            id: raft.id,
            role: format!("{:?}", raft.state),
            term: raft.term,
            leader: raft.leader_id,
            commit: raft.raft_log.committed,
            applied: raft.raft_log.applied,
            first_index: raft::Storage::first_index(self.a.raw.store()).unwrap_or(0),
            last_index: raft::Storage::last_index(self.a.raw.store()).unwrap_or(0),
            voters: cs.voters.clone(),
            learners: cs.learners.clone(),
            peers,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_and_contexts_round_trip_and_garbage_is_refused() {
        let cmds = vec![b"a".to_vec(), Vec::new(), vec![7; 300]];
        assert_eq!(decode_batch(&encode_batch(&cmds)), Some(cmds));
        let enc = encode_batch(&[b"abc".to_vec()]);
        assert_eq!(decode_batch(&enc[..enc.len() - 1]), None);
        assert_eq!(decode_batch(&[0, 0]), None);
        let c = context(3, 99, b"127.0.0.1:7070");
        assert_eq!(parse_context(&c), Some((3, 99, &b"127.0.0.1:7070"[..])));
        assert_eq!(parse_context(b"short"), None);
    }
}

/// What a crash between persisting entries and applying them leaves on disk, built deterministically: the
/// entries are in the raft log and the hard state says they are committed, the state machine never saw them.
#[cfg(test)]
mod crash_tests {
    use super::*;
    use crate::counter::{self, Counter};
    use crate::{Cluster, ClusterConfig};

    async fn start(dir: &std::path::Path) -> Cluster {
        Cluster::start(
            ClusterConfig::single(dir),
            Counter,
            &prometheus::Registry::new(),
        )
        .await
        .unwrap()
    }

    /// Appends `keys` as one batch entry after the log's last entry, committed but not applied. `commit`
    /// false leaves the commit index where it was (persisted, not yet known committed).
    fn persist_without_applying(dir: &std::path::Path, keys: &[&str], commit: bool) {
        let db = sled::Config::new().path(dir).open().unwrap();
        let mut storage = SledStorage::open(&db, &[1]).unwrap();
        let last = raft::Storage::last_index(&storage).unwrap();
        let term = storage.hard_state().term;
        let cmds: Vec<Vec<u8>> = keys.iter().map(|k| k.as_bytes().to_vec()).collect();
        let e = Entry {
            index: last + 1,
            term,
            data: encode_batch(&cmds).into(),
            context: context(1, u64::MAX, &[]).into(),
            ..Default::default()
        };
        storage.append(&[e]).unwrap();
        if commit {
            storage.set_commit(last + 1).unwrap();
        }
        db.flush().unwrap();
    }

    #[tokio::test]
    async fn a_crash_between_persist_and_apply_is_applied_once_at_restart() {
        let dir = tempfile::tempdir().unwrap();
        let node = start(dir.path()).await;
        for k in ["a", "b", "c"] {
            node.propose(k.as_bytes().to_vec()).await.unwrap();
        }
        let applied_before = node.view().applied().unwrap();
        node.shutdown().await;
        drop(node);

        // Committed and persisted, then the process died before the apply.
        persist_without_applying(dir.path(), &["d", "e"], true);
        // Persisted, and the crash came before the commit index was written.
        persist_without_applying(dir.path(), &["f"], false);

        let node = start(dir.path()).await;
        node.read_index().await.unwrap();
        assert_eq!(counter::count(node.view()), 6, "each entry applied once");
        assert_eq!(counter::keys(node.view()).len(), 6);
        assert!(node.view().applied().unwrap() >= applied_before + 2);
        let applied = node.view().applied().unwrap();
        node.shutdown().await;
        drop(node);

        // Restarting again applies nothing twice: the applied index moved with the data.
        let node = start(dir.path()).await;
        node.read_index().await.unwrap();
        assert_eq!(counter::count(node.view()), 6);
        assert!(node.view().applied().unwrap() >= applied);
        node.shutdown().await;
    }
}
