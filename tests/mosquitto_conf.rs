//! `cicada serve --mosquitto-conf FILE` with the file an IoT platform ships next to its `mosquitto_passwd`
//! file (ports and paths rewritten to this test's): devices with their password over MQTT, a browser-style
//! client (MQTT.js) over WebSocket, anonymous clients and wrong passwords refused on both listeners, the log
//! file written; `cicada config import` on the same file; a file with an unknown option refused with its
//! line.

mod common;

use cicada::config::ListenerKind;
use common::{answers_connect, free_port, mqttjs, WAIT};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The platform's file; `{..}` are this test's ports and directories.
const SHIPPED: &str = "\
listener {mqtt}
protocol mqtt

listener {ws}
protocol websockets

allow_anonymous false
password_file {dir}/config/pwfile

persistence true
persistence_location {dir}/data/

log_dest file {dir}/log/mosquitto.log
log_dest stdout
log_type all

# acl_file {dir}/config/aclfile
";

struct Setup {
    dir: tempfile::TempDir,
    mqtt: u16,
    ws: u16,
    conf: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (mqtt, ws) = (free_port(), free_port());
    for sub in ["config", "data", "log"] {
        std::fs::create_dir(dir.path().join(sub)).unwrap();
    }
    let text = SHIPPED
        .replace("{mqtt}", &mqtt.to_string())
        .replace("{ws}", &ws.to_string())
        .replace("{dir}", &dir.path().display().to_string());
    let conf = dir.path().join("config/mosquitto.conf");
    std::fs::write(&conf, text).unwrap();
    // The platform's password file, made by Mosquitto's own tool.
    let pwfile = dir.path().join("config/pwfile");
    for (i, (user, password)) in [("device-0042", "s3cret"), ("dashboard", "br0wser")]
        .iter()
        .enumerate()
    {
        let mut cmd = Command::new("mosquitto_passwd");
        if i == 0 {
            cmd.arg("-c");
        }
        let o = cmd
            .arg("-b")
            .arg(&pwfile)
            .arg(user)
            .arg(password)
            .output()
            .expect("mosquitto_passwd (bash .ci/install)");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    Setup {
        dir,
        mqtt,
        ws,
        conf,
    }
}

fn cicada() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cicada"));
    // The file's log_type decides the level.
    c.env_remove("RUST_LOG").stdin(Stdio::null());
    c
}

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(s: &Setup) -> Serve {
    let child = cicada()
        .args(["serve", "--mosquitto-conf"])
        .arg(&s.conf)
        .args(["--http-port", &free_port().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut serve = Serve(child);
    let deadline = Instant::now() + WAIT;
    // Refused CONNACKs count: the listener answers MQTT.
    while !answers_connect(s.mqtt) || !common::answers_http(s.ws) {
        if let Ok(Some(status)) = serve.0.try_wait() {
            panic!("cicada exited early with {status}");
        }
        assert!(Instant::now() < deadline, "cicada did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    serve
}

async fn run(cmd: &mut Command) -> Output {
    let mut cmd = tokio::process::Command::from(std::mem::replace(cmd, Command::new("true")));
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    tokio::time::timeout(WAIT, cmd.output())
        .await
        .expect("command finished in time")
        .expect("command runs")
}

fn mosquitto_pub(port: u16, credentials: Option<(&str, &str)>) -> Command {
    let mut c = Command::new("mosquitto_pub");
    c.args([
        "-p",
        &port.to_string(),
        "-t",
        "devices/0042/status",
        "-m",
        "online",
        "-q",
        "1",
    ]);
    if let Some((u, p)) = credentials {
        c.args(["-u", u, "-P", p]);
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shipped_mosquitto_conf_serves_devices_and_browsers_with_its_passwords() {
    let s = setup();
    let _broker = serve(&s);
    let (mqtt, ws) = (
        format!("mqtt://127.0.0.1:{}", s.mqtt),
        format!("ws://127.0.0.1:{}/mqtt", s.ws),
    );

    // A device with its password on the MQTT listener (mosquitto_pub), and MQTT.js on both listeners.
    let o = run(&mut mosquitto_pub(s.mqtt, Some(("device-0042", "s3cret")))).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    mqttjs::roundtrip(&mqtt, 4, Some(("device-0042", "s3cret"))).await;
    for v in [4, 5] {
        mqttjs::roundtrip(&ws, v, Some(("dashboard", "br0wser"))).await;
    }
    // Mosquitto's WebSocket listeners answer at any path; so does this one.
    mqttjs::roundtrip(
        &format!("ws://127.0.0.1:{}/", s.ws),
        5,
        Some(("dashboard", "br0wser")),
    )
    .await;

    // Anonymous clients and wrong passwords are refused on both listeners: 3.1.1 return code 5 (not
    // authorized) / 4 (bad user name or password), MQTT 5 reason 0x87 / 0x86.
    for url in [&mqtt, &ws] {
        mqttjs::refused(url, 4, None, 5).await;
        mqttjs::refused(url, 5, Some(("dashboard", "wrong")), 0x86).await;
    }
    let o = run(&mut mosquitto_pub(s.mqtt, None)).await;
    assert!(!o.status.success(), "anonymous mosquitto_pub accepted");
    let o = run(&mut mosquitto_pub(s.mqtt, Some(("device-0042", "nope")))).await;
    assert!(!o.status.success(), "a wrong password accepted");

    // The log file is written (log_type all: connections are logged).
    let log = s.dir.path().join("log/mosquitto.log");
    let deadline = Instant::now() + WAIT;
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("cicada ready") && text.contains("device-0042") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "log file {}: {text}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // persistence_location is the data directory.
    assert!(s.dir.path().join("data/store").is_dir());
}

#[test]
fn config_import_prints_the_equivalent_cicada_toml() {
    let s = setup();
    let o = cicada()
        .args(["config", "import"])
        .arg(&s.conf)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        o.stderr.is_empty(),
        "nothing ignored: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let toml = String::from_utf8(o.stdout).unwrap();
    let c = cicada::config::Config::parse(&toml, "imported.toml")
        .unwrap_or_else(|e| panic!("{e}\n{toml}"));
    let listeners: Vec<(ListenerKind, String)> = c
        .listeners
        .iter()
        .map(|l| (l.kind, l.bind.clone()))
        .collect();
    assert_eq!(
        listeners,
        vec![
            (ListenerKind::Tcp, format!("0.0.0.0:{}", s.mqtt)),
            (ListenerKind::Ws, format!("0.0.0.0:{}", s.ws))
        ]
    );
    assert!(!c.auth.allow_anonymous);
    assert_eq!(
        c.auth.password_file,
        Some(s.dir.path().join("config/pwfile"))
    );
    assert_eq!(
        c.data_dir,
        PathBuf::from(format!("{}/data/", s.dir.path().display()))
    );
    assert_eq!(c.log.file, Some(s.dir.path().join("log/mosquitto.log")));
    assert!(c.log.stdout && !c.log.stderr);
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn an_unknown_option_stops_serve_and_import_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(
        dir.path(),
        "bad.conf",
        "listener 1883\n# a comment\nmax_inflight_mesages 10\n",
    );
    for args in [vec!["serve", "--mosquitto-conf"], vec!["config", "import"]] {
        let o = cicada().args(&args).arg(&bad).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(&format!(
                "{}:3: unknown option `max_inflight_mesages`",
                bad.display()
            )),
            "{args:?}: {err}"
        );
        assert!(o.stdout.is_empty());
    }
}

#[test]
fn an_ignored_option_is_reported_on_stderr_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let conf = write(
        dir.path(),
        "m.conf",
        "listener 1883\nautosave_interval 60\n",
    );
    let o = cicada()
        .args(["config", "import"])
        .arg(&conf)
        .output()
        .unwrap();
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        err.lines().collect::<Vec<_>>(),
        vec![format!("warning: {}:2: option `autosave_interval` ignored: cicada's store commits every change before acknowledging it; there is no snapshot to save", conf.display())]
    );
}
