//! A connection: the CONNECT handshake, then the read loop. The reader decodes packets, enforces keep-alive
//! (1.5 × the interval [MQTT-3.1.2-24]), the maximum packet size, topic aliases and inbound QoS 2, and pauses
//! reading while its messages are still on their way through the router (credit) or the node is over its
//! memory watermark. Everything stateful goes to the Session; the socket's write half belongs to [`Writer`].

mod connect;
mod fit;
mod flow;
mod handshake;
mod linger;
mod publish;
mod settle;
mod violation;

use super::acks::AckQueue;
use super::conn::{ConnHandle, ConnShared, Outbound, ReadEnd};
use super::inbound::{InboundQos2, Qos2Id};
use super::message::{Message, Qos2Origin, SessionId};
use super::metrics::Metrics;
use super::ratelimit::{self, TokenBucket};
use super::registry::{Opened, RegistryMsg};
use super::session::{Attach, AttachRefused, AttachReply, Detach, SessionMsg};
use super::ticket::{AckGate, AckOutcome, Ticket};
use super::writer::Writer;
use super::Context;
use crate::auth::acl::Who;
use crate::auth::{Auth, Permissions};
use crate::config::ListenerConfig;
use crate::protocol::{Decoder, Packet, ProtocolVersion, PubAck, Publish, QoS, ReasonCode};
use bytes::BytesMut;
use connect::Accepted;
use handshake::{read_connect, refuse, Refusal};
use ractor::rpc::CallResult;
use ractor::ActorRef;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use violation::Violation;

/// Time a new socket has to send CONNECT.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time the writer gets to flush a last DISCONNECT when the connection ends.
const WRITER_GRACE: Duration = Duration::from_secs(5);

/// How a connection ended.
enum End {
    /// DISCONNECT from the client.
    Normal { will: bool, expiry: Option<u32> },
    /// A violation or limit: its reason goes to a v5 client in DISCONNECT.
    Violation(Violation),
    /// The socket closed or failed.
    Closed(&'static str),
    /// The session or the server closed it (takeover, shutdown, write failure).
    ClosedByServer,
}

/// Who the transport says the client is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// Nothing: CONNECT's user name and password decide.
    None,
    /// A verified client certificate's CN or DNS name: the user name, no password needed.
    Certificate(String),
    /// `use_identity_as_username` without a usable certificate: refused.
    Missing,
}

