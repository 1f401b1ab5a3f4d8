//! Exactly-once QoS 2 in both directions, and at-least-once QoS 1, across `kill -9` of a real `cicada serve`:
//! a persistent publisher's inbound QoS 2 ids are stored with its session (a resend with DUP after the crash is
//! not routed again), and a bounded loop of kills at random points during a mixed QoS 1/2 stream between
//! persistent sessions loses nothing acknowledged and delivers no QoS 2 message twice. The loop's seed is
//! printed; `TEST_KILL_SEED` replays one and `TEST_KILL_ROUNDS` makes the loop longer.

mod common;

use cicada::client::{Backoff, Client, ClientOptions};
use cicada::protocol::{Packet, ProtocolVersion, PubAck, Publish, QoS, ReasonCode};
use common::broker::Raw;
use common::process::CicadaProcess;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A raw MQTT 5 persistent session (expiry 3600); subscribes to `filter` at QoS 2 on its first connect.
async fn persistent(addr: SocketAddr, id: &str, first: bool, filter: &str) -> (Raw, bool) {
    let mut c = common::broker::connect(id, ProtocolVersion::V5);
    c.clean_start = first;
    c.properties.session_expiry_interval = Some(3600);
    let mut raw = Raw::connect(addr).await;
    let (reason, present, _) = raw.handshake(c).await;
    assert_eq!(reason, ReasonCode::SUCCESS);
    if first {
        raw.subscribe(1, filter, QoS::ExactlyOnce).await;
    }
    (raw, present)
}

/// Receives QoS 2 as a receiver must: delivers on PUBLISH unless the packet id is still held (awaiting
/// PUBREL), holds it across reconnects, frees it at PUBREL. Returns the payloads delivered.
struct Receiver {
    held: HashSet<u16>,
    delivered: Vec<String>,
}

impl Receiver {
    /// Handles one packet; `false` when the connection closed.
    async fn step(&mut self, raw: &mut Raw) -> bool {
        match raw.recv().await {
            Some(Packet::Publish(m)) => {
                let text = String::from_utf8(m.payload.to_vec()).unwrap();
                match m.qos {
                    QoS::ExactlyOnce => {
                        if self.held.insert(m.pkid) {
                            self.delivered.push(text);
                        }
                        return raw.try_send(&Packet::PubRec(PubAck::new(m.pkid))).await;
                    }
                    QoS::AtLeastOnce => {
                        self.delivered.push(text);
                        return raw.try_send(&Packet::PubAck(PubAck::new(m.pkid))).await;
                    }
                    QoS::AtMostOnce => self.delivered.push(text),
                }
                true
            }
            Some(Packet::PubRel(r)) => {
                self.held.remove(&r.pkid);
                raw.try_send(&Packet::PubComp(PubAck::new(r.pkid))).await
            }
            Some(_) => true,
            None => false,
        }
    }
}

/// A persistent publisher sends a QoS 2 message and gets PUBREC; the broker is killed before its PUBREL. After
/// the restart it resends the PUBLISH with DUP (its session says it was not released): the broker must answer
/// PUBREC without routing it again, then PUBREL frees the id for a new message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inbound_qos2_resend_after_kill_9_is_not_routed_twice() {
    let mut broker = CicadaProcess::start("[mqtt]\nsys_interval = 0");
    let addr: SocketAddr = ([127, 0, 0, 1], broker.port).into();
    let (mut sub, _) = persistent(addr, "counter", true, "x/#").await;
    let mut rx = Receiver {
        held: HashSet::new(),
        delivered: Vec::new(),
    };
    let (mut publisher, _) = persistent(addr, "source", true, "unused/#").await;
    let first = Publish {
        topic: "x/1".into(),
        qos: QoS::ExactlyOnce,
        pkid: 7,
        payload: "first".into(),
        ..Publish::default()
    };
    publisher.send(&Packet::Publish(first.clone())).await;
    assert_eq!(publisher.recv().await, Some(Packet::PubRec(PubAck::new(7))));
    // The subscriber has it, completely.
    while rx.delivered.is_empty() || !rx.held.is_empty() {
        assert!(rx.step(&mut sub).await);
    }
    broker.kill9_and_restart();

    let (mut publisher, present) = persistent(addr, "source", false, "").await;
    assert!(present);
    publisher
        .send(&Packet::Publish(Publish {
            dup: true,
            ..first.clone()
        }))
        .await;
    assert_eq!(
        publisher.recv().await,
        Some(Packet::PubRec(PubAck::new(7))),
        "the resend is acknowledged"
    );
    publisher.send(&Packet::PubRel(PubAck::new(7))).await;
    assert_eq!(
        publisher.recv().await,
        Some(Packet::PubComp(PubAck::new(7))),
        "the id was held [MQTT-4.3.3-9]"
    );
    // The id is free again: a new message with it is routed.
    publisher
        .send(&Packet::Publish(Publish {
            payload: "second".into(),
            ..first
        }))
        .await;
    assert_eq!(publisher.recv().await, Some(Packet::PubRec(PubAck::new(7))));
    let (mut sub, present) = persistent(addr, "counter", false, "").await;
    assert!(present);
    while !rx.delivered.iter().any(|d| d == "second") {
        assert!(rx.step(&mut sub).await, "closed before the second message");
    }
    assert_eq!(rx.delivered, ["first", "second"], "first delivered once");
}

