//! The store's tests: commands and records round trip, retained messages and inboxes through restarts.

use super::command::*;
use super::record::*;
use super::*;
use crate::broker::message::{Delivery, InboxRef};
use crate::protocol::Properties;
use crate::protocol::{QoS, RetainHandling, SubscriptionOptions};
use bytes::Bytes;
use std::time::{Duration, Instant};

fn retained_msg(topic: &str, payload: &'static [u8]) -> Message {
    Message {
        topic: topic.into(),
        payload: Bytes::from_static(payload),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: Properties::default(),
        expires_at: None,
        publisher: None,
        received: Instant::now(),
        qos2_origin: None,
    }
}

#[tokio::test]
async fn retained_messages_are_reloaded_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let fsync = cicada_cluster::Fsync::Always;
    let store = Store::open(dir.path(), fsync, 64 << 20, &prometheus::Registry::new())
        .await
        .unwrap();
    for t in ["d/0", "d/1", "d/2"] {
        store.retain(&retained_msg(t, b"on")).await.unwrap();
    }
    store.retain(&retained_msg("d/1", b"")).await.unwrap();
    assert_eq!(store.retained.len(), 2);
    store.shutdown().await;
    drop(store);
    let store = Store::open(dir.path(), fsync, 64 << 20, &prometheus::Registry::new())
        .await
        .unwrap();
    let mut topics: Vec<String> = store
        .retained
        .matching("d/+", Instant::now())
        .iter()
        .map(|m| m.topic.clone())
        .collect();
    topics.sort();
    assert_eq!(topics, ["d/0", "d/2"]);
    assert_eq!(store.retained.len(), 2);
    store.shutdown().await;
}

fn delivery(topic: &str, payload: &'static [u8], seq: u64) -> Delivery {
    let mut m = retained_msg(topic, payload);
    m.retain = false;
    Delivery {
        message: Arc::new(m),
        qos: QoS::AtLeastOnce,
        retain: false,
        sub_ids: vec![3, 4],
        shared: None,
        durable: Some(InboxRef { seq, size: 0 }),
    }
}

fn record(incarnation: u64) -> SessionRecord {
    SessionRecord {
        incarnation,
        expiry: 60,
        offline_since: 0,
        subscriptions: Vec::new(),
    }
}

/// Appends `d` (its seq is `d.durable`) to client "dev"'s inbox, as a session does; whether it applied.
async fn append(store: &Store, incarnation: u64, d: &Delivery) -> bool {
    let seq = d.durable.unwrap().seq;
    store
        .inbox_append("dev", incarnation, seq, encode_delivery(d), None)
        .await
        .unwrap()
        == Appended::Stored
}

/// Waits until every proposal made so far is applied (acks are fire-and-forget).
async fn settle(store: &Store) {
    // Proposals commit in submission order: once this one is applied, so are the earlier ones.
    store.retain(&retained_msg("settle", b"")).await.unwrap();
}

fn all(store: &Store, incarnation: u64) -> Vec<StoredCopy> {
    let page = crate::broker::session::inbox::Page {
        after: 0,
        upto: u64::MAX - 1,
        max: usize::MAX,
        max_bytes: usize::MAX,
    };
    let (copies, complete) = store.inbox_page("dev", incarnation, page);
    assert!(complete);
    copies
}

