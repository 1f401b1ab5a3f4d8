//! One raft node of the [`Counter`] state machine as its own process, driven line by line on stdin, for the
//! crate's multi-process tests (a leader killed with SIGKILL, restarted from its directory).
//!
//! Usage: `cicada-cluster-node ID DIR PEERS [join] [crash=POINT:N] [fsync=interval] [snapshot=N] [retain=SECS] [tick=MS]`, PEERS as
//! `1=127.0.0.1:7001,2=127.0.0.1:7002,...`; `crash=` aborts right after the N-th write of POINT (see
//! `cicada_cluster::CrashAt`).
//! Commands (one per line) and answers (one line each, in completion order):
//! `p KEY` → `ok KEY N` | `err KEY why`; `s` → `status ROLE TERM LEADER APPLIED COUNT KEYS`;
//! `c` → `count N`; `fill START N SIZE PER` (N keys of SIZE bytes, PER in a command) → `filled START`;
//! `missing FILE` (one key per line) → `missing N`; `transfer ID` → `transferring`; `add ID ADDR` | `promote ID` | `remove ID` → `done` | `err why`.

use cicada_cluster::counter::{self, Counter};
use cicada_cluster::{Cluster, ClusterConfig, ClusterError, Fsync, Membership};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

fn usage(why: &str) -> ! {
    eprintln!("cicada-cluster-node: {why}\nusage: cicada-cluster-node ID DIR PEERS [join] [crash=POINT:N] [fsync=interval] [snapshot=N] [retain=SECS] [tick=MS]");
    std::process::exit(2);
}

fn peers(arg: &str) -> HashMap<u64, String> {
    arg.split(',')
        .map(|p| {
            let (id, addr) = p
                .split_once('=')
                .unwrap_or_else(|| usage(&format!("peer {p:?} is not ID=ADDR")));
            let id = id
                .parse()
                .unwrap_or_else(|_| usage(&format!("peer id {id:?}")));
            (id, addr.to_string())
        })
        .collect()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        usage("missing arguments");
    }
    let id: u64 = args[1].parse().unwrap_or_else(|_| usage("ID"));
    let peers = peers(&args[3]);
    let Some(listen) = peers.get(&id).cloned() else {
        usage("PEERS must include this node")
    };
    let mut config = ClusterConfig::single(&args[2]);
    config.node_id = id;
    config.listen = listen;
    config.peers = peers;
    config.tick = Duration::from_millis(20);
    config.snapshot_interval = 500;
    for opt in &args[4..] {
        match opt.split_once('=') {
            None if opt == "join" => config.join = true,
            Some(("crash", at)) => {
                config.crash_at = Some(at.parse().unwrap_or_else(|e| usage(&format!("{e}"))))
            }
            Some(("fsync", "interval")) => config.fsync = Fsync::Interval,
            Some(("tick", ms)) => {
                config.tick = Duration::from_millis(ms.parse().unwrap_or_else(|_| usage("tick=MS")))
            }
            Some(("retain", secs)) => {
                config.log_retention =
                    Duration::from_secs(secs.parse().unwrap_or_else(|_| usage("retain=SECS")))
            }
            Some(("snapshot", n)) => {
                config.snapshot_interval = n.parse().unwrap_or_else(|_| usage("snapshot=N"))
            }
            _ => usage(&format!("unknown option {opt:?}")),
        }
    }
    let cluster = match Cluster::start(config, Counter, &prometheus::Registry::new()).await {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!("cicada-cluster-node: {e}");
            std::process::exit(1);
        }
    };
    println!("ready");
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let words: Vec<&str> = line.split_whitespace().collect();
        let c = cluster.clone();
        match words.as_slice() {
            ["p", key] => {
                let key = key.to_string();
                tokio::spawn(async move {
                    match c.propose(key.clone().into_bytes()).await {
                        Ok(n) => {
                            let n = n.try_into().map(u64::from_be_bytes).unwrap_or(0);
                            println!("ok {key} {n}");
                        }
                        Err(e) => println!("err {key} {e}"),
                    }
                });
            }
            ["s"] => match c.status().await {
                Ok(s) => println!(
                    "status {} {} {} {} {} {}",
                    s.role,
                    s.term,
                    s.leader,
                    s.applied,
                    counter::count(c.view()),
                    counter::key_count(c.view())
                ),
                Err(e) => println!("err status {e}"),
            },
            ["c"] => println!("count {}", counter::count(c.view())),
            ["fill", start, n, size, per] => {
                let (Ok(start), Ok(n), Ok(size), Ok(per)) = (
                    start.parse::<u64>(),
                    n.parse::<u64>(),
                    size.parse::<u32>(),
                    per.parse::<u32>(),
                ) else {
                    println!("err fill START N SIZE PER");
                    continue;
                };
                tokio::spawn(async move {
                    // Up to 32 commands in flight.
                    let sem = Arc::new(tokio::sync::Semaphore::new(32));
                    let mut tasks = Vec::new();
                    let mut at = start;
                    while at < start + n {
                        let k = (start + n - at).min(u64::from(per)) as u32;
                        let permit = sem.clone().acquire_owned().await.expect("open");
                        let c = c.clone();
                        tasks.push(tokio::spawn(async move {
                            // Refused before it was proposed (no leader for a moment): safe to retry.
                            let mut r = c.propose(counter::bulk(at, k, size)).await;
                            for _ in 0..50 {
                                if !matches!(r, Err(ClusterError::NoLeader | ClusterError::Busy)) {
                                    break;
                                }
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                r = c.propose(counter::bulk(at, k, size)).await;
                            }
                            drop(permit);
                            r
                        }));
                        at += u64::from(k);
                    }
                    let mut failed = 0;
                    let mut why = String::new();
                    for t in tasks {
                        match t.await {
                            Ok(Ok(_)) => {}
                            Ok(Err(e)) => {
                                failed += 1;
                                why = e.to_string();
                            }
                            Err(e) => {
                                failed += 1;
                                why = e.to_string();
                            }
                        }
                    }
                    if failed == 0 {
                        println!("filled {start}");
                    } else {
                        println!("err fill {start}: {failed} commands failed ({why})");
                    }
                });
            }
            ["transfer", to] => match to.parse() {
                Ok(to) => {
                    c.transfer_leader(to);
                    println!("transferring");
                }
                Err(_) => println!("err bad id"),
            },
            ["missing", file] => {
                let have: HashSet<Vec<u8>> = counter::keys(c.view()).into_iter().collect();
                let wanted = std::fs::read_to_string(file).unwrap_or_default();
                let missing = wanted
                    .lines()
                    .filter(|k| !have.contains(k.as_bytes()))
                    .count();
                println!("missing {missing}");
            }
            [verb @ ("add" | "promote" | "remove"), id, rest @ ..] => {
                let Ok(id) = id.parse() else {
                    println!("err bad id");
                    continue;
                };
                let change = match (*verb, rest) {
                    ("add", [addr]) => Membership::AddLearner {
                        id,
                        addr: addr.to_string(),
                    },
                    ("promote", []) => Membership::Promote { id },
                    ("remove", []) => Membership::Remove { id },
                    _ => {
                        println!("err bad membership command");
                        continue;
                    }
                };
                match c.change_membership(change).await {
                    Ok(()) => println!("done"),
                    Err(e) => println!("err {e}"),
                }
            }
            _ => println!("err unknown command {line:?}"),
        }
    }
    cluster.shutdown().await;
}
