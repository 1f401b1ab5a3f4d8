//! The Registry actor: client id → Session. The one place that decides which session a connecting client
//! gets: the existing one (resumed, its old connection taken over) or a new one (clean start discards it).
//!
//! In a cluster a client id has one owner node, decided by claims the raft log orders (see
//! [`crate::store::Command::Claim`]). A connect claims the id for this node; every node applies the claim
//! and the registry of any other node holding a session for the id ends it (0x8E), unless its own claim is
//! still on its way (then it comes later in the log and wins). A client resuming (clean start = false) a
//! session another node owns takes it over through the store ([`crate::store::Command::TakeSession`]): its
//! subscriptions, stored inbox and inbound QoS 2 ids come from the replicated state, under a new
//! incarnation that fences off every late command of the previous owner.

mod open;

use super::message::SessionId;
use super::session::{Session, SessionArgs, SessionMsg};
use super::Context;
use crate::protocol::ReasonCode;
use crate::store::{OwnerChange, OwnerEvent, Store};
pub use open::ClaimDecided;
use open::{restore, OpenReply, Opening, Prepared};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The session a connection is to attach to.
pub struct Opened {
    pub session: ActorRef<SessionMsg>,
    pub id: SessionId,
    /// A clean start's claim in a cluster: resolved once it is committed (or failed). The connection waits
    /// for it (bounded) before its CONNACK, so a later connect on any node reads it and wins over it.
    /// A failed claim comes with the message that tells the registry, for the connection to send once its
    /// CONNACK is out.
    pub claimed: Option<tokio::sync::oneshot::Receiver<ClaimDecided>>,
    /// A resume's take: the node that held the client right before it (in log order), if another one:
    /// before its CONNACK the connection waits until that node has applied the take (and so closed its
    /// connection for it) or can no longer be fresh without applying it, so that no older connection is
    /// served once the client is told it is connected here. (A clean start learns it from its claim,
    /// [`ClaimDecided::previous`].)
    pub elsewhere: Option<u64>,
    /// This node's wait for the previous holder to let go, begun at the open (towards `elsewhere`, or a
    /// node the claim will name): the connection keeps it until its wait is over, and this node's answer
    /// to another node's release of the client waits for it (see [`crate::broker::remote::releases`]).
    pub releasing: Option<crate::broker::remote::releases::Waiting>,
}

/// Why no session could be opened for a connection (it is refused with 0x88: the client tries again).
#[derive(Debug, Clone, thiserror::Error)]
pub enum OpenRefused {
    #[error("the session moved to another node meanwhile")]
    Moved,
    #[error("the session could not be taken over: {0}")]
    Takeover(crate::store::CommitError),
    #[error("cannot start a session: {0}")]
    Spawn(Arc<ractor::SpawnErr>),
    #[error("the node is shutting down")]
    ShuttingDown,
    #[error("the takeover did not finish")]
    Unfinished,
}

pub enum RegistryMsg {
    Open {
        client_id: String,
        clean_start: bool,
        reply: OpenReply,
    },
    /// A resume's take, run off the registry, is done (see [`open`]).
    Prepared {
        client_id: String,
        prepared: Result<Prepared, OpenRefused>,
        reply: OpenReply,
    },
    /// The session a connect waited for has ended: the client's waiting connects go on.
    OpenNext { client_id: String },
    /// A session ended (expired, clean disconnect, discarded).
    Ended { client_id: String, id: SessionId },
    /// Close every connection with this reason and wait until each session has sent it.
    Shutdown(ReasonCode, RpcReplyPort<()>),
    /// A claim was committed (on this node or another).
    Owner(OwnerChange),
    /// Claims were missed (the registry lagged): compare every local session with the stored owners.
    Recheck,
    /// A claim this node proposed failed: the session no longer waits for it.
    ClaimFailed { client_id: String, token: u64 },
    /// A claim this node proposed committed with this epoch (its owner event may have been missed: a
    /// lagging registry, a snapshot): the session no longer waits for it.
    Claimed {
        client_id: String,
        token: u64,
        epoch: u64,
    },
    /// The local sessions: (client id, whether a connection is attached), for the admin API.
    List(RpcReplyPort<Vec<(String, bool)>>),
    /// The cluster fired the Will of this node's connection `conn` of the client.
    WillFired { client_id: Arc<str>, conn: u64 },
    /// Whether this node still holds the client, by the owners as applied here (a connection asks after a
    /// read barrier, before it acknowledges a message): answered at once; a client another node claimed
    /// meanwhile is then taken over here as on [`RegistryMsg::Owner`].
    Confirm {
        client_id: String,
        reply: RpcReplyPort<bool>,
    },
    /// A session ended in the background (see `RegistryState::ending`) has ended.
    EndDone { client_id: String, id: SessionId },
    /// Another node took the client over and waits for this node to let go (a peer's `RELEASE` frame,
    /// after the take was applied here): the local session, if another node holds the client now, is
    /// ended (its connection closed with 0x8E and settled) before the answer.
    Release {
        client_id: String,
        reply: RpcReplyPort<()>,
    },
}

