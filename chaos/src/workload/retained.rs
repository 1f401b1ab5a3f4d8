//! Retained messages: one writer replaces the retained value of a few topics in turn (each value numbered,
//! one write at a time, so a topic's values only grow), and readers subscribe afresh on each node in turn
//! and record what each topic's retained value was.

use super::conn::{outcome_of, outcome_of_reason, parse_payload, payload, Ctx, OP_TIMEOUT};
use crate::history::{Event, Outcome, Via};
use cicada::client::{ClientOptions, Event as ClientEvent};
use cicada::protocol::{ProtocolVersion, Publish, QoS};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;

/// The retained topics.
pub const KEYS: usize = 4;
pub const WRITER: &str = "retain-writer";

pub fn topic(k: usize) -> String {
    format!("chaos/retained/{k}")
}

/// Writes retained values, one at a time, through HAProxy, until the workload drains.
pub async fn write(ctx: Ctx, period: Duration) {
    let mut seq = 0u64;
    let via = Via::Haproxy;
    while !ctx.quiet() {
        let addr = ctx.targets.addr(via);
        let o = ClientOptions::new(addr.ip().to_string(), addr.port(), WRITER)
            .version(ProtocolVersion::V5)
            .keep_alive(10);
        let Some((conn, client, _events, _)) = ctx.connect(o, via).await else {
            if ctx.pause(Duration::from_millis(200)).await {
                return;
            }
            continue;
        };
        while !ctx.quiet() {
            seq += 1;
            let topic = topic((seq as usize) % KEYS);
            let sent = ctx.rec.now();
            let publish = Publish {
                topic: topic.clone(),
                qos: QoS::AtLeastOnce,
                retain: true,
                payload: payload(WRITER, seq).into(),
                ..Publish::default()
            };
            let outcome =
                match tokio::time::timeout(OP_TIMEOUT, client.publish_message(publish)).await {
                    Ok(Ok(r)) => outcome_of_reason(r),
                    Ok(Err(e)) => outcome_of(&e),
                    Err(_) => Outcome::Timeout,
                };
            let failed = matches!(outcome, Outcome::Failed { .. });
            ctx.rec.record(Event::Publish {
                client: WRITER.into(),
                conn,
                publisher: WRITER.into(),
                seq,
                topic,
                qos: 1,
                retain: true,
                sent,
                outcome,
            });
            if failed || ctx.pause(period).await {
                break;
            }
        }
        let _ = tokio::time::timeout(OP_TIMEOUT, client.disconnect()).await;
    }
}

/// Reads every retained topic on each node in turn with a fresh clean session, every `period`, until the
/// workload drains.
pub async fn read(ctx: Ctx, id: String, first: usize, period: Duration) {
    let mut round = first;
    while !ctx.quiet() {
        let via = ctx.targets.node(round);
        round += 1;
        let Via::Node(node) = via else { continue };
        let addr = ctx.targets.addr(via);
        let o = ClientOptions::new(addr.ip().to_string(), addr.port(), id.clone())
            .version(ProtocolVersion::V5)
            .keep_alive(10);
        if let Some((_conn, client, mut events, _)) = ctx.connect(o, via).await {
            let sent = ctx.rec.now();
            let subscribed = tokio::time::timeout(
                OP_TIMEOUT,
                client.subscribe("chaos/retained/+", QoS::AtLeastOnce),
            )
            .await;
            if matches!(subscribed, Ok(Ok(_))) {
                // Retained values come right behind the SUBACK (a node without a leader defers them);
                // allow a generous time for them.
                let mut got: BTreeMap<String, u64> = BTreeMap::new();
                let deadline = Instant::now() + Duration::from_secs(5);
                let mut lost = false;
                while got.len() < KEYS {
                    let ev = tokio::select! {
                        ev = events.recv() => ev,
                        _ = tokio::time::sleep_until(deadline) => break,
                    };
                    match ev {
                        Some(ClientEvent::Message(p)) if p.retain => {
                            if let Some((_, seq)) = parse_payload(&p.payload) {
                                got.insert(p.topic.clone(), seq);
                            }
                        }
                        Some(ClientEvent::Disconnected(_)) | None => {
                            lost = true;
                            break;
                        }
                        Some(_) => {}
                    }
                }
                // A read cut short by a lost connection says nothing about what was missing.
                for k in (0..KEYS).filter(|k| !lost || got.contains_key(&topic(*k))) {
                    let topic = topic(k);
                    ctx.rec.record(Event::RetainedRead {
                        client: id.clone(),
                        node,
                        seq: got.get(&topic).copied(),
                        topic,
                        sent,
                    });
                }
            }
            let _ = tokio::time::timeout(OP_TIMEOUT, client.disconnect()).await;
        }
        if ctx.pause(period).await {
            return;
        }
    }
}
