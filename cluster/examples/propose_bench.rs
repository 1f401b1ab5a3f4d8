//! Proposals per second and commit latency through the store, one node or three on loopback (in this process).
//!
//! `cargo run --release -p cicada-cluster --example propose_bench -- NODES FSYNC SECONDS CONCURRENCY`
//! e.g. `-- 3 always 5 256`. FSYNC is `always` or `interval`. Prints one JSON line.

use cicada_cluster::{Cluster, ClusterConfig, Fsync, StateMachine, Txn};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Kv;

impl StateMachine for Kv {
    fn apply(&mut self, txn: &mut Txn<'_>, command: &[u8]) -> Vec<u8> {
        txn.insert(&command[..command.len().min(16)], command);
        Vec::new()
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, d: &str| args.get(i).cloned().unwrap_or_else(|| d.to_string());
    let nodes: u64 = arg(0, "1").parse().expect("NODES");
    let fsync = match arg(1, "always").as_str() {
        "interval" => Fsync::Interval,
        _ => Fsync::Always,
    };
    let seconds: u64 = arg(2, "5").parse().expect("SECONDS");
    let concurrency: usize = arg(3, "256").parse().expect("CONCURRENCY");
    let dir = tempfile::tempdir().expect("temp dir");
    let ports: Vec<u16> = (0..nodes)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect::<Vec<_>>()
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    let peers: HashMap<u64, String> = (1..=nodes)
        .map(|i| (i, format!("127.0.0.1:{}", ports[i as usize - 1])))
        .collect();
    let mut cluster = Vec::new();
    for id in 1..=nodes {
        let mut c = ClusterConfig::single(dir.path().join(format!("n{id}")));
        c.node_id = id;
        c.listen = peers[&id].clone();
        c.peers = peers.clone();
        c.fsync = fsync;
        c.tick = Duration::from_millis(50);
        c.snapshot_interval = 50_000;
        cluster.push(Arc::new(
            Cluster::start(c, Kv, &prometheus::Registry::new())
                .await
                .expect("start"),
        ));
    }
    // Propose through the leader (followers would add a forwarding hop).
    let leader = loop {
        let mut found = None;
        for n in &cluster {
            if n.status().await.unwrap().role == "Leader" {
                found = Some(n.clone());
            }
        }
        if let Some(l) = found {
            break l;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let (leader, stop) = (leader.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let cmd = format!("{w:06}-{i:09}-payload-of-64-bytes..........................")
                    .into_bytes();
                let t = Instant::now();
                if leader.propose(cmd).await.is_ok() {
                    lat.push(t.elapsed());
                }
                i += 1;
            }
            lat
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    lat.sort_unstable();
    let q = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0)
    };
    println!(
        "{{\"nodes\":{nodes},\"fsync\":\"{}\",\"concurrency\":{concurrency},\"proposals\":{},\"per_sec\":{:.0},\"p50_ms\":{:.2},\"p99_ms\":{:.2}}}",
        arg(1, "always"),
        lat.len(),
        lat.len() as f64 / elapsed,
        q(0.5),
        q(0.99)
    );
    for n in &cluster {
        n.shutdown().await;
    }
}
