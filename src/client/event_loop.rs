//! The task that owns a client's socket: one `select!` over socket reads, batched socket writes, queued
//! commands, event delivery and the keep-alive deadline; plus (re)connecting with backoff.

use super::state::{AckOutcome, ClientSession};
use super::transport::BoxStream;
use super::{ClientError, ClientOptions, Command, Event, PubDone};
use crate::protocol::{
    self, topic, ConnAck, Connect, Decoder, Disconnect, Packet, Properties, ProtocolVersion,
    Publish, QoS, ReasonCode, SubAck, Subscribe, SubscribeFilter, UnsubAck, Unsubscribe,
};
use bytes::BytesMut;
use std::collections::{HashMap, VecDeque};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, timeout, Instant};
use tracing::{debug, warn};

/// Stop taking commands while this much is waiting to be written: the socket is the bottleneck.
const WRITE_HIGH_WATER: usize = 1024 * 1024;
/// Commands taken per wake-up, so that one batch becomes one write without starving the reads.
const COMMAND_BATCH: usize = 256;
/// Events held for the application before socket reads pause.
const PENDING_EVENTS: usize = 256;
/// Read buffer growth step.
const READ_CHUNK: usize = 64 * 1024;

/// A freshly opened connection: the stream, the CONNACK, and any bytes read past the CONNACK.
pub(crate) struct Opened {
    pub stream: BoxStream,
    pub connack: ConnAck,
    pub rest: BytesMut,
}

/// Opens the transport, sends CONNECT and waits for a successful CONNACK, all within the connect timeout.
pub(crate) async fn open(options: &ClientOptions) -> Result<Opened, ClientError> {
    timeout(options.connect_timeout, open_inner(options))
        .await
        .map_err(|_| ClientError::Timeout("CONNACK"))?
}

async fn open_inner(options: &ClientOptions) -> Result<Opened, ClientError> {
    let mut stream = options
        .connector
        .connect(&options.host, options.port)
        .await?;
    let mut properties = options.connect_properties.clone();
    if options.version.is_v5() {
        properties.session_expiry_interval = options
            .session_expiry
            .or(properties.session_expiry_interval);
        if properties.maximum_packet_size.is_none() {
            properties.maximum_packet_size = u32::try_from(options.max_packet_size).ok();
        }
    }
    let connect = Connect {
        protocol: options.version,
        clean_start: options.clean_start,
        keep_alive: options.keep_alive,
        properties,
        client_id: options.client_id.clone(),
        will: options.will.clone(),
        username: options.username.clone(),
        password: options.password.clone(),
    };
    let mut buf = BytesMut::new();
    protocol::encode(
        &Packet::Connect(Box::new(connect)),
        options.version,
        &mut buf,
    )?;
    stream.write_all(&buf).await?;
    let mut decoder = Decoder::new(options.version, options.max_packet_size);
    let mut rbuf = BytesMut::with_capacity(READ_CHUNK);
    loop {
        if let Some(packet) = decoder.decode(&mut rbuf)? {
            return match packet {
                Packet::ConnAck(ack) if ack.reason.is_error() => {
                    Err(ClientError::Refused(ack.reason))
                }
                Packet::ConnAck(connack) => Ok(Opened {
                    stream,
                    connack,
                    rest: rbuf,
                }),
                Packet::Disconnect(d) => Err(ClientError::ServerDisconnect(d.reason)),
                other => Err(ClientError::Protocol(format!(
                    "expected CONNACK, got {:?}",
                    other.kind()
                ))),
            };
        }
        if stream.read_buf(&mut rbuf).await? == 0 {
            return Err(ClientError::ConnectionLost("closed before CONNACK".into()));
        }
    }
}

enum RequestDone {
    Subscribe {
        filters: Vec<SubscribeFilter>,
        properties: Box<Properties>,
        done: oneshot::Sender<Result<SubAck, ClientError>>,
    },
    Unsubscribe {
        filters: Vec<String>,
        done: oneshot::Sender<Result<UnsubAck, ClientError>>,
    },
    /// A SUBSCRIBE the client re-sent itself after a reconnect without session.
    Resubscribe,
}

/// How a connection ended.
enum Exit {
    /// The application disconnected or dropped every handle.
    Closed,
    /// The network or the server ended it.
    Lost(ClientError),
}