/// A local session and its claim.
struct Local {
    id: SessionId,
    session: ActorRef<SessionMsg>,
    /// This node's claim for it (0: none was needed, a cluster of one).
    token: u64,
    /// The claim is proposed and not yet applied here: a claim of another node applied meanwhile is older.
    pending: bool,
    /// The epoch of this node's latest applied claim for the client: a claim at or below it is older than
    /// this session and changes nothing.
    epoch: u64,
    /// Set by the session: it ends with its connection (see `SessionArgs::ends_with_connection`).
    ends: Arc<std::sync::atomic::AtomicBool>,
    /// [`RegistryMsg::Confirm`]s asked while the claim was pending: answered once it is decided.
    confirms: Vec<RpcReplyPort<bool>>,
    /// [`RegistryMsg::Release`]s asked while the claim was pending (this node could not tell yet whether
    /// its own claim came before the asker's): handled again once it is decided.
    releases: Vec<RpcReplyPort<()>>,
}

impl Local {
    /// The claim is decided (applied here, failed, or the session ended): the confirms waiting for it learn
    /// whether the client is still held here.
    fn answer_confirms(&mut self, held: bool) {
        for reply in self.confirms.drain(..) {
            let _ = reply.send(held);
        }
    }
}

pub struct Registry;

pub struct RegistryState {
    ctx: Arc<Context>,
    sessions: HashMap<String, Local>,
    /// Sessions another node took, still ending in the background (their connections closing and
    /// settling), by client id and session id: a `Release` and a new connect here for the client wait for
    /// them, so nothing of the old connection is served once another connection is told it is connected.
    ending: HashMap<String, (SessionId, Ending)>,
    /// Client ids whose open waits off the registry (see [`open`]), with what came for them meanwhile.
    opening: HashMap<String, Opening>,
    /// Shutting down: no session starts any more.
    shutting_down: bool,
    /// Client ids whose local session holds releases until its claim is decided.
    deferred: std::collections::HashSet<String>,
}

/// Turns true once a session being ended in the background has ended (or its task is gone).
type Ending = tokio::sync::watch::Receiver<bool>;

/// Resolves once the ending session has ended.
async fn until_ended(mut ending: Ending) {
    let _ = ending.wait_for(|ended| *ended).await;
}

/// Whether the stored owner of `id`, as applied here, is another node's claim newer than this node's (and
/// this node's own claim is not still on its way); updates the local claim state from the stored owner.
fn lost_to_another(store: &Store, id: &str, l: &mut Local) -> bool {
    match store.owner(id) {
        Some(o) if o.node == store.node_id() => {
            if o.token == l.token {
                l.pending = false;
                l.answer_confirms(true);
            }
            l.epoch = l.epoch.max(o.epoch);
            false
        }
        Some(o) => !l.pending && o.epoch > l.epoch,
        None => false,
    }
}

/// Ends a session whose client connected again (here or on another node): its connection gets 0x8E.
/// Returns once it has ended.
async fn end_taken_over(session: &ActorRef<SessionMsg>) {
    let _ = session
        .call(
            |port| SessionMsg::Discard(ReasonCode::SESSION_TAKEN_OVER, Some(port)),
            None,
        )
        .await;
}

impl Actor for Registry {
    type Msg = RegistryMsg;
    type State = RegistryState;
    type Arguments = Arc<Context>;

