//! The store's tests: commands and records round trip, retained messages and inboxes through restarts.

use super::command::*;
use super::format;
use super::record::*;
use super::*;
use crate::broker::message::{Delivery, InboxRef};
use crate::protocol::Properties;
use crate::protocol::{QoS, RetainHandling, SubscriptionOptions};
use bytes::Bytes;
use std::time::{Duration, Instant};

fn single(dir: &std::path::Path, fsync: cicada_cluster::Fsync) -> ClusterConfig {
    let mut c = ClusterConfig::single(dir.join("store"));
    c.fsync = fsync;
    c.cache_capacity = 64 << 20;
    c
}

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
        stored_fanout: false,
    }
}

#[tokio::test]
async fn retained_messages_are_reloaded_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let fsync = cicada_cluster::Fsync::Always;
    let store = Store::open(single(dir.path(), fsync), &prometheus::Registry::new())
        .await
        .unwrap();
    for t in ["d/0", "d/1", "d/2"] {
        store.retain(&retained_msg(t, b"on")).await.unwrap();
    }
    store.retain(&retained_msg("d/1", b"")).await.unwrap();
    assert_eq!(store.retained.len(), 2);
    store.shutdown().await;
    drop(store);
    let store = Store::open(single(dir.path(), fsync), &prometheus::Registry::new())
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
        creator: 0,
        expiry: 60,
        offline_since: 0,
        subscriptions: Vec::new(),
    }
}

/// No quota.
const UNLIMITED: (u64, u64) = (u64::MAX, u64::MAX);

/// Appends `d` to client "dev"'s inbox, as a session does; whether it applied.
async fn append(store: &Store, incarnation: u64, d: &Delivery) -> bool {
    matches!(
        store
            .inbox_push("dev", incarnation, d, None, UNLIMITED)
            .await
            .unwrap(),
        Pushed::Stored(_)
    )
}

/// Waits until every proposal made so far is applied (acks are fire-and-forget).
async fn settle(store: &Store) {
    // Proposals commit in submission order: once this one is applied, so are the earlier ones.
    store.retain(&retained_msg("settle", b"")).await.unwrap();
}

fn all(store: &Store, incarnation: u64) -> Vec<StoredCopy> {
    inbox_of(store, "dev", incarnation)
}

fn inbox_of(store: &Store, client_id: &str, incarnation: u64) -> Vec<StoredCopy> {
    let page = crate::broker::session::inbox::Page {
        after: 0,
        upto: u64::MAX - 1,
        max: usize::MAX,
        max_bytes: usize::MAX,
    };
    let (copies, complete) = store.inbox_page(client_id, incarnation, page);
    assert!(complete);
    copies
}

