//! Publishers: each sends its own numbered messages (`publisher:seq`) to `chaos/data/{id}` at a steady
//! rate with a window in flight, records every outcome, and on a lost connection connects again (through
//! HAProxy or to the next node). A message's number is never reused: a publish lost with its connection is
//! recorded as failed (indeterminate) and the next one takes the next number.

use super::conn::{outcome_of, outcome_of_reason, payload, Ctx, OP_TIMEOUT};
use super::ledger::Ledger;
use super::pump::Pump;
use crate::history::{Event, Outcome, Via};
use cicada::client::ClientOptions;
use cicada::protocol::{ProtocolVersion, Publish, QoS};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

#[derive(Debug, Clone)]
pub struct Spec {
    pub id: String,
    pub qos: QoS,
    pub version: ProtocolVersion,
    /// Messages per second.
    pub rate: u32,
    /// Where it connects, in turn.
    pub via: Vec<Via>,
    /// Publishes awaiting acknowledgement at once, at most.
    pub window: usize,
}

pub fn topic(id: &str) -> String {
    format!("chaos/data/{id}")
}

/// Runs one publisher until the workload drains or stops.
pub async fn run(ctx: Ctx, spec: Spec, ledger: Arc<Ledger>) {
    let mut seq = 0u64;
    let mut attempt = 0usize;
    let topic = topic(&spec.id);
    let window = Arc::new(Semaphore::new(spec.window));
    while !ctx.quiet() {
        let via = spec.via[attempt % spec.via.len()];
        attempt += 1;
        let addr = ctx.targets.addr(via);
        let o = ClientOptions::new(addr.ip().to_string(), addr.port(), spec.id.clone())
            .version(spec.version)
            .keep_alive(10)
            .inflight(spec.window as u16);
        let Some((conn, client, mut events, _)) = ctx.connect(o, via).await else {
            if ctx.pause(Duration::from_millis(200)).await {
                return;
            }
            continue;
        };
        // Records the connection's end; the publishing loop below stops when it ends.
        let mut pump = Pump::new(ctx.clone(), spec.id.clone(), conn);
        let lost = tokio::spawn(async move { pump.run(&mut events, None).await });
        let mut tick = tokio::time::interval(Duration::from_secs(1) / spec.rate.max(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !ctx.quiet() && !lost.is_finished() {
            tick.tick().await;
            let Ok(permit) = window.clone().acquire_owned().await else {
                return;
            };
            // Draining may have begun while this waited: no message after it.
            if ctx.quiet() {
                break;
            }
            seq += 1;
            let sent = ctx.rec.now();
            let publish = Publish {
                topic: topic.clone(),
                qos: spec.qos,
                payload: payload(&spec.id, seq).into(),
                ..Publish::default()
            };
            let token = client.publish_start(publish).await;
            let ctx2 = ctx.clone();
            let ledger = ledger.clone();
            let id = spec.id.clone();
            let topic = topic.clone();
            let qos = spec.qos as u8;
            tokio::spawn(async move {
                let outcome = match token {
                    Err(e) => outcome_of(&e),
                    Ok(t) => match tokio::time::timeout(OP_TIMEOUT, t.wait()).await {
                        Ok(Ok(r)) => outcome_of_reason(r),
                        Ok(Err(e)) => outcome_of(&e),
                        Err(_) => Outcome::Timeout,
                    },
                };
                if outcome.is_ok() {
                    ledger.acked(sent, &id, seq);
                }
                ctx2.rec.record(Event::Publish {
                    client: id.clone(),
                    conn,
                    publisher: id,
                    seq,
                    topic,
                    qos,
                    retain: false,
                    sent,
                    outcome,
                });
                drop(permit);
            });
        }
        let _ = tokio::time::timeout(OP_TIMEOUT, client.disconnect()).await;
        lost.abort();
    }
    // Every publish's outcome is recorded before the publisher counts as done (each waits OP_TIMEOUT at
    // most): the drain phase waits for this.
    let _ = window.acquire_many(spec.window as u32).await;
}
