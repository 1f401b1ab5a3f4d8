//! Mutual TLS on peer links (`[cluster.tls]`, issue 12): three real nodes whose links are TLS with the
//! cluster's own CA route messages across nodes; a peer connection in plain TCP, or with a certificate of
//! another CA, is refused before the handshake reads anything (`cicada_peer_refused_total{reason="tls"}`),
//! and a node whose certificate names another host than the address it is dialed at cannot join.

mod common;

use cicada::client::{Client, ClientOptions};
use cicada::protocol::{ProtocolVersion, QoS};
use common::certs::{leaf, new_ca, Ca};
use common::cluster::Cluster;
use common::process::{metric, CicadaProcess};
use common::{free_port, WAIT};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Writes `{name}.crt`, `{name}.key` (a node certificate for `host` signed by `ca`) and `{name}-ca.crt`.
fn node_files(dir: &Path, ca: &Ca, name: &str, host: &str) -> (PathBuf, PathBuf, PathBuf) {
    let (cert, key) = leaf(ca, name, &[host], false);
    let files = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}-ca.crt")),
    );
    std::fs::write(&files.0, cert).unwrap();
    std::fs::write(&files.1, key).unwrap();
    std::fs::write(&files.2, &ca.pem).unwrap();
    files
}

fn tls_table((cert, key, ca): &(PathBuf, PathBuf, PathBuf)) -> String {
    format!("[cluster.tls]\ncert = {cert:?}\nkey = {key:?}\nca = {ca:?}\n")
}

async fn until_metric_at_least(http_port: u16, name: &str, want: f64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = metric(http_port, name).await;
        if v >= want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} stayed {v}, wanted {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_links_are_mutual_tls_and_refuse_other_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca("cicada cluster CA");
    let good = node_files(dir.path(), &ca, "node", "127.0.0.1");
    let c = Cluster::three("", &tls_table(&good));

    // Cross-node delivery over the TLS links.
    let opts = ClientOptions::new("127.0.0.1", c.port(2), "sub").version(ProtocolVersion::V5);
    let (sub, mut events, _) = Client::connect(opts).await.unwrap();
    sub.subscribe("t/#", QoS::AtLeastOnce).await.unwrap();
    let opts = ClientOptions::new("127.0.0.1", c.port(1), "pub").version(ProtocolVersion::V5);
    let (publisher, _e, _) = Client::connect(opts).await.unwrap();
    let deadline = Instant::now() + WAIT;
    // The route reaches node 1 once node 2's SUBACK is applied everywhere; publish until it arrives.
    let m = loop {
        publisher
            .publish("t/1", QoS::AtLeastOnce, false, "over tls")
            .await
            .unwrap();
        match tokio::time::timeout(Duration::from_millis(500), events.recv()).await {
            Ok(Some(cicada::client::Event::Message(m))) => break m,
            Ok(Some(_)) | Err(_) => {}
            Ok(None) => panic!("the subscriber's client ended"),
        }
        assert!(Instant::now() < deadline, "nothing crossed the TLS link");
    };
    assert_eq!(&m.payload[..], b"over tls");
    let tls_refused = "cicada_peer_refused_total{reason=\"tls\"}";
    assert_eq!(metric(c.nodes[2].http_port, tls_refused).await, 0.0);

    // Plain TCP to a TLS peer port: refused.
    let peer = format!("127.0.0.1:{}", c.peer_ports[2]);
    let mut plain = tokio::net::TcpStream::connect(&peer).await.unwrap();
    let _ = plain
        .write_all(b"\x01\x00\x00\x00\x10not a tls hello!")
        .await;
    let mut buf = [0u8; 64];
    let _ = tokio::time::timeout(WAIT, plain.read(&mut buf)).await;
    until_metric_at_least(c.nodes[2].http_port, tls_refused, 1.0).await;

    // A certificate of another CA: refused too.
    let rogue_ca = new_ca("someone else");
    let rogue = node_files(dir.path(), &rogue_ca, "rogue", "127.0.0.1");
    let roots = {
        let mut r = rustls::RootCertStore::empty();
        for c in rustls_pki_types::CertificateDer::pem_file_iter(&good.2).unwrap() {
            r.add(c.unwrap()).unwrap();
        }
        r
    };
    use rustls_pki_types::pem::PemObject;
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(
        rustls_pki_types::CertificateDer::pem_file_iter(&rogue.0)
            .unwrap()
            .map(Result::unwrap)
            .collect(),
        rustls_pki_types::PrivateKeyDer::from_pem_file(&rogue.1).unwrap(),
    )
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(&peer).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let connected = tokio_rustls::TlsConnector::from(Arc::new(client))
        .connect(name, tcp)
        .await;
    // TLS 1.3 reports a refused client certificate on the first read.
    if let Ok(mut s) = connected {
        let _ = s.write_all(b"hello").await;
        let r = tokio::time::timeout(WAIT, s.read(&mut buf)).await.unwrap();
        assert!(!matches!(r, Ok(n) if n > 0), "a rogue peer was answered");
    }
    until_metric_at_least(c.nodes[2].http_port, tls_refused, 2.0).await;

    // A node whose certificate is the cluster CA's but for another host cannot join: the members dialing
    // 127.0.0.1 refuse a certificate for 127.0.0.2, it never has a leader and never serves.
    let wrong_host = node_files(dir.path(), &ca, "elsewhere", "127.0.0.2");
    let p4 = free_port();
    let n4 = CicadaProcess::spawn(&c.joining_toml(4, p4, &tls_table(&wrong_host)), "warn");
    let (ok, _, err) = {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cicada"))
            .args(["ctl", "--url"])
            .arg(format!("http://127.0.0.1:{}", c.nodes[0].http_port))
            .arg("--url")
            .arg(format!("http://127.0.0.1:{}", c.nodes[1].http_port))
            .arg("--url")
            .arg(format!("http://127.0.0.1:{}", c.nodes[2].http_port))
            .args(["join", "4", &format!("127.0.0.1:{p4}")])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    assert!(!ok && err.contains("has not caught up"), "{err}");
    assert_ne!(
        common::cluster::http_status(n4.http_port, "/ready"),
        Some(200)
    );
}
