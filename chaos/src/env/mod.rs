//! The cluster under test: three `cicada serve` processes (in network namespaces when possible, else on
//! loopback addresses) and HAProxy in front of them with the shipped configuration.
//!
//! # Layout
//! - `net`: namespaces, bridge and the link faults (partition, netem).
//! - `node`: one node's configuration and process (kill -9, SIGSTOP/SIGCONT, restart, drain).
//! - `haproxy`: the shipped `haproxy.cfg` adapted to the run, and the HAProxy process.
//! - `admin`: the nodes' admin API (`/ready`, `/api/v1/cluster`, `/api/v1/sessions/{id}`).

pub mod admin;
pub mod clock;
pub mod haproxy;
pub mod net;
pub mod node;

pub use admin::NodeStatus;

use crate::history::NodeId;
use haproxy::{Haproxy, HaproxyError, Server};
use net::{Net, NetError, NODES};
use node::{Node, NodeAddrs, NodeError};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long the cluster may take to come up (every node ready, HAProxy accepting).
pub const START_WAIT: Duration = Duration::from_secs(60);

/// How often a wait polls.
const POLL: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    Haproxy(#[from] HaproxyError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} within {START_WAIT:?} (logs in {logs})")]
    NotReady { what: String, logs: PathBuf },
    #[error("there is no node {0} (nodes are 1..=3)")]
    NoSuchNode(NodeId),
    #[error("clock jumps need libfaketime ({})", clock::LIBFAKETIME)]
    NoClock,
}

/// Whether to put the nodes in network namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamespaceMode {
    /// When this process can make them (root, `ip netns` works); else loopback addresses.
    Auto,
    /// Never: loopback addresses, no link faults.
    Off,
}

#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The `cicada` binary.
    pub cicada: PathBuf,
    /// The `haproxy` binary.
    pub haproxy: PathBuf,
    /// The HAProxy configuration to adapt (the shipped `config/cluster/haproxy.cfg`).
    pub haproxy_cfg: PathBuf,
    /// Configurations, data and logs go here.
    pub work_dir: PathBuf,
    pub namespaces: NamespaceMode,
    /// Appended to every node's configuration; must begin with a table header (e.g. `[limits]`).
    pub extra_toml: String,
}

impl ClusterOptions {
    /// Options with the sibling `cicada`, `haproxy` from the PATH and the shipped HAProxy configuration.
    pub fn new(work_dir: PathBuf) -> ClusterOptions {
        ClusterOptions {
            cicada: sibling_binary("cicada"),
            haproxy: PathBuf::from("haproxy"),
            haproxy_cfg: shipped_haproxy_cfg(),
            work_dir,
            namespaces: NamespaceMode::Auto,
            extra_toml: String::new(),
        }
    }
}

/// The workspace's `config/cluster/haproxy.cfg`.
pub fn shipped_haproxy_cfg() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/cluster/haproxy.cfg")
}

/// A binary built next to this one: `target/release/NAME` for `target/release/cicada-chaos` and for a test
/// binary in `target/release/deps/`.
pub fn sibling_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    dir.join(name)
}

/// Where clients reach the cluster.
#[derive(Debug, Clone)]
pub struct Addrs {
    /// Each node's plain MQTT listener; index 0 is node 1.
    pub mqtt: Vec<SocketAddr>,
    /// Each node's HTTP address.
    pub http: Vec<SocketAddr>,
    /// HAProxy's MQTT frontend.
    pub haproxy: SocketAddr,
}

/// Three nodes and HAProxy, up until [`Cluster::shutdown`] (or drop).
pub struct Cluster {
    net: Net,
    nodes: Vec<Node>,
    haproxy: Option<Haproxy>,
    addrs: Addrs,
    work_dir: PathBuf,
}

/// A port free on `ip` now (bound to port 0, then released).
fn free_port(ip: IpAddr) -> Result<u16, EnvError> {
    let l = std::net::TcpListener::bind((ip, 0)).map_err(|source| EnvError::Io {
        path: PathBuf::from(ip.to_string()),
        source,
    })?;
    Ok(l.local_addr().map(|a| a.port()).unwrap_or(0))
}

fn node_addrs(net: &Net) -> Result<Vec<NodeAddrs>, EnvError> {
    (1..=NODES)
        .map(|n| {
            let ip = IpAddr::V4(net.ip(n));
            // In a namespace each node has its own address: the usual ports. On loopback, ephemeral ones.
            let port = |fixed: u16| {
                if net.namespaced() {
                    Ok(fixed)
                } else {
                    free_port(ip)
                }
            };
            Ok(NodeAddrs {
                mqtt: SocketAddr::new(ip, port(1883)?),
                proxy: SocketAddr::new(ip, port(1884)?),
                http: SocketAddr::new(ip, port(8080)?),
                peer: SocketAddr::new(ip, port(7070)?),
            })
        })
        .collect()
}

