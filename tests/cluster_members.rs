//! Membership through `cicada ctl` against real processes (issue 12): a fourth node started with
//! `[cluster] join = true` joins a running three-node cluster (`ctl join`), catches up and votes, and routes
//! messages both ways; while it runs it is not removed; killed with SIGKILL and removed (`ctl leave`), its
//! routes are gone from every node, its connection's Will fires once from the cluster (because it left: the
//! failure detection is set to 10 minutes), and its persistent client resumes on another node with
//! every message acknowledged meanwhile. Bad requests get a clear refusal.

mod common;

use cicada::client::{Client, ClientOptions};
use cicada::protocol::{Packet, Properties, ProtocolVersion, QoS, ReasonCode};
use common::broker::{connect, http_request, Raw};
use common::cluster::Cluster;
use common::process::CicadaProcess;
use common::{free_port, WAIT};
use std::process::Command;
use std::time::{Duration, Instant};

fn addr(port: u16) -> std::net::SocketAddr {
    format!("127.0.0.1:{port}").parse().unwrap()
}

/// `cicada ctl` with every given node as `--url`: (success, stdout, stderr).
fn ctl(http_ports: &[u16], args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cicada"));
    cmd.arg("ctl");
    for p in http_ports {
        cmd.arg("--url").arg(format!("http://127.0.0.1:{p}"));
    }
    let out = cmd.args(args).output().expect("run cicada ctl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

async fn cluster_json(http_port: u16) -> serde_json::Value {
    let (status, body) = http_request(addr(http_port), "GET", "/api/v1/cluster").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Waits until `check` holds for the cluster status of every node given.
async fn until_status(ports: &[u16], what: &str, check: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + WAIT;
    for &p in ports {
        loop {
            let v = cluster_json(p).await;
            if check(&v) {
                break;
            }
            assert!(Instant::now() < deadline, "{what}: node on {p}: {v}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn persistent(id: &str) -> cicada::protocol::Connect {
    let mut c = connect(id, ProtocolVersion::V5);
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(600);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_a_running_cluster_and_leaves_it_with_its_clients_resuming_elsewhere() {
    // Detection so slow that only the departure can fire the Will below.
    let c = Cluster::three("", "failure_detection_ms = 600000");
    let http: Vec<u16> = c.nodes.iter().map(|n| n.http_port).collect();
    let p4 = free_port();
    // The new node lists the running members: only they may link to it.
    let mut n4 = CicadaProcess::spawn(
        &c.joining_toml(4, p4, "failure_detection_ms = 600000"),
        "warn",
    );

    // Refusals first: a bad address, a node that is not a member.
    let (ok, _, err) = ctl(&http, &["join", "4", "no-port"]);
    assert!(!ok && err.contains("HOST:PORT"), "{err}");
    let (ok, _, err) = ctl(&http, &["leave", "99"]);
    assert!(!ok && err.contains("not a member"), "{err}");

    let (ok, out, err) = ctl(&http, &["join", "4", &format!("127.0.0.1:{p4}")]);
    assert!(ok, "join failed: {out} {err}");
    assert!(out.contains("node 4 joined"), "{out}");
    // It serves once it is a member.
    n4.wait_listening();
    let all: Vec<u16> = http.iter().copied().chain([n4.http_port]).collect();
    until_status(&all, "four voters", |v| {
        v["voters"].as_array().map(Vec::len) == Some(4)
    })
    .await;
    common::cluster::wait_ready(n4.http_port);
    // Asked again: nothing to do.
    let (ok, _, err) = ctl(&http, &["join", "4", &format!("127.0.0.1:{p4}")]);
    assert!(ok, "{err}");

    // Messages flow both ways through the new node.
    let opts = ClientOptions::new("127.0.0.1", n4.port, "on-4").version(ProtocolVersion::V5);
    let (sub4, mut events4, _) = Client::connect(opts).await.unwrap();
    sub4.subscribe("m/#", QoS::AtLeastOnce).await.unwrap();
    let opts = ClientOptions::new("127.0.0.1", c.port(1), "watch").version(ProtocolVersion::V5);
    let (watch, mut watch_events, _) = Client::connect(opts).await.unwrap();
    watch.subscribe("status/#", QoS::AtLeastOnce).await.unwrap();
    watch.subscribe("back/#", QoS::AtLeastOnce).await.unwrap();
    until_status(&http, "node 4's route", |v| {
        v["routes_per_node"]["4"].as_u64() >= Some(1)
    })
    .await;
    let opts = ClientOptions::new("127.0.0.1", c.port(1), "pub-1").version(ProtocolVersion::V5);
    let (pub1, _e, _) = Client::connect(opts).await.unwrap();
    pub1.publish("m/1", QoS::AtLeastOnce, false, "to four")
        .await
        .unwrap();
    let m = common::next_message(&mut events4, "node 1 to node 4").await;
    assert_eq!(&m.payload[..], b"to four");
    sub4.publish("back/4", QoS::AtLeastOnce, false, "from four")
        .await
        .unwrap();
    let m = common::next_message(&mut watch_events, "node 4 to node 1").await;
    assert_eq!(&m.payload[..], b"from four");

    // A persistent subscriber with a Will lives on node 4.
    let mut dev = Raw::connect(addr(n4.port)).await;
    let mut dc = persistent("dev-4");
    dc.will = Some(cicada::protocol::LastWill {
        topic: "status/dev-4".into(),
        payload: "offline".into(),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Properties::default(),
    });
    assert_eq!(dev.handshake(dc).await.0, ReasonCode::SUCCESS);
    dev.subscribe(1, "cmd/dev-4", QoS::AtLeastOnce).await;

    // A running node is not removed: it would keep its clients.
    let (ok, _, err) = ctl(&http, &["leave", "4"]);
    assert!(!ok && err.contains("drain it first"), "{err}");
    // Node 4 dies and is removed (at once, with --force: the detection would take 10 minutes).
    n4.signal(libc::SIGKILL);
    n4.wait_exit();
    drop(dev);
    let (ok, out, err) = ctl(&http, &["leave", "4", "--force"]);
    assert!(ok, "leave failed: {out} {err}");
    until_status(&http, "three voters, no route to node 4", |v| {
        v["voters"].as_array().map(Vec::len) == Some(3) && v["routes_per_node"].get("4").is_none()
    })
    .await;
    let (ok, _, err) = ctl(&http, &["leave", "4", "--force"]);
    assert!(ok, "asked again: {err}");

    // Its connection's Will fires from the cluster.
    let m = common::next_message(&mut watch_events, "dev-4's Will").await;
    assert_eq!(
        (m.topic.as_str(), &m.payload[..]),
        ("status/dev-4", &b"offline"[..])
    );
    let mut fired = 0.0;
    for &p in &http {
        fired += common::process::metric(p, "cicada_cluster_wills_fired_total").await;
    }
    assert_eq!(fired, 1.0, "the Will fired once");
    // A command for dev-4 is acknowledged, and dev-4 resumes its session on node 2 and gets it.
    pub1.publish("cmd/dev-4", QoS::AtLeastOnce, false, "reboot")
        .await
        .unwrap();
    let mut back = Raw::connect(addr(c.port(2))).await;
    let mut again = persistent("dev-4");
    again.will = None;
    let (code, present, _) = back.handshake(again).await;
    assert_eq!((code, present), (ReasonCode::SUCCESS, true));
    match back.recv().await {
        Some(Packet::Publish(p)) => assert_eq!(&p.payload[..], b"reboot"),
        other => panic!("expected the command, got {other:?}"),
    }
    // The leader refuses to remove itself, naming what to do.
    let leader = cluster_json(http[0]).await["leader"].as_u64().unwrap();
    let (ok, _, err) = ctl(&http, &["leave", &leader.to_string()]);
    assert!(!ok && err.contains("transfer-leader"), "{err}");
}
