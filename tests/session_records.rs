//! Persistent session records through real `cicada serve` processes: CONNACK and SUBACK report records that
//! are committed (a `kill -9` right after them loses nothing they announced), and a replaced session's late
//! commands never remove its successor (incarnations are assigned by apply, not by a clock or the node).

mod common;

use cicada::client::{Client, ClientOptions};
use cicada::protocol::{Packet, ProtocolVersion, PubAck, QoS, ReasonCode};
use common::broker::Raw;
use common::process::CicadaProcess;
use std::net::SocketAddr;

/// A raw MQTT 5 client of a persistent session (expiry one hour); returns it and the CONNACK's session present.
async fn persistent(addr: SocketAddr, id: &str, clean_start: bool) -> (Raw, bool) {
    let mut c = common::broker::connect(id, ProtocolVersion::V5);
    c.clean_start = clean_start;
    c.properties.session_expiry_interval = Some(3600);
    let mut raw = Raw::connect(addr).await;
    let (reason, present, _) = raw.handshake(c).await;
    assert_eq!(reason, ReasonCode::SUCCESS);
    (raw, present)
}

/// The next PUBLISH (other packets skipped), acknowledged.
async fn next_publish(raw: &mut Raw) -> cicada::protocol::Publish {
    loop {
        match raw.recv().await {
            Some(Packet::Publish(p)) => {
                if p.qos != QoS::AtMostOnce {
                    raw.send(&Packet::PubAck(PubAck::new(p.pkid))).await;
                }
                return p;
            }
            Some(_) => continue,
            None => panic!("closed while waiting for a PUBLISH"),
        }
    }
}

async fn publisher(port: u16) -> Client {
    let (p, _e, _) = Client::connect(
        ClientOptions::new("127.0.0.1", port, "backend").version(ProtocolVersion::V5),
    )
    .await
    .expect("connect");
    p
}

/// Forty new persistent sessions connect and subscribe; the broker dies right after the last SUBACK. Each
/// CONNACK and SUBACK was sent after its record committed, so every session comes back present, with its
/// subscription. Once with `kill -9`, once with SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connack_and_suback_report_records_that_survive_an_immediate_kill() {
    let mut broker = CicadaProcess::start("[mqtt]\nsys_interval = 0");
    for (round, signal) in [libc::SIGKILL, libc::SIGTERM].into_iter().enumerate() {
        let addr: SocketAddr = ([127, 0, 0, 1], broker.port).into();
        let ids: Vec<String> = (0..40).map(|i| format!("dev-{round}-{i}")).collect();
        let mut clients = Vec::new();
        for id in &ids {
            let (mut raw, present) = persistent(addr, id, true).await;
            assert!(!present);
            assert_eq!(
                raw.subscribe(1, &format!("cmd/{id}"), QoS::AtLeastOnce)
                    .await,
                [ReasonCode::GRANTED_QOS_1]
            );
            clients.push(raw);
        }
        // No wait for anything: what the broker acknowledged must already be stored.
        broker.restart_after(signal);
        drop(clients);
        let addr: SocketAddr = ([127, 0, 0, 1], broker.port).into();
        let p = publisher(broker.port).await;
        for id in &ids {
            let (mut raw, present) = persistent(addr, id, false).await;
            assert!(
                present,
                "{id}: session present after the restart (signal {signal})"
            );
            p.publish(format!("cmd/{id}"), QoS::AtLeastOnce, false, id.clone())
                .await
                .unwrap();
            let m = next_publish(&mut raw).await;
            assert_eq!(&m.payload[..], id.as_bytes(), "{id}: its subscription");
            raw.send(&Packet::Disconnect(Default::default())).await;
        }
        p.disconnect().await.ok();
    }
}

