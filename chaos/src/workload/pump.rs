//! Reads a workload client's events and records them: messages (as deliveries), connections lost (with the
//! server's DISCONNECT reason), reconnects the client made by itself (as new connections) and its failed
//! reconnect attempts (as connects that failed).

use super::conn::{disconnect_code, outcome_of, parse_payload, Ctx, RotatingConnector};
use super::ledger::Ledger;
use crate::history::{Event, Outcome, Via};
use cicada::client::{Event as ClientEvent, Events};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// One client's event stream being recorded.
pub struct Pump {
    pub ctx: Ctx,
    pub client: String,
    /// The current connection's number.
    pub conn: u64,
    /// Where the client's own reconnects go (None: it does not reconnect by itself).
    pub connector: Option<Arc<RotatingConnector>>,
    /// Deliveries are counted here (persistent subscribers), under this name (the client's, or its
    /// shared group's).
    pub ledger: Option<(Arc<Ledger>, String)>,
    /// Time taken per message, for a slow subscriber.
    pub slow: Option<Duration>,
    /// The current connection's number, for the client's other tasks.
    pub current: Arc<AtomicU64>,
    connected: bool,
}

/// Why [`Pump::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PumpEnd {
    /// The deadline passed.
    Deadline,
    /// The workload is stopping.
    Stopped,
    /// The client stopped for good (connection lost without reconnect, or closed).
    Closed,
}

impl Pump {
    pub fn new(ctx: Ctx, client: String, conn: u64) -> Pump {
        Pump {
            ctx,
            client,
            conn,
            connector: None,
            ledger: None,
            slow: None,
            current: Arc::new(AtomicU64::new(conn)),
            connected: true,
        }
    }

    /// Records events until `until` (if given), the workload stops, or the client ends.
    pub async fn run(&mut self, events: &mut Events, until: Option<Instant>) -> PumpEnd {
        let mut stop = self.ctx.stop.clone();
        let deadline = until.unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365));
        loop {
            let ev = tokio::select! {
                ev = events.recv() => ev,
                _ = stop.wait_for(|s| *s) => return PumpEnd::Stopped,
                _ = tokio::time::sleep_until(deadline) => return PumpEnd::Deadline,
            };
            let Some(ev) = ev else {
                return PumpEnd::Closed;
            };
            self.on_event(ev).await;
        }
    }

    /// After the application asked the client to disconnect: records what the client had already received
    /// (and acknowledged to the broker) but the application had not read yet, until the client ends
    /// (bounded).
    pub async fn finish(&mut self, events: &mut Events) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, events.recv()).await {
            self.on_event(ev).await;
        }
    }

    async fn on_event(&mut self, ev: ClientEvent) {
        match ev {
            ClientEvent::Message(p) => {
                let Some((publisher, seq)) = parse_payload(&p.payload) else {
                    return;
                };
                if let Some((l, name)) = &self.ledger {
                    l.delivered(name, &publisher, seq);
                }
                self.ctx.rec.record(Event::Deliver {
                    client: self.client.clone(),
                    conn: self.conn,
                    publisher,
                    seq,
                    topic: p.topic.clone(),
                    qos: p.qos as u8,
                    dup: p.dup,
                    retain: p.retain,
                });
                // Slow for 5 s of every 20: a backlog builds at the broker and drains again (always slow,
                // it would only ever fall further behind the workload's steady rate).
                if let Some(d) = self.slow {
                    if self.ctx.rec.now() % 20_000 < 5_000 {
                        tokio::time::sleep(d).await;
                    }
                }
            }
            ClientEvent::Reconnected(ack) => {
                self.conn = self.ctx.next_conn();
                self.current.store(self.conn, Ordering::Relaxed);
                self.connected = true;
                let now = self.ctx.rec.now();
                self.ctx.rec.record(Event::Connect {
                    client: self.client.clone(),
                    conn: self.conn,
                    via: self.via(),
                    clean_start: false,
                    sent: now,
                    outcome: Outcome::Ok,
                    session_present: Some(ack.session_present),
                });
            }
            ClientEvent::Disconnected(e) => {
                if self.connected {
                    self.connected = false;
                    self.ctx.rec.record(Event::Disconnected {
                        client: self.client.clone(),
                        conn: self.conn,
                        code: disconnect_code(&e),
                        reason: e.to_string(),
                    });
                } else {
                    // A reconnect attempt that failed.
                    let now = self.ctx.rec.now();
                    self.ctx.rec.record(Event::Connect {
                        client: self.client.clone(),
                        conn: self.ctx.next_conn(),
                        via: self.via(),
                        clean_start: false,
                        sent: now,
                        outcome: outcome_of(&e),
                        session_present: None,
                    });
                }
            }
        }
    }

    fn via(&self) -> Via {
        self.connector
            .as_ref()
            .map(|c| c.last())
            .unwrap_or(Via::Haproxy)
    }
}