/// Serves one accepted socket until it closes.
pub async fn serve<S>(
    stream: S,
    peer: SocketAddr,
    listener: Arc<ListenerConfig>,
    auth: Arc<Auth>,
    identity: Identity,
    ctx: Arc<Context>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let span = tracing::info_span!("conn", %peer, client_id = tracing::field::Empty);
    async move {
        let (mut rd, mut wr) = tokio::io::split(stream);
        // Small to start: most connections are idle devices; the buffer grows only for large packets.
        let mut buf = BytesMut::with_capacity(512);
        let mut decoder = Decoder::new(ProtocolVersion::V311, ctx.config.limits.max_packet_size as usize);
        let connect = tokio::select! {
            r = tokio::time::timeout(CONNECT_TIMEOUT, read_connect(&mut rd, &mut buf, &mut decoder, &ctx)) => r,
            _ = ctx.shutdown.cancelled() => return,
        };
        let connect = match connect {
            Ok(Ok(c)) => c,
            Ok(Err(Refusal::Silent(why))) => {
                tracing::debug!(why, "closed before CONNECT completed");
                return;
            }
            Ok(Err(Refusal::Connack(code, version, why))) => {
                refuse(&mut wr, version, code, &ctx).await;
                tracing::info!(why, reason = code.name(), "connection refused");
                linger::discard_until_closed(&mut rd).await;
                return;
            }
            Err(_) => {
                tracing::debug!("no CONNECT in time");
                return;
            }
        };
        let version = connect.protocol;
        let open = ctx.connections.load(Ordering::Acquire);
        let assign_id = || {
            let n = ctx.next_conn_id.fetch_add(1, Ordering::Relaxed);
            format!("cicada-{:016x}", n ^ handshake::rand_seed())
        };
        match connect::negotiate(*connect, &ctx.config, &listener, open, assign_id) {
            Err(refusal) => {
                let code = refusal.reason_code();
                refuse(&mut wr, version, code, &ctx).await;
                tracing::info!(why = %refusal, reason = code.name(), "connection refused");
                linger::discard_until_closed(&mut rd).await;
            }
            Ok(mut accepted) => {
                tracing::Span::current().record("client_id", accepted.client_id.as_str());
                if let Some(max) = accepted
                    .connect
                    .properties
                    .maximum_packet_size
                    .filter(|_| accepted.connect.protocol.is_v5())
                {
                    if !fit::fit_connack(&mut accepted.connack, max) {
                        tracing::info!(max, "connection closed: even the smallest CONNACK exceeds the client's Maximum Packet Size [MQTT-3.1.2-24]");
                        return;
                    }
                }
                let checked = match identity {
                    Identity::None => {
                        let c = &accepted.connect;
                        auth.authenticate(c.username.as_deref(), c.password.as_deref())
                    }
                    Identity::Certificate(name) => {
                        // The certificate is the credential; its identity is the user name for ACLs.
                        accepted.connect.username = Some(name);
                        accepted.connect.password = None;
                        Ok(None)
                    }
                    Identity::Missing => Err(crate::auth::Refused::Anonymous),
                };
                let c = &accepted.connect;
                let grant = match checked {
                    Ok(grant) => grant,
                    Err(refused) => {
                    ctx.metrics.auth_failures.with_label_values(&[refused.label()]).inc();
                    // Slow down guessing: each failure from an address doubles the wait before the answer.
                    let delay = auth.failure_delay(peer.ip());
                    tracing::warn!(username = ?c.username, reason = refused.label(), delay_ms = delay.as_millis() as u64, "authentication failed");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = ctx.shutdown.cancelled() => {}
                    }
                    refuse(&mut wr, c.protocol, refused.reason_code(), &ctx).await;
                    linger::discard_until_closed(&mut rd).await;
                    return;
                    }
                };
                auth.succeeded(peer.ip());
                // A token's user names the client for ACLs when CONNECT carried no user name.
                let (token_rules, token_expires) = match grant {
                    Some(g) => {
                        if accepted.connect.username.is_none() {
                            accepted.connect.username = g.user;
                        }
                        ctx.metrics.jwt_logins.inc();
                        (g.rules, Some(g.expires))
                    }
                    None => (None, None),
                };
                let perms = Permissions::new(auth, token_rules);
                // Boxed: the handshake's locals are not part of the long-lived connection future, and the
                // CONNECT itself lives on the heap only until the session took what it needs.
                let input = Input { rd, buf, decoder };
                Box::pin(run(Box::new(accepted), input, wr, peer, perms, token_expires, ctx)).await;
            }
        }
    }
    .instrument(span)
    .await
}

/// How long a clean start waits for its cluster claim before its CONNACK.
const CLAIM_WAIT: Duration = Duration::from_secs(5);

/// The read side after CONNECT: the socket half, bytes already read past CONNECT, and the decoder.
struct Input<R> {
    rd: R,
    buf: BytesMut,
    decoder: Decoder,
}

