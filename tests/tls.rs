//! TLS and mutual TLS listeners with certificates generated per test: mosquitto_pub / mosquitto_sub over TLS
//! 1.2 and 1.3, client certificates (missing, wrong CA, expired), use_identity_as_username with an ACL, and
//! certificates re-read on SIGHUP without dropping connections.

mod common;

use cicada::config::{ListenerConfig, ListenerKind, TlsConfig};
use cicada::protocol::{ProtocolVersion, QoS};
use common::broker::TestBroker;
use common::certs::{leaf, new_ca, Ca};
use common::next_message;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// A broker with a plain listener (index 0, anonymous) and a TLS listener (index 1).
async fn broker(
    dir: &Path,
    ca: &Ca,
    tls: impl FnOnce(&mut TlsConfig),
    acl: Option<&str>,
) -> (TestBroker, u16) {
    let (cert, key) = leaf(ca, "broker", &["localhost", "127.0.0.1"], false);
    let mut t = TlsConfig {
        cert: write(dir, "server.pem", &cert),
        key: write(dir, "server.key", &key),
        ca: Some(write(dir, "ca.pem", &ca.pem)),
        require_certificate: false,
        use_identity_as_username: false,
    };
    tls(&mut t);
    let acl_file = acl.map(|a| write(dir, "acl", a));
    let b = TestBroker::with(move |c| {
        let mut l = ListenerConfig::new(ListenerKind::Tls, "127.0.0.1:0");
        l.tls = Some(t);
        c.listeners.push(l);
        c.auth.acl_file = acl_file;
    })
    .await;
    let port = b.broker.as_ref().unwrap().mqtt_addrs[1].port();
    (b, port)
}

async fn run(cmd: &mut Command) -> Output {
    let mut cmd = tokio::process::Command::from(std::mem::replace(cmd, Command::new("true")));
    tokio::time::timeout(common::WAIT, cmd.output())
        .await
        .expect("finished in time")
        .expect("runs")
}

