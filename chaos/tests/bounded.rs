//! The bounded chaos run of the test suite (3 minutes of faults): `cicada-chaos run` as a process, three real nodes (in network
//! namespaces where the machine allows, else on 127.0.0.x) behind the shipped HAProxy configuration, every
//! fault kind once (the seed's schedule deals each kind before repeating one), then `cicada-chaos check`
//! on the saved history. Every promise must hold; the JSON line has the keys; the report directory
//! has its files; re-judging the history gives the same judgement.

use std::path::Path;
use std::process::Command;

const SEED: &str = "13";

fn chaos() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cicada-chaos"))
}

fn last_json_line(stdout: &str) -> serde_json::Value {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON line in:\n{stdout}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn a_bounded_run_with_every_fault_keeps_every_promise() {
    let dir = tempfile::tempdir().expect("temp dir");
    let report = dir.path().join("report");
    let out = chaos()
        .args([
            "run",
            "--minutes",
            "3",
            "--seed",
            SEED,
            "--json",
            "--report",
        ])
        .arg(&report)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run cicada-chaos");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let violations = std::fs::read_to_string(report.join("violations.txt")).unwrap_or_default();
    assert!(
        out.status.code() == Some(0),
        "exit {:?}\nstdout:\n{stdout}\nviolations (first lines):\n{}\nstderr (tail):\n{}",
        out.status.code(),
        violations.lines().take(30).collect::<Vec<_>>().join("\n"),
        stderr.lines().rev().take(40).collect::<Vec<_>>().join("\n")
    );
    assert!(stdout.contains(&format!("seed {SEED}")), "{stdout}");

    let j = last_json_line(&stdout);
    let keys: Vec<&str> = j
        .as_object()
        .expect("object")
        .keys()
        .map(|k| k.as_str())
        .collect();
    for k in [
        "seed",
        "rounds",
        "faults",
        "published",
        "acknowledged",
        "delivered",
        "violations",
        "recovery_ms",
        "report",
    ] {
        assert!(keys.contains(&k), "{k} missing from {j}");
    }
    assert_eq!(j["seed"], 13);
    let namespaces = read(&report.join("history.jsonl")).contains("\"namespaces\":true");
    let mut kinds = vec!["kill", "kill_leader", "kill_owner", "pause", "rolling"];
    if namespaces {
        kinds.extend(["partition", "netem"]);
    }
    if std::path::Path::new(cicada_chaos::env::clock::LIBFAKETIME).is_file() {
        kinds.push("clock_jump");
    }
    for k in &kinds {
        assert!(j["faults"][k].as_u64() >= Some(1), "no {k} fault ran: {j}");
    }
    assert!(j["rounds"].as_u64() >= Some(kinds.len() as u64), "{j}");
    for (promise, n) in j["violations"].as_object().expect("violations") {
        assert_eq!(n, 0, "{promise}");
    }
    let (published, acked, delivered) = (
        j["published"].as_u64().unwrap_or(0),
        j["acknowledged"].as_u64().unwrap_or(0),
        j["delivered"].as_u64().unwrap_or(0),
    );
    assert!(acked > 1000 && acked <= published, "{j}");
    assert!(delivered > acked, "four subscribers: {j}");
    for f in [
        "history.jsonl",
        "summary.txt",
        "judgement.json",
        "timeline.svg",
        "violations.txt",
    ] {
        assert!(report.join(f).is_file(), "{f} missing from the report");
    }
    assert!(read(&report.join("timeline.svg")).starts_with("<svg"));

    // The saved history judged again gives the same judgement.
    let again = dir.path().join("again");
    let out = chaos()
        .args(["check", "--json", "--report"])
        .arg(&again)
        .arg(report.join("history.jsonl"))
        .output()
        .expect("run cicada-chaos check");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        read(&again.join("judgement.json")),
        read(&report.join("judgement.json"))
    );
}

#[test]
fn bad_arguments_are_refused_with_a_message() {
    let out = chaos()
        .args(["run", "--faults", "kill,meteor"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown fault \"meteor\""), "{err}");
    let out = chaos()
        .args(["run", "--minutes", "0"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let dir = tempfile::tempdir().expect("temp dir");
    let bad = dir.path().join("h.jsonl");
    std::fs::write(&bad, "{\"t\":1}\n").expect("write");
    let out = chaos().arg("check").arg(&bad).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("h.jsonl:1:"), "{err}");
}
