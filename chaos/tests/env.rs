//! The cluster under test, for real: three `cicada serve` processes and HAProxy; kill -9 of the leader,
//! restart and catch-up, a partition when namespaces are available, and a clean teardown.

use cicada_chaos::env::{sibling_binary, Cluster, ClusterOptions, NamespaceMode};
use cicada_chaos::history::{Event, FaultKind, FaultPhase, Recorder};
use cicada_chaos::nemesis::{self, Step};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{watch, Mutex};
use tokio::time::Instant;

/// Bound of each wait on the cluster.
const WAIT: Duration = Duration::from_secs(20);

/// Polls `check` every 100 ms until it gives a value or [`WAIT`] passes.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A v3.1.1 CONNECT with clean session and this client id.
fn connect_packet(client_id: &str) -> Vec<u8> {
    let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C];
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    let mut p = vec![0x10, body.len() as u8];
    p.extend(body);
    p
}

async fn connack_through(addr: std::net::SocketAddr, client_id: &str) -> Option<[u8; 4]> {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(&connect_packet(client_id)).await.ok()?;
        let mut ack = [0u8; 4];
        s.read_exact(&mut ack).await.ok()?;
        Some(ack)
    };
    tokio::time::timeout(Duration::from_secs(3), exchange)
        .await
        .ok()
        .flatten()
}

/// A short schedule (kill, pause, and a partition with namespaces) played by the nemesis: every fault
/// is recorded as started and ended, and every node that came back rejoined.
async fn nemesis_plays_a_schedule(c: Cluster) -> Cluster {
    let namespaces = c.namespaces();
    let c = Arc::new(Mutex::new(c));
    let rec = Recorder::new(None).unwrap();
    let mut steps = vec![
        Step {
            at_ms: 0,
            kind: FaultKind::KillLeader,
            hold_ms: 1_000,
            pick: 0,
        },
        Step {
            at_ms: 0,
            kind: FaultKind::Pause,
            hold_ms: 1_500,
            pick: 1,
        },
        Step {
            at_ms: 0,
            kind: FaultKind::Rolling,
            hold_ms: 0,
            pick: 3,
        },
    ];
    if namespaces {
        steps.push(Step {
            at_ms: 0,
            kind: FaultKind::Partition,
            hold_ms: 1_500,
            pick: 2,
        });
    }
    let (_stop_tx, stop) = watch::channel(false);
    let rounds = nemesis::run(c.clone(), steps.clone(), rec.clone(), "nobody".into(), stop).await;
    assert_eq!(rounds, steps.len() as u64);
    let events: Vec<Event> = rec.snapshot().into_iter().map(|r| r.event).collect();
    let phases: Vec<(FaultKind, FaultPhase)> = events
        .iter()
        .filter_map(|e| match e {
            Event::Fault { kind, phase, .. } => Some((*kind, *phase)),
            _ => None,
        })
        .collect();
    let expected: Vec<(FaultKind, FaultPhase)> = steps
        .iter()
        .flat_map(|s| [(s.kind, FaultPhase::Start), (s.kind, FaultPhase::End)])
        .collect();
    assert_eq!(phases, expected, "{events:?}");
    let rolled = events.iter().find_map(|e| match e {
        Event::Fault {
            kind: FaultKind::Rolling,
            phase: FaultPhase::End,
            detail,
            ..
        } => Some(detail.clone()),
        _ => None,
    });
    assert_eq!(
        rolled.as_deref(),
        Some("node 1 drained, node 2 drained, node 3 drained")
    );
    let rejoins: Vec<&Event> = events
        .iter()
        .filter(|e| matches!(e, Event::Rejoin { .. }))
        .collect();
    assert_eq!(rejoins.len(), 5, "{events:?}");
    for r in rejoins {
        assert!(matches!(r, Event::Rejoin { ok: true, .. }), "{r:?}");
    }
    // Stopped in the middle of a long hold: the fault is healed at once and recorded as ended.
    let rec = Recorder::new(None).unwrap();
    let (stop_tx, stop) = watch::channel(false);
    let long = vec![Step {
        at_ms: 0,
        kind: FaultKind::Pause,
        hold_ms: 600_000,
        pick: 0,
    }];
    let player = tokio::spawn(nemesis::run(
        c.clone(),
        long,
        rec.clone(),
        "nobody".into(),
        stop,
    ));
    eventually("the long pause began", || {
        let began = rec
            .snapshot()
            .iter()
            .any(|r| matches!(r.event, Event::Fault { .. }));
        async move { began.then_some(()) }
    })
    .await;
    stop_tx.send(true).unwrap();
    let rounds = tokio::time::timeout(WAIT, player)
        .await
        .expect("stopped in time")
        .unwrap();
    assert_eq!(rounds, 1);
    let events: Vec<Event> = rec.snapshot().into_iter().map(|r| r.event).collect();
    assert!(
        matches!(
            events.as_slice(),
            [
                Event::Fault {
                    phase: FaultPhase::Start,
                    ..
                },
                Event::Fault {
                    phase: FaultPhase::End,
                    ..
                },
                Event::Rejoin { ok: true, .. }
            ]
        ),
        "{events:?}"
    );
    Arc::into_inner(c)
        .expect("the nemesis let the cluster go")
        .into_inner()
}

