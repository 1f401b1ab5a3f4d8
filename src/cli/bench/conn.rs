//! `bench conn`: open N connections at a rate, report connects per second and failures, hold them.

use super::ConnArgs;
use crate::cli::CliError;
use crate::client::{Client, ClientOptions};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Serialize)]
struct Summary {
    connected: u64,
    failed: u64,
    seconds: f64,
    conns_per_sec: f64,
}

/// Runs the scenario.
pub async fn run(args: ConnArgs) -> Result<(), CliError> {
    let connected = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let held: Arc<Mutex<Vec<Client>>> =
        Arc::new(Mutex::new(Vec::with_capacity(args.count as usize)));
    let tag = std::process::id();
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let progress = {
        let (connected, failed, json) = (connected.clone(), failed.clone(), args.target.json);
        tokio::spawn(async move {
            let mut tick =
                tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
            let mut last = 0;
            loop {
                tick.tick().await;
                let c = connected.load(Ordering::Relaxed);
                let line = format!(
                    "{}s connected={c} failed={} rate={}/s",
                    start.elapsed().as_secs(),
                    failed.load(Ordering::Relaxed),
                    c - last
                );
                if json {
                    eprintln!("{line}");
                } else {
                    println!("{line}");
                }
                last = c;
            }
        })
    };
    for i in 0..args.count {
        if args.rate > 0.0 {
            tokio::time::sleep_until(start + Duration::from_secs_f64(f64::from(i) / args.rate))
                .await;
        }
        let mut options = ClientOptions::new(
            args.target.host.clone(),
            args.target.port,
            format!("bench-conn-{tag}-{i}"),
        )
        .version(args.target.version)
        .keep_alive(args.target.keep_alive);
        options.connect_timeout = Duration::from_secs(30);
        let (connected, failed, held) = (connected.clone(), failed.clone(), held.clone());
        tasks.spawn(async move {
            match Client::connect(options).await {
                Ok((client, events, _)) => {
                    // Events are not read: idle connections receive nothing, and the task keeps pinging.
                    std::mem::forget(events);
                    if let Ok(mut h) = held.lock() {
                        h.push(client);
                    }
                    connected.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    if failed.fetch_add(1, Ordering::Relaxed) < 5 {
                        eprintln!("connect failed: {e}");
                    }
                }
            }
        });
        // Keep the number of handshakes in progress bounded when no rate is given.
        while tasks.len() > 512 {
            tasks.join_next().await;
        }
    }
    while tasks.join_next().await.is_some() {}
    let seconds = start.elapsed().as_secs_f64();
    progress.abort();
    let c = connected.load(Ordering::Relaxed);
    let summary = Summary {
        connected: c,
        failed: failed.load(Ordering::Relaxed),
        seconds: (seconds * 1000.0).round() / 1000.0,
        conns_per_sec: (c as f64 / seconds.max(f64::EPSILON)).round(),
    };
    if args.target.json {
        println!(
            "{}",
            serde_json::to_string(&summary).map_err(|e| CliError::failure(e.to_string()))?
        );
    } else {
        println!(
            "connected {} failed {} in {:.3} s ({} conn/s); holding",
            summary.connected, summary.failed, summary.seconds, summary.conns_per_sec
        );
    }
    if args.hold > 0 {
        tokio::time::sleep(Duration::from_secs(args.hold)).await;
    } else {
        let _ = tokio::signal::ctrl_c().await;
    }
    let clients = held
        .lock()
        .map(|mut h| std::mem::take(&mut *h))
        .unwrap_or_default();
    for c in clients {
        let _ = c.disconnect().await;
    }
    if summary.failed > 0 && summary.connected == 0 {
        return Err(CliError::failure("no connection succeeded"));
    }
    Ok(())
}
