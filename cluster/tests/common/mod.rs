//! The multi-process harness: `cicada-cluster-node` processes driven line by line (see the binary's doc).
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const WAIT: Duration = Duration::from_secs(30);

pub struct Node {
    pub id: u64,
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    /// Proposal answers read while waiting for something else: key → acknowledged.
    pub answers: HashMap<String, bool>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub role: String,
    pub leader: u64,
    pub applied: u64,
    pub count: u64,
    pub keys: u64,
}

impl Node {
    /// Starts node `id` (options as the binary takes them: `join`, `crash=POINT:N`, `snapshot=N`, ...) and
    /// waits for its `ready`.
    pub fn start(id: u64, dir: &Path, peers: &str, opts: &[&str]) -> Node {
        let mut n = Node::spawn(id, dir, peers, opts);
        n.expect(|l| l == "ready", "ready");
        n
    }

    /// Starts node `id` without waiting for it.
    pub fn spawn(id: u64, dir: &Path, peers: &str, opts: &[&str]) -> Node {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cicada-cluster-node"));
        cmd.arg(id.to_string())
            .arg(dir.join(format!("n{id}")))
            .arg(peers)
            .args(opts);
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start cicada-cluster-node");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Node {
            id,
            child,
            stdin,
            lines,
            answers: HashMap::new(),
        }
    }

    /// Whether the process ended; `Some(signal)` when a signal ended it.
    pub fn exited(&mut self) -> Option<Option<i32>> {
        use std::os::unix::process::ExitStatusExt;
        self.child.try_wait().unwrap().map(|s| s.signal())
    }

    pub fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").expect("node stdin");
    }

    /// Like [`Node::expect`], waiting up to `wait` for each line.
    pub fn expect_within(
        &mut self,
        want: impl Fn(&str) -> bool,
        what: &str,
        wait: Duration,
    ) -> String {
        loop {
            let line = self
                .try_line(wait)
                .unwrap_or_else(|| panic!("node {}: no {what} within {wait:?}", self.id));
            if want(&line) {
                return line;
            }
        }
    }

    /// The raft term this node is in.
    pub fn term(&mut self) -> u64 {
        self.send("s");
        let line = self.expect(|l| l.starts_with("status "), "status");
        line.split_whitespace().nth(2).unwrap().parse().unwrap()
    }

    /// The next line that `want` accepts; proposal answers on the way are kept.
    pub fn expect(&mut self, want: impl Fn(&str) -> bool, what: &str) -> String {
        loop {
            let line = self.next_line(what);
            if want(&line) {
                return line;
            }
        }
    }

    /// Reads one line, recording it when it answers a proposal.
    pub fn next_line(&mut self, what: &str) -> String {
        self.try_line(WAIT).unwrap_or_else(|| {
            panic!(
                "node {}: no {what} ({} answers so far)",
                self.id,
                self.answers.len()
            )
        })
    }

    /// Reads one line if one comes within `wait` (recording proposal answers).
    pub fn try_line(&mut self, wait: Duration) -> Option<String> {
        let line = self.lines.recv_timeout(wait).ok()?;
        let mut w = line.split_whitespace();
        match (w.next(), w.next()) {
            (Some("ok"), Some(key)) => {
                self.answers.insert(key.to_string(), true);
            }
            (Some("err"), Some(key)) => {
                self.answers.entry(key.to_string()).or_insert(false);
            }
            _ => {}
        }
        Some(line)
    }

    /// Reads until every key has its answer.
    pub fn wait_answers(&mut self, keys: &[String]) {
        while keys.iter().any(|k| !self.answers.contains_key(k)) {
            self.next_line("proposal answers");
        }
    }

    pub fn status(&mut self) -> Status {
        self.send("s");
        let line = self.expect(|l| l.starts_with("status "), "status");
        let w: Vec<&str> = line.split_whitespace().collect();
        Status {
            role: w[1].to_string(),
            leader: w[3].parse().unwrap(),
            applied: w[4].parse().unwrap(),
            count: w[5].parse().unwrap(),
            keys: w[6].parse().unwrap(),
        }
    }

    /// Proposes every key and waits for all answers; returns the acknowledged ones.
    pub fn propose_all(&mut self, keys: &[String]) -> Vec<String> {
        for k in keys {
            self.send(&format!("p {k}"));
        }
        self.wait_answers(keys);
        keys.iter()
            .filter(|k| self.answers[k.as_str()])
            .cloned()
            .collect()
    }

    pub fn missing(&mut self, file: &Path) -> u64 {
        self.send(&format!("missing {}", file.display()));
        let line = self.expect(|l| l.starts_with("missing "), "missing");
        line[8..].parse().unwrap()
    }

    /// A membership change; the node's error line when it refuses.
    pub fn change(&mut self, cmd: &str) -> Result<(), String> {
        self.send(cmd);
        let line = self.expect(|l| l == "done" || l.starts_with("err "), cmd);
        if line == "done" {
            Ok(())
        } else {
            Err(line)
        }
    }

    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn until(what: &str, f: impl FnMut() -> bool) {
    until_within(what, WAIT, f)
}