/// A persistent session is replaced by a clean-start reconnect while the old one is busy (a stream of
/// messages it does not read). The old session's end deletes its record, and that delete may commit after
/// the new session's record: it must not remove the new one, whose message is then acknowledged. After a
/// restart the new session is present with its subscription and message, and the old subscription is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_sessions_late_delete_never_removes_its_clean_start_successor() {
    let mut broker = CicadaProcess::start("[mqtt]\nsys_interval = 0");
    for round in 0..6 {
        let addr: SocketAddr = ([127, 0, 0, 1], broker.port).into();
        let (mut old, _) = persistent(addr, "racer", true).await;
        assert_eq!(
            old.subscribe(1, "race/old", QoS::AtMostOnce).await,
            [ReasonCode::GRANTED_QOS_0]
        );
        // Keep the old session busy: a burst of QoS 0 messages it never reads, written in one go so its
        // mailbox is long when the clean-start reconnect replaces it.
        let mut flood = Raw::connect(addr).await;
        flood
            .handshake(common::broker::connect("flood", ProtocolVersion::V5))
            .await;
        let mut burst = bytes::BytesMut::new();
        let publish = Packet::Publish(cicada::protocol::Publish {
            topic: "race/old".into(),
            payload: vec![0u8; 256].into(),
            ..Default::default()
        });
        for _ in 0..20_000 {
            cicada::protocol::encode(&publish, ProtocolVersion::V5, &mut burst).unwrap();
        }
        flood.send_bytes(&burst).await;
        let (mut new, present) = persistent(addr, "racer", true).await;
        assert!(!present, "clean start");
        assert_eq!(
            new.subscribe(1, "race/new", QoS::AtLeastOnce).await,
            [ReasonCode::GRANTED_QOS_1]
        );
        let payload = format!("round {round}");
        let (p, _e, _) = Client::connect(
            ClientOptions::new("127.0.0.1", broker.port, "orders").version(ProtocolVersion::V5),
        )
        .await
        .unwrap();
        p.publish("race/new", QoS::AtLeastOnce, false, payload.clone())
            .await
            .unwrap();
        drop((old, new, flood));
        broker.restart_after(if round % 2 == 0 {
            libc::SIGKILL
        } else {
            libc::SIGTERM
        });
        let addr: SocketAddr = ([127, 0, 0, 1], broker.port).into();
        let (mut back, present) = persistent(addr, "racer", false).await;
        assert!(
            present,
            "round {round}: the new session survived its predecessor"
        );
        let m = next_publish(&mut back).await;
        assert_eq!(
            (m.topic.as_str(), &m.payload[..]),
            ("race/new", payload.as_bytes()),
            "round {round}: the acknowledged message"
        );
        // The old subscription is gone: a message on it would come before this one.
        let p = publisher(broker.port).await;
        p.publish("race/old", QoS::AtLeastOnce, false, "old")
            .await
            .unwrap();
        p.publish("race/new", QoS::AtLeastOnce, false, "last")
            .await
            .unwrap();
        let m = next_publish(&mut back).await;
        assert_eq!(&m.payload[..], b"last", "round {round}");
        back.send(&Packet::Disconnect(Default::default())).await;
        p.disconnect().await.ok();
    }
}

/// A clean-start connect arrives while the session it replaces is busy taking a resume (an offline
/// session with a backlog, whose client reconnected a moment before). The replaced session's end (its
/// delete) may then come after the new session's record: it must not remove it. The new session made no
/// subscription, so nothing stores its record again later. After a restart it is present.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_start_during_a_busy_resume_survives_the_old_sessions_delete() {
    let mut broker =
        CicadaProcess::start("[mqtt]\nsys_interval = 0\n[limits]\nmax_queued_messages = 100000\n");
    for round in 0..8 {
        let addr: SocketAddr = ([127, 0, 0, 1], broker.port).into();
        let id = format!("busy-{round}");
        let (mut s, _) = persistent(addr, &id, true).await;
        assert_eq!(
            s.subscribe(1, &format!("backlog/{id}"), QoS::AtLeastOnce)
                .await,
            [ReasonCode::GRANTED_QOS_1]
        );
        s.send(&Packet::Disconnect(Default::default())).await;
        drop(s);
        // A backlog for the offline session: its resume reads and sends a page of it.
        let p = publisher(broker.port).await;
        for i in 0..600 {
            p.publish(
                format!("backlog/{id}"),
                QoS::AtLeastOnce,
                false,
                format!("{i}"),
            )
            .await
            .unwrap();
        }
        p.disconnect().await.ok();
        // The resume, and at once the clean start.
        let mut resume = common::broker::connect(&id, ProtocolVersion::V5);
        resume.clean_start = false;
        resume.properties.session_expiry_interval = Some(3600);
        let mut a = Raw::connect(addr).await;
        a.decoder.version = ProtocolVersion::V5;
        a.send(&Packet::Connect(Box::new(resume))).await;
        let (mut b, present) = persistent(addr, &id, true).await;
        assert!(!present);
        drop(a);
        b.send(&Packet::Disconnect(Default::default())).await;
        drop(b);
        broker.restart_after(libc::SIGTERM);
        let addr: SocketAddr = ([127, 0, 0, 1], broker.port).into();
        let (_back, present) = persistent(addr, &id, false).await;
        assert!(present, "round {round}: the clean-start session survived");
    }
}