/// The pids of live processes whose command line contains `text`.
fn processes_naming(text: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(text))
        })
        .collect()
}

fn command_output(args: &[&str]) -> String {
    let out = std::process::Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("run ip");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One cluster at a time: two on two cores would starve raft's ticks into elections.
static ONE_CLUSTER: Mutex<()> = Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_namespaces_nodes_run_on_loopback_and_link_faults_are_refused() {
    let _one = ONE_CLUSTER.lock().await;
    let work = tempfile::tempdir().unwrap();
    let mut opts = ClusterOptions::new(work.path().to_path_buf());
    opts.namespaces = NamespaceMode::Off;
    let mut c = Cluster::start(opts).await.expect("cluster starts");
    assert!(!c.namespaces());
    let addrs = c.addrs();
    for (i, a) in addrs.mqtt.iter().enumerate() {
        assert_eq!(a.ip().to_string(), format!("127.0.0.{}", 11 + i));
    }
    eventually("a leader", || c.leader()).await;
    let ack = eventually("CONNACK through HAProxy", || {
        connack_through(addrs.haproxy, "chaos-env-loopback")
    })
    .await;
    assert_eq!(ack, [0x20, 0x02, 0x00, 0x00]);
    let refused = c.partition(2).await.unwrap_err().to_string();
    assert!(refused.contains("needs network namespaces"), "{refused}");
    assert!(c.netem(true).await.is_err());
    assert!(!c.netem_works().await);
    c.shutdown().await;
    assert!(tokio::net::TcpStream::connect(addrs.haproxy).await.is_err());
    assert!(tokio::net::TcpStream::connect(addrs.mqtt[0]).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_survives_kill_restart_and_partition_and_is_removed() {
    let _one = ONE_CLUSTER.lock().await;
    let work = tempfile::tempdir().unwrap();
    let mut opts = ClusterOptions::new(work.path().to_path_buf());
    opts.cicada = sibling_binary("cicada");
    opts.extra_toml = "[store]\nfsync = \"interval\"\n".into();
    assert!(
        opts.cicada.exists(),
        "build the broker first: {:?}",
        opts.cicada
    );
    let mut c = Cluster::start(opts).await.expect("cluster starts");
    let addrs = c.addrs();
    let (spaces, bridge) = c.net_names();
    eprintln!("namespaces: {} {spaces:?} {bridge:?}", c.namespaces());
    assert_eq!(spaces.is_empty(), !c.namespaces());

    // A leader, and HAProxy forwarding a CONNECT (with its PROXY v2 header) to a node.
    let leader = eventually("a leader", || c.leader()).await;
    let ack = eventually("CONNACK through HAProxy", || {
        connack_through(addrs.haproxy, "chaos-env-probe")
    })
    .await;
    assert_eq!(ack, [0x20, 0x02, 0x00, 0x00]);
    assert_eq!(
        connack_through(addrs.mqtt[0], "chaos-env-direct").await,
        Some([0x20, 0x02, 0x00, 0x00])
    );

    // kill -9 of the leader: another node leads.
    c.kill(leader).await.unwrap();
    let new_leader = eventually("a new leader", || async {
        c.leader().await.filter(|l| *l != leader)
    })
    .await;

    // Restarted on its data, it catches up with the leader's commit index.
    c.restart(leader).await.unwrap();
    assert!(c.wait_ready(leader, WAIT).await, "node {leader} not ready");
    let target = c.status(new_leader).await.unwrap().commit_index;
    eventually("the restarted node caught up", || {
        let c = &c;
        async move { c.status(leader).await.filter(|s| s.applied_index >= target) }
    })
    .await;

    if c.namespaces() {
        // Node 1 cut off from the others loses its leader (503) while they stay ready; its HTTP stays
        // reachable from here (only node-to-node links are cut).
        c.partition(1).await.unwrap();
        eventually("node 1 out of rotation", || {
            let c = &c;
            async move { c.ready_code(1).await.filter(|code| *code == 503) }
        })
        .await;
        for n in [2, 3] {
            assert!(
                c.wait_ready(n, WAIT).await,
                "node {n} not ready in the majority"
            );
        }
        c.heal().await.unwrap();
        assert!(
            c.wait_ready(1, WAIT).await,
            "node 1 not ready after healing"
        );
        // netem where the kernel has sch_netem, else a token bucket: either way a slow link is applied,
        // the nodes stay ready through it, and heal removes it.
        let netem = c.netem_works().await;
        let applied = c.netem(true).await.expect("a slow link");
        assert_eq!(applied.starts_with("netem"), netem, "{applied}");
        assert!(
            applied.starts_with("netem") || applied.starts_with("tbf"),
            "{applied}"
        );
        for n in 1..=3 {
            assert!(
                c.wait_ready(n, WAIT).await,
                "node {n} not ready on slow links"
            );
        }
        c.heal().await.unwrap();
    } else {
        assert!(c.partition(1).await.is_err());
    }

    let mut c = nemesis_plays_a_schedule(c).await;
    c.shutdown().await;
    c.shutdown().await; // idempotent
    assert_eq!(
        processes_naming(&work.path().display().to_string()),
        Vec::<u32>::new()
    );
    let netns = command_output(&["ip", "netns", "list"]);
    let links = command_output(&["ip", "link", "show"]);
    for ns in &spaces {
        assert!(!netns.contains(ns.as_str()), "{ns} left: {netns}");
    }
    if let Some(br) = bridge {
        assert!(!links.contains(&br), "{br} left: {links}");
        let id = &br[..br.len() - 2];
        assert!(!links.contains(id), "an interface of {id} left: {links}");
    }
    assert!(tokio::net::TcpStream::connect(addrs.haproxy).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_cluster_without_shutdown_removes_it_too() {
    let _one = ONE_CLUSTER.lock().await;
    let work = tempfile::tempdir().unwrap();
    let c = Cluster::start(ClusterOptions::new(work.path().to_path_buf()))
        .await
        .expect("cluster starts");
    let addrs = c.addrs();
    let (spaces, bridge) = c.net_names();
    drop(c);
    let netns = command_output(&["ip", "netns", "list"]);
    for ns in &spaces {
        assert!(!netns.contains(ns.as_str()), "{ns} left: {netns}");
    }
    if let Some(br) = bridge {
        let links = command_output(&["ip", "link", "show"]);
        assert!(!links.contains(&br), "{br} left: {links}");
    }
    // SIGKILL was sent on drop: no process of the run is left (their command lines name the work dir).
    let dir = work.path().display().to_string();
    eventually("a dropped cluster's processes gone", || {
        let left = processes_naming(&dir);
        async move { left.is_empty().then_some(()) }
    })
    .await;
    assert!(tokio::net::TcpStream::connect(addrs.haproxy).await.is_err());
}
