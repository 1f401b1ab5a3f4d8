//! Configuration parsing, validation and environment overrides.

use super::*;
use crate::protocol::QoS;

#[test]
fn embedded_defaults_parse_and_match_the_constants() {
    let c = Config::default();
    assert_eq!(c.listeners[0].bind, DEFAULT_MQTT_BIND);
    assert_eq!(c.http.bind, DEFAULT_HTTP_BIND);
    assert_eq!(c.limits.max_packet_size, DEFAULT_MAX_PACKET_SIZE);
    assert_eq!(c.limits.max_queued_messages, DEFAULT_MAX_QUEUED_MESSAGES);
    assert_eq!(c.data_dir, PathBuf::from("./data"));
}

#[test]
fn an_unknown_key_names_file_and_line() {
    let e = Config::parse("[limits]\nmax_inflight = 10\nmax_infligth = 3\n", "x.toml").unwrap_err();
    let s = e.to_string();
    assert!(s.starts_with("x.toml:3:"), "{s}");
    assert!(s.contains("max_infligth"), "{s}");
}

#[test]
fn a_wrong_type_names_file_and_line() {
    let e = Config::parse("\n[mqtt]\nsys_interval = \"soon\"\n", "y.toml").unwrap_err();
    assert!(e.to_string().starts_with("y.toml:3:"), "{e}");
}

#[test]
fn an_invalid_value_names_file_line_and_key() {
    let e = Config::parse("[limits]\n\nmax_inflight = 0\n", "z.toml").unwrap_err();
    assert_eq!(
        e.to_string(),
        "z.toml:3: key `limits.max_inflight`: must be at least 1"
    );
    let e = Config::parse("[[listener]]\nbind = \"nowhere\"\n", "l.toml").unwrap_err();
    assert!(
        e.to_string().starts_with("l.toml:2: key `listener.bind`"),
        "{e}"
    );
}

#[test]
fn a_tls_listener_needs_its_certificates() {
    let e = Config::parse(
        "[[listener]]\nkind = \"tls\"\nbind = \"0.0.0.0:8883\"\n",
        "t.toml",
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("t.toml:2: key `listener.kind`: a tls or wss listener needs"),
        "{e}"
    );
    let e = Config::parse(
        "[[listener]]\nkind = \"tls\"\nbind = \"0.0.0.0:8883\"\n[listener.tls]\ncert = \"c\"\nkey = \"k\"\nrequire_certificate = true\n",
        "t.toml",
    )
    .unwrap_err();
    assert!(e.to_string().contains("key `listener.tls.ca`"), "{e}");
}

#[test]
fn listener_kinds_load_and_an_unknown_one_names_file_line_and_key() {
    let mut text = String::new();
    for (i, kind) in ["tcp", "tls", "ws", "wss"].iter().enumerate() {
        text += &format!(
            "[[listener]]\nkind = \"{kind}\"\nbind = \"0.0.0.0:{}\"\n",
            1000 + i
        );
        text += "[listener.tls]\ncert = \"c\"\nkey = \"k\"\n";
    }
    text += "[[listener]]\nbind = \"0.0.0.0:1999\"\n";
    let kinds: Vec<ListenerKind> = Config::parse(&text, "k.toml")
        .unwrap()
        .listeners
        .iter()
        .map(|l| l.kind)
        .collect();
    use ListenerKind::*;
    assert_eq!(kinds, [Tcp, Tls, Ws, Wss, Tcp], "without `kind`: tcp");
    let e = Config::parse(
        "[[listener]]\nbind = \"0.0.0.0:1883\"\n\n[[listener]]\nkind = \"udp\"\nbind = \"0.0.0.0:1884\"\n",
        "k.toml",
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "k.toml:5: key `listener.kind`: unknown variant `udp`, expected one of `tcp`, `tls`, `ws`, `wss`"
    );
}

#[test]
fn max_qos_is_a_qos_number() {
    for (n, qos) in [
        (0, QoS::AtMostOnce),
        (1, QoS::AtLeastOnce),
        (2, QoS::ExactlyOnce),
    ] {
        let c = Config::parse(&format!("[mqtt]\nmax_qos = {n}\n"), "q.toml").unwrap();
        assert_eq!(c.mqtt.max_qos, qos);
    }
    assert_eq!(Config::default().mqtt.max_qos, QoS::ExactlyOnce);
    for (value, wanted) in [
        ("3", "must be 0, 1 or 2, not 3"),
        ("-1", "must be 0, 1 or 2, not -1"),
        ("256", "must be 0, 1 or 2, not 256"),
        ("\"1\"", "invalid type: string \"1\", expected 0, 1 or 2"),
    ] {
        let e = Config::parse(&format!("[mqtt]\n\nmax_qos = {value}\n"), "q.toml").unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("q.toml:3: key `mqtt.max_qos`: {wanted}")
        );
    }
    let c = Config::parse_with_env(
        DEFAULT_TOML,
        "d.toml",
        &env(&[("CICADA_MQTT__MAX_QOS", "1")]),
    )
    .unwrap();
    assert_eq!(c.mqtt.max_qos, QoS::AtLeastOnce);
    let e = Config::parse_with_env(
        DEFAULT_TOML,
        "d.toml",
        &env(&[("CICADA_MQTT__MAX_QOS", "5")]),
    )
    .unwrap_err();
    assert!(e.to_string().contains("must be 0, 1 or 2, not 5"), "{e}");
}

