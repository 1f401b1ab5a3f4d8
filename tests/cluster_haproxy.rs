//! The shipped HAProxy setup (config/cluster/haproxy.cfg) in front of three `cicada serve` processes, with
//! Debian's haproxy: a client id always lands on the same node; with that node down it lands on another,
//! which takes its session over (session present); the nodes see the client through PROXY v2.
//! Skipped (with a message) only where haproxy is not installed; `.ci/install` installs it.

mod common;

use cicada::protocol::{ProtocolVersion, ReasonCode};
use common::broker::{connect, Raw};
use common::cluster::{wait_ready, Cluster};
use common::free_port;
use common::process::metric;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn haproxy_bin() -> Option<String> {
    ["/usr/sbin/haproxy", "/usr/bin/haproxy"]
        .iter()
        .find(|p| std::path::Path::new(p).exists())
        .map(|p| p.to_string())
}

struct Haproxy(Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The shipped haproxy.cfg with this test's ports in place of the documented ones.
fn haproxy_cfg(front: u16, ws_front: u16, nodes: &[(u16, u16)]) -> String {
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/cluster/haproxy.cfg"
    ))
    .expect("shipped haproxy.cfg");
    let mut cfg = shipped
        .replace("bind 127.0.0.1:1883", &format!("bind 127.0.0.1:{front}"))
        .replace("bind 127.0.0.1:9001", &format!("bind 127.0.0.1:{ws_front}"))
        .replace(
            "log stdout format raw local0 info",
            "log stderr format raw local0 warning",
        );
    for (i, (proxy_port, http_port)) in nodes.iter().enumerate() {
        let n = i + 1;
        cfg = cfg
            .replace(
                &format!("127.0.0.1:1{n}884 check port 1{n}080"),
                &format!("127.0.0.1:{proxy_port} check port {http_port}"),
            )
            .replace(
                &format!("127.0.0.1:1{n}901 check port 1{n}080"),
                &format!("127.0.0.1:{proxy_port} check port {http_port}"),
            );
    }
    cfg
}

/// Which node (1-based) took the last connection: the one whose connection counter moved.
async fn landed(c: &Cluster, before: &mut [f64; 3]) -> usize {
    let deadline = Instant::now() + common::WAIT;
    loop {
        for (i, n) in c.nodes.iter().enumerate() {
            if n.child_alive() {
                let now = metric(n.http_port, "cicada_connections_total").await;
                if now > before[i] {
                    before[i] = now;
                    return i + 1;
                }
            }
        }
        assert!(Instant::now() < deadline, "no node counted the connection");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_keeps_a_client_id_on_one_node_and_moves_it_with_its_session_when_that_node_dies() {
    let Some(bin) = haproxy_bin() else {
        eprintln!("haproxy not installed (bash .ci/install installs it): test skipped");
        return;
    };
    let proxy_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    // Each node gets a PROXY-protocol listener for HAProxy besides the harness's plain one.
    let mut c = Cluster::three_with(|i| {
        format!(
            "[[listener]]\nkind = \"tcp\"\nbind = \"127.0.0.1:{}\"\nproxy_protocol = true\n",
            proxy_ports[i - 1]
        )
    });
    let nodes: Vec<(u16, u16)> = proxy_ports
        .iter()
        .zip(&c.nodes)
        .map(|(p, n)| (*p, n.http_port))
        .collect();
    let (front, ws_front) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("haproxy.cfg");
    std::fs::write(&cfg, haproxy_cfg(front, ws_front, &nodes)).unwrap();
    let _haproxy = Haproxy(
        Command::new(&bin)
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start haproxy"),
    );
    let addr = format!("127.0.0.1:{front}").parse().unwrap();
    let deadline = Instant::now() + common::WAIT;
    while !common::answers_connect(front) {
        assert!(
            Instant::now() < deadline,
            "haproxy never accepted an MQTT client"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut before = [0.0; 3];
    for (i, n) in c.nodes.iter().enumerate() {
        before[i] = metric(n.http_port, "cicada_connections_total").await;
    }
    // A persistent session through HAProxy, reconnected several times: always the same node.
    let mut conn = connect("esp32-0042", ProtocolVersion::V5);
    conn.properties.session_expiry_interval = Some(600);
    let mut first = None;
    for round in 0..5 {
        conn.clean_start = round == 0;
        let mut raw = Raw::connect(addr).await;
        let (code, present, _) = raw.handshake(conn.clone()).await;
        assert_eq!(code, ReasonCode::SUCCESS);
        assert_eq!(present, round > 0);
        let node = landed(&c, &mut before).await;
        assert_eq!(
            *first.get_or_insert(node),
            node,
            "round {round}: the same node every time"
        );
        raw.send(&cicada::protocol::Packet::Disconnect(Default::default()))
            .await;
        let _ = raw.expect_close().await;
    }
    // That node dies: HAProxy's check takes it out, the client lands on another node and resumes.
    let home = first.unwrap();
    c.nodes[home - 1].signal(libc::SIGKILL);
    c.nodes[home - 1].wait_exit();
    for (i, n) in c.nodes.iter().enumerate() {
        if i + 1 != home {
            wait_ready(n.http_port);
        }
    }
    conn.clean_start = false;
    let deadline = Instant::now() + common::WAIT;
    let present = loop {
        let mut raw = Raw::connect(addr).await;
        raw.send(&cicada::protocol::Packet::Connect(Box::new(conn.clone())))
            .await;
        raw.decoder.version = ProtocolVersion::V5;
        match raw.recv().await {
            Some(cicada::protocol::Packet::ConnAck(a)) if a.reason == ReasonCode::SUCCESS => {
                break a.session_present
            }
            // HAProxy has not marked the dead node down yet (or the takeover found no leader): try again.
            _ => {
                assert!(
                    Instant::now() < deadline,
                    "the client never got in after its node died"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert!(
        present,
        "the session was taken over by the node HAProxy chose"
    );
    let node = landed(&c, &mut before).await;
    assert_ne!(node, home);
}
