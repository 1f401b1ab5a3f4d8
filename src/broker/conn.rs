//! The handle a Session holds on its current connection: the writer's queue, with a count of what is
//! pending in it so the session never lets that queue grow past a budget, and a token to close it.

use crate::protocol::{Disconnect, Packet, ProtocolVersion, Publish, ReasonCode};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Packets a session may have waiting in its connection's writer queue. The in-flight window bounds QoS 1/2
/// anyway; this bounds QoS 0 and keeps the queue small so queued messages wait in the (counted) outbox.
pub const WRITER_BUDGET: usize = 512;

/// Packets the writer queue may hold before the connection's reader stops reading: a client that sends and
/// never reads has its own acknowledgements (PUBACK, PUBREC, PUBCOMP, PINGRESP) waiting in its writer queue,
/// so past this it is paused, not buffered without end. The session keeps its own sends under
/// [`WRITER_BUDGET`], so the queue never holds much more than the two together.
pub const PAUSE_READS_AT: usize = 256;

/// How long a closing connection may take to accept its last packets.
pub const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// What the writer task sends. Boxed: the queue's blocks then hold pointers, not 400-byte packets, which
/// keeps an idle connection's footprint small.
#[derive(Debug)]
pub enum Outbound {
    Packet(Box<Packet>),
    Publish(Box<Publish>),
    /// Send this DISCONNECT (if any, v5 only) and close the socket.
    Close(Option<Box<Disconnect>>),
}

/// State shared between a connection's tasks and its session.
#[derive(Debug, Default)]
pub struct ConnShared {
    /// Packets queued for the writer and not yet written.
    pub pending: AtomicUsize,
    /// Set by the session when it stopped sending because of the budget; the writer then asks for more.
    pub session_waiting: AtomicBool,
    /// Woken by the writer each time it takes packets from the queue (a paused reader waits for it).
    pub drained: tokio::sync::Notify,
    /// Set (and the reader woken) when another connection takes the session over: the reader settles what
    /// the client sent before (see `Reader::settle`) and ends.
    taken_over: AtomicBool,
    wake_reader: tokio::sync::Notify,
    /// How the reader ended ([`ReadEnd::bits`], 0 while it runs), for a takeover waiting on it.
    read_end: AtomicU8,
    read_ended: tokio::sync::Notify,
}

/// How a connection's reading ended, as far as its session is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadEnd {
    /// False only after a normal DISCONNECT (v5: other than 0x04) [MQTT-3.1.2-10].
    pub publish_will: bool,
    /// A v5 DISCONNECT set Session Expiry Interval 0: the session ends with this connection.
    pub ends_session: bool,
}

impl ReadEnd {
    const ENDED: u8 = 1;
    const WILL: u8 = 2;
    const ENDS_SESSION: u8 = 4;

    fn bits(self) -> u8 {
        let mut b = Self::ENDED;
        if self.publish_will {
            b |= Self::WILL;
        }
        if self.ends_session {
            b |= Self::ENDS_SESSION;
        }
        b
    }

    fn from_bits(b: u8) -> Option<ReadEnd> {
        (b & Self::ENDED != 0).then_some(ReadEnd {
            publish_will: b & Self::WILL != 0,
            ends_session: b & Self::ENDS_SESSION != 0,
        })
    }
}

/// A session's handle on one connection.
#[derive(Debug, Clone)]
pub struct ConnHandle {
    /// Unique per connection, so a late message from a replaced connection is recognised.
    pub id: u64,
    pub version: ProtocolVersion,
    pub tx: mpsc::UnboundedSender<Outbound>,
    pub shared: Arc<ConnShared>,
    pub cancel: CancellationToken,
    /// The client's Maximum Packet Size (v5), or unlimited.
    pub max_packet_size: usize,
}

impl ConnShared {
    /// Whether another connection took the session over: the reader stops handling new requests.
    pub fn taken_over(&self) -> bool {
        self.taken_over.load(Ordering::Acquire)
    }

    /// Resolves once [`ConnHandle::take_over`] was called (at once if it was).
    pub async fn until_taken_over(&self) {
        loop {
            let woken = self.wake_reader.notified();
            if self.taken_over() {
                return;
            }
            woken.await;
        }
    }

    /// The reader ended: a takeover waiting in [`ConnHandle::read_ended`] learns how.
    pub fn report_read_end(&self, end: ReadEnd) {
        self.read_end.store(end.bits(), Ordering::Release);
        self.read_ended.notify_waiters();
    }
}

impl ConnHandle {
    /// Another connection takes the session over: this one is closed with `reason` and its reader settles
    /// what the client sent before, so a DISCONNECT already on its way decides the Will.
    pub fn take_over(&self, reason: ReasonCode) {
        self.shared.taken_over.store(true, Ordering::Release);
        self.shared.wake_reader.notify_one();
        self.close(reason);
    }

    /// How the reader ended, once it has.
    pub async fn read_ended(&self) -> ReadEnd {
        loop {
            let woken = self.shared.read_ended.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            match ReadEnd::from_bits(self.shared.read_end.load(Ordering::Acquire)) {
                Some(end) => return end,
                None => woken.await,
            }
        }
    }

    /// Whether the writer queue has room under the budget.
    pub fn has_room(&self) -> bool {
        self.shared.pending.load(Ordering::Acquire) < WRITER_BUDGET
    }

    /// Whether the writer queue holds so much that the reader must wait before it reads more.
    pub fn backed_up(&self) -> bool {
        self.shared.pending.load(Ordering::Acquire) >= PAUSE_READS_AT
    }

    pub fn send(&self, out: Outbound) -> bool {
        self.shared.pending.fetch_add(1, Ordering::AcqRel);
        if self.tx.send(out).is_err() {
            self.shared.pending.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    pub fn packet(&self, p: Packet) -> bool {
        self.send(Outbound::Packet(Box::new(p)))
    }

    /// Refuses the connection: sends the (failure) CONNACK, then closes without a DISCONNECT [MQTT-3.2.2-7].
    pub fn refuse(&self, connack: crate::protocol::ConnAck) {
        self.packet(crate::protocol::Packet::ConnAck(connack));
        self.end(None);
    }

    /// Closes the connection, telling a v5 client why [MQTT-3.14.2-1]; v3 clients are simply disconnected.
    pub fn close(&self, reason: ReasonCode) {
        self.close_with(reason, None);
    }

    /// Like [`ConnHandle::close`], with a Reason String saying why (allowed in DISCONNECT whatever the client's
    /// Request Problem Information, spec 3.1.2.11.7).
    pub fn close_with(&self, reason: ReasonCode, why: Option<String>) {
        self.close_with_properties(
            reason,
            crate::protocol::Properties {
                reason_string: why,
                ..Default::default()
            },
        );
    }

    /// Like [`ConnHandle::close`], with a Server Reference telling an MQTT 5 client where to go instead.
    pub fn close_with_reference(&self, reason: ReasonCode, reference: Option<String>) {
        self.close_with_properties(
            reason,
            crate::protocol::Properties {
                server_reference: reference,
                ..Default::default()
            },
        );
    }

    fn close_with_properties(&self, reason: ReasonCode, properties: crate::protocol::Properties) {
        let d = self
            .version
            .is_v5()
            .then(|| Box::new(Disconnect { reason, properties }));
        self.end(d);
    }

    fn end(&self, d: Option<Box<Disconnect>>) {
        self.send(Outbound::Close(d));
        // A client that does not read would keep the writer (and this connection) forever: give it a grace
        // period to take the DISCONNECT, then cut it.
        let cancel = self.cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(CLOSE_GRACE).await;
            cancel.cancel();
        });
    }
}
