//! Three `cicada serve` processes forming one cluster on loopback ports, for the cluster tests.

use super::process::CicadaProcess;
use super::{free_port, WAIT};
use std::time::Instant;

pub struct Cluster {
    pub nodes: Vec<CicadaProcess>,
    pub peer_ports: Vec<u16>,
    _slot: Slot,
}

/// Three-node clusters of one test binary running at once, at most: on 2 cores more would starve raft
/// ticks into elections the tests do not expect.
const MAX_CLUSTERS: usize = 2;
static RUNNING: (std::sync::Mutex<usize>, std::sync::Condvar) =
    (std::sync::Mutex::new(0), std::sync::Condvar::new());

struct Slot;

impl Slot {
    fn take() -> Slot {
        let mut n = RUNNING.0.lock().unwrap_or_else(|e| e.into_inner());
        while *n >= MAX_CLUSTERS {
            n = RUNNING.1.wait(n).unwrap_or_else(|e| e.into_inner());
        }
        *n += 1;
        Slot
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        *RUNNING.0.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        RUNNING.1.notify_one();
    }
}

/// The `[cluster]` table of node `id` (1-based) of a cluster on these peer ports.
pub fn cluster_toml(id: usize, peer_ports: &[u16], extra: &str) -> String {
    let peers = members(peer_ports);
    format!(
        "[store]\nfsync = \"interval\"\n[cluster]\nnode_id = {id}\npeer_bind = \"127.0.0.1:{port}\"\npeers = [{peers}]\nsecret = \"a-test-cluster-secret\"\ntick_ms = 100\n{extra}\n",
        port = peer_ports[id - 1],
        peers = peers.join(", ")
    )
}

/// The `peers` entries of a cluster on these peer ports: `"ID@127.0.0.1:PORT"`.
fn members(peer_ports: &[u16]) -> Vec<String> {
    peer_ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("\"{}@127.0.0.1:{p}\"", i + 1))
        .collect()
}

impl Cluster {
    /// The configuration of node `id` that joins this cluster (`join = true`) with its peer link on
    /// `peer_port`, listing the running members; `extra` goes into `[cluster]` (or after it).
    pub fn joining_toml(&self, id: usize, peer_port: u16, extra: &str) -> String {
        format!(
            "[store]\nfsync = \"interval\"\n[cluster]\nnode_id = {id}\npeer_bind = \"127.0.0.1:{peer_port}\"\npeers = [{}]\njoin = true\nsecret = \"a-test-cluster-secret\"\ntick_ms = 100\n{extra}\n",
            members(&self.peer_ports).join(", ")
        )
    }

    /// Kills nodes 2 and 3 with SIGKILL and waits until node 1, alone, answers `/ready` 503 (no leader).
    pub fn leave_node_1_alone(&mut self) {
        self.leave_alone(1);
    }

    /// Kills every node but `node` (1-based) with SIGKILL and waits until `node`, alone, answers `/ready`
    /// 503 (no leader). The others restart with `kill9_and_spawn_after_exit`.
    pub fn leave_alone(&mut self, node: usize) {
        for (i, n) in self.nodes.iter_mut().enumerate() {
            if i + 1 != node {
                n.signal(libc::SIGKILL);
                n.wait_exit();
            }
        }
        let deadline = Instant::now() + WAIT;
        while http_status(self.nodes[node - 1].http_port, "/ready") != Some(503) {
            assert!(
                Instant::now() < deadline,
                "/ready never said 503 without a quorum"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Three nodes; `extra` goes into each node's configuration before `[cluster]`; `cluster_extra` into it.
    pub fn three(extra: &str, cluster_extra: &str) -> Cluster {
        Self::three_each(|_| extra.to_string(), cluster_extra)
    }

    /// Three nodes, node `i` (1-based) with `extra(i)` in its configuration.
    pub fn three_with(extra: impl Fn(usize) -> String) -> Cluster {
        Self::three_each(extra, "")
    }

    fn three_each(extra: impl Fn(usize) -> String, cluster_extra: &str) -> Cluster {
        let slot = Slot::take();
        let peer_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut nodes: Vec<CicadaProcess> = (1..=3)
            .map(|id| {
                CicadaProcess::spawn(
                    &format!(
                        "{}\n{}",
                        extra(id),
                        cluster_toml(id, &peer_ports, cluster_extra)
                    ),
                    "warn",
                )
            })
            .collect();
        for n in &mut nodes {
            n.wait_listening();
        }
        let c = Cluster {
            nodes,
            peer_ports,
            _slot: slot,
        };
        c.wait_ready_all();
        c
    }

    /// Waits until every running node answers /ready 200 (it knows a leader).
    pub fn wait_ready_all(&self) {
        for n in &self.nodes {
            wait_ready(n.http_port);
        }
    }

    pub fn port(&self, node: usize) -> u16 {
        self.nodes[node - 1].port
    }

    /// The index (0-based) of the running node that is leader, once one is.
    pub async fn leader(&self) -> usize {
        let deadline = Instant::now() + WAIT;
        loop {
            for (i, n) in self.nodes.iter().enumerate() {
                if n.child_alive()
                    && super::process::metric(n.http_port, "cicada_raft_role").await == 2.0
                {
                    return i;
                }
            }
            assert!(Instant::now() < deadline, "no leader");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

/// Resumes `connect`'s session (clean start = false) on the node listening on `port`: retried for up to
/// 30 s while the survivors of a killed node elect a leader; the session must be present.
pub async fn resume_on(port: u16, connect: &cicada::protocol::Connect) -> super::broker::Raw {
    let mut again = connect.clone();
    again.clean_start = false;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let mut s = super::broker::Raw::connect(addr).await;
        let (code, present, _) = s.handshake(again.clone()).await;
        if code == cicada::protocol::ReasonCode::SUCCESS {
            assert!(present, "the session survives its node");
            return s;
        }
        assert!(Instant::now() < deadline, "never resumed: {code:?}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Blocks until `/ready` on this HTTP port answers 200.
pub fn wait_ready(http_port: u16) {
    let deadline = Instant::now() + WAIT;
    loop {
        if http_status(http_port, "/ready") == Some(200) {
            return;
        }
        assert!(Instant::now() < deadline, "node on {http_port} never ready");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The status code of a GET, with plain std (usable outside a runtime).
pub fn http_status(port: u16, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_whitespace().nth(1)?.parse().ok()
}
