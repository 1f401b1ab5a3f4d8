//! The availability probe: a persistent-session connect every few hundred milliseconds, in turn through
//! HAProxy and straight to each node. Its successes after a fault heals (on the node the fault hit) give
//! the recovery time per fault kind.

use super::conn::Ctx;
use crate::history::{Event, Via};
use cicada::client::{Client, ClientOptions};
use cicada::protocol::ProtocolVersion;
use std::time::Duration;

pub async fn run(ctx: Ctx, period: Duration) {
    let mut vias = vec![Via::Haproxy];
    vias.extend((0..ctx.targets.nodes.len()).map(|i| ctx.targets.node(i)));
    let mut round = 0usize;
    while !ctx.quiet() {
        let via = vias[round % vias.len()];
        round += 1;
        let addr = ctx.targets.addr(via);
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
            via,
            ok,
            latency_ms: ctx.rec.now() - start,
        });
        if ctx.pause(period).await {
            return;
        }
    }
}
