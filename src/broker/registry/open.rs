//! How the registry opens a session for a connecting client, without waiting on the network itself.
//!
//! What an open has to wait for (a session here that is still ending, a resume's take: a read barrier and
//! a commit) runs in a task of its own, and the registry handles the outcome as a message
//! ([`RegistryMsg::Prepared`], [`RegistryMsg::OpenNext`]). So a node taking over hundreds of clients after
//! a failure takes them side by side (their commits batched by raft), and the registry keeps answering
//! claims, confirms and releases meanwhile. Per client id, opens (and releases) still happen one at a
//! time, in the order they came: a client's later connect waits in [`Opening`] for the one before.

use super::{OpenRefused, Opened, RegistryMsg, RegistryState};
use crate::broker::session::{Restored, Session, SessionArgs};
use crate::broker::Context;
use crate::store::{SessionRecord, Store};
use ractor::{Actor, ActorRef, RpcReplyPort};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Where a connect's answer goes.
pub type OpenReply = RpcReplyPort<Result<Opened, OpenRefused>>;

/// A client id whose open is under way off the registry: what came for it meanwhile waits here.
#[derive(Default)]
pub(super) struct Opening {
    /// Later connects of the client, in the order they came.
    opens: VecDeque<(bool, OpenReply)>,
    /// Another node's `Release`s: answered once the open under way is done (it may start a session that
    /// the other node's take, later in the log, ends).
    pub(super) releases: Vec<RpcReplyPort<()>>,
    /// The newest epoch of another node's claim applied while the take was under way (the registry had
    /// no session to end for it): a take with an older epoch lost.
    pub(super) overtaken: u64,
}

/// A session to start, as prepared off the registry.
pub struct Prepared {
    /// This node's claim for the client (0: none was needed).
    token: u64,
    /// A clean start's claim is still on its way.
    pending: bool,
    /// The epoch of the take that moved the session here.
    epoch: u64,
    restored: Option<Restored>,
    claimed: Option<tokio::sync::oneshot::Receiver<ClaimDecided>>,
    elsewhere: Option<u64>,
}

/// What became of a clean start's claim, for its connection (see [`Opened::claimed`]).
#[derive(Default)]
pub struct ClaimDecided {
    /// The claim failed: the message to send the registry once the CONNACK is out.
    pub failed: Option<RegistryMsg>,
    /// The node that held the client right before the committed claim, in log order (not this node):
    /// the node whose connection the claim closes, which the CONNACK waits for.
    pub previous: Option<u64>,
}

