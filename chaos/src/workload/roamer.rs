//! Roamers: a client that, while connected to one node and publishing, connects again with the same client
//! id to another node. The new connection takes the session over; from its CONNACK on, the old one must
//! get nothing more done (promise 4: at most one live connection per client id). Every publish of both
//! connections is recorded with its connection, so the checker can see an old connection still being
//! served.

use super::conn::{outcome_of, outcome_of_reason, payload, Ctx, OP_TIMEOUT};
use super::pump::Pump;
use crate::history::{Event, Outcome, Via};
use crate::rng::Rng;
use cicada::client::{Client, ClientOptions};
use cicada::protocol::{ProtocolVersion, Publish, QoS};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

fn options(ctx: &Ctx, id: &str, via: Via) -> ClientOptions {
    let addr = ctx.targets.addr(via);
    ClientOptions::new(addr.ip().to_string(), addr.port(), id)
        .version(ProtocolVersion::V5)
        .clean_start(false)
        .session_expiry(600)
        .keep_alive(10)
}

/// Publishes QoS 1 every 50 ms on one connection until it fails or the workload drains.
fn publish_loop(
    ctx: Ctx,
    id: String,
    conn: u64,
    client: Client,
    seq: Arc<AtomicU64>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let topic = format!("chaos/roam/{id}");
        while !ctx.quiet() {
            let n = seq.fetch_add(1, Ordering::Relaxed) + 1;
            let sent = ctx.rec.now();
            let publish = Publish {
                topic: topic.clone(),
                qos: QoS::AtLeastOnce,
                payload: payload(&id, n).into(),
                ..Publish::default()
            };
            let outcome =
                match tokio::time::timeout(OP_TIMEOUT, client.publish_message(publish)).await {
                    Ok(Ok(r)) => outcome_of_reason(r),
                    Ok(Err(e)) => outcome_of(&e),
                    Err(_) => Outcome::Timeout,
                };
            let done = !outcome.is_ok();
            ctx.rec.record(Event::Publish {
                client: id.clone(),
                conn,
                publisher: id.clone(),
                seq: n,
                topic: topic.clone(),
                qos: 1,
                retain: false,
                sent,
                outcome,
            });
            if done || ctx.pause(Duration::from_millis(50)).await {
                return;
            }
        }
    })
}

/// Runs one roamer until the workload drains.
pub async fn run(ctx: Ctx, id: String, seed: u64) {
    let mut rng = Rng::new(seed);
    let seq = Arc::new(AtomicU64::new(0));
    let mut node = rng.below(ctx.targets.nodes.len() as u64) as usize;
    let mut current: Option<(Client, JoinHandle<()>, JoinHandle<()>)> = None;
    while !ctx.quiet() {
        let via = ctx.targets.node(node);
        // Another node each time (the same one when there is only one).
        node += 1 + rng.below(ctx.targets.nodes.len().max(2) as u64 - 1) as usize;
        if let Some((conn, client, mut events, _)) = ctx.connect(options(&ctx, &id, via), via).await
        {
            let mut pump = Pump::new(ctx.clone(), id.clone(), conn);
            let pumping = tokio::spawn(async move {
                pump.run(&mut events, None).await;
            });
            let publishing =
                publish_loop(ctx.clone(), id.clone(), conn, client.clone(), seq.clone());
            // The previous connection has been taken over: its publisher must stop (its recorded
            // publishes show whether the broker still served it).
            if let Some((old, old_pub, old_pump)) = current.replace((client, publishing, pumping)) {
                let _ = tokio::time::timeout(OP_TIMEOUT, old_pub).await;
                let _ = tokio::time::timeout(Duration::from_secs(1), old.abort()).await;
                old_pump.abort();
            }
        }
        if ctx
            .pause(Duration::from_millis(rng.range(1_500, 4_000)))
            .await
        {
            break;
        }
    }
    if let Some((client, publishing, pumping)) = current.take() {
        publishing.abort();
        let _ = tokio::time::timeout(OP_TIMEOUT, client.disconnect()).await;
        pumping.abort();
    }
}
