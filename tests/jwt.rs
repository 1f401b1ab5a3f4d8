//! JWT as the password: HS256 / RS256 / ES256 tokens, expiry at connect and during the connection (v5
//! DISCONNECT 0x87), publish/subscribe claims, and mosquitto_pub presenting a token.

mod common;

use bytes::Bytes;
use cicada::config::{JwtAlgorithm, JwtConfig};
use cicada::protocol::{Packet, ProtocolVersion, Publish, QoS, ReasonCode};
use common::broker::{connect, TestBroker};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

const SECRET: &str = "a shared secret of at least thirty-two bytes";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn jwt_config(algorithm: JwtAlgorithm) -> JwtConfig {
    JwtConfig {
        algorithm,
        secret: None,
        secret_file: None,
        public_key: None,
        issuer: None,
        audience: None,
        username_claim: "sub".into(),
    }
}

fn hs256(claims: Value) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

async fn hs256_broker(dir: &Path) -> TestBroker {
    // The secret from a file (the recommended form), trailing newline and all.
    let secret = dir.join("jwt.secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    TestBroker::with(|c| {
        c.auth.allow_anonymous = false;
        c.auth.jwt = Some(JwtConfig {
            secret_file: Some(secret.clone()),
            ..jwt_config(JwtAlgorithm::HS256)
        });
    })
    .await
}

fn login(id: &str, v: ProtocolVersion, user: &str, token: &str) -> cicada::protocol::Connect {
    let mut c = connect(id, v);
    c.username = Some(user.into());
    c.password = Some(Bytes::from(token.to_string()));
    c
}

fn publish(topic: &str, pkid: u16) -> Packet {
    Packet::Publish(Publish {
        topic: topic.into(),
        qos: QoS::AtLeastOnce,
        pkid,
        payload: Bytes::from_static(b"x"),
        ..Publish::default()
    })
}

#[tokio::test]
async fn hs256_tokens_are_verified_at_connect_and_refused_with_0x86_or_4() {
    let dir = tempfile::tempdir().unwrap();
    let b = hs256_broker(dir.path()).await;
    let good = hs256(json!({"sub": "dev1", "exp": now() + 300}));
    let expired = hs256(json!({"sub": "dev1", "exp": now() - 10}));
    let forged = encode(
        &Header::default(),
        &json!({"sub": "dev1", "exp": now() + 300}),
        &EncodingKey::from_secret(b"not the broker's secret, but long enough"),
    )
    .unwrap();
    let other_user = hs256(json!({"sub": "dev2", "exp": now() + 300}));
    for v in [ProtocolVersion::V311, ProtocolVersion::V5] {
        let mut raw = b.raw().await;
        assert_eq!(
            raw.handshake(login("d1", v, "dev1", &good)).await.0,
            ReasonCode::SUCCESS,
            "{v:?}"
        );
        for (token, what) in [
            (&expired, "expired"),
            (&forged, "forged"),
            (&other_user, "sub differs from the user name"),
        ] {
            let mut raw = b.raw().await;
            assert_eq!(
                raw.handshake(login("d1", v, "dev1", token)).await.0,
                ReasonCode::BAD_USER_NAME_OR_PASSWORD,
                "{what} {v:?}"
            );
        }
    }
    let (_, metrics) = b.http_get("/metrics").await;
    assert!(metrics.contains("cicada_auth_failures_total{reason=\"jwt_expired\"} 2"));
    assert!(metrics.contains("cicada_auth_failures_total{reason=\"jwt_invalid\"} 4"));
    assert!(metrics.contains("cicada_jwt_logins_total 2"));
}

