//! Authentication and authorisation with Mosquitto's files: password files made by mosquitto_passwd, files
//! made by `cicada passwd` read by mosquitto, ACLs (user, pattern %u/%c, deny, read vs write, anonymous),
//! failure delays and metrics, SIGHUP reload.

mod common;

use bytes::Bytes;
use cicada::protocol::{Packet, ProtocolVersion, Publish, QoS, ReasonCode};
use common::broker::{connect, TestBroker};
use common::next_message;
use std::path::Path;
use std::process::Command;

fn mosquitto_passwd(file: &Path, args: &[&str]) {
    let o = Command::new("mosquitto_passwd")
        .args(args.iter().take(args.len() - 2))
        .arg(file)
        .args(&args[args.len() - 2..])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn cicada_passwd(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cicada"))
        .arg("passwd")
        .args(args)
        .output()
        .unwrap()
}

fn login(
    id: &str,
    v: ProtocolVersion,
    user: Option<&str>,
    password: Option<&str>,
) -> cicada::protocol::Connect {
    let mut c = connect(id, v);
    c.username = user.map(str::to_string);
    c.password = password.map(|p| Bytes::from(p.to_string()));
    c
}

#[tokio::test]
async fn a_password_file_made_by_mosquitto_passwd_is_accepted_as_is() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("passwd");
    mosquitto_passwd(&file, &["-c", "-b", "alice", "secret"]);
    mosquitto_passwd(&file, &["-H", "sha512", "-b", "carol", "old-style"]);
    let b = TestBroker::with(|c| {
        c.auth.allow_anonymous = false;
        c.auth.password_file = Some(file.clone());
    })
    .await;
    for v in [ProtocolVersion::V311, ProtocolVersion::V5] {
        let mut raw = b.raw().await;
        assert_eq!(
            raw.handshake(login("a", v, Some("alice"), Some("secret")))
                .await
                .0,
            ReasonCode::SUCCESS,
            "$7$ {v:?}"
        );
        let mut raw = b.raw().await;
        assert_eq!(
            raw.handshake(login("c", v, Some("carol"), Some("old-style")))
                .await
                .0,
            ReasonCode::SUCCESS,
            "$6$ {v:?}"
        );
        let mut raw = b.raw().await;
        assert_eq!(
            raw.handshake(login("x", v, Some("alice"), Some("wrong")))
                .await
                .0,
            ReasonCode::BAD_USER_NAME_OR_PASSWORD,
            "0x86 / return code 4"
        );
        let mut raw = b.raw().await;
        assert_eq!(
            raw.handshake(login("y", v, None, None)).await.0,
            ReasonCode::NOT_AUTHORIZED,
            "0x87 / return code 5"
        );
    }
    let (_, m) = b.http_get("/metrics").await;
    assert!(
        m.contains("cicada_auth_failures_total{reason=\"bad_credentials\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("cicada_auth_failures_total{reason=\"anonymous_not_allowed\"} 2"),
        "{m}"
    );
    assert!(m.contains("cicada_connack_total{code=\"0x86\"} 2"), "{m}");
}

#[tokio::test]
async fn failed_logins_from_one_address_are_slowed_down() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("passwd");
    assert!(
        cicada_passwd(&["-c", "-b", file.to_str().unwrap(), "u", "p"])
            .status
            .success()
    );
    let b = TestBroker::with(|c| {
        c.auth.allow_anonymous = false;
        c.auth.password_file = Some(file.clone());
    })
    .await;
    let mut waits = Vec::new();
    for _ in 0..3 {
        let start = std::time::Instant::now();
        let mut raw = b.raw().await;
        raw.handshake(login("g", ProtocolVersion::V5, Some("u"), Some("guess")))
            .await;
        waits.push(start.elapsed());
    }
    // Lower bounds only: the delay doubles per failure (100, 200, 400 ms).
    assert!(waits[0] >= cicada::auth::FAILURE_DELAY, "{waits:?}");
    assert!(waits[2] >= cicada::auth::FAILURE_DELAY * 4, "{waits:?}");
    let mut raw = b.raw().await;
    assert_eq!(
        raw.handshake(login("ok", ProtocolVersion::V5, Some("u"), Some("p")))
            .await
            .0,
        ReasonCode::SUCCESS
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cicada_passwd_files_work_in_mosquitto_and_support_add_update_delete() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("passwd");
    let f = file.to_str().unwrap();
    assert!(cicada_passwd(&["-c", "-b", f, "alice", "first"])
        .status
        .success());
    assert!(cicada_passwd(&["-b", f, "bob", "builder"]).status.success());
    assert!(
        cicada_passwd(&["-b", f, "alice", "second"])
            .status
            .success(),
        "update"
    );
    assert!(cicada_passwd(&["-D", f, "bob"]).status.success(), "delete");
    let o = cicada_passwd(&["-D", f, "bob"]);
    assert_eq!(o.status.code(), Some(1));
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.starts_with("alice:$7$101$") && !text.contains("bob") && !text.contains("second"),
        "{text}"
    );
    let broker =
        common::Mosquitto::start_with(&format!("allow_anonymous false\npassword_file {f}\n"));
    let p = broker.port.to_string();
    let ok = Command::new("mosquitto_pub")
        .args([
            "-p", &p, "-u", "alice", "-P", "second", "-t", "t", "-m", "x",
        ])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "mosquitto accepts our hash: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let bad = Command::new("mosquitto_pub")
        .args(["-p", &p, "-u", "alice", "-P", "first", "-t", "t", "-m", "x"])
        .output()
        .unwrap();
    assert!(!bad.status.success(), "the old password is gone");
}