#[tokio::test]
async fn inboxes_follow_their_session_incarnation_count_themselves_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let fsync = cicada_cluster::Fsync::Always;
    let store = Store::open(dir.path(), fsync, 64 << 20, &prometheus::Registry::new())
        .await
        .unwrap();
    store.put_session("dev", 1, &record(10));
    settle(&store).await;
    let mut size = 0;
    for seq in 1..=3 {
        let d = delivery(&format!("cmd/{seq}"), b"x", seq);
        size = encode_delivery(&d).len() as u64;
        assert!(append(&store, 10, &d).await);
    }
    // Another incarnation's append (a replaced session) is ignored, and the proposer learns it.
    assert!(!append(&store, 11, &delivery("cmd/old", b"x", 1)).await);
    store.inbox_ack("dev", 10, vec![2]);
    assert!(store.inbox_release("dev", 10, 3, 700).await.unwrap());
    assert!(
        !store.inbox_release("dev", 10, 99, 1).await.unwrap(),
        "no such copy"
    );
    settle(&store).await;
    assert_eq!(
        store.inbox_summary("dev", 10),
        InboxSummary {
            count: 2,
            bytes: 2 * size,
            last_seq: 3
        },
        "a released copy counts its appended size"
    );
    store.shutdown().await;
    drop(store);

    let store = Store::open(dir.path(), fsync, 64 << 20, &prometheus::Registry::new())
        .await
        .unwrap();
    let inbox = all(&store, 10);
    let topics: Vec<(u64, String)> = inbox
        .iter()
        .map(|c| (c.seq, c.delivery.as_ref().unwrap().message.topic.clone()))
        .collect();
    assert_eq!(topics, [(1, "cmd/1".to_string()), (3, "cmd/3".to_string())]);
    assert_eq!(inbox[0].released, None);
    assert_eq!(inbox[1].released, Some(700), "the QoS 2 stage survives");
    assert_eq!((inbox[0].size, inbox[1].size), (size, size));
    let d = inbox[0].delivery.as_ref().unwrap();
    assert_eq!(
        (d.qos, d.sub_ids.clone(), d.durable),
        (
            QoS::AtLeastOnce,
            vec![3, 4],
            Some(InboxRef { seq: 1, size })
        )
    );
    assert!(all(&store, 11).is_empty());
    assert_eq!(store.sessions()[0].1.incarnation, 10);
    assert_eq!(store.inbox_summary("dev", 10).count, 2);
    // Pages stop at their bounds and resume after their last copy.
    let page = crate::broker::session::inbox::Page {
        after: 0,
        upto: 3,
        max: 1,
        max_bytes: usize::MAX,
    };
    let (first, complete) = store.inbox_page("dev", 10, page);
    assert_eq!((first.len(), first[0].seq, complete), (1, 1, false));
    let (rest, complete) = store.inbox_page(
        "dev",
        10,
        crate::broker::session::inbox::Page { after: 1, ..page },
    );
    assert_eq!((rest.len(), rest[0].seq, complete), (1, 3, true));

    // A QoS 2 message of a persistent publisher is stored once per session until the publisher releases
    // its id: a resend routed again after a crash adds nothing.
    let once = || Some(("sensor".to_string(), 9));
    let q2 = delivery("cmd/q2", b"x", 4);
    let append_once = |seq| store.inbox_append("dev", 10, seq, encode_delivery(&q2), once());
    assert_eq!(append_once(4).await.unwrap(), Appended::Stored);
    assert_eq!(append_once(5).await.unwrap(), Appended::Duplicate);
    assert!(store.qos2_released("sensor", 9).await.unwrap());
    assert_eq!(
        append_once(6).await.unwrap(),
        Appended::Stored,
        "released: a new message"
    );
    assert_eq!(
        all(&store, 10).iter().map(|c| c.seq).collect::<Vec<_>>(),
        [1, 3, 4, 6]
    );

    // Versions and incarnations of this start go on after everything stored, never from a clock.
    assert_eq!(
        store.first_version(),
        11,
        "after incarnation 10 (version 1)"
    );

    // A new life of the session drops the old inbox; deleting the session drops the new one.
    store.put_session("dev", 2, &record(12));
    settle(&store).await;
    assert!(append(&store, 12, &delivery("cmd/new", b"x", 1)).await);
    assert!(all(&store, 10).is_empty());
    assert_eq!(store.inbox_summary("dev", 10), InboxSummary::default());
    assert_eq!(store.inbox_summary("dev", 12).count, 1);
    store.delete_session("dev", 3);
    settle(&store).await;
    assert!(all(&store, 12).is_empty());
    store.delete_session("other", 40);
    settle(&store).await;
    assert_eq!(store.first_version(), 41, "tombstones count");
    assert_eq!(store.inbox_summary("dev", 12), InboxSummary::default());
    store.shutdown().await;
}