impl RegistryState {
    /// A connect for `client_id`: answered here when no wait is needed (a session to resume on this node,
    /// a clean start, one node); otherwise the wait runs in a task and the answer follows its message.
    pub(super) async fn open(
        &mut self,
        me: &ActorRef<RegistryMsg>,
        client_id: String,
        clean_start: bool,
        reply: OpenReply,
    ) {
        if let Some(o) = self.opening.get_mut(&client_id) {
            o.opens.push_back((clean_start, reply));
            return;
        }
        if self.shutting_down {
            let _ = reply.send(Err(OpenRefused::ShuttingDown));
            return;
        }
        // A session here that another node took (or a clean start replaced) is still ending: this connect
        // waits for its end (bounded by the session's takeover wait), so the old connection is gone before
        // the new one is served, and whatever the old one still had to propose is in the log first.
        if let Some(ending) = self.ending_of(&client_id) {
            let mut opening = Opening::default();
            opening.opens.push_back((clean_start, reply));
            self.opening.insert(client_id.clone(), opening);
            let me = me.clone();
            tokio::spawn(async move {
                super::until_ended(ending).await;
                let _ = me.cast(RegistryMsg::OpenNext { client_id });
            });
            return;
        }
        let store = self.ctx.store.clone().filter(|s| s.clustered());
        if let Some(l) = self.sessions.get(&client_id) {
            // Resumed here, unless another node claimed the client since (a claim this registry missed):
            // then the session is taken over from the store like any other.
            let still_owner = store.as_ref().is_none_or(|st| {
                l.pending || st.owner(&client_id).is_none_or(|o| o.node == st.node_id())
            });
            // A session with expiry 0 ends with its connection [MQTT-3.1.2-6]: even while that connection is
            // still open, or its end is still on the way, it is not resumed (session present 0, no
            // subscriptions) but replaced, as on a clean start.
            let ends = l.ends.load(Ordering::Acquire);
            if !clean_start && still_owner && !ends {
                let _ = reply.send(Ok(Opened {
                    session: l.session.clone(),
                    id: l.id,
                    claimed: None,
                    elsewhere: None,
                    releasing: None,
                }));
                return;
            }
            // Clean start: the old session (and its connection, 0x8E) goes [MQTT-3.1.2-4]. Its successor
            // starts only once it has ended (above, on the way back here).
            self.end_in_background(me, &client_id);
            return Box::pin(self.open(me, client_id, clean_start, reply)).await;
        }
        let Some(store) = store else {
            let prepared = Prepared {
                token: 0,
                pending: false,
                epoch: 0,
                restored: None,
                claimed: None,
                elsewhere: None,
            };
            let _ = reply.send(self.start(me, client_id, prepared).await);
            return;
        };
        let token = claim_token(&self.ctx);
        if clean_start {
            // The claim closes the client's connection on any other node; this connect does not wait for
            // it (a clean session works on a node without a leader too). The connection learns from the
            // committed claim which node held the client before it (see `ClaimDecided::previous`).
            let (done, wait) = tokio::sync::oneshot::channel();
            tokio::spawn(claim_until_decided(
                store,
                me.clone(),
                client_id.clone(),
                token,
                done,
            ));
            let prepared = Prepared {
                token,
                pending: true,
                epoch: 0,
                restored: None,
                claimed: Some(wait),
                elsewhere: None,
            };
            let _ = reply.send(self.start(me, client_id, prepared).await);
            return;
        }
        // Resuming: whatever session the cluster stores for the client moves here, in a task.
        self.opening.insert(client_id.clone(), Opening::default());
        let me = me.clone();
        tokio::spawn(async move {
            // Run as a task of its own: a panic in it still answers the connect (and frees the client id).
            let id = client_id.clone();
            let prepared = tokio::spawn(async move { take(&store, &id, token).await })
                .await
                .unwrap_or(Err(OpenRefused::Unfinished));
            // A registry that is gone drops the reply with the message: the connection is refused.
            let _ = me.cast(RegistryMsg::Prepared {
                client_id,
                prepared,
                reply,
            });
        });
    }

    /// A resume's take is done: the session starts (unless another node took the client since, or the
    /// node is shutting down), then the client's next open or releases that waited for it.
    pub(super) async fn prepared(
        &mut self,
        me: &ActorRef<RegistryMsg>,
        client_id: String,
        prepared: Result<Prepared, OpenRefused>,
        reply: OpenReply,
    ) {
        let overtaken = self.opening.get(&client_id).map_or(0, |o| o.overtaken);
        let taken_since = |p: &Prepared| {
            overtaken > p.epoch
                || self.ctx.store.as_ref().is_some_and(|st| {
                    st.owner(&client_id)
                        .is_some_and(|o| o.node != st.node_id() && o.epoch > p.epoch)
                })
        };
        let result = match prepared {
            Err(e) => Err(e),
            Ok(_) if self.shutting_down => Err(OpenRefused::ShuttingDown),
            // Another node's claim or take applied after this one, while no session here could be ended
            // for it: this one lost. Its take did commit, naming the node that held the client before: this
            // node still waits (in the background) for that node to let go, so that its answer to the newer
            // owner's release covers it (see `remote::releases`).
            Ok(p) if taken_since(&p) => {
                if let (Some(node), Some(remote)) = (p.elsewhere, self.ctx.remote.clone()) {
                    let waiting = remote.releases().begin(&client_id, Some(node));
                    let id = client_id.clone();
                    tokio::spawn(async move {
                        remote
                            .release_on(node, &id, remote.takeover_wait(), Some(waiting))
                            .await
                    });
                }
                Err(OpenRefused::Moved)
            }
            Ok(p) => self.start(me, client_id.clone(), p).await,
        };
        let _ = reply.send(result);
        self.open_next(me, &client_id).await;
    }

