//! The broker of one node, as actors (ARCHITECTURE.md section 2).
//!
//! # Layout
//! - [`listener`]: accept loops; each socket becomes a connection.
//! - [`connection`]: a connection's read task (decoding, keep-alive, topic aliases, inbound QoS 2, flow
//!   control) and [`writer`] its write task (batched writes, outbound topic aliases).
//! - [`session`]: the Session actor and its pure outbox; [`registry`]: client id → session, takeover.
//! - [`shard`]: TopicShard actors over the pure [`routes`] (on the pure [`trie`]); [`retained`]: the
//!   retained-message store.
//! - [`metrics`], [`sys`] (`$SYS/broker/...`), and the shutdown sequence in [`Broker::shutdown`].

pub mod acks;
pub mod conn;
pub mod connection;
pub mod drain;
pub mod failover;
pub mod held;
pub mod inbound;
pub mod listener;
pub mod message;
pub mod metrics;
pub mod proxy;
pub mod ratelimit;
pub mod registry;
pub mod remote;
pub mod retained;
pub mod routes;
pub mod session;
pub mod shard;
pub mod sys;
pub mod ticket;
pub mod tls;
pub mod trie;
pub mod writer;

use crate::auth::{Auth, AuthError};
use crate::config::Config;
use crate::protocol::{topic, ReasonCode};
use crate::store::Store;
use message::Message;
use metrics::Metrics;
use ractor::{Actor, ActorRef};
use registry::{Registry, RegistryMsg};
use retained::RetainedStore;
use shard::{ShardMsg, TopicShard};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;
use thiserror::Error;
use ticket::{AckGate, Ticket};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What every actor and task of the broker shares.
pub struct Context {
    pub config: Arc<Config>,
    pub metrics: Arc<Metrics>,
    pub retained: Arc<dyn RetainedStore>,
    /// The replicated store (`None` only in tests that run without one).
    pub store: Option<Arc<Store>>,
    /// Routing across the cluster's nodes (`None` only without a store).
    pub remote: Option<Arc<remote::RemoteLink>>,
    pub shards: Vec<ActorRef<ShardMsg>>,
    pub registry: OnceLock<ActorRef<RegistryMsg>>,
    pub next_session_id: AtomicU64,
    pub next_conn_id: AtomicU64,
    /// Sessions whose QoS 1/2 copies go to the store; while there are none, a publisher's PUBACK need not
    /// wait for routing.
    pub durable_sessions: AtomicUsize,
    /// Connections past CONNACK (the `max_connections` limit).
    pub connections: AtomicUsize,
    /// Bytes queued in all sessions (the memory watermark).
    pub queued_bytes: AtomicI64,
    /// Woken when `queued_bytes` falls back under the watermark.
    pub below_watermark: Notify,
    pub shutdown: CancellationToken,
    /// Draining (SIGTERM, `cicada ctl drain`): `/ready` answers 503 so load balancers send no new clients
    /// while leadership is handed over and clients are told to go.
    pub draining: std::sync::atomic::AtomicBool,
    /// Asked to drain through the admin API: `cicada serve` stops as on SIGTERM.
    pub drain_requested: Notify,
    pub started: Instant,
    /// Every distinct auth configuration in force (one per listener, shared when equal), for SIGHUP.
    pub auths: Vec<Arc<Auth>>,
    /// The TLS acceptors of tls listeners, for SIGHUP.
    pub tls: Vec<Arc<tls::Tls>>,
}

impl Context {
    /// The shard of a topic name.
    pub fn shard_for(&self, topic_name: &str) -> &ActorRef<ShardMsg> {
        &self.shards[shard::shard_of(topic_name, self.shards.len())]
    }

    /// The shards a (plain) filter is installed in: all for a wildcard filter, else the one its name hashes to.
    pub fn shards_for_filter(&self, filter: &str) -> Vec<&ActorRef<ShardMsg>> {
        if topic::has_wildcards(filter) {
            self.shards.iter().collect()
        } else {
            vec![self.shard_for(filter)]
        }
    }