    async fn pre_start(
        &self,
        me: ActorRef<RegistryMsg>,
        ctx: Arc<Context>,
    ) -> Result<RegistryState, ActorProcessingErr> {
        let mut sessions = HashMap::new();
        // Persistent sessions the store kept and this node owns: back as offline sessions with their
        // subscriptions, unless they expired while the broker was down.
        if let Some(store) = &ctx.store {
            let mut changes = store.owner_changes();
            let registry = me.clone();
            tokio::spawn(async move {
                use tokio::sync::broadcast::error::RecvError;
                loop {
                    let msg = match changes.recv().await {
                        Ok(OwnerEvent::Changed(change)) => RegistryMsg::Owner(change),
                        Ok(OwnerEvent::WillFired { client_id, conn }) => {
                            RegistryMsg::WillFired { client_id, conn }
                        }
                        Ok(OwnerEvent::Reloaded) | Err(RecvError::Lagged(_)) => {
                            RegistryMsg::Recheck
                        }
                        Err(RecvError::Closed) => return,
                    };
                    if registry.cast(msg).is_err() {
                        return;
                    }
                }
            });
            let mut restored = 0;
            // Sessions stored before ownership was recorded belong to one node: the lowest member.
            let unowned_here = store.lowest_member() == store.node_id();
            for (client_id, rec) in store.sessions() {
                let owner = store.owner(&client_id);
                match owner {
                    Some(o) if o.node != store.node_id() => continue,
                    None if !unowned_here => continue,
                    _ => {}
                }
                let Some(r) = restore(store, &client_id, rec) else {
                    continue;
                };
                let id = ctx.next_session_id.fetch_add(1, Ordering::Relaxed);
                let ends = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let args = SessionArgs {
                    ctx: ctx.clone(),
                    client_id: client_id.clone(),
                    id,
                    restored: Some(r),
                    ends_with_connection: ends.clone(),
                };
                let (session, _) = Actor::spawn_linked(None, Session, args, me.get_cell()).await?;
                sessions.insert(
                    client_id,
                    Local {
                        id,
                        session,
                        token: owner.map_or(0, |o| o.token),
                        pending: false,
                        epoch: owner.map_or(0, |o| o.epoch),
                        ends,
                        confirms: Vec::new(),
                        releases: Vec::new(),
                    },
                );
                restored += 1;
            }
            if restored > 0 {
                tracing::info!(
                    sessions = restored,
                    "persistent sessions restored from the store"
                );
            }
        }
        Ok(RegistryState {
            ctx,
            sessions,
            ending: HashMap::new(),
            opening: HashMap::new(),
            shutting_down: false,
            deferred: Default::default(),
        })
    }