/// Limits the server announced in CONNACK (MQTT 5); defaults for earlier versions.
struct ServerLimits {
    max_qos: QoS,
    retain_available: bool,
    max_packet_size: usize,
    keep_alive: u16,
}

pub(crate) struct EventLoop {
    options: ClientOptions,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
    /// Received but not yet taken by the application; bounded by `PENDING_EVENTS`.
    pending: VecDeque<Event>,
    events_closed: bool,
    session: ClientSession<PubDone, RequestDone>,
    /// Granted subscriptions, re-sent if a reconnect finds no session on the server.
    subscriptions: Vec<(SubscribeFilter, Properties)>,
    /// Topic aliases the server set on this connection [MQTT-3.3.2-10].
    aliases: HashMap<u16, String>,
    server: ServerLimits,
    /// A command taken while reconnecting, to run first once connected.
    stashed: Option<Command>,
}

impl EventLoop {
    pub fn new(
        options: ClientOptions,
        commands: mpsc::Receiver<Command>,
        events: mpsc::Sender<Event>,
    ) -> Self {
        let session = ClientSession::new(usize::from(options.inflight), options.version.is_v5());
        let keep_alive = options.keep_alive;
        EventLoop {
            options,
            commands,
            events,
            pending: VecDeque::new(),
            events_closed: false,
            session,
            subscriptions: Vec::new(),
            aliases: HashMap::new(),
            server: ServerLimits {
                max_qos: QoS::ExactlyOnce,
                retain_available: true,
                max_packet_size: usize::MAX,
                keep_alive,
            },
            stashed: None,
        }
    }

    pub async fn run(mut self, first: Opened) {
        let mut opened = Some(first);
        let mut reconnected = false;
        loop {
            let conn = match opened.take() {
                Some(c) => c,
                None => match self.reconnect().await {
                    Some(c) => c,
                    None => break,
                },
            };
            self.apply_connack(&conn.connack);
            if reconnected {
                self.push(Event::Reconnected(conn.connack.clone()));
            }
            reconnected = true;
            match self.serve(conn).await {
                Exit::Closed => break,
                Exit::Lost(e) => {
                    debug!(client_id = %self.options.client_id, error = %e, "connection lost");
                    self.push(Event::Disconnected(e.clone()));
                    if self.options.reconnect.is_none() {
                        self.fail_all(e);
                        break;
                    }
                }
            }
        }
        self.fail_all(ClientError::Closed);
        // Hand over what was received before closing the stream of events.
        while let Some(e) = self.pending.pop_front() {
            if self.events_closed || self.events.send(e).await.is_err() {
                break;
            }
        }
    }

    fn apply_connack(&mut self, connack: &ConnAck) {
        let p = &connack.properties;
        if let Some(id) = &p.assigned_client_identifier {
            self.options.client_id = id.clone();
        }
        let receive_max = p.receive_maximum.unwrap_or(u16::MAX);
        self.session
            .set_window(usize::from(receive_max.min(self.options.inflight)));
        self.server = ServerLimits {
            max_qos: p
                .maximum_qos
                .and_then(QoS::from_u8)
                .unwrap_or(QoS::ExactlyOnce),
            retain_available: p.retain_available.unwrap_or(true),
            max_packet_size: p.maximum_packet_size.map_or(usize::MAX, |m| m as usize),
            keep_alive: p.server_keep_alive.unwrap_or(self.options.keep_alive),
        };
        self.aliases.clear();
    }

    fn push(&mut self, event: Event) {
        if !self.events_closed {
            self.pending.push_back(event);
        }
    }

    fn fail_all(&mut self, error: ClientError) {
        let (publishes, requests) = self.session.drain();
        for done in publishes {
            let _ = done.send(Err(error.clone()));
        }
        for r in requests {
            match r {
                RequestDone::Subscribe { done, .. } => {
                    let _ = done.send(Err(error.clone()));
                }
                RequestDone::Unsubscribe { done, .. } => {
                    let _ = done.send(Err(error.clone()));
                }
                RequestDone::Resubscribe => {}
            }
        }
        if let Some(cmd) = self.stashed.take() {
            fail_command(cmd, error);
        }
    }

