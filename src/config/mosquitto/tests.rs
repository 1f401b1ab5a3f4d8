//! The translation table: each mapped, ignored and refused option, malformed values, listeners and
//! per-listener settings, `include_dir`, and the round trip through the printed `cicada.toml`.

use super::*;
use toml::Value;

fn no_dirs(_: &Path) -> std::io::Result<Vec<(PathBuf, String)>> {
    Err(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        "no directories in this test",
    ))
}

fn import(text: &str) -> Imported {
    parse(text, "m.conf", &no_dirs, None).unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

fn error(text: &str) -> MosquittoError {
    match parse(text, "m.conf", &no_dirs, None) {
        Ok(i) => panic!("{text:?} was accepted: {:?}", i.table),
        Err(e) => e,
    }
}

/// The value at a dotted path of the table; a number indexes an array (`listener.1.kind`).
fn get<'a>(t: &'a toml::Table, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut cur = t.get(parts.next()?)?;
    for p in parts {
        cur = match (cur, p.parse::<usize>()) {
            (Value::Array(a), Ok(i)) => a.get(i)?,
            (Value::Table(t), _) => t.get(p)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn s(v: &str) -> Value {
    Value::String(v.into())
}
fn int(v: i64) -> Value {
    Value::Integer(v)
}
fn b(v: bool) -> Value {
    Value::Boolean(v)
}

#[test]
fn each_mapped_option_sets_its_cicada_key() {
    let cases: Vec<(&str, &str, Value)> = vec![
        ("listener 1884", "listener.0.bind", s("0.0.0.0:1884")),
        ("listener 1884", "listener.0.kind", s("tcp")),
        ("listener 1884 127.0.0.1", "listener.0.bind", s("127.0.0.1:1884")),
        ("listener 1884 ::1", "listener.0.bind", s("[::1]:1884")),
        ("listener 1884 localhost", "listener.0.bind", s("127.0.0.1:1884")),
        ("listener 9001\nprotocol websockets", "listener.0.kind", s("ws")),
        ("listener 9001\nprotocol websockets", "listener.0.path", s("*")),
        ("listener 1884\nprotocol mqtt", "listener.0.kind", s("tcp")),
        ("port 1885", "listener.0.bind", s("0.0.0.0:1885")),
        ("bind_address 10.0.0.1", "listener.0.bind", s("10.0.0.1:1883")),
        ("port 1885\nbind_address 10.0.0.1", "listener.0.bind", s("10.0.0.1:1885")),
        ("listener 8883\ncertfile c.pem\nkeyfile k.pem", "listener.0.kind", s("tls")),
        ("listener 8883\ncertfile c.pem\nkeyfile k.pem", "listener.0.tls.cert", s("c.pem")),
        ("listener 8883\ncertfile c.pem\nkeyfile k.pem", "listener.0.tls.key", s("k.pem")),
        ("listener 8883\ncertfile c.pem\nkeyfile k.pem\ncafile ca.pem", "listener.0.tls.ca", s("ca.pem")),
        (
            "listener 8883\ncertfile c.pem\nkeyfile k.pem\ncafile ca.pem\nrequire_certificate true",
            "listener.0.tls.require_certificate",
            b(true),
        ),
        (
            "listener 8883\ncertfile c.pem\nkeyfile k.pem\ncafile ca.pem\nuse_identity_as_username true",
            "listener.0.tls.use_identity_as_username",
            b(true),
        ),
        ("listener 8884\nprotocol websockets\ncertfile c.pem\nkeyfile k.pem", "listener.0.kind", s("wss")),
        ("listener 1884\nmax_connections 50", "listener.0.max_connections", int(50)),
        ("listener 1884\nmax_connections -1", "listener.0.max_connections", int(0)),
        ("listener 1884\nallow_anonymous true", "auth.allow_anonymous", b(true)),
        ("listener 1884\npassword_file /etc/pw", "auth.password_file", s("/etc/pw")),
        ("listener 1884\npassword_file /etc/my pw", "auth.password_file", s("/etc/my pw")),
        ("listener 1884\nacl_file /etc/acl", "auth.acl_file", s("/etc/acl")),
        ("persistence_location /var/lib/mosquitto/", "data_dir", s("/var/lib/mosquitto/")),
        ("max_queued_messages 500", "limits.max_queued_messages", int(500)),
        ("max_queued_messages 0", "limits.max_queued_messages", int(i64::MAX)),
        ("max_queued_bytes 1000000", "limits.max_queued_bytes", int(1_000_000)),
        ("max_queued_bytes 0", "limits.max_queued_bytes", int(i64::MAX)),
        ("max_inflight_messages 20", "limits.max_inflight", int(20)),
        ("max_inflight_messages 0", "limits.max_inflight", int(65535)),
        ("message_size_limit 1000", "limits.message_size_limit", int(1000)),
        ("message_size_limit 1000", "limits.max_packet_size", int(1024 * 1024)),
        ("message_size_limit 10000000", "limits.max_packet_size", int(10_000_000 + 128 * 1024)),
        ("message_size_limit 0", "limits.max_packet_size", int(268_435_460)),
        ("message_size_limit 10000000\nmax_packet_size 20000000", "limits.max_packet_size", int(20_000_000)),
        ("max_packet_size 0", "limits.max_packet_size", int(268_435_460)),
        ("max_keepalive 300", "limits.keep_alive_max", int(300)),
        ("sys_interval 0", "mqtt.sys_interval", int(0)),
        ("sys_interval 30", "mqtt.sys_interval", int(30)),
        ("retain_available false", "mqtt.retain_available", b(false)),
        ("allow_zero_length_clientid false", "mqtt.allow_zero_length_client_id", b(false)),
        ("log_dest stdout", "log.stdout", b(true)),
        ("log_dest stdout", "log.stderr", b(false)),
        ("log_dest stderr", "log.stderr", b(true)),
        ("log_dest file /var/log/m.log", "log.file", s("/var/log/m.log")),
        ("log_dest file /var/log/m.log", "log.stderr", b(false)),
        ("log_dest stdout\nlog_dest none", "log.stdout", b(false)),
        ("log_type error", "log.level", s("error")),
        ("log_type warning", "log.level", s("warn")),
        ("log_type notice", "log.level", s("info")),
        ("log_type information", "log.level", s("info")),
        ("log_type error\nlog_type information", "log.level", s("info")),
        ("log_type debug", "log.level", s("info,cicada=debug,cicada_cluster=debug")),
        ("log_type all", "log.level", s("info,cicada=debug,cicada_cluster=debug")),
        ("log_type none", "log.level", s("off")),
        ("log_type debug\nlog_type none\nlog_type warning", "log.level", s("warn")),
    ];
    for (text, path, want) in cases {
        let imported = import(text);
        assert_eq!(get(&imported.table, path), Some(&want), "{text:?} → {path}");
        assert!(
            imported.ignored.is_empty(),
            "{text:?}: {:?}",
            imported.ignored
        );
        imported
            .to_config()
            .unwrap_or_else(|e| panic!("{text:?} does not validate: {e}"));
    }
}

#[test]
fn persistence_true_and_per_listener_settings_false_change_nothing() {
    let plain = import("listener 1884").table;
    for text in [
        "persistence true\nlistener 1884",
        "per_listener_settings false\nlistener 1884",
    ] {
        let i = import(text);
        assert_eq!(i.table, plain, "{text}");
        assert!(i.ignored.is_empty());
    }
}

#[test]
fn each_ignored_option_is_reported_once_with_its_line() {
    let cases = [
        "persistence false",
        "autosave_interval 1800",
        "autosave_on_changes false",
        "persistence_file mosquitto.db",
        "log_timestamp true",
        "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        "log_facility 5",
        "connection_messages true",
        "user mosquitto",
        "pid_file /run/mosquitto.pid",
        "set_tcp_nodelay true",
        "websockets_log_level 0",
        "websockets_headers_size 4096",
        "allow_duplicate_messages false",
        "check_retain_source true",
        "max_inflight_bytes 0",
        "memory_limit 0",
        "queue_qos0_messages false",
        "persistent_client_expiration 14d",
        "socket_domain ipv4",
        "ciphers ECDHE-RSA-AES128-GCM-SHA256",
        "ciphers_tls1.3 TLS_AES_128_GCM_SHA256",
        "dhparamfile dh.pem",
        "http_dir /www",
        "auto_id_prefix auto-",
        "tls_version tlsv1.2",
        "tls_keyform pem",
        "log_type subscribe",
        "log_type unsubscribe",
        "log_type websockets",
        "log_dest syslog",
        "log_dest topic",
        "log_dest dlt",
    ];
    for line in cases {
        let text = format!("# a comment\n\nlistener 1884\n{line}\n");
        let i = import(&text);
        assert_eq!(i.ignored.len(), 1, "{line}: {:?}", i.ignored);
        let ig = &i.ignored[0];
        assert_eq!((ig.file.as_str(), ig.line), ("m.conf", 4), "{line}");
        let option = line.split(' ').next().unwrap();
        assert!(ig.option.starts_with(option), "{line}: {}", ig.option);
        assert!(!ig.why.is_empty());
        assert!(
            ig.to_string()
                .starts_with(&format!("m.conf:4: option `{option}")),
            "{ig}"
        );
        i.to_config().unwrap();
    }
}

#[test]
fn malformed_unknown_and_refused_options_stop_with_their_line() {
    type Check = fn(&MosquittoErrorKind) -> bool;
    let unknown: Check = |k| matches!(k, MosquittoErrorKind::Unknown(_));
    let bad: Check = |k| matches!(k, MosquittoErrorKind::BadValue { .. });
    let missing: Check = |k| matches!(k, MosquittoErrorKind::Missing { .. });
    let extra: Check = |k| matches!(k, MosquittoErrorKind::Extra { .. });
    let refused: Check = |k| matches!(k, MosquittoErrorKind::Refused { .. });
    let inconsistent: Check = |k| matches!(k, MosquittoErrorKind::Inconsistent { .. });
    let cases: Vec<(&str, usize, Check)> = vec![
        ("listener 1883\nlistenr 1884", 2, unknown),
        ("\n\nmax_inflight_messagess 10", 3, unknown),
        ("listener abc", 1, bad),
        ("listener 70000", 1, bad),
        ("listener 0", 1, bad),
        ("listener 1883 my-host.example", 1, bad),
        ("listener", 1, missing),
        ("listener 1883 127.0.0.1 extra", 1, extra),
        ("listener 1883 # main port", 1, extra),
        ("allow_anonymous maybe", 1, bad),
        ("allow_anonymous", 1, missing),
        ("allow_anonymous true false", 1, extra),
        ("password_file", 1, missing),
        ("port http", 1, bad),
        ("protocol mqtts", 1, bad),
        ("max_queued_messages -5", 1, bad),
        ("max_queued_messages lots", 1, bad),
        ("max_inflight_messages 70000", 1, bad),
        ("max_connections 0", 1, bad),
        ("message_size_limit 300000000", 1, bad),
        ("sys_interval", 1, missing),
        ("log_dest", 1, missing),
        ("log_dest file", 1, missing),
        ("log_dest printer", 1, bad),
        ("log_dest stdout now", 1, extra),
        ("log_type verbose", 1, bad),
        ("tls_version tlsv1.0", 1, bad),
        ("tls_version tlsv1.3", 1, refused),
        ("listener 0 /run/mosquitto.sock", 1, refused),
        ("mount_point tenant/", 1, refused),
        ("auth_plugin /usr/lib/auth.so", 1, refused),
        ("auth_opt_backend mysql", 1, refused),
        ("psk_file psk", 1, refused),
        ("crlfile crl.pem", 1, refused),
        ("capath /etc/ssl/certs", 1, refused),
        ("use_subject_as_username true", 1, refused),
        ("use_username_as_clientid true", 1, refused),
        ("clientid_prefixes secure-", 1, refused),
        ("bind_interface eth0", 1, refused),
        ("max_qos 1", 1, refused),
        ("max_topic_alias 10", 1, refused),
        ("upgrade_outgoing_qos true", 1, refused),
        ("connection bridge-01", 1, refused),
        ("bridge_cafile ca.pem", 1, refused),
        ("tls_keyform engine", 1, refused),
        (
            "listener 1883\nallow_anonymous true\nper_listener_settings true",
            3,
            inconsistent,
        ),
        ("listener 8883\ncertfile c.pem", 2, inconsistent),
        ("listener 8883\nkeyfile k.pem", 2, inconsistent),
        ("listener 8883\n\ncafile ca.pem", 3, inconsistent),
        (
            "listener 8883\ncertfile c.pem\nkeyfile k.pem\nrequire_certificate true",
            4,
            inconsistent,
        ),
        (
            "per_listener_settings true\nlistener 1883\nallow_zero_length_clientid true",
            3,
            refused,
        ),
    ];
    for (text, line, check) in cases {
        let e = error(text);
        assert_eq!((e.file.as_str(), e.line), ("m.conf", line), "{text:?}: {e}");
        assert!(check(&e.kind), "{text:?}: {e}");
        assert!(
            e.to_string().starts_with(&format!("m.conf:{line}: ")),
            "{e}"
        );
    }
}

#[test]
fn a_value_cicada_refuses_is_named_at_its_mosquitto_line() {
    let i = import("listener 1883\n\nmax_keepalive 0\n");
    let e = i.to_config().unwrap_err();
    assert_eq!(
        e.to_string(),
        "m.conf:3: key `max_keepalive`: must be at least 1 and not below keep_alive_min \
         (cicada key `limits.keep_alive_max`)"
    );
    let e = import("max_packet_size 20\n").to_config().unwrap_err();
    assert!(
        e.to_string()
            .starts_with("m.conf:1: key `max_packet_size`: must be at least 64"),
        "{e}"
    );
}

#[test]
fn comments_blank_lines_and_indentation_are_skipped() {
    let i = import("# header\n\n   \n\t# indented comment\n  listener 1884  \n#listener 1885\n");
    let listeners = get(&i.table, "listener").unwrap().as_array().unwrap();
    assert_eq!(listeners.len(), 1);
    assert_eq!(get(&i.table, "listener.0.bind"), Some(&s("0.0.0.0:1884")));
}

#[test]
fn without_a_listener_mosquitto_listens_on_loopback_1883_with_anonymous_clients() {
    let i = import("# nothing but comments\n");
    assert_eq!(get(&i.table, "listener.0.bind"), Some(&s("127.0.0.1:1883")));
    assert_eq!(get(&i.table, "auth.allow_anonymous"), Some(&b(true)));
    // A listener makes anonymous clients refused unless the file allows them (Mosquitto 2.0).
    let i = import("listener 1883\n");
    assert_eq!(get(&i.table, "auth.allow_anonymous"), Some(&b(false)));
    // A listener option before any listener opens the default listener on every interface.
    let i = import("max_connections 5\nlistener 1884\n");
    let binds: Vec<_> = get(&i.table, "listener")
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["bind"].clone())
        .collect();
    assert_eq!(binds, vec![s("0.0.0.0:1883"), s("0.0.0.0:1884")]);
    assert_eq!(get(&i.table, "listener.0.max_connections"), Some(&int(5)));
}

#[test]
fn options_after_a_listener_line_belong_to_that_listener() {
    let i = import(
        "listener 1883\nprotocol mqtt\nmax_connections 10\n\
         listener 8883\ncertfile c.pem\nkeyfile k.pem\n\
         listener 9001\nprotocol websockets\n\
         allow_anonymous true\n",
    );
    let kinds: Vec<_> = ["listener.0.kind", "listener.1.kind", "listener.2.kind"]
        .iter()
        .map(|p| get(&i.table, p).cloned().unwrap())
        .collect();
    assert_eq!(kinds, vec![s("tcp"), s("tls"), s("ws")]);
    assert_eq!(get(&i.table, "listener.0.max_connections"), Some(&int(10)));
    assert_eq!(get(&i.table, "listener.1.max_connections"), None);
    assert_eq!(get(&i.table, "listener.1.tls.cert"), Some(&s("c.pem")));
    assert_eq!(get(&i.table, "listener.2.tls"), None);
    // Without per_listener_settings, authentication after a listener is for every listener.
    assert_eq!(get(&i.table, "auth.allow_anonymous"), Some(&b(true)));
    assert_eq!(get(&i.table, "listener.2.auth"), None);
    let c = i.to_config().unwrap();
    assert!(c.listeners.iter().all(|l| c.auth_for(l).allow_anonymous));
}

#[test]
fn per_listener_settings_gives_each_listener_its_own_authentication() {
    let i = import(
        "per_listener_settings true\n\
         allow_anonymous true\n\
         port 1883\n\
         listener 1884\npassword_file /etc/pw\n\
         listener 1885\nallow_anonymous true\nacl_file /etc/acl\n",
    );
    let c = i.to_config().unwrap();
    let binds: Vec<_> = c.listeners.iter().map(|l| l.bind.as_str()).collect();
    assert_eq!(binds, vec!["0.0.0.0:1883", "0.0.0.0:1884", "0.0.0.0:1885"]);
    // The default listener (port) has the settings before the first listener.
    assert!(c.auth_for(&c.listeners[0]).allow_anonymous);
    let second = c.auth_for(&c.listeners[1]);
    assert!(
        !second.allow_anonymous,
        "Mosquitto 2.0's default per listener"
    );
    assert_eq!(second.password_file, Some(PathBuf::from("/etc/pw")));
    assert_eq!(second.acl_file, None);
    let third = c.auth_for(&c.listeners[2]);
    assert!(third.allow_anonymous);
    assert_eq!(third.acl_file, Some(PathBuf::from("/etc/acl")));
    assert_eq!(third.password_file, None);
}

#[test]
fn relative_paths_are_made_absolute_when_asked() {
    let i = parse(
        "listener 1883\npassword_file pw\nacl_file /abs/acl\npersistence_location data/\nlog_dest file log/m.log",
        "m.conf",
        &no_dirs,
        Some(Path::new("/srv/mq")),
    )
    .unwrap();
    assert_eq!(get(&i.table, "auth.password_file"), Some(&s("/srv/mq/pw")));
    assert_eq!(get(&i.table, "auth.acl_file"), Some(&s("/abs/acl")));
    assert_eq!(get(&i.table, "data_dir"), Some(&s("/srv/mq/data/")));
    assert_eq!(get(&i.table, "log.file"), Some(&s("/srv/mq/log/m.log")));
}

#[test]
fn include_dir_reads_its_files_in_place_and_names_them_in_reports() {
    let dir = |p: &Path| -> std::io::Result<Vec<(PathBuf, String)>> {
        assert_eq!(p, Path::new("/etc/mosquitto/conf.d"));
        Ok(vec![
            (
                PathBuf::from("/etc/mosquitto/conf.d/A.conf"),
                "protocol websockets\n".into(),
            ),
            (
                PathBuf::from("/etc/mosquitto/conf.d/b.conf"),
                "\npersistence false\n".into(),
            ),
        ])
    };
    let i = parse(
        "listener 9001\ninclude_dir /etc/mosquitto/conf.d\n",
        "m.conf",
        &dir,
        None,
    )
    .unwrap();
    assert_eq!(
        get(&i.table, "listener.0.kind"),
        Some(&s("ws")),
        "applies to the listener before it"
    );
    assert_eq!(i.ignored[0].file, "/etc/mosquitto/conf.d/b.conf");
    assert_eq!(i.ignored[0].line, 2);
    let nested = |_: &Path| -> std::io::Result<Vec<(PathBuf, String)>> {
        Ok(vec![(PathBuf::from("d/x.conf"), "include_dir e\n".into())])
    };
    let e = parse("include_dir d\n", "m.conf", &nested, None).unwrap_err();
    assert_eq!((e.file.as_str(), e.line), ("d/x.conf", 1), "{e}");
    let e = parse("\ninclude_dir /missing\n", "m.conf", &no_dirs, None).unwrap_err();
    assert_eq!(e.line, 2);
    assert!(matches!(e.kind, MosquittoErrorKind::Read { .. }), "{e}");
}

#[test]
fn include_dir_files_sort_as_mosquitto_sorts_them() {
    let mut names = vec!["b.conf", "A.conf", "01.conf", "a.conf", "B.conf", "00.conf"];
    names.sort_by_key(|n| include_order(n));
    assert_eq!(
        names,
        vec!["00.conf", "01.conf", "A.conf", "a.conf", "B.conf", "b.conf"]
    );
}

#[test]
fn the_printed_toml_loads_as_the_same_configuration() {
    let texts = [
        "listener 1883\nprotocol mqtt\n\nlistener 9001\nprotocol websockets\n\nallow_anonymous false\n\
         password_file /mosquitto/config/pwfile\n\npersistence true\npersistence_location /mosquitto/data/\n\n\
         log_dest file /mosquitto/log/mosquitto.log\nlog_dest stdout\nlog_type all\n",
        "per_listener_settings true\nport 1883\nlistener 8883 127.0.0.1\ncertfile c.pem\nkeyfile k.pem\n\
         cafile ca.pem\nrequire_certificate true\nuse_identity_as_username true\nacl_file acl\n\
         max_queued_messages 0\nmax_inflight_messages 0\nmessage_size_limit 5000000\nsys_interval 0\n\
         persistence false\nlog_type none\n",
        "",
    ];
    for text in texts {
        let i = import(text);
        let direct = i.to_config().unwrap();
        let printed = i.to_toml();
        let loaded = crate::config::Config::parse(&printed, "printed.toml")
            .unwrap_or_else(|e| panic!("{e}\n{printed}"));
        assert_eq!(format!("{loaded:?}"), format!("{direct:?}"), "{printed}");
        for ig in &i.ignored {
            assert!(printed.contains(&format!("# {ig}")), "{printed}");
        }
    }
}