    async fn handle(
        &self,
        me: ActorRef<RegistryMsg>,
        msg: RegistryMsg,
        s: &mut RegistryState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RegistryMsg::Open {
                client_id,
                clean_start,
                reply,
            } => s.open(&me, client_id, clean_start, reply).await,
            RegistryMsg::Prepared {
                client_id,
                prepared,
                reply,
            } => s.prepared(&me, client_id, prepared, reply).await,
            RegistryMsg::OpenNext { client_id } => s.open_next(&me, &client_id).await,
            RegistryMsg::Ended { client_id, id } => {
                if s.sessions.get(&client_id).is_some_and(|l| l.id == id) {
                    s.sessions.remove(&client_id);
                }
            }
            RegistryMsg::Shutdown(reason, done) => {
                s.shutting_down = true;
                for l in s.sessions.values() {
                    let _ = l
                        .session
                        .call(|port| SessionMsg::Shutdown(reason, port), None)
                        .await;
                }
                let _ = done.send(());
            }
            RegistryMsg::Owner(change) => s.owner_changed(&me, &change),
            RegistryMsg::WillFired { client_id, conn } => {
                if let Some(l) = s.sessions.get(&*client_id) {
                    let _ = l.session.cast(SessionMsg::WillFired(conn));
                }
            }
            RegistryMsg::Recheck => {
                let Some(store) = s.ctx.store.clone() else {
                    return Ok(());
                };
                let mut lost = Vec::new();
                for (id, l) in s.sessions.iter_mut() {
                    if lost_to_another(&store, id, l) {
                        lost.push(id.clone());
                    }
                }
                for client_id in lost {
                    s.taken_elsewhere(&me, &client_id);
                }
            }
            RegistryMsg::Release { client_id, reply } => s.release(&me, &client_id, reply),
            RegistryMsg::EndDone { client_id, id } => {
                if s.ending.get(&client_id).is_some_and(|(e, _)| *e == id) {
                    s.ending.remove(&client_id);
                }
            }
            RegistryMsg::Confirm { client_id, reply } => {
                let (Some(store), Some(l)) = (&s.ctx.store, s.sessions.get_mut(&client_id)) else {
                    // Gone from the registry: its connection is being closed. (No store: one node, held.)
                    let _ = reply.send(s.ctx.store.is_none());
                    return Ok(());
                };
                if lost_to_another(store, &client_id, l) {
                    let _ = reply.send(false);
                    s.taken_elsewhere(&me, &client_id);
                } else if l.pending {
                    // This node's claim is on its way: it decides (applied here: held; failed and another
                    // node's claim is newer: taken over).
                    l.confirms.push(reply);
                } else {
                    let _ = reply.send(true);
                }
            }
            RegistryMsg::List(reply) => {
                // Asked off the registry, all at once: a busy session must not hold up connects.
                let sessions: Vec<(String, ActorRef<SessionMsg>)> = s
                    .sessions
                    .iter()
                    .map(|(id, l)| (id.clone(), l.session.clone()))
                    .collect();
                tokio::spawn(async move {
                    let asks = sessions.into_iter().map(|(id, session)| async move {
                        let online = matches!(
                            session
                                .call(
                                    SessionMsg::IsOnline,
                                    Some(std::time::Duration::from_secs(1))
                                )
                                .await,
                            Ok(ractor::rpc::CallResult::Success(true))
                        );
                        (id, online)
                    });
                    let mut out = futures_util::future::join_all(asks).await;
                    out.sort();
                    let _ = reply.send(out);
                });
            }
            RegistryMsg::Claimed {
                client_id,
                token,
                epoch,
            } => {
                if let Some(l) = s
                    .sessions
                    .get_mut(&client_id)
                    .filter(|l| l.token == token && l.pending)
                {
                    l.epoch = l.epoch.max(epoch);
                    s.claim_decided(&me, &client_id);
                }
            }
            RegistryMsg::ClaimFailed { client_id, token } => {
                if s.sessions.get(&client_id).is_some_and(|l| l.token == token) {
                    s.claim_decided(&me, &client_id);
                }
            }
        }
        // A claim decided by this message (applied, failed, found in a recheck) lets its releases go.
        s.flush_releases(&me);
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _me: ActorRef<RegistryMsg>,
        evt: ractor::SupervisionEvent,
        s: &mut RegistryState,
    ) -> Result<(), ActorProcessingErr> {
        // A session that panicked must not take the registry (and every other session) down with it.
        if let ractor::SupervisionEvent::ActorFailed(cell, err) = evt {
            tracing::error!(error = %err, "a session failed");
            s.sessions
                .retain(|_, l| l.session.get_id() != cell.get_id());
        }
        Ok(())
    }
}

impl RegistryState {
    /// A claim was applied: ours (the session stops waiting for it) or another node's (our session for the
    /// client goes, unless our own claim is still on its way: it is later in the log and wins).
    fn owner_changed(&mut self, me: &ActorRef<RegistryMsg>, change: &OwnerChange) {
        let Some(store) = &self.ctx.store else {
            return;
        };
        let Some(l) = self.sessions.get_mut(&*change.client_id) else {
            // A take under way here that this claim of another node follows in the log loses to it.
            if let Some(o) = self.opening.get_mut(&*change.client_id) {
                if change.owner.node != store.node_id() {
                    o.overtaken = o.overtaken.max(change.owner.epoch);
                }
            }
            return;
        };
        if change.owner.node == store.node_id() {
            if l.token == change.owner.token {
                l.pending = false;
                l.answer_confirms(true);
            }
            l.epoch = l.epoch.max(change.owner.epoch);
            return;
        }
        // Older than this session's own claim, or this session's claim is still on its way (it is later in
        // the log and wins): nothing to do.
        if l.pending || change.owner.epoch <= l.epoch {
            return;
        }
        let client_id = change.client_id.to_string();
        self.taken_elsewhere(me, &client_id);
    }

    /// Another node holds the client now: the local session ends, its connection closed with 0x8E, in the
    /// background (the registry goes on: a takeover settles the old connection, which may take a while);
    /// `Release` and a new connect for the client here wait for that end (see [`RegistryState::ending`]).
    /// Its late store commands carry an incarnation that is no longer the stored one and change nothing.
    fn taken_elsewhere(&mut self, me: &ActorRef<RegistryMsg>, client_id: &str) {
        if self.sessions.contains_key(client_id) {
            tracing::info!(client_id, "session taken over by another node");
            self.end_in_background(me, client_id);
        }
    }

