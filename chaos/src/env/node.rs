//! One `cicada serve` process per node: its configuration, its log, and the process operations the
//! nemesis uses (kill -9, SIGSTOP/SIGCONT, restart on the same data, drain).

use crate::history::NodeId;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// How long a killed process may take to be reaped.
const REAP_WAIT: Duration = Duration::from_secs(10);

/// How long a drained node may take to exit before it is killed.
pub const DRAIN_EXIT_WAIT: Duration = Duration::from_secs(60);

/// How long `cicada ctl drain` may take (its own answer bound is 10 s).
const CTL_WAIT: Duration = Duration::from_secs(15);

/// How long `ip netns exec` may take to become the cicada process.
const EXEC_WAIT: Duration = Duration::from_secs(5);

/// The cluster secret every node of a run shares (the nodes are private to the run).
const SECRET: &str = "cicada-chaos-cluster-secret";

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("node {node}: {what}: {source}")]
    Io {
        node: NodeId,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("node {0} is not running")]
    NotRunning(NodeId),
    #[error("node {node}: pid {pid} never became the cicada process (it is {comm:?})")]
    NotCicada {
        node: NodeId,
        pid: u32,
        comm: String,
    },
    #[error("node {node}: `cicada ctl drain` failed: {detail}")]
    Drain { node: NodeId, detail: String },
}

/// Where one node listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeAddrs {
    /// Plain MQTT, for the workload's direct clients.
    pub mqtt: SocketAddr,
    /// MQTT behind a PROXY v2 header, HAProxy's backend.
    pub proxy: SocketAddr,
    pub http: SocketAddr,
    pub peer: SocketAddr,
}

/// The configuration of node `id` (1-based) of `all`, its data in `data_dir`; `extra` is appended (it must
/// begin with a table header, since it follows `[cluster]`).
pub fn config_toml(id: NodeId, all: &[NodeAddrs], data_dir: &Path, extra: &str) -> String {
    let me = all[usize::from(id) - 1];
    let peers: Vec<String> = all
        .iter()
        .enumerate()
        .map(|(i, a)| format!("\"{}@{}\"", i + 1, a.peer))
        .collect();
    format!(
        "data_dir = {data:?}\n\n\
         [[listener]]\nkind = \"tcp\"\nbind = \"{proxy}\"\nproxy_protocol = true\n\n\
         [[listener]]\nkind = \"tcp\"\nbind = \"{mqtt}\"\n\n\
         [http]\nbind = \"{http}\"\n\n\
         [cluster]\nnode_id = {id}\npeer_bind = \"{peer}\"\npeers = [{peers}]\nsecret = \"{SECRET}\"\n\n\
         {extra}\n",
        data = data_dir.display().to_string(),
        proxy = me.proxy,
        mqtt = me.mqtt,
        http = me.http,
        peer = me.peer,
        peers = peers.join(", "),
    )
}

/// One node's process (or none, while it is down).
pub struct Node {
    pub id: NodeId,
    pub addrs: NodeAddrs,
    config: PathBuf,
    log: PathBuf,
    /// `ip netns exec NS` in namespace mode, empty otherwise.
    prefix: Vec<String>,
    cicada: PathBuf,
    child: Option<tokio::process::Child>,
    starts: u32,
    /// The node's wall-clock offset (libfaketime), where available.
    pub clock: Option<super::clock::Clock>,
}

impl Node {
    /// Writes node `id`'s configuration under `dir` (its data in `dir/data`); the process is not started.
    pub fn prepare(
        id: NodeId,
        all: &[NodeAddrs],
        dir: &Path,
        extra: &str,
        cicada: &Path,
        prefix: Vec<String>,
    ) -> Result<Node, NodeError> {
        let io = |what| {
            move |source| NodeError::Io {
                node: id,
                what,
                source,
            }
        };
        std::fs::create_dir_all(dir.join("data")).map_err(io("creating its directory"))?;
        let config = dir.join("cicada.toml");
        std::fs::write(&config, config_toml(id, all, &dir.join("data"), extra))
            .map_err(io("writing its configuration"))?;
        Ok(Node {
            id,
            addrs: all[usize::from(id) - 1],
            config,
            log: dir.join("cicada.log"),
            prefix,
            cicada: cicada.to_path_buf(),
            child: None,
            starts: 0,
            clock: if super::clock::available() {
                Some(super::clock::Clock::new(dir).map_err(io("writing its clock offset"))?)
            } else {
                None
            },
        })
    }