/// Inbound QoS 2 ids belong to the session, not to a connection: after a takeover the new connection's
/// PUBREL releases the id the old connection received (PUBCOMP 0x00, not 0x92), and the id is then free for a
/// new message, which is routed (a stale id would have it acknowledged and dropped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_keeps_the_sessions_inbound_qos2_ids() {
    let broker = CicadaProcess::start("[mqtt]\nsys_interval = 0");
    let addr: SocketAddr = ([127, 0, 0, 1], broker.port).into();
    let (mut sub, _) = persistent(addr, "counter", true, "y/#").await;
    let mut rx = Receiver {
        held: HashSet::new(),
        delivered: Vec::new(),
    };
    let (mut old, _) = persistent(addr, "source", true, "unused/#").await;
    let first = Publish {
        topic: "y/1".into(),
        qos: QoS::ExactlyOnce,
        pkid: 5,
        payload: "first".into(),
        ..Publish::default()
    };
    old.send(&Packet::Publish(first.clone())).await;
    assert_eq!(old.recv().await, Some(Packet::PubRec(PubAck::new(5))));
    // Taken over while the old connection is still open.
    let (mut new, present) = persistent(addr, "source", false, "").await;
    assert!(present);
    assert!(matches!(
        old.expect_close().await,
        Some(ReasonCode::SESSION_TAKEN_OVER)
    ));
    new.send(&Packet::PubRel(PubAck::new(5))).await;
    assert_eq!(
        new.recv().await,
        Some(Packet::PubComp(PubAck::new(5))),
        "the session held the id"
    );
    new.send(&Packet::Publish(Publish {
        payload: "second".into(),
        ..first
    }))
    .await;
    assert_eq!(new.recv().await, Some(Packet::PubRec(PubAck::new(5))));
    while !rx.delivered.iter().any(|d| d == "second") {
        assert!(rx.step(&mut sub).await, "closed before the second message");
    }
    assert_eq!(rx.delivered, ["first", "second"]);
}