#[tokio::test]
async fn inboxes_follow_their_session_incarnation_count_themselves_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let fsync = cicada_cluster::Fsync::Always;
    let store = Store::open(single(dir.path(), fsync), &prometheus::Registry::new())
        .await
        .unwrap();
    // Apply assigns incarnations from its own counter: the first session is 1.
    let inc = store
        .create_session("dev", 11, record(0), 0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(inc, 1);
    // What a copy counts against the quota: topic and payload, as in memory.
    let size = "cmd/1".len() as u64 + 1;
    for seq in 1..=3 {
        let d = delivery(&format!("cmd/{seq}"), b"x", seq);
        assert!(append(&store, inc, &d).await);
    }
    // Another incarnation's append (a replaced session) is ignored, and the proposer learns it.
    assert!(!append(&store, inc + 1, &delivery("cmd/old", b"x", 1)).await);
    assert!(store.inbox_ack("dev", inc, vec![2]).await.unwrap());
    assert!(store.inbox_release("dev", inc, 3, 700).await.unwrap());
    assert!(
        !store.inbox_release("dev", inc, 99, 1).await.unwrap(),
        "no such copy"
    );
    settle(&store).await;
    assert_eq!(
        store.inbox_summary("dev", inc),
        InboxSummary {
            count: 2,
            bytes: 2 * size,
            last_seq: 3
        },
        "a released copy counts its appended size"
    );
    store.shutdown().await;
    drop(store);

    let store = Store::open(single(dir.path(), fsync), &prometheus::Registry::new())
        .await
        .unwrap();
    let inbox = all(&store, inc);
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
    assert!(all(&store, inc + 1).is_empty());
    assert_eq!(store.sessions()[0].1.incarnation, inc);
    assert_eq!(store.inbox_summary("dev", inc).count, 2);
    // Pages stop at their bounds and resume after their last copy.
    let page = crate::broker::session::inbox::Page {
        after: 0,
        upto: 3,
        max: 1,
        max_bytes: usize::MAX,
    };
    let (first, complete) = store.inbox_page("dev", inc, page);
    assert_eq!((first.len(), first[0].seq, complete), (1, 1, false));
    let (rest, complete) = store.inbox_page(
        "dev",
        inc,
        crate::broker::session::inbox::Page { after: 1, ..page },
    );
    assert_eq!((rest.len(), rest[0].seq, complete), (1, 3, true));

    // A QoS 2 message of a persistent publisher is stored once per session until the publisher releases
    // its id: a resend routed again after a crash adds nothing.
    let sensor = store
        .create_session("sensor", 12, record(0), 0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sensor, inc + 1);
    let q2 = delivery("cmd/q2", b"x", 4);
    let append_once = || store.inbox_push("dev", inc, &q2, Some(("sensor", 9)), UNLIMITED);
    assert_eq!(append_once().await.unwrap(), Pushed::Stored(4));
    assert_eq!(append_once().await.unwrap(), Pushed::Duplicate);
    assert!(store.qos2_released("sensor", sensor, 9).await.unwrap());
    assert_eq!(
        append_once().await.unwrap(),
        Pushed::Stored(5),
        "released: a new message"
    );
    assert_eq!(
        all(&store, inc).iter().map(|c| c.seq).collect::<Vec<_>>(),
        [1, 3, 4, 5]
    );

    // A new life of the session (a clean start) drops the old inbox and gets the next incarnation.
    let new = store
        .create_session("dev", 13, record(0), 0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(new, sensor + 1);
    assert!(append(&store, new, &delivery("cmd/new", b"x", 1)).await);
    assert!(all(&store, inc).is_empty());
    assert_eq!(store.inbox_summary("dev", inc), InboxSummary::default());
    assert_eq!(store.inbox_summary("dev", new).count, 1);
    // The old life's late commands, in whatever order they commit, change nothing: a delete racing the
    // clean-start reconnect does not remove the new session, and a put does not bring the old one back.
    assert!(!store.delete_session("dev", inc).await.unwrap());
    assert!(!store.put_session("dev", inc, record(0)).await.unwrap());
    assert!(!store.qos2_received("dev", inc, 3).await.unwrap());
    assert_eq!(store.sessions().len(), 2);
    assert_eq!(store.inbox_summary("dev", new).count, 1);
    // Its own commands apply; a put keeps the incarnation, whatever the record says.
    assert!(store.put_session("dev", new, record(999)).await.unwrap());
    assert!(store
        .sessions()
        .iter()
        .any(|(c, r)| c == "dev" && r.incarnation == new));
    assert!(store.delete_session("dev", new).await.unwrap());
    assert!(all(&store, new).is_empty());
    assert_eq!(store.inbox_summary("dev", new), InboxSummary::default());
    assert!(
        !store.put_session("dev", new, record(0)).await.unwrap(),
        "deleted: not brought back"
    );
    assert!(!append(&store, new, &delivery("cmd/late", b"x", 2)).await);
    store.shutdown().await;
    drop(store);

    // The counter is state like any other: after a restart the next session still gets a new incarnation.
    let store = Store::open(single(dir.path(), fsync), &prometheus::Registry::new())
        .await
        .unwrap();
    let after = store
        .create_session("dev", 7, record(0), 0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after, new + 1);
    store.shutdown().await;
}

#[test]
fn commands_and_records_round_trip() {
    let round_trip = |c: Command<'_>| {
        let bytes = c.encode();
        assert_eq!(bytes[0], FORMAT);
        assert_eq!(Command::decode(&bytes).unwrap(), (c, &[][..]));
    };
    round_trip(Command::ClearRetained { topic: "a/b" });
    round_trip(Command::DeleteSession {
        client_id: "dev-7",
        incarnation: 43,
    });
    round_trip(Command::InboxAck {
        client_id: "dev-7",
        incarnation: 5,
        seqs: vec![9, 10, 12],
    });
    round_trip(Command::InboxRelease {
        client_id: "dev-7",
        incarnation: 5,
        seq: 9,
        pkid: 65535,
    });
    round_trip(Command::Qos2Received {
        client_id: "dev-7",
        incarnation: 5,
        pkid: 258,
    });
    round_trip(Command::Qos2Released {
        client_id: "dev-7",
        incarnation: 5,
        pkid: 1,
    });
    round_trip(Command::PutSession {
        client_id: "dev-7",
        incarnation: 5,
        record: record(5),
    });
    round_trip(Command::CreateSession {
        client_id: "dev-7",
        creator: 9,
        record: record(0),
    });
    round_trip(Command::AbandonSession {
        client_id: "dev-7",
        creator: 9,
    });
    // A tail follows the command unchanged, and is borrowed, not copied, on the way back.
    let append = Command::InboxAppend {
        client_id: "dev-7",
        incarnation: 5,
        seq: 10,
        once: Some(("sensor", 513)),
    };
    let bytes = append.encode_with(|buf| buf.extend_from_slice(b"tail"));
    let (back, tail) = Command::decode(&bytes).unwrap();
    assert_eq!((back, tail), (append, &b"tail"[..]));
    assert!(std::ptr::eq(
        tail.as_ptr(),
        bytes[bytes.len() - 4..].as_ptr()
    ));

    // Another format, an empty value or a truncated one are errors, never a misread.
    let mut other = bytes.clone();
    other[0] = FORMAT + 1;
    assert_eq!(
        Command::decode(&other).unwrap_err(),
        FormatError::Version(FORMAT + 1)
    );
    assert_eq!(Command::decode(&[]).unwrap_err(), FormatError::Empty);
    assert!(matches!(
        Command::decode(&bytes[..4]).unwrap_err(),
        FormatError::Malformed(_)
    ));
    assert!(matches!(
        Command::decode(&[FORMAT, 200]).unwrap_err(),
        FormatError::Malformed(_)
    ));
    // What apply answers round-trips too; an unreadable answer counts as ignored.
    for o in [
        Outcome::Applied,
        Outcome::Ignored,
        Outcome::Duplicate,
        Outcome::Created(u64::MAX),
    ] {
        assert_eq!(Outcome::decode(&o.encode()), o);
    }
    assert_eq!(Outcome::decode(&[7, 7]), Outcome::Ignored);
    let rec = SessionRecord {
        incarnation: 77,
        creator: 5,
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
    assert_eq!(SessionRecord::decode(&rec.encode()), Ok(rec.clone()));
    assert_eq!(SessionRecord::decode_incarnation(&rec.encode()), Ok(77));
    assert!(SessionRecord::decode(&rec.encode()[..20]).is_err());
    let mut bad_options = rec.clone();
    bad_options.subscriptions.truncate(1);
    let mut bytes = bad_options.encode();
    // The options byte of the only subscription: QoS 3 does not exist.
    let at = bytes.len() - 3;
    assert_eq!(bytes[at], 0x25);
    bytes[at] = 0x27;
    assert!(matches!(
        SessionRecord::decode(&bytes),
        Err(FormatError::Malformed(_))
    ));
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
        stored_fanout: false,
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
    // A released copy keeps its message and weight, and says so.
    let released = mark_released(&encode_delivery(&d), 300).unwrap();
    let copy = StoredCopy::decode(42, &released);
    assert_eq!(copy.released, Some(300));
    assert_eq!(copy.size, d.message.weight() as u64);
    assert_eq!(
        stored_weight(&released),
        stored_weight(&encode_delivery(&d))
    );
    // An expired message does not come back.
    let expired = format::encode_with(
        &MessageHeader {
            expires: unix_now_ms() - 1,
        },
        |buf| buf.extend_from_slice(&encode_record(&m)[2..]),
    );
    assert!(decode_record(&expired).is_none());
}

/// Proposes a command as node `node` would (the store's own methods propose as this node, 1).
async fn propose(store: &Store, cmd: Command<'_>) -> Outcome {
    Outcome::decode(&store.cluster().propose(cmd.encode()).await.unwrap())
}

#[tokio::test]
async fn claims_and_takeovers_are_ordered_by_the_log_and_a_stale_one_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        single(dir.path(), cicada_cluster::Fsync::Always),
        &prometheus::Registry::new(),
    )
    .await
    .unwrap();
    // Node 1 creates "dev" and stores two messages for it.
    let inc = store
        .create_session("dev", 7, record(0), 0)
        .await
        .unwrap()
        .unwrap();
    let e1 = store.owner("dev").unwrap();
    assert_eq!((e1.node, e1.token), (1, 7));
    assert!(append(&store, inc, &delivery("a", b"1", 1)).await);
    assert!(append(&store, inc, &delivery("a", b"2", 2)).await);

    // Node 3 takes it over: a new incarnation, the same inbox (same seqs), the owner moves; the apply says
    // which node held it before (the node whose connection the take closes).
    let taken = propose(
        &store,
        Command::TakeSession {
            client_id: "dev",
            node: 3,
            token: 30,
            seen: e1.epoch,
        },
    )
    .await;
    let Outcome::Taken {
        incarnation: Some(new),
        epoch: e3,
        previous: 1,
    } = taken
    else {
        panic!("taken: {taken:?}");
    };
    assert!(new > inc && e3 > e1.epoch);
    assert_eq!(store.owner("dev").unwrap().node, 3);
    let moved: Vec<u64> = all(&store, new).iter().map(|c| c.seq).collect();
    assert_eq!(moved, vec![1, 2], "the inbox moved with its seqs");
    assert!(all(&store, inc).is_empty());
    assert_eq!(store.inbox_summary("dev", new).count, 2);
    // Node 1's late commands carry the old incarnation: fenced.
    // (an ack names keys of the old incarnation, which are gone: nothing is removed)
    store.inbox_ack("dev", inc, vec![1]).await.unwrap();
    assert!(!store.delete_session("dev", inc).await.unwrap());
    assert!(
        !store.abandon_session("dev", 7).await.unwrap(),
        "the previous create's abandon no longer matches"
    );
    assert_eq!(store.inbox_summary("dev", new).count, 2);

    // A takeover or claim proposed before node 3's (it saw epoch e1) and committed after it is stale.
    let stale = Command::TakeSession {
        client_id: "dev",
        node: 1,
        token: 11,
        seen: e1.epoch,
    };
    assert_eq!(propose(&store, stale).await, Outcome::Ignored);
    let stale = Command::Claim {
        client_id: "dev",
        node: 1,
        token: 12,
        seen: e1.epoch,
    };
    assert_eq!(propose(&store, stale).await, Outcome::Ignored);
    assert_eq!(store.owner("dev").unwrap().node, 3);
    assert!(store.session("dev").is_some(), "nothing was dropped");

    // A current clean-start claim on node 2 ends the stored session, wherever it was.
    let claim = Command::Claim {
        client_id: "dev",
        node: 2,
        token: 20,
        seen: e3,
    };
    assert!(matches!(
        propose(&store, claim).await,
        Outcome::Claimed { epoch, previous: 3 } if epoch > e3
    ));
    // Claimed again by the node holding it: no previous node.
    let e2 = store.owner("dev").unwrap().epoch;
    let again = Command::Claim {
        client_id: "dev",
        node: 2,
        token: 21,
        seen: e2,
    };
    assert!(matches!(
        propose(&store, again).await,
        Outcome::Claimed { previous: 0, .. }
    ));
    assert!(store.session("dev").is_none());
    assert_eq!(store.inbox_summary("dev", new).count, 0);
    // Resuming a session nobody stores still claims the client.
    let e2 = store.owner("dev").unwrap().epoch;
    let none = Command::TakeSession {
        client_id: "dev",
        node: 1,
        token: 13,
        seen: e2,
    };
    assert!(matches!(
        propose(&store, none).await,
        Outcome::Taken {
            incarnation: None,
            previous: 2,
            ..
        }
    ));
    assert_eq!(store.owner("dev").unwrap().node, 1);
}