    /// Ends the client's local session in the background, its connection closed with 0x8E (taken over
    /// here or on another node); `Release` and a new connect for the client wait for it. An end still
    /// under way for the client is waited for first, so the latest end covers every earlier one.
    fn end_in_background(&mut self, me: &ActorRef<RegistryMsg>, client_id: &str) {
        let Some(mut l) = self.sessions.remove(client_id) else {
            return;
        };
        l.answer_confirms(false);
        let earlier = self.ending_of(client_id);
        let (done, ending) = tokio::sync::watch::channel(false);
        // Releases that waited for its claim: answered once it has ended.
        for reply in l.releases.drain(..) {
            let ending = ending.clone();
            tokio::spawn(async move {
                until_ended(ending).await;
                let _ = reply.send(());
            });
        }
        self.ending.insert(client_id.to_string(), (l.id, ending));
        let (me, client_id, id) = (me.clone(), client_id.to_string(), l.id);
        tokio::spawn(async move {
            if let Some(earlier) = earlier {
                until_ended(earlier).await;
            }
            end_taken_over(&l.session).await;
            let _ = done.send(true);
            let _ = me.cast(RegistryMsg::EndDone { client_id, id });
        });
    }

    /// Another node took the client over and asks this node to let go: the local session ends if another
    /// node holds the client now, and the answer goes once it has ended (off the registry: also when the
    /// applied take reached the registry first and the end is already under way). While an open for the
    /// client is under way here, the release waits for it.
    fn release(&mut self, me: &ActorRef<RegistryMsg>, client_id: &str, reply: RpcReplyPort<()>) {
        if let Some(o) = self.opening.get_mut(client_id) {
            o.releases.push(reply);
            return;
        }
        let lost = match (&self.ctx.store, self.sessions.get_mut(client_id)) {
            (Some(store), Some(l)) => lost_to_another(store, client_id, l),
            _ => false,
        };
        if lost {
            self.taken_elsewhere(me, client_id);
        }
        if let Some(l) = self.sessions.get_mut(client_id).filter(|l| l.pending) {
            l.releases.push(reply);
            self.deferred.insert(client_id.to_string());
            return;
        }
        match self.ending_of(client_id) {
            Some(ending) => {
                tokio::spawn(async move {
                    until_ended(ending).await;
                    let _ = reply.send(());
                });
            }
            None => {
                let _ = reply.send(());
            }
        }
    }

    /// This node's claim for the client is decided (committed, or failed): claims of other nodes it let pass
    /// while pending count now (one newer than this session's takes it over); else the confirms waiting
    /// for the claim learn the client is held here.
    fn claim_decided(&mut self, me: &ActorRef<RegistryMsg>, client_id: &str) {
        let me_id = self.ctx.store.as_ref().map_or(0, |st| st.node_id());
        let owner = self.ctx.store.as_ref().and_then(|st| st.owner(client_id));
        let Some(l) = self.sessions.get_mut(client_id) else {
            return;
        };
        l.pending = false;
        if owner.is_some_and(|o| o.node != me_id && o.epoch > l.epoch) {
            self.taken_elsewhere(me, client_id);
        } else {
            l.answer_confirms(true);
        }
    }

    /// Releases held until a pending claim was decided: handled now for every client whose claim is.
    fn flush_releases(&mut self, me: &ActorRef<RegistryMsg>) {
        if self.deferred.is_empty() {
            return;
        }
        let decided: Vec<String> = self
            .deferred
            .iter()
            .filter(|id| self.sessions.get(*id).is_none_or(|l| !l.pending))
            .cloned()
            .collect();
        for client_id in decided {
            self.deferred.remove(&client_id);
            let replies = self
                .sessions
                .get_mut(&client_id)
                .map(|l| std::mem::take(&mut l.releases))
                .unwrap_or_default();
            for reply in replies {
                self.release(me, &client_id, reply);
            }
        }
    }

    /// The end under way of the client's session another node took, if it has not ended yet.
    fn ending_of(&self, client_id: &str) -> Option<Ending> {
        self.ending
            .get(client_id)
            .map(|(_, e)| e.clone())
            // Ended, or its task is gone (then nothing is left to wait for).
            .filter(|e| !*e.borrow() && e.has_changed().is_ok())
    }
}
