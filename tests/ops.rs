//! Operations: `cicada serve` with defaults, a file and flags; config errors naming file, line and key;
//! graceful shutdown on SIGTERM (v5 clients get 0x8B); /metrics, /health, /ready; $SYS topics.

mod common;

use cicada::protocol::{ProtocolVersion, QoS, ReasonCode};
use common::broker::{connect, http_request, Raw, TestBroker};
use common::next_message;
use common::process::CicadaProcess;
use std::collections::HashSet;
use std::process::Command;

#[test]
fn a_bad_config_file_is_refused_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "[limits]\nmax_inflight = 10\n\nmax_queued_messagess = 5\n",
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_cicada"))
        .arg("serve")
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("{}:4:", file.display())) && err.contains("max_queued_messagess"),
        "{err}"
    );

    std::fs::write(&file, "[mqtt]\nmax_qos = 3\n").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_cicada"))
        .arg("serve")
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(":2: key `mqtt.max_qos`: must be 0, 1 or 2"),
        "{err}"
    );

    let o = Command::new(env!("CARGO_BIN_EXE_cicada"))
        .args(["serve", "--config", "/nonexistent/cicada.toml"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/cicada.toml: cannot read"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_tells_v5_clients_server_shutting_down_and_exits_cleanly() {
    let mut broker = CicadaProcess::start("");
    let addr = ([127, 0, 0, 1], broker.port).into();
    let mut v5 = Raw::connect(addr).await;
    v5.handshake(connect("v5-client", ProtocolVersion::V5))
        .await;
    let mut v3 = Raw::connect(addr).await;
    v3.handshake(connect("v3-client", ProtocolVersion::V311))
        .await;
    broker.signal(libc::SIGTERM);
    assert_eq!(
        v5.expect_close().await,
        Some(ReasonCode::SERVER_SHUTTING_DOWN)
    );
    assert_eq!(
        v3.expect_close().await,
        None,
        "3.1.1 clients are simply disconnected"
    );
    assert!(broker.wait_exit().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_on_the_embedded_defaults_with_port_flags() {
    let (port, http_port) = (common::free_port(), common::free_port());
    let data = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_cicada"))
        .args([
            "serve",
            "--port",
            &port.to_string(),
            "--http-port",
            &http_port.to_string(),
        ])
        .arg("--data-dir")
        .arg(data.path())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let http = ([127, 0, 0, 1], http_port).into();
    // Up once it answers an MQTT CONNECT; the HTTP port is bound before any MQTT port.
    until_serving(&mut child, port).await;
    assert_eq!(
        http_request(http, "GET", "/health").await,
        (200, "ok\n".to_string())
    );
    let mut raw = Raw::connect(([127, 0, 0, 1], port).into()).await;
    let (_, _, props) = raw
        .handshake(connect("defaults", ProtocolVersion::V5))
        .await;
    assert_eq!(
        props.receive_maximum,
        Some(cicada::config::DEFAULT_MAX_INFLIGHT)
    );
    assert_eq!(
        props.maximum_packet_size,
        Some(cicada::config::DEFAULT_MAX_PACKET_SIZE)
    );
    child.kill().await.unwrap();
}

#[tokio::test]
async fn http_endpoints_answer_and_refuse_clearly() {
    let mut b = TestBroker::start().await;
    let (status, body) = b.http_get("/metrics").await;
    assert_eq!(status, 200);
    // Every metric has HELP text.
    let helped: HashSet<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# HELP "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    for name in [
        "cicada_connections",
        "cicada_sessions_online",
        "cicada_subscriptions",
        "cicada_retained_messages",
        "cicada_messages_received_total",
        "cicada_bytes_sent_total",
        "cicada_delivery_latency_seconds",
        "cicada_queued_messages",
    ] {
        assert!(helped.contains(name), "{name} has HELP: {body}");
    }
    assert_eq!(b.http_get("/health").await.0, 200);
    assert_eq!(b.http_get("/ready").await.0, 200);
    let (status, body) = b.http_get("/nope").await;
    assert_eq!(status, 404);
    assert!(body.contains("/nope"));
    assert_eq!(http_request(b.http, "DELETE", "/metrics").await.0, 405);
    b.shutdown().await;
}

#[tokio::test]
async fn metrics_count_messages_connections_and_subscriptions() {
    let b = TestBroker::start().await;
    let (s, mut events) = b.client("m-sub", ProtocolVersion::V5).await;
    s.subscribe("m/#", QoS::AtLeastOnce).await.unwrap();
    let (p, _pe) = b.client("m-pub", ProtocolVersion::V5).await;
    for _ in 0..3 {
        p.publish("m/x", QoS::AtLeastOnce, false, "x")
            .await
            .unwrap();
        next_message(&mut events, "counted").await;
    }
    let (_, m) = b.http_get("/metrics").await;
    for line in [
        "cicada_connections 2",
        "cicada_subscriptions 1",
        "cicada_messages_received_total{qos=\"1\"} 3",
        "cicada_messages_sent_total{qos=\"1\"} 3",
        "cicada_sessions_online 2",
        "cicada_delivery_latency_seconds_count 3",
    ] {
        assert!(m.lines().any(|l| l == line), "{line} in\n{m}");
    }
}

#[tokio::test]
async fn sys_topics_are_published_as_mosquitto_names_them() {
    let b = TestBroker::with(|c| c.mqtt.sys_interval = 1).await;
    let (s, mut events) = b.client("dash", ProtocolVersion::V311).await;
    s.subscribe("$SYS/broker/#", QoS::AtMostOnce).await.unwrap();
    let mut seen = HashSet::new();
    let want = [
        "$SYS/broker/version",
        "$SYS/broker/uptime",
        "$SYS/broker/clients/connected",
        "$SYS/broker/clients/total",
        "$SYS/broker/messages/received",
        "$SYS/broker/messages/sent",
        "$SYS/broker/bytes/received",
        "$SYS/broker/bytes/sent",
        "$SYS/broker/subscriptions/count",
        "$SYS/broker/retained messages/count",
    ];
    while !want.iter().all(|t| seen.contains(*t)) {
        let m = next_message(&mut events, "$SYS").await;
        if m.topic == "$SYS/broker/clients/connected" {
            assert!(m.payload.as_ref() >= &b"1"[..]);
        }
        seen.insert(m.topic);
    }
}

/// Waits until a `serve` child answers an MQTT CONNECT on `port` (its HTTP port is bound before any MQTT port).
async fn until_serving(child: &mut tokio::process::Child, port: u16) {
    let deadline = std::time::Instant::now() + common::WAIT;
    while !tokio::task::spawn_blocking(move || common::answers_connect(port))
        .await
        .unwrap()
    {
        assert!(child.try_wait().unwrap().is_none(), "serve exited early");
        assert!(std::time::Instant::now() < deadline, "serve did not listen");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A second broker on a data directory another one is using stops with an error that names the directory and
/// says why (sled's lock), exit code 1, and the first broker carries on.
#[test]
fn a_second_broker_on_a_data_directory_in_use_is_refused_with_a_clear_error() {
    let first = CicadaProcess::start("");
    let data = first.dir.path().join("data");
    let out = Command::new(env!("CARGO_BIN_EXE_cicada"))
        .args(["serve", "--port", &common::free_port().to_string()])
        .args(["--http-port", &common::free_port().to_string()])
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&data.display().to_string())
            && stderr.contains("another cicada node is using this data directory"),
        "{stderr}"
    );
    assert!(
        common::answers_connect(first.port),
        "the first one still serves"
    );
}

/// `CICADA_TABLE__KEY` environment variables override the configuration (between the file and the flags);
/// a bad one stops `serve` with exit code 2 and the variable's name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_variables_override_the_configuration() {
    let data = tempfile::tempdir().unwrap();
    let serve = |port: u16| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cicada"));
        c.args(["serve", "--port", &port.to_string()])
            .args(["--http-port", &common::free_port().to_string()])
            .arg("--data-dir")
            .arg(data.path())
            .stderr(std::process::Stdio::piped());
        c
    };
    let bad = serve(common::free_port())
        .env("CICADA_LIMITS__MAX_INFLIGHT", "0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "environment variable CICADA_LIMITS__MAX_INFLIGHT: key `limits.max_inflight`: must be at least 1"
        ),
        "{stderr}"
    );

    let port = common::free_port();
    let mut child = tokio::process::Command::from(serve(port))
        .env("CICADA_LIMITS__MAX_INFLIGHT", "7")
        .env("CICADA_MQTT__RETAIN_AVAILABLE", "false")
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    until_serving(&mut child, port).await;
    let mut raw = Raw::connect(([127, 0, 0, 1], port).into()).await;
    let (_, _, props) = raw.handshake(connect("env", ProtocolVersion::V5)).await;
    assert_eq!(
        (props.receive_maximum, props.retain_available),
        (Some(7), Some(false))
    );
    child.kill().await.unwrap();
}