    /// Retries with backoff until connected; `None` if the application closed the client meanwhile.
    async fn reconnect(&mut self) -> Option<Opened> {
        let backoff = self.options.reconnect?;
        let mut attempt = 0;
        loop {
            let deadline = Instant::now() + backoff.delay(attempt);
            attempt = attempt.saturating_add(1);
            loop {
                tokio::select! {
                    _ = sleep_until(deadline) => break,
                    permit = self.events.reserve(), if !self.pending.is_empty() && !self.events_closed => {
                        match permit {
                            Ok(p) => p.send(self.pending.pop_front()?),
                            Err(_) => self.events_closed = true,
                        }
                    }
                    cmd = self.commands.recv(), if self.stashed.is_none() => match cmd {
                        None => return None,
                        Some(Command::Disconnect { done, .. } | Command::Abort { done }) => {
                            let _ = done.send(());
                            return None;
                        }
                        Some(other) => self.stashed = Some(other),
                    },
                }
            }
            match open(&self.options).await {
                Ok(conn) => return Some(conn),
                Err(e) => {
                    debug!(client_id = %self.options.client_id, error = %e, attempt, "reconnect failed");
                    self.push(Event::Disconnected(e));
                }
            }
        }
    }

    /// Runs one connection until it ends.
    async fn serve(&mut self, conn: Opened) -> Exit {
        let version = self.options.version;
        let (mut rd, mut wr) = tokio::io::split(conn.stream);
        let mut rbuf = conn.rest;
        let mut wbuf = BytesMut::with_capacity(READ_CHUNK);
        let mut decoder = Decoder::new(version, self.options.max_packet_size);
        let session_present = conn.connack.session_present;
        if !session_present {
            for done in self.session.released_without_session() {
                let _ = done.send(Ok(ReasonCode::SUCCESS));
            }
        }
        for packet in self.session.resend(session_present) {
            if let Err(e) = protocol::encode(&packet, version, &mut wbuf) {
                return Exit::Lost(e.into());
            }
        }
        if !session_present {
            if let Err(e) = self.resubscribe(&mut wbuf) {
                return Exit::Lost(e);
            }
        }
        if let Some(cmd) = self.stashed.take() {
            if let Some(exit) = self.command(cmd, &mut wbuf, &mut wr).await {
                return exit;
            }
        }
        let keep_alive = Duration::from_secs(u64::from(self.server.keep_alive));
        let mut last_sent = Instant::now();
        let mut ping_sent: Option<Instant> = None;
        let far = Duration::from_secs(86_400 * 365);
        // A local handle, so that a reserved permit does not borrow `self` while the branch runs.
        let events = self.events.clone();
        if let Err(e) = self.decode_all(&mut decoder, &mut rbuf, &mut wbuf) {
            return Exit::Lost(e);
        }
        loop {
            let ping_deadline = match (keep_alive.is_zero(), ping_sent) {
                (true, _) => Instant::now() + far,
                (false, Some(at)) => at + keep_alive,
                (false, None) => last_sent + keep_alive,
            };
            let can_read = self.pending.len() < PENDING_EVENTS;
            let can_command = self.session.has_window() && wbuf.len() < WRITE_HIGH_WATER;
            tokio::select! {
                biased;
                written = wr.write_buf(&mut wbuf), if !wbuf.is_empty() => match written {
                    Ok(0) => return Exit::Lost(ClientError::ConnectionLost("socket closed for writing".into())),
                    Ok(_) => last_sent = Instant::now(),
                    Err(e) => return Exit::Lost(ClientError::ConnectionLost(e.to_string())),
                },
                permit = events.reserve(), if !self.pending.is_empty() && !self.events_closed => match permit {
                    Ok(p) => {
                        if let Some(event) = self.pending.pop_front() {
                            p.send(event);
                        }
                    }
                    Err(_) => {
                        self.events_closed = true;
                        self.pending.clear();
                    }
                },
                read = rd.read_buf(&mut rbuf), if can_read => match read {
                    Ok(0) => return Exit::Lost(ClientError::ConnectionLost("closed by the server".into())),
                    Ok(_) => match self.decode_all(&mut decoder, &mut rbuf, &mut wbuf) {
                        Ok(true) => ping_sent = None,
                        Ok(false) => {}
                        Err(e) => return Exit::Lost(e),
                    },
                    Err(e) => return Exit::Lost(ClientError::ConnectionLost(e.to_string())),
                },
                cmd = self.commands.recv(), if can_command => {
                    let Some(cmd) = cmd else {
                        return close(&mut wbuf, &mut wr, version, Disconnect::default()).await;
                    };
                    if let Some(exit) = self.command(cmd, &mut wbuf, &mut wr).await {
                        return exit;
                    }
                    let mut taken = 1;
                    while taken < COMMAND_BATCH && self.session.has_window() && wbuf.len() < WRITE_HIGH_WATER {
                        let Ok(cmd) = self.commands.try_recv() else { break };
                        if let Some(exit) = self.command(cmd, &mut wbuf, &mut wr).await {
                            return exit;
                        }
                        taken += 1;
                    }
                }
                _ = sleep_until(ping_deadline) => {
                    if ping_sent.is_some() {
                        return Exit::Lost(ClientError::Timeout("PINGRESP"));
                    }
                    if let Err(e) = protocol::encode(&Packet::PingReq, version, &mut wbuf) {
                        return Exit::Lost(e.into());
                    }
                    ping_sent = Some(Instant::now());
                }
            }
        }
    }

