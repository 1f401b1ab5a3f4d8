//! Startup time of the store with many retained messages: writes N retained messages (64-byte payloads,
//! `device/{i}/status`) through the store, closes it, and times opening it again (load + replay barrier).
//!
//! `cargo run --release --example store_startup -- N [CACHE_MB]` (defaults 1000000 and 128). Prints one JSON
//! line, with the resident memory right after the reopen.

use bytes::Bytes;
use cicada::broker::message::Message;
use cicada::broker::retained::RetainedStore;
use cicada::protocol::{Properties, QoS};
use cicada::store::Store;
use std::sync::Arc;
use std::time::Instant;

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("N"))
        .unwrap_or(1_000_000);
    let cache: u64 = std::env::args()
        .nth(2)
        .map(|a| a.parse().expect("CACHE_MB"))
        .unwrap_or(128)
        << 20;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = || {
        let mut c = cicada_cluster::ClusterConfig::single(dir.path().join("store"));
        c.cache_capacity = cache;
        c
    };
    let store = Arc::new(
        Store::open(config(), &prometheus::Registry::new())
            .await
            .expect("open"),
    );
    let written = Instant::now();
    let workers = 512;
    let mut tasks = Vec::new();
    for w in 0..workers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while i < n {
                let m = Message {
                    topic: format!("device/{i}/status"),
                    payload: Bytes::from(vec![b'x'; 64]),
                    qos: QoS::AtLeastOnce,
                    retain: true,
                    properties: Properties::default(),
                    expires_at: None,
                    publisher: None,
                    received: Instant::now(),
                    qos2_origin: None,
                    stored_fanout: false,
                };
                store.retain(&m).await.expect("retain");
                i += workers;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let write_secs = written.elapsed().as_secs_f64();
    store.shutdown().await;
    drop(store);
    let opened = Instant::now();
    let store = Store::open(config(), &prometheus::Registry::new())
        .await
        .expect("reopen");
    let open_secs = opened.elapsed().as_secs_f64();
    assert_eq!(store.retained.len(), n);
    let bytes: u64 = walk(dir.path());
    let rss_kb: u64 = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    println!(
        "{{\"retained\":{n},\"write_per_sec\":{:.0},\"startup_secs\":{open_secs:.2},\"store_mib\":{:.1},\"rss_after_open_mib\":{}}}",
        n as f64 / write_secs,
        bytes as f64 / (1 << 20) as f64,
        rss_kb >> 10
    );
    store.shutdown().await;
}

fn walk(p: &std::path::Path) -> u64 {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => walk(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}