/// After CONNECT: open the session, start the writer, attach, read until the end.
async fn run<R, W>(
    a: Box<Accepted>,
    input: Input<R>,
    wr: W,
    peer: SocketAddr,
    perms: Permissions,
    token_expires: Option<SystemTime>,
    ctx: Arc<Context>,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let Some(registry) = ctx.registry.get().cloned() else {
        return;
    };
    let version = a.connect.protocol;
    // The writer queue is unbounded in type only: the session keeps its sends under `WRITER_BUDGET`, and the
    // reader stops reading once the queue holds `PAUSE_READS_AT` packets (see `flow`).
    let (tx, rx) = mpsc::unbounded_channel();
    let shared = Arc::new(ConnShared::default());
    let cancel = CancellationToken::new();
    let conn_id = ctx.next_conn_id.fetch_add(1, Ordering::Relaxed);
    let cp = &a.connect.properties;
    let handle = ConnHandle {
        id: conn_id,
        version,
        tx,
        shared: shared.clone(),
        cancel: cancel.clone(),
        max_packet_size: cp
            .maximum_packet_size
            .map(|m| m as usize)
            .unwrap_or(usize::MAX),
    };
    let mut writer = Writer {
        io: wr,
        rx,
        shared,
        version,
        topic_alias_max: cp.topic_alias_maximum.unwrap_or(0),
        cancel: cancel.clone(),
        ctx: ctx.clone(),
    };
    // Opened at the registry, then attached. Once more when the session ended while it was taking this
    // connection (the connection it took over had sent DISCONNECT with Session Expiry 0): the registry has
    // forgotten it by then and opens a new one. The writer starts once a session holds the connection.
    let mut attempts = 0;
    let (session, id, claim_failed, reply) = loop {
        attempts += 1;
        let opened = registry
            .call(
                |reply| RegistryMsg::Open {
                    client_id: a.client_id.clone(),
                    clean_start: a.connect.clean_start,
                    reply,
                },
                None,
            )
            .await;
        let Ok(CallResult::Success(Ok(Opened {
            session,
            id,
            claimed,
            elsewhere,
            releasing,
        }))) = opened
        else {
            // The cluster could not take the session over (no leader, or the store failed): the client tries
            // again later or elsewhere; nothing was acknowledged.
            let why = match &opened {
                Ok(CallResult::Success(Err(e))) => e.to_string(),
                _ => "the registry did not answer".to_string(),
            };
            tracing::warn!(client_id = %a.client_id, why, "no session could be opened: refused with server unavailable");
            refuse(
                &mut writer.io,
                version,
                ReasonCode::SERVER_UNAVAILABLE,
                &ctx,
            )
            .await;
            return;
        };
        // A clean start in a cluster: its claim commits before the CONNACK. A failed one (no leader, or a
        // concurrent connect elsewhere won) is reported to the registry once the CONNACK is out: it then
        // decides whether this connection goes (0x8E) or works on here.
        let (claim_failed, elsewhere) = match claimed {
            Some(claimed) => match tokio::time::timeout(CLAIM_WAIT, claimed).await {
                Ok(Ok(decided)) => (decided.failed, decided.previous),
                _ => (None, None),
            },
            None => (None, elsewhere),
        };
        let previous = elsewhere.filter(|_| claim_failed.is_none());
        match (previous, &ctx.remote) {
            (Some(node), Some(remote)) => {
                let wait = remote.takeover_wait();
                if !remote.release_on(node, &a.client_id, wait, releasing).await {
                    tracing::debug!(
                        node,
                        "the previous owner did not confirm the takeover: its lease ran out"
                    );
                }
            }
            // Nothing to wait for: this node's answers to releases of the client need not wait either.
            _ => drop(releasing),
        }
        let attach = Attach {
            conn: handle.clone(),
            clean_start: a.connect.clean_start,
            expiry: a.expiry,
            will: a.connect.will.clone(),
            connack: a.connack.clone(),
            receive_maximum: cp.receive_maximum.unwrap_or(u16::MAX),
            perms: perms.clone(),
            username: a.connect.username.clone(),
        };
        let reply = session
            .call(|port| SessionMsg::Attach(Box::new(attach), port), None)
            .await;
        match reply {
            Ok(CallResult::Success(Ok(reply))) => break (session, id, claim_failed, reply),
            Ok(CallResult::Success(Err(AttachRefused::Ended))) if attempts < 2 => continue,
            Ok(CallResult::Success(Err(AttachRefused::Refused))) => {
                // Refused by the session (its record could not be stored): it queued the CONNACK and the
                // close; the writer sends them.
                let _ = tokio::time::timeout(WRITER_GRACE, writer.run(session)).await;
                return;
            }
            _ => {
                tracing::error!("the session did not accept the connection");
                refuse(
                    &mut writer.io,
                    version,
                    ReasonCode::SERVER_UNAVAILABLE,
                    &ctx,
                )
                .await;
                return;
            }
        }
    };
    let writer_task = tokio::spawn(writer.run(session.clone()).in_current_span());
    if let Some(failed) = claim_failed {
        let _ = registry.cast(failed);
    }
    let AttachReply {
        session_present,
        inbound_qos2,
        incarnation,
    } = reply;
    ctx.connections.fetch_add(1, Ordering::AcqRel);
    ctx.metrics.connections.inc();
    ctx.metrics.connections_total.inc();
    tracing::info!(
        %peer,
        protocol = version.level(),
        clean_start = a.connect.clean_start,
        session_present,
        keep_alive = a.keep_alive,
        "client connected"
    );
    // A persistent session's inbound QoS 2 ids are stored (see `Reader::publish`); one refused with 0x97 is
    // freed there too.
    let forget_qos2: Option<super::acks::ForgetQos2> = match (&ctx.store, incarnation) {
        (Some(store), Some(incarnation)) => {
            let (store, client_id) = (store.clone(), a.client_id.clone());
            Some(Arc::new(move |pkid| {
                let commit = store.qos2_released(&client_id, incarnation, pkid);
                tokio::spawn(async move {
                    let _ = commit.await;
                });
            }))
        }
        _ => None,
    };
    let mut reader = Reader {
        ctx: ctx.clone(),
        session: session.clone(),
        session_id: id,
        conn_id,
        handle: handle.clone(),
        inbound_qos2: inbound_qos2.clone(),
        aliases: HashMap::new(),
        credit: Arc::new(Semaphore::new(ctx.config.limits.inbound_credit)),
        connect_expiry: a.expiry,
        max_qos: ctx.config.mqtt.max_qos,
        perms,
        username: a.connect.username.clone(),
        client_id: a.client_id.clone(),
        message_rate: ratelimit::bucket(ctx.config.limits.client_messages_per_sec, Instant::now()),
        byte_rate: ratelimit::bucket(ctx.config.limits.client_bytes_per_sec, Instant::now()),
        acks: AckQueue::new(
            handle.clone(),
            ctx.metrics.clone(),
            inbound_qos2,
            forget_qos2,
            ctx.store
                .as_ref()
                .is_some_and(|s| s.clustered())
                .then(|| super::acks::Holder {
                    ctx: ctx.clone(),
                    client_id: a.client_id.clone(),
                }),
        ),
        incarnation,
        routing: None,
        settling: false,
    };
    let keep_alive = a.keep_alive;
    // The token's expiry as a timer: the connection ends then with 0x87 [issue: JWT].
    let token_deadline = token_expires.map(|t| {
        let left = t.duration_since(SystemTime::now()).unwrap_or_default();
        tokio::time::Instant::now() + left
    });
    let mut rd = input.rd;
    let end = reader
        .read_loop(
            &mut rd,
            input.buf,
            input.decoder,
            keep_alive,
            token_deadline,
            &cancel,
        )
        .await;
    // A takeover waits for this to decide the Will: a DISCONNECT read here (or by `settle`) discards it.
    handle.shared.report_read_end(ReadEnd {
        publish_will: !matches!(end, End::Normal { will: false, .. }),
        ends_session: matches!(
            end,
            End::Normal {
                expiry: Some(0),
                ..
            }
        ),
    });
    // The broker ends the connection with a reason the client should read: see `linger`.
    let linger = matches!(end, End::Violation(_) | End::ClosedByServer);
    // A bounded label for the disconnect metric: a reason code's name at most.
    let label = match &end {
        End::Normal { .. } => "client disconnected",
        End::Violation(v) => v.reason_code().name(),
        End::Closed(_) => "connection lost",
        End::ClosedByServer => "closed by the server",
    };
    let (publish_will, expiry, why) = match end {
        End::Normal { will, expiry } => {
            handle.send(Outbound::Close(None));
            (will, expiry, "client disconnected".to_string())
        }
        End::Violation(v) => {
            let code = v.reason_code();
            handle.close_with(code, Some(v.to_string()));
            (true, None, format!("{} ({v})", code.name()))
        }
        End::Closed(why) => {
            handle.send(Outbound::Close(None));
            (true, None, why.to_string())
        }
        End::ClosedByServer => (true, None, "closed by the server".to_string()),
    };
    ctx.metrics.disconnects.with_label_values(&[label]).inc();
    tracing::info!(reason = %why, will = publish_will, "client disconnected");
    let _ = session.cast(SessionMsg::Detach(Box::new(Detach {
        conn: conn_id,
        publish_will,
        expiry,
    })));
    ctx.connections.fetch_sub(1, Ordering::AcqRel);
    ctx.metrics.connections.dec();
    drop(reader);
    drop(handle);
    let abort = writer_task.abort_handle();
    if tokio::time::timeout(WRITER_GRACE, writer_task)
        .await
        .is_err()
    {
        abort.abort();
    }
    if linger {
        linger::discard_until_closed(&mut rd).await;
    }
}

