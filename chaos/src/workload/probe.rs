//! The availability probe: a persistent-session connect through HAProxy every few hundred milliseconds.
//! Its successes after a fault heals give the recovery time per fault kind.

use super::conn::Ctx;
use crate::history::{Event, Via};
use cicada::client::{Client, ClientOptions};
use cicada::protocol::ProtocolVersion;
use std::time::Duration;

pub async fn run(ctx: Ctx, period: Duration) {
    while !ctx.quiet() {
        let addr = ctx.targets.haproxy;
        let mut o = ClientOptions::new(addr.ip().to_string(), addr.port(), "probe")
            .version(ProtocolVersion::V5)
            .clean_start(false)
            .session_expiry(3_600)
            .keep_alive(10);
        o.connect_timeout = Duration::from_secs(3);
        let start = ctx.rec.now();
        let ok = match Client::connect(o).await {
            Ok((client, _events, _ack)) => {
                let _ = tokio::time::timeout(Duration::from_secs(3), client.disconnect()).await;
                true
            }
            Err(_) => false,
        };
        ctx.rec.record(Event::Probe {
            via: Via::Haproxy,
            ok,
            latency_ms: ctx.rec.now() - start,
        });
        if ctx.pause(period).await {
            return;
        }
    }
}