    /// Handles every complete packet in `rbuf`; `Ok(true)` if a PINGRESP was among them.
    fn decode_all(
        &mut self,
        decoder: &mut Decoder,
        rbuf: &mut BytesMut,
        wbuf: &mut BytesMut,
    ) -> Result<bool, ClientError> {
        let mut pong = false;
        while let Some(packet) = decoder.decode(rbuf)? {
            if matches!(packet, Packet::PingResp) {
                pong = true;
            } else {
                self.packet(packet, wbuf)?;
            }
        }
        if rbuf.capacity() - rbuf.len() < 1024 {
            rbuf.reserve(READ_CHUNK);
        }
        Ok(pong)
    }

    fn encode(&self, packet: &Packet, wbuf: &mut BytesMut) -> Result<(), ClientError> {
        protocol::encode(packet, self.options.version, wbuf).map_err(ClientError::from)
    }

    /// One packet from the server.
    fn packet(&mut self, packet: Packet, wbuf: &mut BytesMut) -> Result<(), ClientError> {
        match packet {
            Packet::Publish(mut publish) => {
                self.resolve_alias(&mut publish)?;
                let (deliver, reply) = self.session.on_publish(&publish);
                if let Some(reply) = reply {
                    self.encode(&reply, wbuf)?;
                }
                if deliver {
                    self.push(Event::Message(publish));
                }
            }
            Packet::PubAck(ack) => complete(self.session.on_puback(&ack)),
            Packet::PubComp(ack) => complete(self.session.on_pubcomp(&ack)),
            Packet::PubRec(ack) => match self.session.on_pubrec(&ack) {
                AckOutcome::Release(rel) => self.encode(&rel, wbuf)?,
                AckOutcome::Unknown { reply: Some(reply) } => self.encode(&reply, wbuf)?,
                other => complete(other),
            },
            Packet::PubRel(rel) => {
                let comp = self.session.on_pubrel(&rel);
                self.encode(&comp, wbuf)?;
            }
            Packet::SubAck(ack) => match self.session.complete_request(ack.pkid) {
                Some(RequestDone::Subscribe {
                    filters,
                    properties,
                    done,
                }) => {
                    for (filter, reason) in filters.into_iter().zip(&ack.reasons) {
                        if !reason.is_error() {
                            self.subscriptions
                                .retain(|(f, _)| f.filter != filter.filter);
                            self.subscriptions.push((filter, (*properties).clone()));
                        }
                    }
                    let _ = done.send(Ok(ack));
                }
                Some(RequestDone::Resubscribe) => {
                    if let Some(r) = ack.reasons.iter().find(|r| r.is_error()) {
                        warn!(client_id = %self.options.client_id, reason = %r, "resubscribe refused");
                    }
                }
                Some(RequestDone::Unsubscribe { done, .. }) => {
                    let _ = done.send(Err(ClientError::Protocol(
                        "SUBACK for an UNSUBSCRIBE".into(),
                    )));
                }
                None => debug!(pkid = ack.pkid, "SUBACK for an unknown packet id"),
            },
            Packet::UnsubAck(ack) => match self.session.complete_request(ack.pkid) {
                Some(RequestDone::Unsubscribe { filters, done }) => {
                    self.subscriptions
                        .retain(|(f, _)| !filters.contains(&f.filter));
                    let _ = done.send(Ok(ack));
                }
                Some(RequestDone::Subscribe { done, .. }) => {
                    let _ = done.send(Err(ClientError::Protocol(
                        "UNSUBACK for a SUBSCRIBE".into(),
                    )));
                }
                Some(RequestDone::Resubscribe) | None => {
                    debug!(pkid = ack.pkid, "unexpected UNSUBACK")
                }
            },
            Packet::Disconnect(d) => return Err(ClientError::ServerDisconnect(d.reason)),
            Packet::PingResp => {}
            other => {
                return Err(ClientError::Protocol(format!(
                    "unexpected {:?} from the server",
                    other.kind()
                )))
            }
        }
        Ok(())
    }

