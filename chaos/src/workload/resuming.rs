//! A QoS 2 publisher that keeps its session: one client object for the whole run, clean start off, which
//! reconnects by itself to the next node when its connection is lost and resends what was not yet
//! acknowledged (PUBLISH with DUP, or PUBREL). The broker's inbound QoS 2 state must move with the session
//! to whichever node the publisher comes back on: a message resent there is delivered once, not twice
//! (judged by the checker whatever the publish's recorded outcome).

use super::conn::{outcome_of, outcome_of_reason, payload, Ctx, RotatingConnector};
use super::ledger::Ledger;
use super::publisher::topic;
use super::pump::Pump;
use crate::history::{Event, Outcome, Via};
use cicada::client::{Backoff, ClientOptions};
use cicada::protocol::{ProtocolVersion, Publish, QoS};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Longer than a fault is held: a publish in flight across a failover is resent and acknowledged on
/// another node, and recorded with that outcome.
const ACK_WAIT: Duration = Duration::from_secs(30);

/// Runs the publisher `id` at `rate` msg/s over `via` (in turn, one per reconnect) until the drain.
pub async fn run(ctx: Ctx, id: String, rate: u32, via: Vec<Via>, ledger: Arc<Ledger>) {
    let targets: Vec<(Via, std::net::SocketAddr)> =
        via.iter().map(|v| (*v, ctx.targets.addr(*v))).collect();
    let mut attempt = 0;
    let (conn, client, mut events, connector) = loop {
        let connector = RotatingConnector::new(targets.clone(), attempt);
        let o = ClientOptions::new("chaos", 0, id.clone())
            .version(ProtocolVersion::V5)
            .clean_start(false)
            .session_expiry(86_400)
            .keep_alive(10)
            .inflight(16)
            .reconnect(Backoff {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(1),
                multiplier: 2.0,
            })
            .connector(connector.clone());
        if let Some((conn, client, events, _)) = ctx.connect(o, via[attempt % via.len()]).await {
            break (conn, client, events, connector);
        }
        attempt += 1;
        if ctx.pause(Duration::from_millis(300)).await {
            return;
        }
    };
    let mut pump = Pump::new(ctx.clone(), id.clone(), conn);
    pump.connector = Some(connector);
    let current = pump.current.clone();
    let recording = tokio::spawn(async move { pump.run(&mut events, None).await });
    let window = Arc::new(Semaphore::new(16));
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let topic = topic(&id);
    let mut seq = 0u64;
    while !ctx.quiet() {
        tick.tick().await;
        let Ok(permit) = window.clone().acquire_owned().await else {
            break;
        };
        if ctx.quiet() {
            break;
        }
        seq += 1;
        let sent = ctx.rec.now();
        // The connection it is sent on (it may be acknowledged on a later one, after a reconnect).
        let conn = current.load(std::sync::atomic::Ordering::Relaxed);
        let publish = Publish {
            topic: topic.clone(),
            qos: QoS::ExactlyOnce,
            payload: payload(&id, seq).into(),
            ..Publish::default()
        };
        let token = client.publish_start(publish).await;
        let (ctx2, ledger, id2, topic2) = (ctx.clone(), ledger.clone(), id.clone(), topic.clone());
        tokio::spawn(async move {
            let outcome = match token {
                Err(e) => outcome_of(&e),
                Ok(t) => match tokio::time::timeout(ACK_WAIT, t.wait()).await {
                    Ok(Ok(r)) => outcome_of_reason(r),
                    Ok(Err(e)) => outcome_of(&e),
                    Err(_) => Outcome::Timeout,
                },
            };
            if outcome.is_ok() {
                ledger.acked(sent, &id2, seq);
            }
            ctx2.rec.record(Event::Publish {
                client: id2.clone(),
                conn,
                publisher: id2,
                seq,
                topic: topic2,
                qos: 2,
                retain: false,
                sent,
                outcome,
            });
            drop(permit);
        });
    }
    let _ = window.acquire_many(16).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), client.disconnect()).await;
    recording.abort();
}