#[tokio::test]
async fn token_claims_carry_the_clients_publish_and_subscribe_filters() {
    let dir = tempfile::tempdir().unwrap();
    let b = hs256_broker(dir.path()).await;
    let device = hs256(json!({
        "sub": "dev1", "exp": now() + 300,
        "publish": ["device/%u/status"], "subscribe": ["device/%u/command"],
    }));
    let backend = hs256(json!({
        "sub": "backend", "exp": now() + 300,
        "publish": ["device/+/command"], "subscribe": ["device/+/status"],
    }));
    let mut dev = b.raw().await;
    dev.handshake(login("dev1", ProtocolVersion::V5, "dev1", &device))
        .await;
    let mut svc = b.raw().await;
    svc.handshake(login("svc", ProtocolVersion::V5, "backend", &backend))
        .await;
    assert_eq!(
        dev.subscribe(1, "device/dev1/command", QoS::AtLeastOnce)
            .await,
        vec![ReasonCode::GRANTED_QOS_1]
    );
    assert_eq!(
        dev.subscribe(2, "device/+/command", QoS::AtLeastOnce).await,
        vec![ReasonCode::NOT_AUTHORIZED]
    );
    assert_eq!(
        svc.subscribe(3, "device/+/status", QoS::AtMostOnce).await,
        vec![ReasonCode::GRANTED_QOS_0]
    );
    dev.send(&publish("device/dev2/status", 4)).await;
    assert!(
        matches!(dev.recv().await, Some(Packet::PubAck(a)) if a.reason == ReasonCode::NOT_AUTHORIZED)
    );
    dev.send(&publish("device/dev1/status", 5)).await;
    assert!(matches!(dev.recv().await, Some(Packet::PubAck(a)) if a.reason == ReasonCode::SUCCESS));
    match svc.recv().await {
        Some(Packet::Publish(p)) => assert_eq!(p.topic, "device/dev1/status"),
        other => panic!("{other:?}"),
    }
    svc.send(&publish("device/dev1/command", 6)).await;
    assert!(matches!(svc.recv().await, Some(Packet::PubAck(a)) if a.reason == ReasonCode::SUCCESS));
    match dev.recv().await {
        Some(Packet::Publish(p)) => assert_eq!(p.topic, "device/dev1/command"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn the_connection_ends_when_the_token_expires_v5_with_0x87() {
    let dir = tempfile::tempdir().unwrap();
    let b = hs256_broker(dir.path()).await;
    // Expires within two seconds; the broker's timer ends the connection, no client traffic needed.
    let short = hs256(json!({"sub": "dev1", "exp": now() + 2}));
    let mut v5 = b.raw().await;
    assert_eq!(
        v5.handshake(login("a", ProtocolVersion::V5, "dev1", &short))
            .await
            .0,
        ReasonCode::SUCCESS
    );
    let mut v3 = b.raw().await;
    assert_eq!(
        v3.handshake(login("b", ProtocolVersion::V311, "dev1", &short))
            .await
            .0,
        ReasonCode::SUCCESS
    );
    assert_eq!(v5.expect_close().await, Some(ReasonCode::NOT_AUTHORIZED));
    assert_eq!(
        v3.expect_close().await,
        None,
        "v3 clients are simply closed"
    );
    let (_, metrics) = b.http_get("/metrics").await;
    assert!(metrics.contains("cicada_jwt_expired_disconnects_total 2"));
}

#[tokio::test]
async fn password_file_users_and_token_clients_share_a_listener() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("passwd");
    let o = Command::new(env!("CARGO_BIN_EXE_cicada"))
        .args([
            "passwd",
            "-c",
            "-b",
            pw.to_str().unwrap(),
            "alice",
            "secret",
        ])
        .output()
        .unwrap();
    assert!(o.status.success());
    let b = TestBroker::with(|c| {
        c.auth.allow_anonymous = false;
        c.auth.password_file = Some(pw.clone());
        c.auth.jwt = Some(JwtConfig {
            secret: Some(SECRET.into()),
            ..jwt_config(JwtAlgorithm::HS256)
        });
    })
    .await;
    let mut raw = b.raw().await;
    assert_eq!(
        raw.handshake(login("a", ProtocolVersion::V5, "alice", "secret"))
            .await
            .0,
        ReasonCode::SUCCESS
    );
    let token = hs256(json!({"sub": "bob", "exp": now() + 60}));
    let mut raw = b.raw().await;
    assert_eq!(
        raw.handshake(login("b", ProtocolVersion::V5, "bob", &token))
            .await
            .0,
        ReasonCode::SUCCESS
    );
    let mut raw = b.raw().await;
    assert_eq!(
        raw.handshake(login("c", ProtocolVersion::V5, "alice", "wrong"))
            .await
            .0,
        ReasonCode::BAD_USER_NAME_OR_PASSWORD
    );
}

fn openssl(args: &[&str]) {
    let o = Command::new("openssl").args(args).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Runs mosquitto_pub off the runtime's thread (the broker under test shares the runtime).
async fn mosquitto_pub(port: u16, user: &str, token: &str) -> std::process::ExitStatus {
    let mut cmd = Command::new("mosquitto_pub");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", "mqttv5"])
        .args([
            "-i",
            "m",
            "-u",
            user,
            "-P",
            token,
            "-t",
            "device/dev1/status",
        ])
        .args(["-m", "online", "-q", "1"]);
    tokio::task::spawn_blocking(move || cmd.output().unwrap().status)
        .await
        .unwrap()
}

#[tokio::test]
async fn rs256_and_es256_tokens_verified_with_public_keys_including_from_mosquitto_pub() {
    let dir = tempfile::tempdir().unwrap();
    let rsa_private = dir.path().join("rsa.key");
    let rsa_public = dir.path().join("rsa.pub");
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        rsa_private.to_str().unwrap(),
    ]);
    openssl(&[
        "pkey",
        "-in",
        rsa_private.to_str().unwrap(),
        "-pubout",
        "-out",
        rsa_public.to_str().unwrap(),
    ]);
    let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let ec_public = dir.path().join("ec.pub");
    std::fs::write(&ec_public, ec.public_key_pem()).unwrap();
    let claims = json!({"sub": "dev1", "exp": now() + 300});
    let rs_token = encode(
        &Header::new(Algorithm::RS256),
        &claims,
        &EncodingKey::from_rsa_pem(&std::fs::read(&rsa_private).unwrap()).unwrap(),
    )
    .unwrap();
    let es_token = encode(
        &Header::new(Algorithm::ES256),
        &claims,
        &EncodingKey::from_ec_pem(ec.serialize_pem().as_bytes()).unwrap(),
    )
    .unwrap();
    let rs = TestBroker::with(|c| {
        c.auth.allow_anonymous = false;
        c.auth.jwt = Some(JwtConfig {
            public_key: Some(rsa_public.clone()),
            ..jwt_config(JwtAlgorithm::RS256)
        });
    })
    .await;
    let es = TestBroker::with(|c| {
        c.auth.allow_anonymous = false;
        c.auth.jwt = Some(JwtConfig {
            public_key: Some(ec_public.clone()),
            ..jwt_config(JwtAlgorithm::ES256)
        });
    })
    .await;
    assert!(mosquitto_pub(rs.port(), "dev1", &rs_token).await.success());
    assert!(mosquitto_pub(es.port(), "dev1", &es_token).await.success());
    // Each broker takes only its own algorithm and key.
    assert!(!mosquitto_pub(rs.port(), "dev1", &es_token).await.success());
    assert!(!mosquitto_pub(es.port(), "dev1", &rs_token).await.success());
    let hs_token = hs256(claims.clone());
    assert!(!mosquitto_pub(rs.port(), "dev1", &hs_token).await.success());
    // A tampered payload breaks the signature.
    let mut parts: Vec<String> = rs_token.split('.').map(str::to_string).collect();
    parts[1] = base64_url(&json!({"sub": "root", "exp": now() + 300}).to_string());
    assert!(!mosquitto_pub(rs.port(), "root", &parts.join("."))
        .await
        .success());
}

fn base64_url(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}