pub fn until_within(what: &str, wait: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + wait;
    while !f() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The leader every node in `nodes` agrees on (other than `not`, a node known dead).
pub fn agreed_leader(nodes: &mut [&mut Node], not: u64) -> u64 {
    let mut leader = 0;
    until("the nodes agree on a leader", || {
        let seen: Vec<u64> = nodes.iter_mut().map(|n| n.status().leader).collect();
        leader = seen[0];
        leader != 0 && leader != not && seen.iter().all(|&l| l == leader)
    });
    leader
}

/// A membership change through the node that leads now, made again when leadership moved under it (a loaded
/// two-core machine can miss an election timeout). Making it twice is harmless: raft-rs treats adding a member
/// it has, or removing one it does not, as no change.
pub fn change(nodes: &mut HashMap<u64, Node>, cmd: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let lead = agreed_leader(&mut nodes.values_mut().collect::<Vec<_>>(), 0);
        let err = match nodes.get_mut(&lead) {
            Some(node) => match node.change(cmd) {
                Ok(()) => return,
                Err(line) => line,
            },
            None => format!("the leader is node {lead}"),
        };
        assert!(Instant::now() < deadline, "{cmd}: {err}");
    }
}

pub fn free_ports(n: usize) -> Vec<u16> {
    let ls: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    ls.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

/// Starts three nodes in `dir`; `opts(id)` gives each its options.
pub fn three(dir: &Path, opts: impl Fn(u64) -> Vec<String>) -> (String, HashMap<u64, Node>) {
    let ports = free_ports(3);
    let peers: String = (1..=3)
        .map(|i| format!("{i}=127.0.0.1:{}", ports[i - 1]))
        .collect::<Vec<_>>()
        .join(",");
    let nodes = (1..=3u64)
        .map(|id| {
            let o = opts(id);
            let o: Vec<&str> = o.iter().map(String::as_str).collect();
            (id, Node::start(id, dir, &peers, &o))
        })
        .collect();
    (peers, nodes)
}

/// Makes `to` the leader (asking the current one to hand over until every node agrees).
pub fn lead(nodes: &mut HashMap<u64, Node>, to: u64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = agreed_leader(&mut nodes.values_mut().collect::<Vec<_>>(), 0);
        if now == to {
            return;
        }
        assert!(Instant::now() < deadline, "leadership did not move to {to}");
        let n = nodes.get_mut(&now).unwrap();
        n.send(&format!("transfer {to}"));
        n.expect(|l| l == "transferring", "transfer");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every node applied the same state, which holds every acknowledged key once: the counter equals the number
/// of keys and none of `acked` is missing.
pub fn converged(nodes: &mut HashMap<u64, Node>, acked: &[String], file: &Path) {
    std::fs::write(file, acked.join("\n")).unwrap();
    until("every node applied the same state", || {
        let s: Vec<Status> = nodes.values_mut().map(|n| n.status()).collect();
        s.iter()
            .all(|x| x.count == s[0].count && x.count >= acked.len() as u64)
    });
    for (id, n) in nodes.iter_mut() {
        let s = n.status();
        assert_eq!(
            s.count, s.keys,
            "node {id}: nothing applied twice or skipped"
        );
        assert_eq!(
            n.missing(file),
            0,
            "node {id}: every acknowledged command is there"
        );
    }
}

impl Node {
    /// The counter, cheaply (no key scan).
    pub fn count(&mut self) -> u64 {
        self.send("c");
        let line = self.expect(|l| l.starts_with("count "), "count");
        line[6..].parse().unwrap()
    }

    /// Peak resident memory of the process (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}