struct Reader {
    ctx: Arc<Context>,
    session: ActorRef<SessionMsg>,
    session_id: SessionId,
    conn_id: u64,
    handle: ConnHandle,
    /// The session's QoS 2 ids received and not yet released (PUBREL): a re-sent PUBLISH is not routed twice.
    /// Shared with the session and the acknowledgement queue, which frees an id refused or not stored.
    inbound_qos2: InboundQos2,
    /// Topic aliases the client set (v5).
    aliases: HashMap<u16, String>,
    /// Messages of this connection still in the router; reads pause when none is left.
    credit: Arc<Semaphore>,
    connect_expiry: u32,
    /// The session's incarnation in the store, when it is persistent: its inbound QoS 2 ids are kept there.
    incarnation: Option<u64>,
    max_qos: QoS,
    perms: Permissions,
    username: Option<String>,
    client_id: String,
    /// client_messages_per_sec and client_bytes_per_sec.
    message_rate: Option<TokenBucket>,
    byte_rate: Option<TokenBucket>,
    /// PUBACK / PUBREC in order, some waiting for the store.
    acks: AckQueue,
    /// The last message routed after a retained change in flight; later ones queue behind it.
    routing: Option<tokio::task::JoinHandle<()>>,
    /// Taken over and settling what the client sent before (see `settle`): nothing waits.
    settling: bool,
}

