//! The Registry actor: client id → Session. The one place that decides which session a connecting client
//! gets: the existing one (resumed, its old connection taken over) or a new one (clean start discards it).

use super::message::SessionId;
use super::session::{Restored, Session, SessionArgs, SessionMsg};
use super::Context;
use crate::protocol::ReasonCode;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The session a connection is to attach to.
pub struct Opened {
    pub session: ActorRef<SessionMsg>,
    pub id: SessionId,
}

pub enum RegistryMsg {
    Open {
        client_id: String,
        clean_start: bool,
        reply: RpcReplyPort<Result<Opened, String>>,
    },
    /// A session ended (expired, clean disconnect, discarded).
    Ended { client_id: String, id: SessionId },
    /// Close every connection with this reason and wait until each session has sent it.
    Shutdown(ReasonCode, RpcReplyPort<()>),
}

pub struct Registry;

pub struct RegistryState {
    ctx: Arc<Context>,
    sessions: HashMap<String, (SessionId, ActorRef<SessionMsg>)>,
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
        // Persistent sessions the store kept: back as offline sessions with their subscriptions, unless
        // they expired while the broker was down.
        if let Some(store) = &ctx.store {
            let now = crate::store::unix_now();
            let mut restored = 0;
            for (client_id, rec) in store.sessions() {
                let elapsed = match rec.offline_since {
                    0 => 0, // connected when the broker stopped: offline from now
                    t => now.saturating_sub(t),
                };
                let remaining = if rec.expiry == u32::MAX {
                    u32::MAX
                } else if elapsed >= u64::from(rec.expiry) {
                    let commit = store.delete_session(&client_id, rec.incarnation);
                    store.in_background("delete_session", &client_id, commit);
                    continue;
                } else {
                    rec.expiry - elapsed as u32
                };
                let id = ctx.next_session_id.fetch_add(1, Ordering::Relaxed);
                let args = SessionArgs {
                    ctx: ctx.clone(),
                    client_id: client_id.clone(),
                    id,
                    restored: Some(Restored {
                        incarnation: rec.incarnation,
                        inbox: store.inbox_summary(&client_id, rec.incarnation),
                        expiry: rec.expiry,
                        remaining,
                        inbound_qos2: store.qos2_ids(&client_id),
                        subscriptions: rec.subscriptions,
                    }),
                };
                let (session, _) = Actor::spawn_linked(None, Session, args, me.get_cell()).await?;
                sessions.insert(client_id, (id, session));
                restored += 1;
            }
            if restored > 0 {
                tracing::info!(
                    sessions = restored,
                    "persistent sessions restored from the store"
                );
            }
        }
        Ok(RegistryState { ctx, sessions })
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
            } => {
                if let Some((id, session)) = s.sessions.get(&client_id) {
                    if !clean_start {
                        let _ = reply.send(Ok(Opened {
                            session: session.clone(),
                            id: *id,
                        }));
                        return Ok(());
                    }
                    // Clean start: the old session (and its connection, 0x8E) goes [MQTT-3.1.2-4]. Its
                    // successor starts only once it has ended: whatever it still had to propose (a create
                    // its own connect asked for, its delete) is in the log before the successor's create,
                    // so apply, which ignores commands of any incarnation but the stored one, never lets
                    // the old life undo the new.
                    let _ = session
                        .call(
                            |port| SessionMsg::Discard(ReasonCode::SESSION_TAKEN_OVER, Some(port)),
                            None,
                        )
                        .await;
                    s.sessions.remove(&client_id);
                }
                let id = s.ctx.next_session_id.fetch_add(1, Ordering::Relaxed);
                let args = SessionArgs {
                    ctx: s.ctx.clone(),
                    client_id: client_id.clone(),
                    id,
                    restored: None,
                };
                match Actor::spawn_linked(None, Session, args, me.get_cell()).await {
                    Ok((session, _)) => {
                        s.sessions.insert(client_id, (id, session.clone()));
                        let _ = reply.send(Ok(Opened { session, id }));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(format!("cannot start a session: {e}")));
                    }
                }
            }
            RegistryMsg::Ended { client_id, id } => {
                if s.sessions
                    .get(&client_id)
                    .is_some_and(|(current, _)| *current == id)
                {
                    s.sessions.remove(&client_id);
                }
            }
            RegistryMsg::Shutdown(reason, done) => {
                for (_, session) in s.sessions.values() {
                    let _ = session
                        .call(|port| SessionMsg::Shutdown(reason, port), None)
                        .await;
                }
                let _ = done.send(());
            }
        }
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
            s.sessions.retain(|_, (_, r)| r.get_id() != cell.get_id());
        }
        Ok(())
    }
}
