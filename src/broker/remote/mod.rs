//! The broker across nodes (ARCHITECTURE.md section 4): the replicated routing table, forwarding published
//! messages to the nodes with matching subscribers, and taking in what other nodes forward.
//!
//! - [`table`]: the routing table every node applies in log order (a route per filter and node);
//! - [`local`]: this node's filters, counted, and what the table must change to agree with them;
//! - [`plan`]: which nodes a message goes to, shared groups included (pure);
//! - [`frame`]: what goes over the peer link's application lane;
//! - [`answers`]: forwarded shared-group copies whose publisher waits for the receiving node's answer;
//! - [`releases`]: this node's waits for another node to let go of a client, which its own answers
//!   to releases wait for;
//! - this file: [`RemoteLink`], which proposes this node's routes, sends frames with back-pressure and
//!   hands received messages to the local shards.
//!
//! A node proposes its own routes only while the cluster has more than one member (a cluster of one
//! forwards nothing, and a subscription costs it no commit). A reconciliation pass compares this node's
//! filters with its routes in the table, at start, every few seconds and after a failed proposal, and
//! proposes the difference: a route lost to a leaderless moment or left over from before a restart is
//! repaired without anyone waiting for it.

pub mod answers;
pub mod frame;
pub mod local;
pub mod plan;
pub mod releases;
pub mod table;

pub use plan::{GroupRef, GroupTurns, Planner};
pub use table::{RemoteMatch, RemoteRoutes};

use crate::broker::registry::RegistryMsg;
use crate::broker::shard::ShardMsg;
use crate::broker::ticket::{AckGate, AckOutcome, Ticket};
use crate::broker::Context;
use crate::store::Store;
use answers::Answers;
use bytes::Bytes;
use local::LocalRoutes;
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLockReadGuard};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How often this node's routes are compared with the table when nothing asked for it.
const RECONCILE_EVERY: Duration = Duration::from_secs(5);
/// How long a forward waits for room on a full lane before the peer counts as stalled (its frames are then
/// dropped, counted, until its lane has room again): a dead peer must not hold a shard.
const FORWARD_WAIT: Duration = Duration::from_secs(1);
/// Messages received from peers that may be on their way through the shards at once.
const FORWARD_CREDIT: usize = 256;
/// How long a SUBACK waits for the other nodes to apply its new route.
const SYNC_WAIT: Duration = Duration::from_secs(2);
/// How long a release may wait for the registry (it settles the closed connection, at most 2 s).
const RELEASE_WAIT: Duration = Duration::from_secs(3);
/// Beyond the previous owner's freshness lease, how long a takeover's CONNACK may wait for it: for the
/// owner's registry to act on the applied take, and for clocks that do not run at exactly one rate.
pub const TAKEOVER_SYNC_MARGIN: Duration = Duration::from_millis(250);
/// How long a SUBACK waits for its route's commit (a leaderless cluster answers sooner: see `subscribed`).
const ROUTE_WAIT: Duration = Duration::from_secs(5);

/// This node's side of the cluster's routing.
pub struct RemoteLink {
    store: Arc<Store>,
    me: u64,
    local: Mutex<LocalRoutes>,
    /// More than one member: routes are proposed and messages forwarded.
    clustered: AtomicBool,
    /// Other nodes' routes, counted by the table as it changes (read without its lock per publish).
    counts: Arc<table::RouteCounts>,
    /// Wakes the reconciliation pass (a route proposal failed).
    dirty: Notify,
    /// Peers whose lane stayed full past `FORWARD_WAIT`.
    stalled: Mutex<HashSet<u64>>,
    forwarded: IntCounterVec,
    forward_dropped: IntCounterVec,
    local_routes: IntGauge,
    /// Route syncs waiting for peers' answers: id → where each answering peer's id goes.
    syncs: Mutex<HashMap<u64, tokio::sync::mpsc::Sender<u64>>>,
    next_sync: std::sync::atomic::AtomicU64,
    /// Peers that did not answer a sync in time: later syncs do not wait for them until they answer again
    /// (a dead node must not slow every SUBACK).
    unresponsive: Mutex<HashSet<u64>>,
    /// Forwarded shared-group copies whose publishers wait for the peer's answer.
    answers: Mutex<Answers>,
    /// `cicada_forward_answers_total{result}`.
    answered: IntCounterVec,
    /// This node's waits for other nodes to let go of clients (see [`RemoteLink::release_on`]).
    releases: Arc<releases::Releases>,
    /// `cicada_cluster_release_waits_total{outcome}`.
    release_waits: IntCounterVec,
}