impl Reader {
    async fn read_loop<R: AsyncRead + Unpin>(
        &mut self,
        rd: &mut R,
        mut buf: BytesMut,
        mut decoder: Decoder,
        keep_alive: u16,
        token_deadline: Option<tokio::time::Instant>,
        cancel: &CancellationToken,
    ) -> End {
        let end = self
            .read_packets(
                rd,
                &mut buf,
                &mut decoder,
                keep_alive,
                token_deadline,
                cancel,
            )
            .await;
        // Taken over (the close may have cut a wait short): what the client sent before is settled first.
        if matches!(end, End::ClosedByServer) && self.handle.shared.taken_over() {
            return self.settle(rd, &mut buf, &mut decoder).await;
        }
        end
    }

    async fn read_packets<R: AsyncRead + Unpin>(
        &mut self,
        rd: &mut R,
        buf: &mut BytesMut,
        decoder: &mut Decoder,
        keep_alive: u16,
        token_deadline: Option<tokio::time::Instant>,
        cancel: &CancellationToken,
    ) -> End {
        let token_expired = async {
            match token_deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(token_expired);
        // [MQTT-3.1.2-24]: one and a half keep-alive periods without a packet ends the connection.
        let grace = (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500));
        let mut deadline = grace.map(|g| tokio::time::Instant::now() + g);
        loop {
            loop {
                if self.handle.shared.taken_over() {
                    return End::ClosedByServer;
                }
                match decoder.decode(buf) {
                    Ok(Some(packet)) => {
                        if let Some(g) = grace {
                            deadline = Some(tokio::time::Instant::now() + g);
                        }
                        if self.backed_up() {
                            if let Some(end) = self.wait_for_writer().await {
                                return end;
                            }
                        }
                        if let Some(end) = self.handle_packet(packet).await {
                            return end;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return End::Violation(e.into()),
                }
            }
            if buf.capacity() == buf.len() {
                buf.reserve(buf.capacity().clamp(512, 64 * 1024));
            }
            let read = async {
                match deadline {
                    Some(d) => tokio::time::timeout_at(d, rd.read_buf(buf)).await.ok(),
                    None => Some(rd.read_buf(buf).await),
                }
            };
            tokio::select! {
                r = read => match r {
                    None => return End::Violation(Violation::KeepAlive(keep_alive)),
                    Some(Ok(0)) => return End::Closed("connection lost: closed by the client"),
                    Some(Ok(n)) => {
                        self.ctx.metrics.bytes_received.inc_by(n as u64);
                        if let Some(end) = self.throttle(n as u64, false).await {
                            return end;
                        }
                    }
                    Some(Err(_)) => return End::Closed("connection lost: read error"),
                },
                _ = cancel.cancelled() => return End::ClosedByServer,
                _ = self.handle.shared.until_taken_over() => return End::ClosedByServer,
                _ = &mut token_expired => {
                    self.ctx.metrics.jwt_expired_disconnects.inc();
                    return End::Violation(Violation::TokenExpired);
                }
            }
        }
    }

    async fn handle_packet(&mut self, packet: Packet) -> Option<End> {
        match packet {
            Packet::Publish(p) => return self.publish(p).await,
            Packet::PubRel(r) => {
                let mut comp = PubAck::new(r.pkid);
                if !self.inbound_qos2.remove(r.pkid) {
                    comp.reason = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
                }
                // A stored id is freed before PUBCOMP (always: freeing is idempotent, and an id this connection
                // did not know may still be in the store): once the client may reuse it, no restart brings it
                // back as a duplicate to drop.
                let wait = match (&self.ctx.store, self.incarnation) {
                    (Some(store), Some(incarnation)) => {
                        let commit = store.qos2_released(&self.client_id, incarnation, r.pkid);
                        let (gate, wait) = AckGate::new();
                        tokio::spawn(async move {
                            if commit.await.is_err() {
                                gate.fail();
                            }
                        });
                        Some(wait)
                    }
                    _ => None,
                };
                self.acks.send(Packet::PubComp(comp), wait);
            }
            p @ (Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubComp(_)) => {
                let _ = self.session.cast(SessionMsg::Ack {
                    conn: self.conn_id,
                    packet: p,
                });
            }
            // In effect before the next packet is read [MQTT-3.8.4-3]: a PUBLISH right behind a SUBSCRIBE
            // (request/response clients) is matched against it.
            Packet::Subscribe(s) => {
                if let Some(end) = self.routed().await {
                    return Some(end);
                }
                let (installed, done) = tokio::sync::oneshot::channel();
                let _ = self.session.cast(SessionMsg::Subscribe {
                    conn: self.conn_id,
                    packet: s,
                    installed,
                });
                return self.until_installed(done).await;
            }
            Packet::Unsubscribe(u) => {
                let (installed, done) = tokio::sync::oneshot::channel();
                let _ = self.session.cast(SessionMsg::Unsubscribe {
                    conn: self.conn_id,
                    packet: u,
                    installed,
                });
                return self.until_installed(done).await;
            }
            Packet::PingReq => {
                self.handle.packet(Packet::PingResp);
            }
            Packet::Disconnect(d) => {
                let expiry = d.properties.session_expiry_interval;
                if expiry.is_some_and(|e| e != 0) && self.connect_expiry == 0 {
                    return Some(End::Violation(Violation::ExpiryAfterZero));
                }
                return Some(End::Normal {
                    will: d.reason == ReasonCode::DISCONNECT_WITH_WILL,
                    expiry,
                });
            }
            Packet::Connect(_) => {
                return Some(End::Violation(Violation::SecondConnect));
            }
            other => {
                return Some(End::Violation(Violation::ServerPacket(other.kind())));
            }
        }
        None
    }
}
