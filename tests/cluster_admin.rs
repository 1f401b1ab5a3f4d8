//! The admin API and `cicada ctl` against three real nodes: a bearer token guards `/api/v1` (401 without,
//! 403 with another, JSON errors), `ctl status` shows every node with one leader, `ctl session` finds a
//! stored session and its owner from any node, and `ctl transfer-leader` moves leadership.

mod common;

use cicada::protocol::{ProtocolVersion, ReasonCode};
use common::broker::{connect, http_request, Raw};
use common::cluster::Cluster;
use common::WAIT;
use std::process::Command;
use std::time::{Duration, Instant};

const TOKEN: &str = "a-long-admin-token-0123";

fn ctl(c: &Cluster, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cicada"));
    cmd.arg("ctl").arg("--token").arg(TOKEN);
    for n in &c.nodes {
        cmd.arg("--url")
            .arg(format!("http://127.0.0.1:{}", n.http_port));
    }
    let out = cmd.args(args).output().expect("run cicada ctl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

async fn get(port: u16, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    // http_request sends no headers of its own: a raw request carries the token.
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let (status, body) = match token {
        None => http_request(addr, "GET", path).await,
        Some(t) => {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            let status = out.split_whitespace().nth(1).unwrap().parse().unwrap();
            (status, out.split_once("\r\n\r\n").unwrap().1.to_string())
        }
    };
    (
        status,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_needs_its_token_and_ctl_shows_and_moves_the_cluster() {
    let c = Cluster::three(&format!("token = \"{TOKEN}\""), "");
    let port = c.nodes[0].http_port;
    let (status, body) = get(port, "/api/v1/cluster", None).await;
    assert_eq!(status, 401);
    assert!(body["error"].as_str().unwrap().contains("Bearer"), "{body}");
    let (status, body) = get(port, "/api/v1/cluster", Some("wrong-token-wrong-token")).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("wrong token")));
    let (status, body) = get(port, "/api/v1/cluster", Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["members"].as_object().unwrap().len(), 3);
    let (status, body) = get(port, "/api/v1/sessions/nobody", Some(TOKEN)).await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = get(port, "/api/v1/clients?node=x", Some(TOKEN)).await;
    assert_eq!(status, 400);
    // /metrics, /health and /ready stay open (Prometheus and HAProxy have no token).
    common::cluster::wait_ready(port);

    let (ok, out, err) = ctl(&c, &["status"]);
    assert!(ok, "{out}{err}");
    let rows: Vec<&str> = out.lines().filter(|l| l.contains("http://")).collect();
    assert_eq!(rows.len(), 3, "{out}");
    assert_eq!(
        rows.iter().filter(|r| r.contains("Leader")).count(),
        1,
        "{out}"
    );
    assert!(out.contains("members: 1@127.0.0.1:"), "{out}");

    // A persistent session on node 2 is visible (with its owner) from node 1.
    let mut raw = Raw::connect(format!("127.0.0.1:{}", c.port(2)).parse().unwrap()).await;
    let mut conn = connect("meter-17", ProtocolVersion::V5);
    conn.properties.session_expiry_interval = Some(3600);
    assert_eq!(raw.handshake(conn).await.0, ReasonCode::SUCCESS);
    raw.subscribe(1, "meter/17/cmd", cicada::protocol::QoS::AtLeastOnce)
        .await;
    let deadline = Instant::now() + WAIT;
    let (ok, out) = loop {
        let (ok, out, _) = ctl(&c, &["session", "meter-17"]);
        if ok && out.contains("meter/17/cmd") {
            break (ok, out);
        }
        assert!(Instant::now() < deadline, "session never visible: {out}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["owner_node"], 2);
    let (ok, _, err) = ctl(&c, &["session", "nobody"]);
    assert!(!ok && err.contains("404"), "{err}");

    // Leadership moves where ctl says (asked of the leader; raft drops a transfer that does not complete
    // within an election timeout, so it is asked again until it happened).
    let deadline = Instant::now() + WAIT;
    let mut target = None;
    loop {
        let (_, body) = get(port, "/api/v1/cluster", Some(TOKEN)).await;
        let leader = body["leader"].as_u64().unwrap_or(0);
        if let Some(to) = target {
            if leader == to {
                break;
            }
        }
        if leader != 0 {
            let to = *target.get_or_insert(if leader == 1 { 2 } else { 1 });
            if leader != to {
                let leader_url = format!(
                    "http://127.0.0.1:{}",
                    c.nodes[leader as usize - 1].http_port
                );
                let out = Command::new(env!("CARGO_BIN_EXE_cicada"))
                    .args([
                        "ctl",
                        "--token",
                        TOKEN,
                        "--url",
                        &leader_url,
                        "transfer-leader",
                        &to.to_string(),
                    ])
                    .output()
                    .unwrap();
                let err = String::from_utf8_lossy(&out.stderr);
                assert!(
                    out.status.success() || err.contains("409") || err.contains("503"),
                    "{err}"
                );
            }
        }
        assert!(
            Instant::now() < deadline,
            "leadership never moved to {target:?}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