fn mosquitto_pub(port: u16, topic: &str, extra: &[&Path], flags: &[&str]) -> Command {
    let mut c = Command::new("mosquitto_pub");
    c.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-t",
        topic,
        "-m",
        "over tls",
        "-q",
        "1",
    ]);
    let names = ["--cafile", "--cert", "--key"];
    for (flag, path) in names.iter().zip(extra) {
        c.arg(flag).arg(path);
    }
    c.args(flags);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_clients_publish_over_tls_1_2_and_1_3() {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca("Test CA");
    let (b, tls_port) = broker(dir.path(), &ca, |_| {}, None).await;
    let (sub, mut events) = b.client("plain-sub", ProtocolVersion::V311).await;
    sub.subscribe("secure/#", QoS::AtLeastOnce).await.unwrap();
    let ca_file = dir.path().join("ca.pem");
    for version in ["tlsv1.2", "tlsv1.3"] {
        let o = run(&mut mosquitto_pub(
            tls_port,
            &format!("secure/{version}"),
            &[&ca_file],
            &["--tls-version", version],
        ))
        .await;
        assert!(
            o.status.success(),
            "{version}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(
            next_message(&mut events, version).await.topic,
            format!("secure/{version}")
        );
    }
    // A client that does not trust the broker's CA refuses it.
    let other = new_ca("Other CA");
    let wrong = write(dir.path(), "other-ca.pem", &other.pem);
    assert!(
        !run(&mut mosquitto_pub(tls_port, "secure/x", &[&wrong], &[]))
            .await
            .status
            .success()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_client_certificates_must_chain_to_the_ca_and_be_valid() {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca("Test CA");
    let (b, tls_port) = broker(dir.path(), &ca, |t| t.require_certificate = true, None).await;
    let (sub, mut events) = b.client("mtls-sub", ProtocolVersion::V311).await;
    sub.subscribe("m/#", QoS::AtLeastOnce).await.unwrap();
    let ca_file = dir.path().join("ca.pem");
    let (cert, key) = leaf(&ca, "device-1", &["device-1"], false);
    let (c, k) = (
        write(dir.path(), "c.pem", &cert),
        write(dir.path(), "c.key", &key),
    );
    let o = run(&mut mosquitto_pub(
        tls_port,
        "m/ok",
        &[&ca_file, &c, &k],
        &[],
    ))
    .await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        next_message(&mut events, "mTLS publish").await.topic,
        "m/ok"
    );

    assert!(
        !run(&mut mosquitto_pub(tls_port, "m/none", &[&ca_file], &[]))
            .await
            .status
            .success(),
        "no certificate"
    );
    let other = new_ca("Other CA");
    let (cert, key) = leaf(&other, "intruder", &["intruder"], false);
    let (c, k) = (
        write(dir.path(), "o.pem", &cert),
        write(dir.path(), "o.key", &key),
    );
    assert!(
        !run(&mut mosquitto_pub(
            tls_port,
            "m/wrong",
            &[&ca_file, &c, &k],
            &[]
        ))
        .await
        .status
        .success(),
        "wrong CA"
    );
    let (cert, key) = leaf(&ca, "old-device", &["old-device"], true);
    let (c, k) = (
        write(dir.path(), "e.pem", &cert),
        write(dir.path(), "e.key", &key),
    );
    assert!(
        !run(&mut mosquitto_pub(
            tls_port,
            "m/expired",
            &[&ca_file, &c, &k],
            &[]
        ))
        .await
        .status
        .success(),
        "expired"
    );

    sub.publish("m/marker", QoS::AtLeastOnce, false, "x")
        .await
        .unwrap();
    assert_eq!(
        next_message(&mut events, "marker").await.topic,
        "m/marker",
        "none of the refused ones got through"
    );
    let (_, m) = b.http_get("/metrics").await;
    let failures: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("cicada_tls_handshake_failures_total "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(failures >= 3, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certificate_identity_is_the_user_name_for_acls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca("Test CA");
    let acl = "topic read d/#\n\nuser device-1\ntopic write d/device-1/#\n";
    let (b, tls_port) = broker(
        dir.path(),
        &ca,
        |t| {
            t.require_certificate = true;
            t.use_identity_as_username = true;
        },
        Some(acl),
    )
    .await;
    let (sub, mut events) = b.client("watch", ProtocolVersion::V311).await;
    sub.subscribe("d/#", QoS::AtLeastOnce).await.unwrap();
    let ca_file = dir.path().join("ca.pem");
    let (cert, key) = leaf(&ca, "device-1", &[], false);
    let (c, k) = (
        write(dir.path(), "d1.pem", &cert),
        write(dir.path(), "d1.key", &key),
    );
    assert!(run(&mut mosquitto_pub(
        tls_port,
        "d/device-2/x",
        &[&ca_file, &c, &k],
        &[]
    ))
    .await
    .status
    .success());
    assert!(run(&mut mosquitto_pub(
        tls_port,
        "d/device-1/x",
        &[&ca_file, &c, &k],
        &[]
    ))
    .await
    .status
    .success());
    assert_eq!(
        next_message(&mut events, "device-1's own topic")
            .await
            .topic,
        "d/device-1/x",
        "device-2's was denied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_certificates_and_keeps_open_connections() {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir().unwrap();
    let (ca1, ca2) = (new_ca("CA one"), new_ca("CA two"));
    let (cert, key) = leaf(&ca1, "broker", &["localhost", "127.0.0.1"], false);
    write(dir.path(), "server.pem", &cert);
    write(dir.path(), "server.key", &key);
    let ca1_file = write(dir.path(), "ca1.pem", &ca1.pem);
    let ca2_file = write(dir.path(), "ca2.pem", &ca2.pem);
    let tls_port = common::free_port();
    let server_pem = dir.path().join("server.pem");
    let server_key = dir.path().join("server.key");
    let broker = common::process::CicadaProcess::start(&format!(
        "[[listener]]\nkind = \"tls\"\nbind = \"127.0.0.1:{tls_port}\"\n[listener.tls]\ncert = {server_pem:?}\nkey = {server_key:?}\n"
    ));
    // A subscriber over TLS that trusts CA one, connected before the reload; a retained marker is its first
    // line, which proves it is subscribed.
    let marker = run(mosquitto_pub(tls_port, "reload/marker", &[&ca1_file], &[]).arg("-r")).await;
    assert!(
        marker.status.success(),
        "{}",
        String::from_utf8_lossy(&marker.stderr)
    );
    let mut sub = tokio::process::Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &tls_port.to_string(),
            "-t",
            "reload/#",
            "-C",
            "2",
            "-v",
        ])
        .arg("--cafile")
        .arg(&ca1_file)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(sub.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(common::WAIT, lines.next_line())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.as_deref(), Some("reload/marker over tls"));
    let (cert, key) = leaf(&ca2, "broker", &["localhost", "127.0.0.1"], false);
    write(dir.path(), "server.pem", &cert);
    write(dir.path(), "server.key", &key);
    broker.signal(libc::SIGHUP);
    // New connections see the new certificate once the reload ran: retry (bounded) with CA two.
    let deadline = std::time::Instant::now() + common::WAIT;
    while !run(&mut mosquitto_pub(
        tls_port,
        "reload/now",
        &[&ca2_file],
        &[],
    ))
    .await
    .status
    .success()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the new certificate was never served"
        );
    }
    loop {
        let line = tokio::time::timeout(common::WAIT, lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .expect("the message");
        if line.starts_with("reload/now") {
            break;
        }
    }
    drop(broker);
}

fn cicada(args: &[&str], files: &[(&str, &Path)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cicada"));
    c.args(args);
    for (flag, path) in files {
        c.arg(flag).arg(path);
    }
    c
}

/// `cicada pub` and `cicada sub` over TLS with mosquitto's flags (`--cafile`, `--cert`, `--key`), against a
/// listener that requires client certificates; a missing client certificate, a broker certificate from
/// another CA and an unreadable file each fail with a message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cicada_pub_and_sub_speak_tls_and_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca("test CA");
    let (_b, tls_port) = broker(dir.path(), &ca, |t| t.require_certificate = true, None).await;
    let ca_file = dir.path().join("ca.pem");
    let (cert, key) = leaf(&ca, "sensor-1", &[], false);
    let cert_file = write(dir.path(), "client.pem", &cert);
    let key_file = write(dir.path(), "client.key", &key);
    let port = tls_port.to_string();
    let at = ["-h", "127.0.0.1", "-p", &port];
    let mtls = [
        ("--cafile", ca_file.as_path()),
        ("--cert", &cert_file),
        ("--key", &key_file),
    ];

    let mut publish = cicada(&["pub"], &mtls);
    publish
        .args(at)
        .args(["-t", "secure/1", "-m", "sealed", "-q", "1", "-r"]);
    let o = run(&mut publish).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut subscribe = cicada(&["sub"], &mtls);
    subscribe
        .args(at)
        .args(["-t", "secure/#", "-C", "1", "-W", "10", "-v"]);
    let o = run(&mut subscribe).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "secure/1 sealed\n");

    // No client certificate: the handshake is refused.
    let mut no_cert = cicada(&["pub"], &mtls[..1]);
    no_cert.args(at).args(["-t", "secure/2", "-m", "x"]);
    let o = run(&mut no_cert).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(!o.stderr.is_empty());

    // The broker's certificate does not chain to this CA.
    let other = write(dir.path(), "other.pem", &new_ca("other CA").pem);
    let mut wrong_ca = cicada(
        &["pub"],
        &[
            ("--cafile", other.as_path()),
            ("--cert", &cert_file),
            ("--key", &key_file),
        ],
    );
    wrong_ca.args(at).args(["-t", "secure/3", "-m", "x"]);
    let o = run(&mut wrong_ca).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("certificate"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // A file that is not there: a usage error naming it.
    let missing = dir.path().join("missing.pem");
    let mut bad = cicada(&["pub"], &[("--cafile", missing.as_path())]);
    bad.args(at).args(["-t", "secure/4", "-m", "x"]);
    let o = run(&mut bad).await;
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("missing.pem"));
}