#[test]
fn jwt_settings_are_checked_per_algorithm() {
    let base = "[[listener]]\nbind = \"0.0.0.0:1883\"\n[auth.jwt]\n";
    let e = Config::parse(
        &format!("{base}algorithm = \"HS256\"\nsecret = \"short\"\n"),
        "j.toml",
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "j.toml:5: key `auth.jwt.secret`: an HS256 secret needs at least 32 bytes"
    );
    let e = Config::parse(&format!("{base}algorithm = \"RS256\"\n"), "j.toml").unwrap_err();
    assert!(
        e.to_string()
            .contains("key `auth.jwt.public_key`: RS256 needs"),
        "{e}"
    );
    for bad in ["none", "hs256", "HS512"] {
        let e = Config::parse(&format!("{base}algorithm = \"{bad}\"\n"), "j.toml").unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("j.toml:4: key `auth.jwt.algorithm`: unknown variant `{bad}`, expected one of `HS256`, `RS256`, `ES256`")
        );
    }
    let e = Config::parse(
        "[[listener]]\nbind = \"0.0.0.0:1883\"\n[listener.auth.jwt]\nalgorithm = \"none\"\n",
        "j.toml",
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("j.toml:4: key `listener.auth.jwt.algorithm`: unknown variant `none`"),
        "{e}"
    );
    let ok = Config::parse(
        &format!("{base}algorithm = \"ES256\"\npublic_key = \"k.pem\"\n"),
        "j.toml",
    )
    .unwrap();
    let jwt = ok.auth.jwt.unwrap();
    assert_eq!(jwt.algorithm, JwtAlgorithm::ES256);
    assert_eq!(jwt.username_claim, "sub");
    for (name, alg) in [
        ("HS256", JwtAlgorithm::HS256),
        ("RS256", JwtAlgorithm::RS256),
    ] {
        let c = Config::parse(
            &format!("{base}algorithm = \"{name}\"\nsecret_file = \"s\"\npublic_key = \"k.pem\"\n"),
            "j.toml",
        )
        .unwrap();
        assert_eq!(c.auth.jwt.unwrap().algorithm, alg);
    }
}

#[test]
fn store_settings_are_checked() {
    let base = "[[listener]]\nbind = \"0.0.0.0:1883\"\n[store]\n";
    let e = Config::parse(&format!("{base}cache_mb = 0\n"), "s.toml").unwrap_err();
    assert_eq!(
        e.to_string(),
        "s.toml:4: key `store.cache_mb`: must be at least 1"
    );
    let e = Config::parse(&format!("{base}fsync = \"sometimes\"\n"), "s.toml").unwrap_err();
    assert_eq!(
        e.to_string(),
        "s.toml:4: key `store.fsync`: unknown variant `sometimes`, expected `always` or `interval`"
    );
    let ok = Config::parse(&format!("{base}cache_mb = 512\n"), "s.toml").unwrap();
    assert_eq!(ok.store.cache_mb, 512);
}

fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    vars.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn environment_variables_override_keys_and_errors_name_them() {
    let c = Config::parse_with_env(
        DEFAULT_TOML,
        "d.toml",
        &env(&[
            ("CICADA_DATA_DIR", "/var/lib/cicada"),
            ("CICADA_LIMITS__MAX_INFLIGHT", "7"),
            ("CICADA_STORE__FSYNC", "interval"),
            ("CICADA_HTTP__BIND", "127.0.0.1:9100"),
            ("CICADA_MQTT__RETAIN_AVAILABLE", "false"),
            ("PATH", "/usr/bin"),
        ]),
    )
    .unwrap();
    assert_eq!(c.data_dir, PathBuf::from("/var/lib/cicada"));
    assert_eq!(c.limits.max_inflight, 7);
    assert_eq!(c.store.fsync, FsyncMode::Interval);
    assert_eq!(c.http.bind, "127.0.0.1:9100");
    assert!(!c.mqtt.retain_available);

    for (var, value, wanted) in [
        (
            "CICADA_LIMITS__MAX_INFLIGHT",
            "0",
            "key `limits.max_inflight`: must be at least 1",
        ),
        ("CICADA_LIMITS__MAX_INFLIGHT", "many", "invalid type"),
        (
            "CICADA_LIMITS__NO_SUCH_KEY",
            "1",
            "unknown field `no_such_key`",
        ),
        ("CICADA_STORE__FSYNC__DEEP", "1", "`fsync` is not a table"),
        ("CICADA_LIMITS__", "1", "not a key"),
    ] {
        let e = Config::parse_with_env(DEFAULT_TOML, "d.toml", &env(&[(var, value)]))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!("environment variable {var}: ")) && e.contains(wanted),
            "{var}={value}: {e}"
        );
    }
    // The file's own errors still name its line, whatever the environment says.
    let e = Config::parse_with_env(
        "[limits]\nmax_inflight = 0\n",
        "f.toml",
        &env(&[("CICADA_DATA_DIR", "/d")]),
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("f.toml:2: key `limits.max_inflight`"),
        "{e}"
    );
}

