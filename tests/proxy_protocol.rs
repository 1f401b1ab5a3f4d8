//! PROXY protocol v1/v2 on a listener: the header's source address is the client's; a connection without a
//! header is closed.

mod common;

use cicada::protocol::{ProtocolVersion, ReasonCode};
use common::broker::{connect, TestBroker};
use std::io::{BufRead, BufReader};

fn v2_tcp4(src: [u8; 4], sport: u16) -> Vec<u8> {
    let mut b = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    b.extend([0x21, 0x11, 0, 12]);
    b.extend(src);
    b.extend([127, 0, 0, 1]);
    b.extend(sport.to_be_bytes());
    b.extend(1883u16.to_be_bytes());
    b
}

#[tokio::test]
async fn headers_v1_and_v2_are_read_and_a_missing_header_closes_the_connection() {
    let b = TestBroker::with(|c| c.listeners[0].proxy_protocol = true).await;
    let mut raw = b.raw().await;
    raw.send_bytes(b"PROXY TCP4 203.0.113.7 127.0.0.1 4000 1883\r\n")
        .await;
    assert_eq!(
        raw.handshake(connect("v1", ProtocolVersion::V5)).await.0,
        ReasonCode::SUCCESS
    );
    let mut raw = b.raw().await;
    raw.send_bytes(&v2_tcp4([198, 51, 100, 9], 4321)).await;
    assert_eq!(
        raw.handshake(connect("v2", ProtocolVersion::V311)).await.0,
        ReasonCode::SUCCESS
    );
    let mut raw = b.raw().await;
    raw.send_bytes(b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00")
        .await; // LOCAL (a health check)
    assert_eq!(
        raw.handshake(connect("local", ProtocolVersion::V311))
            .await
            .0,
        ReasonCode::SUCCESS
    );
    let mut raw = b.raw().await;
    raw.send_bytes(&[0x10, 0x0c, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 0])
        .await;
    assert_eq!(raw.recv().await, None, "no header: closed");
    let (_, m) = b.http_get("/metrics").await;
    assert!(m.contains("cicada_proxy_header_failures_total 1"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_address_is_the_one_logged() {
    // A second listener, with the PROXY protocol, next to the process's plain one.
    let port = common::free_port();
    let mut broker = common::process::CicadaProcess::start_with_log(
        &format!(
            "[[listener]]\nkind = \"tcp\"\nbind = \"127.0.0.1:{port}\"\nproxy_protocol = true\n"
        ),
        "info",
    );
    let stderr = broker.child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            // The readiness probe connects too: only this test's client counts.
            let ours = line.contains("client connected") && line.contains("behind-haproxy");
            if ours && tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut raw = common::broker::Raw::connect(([127, 0, 0, 1], port).into()).await;
    raw.send_bytes(b"PROXY TCP4 203.0.113.7 127.0.0.1 4000 1883\r\n")
        .await;
    raw.handshake(connect("behind-haproxy", ProtocolVersion::V311))
        .await;
    let line = rx.recv_timeout(common::WAIT).expect("a connect log line");
    assert!(line.contains("203.0.113.7:4000"), "{line}");
    // stderr is a pipe here: plain text, no colour codes.
    assert!(!line.contains('\x1b'), "{line:?}");
}

/// `[log] format = "json"`: one JSON object per line, for log shippers, with the message and its fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_message_and_its_fields() {
    let mut broker =
        common::process::CicadaProcess::start_with_log("[log]\nformat = \"json\"\n", "info");
    let stderr = broker.child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let ours = line.contains("client connected") && line.contains("json-logged");
            if ours && tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut raw = common::broker::Raw::connect(([127, 0, 0, 1], broker.port).into()).await;
    raw.handshake(connect("json-logged", ProtocolVersion::V311))
        .await;
    let line = rx.recv_timeout(common::WAIT).expect("a connect log line");
    let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON object per line");
    assert_eq!(v["level"], "INFO", "{line}");
    assert_eq!(v["fields"]["message"], "client connected", "{line}");
    assert!(v["timestamp"].is_string(), "{line}");
    // The connection's span (client id, peer) goes with every line.
    assert!(line.contains("json-logged"), "{line}");
    assert!(!line.contains('\x1b'), "{line:?}");
}