impl Cluster {
    /// Starts the nodes and HAProxy and waits (bounded) until every node answers `/ready` 200 and HAProxy
    /// accepts connections. On failure everything started is stopped again.
    pub async fn start(opts: ClusterOptions) -> Result<Cluster, EnvError> {
        let net = match opts.namespaces {
            NamespaceMode::Auto if net::available().await => {
                match Net::namespaces(net::run_id()).await {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::warn!(error = %e, "network namespaces failed: nodes on loopback");
                        Net::loopback()
                    }
                }
            }
            _ => Net::loopback(),
        };
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| EnvError::Io { path, source }
        };
        std::fs::create_dir_all(&opts.work_dir).map_err(io(&opts.work_dir))?;
        let all = node_addrs(&net)?;
        let mut nodes = Vec::new();
        for n in 1..=NODES {
            let dir = opts.work_dir.join(format!("node{n}"));
            let prefix = net.exec_prefix(n);
            nodes.push(Node::prepare(
                n,
                &all,
                &dir,
                &opts.extra_toml,
                &opts.cicada,
                prefix,
            )?);
        }
        let haproxy_addr = SocketAddr::new(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            free_port(IpAddr::V4(Ipv4Addr::LOCALHOST))?,
        );
        let mut cluster = Cluster {
            net,
            nodes,
            haproxy: None,
            addrs: Addrs {
                mqtt: all.iter().map(|a| a.mqtt).collect(),
                http: all.iter().map(|a| a.http).collect(),
                haproxy: haproxy_addr,
            },
            work_dir: opts.work_dir.clone(),
        };
        match cluster.bring_up(&opts, &all).await {
            Ok(()) => Ok(cluster),
            Err(e) => {
                cluster.shutdown().await;
                Err(e)
            }
        }
    }

    async fn bring_up(&mut self, opts: &ClusterOptions, all: &[NodeAddrs]) -> Result<(), EnvError> {
        for node in &mut self.nodes {
            node.start().await?;
        }
        let shipped =
            std::fs::read_to_string(&opts.haproxy_cfg).map_err(|source| EnvError::Io {
                path: opts.haproxy_cfg.clone(),
                source,
            })?;
        let servers: Vec<Server> = all
            .iter()
            .map(|a| Server {
                proxy: a.proxy,
                http: a.http,
            })
            .collect();
        let cfg = haproxy::adapt(&shipped, self.addrs.haproxy, &servers)?;
        self.haproxy = Some(Haproxy::start(
            &opts.haproxy,
            &cfg,
            &self.work_dir.join("haproxy.cfg"),
            &self.work_dir.join("haproxy.log"),
        )?);
        let deadline = tokio::time::Instant::now() + START_WAIT;
        for n in 1..=NODES {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if !self.wait_ready(n, left).await {
                return Err(self.not_ready(format!("node {n} never answered /ready 200")));
            }
        }
        loop {
            if tokio::net::TcpStream::connect(self.addrs.haproxy)
                .await
                .is_ok()
            {
                return Ok(());
            }
            let running = self.haproxy.as_mut().is_some_and(Haproxy::running);
            if !running || tokio::time::Instant::now() >= deadline {
                return Err(
                    self.not_ready(format!("HAProxy never accepted on {}", self.addrs.haproxy))
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn not_ready(&self, what: String) -> EnvError {
        EnvError::NotReady {
            what,
            logs: self.work_dir.clone(),
        }
    }

    /// Whether the nodes run in network namespaces (link faults possible).
    pub fn namespaces(&self) -> bool {
        self.net.namespaced()
    }

    pub fn addrs(&self) -> Addrs {
        self.addrs.clone()
    }

    /// The namespaces and bridge of this run (empty without namespaces).
    pub fn net_names(&self) -> (Vec<String>, Option<String>) {
        self.net.names()
    }

    fn http(&self, n: NodeId) -> Option<SocketAddr> {
        self.addrs.http.get(usize::from(n).checked_sub(1)?).copied()
    }

    fn node(&mut self, n: NodeId) -> Result<&mut Node, EnvError> {
        let i = usize::from(n)
            .checked_sub(1)
            .ok_or(EnvError::NoSuchNode(n))?;
        self.nodes.get_mut(i).ok_or(EnvError::NoSuchNode(n))
    }

    /// Node `n`'s raft state, or `None` when it does not answer within a second.
    pub async fn status(&self, n: NodeId) -> Option<NodeStatus> {
        admin::status(self.http(n)?).await.ok()
    }

    /// Node `n`'s `/ready` status code.
    pub async fn ready_code(&self, n: NodeId) -> Option<u16> {
        admin::ready(self.http(n)?).await.ok()
    }

    /// The node that is raft leader (of the highest term, should a deposed one not know yet).
    pub async fn leader(&self) -> Option<NodeId> {
        let mut best: Option<(u64, NodeId)> = None;
        for n in 1..=NODES {
            if let Some(s) = self.status(n).await {
                if s.is_leader() && best.is_none_or(|(term, _)| s.term > term) {
                    best = Some((s.term, n));
                }
            }
        }
        best.map(|(_, n)| n)
    }

    /// The node owning `client`'s stored session, as the first node that answers knows it.
    pub async fn owner(&self, client: &str) -> Option<NodeId> {
        for n in 1..=NODES {
            if let Ok(owner) = admin::owner(self.http(n)?, client).await {
                return owner;
            }
        }
        None
    }

    /// Polls node `n`'s `/ready` until it answers 200 or `timeout` passes.
    pub async fn wait_ready(&self, n: NodeId, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.ready_code(n).await == Some(200) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// kill -9 node `n` (and reap it).
    pub async fn kill(&mut self, n: NodeId) -> Result<(), EnvError> {
        self.node(n)?.kill().await;
        Ok(())
    }

    /// SIGSTOP node `n`.
    pub fn pause(&mut self, n: NodeId) -> Result<(), EnvError> {
        Ok(self.node(n)?.pause()?)
    }

    /// Whether clock jumps can be injected (libfaketime is installed).
    pub fn clocks(&self) -> bool {
        self.nodes.iter().all(|n| n.clock.is_some())
    }

    /// Moves node `n`'s wall clock `secs` seconds from real time (0: back to real time).
    pub fn clock_jump(&mut self, n: NodeId, secs: i64) -> Result<(), EnvError> {
        let node = self.node(n)?;
        let Some(clock) = &node.clock else {
            return Err(EnvError::NoClock);
        };
        clock.set(secs).map_err(|source| EnvError::Io {
            path: clock.path().to_path_buf(),
            source,
        })
    }

    /// SIGCONT node `n`.
    pub fn resume(&mut self, n: NodeId) -> Result<(), EnvError> {
        Ok(self.node(n)?.resume()?)
    }

    /// Starts node `n` again on its configuration and data (killing it first if it runs).
    pub async fn restart(&mut self, n: NodeId) -> Result<(), EnvError> {
        Ok(self.node(n)?.restart().await?)
    }

    /// `cicada ctl drain` on node `n`, waiting (bounded) for it to exit; `Ok(false)` when it had to be killed.
    pub async fn drain(&mut self, n: NodeId) -> Result<bool, EnvError> {
        Ok(self.node(n)?.drain().await?)
    }

    /// Cuts node `n` off from the other nodes (not from clients). Needs namespaces.
    pub async fn partition(&mut self, n: NodeId) -> Result<(), EnvError> {
        self.node(n)?;
        Ok(self.net.partition(n).await?)
    }

    /// Delay, loss and reordering on every node's link (`on`), or none. Needs namespaces.
    pub async fn netem(&mut self, on: bool) -> Result<&'static str, EnvError> {
        Ok(self.net.netem(on).await?)
    }

    /// Whether netem faults can be applied (namespaces, and the kernel's `sch_netem`): for the caller that
    /// chooses the fault kinds.
    pub async fn netem_works(&mut self) -> bool {
        self.net.netem_works().await
    }

    /// Removes every partition and netem.
    pub async fn heal(&mut self) -> Result<(), EnvError> {
        Ok(self.net.heal().await?)
    }

    /// Kills the nodes and HAProxy and removes the namespaces and bridge. Idempotent; callable from any
    /// task (e.g. a Ctrl-C handler holding the cluster's mutex).
    pub async fn shutdown(&mut self) {
        if let Some(mut h) = self.haproxy.take() {
            h.stop().await;
        }
        for node in &mut self.nodes {
            node.kill().await;
        }
        self.net.cleanup().await;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill_now();
        }
        // Haproxy's and Net's own Drop kill HAProxy and remove the namespaces (synchronously).
        self.haproxy.take();
        self.net.cleanup_sync();
    }
}
