//! `cicada pub`, `cicada sub` and `cicada bench` as a script would run them, against mosquitto, and
//! interoperating with mosquitto_pub / mosquitto_sub.

mod common;

use common::{Mosquitto, WAIT};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Instant;

fn cicada() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cicada"))
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("run command")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Waits for a child within the test bound and returns its output.
fn finish(child: Child) -> Output {
    let deadline = Instant::now() + WAIT;
    let mut child = child;
    loop {
        if child.try_wait().expect("poll child").is_some() {
            return child.wait_with_output().expect("collect output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "command did not finish: {:?}",
                child.wait_with_output().map(|o| stdout(&o))
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// A running `cicada sub` whose stdout is read on a thread, so every wait on it is bounded.
struct Sub {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Sub {
    fn spawn(args: &[&str]) -> Sub {
        let mut child = cicada()
            .arg("sub")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn cicada sub");
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Sub { child, lines }
    }

    /// The next printed line.
    fn line(&self) -> String {
        self.lines
            .recv_timeout(WAIT)
            .expect("cicada sub printed a line in time")
    }

    /// Waits for the process to exit and returns its status and the lines it printed since the last `line()`.
    fn finish(self) -> (std::process::ExitStatus, Vec<String>) {
        let status = finish(self.child).status;
        (status, self.lines.try_iter().collect())
    }
}

/// Starts `cicada sub` and returns once its subscription is live: a retained marker is published first and the
/// subscriber must print it.
fn ready_sub(broker: &Mosquitto, extra: &[&str], filter: &str, marker_topic: &str) -> Sub {
    let p = broker.port.to_string();
    assert!(run(cicada().args([
        "pub",
        "-p",
        &p,
        "-t",
        marker_topic,
        "-m",
        "ready",
        "-r",
        "-q",
        "1"
    ]))
    .status
    .success());
    let mut args = vec!["-p", &p, "-t", filter, "-t", marker_topic, "-v"];
    args.extend_from_slice(extra);
    let sub = Sub::spawn(&args);
    assert_eq!(sub.line(), format!("{marker_topic} ready"));
    sub
}

#[test]
fn pub_and_sub_round_trip_with_count_and_verbose() {
    let broker = Mosquitto::start();
    let p = broker.port.to_string();
    let sub = ready_sub(&broker, &["-C", "3", "-q", "1"], "t/#", "ready/1");
    for (v, msg) in [("311", "one"), ("5", "two"), ("31", "three")] {
        let o = run(cicada().args(["pub", "-p", &p, "-V", v, "-t", "t/x", "-m", msg, "-q", "1"]));
        assert!(
            o.status.success(),
            "pub -V {v}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    assert_eq!(sub.line(), "t/x one");
    assert_eq!(sub.line(), "t/x two");
    let (status, rest) = sub.finish();
    assert!(status.success(), "-C 3 counts the marker too and exits 0");
    assert!(rest.is_empty(), "{rest:?}");
}

#[test]
fn sub_timeout_exits_27_and_refused_connection_exits_1() {
    let broker = Mosquitto::start();
    let p = broker.port.to_string();
    let o = run(cicada().args(["sub", "-p", &p, "-t", "nothing/here", "-W", "1"]));
    assert_eq!(o.status.code(), Some(27));
    assert!(String::from_utf8_lossy(&o.stderr).contains("Timed out"));

    let closed = common::free_port();
    let o = run(cicada().args(["pub", "-p", &closed.to_string(), "-t", "a", "-m", "x"]));
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("Connection error"));
}

#[test]
fn bad_arguments_exit_2_with_a_message() {
    let cases: &[&[&str]] = &[
        &["pub", "-t", "a"],
        &["pub", "-t", "a", "-m", "x", "-q", "3"],
        &["sub", "-t", "a", "-V", "4"],
        &[
            "pub",
            "-t",
            "a",
            "-m",
            "x",
            "-D",
            "publish",
            "content-type",
            "x",
        ],
        &["pub", "-t", "a", "-m", "x", "-P", "secret"],
    ];
    for args in cases {
        let o = run(cicada().args(*args));
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(!o.stderr.is_empty(), "{args:?} explains itself");
    }
    // A wildcard topic is refused before anything is sent.
    let broker = Mosquitto::start();
    let o = run(cicada().args([
        "pub",
        "-p",
        &broker.port.to_string(),
        "-t",
        "a/#",
        "-m",
        "x",
    ]));
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("wildcard"));
}

#[test]
fn pub_reads_lines_from_stdin_and_files() {
    let broker = Mosquitto::start();
    let p = broker.port.to_string();
    let sub = ready_sub(&broker, &["-C", "5", "-q", "1"], "lines", "ready/2");
    let mut publisher = cicada()
        .args(["pub", "-p", &p, "-t", "lines", "-l", "-q", "1"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    publisher
        .stdin
        .take()
        .unwrap()
        .write_all(b"alpha\nbeta\ngamma\n")
        .unwrap();
    assert!(finish(publisher).status.success());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("payload.bin");
    std::fs::write(&file, b"from a file").unwrap();
    assert!(run(cicada()
        .args(["pub", "-p", &p, "-t", "lines", "-q", "1", "-f"])
        .arg(&file))
    .status
    .success());
    let got: Vec<String> = (0..4).map(|_| sub.line()).collect();
    assert_eq!(
        got,
        [
            "lines alpha",
            "lines beta",
            "lines gamma",
            "lines from a file"
        ]
    );
    assert!(sub.finish().0.success());
}

#[test]
fn interoperates_with_mosquitto_pub_and_sub_in_both_versions() {
    let broker = Mosquitto::start();
    let p = broker.port.to_string();
    for (ours, theirs) in [("311", "mqttv311"), ("5", "mqttv5")] {
        // mosquitto_sub receives what cicada pub sends, user property included in v5.
        let topic = format!("interop/{ours}");
        let retained = run(cicada().args([
            "pub",
            "-p",
            &p,
            "-V",
            ours,
            "-t",
            &topic,
            "-m",
            "from cicada",
            "-r",
            "-q",
            "1",
        ]));
        assert!(retained.status.success());
        let o = run(Command::new("mosquitto_sub").args([
            "-p", &p, "-V", theirs, "-t", &topic, "-C", "1", "-W", "5", "-v",
        ]));
        assert_eq!(stdout(&o), format!("{topic} from cicada\n"));
        // cicada sub receives what mosquitto_pub sends.
        let their_topic = format!("interop/theirs/{ours}");
        let o = run(Command::new("mosquitto_pub").args([
            "-p",
            &p,
            "-V",
            theirs,
            "-t",
            &their_topic,
            "-m",
            "from mosquitto",
            "-r",
            "-q",
            "2",
        ]));
        assert!(o.status.success());
        let o = run(cicada().args([
            "sub",
            "-p",
            &p,
            "-V",
            ours,
            "-t",
            &their_topic,
            "-C",
            "1",
            "-W",
            "5",
        ]));
        assert_eq!(stdout(&o), "from mosquitto\n");
    }
}

#[test]
fn sub_skips_stale_retained_with_dash_r_and_prints_without_newline_with_dash_n() {
    let broker = Mosquitto::start();
    let p = broker.port.to_string();
    assert!(
        run(cicada().args(["pub", "-p", &p, "-t", "stale/a", "-m", "old", "-r"]))
            .status
            .success()
    );
    // Readiness cannot come from a retained marker here (-R hides it): publish live messages until the
    // subscriber has printed two of them and exited; the retained "old" never appears.
    let mut child = cicada()
        .args(["sub", "-p", &p, "-t", "stale/#", "-C", "2", "-R", "-N"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "sub never got two live messages");
        assert!(
            run(cicada().args(["pub", "-p", &p, "-t", "stale/b", "-m", "new"]))
                .status
                .success()
        );
    }
    let o = child.wait_with_output().unwrap();
    assert_eq!(stdout(&o), "newnew");
}

#[test]
fn bench_pubsub_and_conn_report_json_summaries() {
    let broker = Mosquitto::start();
    let p = broker.port.to_string();
    let o = run(cicada().args([
        "bench",
        "pubsub",
        "-p",
        &p,
        "--publishers",
        "2",
        "--subscribers",
        "2",
        "-q",
        "1",
        "--size",
        "64",
        "--duration",
        "1",
        "--rate",
        "200",
        "--json",
    ]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary: serde_json::Value =
        serde_json::from_str(stdout(&o).trim()).expect("one JSON line");
    for key in [
        "sent",
        "delivered",
        "msgs_per_sec",
        "p50_ms",
        "p99_ms",
        "max_ms",
        "lost",
        "duplicates",
    ] {
        assert!(summary.get(key).is_some(), "summary has {key}: {summary}");
    }
    let sent = summary["sent"].as_u64().unwrap();
    assert!(sent > 0);
    assert_eq!(
        summary["delivered"].as_u64().unwrap(),
        2 * sent,
        "every message reaches both subscribers"
    );
    assert_eq!(summary["lost"].as_u64(), Some(0));
    assert_eq!(summary["duplicates"].as_u64(), Some(0));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("1s sent="),
        "per-second lines go to stderr with --json"
    );

    let o = run(cicada().args([
        "bench", "conn", "-p", &p, "-c", "50", "--rate", "500", "--hold", "1", "--json",
    ]));
    assert!(o.status.success());
    let summary: serde_json::Value =
        serde_json::from_str(stdout(&o).trim()).expect("one JSON line");
    assert_eq!(summary["connected"].as_u64(), Some(50));
    assert_eq!(summary["failed"].as_u64(), Some(0));
}