/// A small deterministic generator (xorshift64*), so a failing schedule can be replayed from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_points_during_a_mixed_qos1_qos2_stream_loses_and_duplicates_nothing() {
    let seed: u64 = std::env::var("TEST_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
                | 1
        });
    let rounds: usize = std::env::var("TEST_KILL_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    eprintln!("kill -9 loop: seed {seed}, {rounds} rounds (TEST_KILL_SEED={seed} replays it)");
    let mut rng = Rng(seed);
    let mut broker = CicadaProcess::start("[mqtt]\nsys_interval = 0");
    let addr: SocketAddr = ([127, 0, 0, 1], broker.port).into();

    // The subscriber: a persistent session that reconnects whenever its connection drops and keeps its
    // QoS 2 receiver state across connections, as a real client does.
    let (first_conn, _) = persistent(addr, "counter", true, "s/#").await;
    let stop = tokio_util::sync::CancellationToken::new();
    let sub_task = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut r = Receiver {
                held: HashSet::new(),
                delivered: Vec::new(),
            };
            let mut conn = Some(first_conn);
            while !stop.is_cancelled() {
                let mut raw = match conn.take() {
                    Some(raw) => raw,
                    None => match tokio::net::TcpStream::connect(addr).await {
                        Ok(s) => {
                            let mut raw = Raw::from_stream(s);
                            let mut c = common::broker::connect("counter", ProtocolVersion::V5);
                            c.clean_start = false;
                            c.properties.session_expiry_interval = Some(3600);
                            raw.decoder.version = ProtocolVersion::V5;
                            raw.send(&Packet::Connect(Box::new(c))).await;
                            match raw.recv().await {
                                Some(Packet::ConnAck(a)) if a.reason == ReasonCode::SUCCESS => {
                                    assert!(a.session_present, "the session survives");
                                    raw
                                }
                                _ => continue,
                            }
                        }
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                    },
                };
                loop {
                    let alive = tokio::select! {
                        a = r.step(&mut raw) => a,
                        _ = stop.cancelled() => false,
                    };
                    if !alive {
                        break;
                    }
                }
            }
            r
        })
    };

    // The publisher: our client, persistent, resending what was not acknowledged after each reconnect.
    let (publisher, mut events, _) = Client::connect(
        ClientOptions::new("127.0.0.1", broker.port, "source")
            .version(ProtocolVersion::V5)
            .clean_start(false)
            .session_expiry(3600)
            .inflight(20)
            .reconnect(Backoff {
                initial: Duration::from_millis(20),
                max: Duration::from_millis(200),
                multiplier: 2.0,
            }),
    )
    .await
    .expect("connect");
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    let sent = Arc::new(Mutex::new(Vec::new()));
    let pub_task = {
        let (sent, stop) = (sent.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.is_cancelled() {
                let qos = if n % 2 == 0 {
                    QoS::AtLeastOnce
                } else {
                    QoS::ExactlyOnce
                };
                let payload = format!("{}:{n}", qos as u8);
                let token = publisher
                    .publish_start(Publish {
                        topic: format!("s/{}", n % 3),
                        qos,
                        payload: payload.clone().into(),
                        ..Publish::default()
                    })
                    .await
                    .expect("queued");
                sent.lock().unwrap().push((payload, token));
                n += 1;
                if n % 50 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            // The client stops when its last handle goes: kept until every publish is answered.
            publisher
        })
    };

    for round in 0..rounds {
        let wait = 200 + rng.below(800);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        eprintln!("round {round}: kill -9 after {wait} ms");
        broker.kill9_and_restart();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    let _publisher = pub_task.await.unwrap();
    // Every publish is eventually acknowledged (the client resends across the restarts).
    let mut acked = BTreeSet::new();
    let tokens = std::mem::take(&mut *sent.lock().unwrap());
    let total = tokens.len();
    for (payload, token) in tokens {
        let r = tokio::time::timeout(Duration::from_secs(30), token.wait())
            .await
            .expect("acknowledged in time");
        assert_eq!(r.expect("acknowledged"), ReasonCode::SUCCESS, "{payload}");
        acked.insert(payload);
    }
    let mut r = sub_task.await.unwrap();
    // Drain what is left for the subscriber on a fresh connection.
    let (mut raw, present) = persistent(addr, "counter", false, "").await;
    assert!(present);
    // A stall (no packet for 5 s while messages are missing) fails at once below; this only bounds a long run.
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    loop {
        let have: BTreeSet<&String> = r.delivered.iter().collect();
        if acked.iter().all(|a| have.contains(a)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "seed {seed}: {} acknowledged messages never arrived",
            acked.iter().filter(|a| !have.contains(a)).count()
        );
        let missing: Vec<&String> = acked
            .iter()
            .filter(|a| !have.contains(a))
            .take(10)
            .collect();
        let n_missing = acked.iter().filter(|a| !have.contains(a)).count();
        match tokio::time::timeout(Duration::from_secs(5), r.step(&mut raw)).await {
            Ok(true) => {}
            Ok(false) => panic!("seed {seed}: closed"),
            Err(_) => {
                let (_, metrics) = common::broker::http_request(
                    format!("127.0.0.1:{}", broker.http_port).parse().unwrap(),
                    "GET",
                    "/metrics",
                )
                .await;
                let stored: Vec<&str> = metrics
                    .lines()
                    .filter(|l| {
                        l.starts_with("cicada_store_inbox")
                            || l.starts_with("cicada_inbox")
                            || l.starts_with("cicada_messages_dropped")
                    })
                    .collect();
                panic!(
                    "seed {seed}: {n_missing} acknowledged messages never arrived, e.g. {missing:?}; {} delivered of {total}; {stored:?}",
                    r.delivered.len()
                )
            }
        }
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for d in &r.delivered {
        *counts.entry(d.as_str()).or_default() += 1;
    }
    let twice: Vec<_> = counts
        .iter()
        .filter(|(p, c)| p.starts_with("2:") && **c > 1)
        .collect();
    assert!(
        twice.is_empty(),
        "seed {seed}: QoS 2 delivered twice: {twice:?}"
    );
    let qos1_dups = counts
        .iter()
        .filter(|(p, c)| p.starts_with("1:") && **c > 1)
        .count();
    eprintln!(
        "seed {seed}: {total} published and acknowledged over {rounds} kills, {} delivered, QoS 1 duplicates {qos1_dups}, QoS 2 duplicates 0",
        r.delivered.len()
    );
}