#[test]
fn commands_and_records_round_trip() {
    for c in [
        Command::SetRetained {
            topic: "device/1/status".into(),
            record: vec![1, 2, 3],
        },
        Command::ClearRetained {
            topic: "a/b".into(),
        },
    ] {
        assert_eq!(Command::decode(&c.encode()), Some(c));
    }
    for c in [
        Command::PutSession {
            client_id: "dev-7".into(),
            version: 42,
            record: vec![9, 9],
        },
        Command::DeleteSession {
            client_id: "dev-7".into(),
            version: 43,
        },
        Command::InboxAppend {
            client_id: "dev-7".into(),
            incarnation: 5,
            seq: 9,
            record: vec![1, 2],
            once: None,
        },
        Command::InboxAppend {
            client_id: "dev-7".into(),
            incarnation: 5,
            seq: 10,
            record: vec![1, 2],
            once: Some(("sensor".into(), 513)),
        },
        Command::InboxAck {
            client_id: "dev-7".into(),
            incarnation: 5,
            seqs: vec![9, 10, 12],
        },
        Command::InboxRelease {
            client_id: "dev-7".into(),
            incarnation: 5,
            seq: 9,
            pkid: 65535,
        },
        Command::Qos2Received {
            client_id: "dev-7".into(),
            pkid: 258,
        },
        Command::Qos2Released {
            client_id: "dev-7".into(),
            pkid: 1,
        },
    ] {
        assert_eq!(Command::decode(&c.encode()), Some(c));
    }
    let rec = SessionRecord {
        incarnation: 77,
        expiry: 3600,
        offline_since: 1_700_000_000,
        subscriptions: vec![
            (
                "device/+/command".into(),
                SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    no_local: true,
                    retain_as_published: false,
                    retain_handling: RetainHandling::DoNotSend,
                },
                Some(7),
            ),
            ("$share/g/a/#".into(), SubscriptionOptions::default(), None),
        ],
    };
    assert_eq!(SessionRecord::decode(&rec.encode()), Some(rec.clone()));
    assert_eq!(SessionRecord::decode(&rec.encode()[..20]), None);
    assert_eq!(Command::decode(&[9]), None);
    assert_eq!(Command::decode(&[SET_RETAINED, 0, 0, 0, 9, b'x']), None);
    let m = Message {
        topic: "device/1/status".into(),
        payload: Bytes::from_static(b"online"),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: Properties {
            content_type: Some("text/plain".into()),
            user_properties: vec![("k".into(), "v".into())],
            ..Properties::default()
        },
        expires_at: Some(Instant::now() + Duration::from_secs(60)),
        publisher: Some(3),
        received: Instant::now(),
        qos2_origin: None,
    };
    let back = decode_record(&encode_record(&m)).unwrap();
    assert_eq!(back.topic, m.topic);
    assert_eq!(back.payload, m.payload);
    assert_eq!(back.qos, m.qos);
    assert_eq!(back.properties.content_type, m.properties.content_type);
    assert_eq!(
        back.properties.user_properties,
        m.properties.user_properties
    );
    assert!(back.expires_at.is_some());
    assert_eq!(
        back.publisher, None,
        "a stored message has no live publisher"
    );
    let d = delivery("cmd/1", b"reboot", 42);
    let back = decode_delivery(&encode_delivery(&d), 42).unwrap();
    assert_eq!(
        (
            back.qos,
            back.retain,
            back.sub_ids.clone(),
            back.durable.map(|r| r.seq)
        ),
        (d.qos, d.retain, d.sub_ids.clone(), Some(42))
    );
    assert_eq!(back.message.payload, d.message.payload);
    let shared = Delivery {
        shared: Some("$share/g/cmd/#".into()),
        ..d.clone()
    };
    assert_eq!(
        decode_delivery(&encode_delivery(&shared), 1)
            .unwrap()
            .shared,
        shared.shared
    );
    assert!(decode_delivery(&encode_delivery(&d)[..5], 1).is_none());
    let mut expired = encode_record(&m);
    expired[..8].copy_from_slice(&(unix_now() - 1).to_be_bytes());
    assert!(decode_record(&expired).is_none());
}