    /// Starts the process (appending to its log); it must not be running.
    pub async fn start(&mut self) -> Result<(), NodeError> {
        let id = self.id;
        let io = |what| {
            move |source| NodeError::Io {
                node: id,
                what,
                source,
            }
        };
        self.starts += 1;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(io("opening its log"))?;
        writeln!(
            log,
            "==== cicada-chaos: start {} of node {id} ====",
            self.starts
        )
        .map_err(io("writing its log"))?;
        let err_log = log.try_clone().map_err(io("opening its log"))?;
        let mut argv = self.prefix.clone();
        argv.push(self.cicada.display().to_string());
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err_log)
            .kill_on_drop(true);
        if let Some(clock) = &self.clock {
            cmd.envs(clock.env());
        }
        let child = cmd.spawn().map_err(io("starting cicada"))?;
        let pid = child.id().unwrap_or(0);
        self.child = Some(child);
        if !self.prefix.is_empty() {
            self.await_exec(pid).await?;
        }
        Ok(())
    }

    /// Waits until `ip netns exec` has exec'd cicada, so signals to `pid` reach the broker itself.
    async fn await_exec(&mut self, pid: u32) -> Result<(), NodeError> {
        let want: String = self
            .cicada
            .file_name()
            .map(|n| n.to_string_lossy().chars().take(15).collect())
            .unwrap_or_default();
        let deadline = tokio::time::Instant::now() + EXEC_WAIT;
        let mut comm = String::new();
        while tokio::time::Instant::now() < deadline {
            comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim().to_string())
                .unwrap_or_default();
            if comm == want {
                return Ok(());
            }
            if !self.running() {
                return Err(NodeError::NotRunning(self.id));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(NodeError::NotCicada {
            node: self.id,
            pid,
            comm,
        })
    }

    /// Whether the process runs (a stopped one counts).
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// SIGKILL and reap; nothing to do when it is down.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
            let _ = tokio::time::timeout(REAP_WAIT, c.wait()).await;
        }
    }

    fn signal(&self, sig: libc::c_int) -> Result<(), NodeError> {
        let pid = self.pid().ok_or(NodeError::NotRunning(self.id))?;
        // SAFETY: kill(2) on our own child's pid, which is not reaped while `child` is held.
        if unsafe { libc::kill(pid as libc::pid_t, sig) } != 0 {
            return Err(NodeError::Io {
                node: self.id,
                what: "signalling it",
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// SIGSTOP.
    pub fn pause(&self) -> Result<(), NodeError> {
        self.signal(libc::SIGSTOP)
    }

    /// SIGCONT.
    pub fn resume(&self) -> Result<(), NodeError> {
        self.signal(libc::SIGCONT)
    }

    /// Starts it again on the same configuration and data (killing it first if it still runs).
    pub async fn restart(&mut self) -> Result<(), NodeError> {
        self.kill().await;
        self.start().await
    }

    /// `cicada ctl drain`, then waits (bounded) for the process to exit; kills it if it does not. Returns
    /// whether it exited by itself.
    pub async fn drain(&mut self) -> Result<bool, NodeError> {
        if !self.running() {
            return Err(NodeError::NotRunning(self.id));
        }
        let url = format!("http://{}", self.addrs.http);
        let ctl = tokio::process::Command::new(&self.cicada)
            .args(["ctl", "--url", &url, "drain"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| NodeError::Io {
                node: self.id,
                what: "running cicada ctl",
                source,
            })?;
        let asked = match tokio::time::timeout(CTL_WAIT, ctl.wait_with_output()).await {
            Ok(Ok(out)) if out.status.success() => Ok(()),
            Ok(Ok(out)) => Err(String::from_utf8_lossy(&out.stderr).trim().to_string()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {CTL_WAIT:?}")),
        };
        if let Err(detail) = asked {
            self.kill().await;
            return Err(NodeError::Drain {
                node: self.id,
                detail,
            });
        }
        let exited = match self.child.as_mut() {
            Some(c) => matches!(
                tokio::time::timeout(DRAIN_EXIT_WAIT, c.wait()).await,
                Ok(Ok(_))
            ),
            None => true,
        };
        self.kill().await;
        Ok(exited)
    }

    /// SIGKILL without waiting (for `Drop`); tokio reaps the process.
    pub fn kill_now(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_config_names_its_listeners_and_peers() {
        let all: Vec<NodeAddrs> = (1..=3)
            .map(|n| NodeAddrs {
                mqtt: format!("10.1.2.{n}:1883").parse().unwrap(),
                proxy: format!("10.1.2.{n}:1884").parse().unwrap(),
                http: format!("10.1.2.{n}:8080").parse().unwrap(),
                peer: format!("10.1.2.{n}:7070").parse().unwrap(),
            })
            .collect();
        let t = config_toml(
            2,
            &all,
            Path::new("/w/node2/data"),
            "[limits]\nmax_inflight = 8",
        );
        assert!(t.contains("data_dir = \"/w/node2/data\""), "{t}");
        assert!(
            t.contains("bind = \"10.1.2.2:1884\"\nproxy_protocol = true"),
            "{t}"
        );
        assert!(t.contains("bind = \"10.1.2.2:1883\""), "{t}");
        assert!(t.contains("[http]\nbind = \"10.1.2.2:8080\""), "{t}");
        assert!(
            t.contains("node_id = 2\npeer_bind = \"10.1.2.2:7070\""),
            "{t}"
        );
        assert!(
            t.contains("peers = [\"1@10.1.2.1:7070\", \"2@10.1.2.2:7070\", \"3@10.1.2.3:7070\"]"),
            "{t}"
        );
        assert!(t.trim_end().ends_with("max_inflight = 8"), "{t}");
    }
}
