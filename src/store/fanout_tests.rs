//! Store tests of the fan-out to persistent sessions and of the cluster's Wills.

use super::*;
use crate::protocol::{RetainHandling, SubscriptionOptions};

fn sub(filter: &str, qos: QoS, no_local: bool) -> (String, SubscriptionOptions, Option<u32>) {
    let options = SubscriptionOptions {
        qos,
        no_local,
        retain_as_published: false,
        retain_handling: RetainHandling::SendAtSubscribe,
    };
    (filter.to_string(), options, Some(5))
}

#[tokio::test]
async fn a_publish_fans_out_to_the_matching_persistent_sessions_with_their_own_seqs_within_the_quota(
) {
    let dir = tempfile::tempdir().unwrap();
    let fsync = cicada_cluster::Fsync::Always;
    let store = Store::open(single(dir.path(), fsync), &prometheus::Registry::new())
        .await
        .unwrap();
    let mut ra = record(0);
    ra.subscriptions = vec![
        sub("d/+/cmd", QoS::AtLeastOnce, false),
        sub("d/#", QoS::ExactlyOnce, false),
    ];
    let a = store.create_session("a", 1, ra, 0).await.unwrap().unwrap();
    let mut rb = record(0);
    rb.subscriptions = vec![sub("d/1/cmd", QoS::ExactlyOnce, true)];
    // A session created again in the same process goes on after its earlier life's seqs.
    let b = store.create_session("b", 2, rb, 40).await.unwrap().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    store.listeners.listen(
        "a",
        1,
        Box::new(move |e| {
            let _ = tx.send(e);
        }),
    );
    assert!(store.persistent_match("d/1/cmd", QoS::AtLeastOnce));
    assert!(
        !store.persistent_match("d/1/cmd", QoS::AtMostOnce),
        "QoS 0 is never stored"
    );
    assert!(!store.persistent_match("e/1", QoS::ExactlyOnce));
    let mut m = retained_msg("d/1/cmd", b"go");
    m.retain = false;
    m.qos = QoS::ExactlyOnce;
    let quota = 2;
    // b published it: No Local on b's subscription.
    let p = store
        .publish(&Arc::new(m.clone()), Some("b"), quota, u64::MAX)
        .await
        .unwrap();
    assert_eq!(
        p,
        Published {
            stored: 1,
            refused: 0
        }
    );
    let p = store
        .publish(&Arc::new(m.clone()), Some("x"), quota, u64::MAX)
        .await
        .unwrap();
    assert_eq!(
        p,
        Published {
            stored: 2,
            refused: 0
        }
    );
    // a holds two copies: its quota is full; b takes its second.
    let p = store
        .publish(&Arc::new(m.clone()), None, quota, u64::MAX)
        .await
        .unwrap();
    assert_eq!(
        p,
        Published {
            stored: 1,
            refused: 1
        }
    );
    let copies = inbox_of(&store, "a", a);
    assert_eq!(copies.iter().map(|c| c.seq).collect::<Vec<_>>(), [1, 2]);
    let d = copies[0].delivery.as_ref().unwrap();
    assert_eq!(
        (d.qos, d.sub_ids.clone(), &d.message.payload[..]),
        (QoS::ExactlyOnce, vec![5, 5], &b"go"[..]),
        "one copy over both filters, the highest QoS, every identifier"
    );
    let seqs_b: Vec<u64> = inbox_of(&store, "b", b).iter().map(|c| c.seq).collect();
    assert_eq!(seqs_b, [41, 42]);
    // The listener heard of a's appends, once each, ready to send.
    let heard: Vec<(u64, u64, Option<QoS>)> = rx
        .try_iter()
        .map(|e| (e.seq, e.count, e.delivery.map(|d| d.qos)))
        .collect();
    assert_eq!(
        heard,
        [
            (1, 1, Some(QoS::ExactlyOnce)),
            (2, 2, Some(QoS::ExactlyOnce))
        ]
    );
    // A QoS 2 message of a persistent publisher is stored once per session until its id is released.
    m.qos2_origin = Some(Arc::new(crate::broker::message::Qos2Origin {
        client_id: "x".into(),
        pkid: 3,
    }));
    let p = store
        .publish(&Arc::new(m.clone()), None, u64::MAX, u64::MAX)
        .await
        .unwrap();
    assert_eq!(
        p,
        Published {
            stored: 2,
            refused: 0
        }
    );
    let p = store
        .publish(&Arc::new(m.clone()), None, u64::MAX, u64::MAX)
        .await
        .unwrap();
    assert_eq!(
        p,
        Published {
            stored: 2,
            refused: 0
        },
        "both have it already"
    );
    assert_eq!(inbox_of(&store, "a", a).len(), 3);
    // A session whose subscriptions changed, or that ended, takes nothing more.
    assert!(store.put_session("b", b, record(0)).await.unwrap());
    assert!(store.delete_session("a", a).await.unwrap());
    assert!(!store.persistent_match("d/1/cmd", QoS::AtLeastOnce));
    let p = store
        .publish(&Arc::new(m.clone()), None, u64::MAX, u64::MAX)
        .await
        .unwrap();
    assert_eq!(
        p,
        Published {
            stored: 0,
            refused: 0
        }
    );
    let mut rc = record(0);
    rc.subscriptions = vec![sub("d/#", QoS::AtLeastOnce, false)];
    let c = store.create_session("c", 3, rc, 0).await.unwrap().unwrap();
    store.shutdown().await;
    drop(store);

    // The index is state like any other: rebuilt from the records after a restart.
    let store = Store::open(single(dir.path(), fsync), &prometheus::Registry::new())
        .await
        .unwrap();
    assert!(store.persistent_match("d/2", QoS::ExactlyOnce));
    m.qos2_origin = None;
    let p = store
        .publish(&Arc::new(m.clone()), None, u64::MAX, u64::MAX)
        .await
        .unwrap();
    assert_eq!(
        p,
        Published {
            stored: 1,
            refused: 0
        }
    );
    let copies = inbox_of(&store, "c", c);
    assert_eq!(copies[0].delivery.as_ref().unwrap().qos, QoS::AtLeastOnce);
    store.shutdown().await;
}