    /// Routes a message: the retained store first (set, or clear on an empty payload), then the shard of its
    /// topic. A retained message is routed once its change is applied here, so no subscriber gets a live
    /// copy while the index still misses it [MQTT-3.3.1-5]. The ticket's credit returns to the publisher's
    /// connection once every copy is queued.
    pub fn route(self: &Arc<Self>, message: Arc<Message>, ticket: Ticket) {
        if message.retain {
            match self
                .store
                .as_ref()
                .filter(|_| !message.topic.starts_with("$SYS"))
            {
                // The broker's own retained messages (Wills, ...): committed, then routed, in the background.
                Some(store) => {
                    let commit = self.commit_retained(store, &message, None);
                    let ctx = self.clone();
                    tokio::spawn(async move {
                        commit.await;
                        ctx.route_committed(message, ticket);
                    });
                    return;
                }
                None => {
                    if message.payload.is_empty() {
                        self.retained.clear(&message.topic);
                    } else {
                        self.retained.set(message.clone());
                    }
                }
            }
        }
        self.route_committed(message, ticket);
    }

    /// Queues a retained message's change (commits keep call order); the future ends once it is applied on
    /// this node, or has failed: then `gate` (a publisher's acknowledgement) fails, and the live copies still
    /// go. Nothing is committed unless the future is polled or dropped after this call: the proposal is queued
    /// here.
    pub fn commit_retained(
        &self,
        store: &Store,
        message: &Arc<Message>,
        gate: Option<Arc<AckGate>>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let commit = store.retain(message);
        let (m, metrics) = (message.clone(), self.metrics.clone());
        async move {
            if let Err(e) = commit.await {
                metrics
                    .dropped
                    .with_label_values(&["store_unavailable"])
                    .inc();
                tracing::warn!(topic = %m.topic, error = %e, "retained message not stored");
                if let Some(g) = gate {
                    g.fail();
                }
            }
        }
    }

    /// Whether a message needs its fan-out to persistent sessions through the store (see
    /// [`Store::publish`]): QoS 1/2 and a persistent session's subscription matches, as applied here.
    pub fn needs_fanout(&self, message: &Message) -> bool {
        self.store
            .as_ref()
            .is_some_and(|s| s.persistent_match(&message.topic, message.qos))
    }

    /// Proposes the message's fan-out to the persistent sessions' inboxes (queued now: a publisher's
    /// messages commit in publish order) and waits for it in the background, holding the publisher's ticket:
    /// its credit returns once applied (so a publisher cannot outrun the store), and its gate (the
    /// acknowledgement) counts the copies stored and refused, and fails when the store cannot commit.
    pub fn fan_out(&self, message: &Arc<Message>, publisher: Option<&str>, ticket: Ticket) {
        let Some(store) = &self.store else {
            return;
        };
        let (max_messages, max_bytes) = self.config.limits.stored_quota();
        let commit = store.publish(message, publisher, max_messages, max_bytes);
        let (metrics, topic) = (self.metrics.clone(), message.topic.clone());
        tokio::spawn(async move {
            match commit.await {
                Ok(p) => {
                    metrics.inbox_appended.inc_by(u64::from(p.stored));
                    if p.refused > 0 {
                        metrics
                            .dropped
                            .with_label_values(&["quota_exceeded"])
                            .inc_by(u64::from(p.refused));
                        tracing::debug!(%topic, sessions = p.refused, "persistent sessions' stored quota full: message refused");
                    }
                    if let Some(g) = &ticket.gate {
                        g.add_copies((p.stored + p.refused) as usize);
                        for _ in 0..p.refused {
                            g.refuse_quota();
                        }
                    }
                }
                Err(e) => {
                    metrics.inbox_failed.inc();
                    metrics
                        .dropped
                        .with_label_values(&["store_unavailable"])
                        .inc();
                    tracing::warn!(%topic, error = %e, "message for persistent sessions not stored");
                    if let Some(g) = &ticket.gate {
                        g.fail();
                    }
                }
            }
        });
    }

    /// A Will the cluster fired (its node is down), as this node's apply hands it over: for this node's
    /// subscribers only (every node's apply does the same), and the shared groups apply chose this node for
    /// (one node per group, so one member cluster-wide gets it); persistent sessions' plain subscriptions
    /// have their copies from apply.
    pub fn route_fired_will(&self, m: Arc<Message>, groups: Vec<remote::GroupRef>) {
        self.metrics
            .messages_received
            .with_label_values(&[metrics::Metrics::qos_label(m.qos)])
            .inc();
        let _ = self
            .shard_for(&m.topic)
            .cast(ShardMsg::Forwarded(m, groups, Ticket::default()));
    }

    /// Routes a message whose retained part (if any) the caller already handed to the store.
    pub fn route_committed(&self, message: Arc<Message>, ticket: Ticket) {
        let _ = self
            .shard_for(&message.topic)
            .cast(ShardMsg::Publish(message, ticket));
    }

