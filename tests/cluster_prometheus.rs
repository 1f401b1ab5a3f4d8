//! The shipped Prometheus setup (config/cluster/prometheus.yml and alerts.yml) with Debian's prometheus and
//! promtool against three `cicada serve` processes: promtool accepts the rules, every target is up, each
//! node's `cicada_` series are there, and the alert rules are loaded. Skipped (with a message) only where
//! prometheus is not installed; `.ci/install` installs it.

mod common;

use common::broker::http_request;
use common::cluster::Cluster;
use common::{free_port, WAIT};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SHIPPED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/cluster");

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn query(port: u16, path: &str) -> serde_json::Value {
    let (status, body) =
        http_request(format!("127.0.0.1:{port}").parse().unwrap(), "GET", path).await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body)
        .or_else(|_| serde_json::from_str(&dechunk(&body)))
        .expect("Prometheus answers JSON")
}

/// A `Transfer-Encoding: chunked` body, joined.
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

#[test]
fn promtool_accepts_the_shipped_alert_rules_and_config() {
    if Command::new("promtool").arg("--version").output().is_err() {
        eprintln!("promtool not installed (bash .ci/install installs it): test skipped");
        return;
    }
    for args in [
        vec!["check", "rules", "alerts.yml"],
        vec!["check", "config", "prometheus.yml"],
    ] {
        let out = Command::new("promtool")
            .args(&args)
            .current_dir(SHIPPED)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_every_node_with_the_shipped_config_and_loads_the_alerts() {
    if Command::new("prometheus")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("prometheus not installed (bash .ci/install installs it): test skipped");
        return;
    }
    let c = Cluster::three("", "");
    let dir = tempfile::tempdir().unwrap();
    let targets: Vec<String> = c
        .nodes
        .iter()
        .map(|n| format!("\"127.0.0.1:{}\"", n.http_port))
        .collect();
    let shipped = std::fs::read_to_string(format!("{SHIPPED}/prometheus.yml")).unwrap();
    let config = shipped
        .replace(
            "[\"127.0.0.1:11080\", \"127.0.0.1:12080\", \"127.0.0.1:13080\"]",
            &format!("[{}]", targets.join(", ")),
        )
        .replace("scrape_interval: 5s", "scrape_interval: 1s")
        .replace("evaluation_interval: 5s", "evaluation_interval: 1s");
    assert!(
        config.contains(&targets[0]),
        "the shipped targets were replaced"
    );
    std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
    std::fs::copy(
        format!("{SHIPPED}/alerts.yml"),
        dir.path().join("alerts.yml"),
    )
    .unwrap();
    let port = free_port();
    let _prometheus = Killed(
        Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );
    // Generous: Prometheus needs a few scrapes; this bound only fires when something is broken.
    let deadline = Instant::now() + 6 * WAIT;
    let wait = |what: &str| {
        assert!(
            Instant::now() < deadline,
            "Prometheus never reported {what}"
        );
    };
    loop {
        if common::answers_http(port) {
            let v = query(
                port,
                "/api/v1/query?query=up%7Bjob%3D%22cicada%22%7D%3D%3D1",
            )
            .await;
            if v["data"]["result"].as_array().is_some_and(|r| r.len() == 3) {
                break;
            }
        }
        wait("three targets up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Every node's own series: raft state, and the broker's counters.
    for metric in [
        "cicada_raft_term",
        "cicada_connections",
        "cicada_cluster_local_routes",
    ] {
        loop {
            let v = query(
                port,
                &format!("/api/v1/query?query=count%20by%20(instance)%20({metric})"),
            )
            .await;
            if v["data"]["result"].as_array().is_some_and(|r| r.len() == 3) {
                break;
            }
            wait(metric);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let mut rules = query(port, "/api/v1/rules").await;
    while rules.is_null() {
        wait("its rules");
        tokio::time::sleep(Duration::from_millis(200)).await;
        rules = query(port, "/api/v1/rules").await;
    }
    let names: Vec<&str> = rules["data"]["groups"][0]["rules"]
        .as_array()
        .expect("the cicada rule group is loaded")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    for alert in [
        "CicadaNodeDown",
        "CicadaNoLeader",
        "CicadaRaftApplyLag",
        "CicadaDroppedMessages",
        "CicadaForwardDrops",
        "CicadaForwardAnswersTimingOut",
        "CicadaAuthFailures",
    ] {
        assert!(names.contains(&alert), "{alert} loaded: {names:?}");
    }
}