#[tokio::test]
async fn a_recorded_will_is_replaced_cleared_or_fired_once_and_a_claim_elsewhere_drops_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        single(dir.path(), cicada_cluster::Fsync::Always),
        &prometheus::Registry::new(),
    )
    .await
    .unwrap();
    let me = store.node_id();
    let claim = |node: u64, token: u64| Command::Claim {
        client_id: "dev",
        node,
        token,
        seen: u64::MAX,
    };
    assert!(matches!(
        propose(&store, claim(me, 1)).await,
        Outcome::Claimed { .. }
    ));
    let mut will = retained_msg("status/dev", b"offline");
    will.retain = true;
    // Recorded for connection 5; another connection's clear changes nothing.
    assert!(store
        .set_will("dev", 5, &will, Some(30), 0, 600)
        .await
        .unwrap());
    let wills = store.wills();
    assert_eq!(wills.len(), 1);
    assert_eq!((wills[0].1.conn, wills[0].1.message_expiry), (5, Some(30)));
    assert!(!store.clear_will("dev", 6).await.unwrap());
    assert!(store.clear_will("dev", 5).await.unwrap());
    assert!(store.wills().is_empty());
    // Fired once: retained, with its Message Expiry counted from the firing.
    assert!(store
        .set_will("dev", 7, &will, Some(30), 0, 600)
        .await
        .unwrap());
    let quota = (u64::MAX, u64::MAX);
    assert_eq!(
        store.fire_will("dev", me, quota).await.unwrap(),
        Some(Published {
            stored: 0,
            refused: 0
        })
    );
    assert_eq!(
        store.fire_will("dev", me, quota).await.unwrap(),
        None,
        "once"
    );
    let retained = store
        .retained
        .matching("status/dev", Instant::now())
        .pop()
        .expect("the retained Will");
    let left = retained.expires_at.unwrap() - Instant::now();
    assert!(
        left > Duration::from_secs(25) && left <= Duration::from_secs(31),
        "{left:?}"
    );
    // A new connection on another node drops the record (its owner publishes or cancels that Will); one on
    // the same node leaves it to the connections to replace or clear.
    assert!(store.set_will("dev", 8, &will, None, 0, 600).await.unwrap());
    assert!(matches!(
        propose(&store, claim(me, 2)).await,
        Outcome::Claimed { .. }
    ));
    assert_eq!(store.wills().len(), 1);
    assert!(matches!(
        propose(&store, claim(me + 1, 3)).await,
        Outcome::Claimed { .. }
    ));
    assert!(store.wills().is_empty());
    assert!(
        !store.set_will("dev", 9, &will, None, 0, 600).await.unwrap(),
        "only the owner records a Will"
    );
    store.shutdown().await;
}

#[tokio::test]
async fn a_node_that_leaves_loses_its_routes_its_online_sessions_go_offline_and_it_can_join_again()
{
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        single(dir.path(), cicada_cluster::Fsync::Always),
        &prometheus::Registry::new(),
    )
    .await
    .unwrap();
    let me = store.node_id();
    let other = me + 1;
    for (node, filter) in [(other, "d/+/cmd"), (other, "$share/g/d/#"), (me, "e/#")] {
        let cmd = Command::AddRoute { node, filter };
        assert_eq!(propose(&store, cmd).await, Outcome::Applied);
    }
    let take = |client_id, node: u64, token: u64| Command::TakeSession {
        client_id,
        node,
        token,
        seen: u64::MAX,
    };
    // "online" is connected on the node that leaves, "offline" left it an hour ago, "mine" is elsewhere.
    for (client_id, node, offline_since) in [
        ("online", other, 0),
        ("offline", other, 77),
        ("mine", me, 0),
    ] {
        let mut r = record(0);
        r.offline_since = offline_since;
        store
            .create_session(client_id, 1, r, 0)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(
            propose(&store, take(client_id, node, 2)).await,
            Outcome::Taken { .. }
        ));
    }
    assert!(store.departed().is_empty());
    assert!(store.drop_node(other).await.unwrap());
    let routes = store.routes.read().unwrap().nodes();
    assert_eq!(routes.into_iter().collect::<Vec<_>>(), [(me, 1)]);
    assert_eq!(store.departed(), [other]);
    assert!(store.is_departed(other) && !store.is_departed(me));
    let since = store.session("online").unwrap().offline_since;
    assert!(since >= crate::store::unix_now() - 5, "{since}");
    assert_eq!(store.session("offline").unwrap().offline_since, 77);
    assert_eq!(store.session("mine").unwrap().offline_since, 0);
    // The departed mark and the route table survive a restart (the table is rebuilt from the store).
    store.shutdown().await;
    drop(store);
    let store = Store::open(
        single(dir.path(), cicada_cluster::Fsync::Always),
        &prometheus::Registry::new(),
    )
    .await
    .unwrap();
    assert_eq!(store.departed(), [other]);
    assert_eq!(store.routes.read().unwrap().nodes().len(), 1);
    assert!(store.admit_node(other).await.unwrap());
    assert!(store.departed().is_empty());
    store.shutdown().await;
}
