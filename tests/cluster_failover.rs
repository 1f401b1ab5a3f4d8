//! Failover of many persistent sessions at once (issue 12): the node owning a few hundred persistent
//! sessions is killed with SIGKILL, a QoS 1 message per session is acknowledged meanwhile, and every
//! client resumes on one surviving node at the same time: each finds its session (session present) and
//! its message. The registry takes the sessions over side by side (a take is a read barrier and a commit,
//! which one after the other made a failover storm last the sum of them).

mod common;

use cicada::protocol::{Packet, Properties, ProtocolVersion, PubAck, Publish, QoS, ReasonCode};
use common::broker::{connect, Raw};
use common::cluster::{resume_on, Cluster};
use std::time::{Duration, Instant};

fn addr(port: u16) -> std::net::SocketAddr {
    format!("127.0.0.1:{port}").parse().unwrap()
}

/// Sessions on the node that is killed: more than the registry would take over in a blink one by one
/// (`STORM_SESSIONS=1000` for the note's figure).
fn sessions() -> usize {
    std::env::var("STORM_SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

fn storm_connect(i: usize) -> cicada::protocol::Connect {
    let mut conn = connect(&format!("storm-{i}"), ProtocolVersion::V5);
    conn.properties.session_expiry_interval = Some(600);
    conn
}

/// Publishes one QoS 1 message to `storm/{i}` for every session on node `port`, each acknowledged with
/// success (a refusal while the survivors elect a leader is tried again on a new connection).
async fn publish_one_each(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut i = 0;
    let mut attempt = 0;
    while i < sessions() {
        assert!(Instant::now() < deadline, "publishing never recovered");
        let mut p = Raw::connect(addr(port)).await;
        let (code, _, _) = p
            .handshake(connect(
                &format!("storm-pub-{attempt}"),
                ProtocolVersion::V5,
            ))
            .await;
        attempt += 1;
        if code != ReasonCode::SUCCESS {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        while i < sessions() {
            let publish = Publish {
                topic: format!("storm/{i}"),
                qos: QoS::AtLeastOnce,
                pkid: 1,
                payload: format!("m-{i}").into(),
                ..Publish::default()
            };
            if !p.try_send(&Packet::Publish(publish)).await {
                break;
            }
            match p.recv().await {
                Some(Packet::PubAck(a)) if a.reason == ReasonCode::SUCCESS => i += 1,
                _ => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    break;
                }
            }
        }
    }
}

/// Resumes session `i` on `port` and waits for its message; returns when it has it.
async fn resume_and_receive(port: u16, i: usize) {
    let mut s = resume_on(port, &storm_connect(i)).await;
    let want = format!("m-{i}");
    loop {
        match s.recv().await {
            Some(Packet::Publish(m)) => {
                assert_eq!(m.topic.as_str(), format!("storm/{i}"));
                assert_eq!(&m.payload[..], want.as_bytes());
                s.send(&Packet::PubAck(PubAck {
                    pkid: m.pkid,
                    reason: ReasonCode::SUCCESS,
                    properties: Properties::default(),
                }))
                .await;
                return;
            }
            Some(_) => {}
            None => panic!("storm-{i}: the resumed connection closed"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_persistent_sessions_of_a_killed_node_resume_at_once_on_a_survivor_with_their_messages(
) {
    let mut c = Cluster::three("", "");
    // The sessions on node 2, each subscribed to its own topic, then offline (their clients gone).
    let port2 = c.port(2);
    let subscribe = |i: usize| async move {
        let mut s = Raw::connect(addr(port2)).await;
        assert_eq!(s.handshake(storm_connect(i)).await.0, ReasonCode::SUCCESS);
        assert_eq!(
            s.subscribe(1, &format!("storm/{i}"), QoS::AtLeastOnce)
                .await,
            vec![ReasonCode(1)]
        );
    };
    for start in (0..sessions()).step_by(50) {
        futures_util::future::join_all((start..sessions().min(start + 50)).map(subscribe)).await;
    }
    c.nodes[1].signal(libc::SIGKILL);
    c.nodes[1].wait_exit();
    // A message for each, acknowledged by node 1 while their owner is dead.
    publish_one_each(c.port(1)).await;

    // Every client comes back on node 3 at once.
    let port3 = c.port(3);
    let t0 = Instant::now();
    let resumed: Vec<_> = (0..sessions())
        .map(|i| tokio::spawn(resume_and_receive(port3, i)))
        .collect();
    for r in resumed {
        r.await.expect("a session resumed with its message");
    }
    // A figure for the notes (not a check: timing is measured, never asserted).
    println!(
        "{} sessions resumed with their messages on one survivor in {:.0} ms",
        sessions(),
        t0.elapsed().as_secs_f64() * 1000.0
    );
}
