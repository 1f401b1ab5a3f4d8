//! `bench pubsub`: N publishers, M subscribers, one filter. Each payload starts with the publisher's index,
//! a sequence number and the send time, so subscribers measure latency and spot losses and duplicates.

use super::stats::{now_nanos, percentile_ms, unique, Record};
use super::PubSubArgs;
use crate::cli::CliError;
use crate::client::{Client, ClientOptions, Event, PublishToken};
use crate::protocol::{topic, Publish, QoS};
use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Bytes of the header every payload carries: index (4), sequence (8), send time (8).
const HEADER: usize = 20;

/// The summary line, also printed as JSON with `--json`.
#[derive(Debug, Serialize)]
struct Summary {
    sent: u64,
    delivered: u64,
    msgs_per_sec: f64,
    sent_per_sec: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    lost: u64,
    duplicates: u64,
    publish_errors: u64,
}

struct Publisher {
    topic: String,
    sent: AtomicU64,
}

/// Runs the scenario and prints per-second lines and the summary.
pub async fn run(args: PubSubArgs) -> Result<(), CliError> {
    if args.size < HEADER {
        return Err(CliError::usage(format!(
            "--size must be at least {HEADER} bytes"
        )));
    }
    if args.publishers == 0 {
        return Err(CliError::usage("--publishers must be at least 1"));
    }
    if topic::validate_filter(&args.filter).is_err() {
        return Err(CliError::usage(format!(
            "invalid --filter {:?}",
            args.filter
        )));
    }
    let shared = topic::parse_shared(&args.filter)
        .and_then(Result::ok)
        .map(|s| s.filter.to_string());
    let match_filter = shared.clone().unwrap_or_else(|| args.filter.clone());
    let tag = std::process::id();
    let options_at = |port: u16, id: String| {
        let mut o = ClientOptions::new(args.target.host.clone(), port, id)
            .version(args.target.version)
            .keep_alive(args.target.keep_alive)
            .inflight(args.inflight);
        o.connect_timeout = Duration::from_secs(30);
        o
    };
    let options = |id: String| options_at(args.target.port, id);

    // Subscribers first, so that nothing published is missed.
    let mut records = Vec::new();
    let mut sub_clients = Vec::new();
    let sub_options = |i: u32| {
        // Subscribers on another node of a cluster (--sub-port): the cross-node path.
        let o = options_at(
            args.sub_port.unwrap_or(args.target.port),
            format!("bench-sub-{tag}-{i}"),
        );
        match (args.persistent, args.target.version.is_v5()) {
            (false, _) => o,
            (true, true) => o.clean_start(false).session_expiry(300),
            (true, false) => o.clean_start(false),
        }
    };
    for i in 0..args.subscribers {
        let (client, events, _) = Client::connect(sub_options(i))
            .await
            .map_err(|e| CliError::failure(format!("subscriber {i}: {e}")))?;
        client
            .subscribe(args.filter.clone(), args.qos)
            .await
            .map_err(|e| CliError::failure(format!("subscribe: {e}")))?;
        let record = Arc::new(Mutex::new(Record::default()));
        tokio::spawn(receive(events, record.clone()));
        records.push(record);
        sub_clients.push(client);
    }
    let mut publishers = Vec::new();
    let mut pub_clients = Vec::new();
    for i in 0..args.publishers {
        let (client, _events, _) = Client::connect(options(format!("bench-pub-{tag}-{i}")))
            .await
            .map_err(|e| CliError::failure(format!("publisher {i}: {e}")))?;
        let topic = args.topic.replace("%i", &i.to_string());
        publishers.push(Arc::new(Publisher {
            topic,
            sent: AtomicU64::new(0),
        }));
        pub_clients.push(client);
    }

    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + Duration::from_secs(args.duration);
    let mut tasks = Vec::new();
    for (i, (client, p)) in pub_clients.iter().zip(&publishers).enumerate() {
        let job = PublishJob {
            index: i as u32,
            client: client.clone(),
            publisher: p.clone(),
            qos: args.qos,
            retain: args.retain,
            size: args.size,
            rate: args.rate,
            start,
            end,
            errors: errors.clone(),
            window: usize::from(args.inflight),
        };
        tasks.push(tokio::spawn(job.run()));
    }

    let mut all_latencies: Vec<u32> = Vec::new();
    let mut last_sent = 0;
    let mut last_delivered = 0;
    let mut second = 0;
    let mut tick = tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
    while Instant::now() < end {
        tick.tick().await;
        second += 1;
        let sent: u64 = publishers
            .iter()
            .map(|p| p.sent.load(Ordering::Relaxed))
            .sum();
        let (delivered, mut lat) = collect(&records);
        lat.sort_unstable();
        let line = format!(
            "{second}s sent={} delivered={} rate={}/s p50={:.2}ms p99={:.2}ms",
            sent - last_sent,
            delivered - last_delivered,
            delivered - last_delivered,
            percentile_ms(&lat, 50.0),
            percentile_ms(&lat, 99.0)
        );
        if args.target.json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
        last_sent = sent;
        last_delivered = delivered;
        all_latencies.extend(lat);
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let sent: u64 = publishers
        .iter()
        .map(|p| p.sent.load(Ordering::Relaxed))
        .sum();
    let expected_per_sub: u64 = publishers
        .iter()
        .filter(|p| topic::matches(&match_filter, &p.topic))
        .map(|p| p.sent.load(Ordering::Relaxed))
        .sum();
    let expected = if shared.is_some() {
        expected_per_sub
    } else {
        expected_per_sub * u64::from(args.subscribers)
    };

    // Wait for the last deliveries: until everything expected arrived, or no progress for a second, or
    // the drain time is up.
    let drain_end = Instant::now() + Duration::from_secs(args.drain);
    let mut previous = u64::MAX;
    while Instant::now() < drain_end {
        let unique_now = count_unique(&records, shared.is_some());
        if unique_now >= expected || unique_now == previous {
            break;
        }
        previous = unique_now;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let (total_delivered, lat) = collect(&records);
    all_latencies.extend(lat);
    all_latencies.sort_unstable();
    let unique_total = count_unique(&records, shared.is_some());
    let summary = Summary {
        sent,
        delivered: total_delivered,
        msgs_per_sec: round2(total_delivered as f64 / elapsed.max(f64::EPSILON)),
        sent_per_sec: round2(sent as f64 / elapsed.max(f64::EPSILON)),
        p50_ms: percentile_ms(&all_latencies, 50.0),
        p90_ms: percentile_ms(&all_latencies, 90.0),
        p99_ms: percentile_ms(&all_latencies, 99.0),
        max_ms: percentile_ms(&all_latencies, 100.0),
        lost: expected.saturating_sub(unique_total),
        duplicates: total_delivered.saturating_sub(unique_total),
        publish_errors: errors.load(Ordering::Relaxed),
    };
    for c in pub_clients.iter().chain(&sub_clients) {
        let _ = c.disconnect().await;
    }
    if args.persistent {
        // A clean start ends each persistent session the bench made (and its stored inbox).
        for i in 0..args.subscribers {
            let end = sub_options(i).clean_start(true).session_expiry(0);
            if let Ok((c, _, _)) = Client::connect(end).await {
                let _ = c.disconnect().await;
            }
        }
    }
    if args.target.json {
        println!(
            "{}",
            serde_json::to_string(&summary).map_err(|e| CliError::failure(e.to_string()))?
        );
    } else {
        println!(
            "sent {} delivered {} ({:.0} msg/s) latency p50 {:.2} ms p90 {:.2} ms p99 {:.2} ms max {:.2} ms lost {} duplicates {} publish errors {}",
            summary.sent, summary.delivered, summary.msgs_per_sec, summary.p50_ms, summary.p90_ms, summary.p99_ms,
            summary.max_ms, summary.lost, summary.duplicates, summary.publish_errors
        );
    }
    Ok(())
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Total deliveries so far, and the latencies recorded since the previous call.
fn collect(records: &[Arc<Mutex<Record>>]) -> (u64, Vec<u32>) {
    let mut delivered = 0;
    let mut lat = Vec::new();
    for r in records {
        if let Ok(mut r) = r.lock() {
            delivered += r.delivered;
            lat.append(&mut r.latencies_us);
        }
    }
    (delivered, lat)
}

fn count_unique(records: &[Arc<Mutex<Record>>], shared: bool) -> u64 {
    let guards: Vec<_> = records.iter().filter_map(|r| r.lock().ok()).collect();
    let refs: Vec<&Record> = guards.iter().map(|g| &**g).collect();
    if shared {
        unique(&refs)
    } else {
        refs.iter().map(|r| unique(&[r])).sum()
    }
}

async fn receive(mut events: crate::client::Events, record: Arc<Mutex<Record>>) {
    while let Some(event) = events.recv().await {
        let Event::Message(m) = event else { continue };
        let now = now_nanos();
        let Some((publisher, seq, sent_at)) = parse_header(&m.payload) else {
            continue;
        };
        let latency_us = (now.saturating_sub(sent_at) / 1000).min(u64::from(u32::MAX)) as u32;
        if let Ok(mut r) = record.lock() {
            r.note(publisher as usize, seq, latency_us);
        }
    }
}

fn parse_header(payload: &[u8]) -> Option<(u32, u64, u64)> {
    let h = payload.get(..HEADER)?;
    let idx = u32::from_be_bytes(h[0..4].try_into().ok()?);
    let seq = u64::from_be_bytes(h[4..12].try_into().ok()?);
    let at = u64::from_be_bytes(h[12..20].try_into().ok()?);
    Some((idx, seq, at))
}

struct PublishJob {
    index: u32,
    client: Client,
    publisher: Arc<Publisher>,
    qos: QoS,
    retain: bool,
    size: usize,
    rate: f64,
    start: Instant,
    end: Instant,
    errors: Arc<AtomicU64>,
    window: usize,
}

impl PublishJob {
    async fn run(self) {
        // Acknowledgements are awaited by a companion task, so publishing is pipelined up to the window.
        let (tokens_tx, mut tokens_rx) = mpsc::channel::<PublishToken>(self.window.max(1));
        let errors = self.errors.clone();
        let acks = tokio::spawn(async move {
            while let Some(t) = tokens_rx.recv().await {
                if t.wait().await.is_err() {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        let padding = vec![0u8; self.size - HEADER];
        let mut seq: u64 = 0;
        loop {
            let now = Instant::now();
            if now >= self.end {
                break;
            }
            if self.rate > 0.0 {
                let due = self.start + Duration::from_secs_f64(seq as f64 / self.rate);
                if due > now {
                    tokio::time::sleep_until(due.min(self.end)).await;
                    continue;
                }
            }
            let mut payload = BytesMut::with_capacity(self.size);
            payload.put_u32(self.index);
            payload.put_u64(seq);
            payload.put_u64(now_nanos());
            payload.put_slice(&padding);
            let publish = Publish {
                topic: self.publisher.topic.clone(),
                qos: self.qos,
                retain: self.retain,
                payload: Bytes::from(payload),
                ..Publish::default()
            };
            match self.client.publish_start(publish).await {
                Ok(token) => {
                    if self.qos != QoS::AtMostOnce && tokens_tx.send(token).await.is_err() {
                        break;
                    }
                }
                Err(_) => {
                    self.errors.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
            seq += 1;
            self.publisher.sent.store(seq, Ordering::Relaxed);
        }
        drop(tokens_tx);
        let _ = acks.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let mut b = BytesMut::new();
        b.put_u32(7);
        b.put_u64(99);
        b.put_u64(123_456);
        b.put_slice(&[0; 44]);
        assert_eq!(parse_header(&b), Some((7, 99, 123_456)));
        assert_eq!(parse_header(&b[..10]), None);
    }
}
