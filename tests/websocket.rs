//! MQTT over WebSocket (ws and wss listeners): paho-mqtt with transport="websockets", our client's WebSocket
//! connector, and a raw WebSocket peer that splits a packet over messages and packs several into one.

mod common;

use bytes::{Bytes, BytesMut};
use cicada::client::transport::WsConnector;
use cicada::client::Client;
use cicada::config::{ListenerConfig, ListenerKind};
use cicada::protocol::{encode, Packet, ProtocolVersion, Publish, QoS};
use common::broker::{connect, TestBroker};
use common::next_message;
use futures_util::{SinkExt, StreamExt};
use std::process::Stdio;
use std::sync::Arc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

fn listener(kind: ListenerKind) -> ListenerConfig {
    ListenerConfig::new(kind, "127.0.0.1:0")
}

/// A broker with a plain listener (0) and a ws listener (1).
async fn ws_broker() -> (TestBroker, u16) {
    let b = TestBroker::with(|c| c.listeners.push(listener(ListenerKind::Ws))).await;
    let port = b.broker.as_ref().unwrap().mqtt_addrs[1].port();
    (b, port)
}

fn encoded(p: &Packet, v: ProtocolVersion) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode(p, v, &mut out).unwrap();
    out.to_vec()
}

async fn raw_ws(
    port: u16,
    path: &str,
    protocol: &str,
) -> Result<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>, String> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut req = format!("ws://127.0.0.1:{port}{path}")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", protocol.parse().unwrap());
    tokio_tungstenite::client_async(req, tcp)
        .await
        .map(|(ws, _)| ws)
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn a_packet_split_over_messages_and_packets_sharing_one_are_both_understood() {
    let (b, port) = ws_broker().await;
    let (sub, mut events) = b.client("tcp-sub", ProtocolVersion::V311).await;
    sub.subscribe("ws/#", QoS::AtMostOnce).await.unwrap();
    let mut ws = raw_ws(port, "/mqtt", "mqtt").await.unwrap();
    let conn = encoded(
        &Packet::Connect(Box::new(connect("ws-raw", ProtocolVersion::V311))),
        ProtocolVersion::V311,
    );
    let (a, rest) = conn.split_at(5);
    ws.send(Message::Binary(Bytes::copy_from_slice(a)))
        .await
        .unwrap();
    ws.send(Message::Binary(Bytes::copy_from_slice(rest)))
        .await
        .unwrap();
    match ws.next().await {
        Some(Ok(Message::Binary(b))) => assert_eq!(&b[..2], &[0x20, 0x02], "CONNACK"),
        other => panic!("{other:?}"),
    }
    let mut two = Vec::new();
    for t in ["ws/one", "ws/two"] {
        let p = Publish {
            topic: t.into(),
            payload: Bytes::from_static(b"x"),
            ..Publish::default()
        };
        two.extend(encoded(&Packet::Publish(p), ProtocolVersion::V311));
    }
    ws.send(Message::Binary(two.into())).await.unwrap();
    assert_eq!(next_message(&mut events, "first").await.topic, "ws/one");
    assert_eq!(next_message(&mut events, "second").await.topic, "ws/two");
    // A text message is not MQTT [MQTT-6.0.0-1]: the connection ends.
    ws.send(Message::Text("hello".into())).await.unwrap();
    loop {
        match tokio::time::timeout(common::WAIT, ws.next())
            .await
            .expect("closed in time")
        {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
            Some(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn wrong_path_or_subprotocol_is_refused() {
    let (b, port) = ws_broker().await;
    assert!(raw_ws(port, "/other", "mqtt")
        .await
        .unwrap_err()
        .contains("404"));
    assert!(raw_ws(port, "/mqtt", "stomp")
        .await
        .unwrap_err()
        .contains("400"));
    assert!(
        raw_ws(port, "/mqtt", "mqttv3.1").await.is_ok(),
        "the 3.1 subprotocol name is accepted"
    );
    let (_, m) = b.http_get("/metrics").await;
    assert!(m.contains("cicada_ws_handshake_failures_total 2"), "{m}");
}

#[tokio::test]
async fn our_client_works_over_websocket() {
    let (b, port) = ws_broker().await;
    let opts = cicada::client::ClientOptions::new("127.0.0.1", port, "ws-client")
        .version(ProtocolVersion::V5)
        .connector(Arc::new(WsConnector {
            path: "/mqtt".into(),
        }));
    let (c, mut events, _) = Client::connect(opts).await.unwrap();
    c.subscribe("over/ws", QoS::AtLeastOnce).await.unwrap();
    let (p, _pe) = b.client("tcp-pub", ProtocolVersion::V5).await;
    p.publish("over/ws", QoS::AtLeastOnce, false, vec![7u8; 100_000])
        .await
        .unwrap();
    assert_eq!(
        next_message(&mut events, "a large message over ws")
            .await
            .payload
            .len(),
        100_000
    );
}

const PAHO_WS: &str = r#"
import sys, threading, ssl
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
port = int(sys.argv[1]); version = sys.argv[2]; ca = sys.argv[3] if len(sys.argv) > 3 else None
proto = mqtt.MQTTv5 if version == "5" else mqtt.MQTTv311
got = threading.Event(); subscribed = threading.Event()
def on_message(c, u, msg):
    if msg.topic == "pws/t" and msg.payload == b"hello":
        got.set()
c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="paho-ws-" + version, protocol=proto, transport="websockets")
c.ws_set_options(path="/mqtt")
if ca:
    c.tls_set(ca_certs=ca)
c.on_message = on_message
c.on_subscribe = lambda *a: subscribed.set()
c.connect("127.0.0.1", port)
c.loop_start()
c.subscribe("pws/#", qos=1)
assert subscribed.wait(10), "no SUBACK"
c.publish("pws/t", "hello", qos=1).wait_for_publish(10)
assert got.wait(10), "no message"
c.disconnect(); c.loop_stop()
print("ok")
"#;

async fn paho(
    script: &std::path::Path,
    port: u16,
    v: &str,
    ca: Option<&std::path::Path>,
) -> String {
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg(script)
        .arg(port.to_string())
        .arg(v)
        .stdin(Stdio::null());
    if let Some(ca) = ca {
        cmd.arg(ca);
    }
    let o = tokio::time::timeout(common::WAIT, cmd.output())
        .await
        .unwrap()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout).trim(),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_over_ws_and_wss_in_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    // Certificates for wss.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "WS CA");
    let ca_pem = ca_params.self_signed(&ca_key).unwrap().pem();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let (cert_file, key_file, ca_file) = (
        dir.path().join("s.pem"),
        dir.path().join("s.key"),
        dir.path().join("ca.pem"),
    );
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    std::fs::write(&ca_file, ca_pem).unwrap();
    let b = TestBroker::with(|c| {
        c.listeners.push(listener(ListenerKind::Ws));
        let mut wss = listener(ListenerKind::Wss);
        wss.tls = Some(cicada::config::TlsConfig {
            cert: cert_file.clone(),
            key: key_file.clone(),
            ca: None,
            require_certificate: false,
            use_identity_as_username: false,
        });
        c.listeners.push(wss);
    })
    .await;
    let addrs = &b.broker.as_ref().unwrap().mqtt_addrs;
    let (ws_port, wss_port) = (addrs[1].port(), addrs[2].port());
    let script = dir.path().join("paho_ws.py");
    std::fs::write(&script, PAHO_WS).unwrap();
    for v in ["311", "5"] {
        assert_eq!(paho(&script, ws_port, v, None).await, "ok", "ws {v}");
        assert_eq!(
            paho(&script, wss_port, v, Some(&ca_file)).await,
            "ok",
            "wss {v}"
        );
    }
}
