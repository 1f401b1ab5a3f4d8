//! The workload and the checker against one real `cicada` process without faults: every promise holds,
//! and the history shows the workload did what it should (acknowledged publishes delivered to every
//! persistent subscriber, retained values read, roamers taken over, bad clients refused).

use cicada_chaos::checker;
use cicada_chaos::history::{Event, Outcome, Recorder};
use cicada_chaos::workload::{Load, Targets, Workload};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `cicada` binary next to this test's directory (`target/<profile>/cicada`).
fn cicada_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    dir.join("cicada")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

struct Node {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_node() -> (Node, SocketAddr) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (port, http) = (free_port(), free_port());
    let conf = format!(
        "data_dir = {:?}\n[[listener]]\nkind = \"tcp\"\nbind = \"127.0.0.1:{port}\"\n[http]\nbind = \"127.0.0.1:{http}\"\n[limits]\nmax_packet_size = 65536\n",
        dir.path().join("data")
    );
    let file = dir.path().join("cicada.toml");
    std::fs::write(&file, conf).expect("config");
    let child = Command::new(cicada_binary())
        .args(["serve", "--config"])
        .arg(&file)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start cicada (built by cargo test --workspace)");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "cicada never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    (Node { child, _dir: dir }, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workload_on_one_healthy_node_breaks_no_promise() {
    let (_node, addr) = start_node();
    let rec = Recorder::new(None).expect("recorder");
    let targets = Targets {
        nodes: vec![addr],
        haproxy: addr,
    };
    let mut workload = Workload::start(targets, rec.clone(), 7, Load { rate: 20 });
    // Let it run until the roamers have moved and every bad-client kind was tried.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let records = rec.snapshot();
        let bad = records
            .iter()
            .filter(|r| matches!(r.event, Event::BadClient { .. }))
            .count();
        let takeovers = records
            .iter()
            .filter(|r| {
                matches!(
                    r.event,
                    Event::Disconnected {
                        code: Some(0x8E),
                        ..
                    }
                )
            })
            .count();
        if bad >= 5 && takeovers >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the workload did not get going: {bad} bad clients, {takeovers} takeovers"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let missing = workload.drain(Duration::from_secs(30)).await;
    workload.stop().await;
    assert_eq!(missing, 0, "subscribers still missing messages");

    let records = rec.snapshot();
    let j = checker::check(&records);
    for v in &j.verdicts {
        assert!(
            v.violations.is_empty(),
            "{:?}: {:?}",
            v.promise,
            &v.violations[..v.violations.len().min(5)]
        );
    }
    let acked_data = records
        .iter()
        .filter(|r| matches!(&r.event, Event::Publish { retain: false, outcome: Outcome::Ok, topic, .. } if topic.starts_with("chaos/data/")))
        .count();
    let delivered = records
        .iter()
        .filter(|r| matches!(&r.event, Event::Deliver { topic, .. } if topic.starts_with("chaos/data/")))
        .count();
    let reads = records
        .iter()
        .filter(|r| matches!(&r.event, Event::RetainedRead { seq: Some(_), .. }))
        .count();
    assert!(acked_data > 100, "{acked_data} data publishes acknowledged");
    assert!(
        delivered >= 4 * acked_data * 9 / 10,
        "{delivered} deliveries for {acked_data} acknowledged publishes and 4 subscribers"
    );
    assert!(reads > 0, "no retained value was read");
    for r in &records {
        if let Event::BadClient { kind, closed, .. } = &r.event {
            if *kind != cicada_chaos::history::BadKind::Flood {
                assert!(closed, "{r:?}");
            }
        }
    }
}