const ACL: &str = "\
# anonymous clients
topic read public/#

user alice
topic readwrite device/alice/#
topic deny device/alice/secret
topic read $SYS/#

user bob
topic read device/#

pattern write device/%c/status
pattern read inbox/%u/#
";

async fn acl_broker(dir: &Path) -> TestBroker {
    let pw = dir.join("passwd");
    let acl = dir.join("acl");
    for (u, p) in [("alice", "a"), ("bob", "b")] {
        let mut args = vec!["-b", pw.to_str().unwrap(), u, p];
        if !pw.exists() {
            args.insert(0, "-c");
        }
        assert!(cicada_passwd(&args).status.success());
    }
    std::fs::write(&acl, ACL).unwrap();
    TestBroker::with(|c| {
        c.auth.password_file = Some(pw.clone());
        c.auth.acl_file = Some(acl.clone());
    })
    .await
}

fn publish(topic: &str, qos: QoS, pkid: u16) -> Packet {
    Packet::Publish(Publish {
        topic: topic.into(),
        qos,
        pkid,
        payload: Bytes::from_static(b"x"),
        ..Publish::default()
    })
}

#[tokio::test]
async fn acl_controls_publish_subscribe_and_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let b = acl_broker(dir.path()).await;
    // bob reads all devices; alice writes only her own.
    let (bob, mut bob_events, _) = cicada::client::Client::connect(
        b.options("bob-1", ProtocolVersion::V5)
            .credentials("bob", "b"),
    )
    .await
    .unwrap();
    bob.subscribe("device/#", QoS::AtLeastOnce).await.unwrap();
    let mut alice = b.raw().await;
    alice
        .handshake(login(
            "alice-1",
            ProtocolVersion::V5,
            Some("alice"),
            Some("a"),
        ))
        .await;
    alice
        .send(&publish("device/bob/x", QoS::AtLeastOnce, 1))
        .await;
    assert!(
        matches!(alice.recv().await, Some(Packet::PubAck(a)) if a.reason == ReasonCode::NOT_AUTHORIZED),
        "v5 PUBACK 0x87"
    );
    alice
        .send(&publish("device/alice/secret", QoS::ExactlyOnce, 2))
        .await;
    assert!(
        matches!(alice.recv().await, Some(Packet::PubRec(a)) if a.reason == ReasonCode::NOT_AUTHORIZED),
        "deny: PUBREC 0x87"
    );
    alice
        .send(&publish("device/alice/temp", QoS::AtLeastOnce, 3))
        .await;
    assert!(
        matches!(alice.recv().await, Some(Packet::PubAck(a)) if a.reason == ReasonCode::SUCCESS)
    );
    // pattern write device/%c/status: alice's client id is alice-1.
    alice
        .send(&publish("device/alice-1/status", QoS::AtLeastOnce, 4))
        .await;
    assert!(
        matches!(alice.recv().await, Some(Packet::PubAck(a)) if a.reason == ReasonCode::SUCCESS)
    );
    assert_eq!(
        next_message(&mut bob_events, "allowed").await.topic,
        "device/alice/temp"
    );
    assert_eq!(
        next_message(&mut bob_events, "pattern").await.topic,
        "device/alice-1/status",
        "nothing denied leaked"
    );
    // Subscriptions: per-filter reason codes.
    let sub = |pkid, filter: &str| {
        Packet::Subscribe(cicada::protocol::Subscribe {
            pkid,
            properties: Default::default(),
            filters: vec![cicada::protocol::SubscribeFilter {
                filter: filter.into(),
                options: Default::default(),
            }],
        })
    };
    for (pkid, filter, want) in [
        (10, "device/alice/#", ReasonCode::GRANTED_QOS_0),
        (11, "device/bob/#", ReasonCode::NOT_AUTHORIZED),
        (12, "#", ReasonCode::NOT_AUTHORIZED),
        (13, "inbox/alice/+", ReasonCode::GRANTED_QOS_0),
        (14, "inbox/bob/+", ReasonCode::NOT_AUTHORIZED),
    ] {
        alice.send(&sub(pkid, filter)).await;
        match alice.recv().await {
            Some(Packet::SubAck(a)) => assert_eq!(a.reasons, vec![want], "{filter}"),
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn acl_filters_retained_messages_and_v3_gets_0x80_and_silent_drops() {
    let dir = tempfile::tempdir().unwrap();
    let b = acl_broker(dir.path()).await;
    let mut alice = b.raw().await;
    alice
        .handshake(login(
            "alice-r",
            ProtocolVersion::V311,
            Some("alice"),
            Some("a"),
        ))
        .await;
    // A retained message in the denied topic is never stored; a v3 QoS 1 publish outside the ACL is
    // acknowledged and dropped (v3 has no way to say no).
    alice.send(&publish_retained("device/alice/secret")).await;
    alice.send(&publish_retained("device/alice/t1")).await;
    alice
        .send(&publish("device/bob/x", QoS::AtLeastOnce, 7))
        .await;
    assert!(matches!(alice.recv().await, Some(Packet::PubAck(a)) if a.pkid == 7));
    // bob may read all of device/#: he gets exactly the retained t1.
    let (bob, mut bob_events, _) = cicada::client::Client::connect(
        b.options("bob-r", ProtocolVersion::V311)
            .credentials("bob", "b"),
    )
    .await
    .unwrap();
    bob.subscribe("device/#", QoS::AtLeastOnce).await.unwrap();
    assert_eq!(
        next_message(&mut bob_events, "retained").await.topic,
        "device/alice/t1"
    );
    // alice subscribes to her whole tree: her retained t1 arrives; delivery of the secret is denied anyway.
    assert_eq!(
        alice
            .subscribe(20, "device/alice/+", QoS::AtLeastOnce)
            .await,
        vec![ReasonCode::GRANTED_QOS_1]
    );
    match alice.recv().await {
        Some(Packet::Publish(p)) => assert_eq!(p.topic, "device/alice/t1"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        alice.subscribe(21, "device/bob/#", QoS::AtLeastOnce).await,
        vec![ReasonCode::UNSPECIFIED_ERROR],
        "v3 0x80"
    );
    // Anonymous clients have the anonymous rules: read public/#, nothing else.
    let mut anon = b.raw().await;
    anon.handshake(connect("anon", ProtocolVersion::V5)).await;
    assert_eq!(
        anon.subscribe(1, "public/#", QoS::AtMostOnce).await,
        vec![ReasonCode::GRANTED_QOS_0]
    );
    assert_eq!(
        anon.subscribe(2, "device/#", QoS::AtMostOnce).await,
        vec![ReasonCode::NOT_AUTHORIZED]
    );
    anon.send(&publish("public/news", QoS::AtLeastOnce, 3))
        .await;
    assert!(
        matches!(anon.recv().await, Some(Packet::PubAck(a)) if a.reason == ReasonCode::NOT_AUTHORIZED),
        "read only"
    );
    let (_, m) = b.http_get("/metrics").await;
    assert!(
        m.contains("cicada_acl_denied_total{action=\"publish\"} 3"),
        "{m}"
    );
}

fn publish_retained(topic: &str) -> Packet {
    Packet::Publish(Publish {
        topic: topic.into(),
        retain: true,
        payload: Bytes::from_static(b"r"),
        ..Publish::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_password_file_without_dropping_connections() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("passwd");
    let f = pw.to_str().unwrap().to_string();
    assert!(cicada_passwd(&["-c", "-b", &f, "alice", "one"])
        .status
        .success());
    let broker = common::process::CicadaProcess::start(&format!(
        "[auth]\nallow_anonymous = false\npassword_file = {f:?}\n"
    ));
    let addr = ([127, 0, 0, 1], broker.port).into();
    let mut kept = common::broker::Raw::connect(addr).await;
    assert_eq!(
        kept.handshake(login("k", ProtocolVersion::V5, Some("alice"), Some("one")))
            .await
            .0,
        ReasonCode::SUCCESS
    );
    assert!(cicada_passwd(&["-b", &f, "alice", "two"]).status.success());
    broker.signal(libc::SIGHUP);
    // The reload is asynchronous: retry the new password until it is accepted (bounded).
    let deadline = std::time::Instant::now() + common::WAIT;
    loop {
        let mut raw = common::broker::Raw::connect(addr).await;
        if raw
            .handshake(login("n", ProtocolVersion::V5, Some("alice"), Some("two")))
            .await
            .0
            == ReasonCode::SUCCESS
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "new password never accepted"
        );
    }
    kept.send(&Packet::PingReq).await;
    assert_eq!(
        kept.recv().await,
        Some(Packet::PingResp),
        "the existing connection stayed"
    );
}

#[tokio::test]
async fn roles_file_grants_publish_and_subscribe_per_role_with_substitutions() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("passwd");
    assert!(
        cicada_passwd(&["-c", "-b", pw.to_str().unwrap(), "dev1", "d"])
            .status
            .success()
    );
    assert!(cicada_passwd(&["-b", pw.to_str().unwrap(), "ops", "o"])
        .status
        .success());
    let roles = dir.path().join("roles.json");
    std::fs::write(
        &roles,
        r#"{
  "roles": {
    "device": {"publish": ["device/%u/status", "device/%u/data/#"], "subscribe": ["device/%u/command"]},
    "dashboard": {"subscribe": ["device/+/status", "device/+/data/#"]},
    "operator": {"publish": ["device/+/command"]}
  },
  "users": {"dev1": ["device"], "ops": ["dashboard", "operator"]},
  "anonymous": []
}"#,
    )
    .unwrap();
    let b = TestBroker::with(|c| {
        c.auth.password_file = Some(pw.clone());
        c.auth.roles_file = Some(roles.clone());
    })
    .await;
    let sub = |pkid, filter: &str| {
        Packet::Subscribe(cicada::protocol::Subscribe {
            pkid,
            properties: Default::default(),
            filters: vec![cicada::protocol::SubscribeFilter {
                filter: filter.into(),
                options: Default::default(),
            }],
        })
    };
    let mut ops = b.raw().await;
    ops.handshake(login("ops-1", ProtocolVersion::V5, Some("ops"), Some("o")))
        .await;
    let mut dev = b.raw().await;
    dev.handshake(login("dev-1", ProtocolVersion::V5, Some("dev1"), Some("d")))
        .await;
    let mut peers = [ops, dev];
    for (i, pkid, filter, want) in [
        (0, 1, "device/+/status", ReasonCode::GRANTED_QOS_0),
        (0, 2, "device/#", ReasonCode::NOT_AUTHORIZED),
        (1, 3, "device/dev1/command", ReasonCode::GRANTED_QOS_0),
        (1, 4, "device/dev2/command", ReasonCode::NOT_AUTHORIZED),
    ] {
        let peer = &mut peers[i];
        peer.send(&sub(pkid, filter)).await;
        match peer.recv().await {
            Some(Packet::SubAck(a)) => assert_eq!(a.reasons, vec![want], "{filter}"),
            other => panic!("{other:?}"),
        }
    }
    for (i, pkid, topic, want) in [
        (1, 5, "device/dev2/status", ReasonCode::NOT_AUTHORIZED),
        (1, 6, "device/dev1/status", ReasonCode::SUCCESS),
        (0, 7, "device/dev1/status", ReasonCode::NOT_AUTHORIZED),
        (0, 8, "device/dev1/command", ReasonCode::SUCCESS),
    ] {
        let peer = &mut peers[i];
        peer.send(&publish(topic, QoS::AtLeastOnce, pkid)).await;
        match peer.recv().await {
            Some(Packet::PubAck(a)) => assert_eq!(a.reason, want, "{topic}"),
            Some(Packet::Publish(p)) => {
                // A delivery that raced the PUBACK: the device's own status reaching the dashboard.
                assert_eq!(p.topic, "device/dev1/status");
                match peer.recv().await {
                    Some(Packet::PubAck(a)) => assert_eq!(a.reason, want, "{topic}"),
                    other => panic!("{other:?}"),
                }
            }
            other => panic!("{other:?}"),
        }
    }
    // Deliveries: the dashboard got the status, the device got the command.
    let got = |p: Option<Packet>| match p {
        Some(Packet::Publish(p)) => p.topic,
        other => panic!("{other:?}"),
    };
    assert_eq!(got(peers[1].recv().await), "device/dev1/command");
    // Anonymous clients are let in (allow_anonymous) but hold no role, so they may do nothing.
    let mut anon = b.raw().await;
    anon.handshake(connect("anon", ProtocolVersion::V5)).await;
    anon.send(&sub(9, "device/+/status")).await;
    match anon.recv().await {
        Some(Packet::SubAck(a)) => assert_eq!(a.reasons, vec![ReasonCode::NOT_AUTHORIZED]),
        other => panic!("{other:?}"),
    }
}
