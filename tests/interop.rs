//! Cicada driven by clients no one here wrote: mosquitto_pub / mosquitto_sub (3.1.1 and 5), Python
//! paho-mqtt 2.x (3.1.1 and 5) and MQTT.js 5.x under Node (3.1.1 and 5, over TCP and WebSocket).

mod common;

use bytes::Bytes;
use cicada::protocol::{ProtocolVersion, QoS};
use common::broker::TestBroker;
use common::next_message;
use std::process::{Command, Output, Stdio};

async fn run(cmd: &mut Command) -> Output {
    let mut cmd = tokio::process::Command::from(std::mem::replace(cmd, Command::new("true")));
    cmd.stdin(Stdio::null());
    tokio::time::timeout(common::WAIT, cmd.output())
        .await
        .expect("command finished in time")
        .expect("command runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_pub_and_sub_work_against_cicada_in_both_versions() {
    let b = TestBroker::start().await;
    let p = b.port().to_string();
    for v in ["mqttv311", "mqttv5"] {
        let topic = format!("mq/{v}");
        let o = run(Command::new("mosquitto_pub").args([
            "-p",
            &p,
            "-V",
            v,
            "-t",
            &topic,
            "-m",
            "retained hello",
            "-r",
            "-q",
            "1",
        ]))
        .await;
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let o = run(Command::new("mosquitto_sub")
            .args(["-p", &p, "-V", v, "-t", "mq/#", "-C", "1", "-v", "-W", "5"]))
        .await;
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            format!("{topic} retained hello\n")
        );
        let o =
            run(Command::new("mosquitto_pub").args(["-p", &p, "-V", v, "-t", &topic, "-n", "-r"]))
                .await;
        assert!(o.status.success(), "clearing the retained message");
    }
    // User properties from mosquitto_pub arrive at our client intact.
    let (c, mut events) = b.client("props-check", ProtocolVersion::V5).await;
    c.subscribe("mq/props", QoS::AtLeastOnce).await.unwrap();
    let o = run(Command::new("mosquitto_pub").args([
        "-p",
        &p,
        "-V",
        "mqttv5",
        "-t",
        "mq/props",
        "-m",
        "x",
        "-q",
        "2",
        "-D",
        "publish",
        "user-property",
        "site",
        "berlin",
        "-D",
        "publish",
        "content-type",
        "text/plain",
    ]))
    .await;
    assert!(o.status.success());
    let m = next_message(&mut events, "mosquitto_pub's message").await;
    assert_eq!(
        m.properties.user_properties,
        vec![("site".to_string(), "berlin".to_string())]
    );
    assert_eq!(m.properties.content_type.as_deref(), Some("text/plain"));
    assert_eq!(m.qos, QoS::AtLeastOnce, "granted 1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_sub_receives_a_will_from_an_abruptly_closed_client() {
    let b = TestBroker::start().await;
    let p = b.port().to_string();
    use tokio::io::AsyncBufReadExt;
    // Readiness: a retained marker is the first line mosquitto_sub prints.
    let (c, _e) = b.client("marker", ProtocolVersion::V311).await;
    c.publish("status/marker", QoS::AtLeastOnce, true, "ready")
        .await
        .unwrap();
    let mut sub = tokio::process::Command::new("mosquitto_sub")
        .args(["-p", &p, "-t", "status/#", "-C", "2", "-v", "-W", "10"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(sub.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(common::WAIT, lines.next_line())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.as_deref(), Some("status/marker ready"));
    let mut raw = b.raw().await;
    let mut conn = common::broker::connect("esp32-7", ProtocolVersion::V311);
    conn.will = Some(cicada::protocol::LastWill {
        topic: "status/esp32-7".into(),
        payload: Bytes::from_static(b"offline"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
    });
    raw.handshake(conn).await;
    drop(raw);
    let second = tokio::time::timeout(common::WAIT, lines.next_line())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.as_deref(), Some("status/esp32-7 offline"));
    assert!(tokio::time::timeout(common::WAIT, sub.wait())
        .await
        .unwrap()
        .unwrap()
        .success());
}

const PAHO: &str = r#"
import sys, threading
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

port = int(sys.argv[1]); version = sys.argv[2]
proto = mqtt.MQTTv5 if version == "5" else mqtt.MQTTv311
got = threading.Event(); subscribed = threading.Event(); result = {}

def on_message(c, u, msg):
    result["topic"] = msg.topic
    result["payload"] = msg.payload.decode()
    result["qos"] = msg.qos
    if version == "5":
        result["user"] = getattr(msg.properties, "UserProperty", None)
        result["corr"] = getattr(msg.properties, "CorrelationData", None)
        result["rt"] = getattr(msg.properties, "ResponseTopic", None)
    got.set()

def on_subscribe(c, u, mid, reason_codes, props):
    subscribed.set()

sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="paho-sub-" + version, protocol=proto)
sub.on_message = on_message
sub.on_subscribe = on_subscribe
sub.connect("127.0.0.1", port)
sub.loop_start()
sub.subscribe("paho/#", qos=2)
assert subscribed.wait(10), "no SUBACK"

pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="paho-pub-" + version, protocol=proto)
pub.connect("127.0.0.1", port)
pub.loop_start()
props = None
if version == "5":
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = [("k", "v")]
    props.CorrelationData = b"42"
    props.ResponseTopic = "paho/reply"
info = pub.publish("paho/t", "hello from paho", qos=2, properties=props)
info.wait_for_publish(10)
assert got.wait(10), "no message"
assert result["topic"] == "paho/t" and result["payload"] == "hello from paho" and result["qos"] == 2, result
if version == "5":
    assert result["user"] == [("k", "v")], result
    assert result["corr"] == b"42" and result["rt"] == "paho/reply", result
pub.disconnect(); sub.disconnect()
pub.loop_stop(); sub.loop_stop()
print("ok")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_mqtt_publishes_and_receives_qos2_in_both_versions() {
    let b = TestBroker::start().await;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("paho_roundtrip.py");
    std::fs::write(&script, PAHO).unwrap();
    for v in ["311", "5"] {
        let o = run(Command::new("python3")
            .arg(&script)
            .arg(b.port().to_string())
            .arg(v))
        .await;
        assert_eq!(
            String::from_utf8_lossy(&o.stdout).trim(),
            "ok",
            "paho {v}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

/// MQTT.js: connect, subscribe QoS 1, publish QoS 0/1/2 and receive them, a retained message for a later
/// subscriber, and in MQTT 5 a user property round trip; 3.1.1 (protocolVersion 4) and 5.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqttjs_over_tcp_in_both_versions() {
    let b = TestBroker::start().await;
    let url = format!("mqtt://127.0.0.1:{}", b.port());
    for v in [4, 5] {
        common::mqttjs::roundtrip(&url, v, None).await;
    }
}

/// The same over a ws listener at its default path, as a browser connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqttjs_over_websocket_in_both_versions() {
    let b = TestBroker::with(|c| {
        c.listeners.push(cicada::config::ListenerConfig::new(
            cicada::config::ListenerKind::Ws,
            "127.0.0.1:0",
        ))
    })
    .await;
    let port = b.broker.as_ref().unwrap().mqtt_addrs[1].port();
    let url = format!("ws://127.0.0.1:{port}/mqtt");
    for v in [4, 5] {
        common::mqttjs::roundtrip(&url, v, None).await;
    }
}
