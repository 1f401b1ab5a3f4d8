//! `$SYS/broker/...` topics as Mosquitto publishes them (retained, every `sys_interval` seconds), so
//! dashboards built for Mosquitto keep working. Values come from the same counters as `/metrics`.

use super::message::Message;
use super::metrics::Metrics;
use super::Context;
use crate::protocol::{Properties, QoS};
use bytes::Bytes;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The topics and their current values.
pub fn snapshot(ctx: &Context) -> Vec<(&'static str, String)> {
    let m = &ctx.metrics;
    let connected = m.connections.get();
    let offline = m.sessions_offline.get();
    let received = Metrics::total(&m.messages_received);
    let sent = Metrics::total(&m.messages_sent);
    vec![
        (
            "$SYS/broker/version",
            format!("cicada {}", env!("CARGO_PKG_VERSION")),
        ),
        (
            "$SYS/broker/uptime",
            format!("{} seconds", ctx.started.elapsed().as_secs()),
        ),
        ("$SYS/broker/clients/connected", connected.to_string()),
        ("$SYS/broker/clients/active", connected.to_string()),
        ("$SYS/broker/clients/disconnected", offline.to_string()),
        ("$SYS/broker/clients/inactive", offline.to_string()),
        (
            "$SYS/broker/clients/total",
            (connected + offline).to_string(),
        ),
        ("$SYS/broker/messages/received", received.to_string()),
        ("$SYS/broker/messages/sent", sent.to_string()),
        (
            "$SYS/broker/publish/messages/received",
            received.to_string(),
        ),
        ("$SYS/broker/publish/messages/sent", sent.to_string()),
        (
            "$SYS/broker/publish/messages/dropped",
            dropped(m).to_string(),
        ),
        (
            "$SYS/broker/bytes/received",
            m.bytes_received.get().to_string(),
        ),
        ("$SYS/broker/bytes/sent", m.bytes_sent.get().to_string()),
        (
            "$SYS/broker/subscriptions/count",
            m.subscriptions.get().to_string(),
        ),
        (
            "$SYS/broker/retained messages/count",
            ctx.retained.len().to_string(),
        ),
        (
            "$SYS/broker/store/messages/count",
            m.queued_messages.get().to_string(),
        ),
        (
            "$SYS/broker/store/messages/bytes",
            m.queued_bytes.get().to_string(),
        ),
    ]
}

fn dropped(m: &Metrics) -> u64 {
    [
        "queue_full",
        "offline_qos0",
        "expired",
        "too_large_for_client",
        "message_size_limit",
    ]
    .iter()
    .map(|r| m.dropped.with_label_values(&[r]).get())
    .sum()
}

/// Publishes the snapshot now and then every interval, until shutdown.
pub async fn run(ctx: Arc<Context>) {
    let every = Duration::from_secs(ctx.config.mqtt.sys_interval);
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => publish(&ctx),
            _ = ctx.shutdown.cancelled() => return,
        }
    }
}

fn publish(ctx: &Arc<Context>) {
    let now = Instant::now();
    for (topic, value) in snapshot(ctx) {
        ctx.route(
            Arc::new(Message {
                topic: topic.to_string(),
                payload: Bytes::from(value),
                qos: QoS::AtMostOnce,
                retain: true,
                properties: Properties::default(),
                expires_at: None,
                publisher: None,
                received: now,
                qos2_origin: None,
                stored_fanout: false,
            }),
            Default::default(),
        );
    }
}