    /// Replaces a Topic Alias by its topic, recording new aliases [MQTT-3.3.2-10], [MQTT-3.3.2-11].
    fn resolve_alias(&mut self, publish: &mut Publish) -> Result<(), ClientError> {
        let Some(alias) = publish.properties.topic_alias else {
            return Ok(());
        };
        if publish.topic.is_empty() {
            match self.aliases.get(&alias) {
                Some(topic) => publish.topic = topic.clone(),
                None => {
                    return Err(ClientError::Protocol(format!(
                        "unknown topic alias {alias}"
                    )))
                }
            }
        } else {
            self.aliases.insert(alias, publish.topic.clone());
        }
        Ok(())
    }

    /// Re-sends the granted subscriptions after a reconnect that found no session.
    fn resubscribe(&mut self, wbuf: &mut BytesMut) -> Result<(), ClientError> {
        for (filter, properties) in self.subscriptions.clone() {
            let pkid = self
                .session
                .alloc_pkid()
                .ok_or(ClientError::Protocol("no free packet identifier".into()))?;
            let packet = Packet::Subscribe(Subscribe {
                pkid,
                properties,
                filters: vec![filter],
            });
            self.encode(&packet, wbuf)?;
            self.session
                .track_request(pkid, packet, RequestDone::Resubscribe);
        }
        Ok(())
    }

    /// One command from the application; `Some` if it ended the connection.
    async fn command<W: AsyncWriteExt + Unpin>(
        &mut self,
        cmd: Command,
        wbuf: &mut BytesMut,
        wr: &mut W,
    ) -> Option<Exit> {
        let version = self.options.version;
        match cmd {
            Command::Publish { publish, done } => {
                if let Err(e) = self.publish(publish, done, wbuf) {
                    return Some(Exit::Lost(e));
                }
            }
            Command::Subscribe {
                filters,
                mut properties,
                done,
            } => {
                if let Err(e) = validate_filters(filters.iter().map(|f| f.filter.as_str())) {
                    let _ = done.send(Err(e));
                    return None;
                }
                if !version.is_v5() {
                    properties = Properties::default();
                }
                let Some(pkid) = self.session.alloc_pkid() else {
                    let _ = done.send(Err(ClientError::Protocol(
                        "no free packet identifier".into(),
                    )));
                    return None;
                };
                let packet = Packet::Subscribe(Subscribe {
                    pkid,
                    properties: properties.clone(),
                    filters: filters.clone(),
                });
                if let Err(e) = self.encode(&packet, wbuf) {
                    let _ = done.send(Err(e));
                    return None;
                }
                self.session.track_request(
                    pkid,
                    packet,
                    RequestDone::Subscribe {
                        filters,
                        properties: Box::new(properties),
                        done,
                    },
                );
            }
            Command::Unsubscribe {
                filters,
                mut properties,
                done,
            } => {
                if let Err(e) = validate_filters(filters.iter().map(String::as_str)) {
                    let _ = done.send(Err(e));
                    return None;
                }
                if !version.is_v5() {
                    properties = Properties::default();
                }
                let Some(pkid) = self.session.alloc_pkid() else {
                    let _ = done.send(Err(ClientError::Protocol(
                        "no free packet identifier".into(),
                    )));
                    return None;
                };
                let packet = Packet::Unsubscribe(Unsubscribe {
                    pkid,
                    properties,
                    filters: filters.clone(),
                });
                if let Err(e) = self.encode(&packet, wbuf) {
                    let _ = done.send(Err(e));
                    return None;
                }
                self.session.track_request(
                    pkid,
                    packet,
                    RequestDone::Unsubscribe { filters, done },
                );
            }
            Command::Disconnect { disconnect, done } => {
                let exit = close(wbuf, wr, version, disconnect).await;
                let _ = done.send(());
                return Some(exit);
            }
            Command::Abort { done } => {
                // The socket halves are dropped when `serve` returns: no DISCONNECT goes out.
                wbuf.clear();
                let _ = done.send(());
                return Some(Exit::Closed);
            }
        }
        None
    }