    /// Adds to the node-wide queued bytes, waking paused readers when it falls under the watermark.
    pub fn adjust_queued_bytes(&self, delta: i64) {
        let after = self.queued_bytes.fetch_add(delta, Ordering::AcqRel) + delta;
        if delta < 0 && !self.over_watermark_at(after) {
            self.below_watermark.notify_waiters();
        }
    }

    fn over_watermark_at(&self, bytes: i64) -> bool {
        let w = self.config.limits.memory_watermark;
        w != 0 && bytes > w as i64
    }

    /// Whether the node holds more queued bytes than its watermark.
    pub fn over_watermark(&self) -> bool {
        self.over_watermark_at(self.queued_bytes.load(Ordering::Acquire))
    }
}

/// Why the broker could not start.
#[derive(Debug, Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot open the store: {0}")]
    Store(#[from] crate::store::OpenError),
    /// The cluster link's metrics could not be registered.
    #[error("cannot register the cluster link's metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot start the {actor} actor: {source}")]
    Actor {
        actor: &'static str,
        source: ractor::SpawnErr,
    },
    #[error(transparent)]
    Cluster(#[from] crate::config::ClusterConfigError),
    #[error("http.token_file {path}: cannot read: {source}")]
    AdminToken {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// A running broker.
pub struct Broker {
    pub ctx: Arc<Context>,
    /// Where each MQTT listener is bound (port 0 in the config becomes the real port here).
    pub mqtt_addrs: Vec<SocketAddr>,
    pub http_addr: SocketAddr,
    tasks: TaskTracker,
    registry: ActorRef<RegistryMsg>,
}

impl Broker {
    /// Binds every listener (before spawning anything, so a busy port fails fast) and starts the actors.
    pub async fn start(config: Config) -> Result<Broker, StartError> {
        let config = Arc::new(config);
        // Password and ACL files are read before any port is bound: a bad file stops the start.
        let mut auths: Vec<Arc<Auth>> = Vec::new();
        let mut listener_auth = Vec::new();
        for l in &config.listeners {
            let wanted = config.auth_for(l);
            let auth = match auths.iter().find(|a| a.config == wanted) {
                Some(a) => a.clone(),
                None => {
                    let a = Arc::new(Auth::load(wanted)?);
                    auths.push(a.clone());
                    a
                }
            };
            listener_auth.push(auth);
        }
        let mut listener_tls = Vec::new();
        for l in &config.listeners {
            listener_tls.push(match (l.kind.is_tls(), &l.tls) {
                (true, Some(t)) => Some(Arc::new(tls::Tls::load(t.clone())?)),
                _ => None,
            });
        }
        let all_tls: Vec<Arc<tls::Tls>> = listener_tls.iter().flatten().cloned().collect();
        // The cluster's secret and peer certificates are read before any port is bound.
        let cluster_config = crate::store::cluster_config(&config)?;
        // HTTP first: once an MQTT port accepts, `/health` and `/metrics` do too (tests and health checks
        // that wait for the MQTT port rely on it).
        let http = tokio::net::TcpListener::bind(&config.http.bind)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.http.bind.clone(),
                source,
            })?;
        let mut listeners = Vec::new();
        for l in &config.listeners {
            let sock = tokio::net::TcpListener::bind(&l.bind)
                .await
                .map_err(|source| StartError::Bind {
                    addr: l.bind.clone(),
                    source,
                })?;
            listeners.push((sock, l.clone()));
        }
        let metrics = Arc::new(Metrics::new());
        let admin_token: Option<Arc<str>> = config
            .http
            .admin_token()
            .map_err(|source| StartError::AdminToken {
                path: config.http.token_file.clone().unwrap_or_default(),
                source,
            })?
            .map(Into::into);
        let store = Arc::new(Store::open(cluster_config, &metrics.registry).await?);
        metrics.retained.set(store.retained.len() as i64);
        let link = remote::RemoteLink::new(store.clone(), &metrics.registry)?;
        let shutdown = CancellationToken::new();
        // Shards only count drops: they start before the context that holds them.
        let mut shards = Vec::new();
        for _ in 0..config.shard_count() {
            let (shard, _) = Actor::spawn(None, TopicShard, (metrics.clone(), Some(link.clone())))
                .await
                .map_err(|source| StartError::Actor {
                    actor: "topic shard",
                    source,
                })?;
            shards.push(shard);
        }
        let ctx = Arc::new(Context {
            config: config.clone(),
            metrics,
            retained: store.retained.clone(),
            store: Some(store),
            remote: Some(link.clone()),
            shards,
            registry: OnceLock::new(),
            next_session_id: AtomicU64::new(1),
            next_conn_id: AtomicU64::new(1),
            connections: AtomicUsize::new(0),
            durable_sessions: AtomicUsize::new(0),
            queued_bytes: AtomicI64::new(0),
            below_watermark: Notify::new(),
            shutdown,
            draining: std::sync::atomic::AtomicBool::new(false),
            drain_requested: Notify::new(),
            started: Instant::now(),
            auths,
            tls: all_tls,
        });
        let (registry, _) = Actor::spawn(None, Registry, ctx.clone())
            .await
            .map_err(|source| StartError::Actor {
                actor: "registry",
                source,
            })?;
        let _ = ctx.registry.set(registry.clone());

        let tasks = TaskTracker::new();
        if let Some(store) = ctx.store.clone() {
            // Wills the cluster fires: every node's apply hands them to its own subscribers.
            let weak = Arc::downgrade(&ctx);
            store.will_router.set(Box::new(move |m, groups| {
                if let Some(ctx) = weak.upgrade() {
                    ctx.route_fired_will(m, groups);
                }
            }));
            // The Wills this node's previous process left recorded fire before any client connects here.
            failover::fire_own_wills(&ctx, &store).await;
            let threshold = std::time::Duration::from_millis(
                config
                    .cluster
                    .as_ref()
                    .map_or(5_000, |c| c.failure_detection_ms),
            );
            let shutdown = ctx.shutdown.clone();
            let run = failover::run(ctx.clone(), store, threshold);
            tasks.spawn(async move {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = run => {}
                }
            });
        }
        tasks.spawn(link.clone().reconcile(ctx.shutdown.clone()));
        tasks.spawn(link.clone().receive(ctx.clone()));
        let mut mqtt_addrs = Vec::new();
        for (((sock, l), auth), tls) in listeners.into_iter().zip(listener_auth).zip(listener_tls) {
            let addr = sock.local_addr().map_err(|source| StartError::Bind {
                addr: l.bind.clone(),
                source,
            })?;
            tracing::info!(%addr, kind = %l.kind, "listening for MQTT");
            mqtt_addrs.push(addr);
            tasks.spawn(listener::run(
                sock,
                l,
                auth,
                tls,
                ctx.clone(),
                tasks.clone(),
            ));
        }
        let http_addr = http.local_addr().map_err(|source| StartError::Bind {
            addr: config.http.bind.clone(),
            source,
        })?;
        tracing::info!(addr = %http_addr, "serving /metrics, /health, /ready");
        tasks.spawn(crate::http::serve(http, ctx.clone(), admin_token));
        if config.mqtt.sys_interval > 0 {
            tasks.spawn(sys::run(ctx.clone()));
        }
        Ok(Broker {
            ctx,
            mqtt_addrs,
            http_addr,
            tasks,
            registry,
        })
    }

    /// Re-reads every password, ACL and certificate file (SIGHUP); a file with an error keeps the old one in
    /// force. Open connections are not touched.
    pub fn reload(&self) {
        for t in &self.ctx.tls {
            match t.reload() {
                Ok(()) => tracing::info!(cert = %t.config.cert.display(), "certificates reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "certificates not reloaded; the previous ones stay in use")
                }
            }
        }
        self.reload_auth();
    }

    /// Re-reads every password and ACL file; a file with an error keeps its old rules.
    pub fn reload_auth(&self) {
        for a in &self.ctx.auths {
            match a.reload() {
                Ok(()) => {
                    tracing::info!(password_file = ?a.config.password_file, acl_file = ?a.config.acl_file, "auth files reloaded")
                }
                Err(e) => {
                    tracing::error!(error = %e, "auth files not reloaded; the previous rules stay in force")
                }
            }
        }
    }

    /// Graceful shutdown: stop accepting and being ready, tell every client (v5: 0x8B Server shutting down),
    /// let writers flush, stop the actors.
    pub async fn shutdown(self) {
        tracing::info!("shutting down");
        self.ctx.draining.store(true, Ordering::Release);
        if let Some(store) = self.ctx.store.as_ref().filter(|s| s.clustered()) {
            drain::hand_leadership_over(store).await;
        }
        self.ctx.shutdown.cancel();
        let _ = self
            .registry
            .call(
                |port| RegistryMsg::Shutdown(ReasonCode::SERVER_SHUTTING_DOWN, port),
                None,
            )
            .await;
        self.tasks.close();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), self.tasks.wait()).await;
        self.registry.stop(None);
        for s in &self.ctx.shards {
            s.stop(None);
        }
        if let Some(store) = &self.ctx.store {
            store.shutdown().await;
        }
        tracing::info!("stopped");
    }
}