#[path = "fanout_tests.rs"]
mod fanout_tests;

#[tokio::test]
async fn a_shared_groups_qos2_copy_is_stored_once_for_the_group_whichever_member_it_reaches() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        single(dir.path(), cicada_cluster::Fsync::Always),
        &prometheus::Registry::new(),
    )
    .await
    .unwrap();
    let mut incs = Vec::new();
    for (i, id) in ["m1", "m2", "sensor"].into_iter().enumerate() {
        incs.push(
            store
                .create_session(id, 20 + i as u64, record(0), 0)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let copy = |shared: &str| {
        let mut d = delivery("cmd/q2", b"x", 1);
        d.qos = QoS::ExactlyOnce;
        d.shared = Some(shared.into());
        d
    };
    let (g, h) = (copy("$share/g/cmd/#"), copy("$share/h/cmd/#"));
    let push = |client: &'static str, inc: u64, d: &Delivery| {
        store.inbox_push(client, inc, d, Some(("sensor", 9)), UNLIMITED)
    };
    assert_eq!(push("m1", incs[0], &g).await.unwrap(), Pushed::Stored(1));
    // The publisher's resend took m2's turn in group g: the group has it already.
    assert_eq!(push("m2", incs[1], &g).await.unwrap(), Pushed::Duplicate);
    // Another group gets its own copy, also through a member that stored the first group's.
    assert_eq!(push("m1", incs[0], &h).await.unwrap(), Pushed::Stored(2));
    assert_eq!(push("m2", incs[1], &h).await.unwrap(), Pushed::Duplicate);
    // So does the member's own plain subscription.
    let mut plain = copy("$share/g/cmd/#");
    plain.shared = None;
    assert_eq!(
        push("m2", incs[1], &plain).await.unwrap(),
        Pushed::Stored(1)
    );
    // Released by its publisher: the id's next message is new to the group.
    assert!(store.qos2_released("sensor", incs[2], 9).await.unwrap());
    assert_eq!(push("m2", incs[1], &g).await.unwrap(), Pushed::Stored(2));
    assert_eq!(inbox_of(&store, "m1", incs[0]).len(), 2);
    assert_eq!(inbox_of(&store, "m2", incs[1]).len(), 2);
    store.shutdown().await;
}