    /// Encodes a publish into the write buffer after checking it against the server's limits. Errors in
    /// the message itself go to its caller; only an internal failure ends the connection.
    fn publish(
        &mut self,
        mut publish: Publish,
        done: PubDone,
        wbuf: &mut BytesMut,
    ) -> Result<(), ClientError> {
        let version = self.options.version;
        let aliased =
            version.is_v5() && publish.topic.is_empty() && publish.properties.topic_alias.is_some();
        if !aliased {
            if let Err(error) = topic::validate_name(&publish.topic) {
                let _ = done.send(Err(ClientError::InvalidTopic {
                    topic: publish.topic,
                    error,
                }));
                return Ok(());
            }
        }
        if publish.qos > self.server.max_qos {
            let _ = done.send(Err(ClientError::QoSNotSupported(publish.qos)));
            return Ok(());
        }
        if publish.retain && !self.server.retain_available {
            let _ = done.send(Err(ClientError::RetainNotSupported));
            return Ok(());
        }
        if !version.is_v5() {
            publish.properties = Properties::default();
        }
        publish.dup = false;
        if publish.qos != QoS::AtMostOnce {
            match self.session.alloc_pkid() {
                Some(id) => publish.pkid = id,
                None => {
                    let _ = done.send(Err(ClientError::Protocol(
                        "no free packet identifier".into(),
                    )));
                    return Ok(());
                }
            }
        } else {
            publish.pkid = 0;
        }
        let mark = wbuf.len();
        let size = match protocol::encode_publish(&publish, version, wbuf) {
            Ok(size) => size,
            Err(e) => {
                let _ = done.send(Err(e.into()));
                return Ok(());
            }
        };
        if size > self.server.max_packet_size {
            wbuf.truncate(mark);
            let _ = done.send(Err(ClientError::TooLarge {
                size,
                max: self.server.max_packet_size,
            }));
            return Ok(());
        }
        if publish.qos == QoS::AtMostOnce {
            let _ = done.send(Ok(ReasonCode::SUCCESS));
        } else {
            self.session.track_publish(publish, done);
        }
        Ok(())
    }
}

/// Sends DISCONNECT after everything already queued, then shuts the socket down.
async fn close<W: AsyncWriteExt + Unpin>(
    wbuf: &mut BytesMut,
    wr: &mut W,
    version: ProtocolVersion,
    disconnect: Disconnect,
) -> Exit {
    if protocol::encode(&Packet::Disconnect(disconnect), version, wbuf).is_ok() {
        let _ = wr.write_all(wbuf).await;
        let _ = wr.flush().await;
    }
    wbuf.clear();
    let _ = wr.shutdown().await;
    Exit::Closed
}

fn complete(outcome: AckOutcome<PubDone>) {
    match outcome {
        AckOutcome::Done(done, reason) if reason.is_error() => {
            let _ = done.send(Err(ClientError::Rejected(reason)));
        }
        AckOutcome::Done(done, reason) => {
            let _ = done.send(Ok(reason));
        }
        AckOutcome::Release(_) | AckOutcome::Unknown { .. } => {}
    }
}

/// Refuses filters the server would disconnect us for, before they are sent.
fn validate_filters<'a>(mut filters: impl Iterator<Item = &'a str>) -> Result<(), ClientError> {
    filters.try_for_each(|f| {
        topic::validate_filter(f).map_err(|error| ClientError::InvalidTopic {
            topic: f.to_string(),
            error,
        })
    })
}

fn fail_command(cmd: Command, error: ClientError) {
    match cmd {
        Command::Publish { done, .. } => {
            let _ = done.send(Err(error));
        }
        Command::Subscribe { done, .. } => {
            let _ = done.send(Err(error));
        }
        Command::Unsubscribe { done, .. } => {
            let _ = done.send(Err(error));
        }
        Command::Disconnect { done, .. } | Command::Abort { done } => {
            let _ = done.send(());
        }
    }
}