#[test]
fn flags_override_the_file() {
    let mut c = Config::default();
    c.apply(&Overrides {
        port: Some(1999),
        http_port: Some(8999),
        data_dir: Some("/tmp/d".into()),
    });
    assert_eq!(c.listeners[0].bind, "0.0.0.0:1999");
    assert_eq!(c.http.bind, "0.0.0.0:8999");
    assert_eq!(c.data_dir, PathBuf::from("/tmp/d"));
}

#[test]
fn the_cluster_section_is_checked_and_names_its_keys() {
    let base = "[[listener]]\nbind = \"0.0.0.0:1883\"\n[cluster]\nnode_id = 1\n";
    let ok = Config::parse(
        &format!("{base}peers = [\"1@10.0.0.1:7070\", \"2@10.0.0.2:7070\", \"3@n3.local:7070\"]\nsecret = \"0123456789abcdef\"\n"),
        "c.toml",
    )
    .unwrap();
    let c = ok.cluster.as_ref().unwrap();
    assert_eq!(c.advertised(), "10.0.0.1:7070", "this node's own entry");
    assert_eq!(c.members().len(), 3);
    assert_eq!(c.members()[&3], "n3.local:7070");
    assert_eq!(c.peer_bind, DEFAULT_PEER_BIND);
    for (extra, line, key, wanted) in [
        // A missing key: the error points at the table.
        (
            "peers = [\"2@h:7070\"]\n",
            3,
            "secret",
            "needs secret or secret_file",
        ),
        (
            "peers = [\"2-h:7070\"]\nsecret = \"0123456789abcdef\"\n",
            5,
            "peers",
            "is not ID@host:port",
        ),
        ("peers = [\"0@h:7070\"]\n", 5, "peers", "positive number"),
        ("peers = [\"2@h\"]\n", 5, "peers", "is not host:port"),
        (
            "peers = [\"2@a:1\", \"2@b:1\"]\n",
            5,
            "peers",
            "listed twice",
        ),
        ("secret = \"short\"\n", 5, "secret", "at least 16 bytes"),
        (
            "peer_bind = \"nowhere\"\n",
            5,
            "peer_bind",
            "not an address:port",
        ),
        ("tick_ms = 1\n", 5, "tick_ms", "between 10 and 10000"),
        (
            "join = true\nsecret = \"0123456789abcdef\"\n",
            3,
            "peers",
            "lists the running members it joins",
        ),
        (
            "secret = \"0123456789abcdef\"\nsecret_file = \"s\"\n",
            5,
            "secret",
            "not both",
        ),
    ] {
        let e = Config::parse(&format!("{base}{extra}"), "c.toml")
            .unwrap_err()
            .to_string();
        let head = format!("c.toml:{line}: key `cluster.{key}`");
        assert!(e.starts_with(&head) && e.contains(wanted), "{extra:?}: {e}");
    }
    let e = Config::parse("[cluster]\nnode_id = 0\n", "c.toml")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("c.toml:2: key `cluster.node_id`"), "{e}");
    let e = Config::parse("[cluster]\nnode = 1\n", "c.toml")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("c.toml:2:") && e.contains("unknown field `node`"),
        "{e}"
    );
    // From the environment, like every other key.
    let c = Config::parse_with_env(
        DEFAULT_TOML,
        "d.toml",
        &env(&[
            ("CICADA_CLUSTER__NODE_ID", "2"),
            ("CICADA_CLUSTER__PEERS", "[\"1@h1:7070\", \"2@h2:7070\"]"),
            ("CICADA_CLUSTER__SECRET_FILE", "/etc/cicada/secret"),
        ]),
    )
    .unwrap();
    let cluster = c.cluster.unwrap();
    assert_eq!(
        (cluster.node_id, cluster.advertised().as_str()),
        (2, "h2:7070")
    );
}

#[test]
fn a_secret_file_is_read_relative_to_the_config_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), "0123456789abcdef0123\n").unwrap();
    std::fs::write(dir.path().join("short"), "abc\n").unwrap();
    let conf = |file: &str| {
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            format!("[cluster]\nnode_id = 1\npeers = [\"2@h:7070\"]\nsecret_file = \"{file}\"\n"),
        )
        .unwrap();
        Config::load(&p).unwrap()
    };
    let c = conf("secret").cluster.unwrap();
    assert_eq!(c.secret_bytes().unwrap().unwrap(), b"0123456789abcdef0123");
    let e = conf("short").cluster.unwrap().secret_bytes().unwrap_err();
    assert!(e.to_string().contains("at least 16 bytes"), "{e}");
    let e = conf("missing").cluster.unwrap().secret_bytes().unwrap_err();
    assert!(e.to_string().contains("cannot read"), "{e}");
}
