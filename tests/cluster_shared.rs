//! Shared groups across nodes keep the durable-delivery promise (issue 12, ARCHITECTURE §5.1): a QoS 1
//! message published on node 1 for a group whose only member is a persistent session on node 2 is stored
//! in that member's inbox before the publisher is acknowledged (node 2 answers the forwarded copy), so
//! killing node 2 with SIGKILL right after the last acknowledgement loses nothing: the member resumes on
//! node 3 and gets every message. A node with members that died gets no more of the group's messages
//! while another node has members (they would wait for an answer that cannot come).

mod common;

use cicada::client::{Client, ClientOptions};
use cicada::protocol::{Packet, Properties, ProtocolVersion, PubAck, QoS, ReasonCode};
use common::broker::{connect, Raw};
use common::cluster::{resume_on, Cluster};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

fn addr(port: u16) -> std::net::SocketAddr {
    format!("127.0.0.1:{port}").parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_groups_persistent_member_on_a_killed_node_has_every_acknowledged_message() {
    let mut c = Cluster::three("", "");
    let mut member = connect("worker", ProtocolVersion::V5);
    member.clean_start = true;
    member.properties.session_expiry_interval = Some(600);
    let mut m = Raw::connect(addr(c.port(2))).await;
    assert_eq!(m.handshake(member.clone()).await.0, ReasonCode::SUCCESS);
    assert_eq!(
        m.subscribe(1, "$share/workers/jobs/#", QoS::AtLeastOnce)
            .await,
        [ReasonCode::GRANTED_QOS_1]
    );
    // Offline: every copy goes to its stored inbox.
    m.send(&Packet::Disconnect(Default::default())).await;
    assert_eq!(m.expect_close().await, None);

    // A clean publisher on node 1, many messages in flight at once; node 2 dies right after the last
    // acknowledgement.
    let opts =
        ClientOptions::new("127.0.0.1", c.port(1), "dispatcher").version(ProtocolVersion::V5);
    let (p, _events, _) = Client::connect(opts).await.unwrap();
    const N: usize = 200;
    let sends = (0..N).map(|i| {
        let p = p.clone();
        async move {
            let rc = p
                .publish(
                    format!("jobs/{}", i % 7),
                    QoS::AtLeastOnce,
                    false,
                    format!("job-{i}"),
                )
                .await
                .expect("published");
            assert_eq!(rc, ReasonCode::SUCCESS, "job-{i}");
        }
    });
    futures_util::future::join_all(sends).await;
    c.nodes[1].signal(libc::SIGKILL);
    c.nodes[1].wait_exit();

    // The member resumes on node 3 (retried while the survivors elect a leader, if node 2 led).
    let mut m = resume_on(c.port(3), &member).await;
    let mut got = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < N {
        assert!(
            Instant::now() < deadline,
            "acknowledged and lost: {:?}",
            (0..N)
                .map(|i| format!("job-{i}"))
                .filter(|j| !got.contains(j))
                .take(20)
                .collect::<Vec<_>>()
        );
        match m.recv().await {
            Some(Packet::Publish(msg)) => {
                got.insert(String::from_utf8(msg.payload.to_vec()).unwrap());
                m.send(&Packet::PubAck(PubAck {
                    pkid: msg.pkid,
                    reason: ReasonCode::SUCCESS,
                    properties: Properties::default(),
                }))
                .await;
            }
            Some(_) => {}
            None => panic!("the resumed connection closed"),
        }
    }
    assert!(
        common::process::metric(
            c.nodes[0].http_port,
            "cicada_forward_answers_total{result=\"stored\"}"
        )
        .await
            >= N as f64,
        "every copy answered"
    );
}

/// A node with members of a group dies: the group's messages go to its members on nodes whose peer link
/// is up, acknowledged at once, not held for an answer that cannot come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_groups_messages_skip_a_dead_members_node_while_another_has_members() {
    let mut c = Cluster::three("", "");
    let mut member = connect("worker-2", ProtocolVersion::V5);
    member.properties.session_expiry_interval = Some(600);
    let mut m = Raw::connect(addr(c.port(2))).await;
    assert_eq!(m.handshake(member).await.0, ReasonCode::SUCCESS);
    assert_eq!(
        m.subscribe(1, "$share/workers/jobs/#", QoS::AtLeastOnce)
            .await,
        [ReasonCode::GRANTED_QOS_1]
    );
    let opts = ClientOptions::new("127.0.0.1", c.port(3), "worker-3").version(ProtocolVersion::V5);
    let (w3, mut e3, _) = Client::connect(opts).await.unwrap();
    w3.subscribe("$share/workers/jobs/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    c.nodes[1].signal(libc::SIGKILL);
    c.nodes[1].wait_exit();
    // Node 1 noticed: its link to node 2 is down.
    let deadline = Instant::now() + common::WAIT;
    while common::process::metric(
        c.nodes[0].http_port,
        "cicada_peer_link_up{lane=\"app\",peer=\"2\"}",
    )
    .await
        != 0.0
    {
        assert!(Instant::now() < deadline, "node 1 never saw node 2 go");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let opts =
        ClientOptions::new("127.0.0.1", c.port(1), "dispatcher").version(ProtocolVersion::V5);
    let (p, _events, _) = Client::connect(opts).await.unwrap();
    const N: usize = 30;
    for i in 0..N {
        // Well under the 10 s a forwarded copy waits for its answer.
        let rc = tokio::time::timeout(
            Duration::from_secs(3),
            p.publish("jobs/x", QoS::AtLeastOnce, false, format!("job-{i}")),
        )
        .await
        .expect("acknowledged without waiting for the dead node")
        .expect("published");
        assert_eq!(rc, ReasonCode::SUCCESS);
    }
    for i in 0..N {
        let msg = common::next_message(&mut e3, "the live member on node 3").await;
        assert_eq!(msg.payload, format!("job-{i}"));
    }
}