    /// The open under way for `client_id` is done (or the session it waited for has ended): the releases
    /// that waited are answered and the client's next connect goes on.
    pub(super) async fn open_next(&mut self, me: &ActorRef<RegistryMsg>, client_id: &str) {
        let Some(o) = self.opening.remove(client_id) else {
            return;
        };
        for reply in o.releases {
            self.release(me, client_id, reply);
        }
        let mut queue = o.opens;
        while let Some((clean_start, reply)) = queue.pop_front() {
            self.open(me, client_id.to_string(), clean_start, reply)
                .await;
            if let Some(o) = self.opening.get_mut(client_id) {
                o.opens.extend(queue.drain(..));
                return;
            }
        }
    }

    /// Starts the session a connect gets.
    async fn start(
        &mut self,
        me: &ActorRef<RegistryMsg>,
        client_id: String,
        p: Prepared,
    ) -> Result<Opened, OpenRefused> {
        let id = self.ctx.next_session_id.fetch_add(1, Ordering::Relaxed);
        let ends = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let args = SessionArgs {
            ctx: self.ctx.clone(),
            client_id: client_id.clone(),
            id,
            restored: p.restored,
            ends_with_connection: ends.clone(),
        };
        let (session, _) = Actor::spawn_linked(None, Session, args, me.get_cell())
            .await
            .map_err(|e| OpenRefused::Spawn(Arc::new(e)))?;
        // A connect that will wait for the previous holder: its wait counts from now.
        let releasing = (p.claimed.is_some() || p.elsewhere.is_some())
            .then(|| self.ctx.remote.as_ref())
            .flatten()
            .map(|r| r.releases().begin(&client_id, p.elsewhere));
        self.sessions.insert(
            client_id,
            super::Local {
                id,
                session: session.clone(),
                token: p.token,
                pending: p.pending,
                epoch: p.epoch,
                ends,
                confirms: Vec::new(),
                releases: Vec::new(),
            },
        );
        Ok(Opened {
            session,
            id,
            claimed: p.claimed,
            elsewhere: p.elsewhere,
            releasing,
        })
    }
}

/// A resume's take: whatever session the cluster stores for the client moves to this node. The take's
/// apply says which node held the client right before it (in log order, however far this node lagged):
/// the node whose connection the take closes, which the CONNACK waits for.
async fn take(store: &Arc<Store>, client_id: &str, token: u64) -> Result<Prepared, OpenRefused> {
    let taken = async {
        let seen = store.fresh_owner_epoch(client_id).await?;
        store.take_session(client_id, token, seen).await
    };
    let (incarnation, claim) = taken.await.map_err(|e| {
        tracing::warn!(client_id, error = %e, "session takeover not committed");
        OpenRefused::Takeover(e)
    })?;
    let mut restored = None;
    if let Some(incarnation) = incarnation {
        // Read right after the take applied here; another node's take since then wins.
        let rec = store
            .session(client_id)
            .filter(|r| r.incarnation == incarnation)
            .ok_or(OpenRefused::Moved)?;
        restored = restore(store, client_id, rec);
        if restored.is_some() {
            tracing::info!(
                client_id,
                incarnation,
                "session taken over from another node"
            );
        }
    }
    Ok(Prepared {
        token,
        pending: false,
        epoch: claim.epoch,
        restored,
        claimed: None,
        elsewhere: claim.previous,
    })
}

