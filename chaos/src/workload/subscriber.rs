//! Persistent subscribers: each holds a session (clean start off, long expiry) subscribed to every data
//! topic (directly, or as a member of a shared group), and records what it gets. Some reconnect by
//! themselves and move to another node (one client object, so its QoS 2 state survives the move), some
//! are slow, one goes offline for a while and comes back on another node.

use super::conn::{outcome_of, Ctx, RotatingConnector, OP_TIMEOUT};
use super::ledger::Ledger;
use super::pump::{Pump, PumpEnd};
use crate::history::{Event, Outcome, Via};
use crate::rng::Rng;
use cicada::client::{Backoff, Client, ClientOptions, Events};
use cicada::protocol::{ProtocolVersion, QoS};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Every data topic.
pub const DATA_FILTER: &str = "chaos/data/#";
/// Every data topic, for the members of the workload's shared group (one of them gets each message).
pub const GROUP_FILTER: &str = "$share/chaos-g/chaos/data/#";
/// Session Expiry of the persistent sessions (v5), seconds: longer than any run.
pub const SESSION_EXPIRY: u32 = 86_400;

/// One persistent subscriber.
#[derive(Debug, Clone)]
pub struct Spec {
    pub id: String,
    pub qos: QoS,
    pub version: ProtocolVersion,
    /// Time taken per message.
    pub slow: Option<Duration>,
    /// Where it connects, in turn (one entry: always there).
    pub via: Vec<Via>,
    /// Goes offline now and then (normal DISCONNECT, session kept) and comes back elsewhere.
    pub offline: bool,
    /// What it subscribes to: [`DATA_FILTER`], or [`GROUP_FILTER`] as a member of the shared group.
    pub filter: &'static str,
}

impl Spec {
    /// The name its deliveries count under in the ledger: a shared group's members count as one.
    fn ledger_name(&self) -> String {
        match cicada::protocol::topic::parse_shared(self.filter) {
            Some(Ok(s)) => format!("$share/{}", s.group),
            _ => self.id.clone(),
        }
    }
}

fn options(ctx: &Ctx, spec: &Spec, connector: Arc<RotatingConnector>) -> ClientOptions {
    let mut o = ClientOptions::new("chaos", 0, spec.id.clone())
        .version(spec.version)
        .clean_start(false)
        .keep_alive(10)
        .connector(connector);
    if spec.version == ProtocolVersion::V5 {
        o = o.session_expiry(SESSION_EXPIRY);
    }
    o.connect_timeout = Duration::from_secs(5);
    let _ = ctx;
    o
}

fn connector(ctx: &Ctx, spec: &Spec, first: usize) -> Arc<RotatingConnector> {
    let targets = spec
        .via
        .iter()
        .map(|v| (*v, ctx.targets.addr(*v)))
        .collect();
    RotatingConnector::new(targets, first)
}

/// Connects (retrying until it works or the workload stops) and subscribes once per session.
async fn open(
    ctx: &Ctx,
    spec: &Spec,
    attempt: &mut usize,
    reconnect: bool,
) -> Option<(u64, Client, Events, Arc<RotatingConnector>)> {
    loop {
        if ctx.stopped() {
            return None;
        }
        let conn = connector(ctx, spec, *attempt);
        let mut o = options(ctx, spec, conn.clone());
        if reconnect {
            o = o.reconnect(Backoff {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(1),
                multiplier: 2.0,
            });
        }
        let via = spec.via[*attempt % spec.via.len()];
        *attempt += 1;
        if let Some((id, client, events, _ack)) = ctx.connect(o, via).await {
            return Some((id, client, events, conn));
        }
        if ctx.pause(Duration::from_millis(300)).await {
            return None;
        }
    }
}

/// Subscribes to the data topics, retrying until granted; records each attempt.
async fn subscribe(ctx: &Ctx, spec: &Spec, conn: u64, client: &Client, ledger: &Ledger) -> bool {
    loop {
        let sent = ctx.rec.now();
        let r = tokio::time::timeout(OP_TIMEOUT, client.subscribe(spec.filter, spec.qos)).await;
        let outcome = match &r {
            Ok(Ok(_)) => Outcome::Ok,
            Ok(Err(e)) => outcome_of(e),
            Err(_) => Outcome::Timeout,
        };
        let ok = outcome.is_ok();
        ctx.rec.record(Event::Subscribe {
            client: spec.id.clone(),
            conn,
            filter: spec.filter.into(),
            qos: spec.qos as u8,
            sent,
            outcome,
        });
        if ok {
            ledger.subscribed(&spec.ledger_name(), ctx.rec.now());
            return true;
        }
        if ctx.pause(Duration::from_millis(300)).await {
            return false;
        }
    }
}

/// Runs one subscriber until the workload stops.
pub async fn run(ctx: Ctx, spec: Spec, ledger: Arc<Ledger>, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut attempt = 0usize;
    let mut subscribed = false;
    loop {
        let reconnect = !spec.offline;
        let Some((conn, client, mut events, connector)) =
            open(&ctx, &spec, &mut attempt, reconnect).await
        else {
            return;
        };
        if !subscribed {
            subscribed = subscribe(&ctx, &spec, conn, &client, &ledger).await;
            if !subscribed {
                return;
            }
        }
        let mut pump = Pump::new(ctx.clone(), spec.id.clone(), conn);
        pump.connector = Some(connector);
        pump.ledger = Some((ledger.clone(), spec.ledger_name()));
        pump.slow = spec.slow;
        if !spec.offline {
            // One client for the whole run: it reconnects by itself.
            pump.run(&mut events, None).await;
            let _ = client.disconnect().await;
            return;
        }
        // Online a while, then offline a while (unless the run is draining: then stay).
        let online = Duration::from_millis(rng.range(3_000, 8_000));
        let end = loop {
            let end = pump.run(&mut events, Some(Instant::now() + online)).await;
            if end != PumpEnd::Deadline || !*ctx.draining.borrow() {
                break end;
            }
        };
        match end {
            PumpEnd::Stopped => {
                let _ = client.disconnect().await;
                return;
            }
            PumpEnd::Deadline => {
                let _ = tokio::time::timeout(OP_TIMEOUT, client.disconnect()).await;
                // Messages the client acknowledged before the DISCONNECT are delivered: record them.
                pump.finish(&mut events).await;
                let offline = Duration::from_millis(rng.range(1_000, 4_000));
                let mut draining = ctx.draining.clone();
                tokio::select! {
                    _ = tokio::time::sleep(offline) => {}
                    _ = draining.wait_for(|d| *d) => {}
                }
            }
            PumpEnd::Closed => {
                if ctx.pause(Duration::from_millis(300)).await {
                    return;
                }
            }
        }
    }
}