/// Waits until this node has applied up to `index` and written that batch (what the registry then reads
/// of the owners includes it), at most `SYNC_WAIT`: true when it has.
async fn applied_up_to(store: &Store, index: u64) -> bool {
    let mut written = store.batches_written();
    let reached = async {
        while !store.cluster().view().applied().is_ok_and(|a| a >= index) {
            if written.changed().await.is_err() {
                std::future::pending::<()>().await
            }
        }
    };
    tokio::time::timeout(SYNC_WAIT, reached).await.is_ok()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl RemoteLink {
    pub fn new(
        store: Arc<Store>,
        registry: &Registry,
    ) -> Result<Arc<RemoteLink>, prometheus::Error> {
        let forwarded = IntCounterVec::new(
            Opts::new(
                "cicada_forwarded_messages_total",
                "Messages forwarded to (direction=out) or received from (in) another node, by peer.",
            ),
            &["peer", "direction"],
        )?;
        let forward_dropped = IntCounterVec::new(
            Opts::new(
                "cicada_forward_dropped_total",
                "Messages for another node not forwarded (peer unreachable or stalled), or received and not understood, by peer and reason.",
            ),
            &["peer", "reason"],
        )?;
        let local_routes = IntGauge::new(
            "cicada_cluster_local_routes",
            "Filters this node has subscribers for (its routes in the cluster's table).",
        )?;
        registry.register(Box::new(forwarded.clone()))?;
        registry.register(Box::new(forward_dropped.clone()))?;
        let answered = IntCounterVec::new(
            Opts::new(
                "cicada_forward_answers_total",
                "Shared-group copies of QoS 1/2 messages forwarded to another node whose publisher waited for that node's answer, by result (stored, quota_exceeded, failed: as the peer answered; timeout: no answer in time, the publisher is not acknowledged).",
            ),
            &["result"],
        )?;
        let release_waits = IntCounterVec::new(
            Opts::new(
                "cicada_cluster_release_waits_total",
                "Connects that waited before their CONNACK for the node that held the client before to let go of it, by outcome (released: it answered; lease_ran_out: it did not answer within its lease window, after which it cannot serve the client without having applied the takeover).",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(local_routes.clone()))?;
        registry.register(Box::new(answered.clone()))?;
        registry.register(Box::new(release_waits.clone()))?;
        let me = store.node_id();
        let counts = store
            .routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .counts();
        let link = Arc::new(RemoteLink {
            store,
            me,
            counts,
            local: Mutex::new(LocalRoutes::default()),
            clustered: AtomicBool::new(false),
            dirty: Notify::new(),
            stalled: Mutex::new(HashSet::new()),
            forwarded,
            forward_dropped,
            local_routes,
            syncs: Mutex::new(HashMap::new()),
            next_sync: std::sync::atomic::AtomicU64::new(1),
            unresponsive: Mutex::new(HashSet::new()),
            answers: Mutex::new(Answers::default()),
            answered,
            releases: Arc::default(),
            release_waits,
        });
        link.refresh_membership();
        Ok(link)
    }

    pub fn me(&self) -> u64 {
        self.me
    }

    /// The replicated routing table.
    pub fn table(&self) -> RwLockReadGuard<'_, RemoteRoutes> {
        self.store.routes.read().unwrap_or_else(|e| e.into_inner())
    }

    /// How long a takeover waits for the previous holder to let go: its freshness lease and a margin (a
    /// node that has not answered by then cannot serve the client without having applied the takeover).
    pub fn takeover_wait(&self) -> Duration {
        self.store.cluster().lease_window() + TAKEOVER_SYNC_MARGIN
    }

    /// This node's waits for other nodes to let go of clients (a connect's begins at its open).
    pub fn releases(&self) -> &Arc<releases::Releases> {
        &self.releases
    }

    /// Whether the cluster has more than one member (as last seen).
    pub fn clustered(&self) -> bool {
        self.clustered.load(Ordering::Relaxed)
    }

    /// Whether a publish must look at the table: other nodes have routes.
    pub fn has_remote_routes(&self) -> bool {
        self.clustered.load(Ordering::Relaxed) && self.counts.has_others()
    }

    /// Shared groups go to other nodes whose peer link is up when there is one (a node that died or is
    /// cut off would hold its turns' messages, and their publishers, until its answers time out). This
    /// node stays a candidate (it takes a turn only with a member here); a group with no other node
    /// reachable keeps them all (its messages wait in the lane, and fail, as before: never nowhere).
    pub fn prefer_reachable(&self, remote: &mut RemoteMatch) {
        // Each other node's link is looked at once per message (a short lock each).
        let mut links: Vec<(u64, bool)> = Vec::new();
        for n in remote.groups.iter().flat_map(|g| g.nodes.iter()) {
            if *n != self.me && !links.iter().any(|(m, _)| m == n) {
                links.push((*n, self.store.cluster().app_link_up(*n)));
            }
        }
        if links.iter().all(|(_, up)| *up) {
            return;
        }
        let up = |n: &u64| links.iter().any(|(m, u)| m == n && *u);
        let down = |n: &u64| links.iter().any(|(m, u)| m == n && !*u);
        for g in &mut remote.groups {
            if g.nodes.iter().any(down) && g.nodes.iter().any(up) {
                g.nodes.retain(|n| *n == self.me || up(n));
            }
        }
    }

    /// Whether other nodes have members of shared groups (a QoS 1/2 publisher may then wait for a peer's
    /// answer: see [`RemoteLink::forward_message`]).
    pub fn has_remote_groups(&self) -> bool {
        self.clustered.load(Ordering::Relaxed) && self.counts.has_other_groups()
    }

    fn refresh_membership(&self) -> bool {
        let members = self
            .store
            .cluster()
            .view()
            .peers()
            .map(|p| p.len())
            .unwrap_or(1);
        let clustered = members > 1;
        self.clustered.store(clustered, Ordering::Relaxed);
        clustered
    }

    /// A local subscription to `full` (`$share/g/f` for a group member). When it is the filter's first on
    /// this node its route is proposed, and the future resolves once it is committed (or failed): the SUBACK
    /// waits for it, so a PUBLISH any node receives afterwards reaches the subscriber. Without a leader the
    /// route is left to reconciliation and nothing waits (clean sessions keep working locally).
    pub fn subscribed(
        self: &Arc<Self>,
        full: &str,
    ) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        let mut local = lock(&self.local);
        let first = local.add(full);
        self.local_routes.set(local.len() as i64);
        if !first || !self.clustered.load(Ordering::Relaxed) {
            return None;
        }
        // Proposed under the lock: route proposals commit in the order the local counts changed.
        let commit = self.store.set_route(full, true);
        drop(local);
        let waits = self.store.has_leader();
        let failed = self.failure_signal();
        let me = self.clone();
        Some(async move {
            let outcome = if waits {
                tokio::time::timeout(ROUTE_WAIT, commit).await.ok()
            } else {
                tokio::spawn(async move {
                    let _ = commit.await;
                });
                None
            };
            if matches!(outcome, Some(Ok(true))) {
                me.sync_peers().await;
            } else {
                failed();
            }
        })
    }

    /// Waits until every responsive peer has applied what this node has (a new route, a persistent
    /// session's subscription), up to `SYNC_WAIT`.
    pub async fn sync_peers(&self) {
        let index = match self.store.cluster().view().applied() {
            Ok(i) => i,
            Err(_) => return,
        };
        let peers: Vec<u64> = self
            .store
            .cluster()
            .view()
            .peers()
            .map(|p| p.into_keys().filter(|p| *p != self.me).collect())
            .unwrap_or_default();
        if peers.is_empty() {
            return;
        }
        let id = self.next_sync.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = tokio::sync::mpsc::channel(peers.len());
        lock(&self.syncs).insert(id, tx);
        // Every peer is asked (an answer makes an unresponsive one count again); only responsive ones are
        // waited for.
        let mut waiting: HashSet<u64> = HashSet::new();
        for p in &peers {
            if self
                .store
                .cluster()
                .try_send_app(*p, frame::sync(id, index))
                .is_ok()
                && !lock(&self.unresponsive).contains(p)
            {
                waiting.insert(*p);
            }
        }
        let deadline = tokio::time::Instant::now() + SYNC_WAIT;
        while !waiting.is_empty() {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(peer)) => {
                    waiting.remove(&peer);
                }
                _ => break,
            }
        }
        lock(&self.syncs).remove(&id);
        if !waiting.is_empty() {
            tracing::warn!(peers = ?waiting, "peers did not confirm a new route in time: not waited for until they answer");
            lock(&self.unresponsive).extend(waiting);
        }
    }

    /// Waits until `node` has applied what this node has and ended its session for `client_id` if it no
    /// longer holds the client (see [`frame::release`]), at most `wait`, whether or not it answered a sync
    /// lately: true when it answered.
    pub async fn release_on(
        &self,
        node: u64,
        client_id: &str,
        wait: Duration,
        waiting: Option<releases::Waiting>,
    ) -> bool {
        // This node's own answer to a release of the client waits for this one (see [`releases`]).
        let _waiting = match waiting {
            Some(w) => {
                w.towards(node);
                w
            }
            None => self.releases.begin(client_id, Some(node)),
        };
        let Ok(index) = self.store.cluster().view().applied() else {
            tokio::time::sleep(wait).await;
            return false;
        };
        let deadline = tokio::time::Instant::now() + wait;
        let id = self.next_sync.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        lock(&self.syncs).insert(id, tx);
        // The whole wait even when the frame cannot be queued at once (a full lane): the caller's
        // guarantee is that the old owner answered or ran out of its lease, never that it was skipped.
        let cluster = self.store.cluster();
        let answered = tokio::time::timeout(wait, async {
            cluster
                .send_app(node, frame::release(id, index, client_id))
                .await
                .is_ok()
                && rx.recv().await.is_some()
        })
        .await
        .unwrap_or(false);
        if !answered {
            // Unqueued, or refused at once (an unknown peer): the rest of the wait still passes.
            tokio::time::sleep_until(deadline).await;
        }
        lock(&self.syncs).remove(&id);
        let outcome = if answered {
            "released"
        } else {
            "lease_ran_out"
        };
        self.release_waits.with_label_values(&[outcome]).inc();
        answered
    }

    /// A peer took `client_id` over: once this node has applied up to `index` (the take), its registry ends
    /// its session for the client if another node holds it now (closing the connection, 0x8E, and
    /// settling it), then the peer is told. Bounded: `SYNC_WAIT` for the apply, `RELEASE_WAIT` for the
    /// registry.
    fn answer_release(
        &self,
        ctx: &Arc<Context>,
        from: u64,
        id: u64,
        index: u64,
        client_id: String,
    ) {
        let store = self.store.clone();
        let registry = ctx.registry.get().cloned();
        let releases = self.releases.clone();
        // As long as the asker may wait (a long lease), at least `RELEASE_WAIT`.
        let call_wait = RELEASE_WAIT.max(self.takeover_wait());
        tokio::spawn(async move {
            if !applied_up_to(&store, index).await {
                return;
            }
            if let Some(registry) = registry {
                let id = client_id.clone();
                let asked = registry
                    .call(
                        |reply| RegistryMsg::Release {
                            client_id: id,
                            reply,
                        },
                        Some(call_wait),
                    )
                    .await;
                // The old session still ending after the whole wait: no answer (the peer's own wait runs
                // out with this node's lease, after which nothing of it is served here unchecked).
                if matches!(asked, Ok(ractor::rpc::CallResult::Timeout)) {
                    tracing::warn!(client_id, peer = from, "release not confirmed in time");
                    return;
                }
            }
            // A connection of this node still waiting for a third node to let go of the client: the peer
            // is answered once that wait is over (each is bounded by its own deadline).
            releases.settled(&client_id, from).await;
            let _ = store.cluster().send_app(from, frame::synced(id)).await;
        });
    }

    /// A peer asks to be told once this node has applied up to `index` (bounded by `SYNC_WAIT`).
    fn answer_sync(&self, from: u64, id: u64, index: u64) {
        let store = self.store.clone();
        tokio::spawn(async move {
            if applied_up_to(&store, index).await {
                let _ = store.cluster().send_app(from, frame::synced(id)).await;
            }
        });
    }

    /// A local subscription to `full` went; the route goes with the filter's last one (in the background).
    pub fn unsubscribed(self: &Arc<Self>, full: &str) {
        let mut local = lock(&self.local);
        let last = local.remove(full);
        self.local_routes.set(local.len() as i64);
        if !last || !self.clustered.load(Ordering::Relaxed) {
            return;
        }
        let commit = self.store.set_route(full, false);
        drop(local);
        let failed = self.failure_signal();
        tokio::spawn(async move {
            if !matches!(commit.await, Ok(true)) {
                failed();
            }
        });
    }

    /// A callback that wakes reconciliation (a proposal failed or timed out).
    fn failure_signal(self: &Arc<Self>) -> impl FnOnce() + Send + 'static {
        let me = self.clone();
        move || me.dirty.notify_one()
    }

    /// Sends a frame to a peer on the application lane, waiting (back-pressure on the shard, and through
    /// its ticket on the publisher) while the lane is full, up to `FORWARD_WAIT`; a peer whose lane stays
    /// full counts as stalled and its frames are dropped, counted, until its lane has room again.
    pub async fn forward(&self, to: u64, frame: Bytes) -> bool {
        let peer = to.to_string();
        let cluster = self.store.cluster();
        let result = match cluster.try_send_app(to, frame.clone()) {
            Err(cicada_cluster::transport::AppSendError::Full(_))
                if !lock(&self.stalled).contains(&to) =>
            {
                match tokio::time::timeout(FORWARD_WAIT, cluster.send_app(to, frame)).await {
                    Ok(r) => r.map_err(|_| "unreachable"),
                    Err(_) => {
                        lock(&self.stalled).insert(to);
                        tracing::warn!(
                            peer = to,
                            "peer link full: forwards dropped until it drains"
                        );
                        Err("stalled")
                    }
                }
            }
            Err(cicada_cluster::transport::AppSendError::Full(_)) => Err("stalled"),
            Err(_) => Err("unreachable"),
            Ok(()) => {
                if lock(&self.stalled).remove(&to) {
                    tracing::info!(peer = to, "peer link drains again: forwarding resumes");
                }
                Ok(())
            }
        };
        match result {
            Ok(()) => {
                self.forwarded.with_label_values(&[&peer, "out"]).inc();
                true
            }
            Err(reason) => {
                self.forward_dropped
                    .with_label_values(&[&peer, reason])
                    .inc();
                false
            }
        }
    }

    /// Forwards a message to `to` for its plain subscribers and the shared `groups` named. A QoS 1/2
    /// message whose publisher waits (its ticket has a gate) and that names groups makes the publisher wait
    /// for the peer's answer too: a persistent member there stores its copy before the publisher is
    /// acknowledged, as on one node. A frame that could not be queued fails the publisher's wait at once.
    pub async fn forward_message(
        &self,
        to: u64,
        message: &crate::broker::message::Message,
        groups: &[GroupRef],
        ticket: &Ticket,
    ) {
        let gate = ticket
            .gate
            .as_ref()
            .filter(|_| !groups.is_empty() && message.qos != crate::protocol::QoS::AtMostOnce);
        let id = gate.map(|g| lock(&self.answers).expect(to, g.clone(), std::time::Instant::now()));
        if !self.forward(to, frame::forward(message, groups, id)).await {
            if let Some(id) = id {
                self.answer_arrived(to, id, AckOutcome::Failed);
            }
        }
    }

    /// A peer's answer (or this node's own verdict) for a forwarded group copy.
    fn answer_arrived(&self, from: u64, id: u64, outcome: AckOutcome) {
        if lock(&self.answers).answered(from, id, outcome) {
            let result = match outcome {
                AckOutcome::Stored => "stored",
                AckOutcome::QuotaExceeded => "quota_exceeded",
                AckOutcome::Failed => "failed",
            };
            self.answered.with_label_values(&[result]).inc();
        }
    }

    /// Fails the forwarded group copies whose answer did not come in time.
    fn expire_answers(&self) {
        let expired = lock(&self.answers).expire(std::time::Instant::now());
        if expired > 0 {
            tracing::warn!(
                expired,
                "no answer from a peer for forwarded shared-group copies: their publishers are not acknowledged"
            );
            self.answered
                .with_label_values(&["timeout"])
                .inc_by(expired as u64);
        }
    }

    /// The gate of a forwarded message this node is asked to answer for: once the copies it made are
    /// stored or handed over, the answer goes back to `from` (waiting for room on a full lane, bounded).
    fn answering_gate(self: &Arc<Self>, from: u64, id: u64) -> Arc<AckGate> {
        let link = self.clone();
        AckGate::calling(move |outcome| {
            let bytes = frame::forward_ack(id, outcome);
            let cluster = link.store.cluster();
            if let Err(cicada_cluster::transport::AppSendError::Full(_)) =
                cluster.try_send_app(from, bytes.clone())
            {
                let link = link.clone();
                tokio::spawn(async move {
                    let cluster = link.store.cluster();
                    let _ = tokio::time::timeout(FORWARD_WAIT, cluster.send_app(from, bytes)).await;
                });
            }
        })
    }

    /// Compares this node's filters with its routes in the table and proposes the difference; also follows
    /// membership (a node that joins a cluster starts proposing its routes). Runs until shutdown.
    pub async fn reconcile(self: Arc<Self>, shutdown: CancellationToken) {
        // The first pass at once: routes left from before a restart go before they attract group turns.
        let mut first = true;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(if first { Duration::from_millis(500) } else { RECONCILE_EVERY }) => {}
                _ = self.dirty.notified() => {
                    // A burst of failures is one pass.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            first = false;
            if !self.refresh_membership() || !self.store.has_leader() {
                first = true;
                continue;
            }
            let commits = {
                let local = lock(&self.local);
                let diff = local.diff(&self.table().of(self.me));
                if diff.add.is_empty() && diff.remove.is_empty() {
                    continue;
                }
                tracing::info!(
                    add = diff.add.len(),
                    remove = diff.remove.len(),
                    "reconciling this node's routes"
                );
                let adds = diff.add.iter().map(|f| self.store.set_route(f, true));
                let removes = diff.remove.iter().map(|f| self.store.set_route(f, false));
                adds.chain(removes).collect::<Vec<_>>()
            };
            for c in commits {
                if !matches!(c.await, Ok(true)) {
                    self.dirty.notify_one();
                    break;
                }
            }
        }
    }

    /// Takes the frames other nodes send and hands each message to the local shard of its topic, which
    /// delivers to this node's subscribers only (and to the shared groups the frame names). Frames of one
    /// peer are handled in order: messages of one publisher on one topic stay in order.
    pub async fn receive(self: Arc<Self>, ctx: Arc<Context>) {
        let Some(mut frames) = self.store.cluster().take_app_frames().await else {
            return;
        };
        // Messages from peers in the shards at once: past it, this loop (and, through the lane, the
        // sending shards and their publishers) waits.
        let credit = Arc::new(tokio::sync::Semaphore::new(FORWARD_CREDIT));
        let mut sweep = tokio::time::interval(Duration::from_secs(1));
        loop {
            let (from, bytes) = tokio::select! {
                _ = ctx.shutdown.cancelled() => return,
                _ = sweep.tick() => {
                    self.expire_answers();
                    continue;
                }
                f = frames.recv() => match f { Some(f) => f, None => return },
            };
            let peer = from.to_string();
            match frame::decode(&bytes) {
                Ok(frame::Frame::Forward {
                    message,
                    groups,
                    ack,
                }) => {
                    self.forwarded.with_label_values(&[&peer, "in"]).inc();
                    let Ok(permit) = credit.clone().acquire_owned().await else {
                        return;
                    };
                    let ticket = Ticket {
                        credit: Some(Arc::new(permit)),
                        gate: ack.map(|id| self.answering_gate(from, id)),
                    };
                    let _ = ctx.shard_for(&message.topic).cast(ShardMsg::Forwarded(
                        Arc::new(*message),
                        groups,
                        ticket,
                    ));
                }
                Ok(frame::Frame::ForwardAck { id, outcome }) => {
                    self.answer_arrived(from, id, outcome)
                }
                Ok(frame::Frame::Sync { id, index }) => self.answer_sync(from, id, index),
                Ok(frame::Frame::Release {
                    id,
                    index,
                    client_id,
                }) => self.answer_release(&ctx, from, id, index, client_id),
                Ok(frame::Frame::Synced { id }) => {
                    lock(&self.unresponsive).remove(&from);
                    if let Some(tx) = lock(&self.syncs).get(&id) {
                        let _ = tx.try_send(from);
                    }
                }
                Err(frame::FrameError::Expired) => {
                    ctx.metrics.dropped.with_label_values(&["expired"]).inc();
                }
                Err(e) => {
                    tracing::warn!(peer = from, error = %e, "frame from a peer not understood");
                    self.forward_dropped
                        .with_label_values(&[&peer, "not_understood"])
                        .inc();
                }
            }
        }
    }
}
