//! Shared subscriptions `$share/{group}/{filter}`: one member per group per message, groups independent of
//! each other and of plain subscribers, in-flight messages of a member that leaves go to another member.

mod common;

use bytes::Bytes;
use cicada::protocol::{Packet, ProtocolVersion, QoS};
use common::broker::{connect, TestBroker};
use common::next_message;

#[tokio::test]
async fn each_message_goes_to_one_member_of_each_group() {
    let b = TestBroker::start().await;
    let (a1, mut e1) = b.client("a1", ProtocolVersion::V5).await;
    let (a2, mut e2) = b.client("a2", ProtocolVersion::V5).await;
    let (g2, mut eg) = b.client("g2", ProtocolVersion::V5).await;
    let (plain, mut ep) = b.client("plain", ProtocolVersion::V5).await;
    a1.subscribe("$share/workers/jobs/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    a2.subscribe("$share/workers/jobs/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    g2.subscribe("$share/audit/jobs/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    plain.subscribe("jobs/#", QoS::AtLeastOnce).await.unwrap();
    let (p, _pe) = b.client("boss", ProtocolVersion::V5).await;
    let n = 20;
    for i in 0..n {
        p.publish(format!("jobs/{i}"), QoS::AtLeastOnce, false, format!("{i}"))
            .await
            .unwrap();
    }
    for _ in 0..n {
        next_message(&mut eg, "audit group gets all").await;
        next_message(&mut ep, "plain subscriber gets all").await;
    }
    // The two workers split the n messages between them, each exactly once.
    let mut seen = Vec::new();
    let mut counts = [0, 0];
    while seen.len() < n {
        tokio::select! {
            m = next_message(&mut e1, "worker 1") => { counts[0] += 1; seen.push(m.payload); }
            m = next_message(&mut e2, "worker 2") => { counts[1] += 1; seen.push(m.payload); }
        }
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), n, "no duplicates");
    assert!(
        counts[0] > 0 && counts[1] > 0,
        "both members got work: {counts:?}"
    );
}

#[tokio::test]
async fn a_member_that_disconnects_hands_its_unacknowledged_messages_to_another() {
    let b = TestBroker::start().await;
    let (steady, mut es) = b.client("steady", ProtocolVersion::V5).await;
    steady
        .subscribe("$share/g/work", QoS::AtLeastOnce)
        .await
        .unwrap();
    // A raw member that never acknowledges.
    let mut lazy = b.raw().await;
    lazy.handshake(connect("lazy", ProtocolVersion::V5)).await;
    lazy.subscribe(1, "$share/g/work", QoS::AtLeastOnce).await;
    let (p, _pe) = b.client("sender", ProtocolVersion::V5).await;
    for i in 0..10 {
        p.publish("work", QoS::AtLeastOnce, false, format!("{i}"))
            .await
            .unwrap();
    }
    let mut lazy_got = Vec::new();
    // Round robin gives the lazy member half; it takes them and never acknowledges.
    while lazy_got.len() < 5 {
        match lazy.recv().await {
            Some(Packet::Publish(m)) => lazy_got.push(m.payload),
            other => panic!("{other:?}"),
        }
    }
    drop(lazy);
    let mut all = Vec::new();
    for _ in 0..10 {
        all.push(
            next_message(&mut es, "every message ends up with the steady member")
                .await
                .payload,
        );
    }
    all.sort();
    let mut want: Vec<Bytes> = (0..10).map(|i| Bytes::from(format!("{i}"))).collect();
    want.sort();
    assert_eq!(all, want);
}