/// A token naming one claim: per-process random state and a counter (no clock).
fn claim_token(ctx: &Context) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(ctx.next_session_id.load(Ordering::Relaxed));
    h.finish() | 1
}

/// What a stored session needs to start again (offline, with its subscriptions); `None` (and its deletion
/// proposed) when it expired while nobody held it.
pub(super) fn restore(store: &Store, client_id: &str, rec: SessionRecord) -> Option<Restored> {
    let now = crate::store::unix_now();
    let elapsed = match rec.offline_since {
        0 => 0, // connected when its node stopped: offline from now
        t => now.saturating_sub(t),
    };
    let remaining = if rec.expiry == u32::MAX {
        u32::MAX
    } else if elapsed >= u64::from(rec.expiry) {
        let commit = store.delete_session(client_id, rec.incarnation);
        store.in_background("delete_session", client_id, commit);
        return None;
    } else {
        rec.expiry - elapsed as u32
    };
    Some(Restored {
        incarnation: rec.incarnation,
        inbox: store.inbox_summary(client_id, rec.incarnation),
        expiry: rec.expiry,
        remaining,
        inbound_qos2: store.qos2_ids(client_id),
        subscriptions: rec.subscriptions,
    })
}

/// Attempts a clean start's claim may take while there is no leader (one a second): once a leader is back
/// the claim commits and any other node's connection for the client goes, or a newer claim made this one
/// stale and this node's connection goes.
const CLAIM_ATTEMPTS: u32 = 60;

/// Claims the client for this node. The first attempt's outcome goes to the connection (`first`), which
/// waits for it before its CONNACK and reports a stale claim once the CONNACK is out. Without a leader the
/// claim is tried again (with the owner epoch first read, so a claim another node committed meanwhile makes
/// this one stale rather than this one ending a newer connection).
async fn claim_until_decided(
    store: Arc<Store>,
    registry: ActorRef<RegistryMsg>,
    client_id: String,
    token: u64,
    first: tokio::sync::oneshot::Sender<ClaimDecided>,
) {
    use crate::store::CommitError;
    let mut first = Some(first);
    let mut seen = None;
    for attempt in 0..CLAIM_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
        let result = async {
            let s = match seen {
                Some(s) => s,
                None => *seen.insert(store.fresh_owner_epoch(&client_id).await?),
            };
            store.claim(&client_id, token, s).await
        }
        .await;
        let failed = || RegistryMsg::ClaimFailed {
            client_id: client_id.clone(),
            token,
        };
        match result {
            Ok(claim) => {
                let _ = registry.cast(RegistryMsg::Claimed {
                    client_id: client_id.clone(),
                    token,
                    epoch: claim.epoch,
                });
                if let Some(f) = first.take() {
                    let _ = f.send(ClaimDecided {
                        failed: None,
                        previous: claim.previous,
                    });
                }
                return;
            }
            // Stale: a newer claim won. The connection (or this task, once it is gone) tells the registry.
            Err(CommitError::ClaimSuperseded) => {
                let msg = match first.take() {
                    Some(f) => f
                        .send(ClaimDecided {
                            failed: Some(failed()),
                            previous: None,
                        })
                        .err()
                        .and_then(|d| d.failed),
                    None => Some(failed()),
                };
                if let Some(msg) = msg {
                    let _ = registry.cast(msg);
                }
                return;
            }
            Err(e) => {
                tracing::debug!(client_id, attempt, error = %e, "claim not committed; trying again");
                // The client is served meanwhile (as on a node without a leader).
                if let Some(f) = first.take() {
                    let _ = f.send(ClaimDecided::default());
                }
            }
        }
    }
    tracing::warn!(
        client_id,
        "claim never committed: the client stays served here unclaimed"
    );
    let _ = registry.cast(RegistryMsg::ClaimFailed { client_id, token });
}
