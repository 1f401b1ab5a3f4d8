//! A client that reconnects at once: the old connection's end is settled before the new one is answered
//! (issue 14, found by Mosquitto's test suite). A DISCONNECT the old connection had not read yet when the
//! new CONNECT came still discards the Will [MQTT-3.1.2-10]; a connection lost without one still has its
//! Will published; a QoS 2 PUBLISH resent with DUP on the new connection while the old one was still
//! reading it is delivered once [MQTT-4.3.3-9].
//!
//! The old connection is slowed with a message rate limit, so the new CONNECT always comes while the old
//! reader still has the DISCONNECT (or the PUBLISH) ahead of it: before, the takeover published the Will
//! in every try.

mod common;

use bytes::{Bytes, BytesMut};
use cicada::protocol::{
    encode, Connect, Disconnect, LastWill, Packet, Properties, ProtocolVersion, PubAck, Publish,
    QoS, ReasonCode,
};
use common::broker::{connect, Raw, TestBroker};

/// Messages per second each connection may publish: the first 20 pass at once, then one every 50 ms.
const RATE: u64 = 20;

fn persistent(id: &str, version: ProtocolVersion, will: bool) -> Connect {
    let mut c = connect(id, version);
    c.clean_start = false;
    c.properties.session_expiry_interval = version.is_v5().then_some(60);
    c.will = will.then(|| LastWill {
        topic: format!("will/{id}"),
        payload: Bytes::from_static(b"offline"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Properties::default(),
    });
    c
}

fn publish(topic: &str, qos: QoS, pkid: u16, payload: Bytes) -> Packet {
    Packet::Publish(Publish {
        topic: topic.into(),
        qos,
        pkid,
        payload,
        ..Publish::default()
    })
}

/// A QoS 0 PUBLISH of `payload` on `topic` from `from`.
async fn send_qos0(from: &mut Raw, topic: &str, payload: &'static [u8]) {
    from.send(&publish(
        topic,
        QoS::AtMostOnce,
        0,
        Bytes::from_static(payload),
    ))
    .await;
}

/// `count` QoS 0 messages (more than the rate's burst: the reader takes a while), then `last`, in one write.
async fn flood_then(raw: &mut Raw, count: usize, last: Option<Packet>) {
    let mut out = BytesMut::new();
    for i in 0..count {
        let p = publish("noise", QoS::AtMostOnce, 0, Bytes::from(i.to_string()));
        encode(&p, raw.decoder.version, &mut out).unwrap();
    }
    if let Some(last) = last {
        encode(&last, raw.decoder.version, &mut out).unwrap();
    }
    raw.send_bytes(&out).await;
}

/// The payloads `watcher` receives on `topic` until `marker` (excluded).
async fn payloads_until(watcher: &mut Raw, marker: &str) -> Vec<Bytes> {
    let mut out = Vec::new();
    loop {
        match watcher.recv().await {
            Some(Packet::Publish(p)) if p.payload == marker.as_bytes() => return out,
            Some(Packet::Publish(p)) => out.push(p.payload),
            Some(_) => {}
            None => panic!("the watcher was closed"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_the_old_connection_had_not_read_yet_still_discards_the_will() {
    let b = TestBroker::with(|c| c.limits.client_messages_per_sec = RATE).await;
    let mut marker = b.raw().await;
    marker
        .handshake(connect("marker", ProtocolVersion::V5))
        .await;
    for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
        for clean_reconnect in [false, true] {
            for disconnect in [true, false] {
                let id = format!("dev-{version:?}-{clean_reconnect}-{disconnect}");
                let mut watcher = b.raw().await;
                watcher
                    .handshake(connect(&format!("w-{id}"), ProtocolVersion::V5))
                    .await;
                watcher
                    .subscribe(1, &format!("will/{id}"), QoS::AtMostOnce)
                    .await;
                let mut old = b.raw().await;
                old.handshake(persistent(&id, version, true)).await;
                let last = disconnect.then(|| {
                    Packet::Disconnect(Disconnect {
                        reason: ReasonCode::SUCCESS,
                        properties: Properties::default(),
                    })
                });
                flood_then(&mut old, 30, last).await;
                if !disconnect {
                    // Lost: the client closes without DISCONNECT.
                    drop(old);
                }
                let mut again = persistent(&id, version, false);
                again.clean_start = clean_reconnect;
                let mut new = b.raw().await;
                let (code, ..) = new.handshake(again).await;
                assert_eq!(code, ReasonCode::SUCCESS);
                send_qos0(&mut marker, &format!("will/{id}"), b"marker").await;
                let wills = payloads_until(&mut watcher, "marker").await;
                let expected: Vec<Bytes> = if disconnect {
                    vec![]
                } else {
                    vec![Bytes::from_static(b"offline")]
                };
                assert_eq!(
                    wills, expected,
                    "{id}: DISCONNECT sent: {disconnect}, reconnect clean: {clean_reconnect}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos2_publish_resent_on_a_new_connection_at_once_is_delivered_once() {
    for rate in [0, RATE] {
        let b = TestBroker::with(|c| c.limits.client_messages_per_sec = rate).await;
        let mut sub = b.raw().await;
        sub.handshake(connect("q2-sub", ProtocolVersion::V5)).await;
        sub.subscribe(1, "q2/t", QoS::ExactlyOnce).await;
        let mut marker = b.raw().await;
        marker
            .handshake(connect("q2-marker", ProtocolVersion::V5))
            .await;
        for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
            for i in 0..8u16 {
                let id = format!("q2-pub-{version:?}");
                let payload = Bytes::from(format!("m-{rate}-{version:?}-{i}"));
                let mut old = b.raw().await;
                old.handshake(persistent(&id, version, false)).await;
                let pkid = 100 + i;
                let first = publish("q2/t", QoS::ExactlyOnce, pkid, payload.clone());
                flood_then(&mut old, if rate > 0 { 30 } else { 0 }, Some(first)).await;
                // At once, without waiting for PUBREC: a new connection resends it with DUP.
                let mut new = b.raw().await;
                let (code, present, _) = new.handshake(persistent(&id, version, false)).await;
                assert_eq!((code, present), (ReasonCode::SUCCESS, true));
                let Packet::Publish(mut again) =
                    publish("q2/t", QoS::ExactlyOnce, pkid, payload.clone())
                else {
                    unreachable!()
                };
                again.dup = true;
                new.send(&Packet::Publish(again)).await;
                loop {
                    match new.recv().await {
                        Some(Packet::PubRec(r)) if r.pkid == pkid => break,
                        Some(_) => {}
                        None => panic!("closed before PUBREC"),
                    }
                }
                new.send(&Packet::PubRel(PubAck::new(pkid))).await;
                loop {
                    match new.recv().await {
                        Some(Packet::PubComp(c)) if c.pkid == pkid => break,
                        Some(_) => {}
                        None => panic!("closed before PUBCOMP"),
                    }
                }
                send_qos0(&mut marker, "q2/t", b"marker").await;
                let mut got = Vec::new();
                loop {
                    match sub.recv().await {
                        Some(Packet::Publish(p)) if p.payload == "marker" => break,
                        Some(Packet::Publish(p)) => {
                            if p.qos == QoS::ExactlyOnce {
                                sub.send(&Packet::PubRec(PubAck::new(p.pkid))).await;
                            }
                            got.push(p.payload);
                        }
                        Some(Packet::PubRel(r)) => {
                            sub.send(&Packet::PubComp(PubAck::new(r.pkid))).await;
                        }
                        Some(_) => {}
                        None => panic!("the subscriber was closed"),
                    }
                }
                assert_eq!(got, vec![payload], "rate {rate}, {version:?}, try {i}");
            }
        }
    }
}

/// A v5 DISCONNECT with Session Expiry 0 ends the session even when the new connection came before the old
/// one read it: the newcomer (Clean Start 0) gets Session Present 0 and none of the old subscriptions
/// [MQTT-3.1.2-6] (with the Will of a DISCONNECT 0x04 published as the session ends).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_ending_the_session_is_honoured_by_a_reconnect_at_once() {
    let b = TestBroker::with(|c| c.limits.client_messages_per_sec = RATE).await;
    let mut marker = b.raw().await;
    marker
        .handshake(connect("ends-marker", ProtocolVersion::V5))
        .await;
    for (i, will_too) in [(0, false), (1, true)] {
        let id = format!("ends-{i}");
        let mut watcher = b.raw().await;
        watcher
            .handshake(connect(&format!("w-{id}"), ProtocolVersion::V5))
            .await;
        watcher
            .subscribe(1, &format!("will/{id}"), QoS::AtMostOnce)
            .await;
        let mut old = b.raw().await;
        let (_, present, _) = old
            .handshake(persistent(&id, ProtocolVersion::V5, true))
            .await;
        assert!(!present);
        old.subscribe(1, &format!("own/{id}"), QoS::AtMostOnce)
            .await;
        let properties = Properties {
            session_expiry_interval: Some(0),
            ..Properties::default()
        };
        let reason = if will_too {
            ReasonCode::DISCONNECT_WITH_WILL
        } else {
            ReasonCode::SUCCESS
        };
        flood_then(
            &mut old,
            30,
            Some(Packet::Disconnect(Disconnect { reason, properties })),
        )
        .await;
        let mut new = b.raw().await;
        let (code, present, _) = new
            .handshake(persistent(&id, ProtocolVersion::V5, false))
            .await;
        assert_eq!((code, present), (ReasonCode::SUCCESS, false), "{id}");
        // No subscription came along: a message on the old filter does not reach the new connection.
        send_qos0(&mut marker, &format!("own/{id}"), b"stale").await;
        new.subscribe(2, &format!("probe/{id}"), QoS::AtMostOnce)
            .await;
        send_qos0(&mut marker, &format!("probe/{id}"), b"marker").await;
        assert_eq!(
            payloads_until(&mut new, "marker").await,
            Vec::<Bytes>::new(),
            "{id}"
        );
        send_qos0(&mut marker, &format!("will/{id}"), b"marker").await;
        let expected: Vec<Bytes> = if will_too {
            vec![Bytes::from_static(b"offline")]
        } else {
            vec![]
        };
        assert_eq!(
            payloads_until(&mut watcher, "marker").await,
            expected,
            "{id}"
        );
    }
}

/// The old connection settles without waiting on its own session (which waits for it): a client subscribed
/// to what it publishes sends more messages than its credit in the router (32), then DISCONNECT, and
/// reconnects at once. Its own copies sit in the session's mailbox holding that credit; the reader settles
/// anyway, reads the DISCONNECT and the Will is discarded (it used to wait out the takeover's 2 s bound and
/// count as a lost connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_settles_without_waiting_on_its_own_session() {
    let b = TestBroker::with(|c| c.limits.client_messages_per_sec = RATE).await;
    let mut marker = b.raw().await;
    marker
        .handshake(connect("own-marker", ProtocolVersion::V5))
        .await;
    for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
        let id = format!("own-{version:?}");
        let mut watcher = b.raw().await;
        watcher
            .handshake(connect(&format!("w-{id}"), ProtocolVersion::V5))
            .await;
        watcher
            .subscribe(1, &format!("will/{id}"), QoS::AtMostOnce)
            .await;
        let mut old = b.raw().await;
        old.handshake(persistent(&id, version, true)).await;
        old.subscribe(1, "noise", QoS::AtMostOnce).await;
        let disconnect = Packet::Disconnect(Disconnect {
            reason: ReasonCode::SUCCESS,
            properties: Properties::default(),
        });
        flood_then(&mut old, 100, Some(disconnect)).await;
        let mut new = b.raw().await;
        let (code, ..) = new.handshake(persistent(&id, version, false)).await;
        assert_eq!(code, ReasonCode::SUCCESS);
        send_qos0(&mut marker, &format!("will/{id}"), b"marker").await;
        assert_eq!(
            payloads_until(&mut watcher, "marker").await,
            Vec::<Bytes>::new(),
            "{id}: no Will after DISCONNECT"
        );
    }
}
