//! HAProxy in front of the nodes, configured from the shipped `config/cluster/haproxy.cfg` so the run tests
//! the deployment's own balancing and health checks: only the addresses change.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// How long HAProxy may take to exit after SIGKILL.
const EXIT_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum HaproxyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the HAProxy configuration has no `frontend mqtt` with a `bind` and a `default_backend`"
    )]
    NoFrontend,
    #[error("the HAProxy configuration's backend {0} has no `server` line")]
    NoServers(String),
}

/// One node as HAProxy's backend sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Server {
    /// The node's PROXY-protocol listener.
    pub proxy: SocketAddr,
    /// The node's HTTP address (`/ready`, HAProxy's health check).
    pub http: SocketAddr,
}

/// The shipped configuration `cfg` adapted to this run: the `mqtt` frontend binds `frontend`, its backend's
/// `server` lines become `servers` (checked on their HTTP address), every other frontend and backend (the
/// WebSocket one) is dropped. Everything else (balancing, checks, PROXY v2, timeouts) is kept as shipped.
pub fn adapt(cfg: &str, frontend: SocketAddr, servers: &[Server]) -> Result<String, HaproxyError> {
    let backend = mqtt_backend(cfg).ok_or(HaproxyError::NoFrontend)?;
    let mut out = String::new();
    let mut section: Option<(String, String)> = None;
    // Comments and blank lines between sections go with the next section (they describe it).
    let mut pending = String::new();
    let (mut bound, mut served) = (false, false);
    for line in cfg.lines() {
        let trimmed = line.trim_start();
        let indented = line.starts_with([' ', '\t']);
        if !indented && (trimmed.is_empty() || trimmed.starts_with('#')) {
            pending.push_str(line);
            pending.push('\n');
            continue;
        }
        if !indented {
            let mut w = trimmed.split_whitespace();
            section = Some((
                w.next().unwrap_or("").to_string(),
                w.next().unwrap_or("").to_string(),
            ));
        }
        let keep = match &section {
            Some((kind, name)) if kind == "frontend" => name == "mqtt",
            Some((kind, name)) if kind == "backend" => *name == backend,
            Some((kind, _)) if kind == "listen" => false,
            _ => true,
        };
        let comments = std::mem::take(&mut pending);
        if !keep {
            continue;
        }
        out.push_str(&comments);
        let in_frontend = matches!(&section, Some((k, _)) if k == "frontend");
        let in_backend = matches!(&section, Some((k, _)) if k == "backend");
        let first_word = trimmed.split_whitespace().next().unwrap_or("");
        if in_frontend && first_word == "bind" {
            out.push_str(&format!("    bind {frontend}\n"));
            bound = true;
        } else if in_backend && first_word == "server" {
            if !served {
                for (i, s) in servers.iter().enumerate() {
                    out.push_str(&format!(
                        "    server node{} {} check addr {} port {}\n",
                        i + 1,
                        s.proxy,
                        s.http.ip(),
                        s.http.port()
                    ));
                }
                served = true;
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !bound {
        return Err(HaproxyError::NoFrontend);
    }
    if !served {
        return Err(HaproxyError::NoServers(backend));
    }
    Ok(out)
}

/// The `default_backend` of `frontend mqtt`.
fn mqtt_backend(cfg: &str) -> Option<String> {
    let mut in_mqtt = false;
    for line in cfg.lines() {
        let t = line.trim();
        if !line.starts_with([' ', '\t']) && !t.is_empty() && !t.starts_with('#') {
            in_mqtt = t.split_whitespace().collect::<Vec<_>>() == ["frontend", "mqtt"];
        } else if in_mqtt {
            let mut w = t.split_whitespace();
            if w.next() == Some("default_backend") {
                return w.next().map(str::to_string);
            }
        }
    }
    None
}

/// A running `haproxy -f FILE -db`, its output appended to a log file.
pub struct Haproxy {
    child: Option<tokio::process::Child>,
}

impl Haproxy {
    /// Writes `config` to `cfg_path` and starts `binary` on it.
    pub fn start(
        binary: &Path,
        config: &str,
        cfg_path: &Path,
        log_path: &Path,
    ) -> Result<Haproxy, HaproxyError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| HaproxyError::Io { path, source }
        };
        std::fs::write(cfg_path, config).map_err(io(cfg_path))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .map_err(io(log_path))?;
        let log2 = log.try_clone().map_err(io(log_path))?;
        let child = tokio::process::Command::new(binary)
            .arg("-f")
            .arg(cfg_path)
            .arg("-db")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .kill_on_drop(true)
            .spawn()
            .map_err(io(binary))?;
        Ok(Haproxy { child: Some(child) })
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills HAProxy and reaps it, bounded; idempotent.
    pub async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
            let _ = tokio::time::timeout(EXIT_WAIT, c.wait()).await;
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGKILL now; tokio reaps the dropped child in the background.
            let _ = c.start_kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/cluster/haproxy.cfg");
        std::fs::read_to_string(path).unwrap()
    }

    #[test]
    fn the_shipped_config_is_adapted_to_the_run() {
        let servers: Vec<Server> = (1..=3)
            .map(|n| Server {
                proxy: format!("10.100.7.{n}:1884").parse().unwrap(),
                http: format!("10.100.7.{n}:8080").parse().unwrap(),
            })
            .collect();
        let out = adapt(&shipped(), "127.0.0.1:40001".parse().unwrap(), &servers).unwrap();
        assert!(out.contains("    bind 127.0.0.1:40001\n"), "{out}");
        let live: Vec<&str> = out
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .collect();
        assert!(!live.iter().any(|l| l.contains("1883")), "{out}");
        for n in 1..=3 {
            let line =
                format!("server node{n} 10.100.7.{n}:1884 check addr 10.100.7.{n} port 8080");
            assert!(out.contains(&line), "{out}");
        }
        assert_eq!(out.matches("    server ").count(), 3, "{out}");
        // The WebSocket frontend and its backend are gone; the shipped balancing and checks stay.
        assert!(
            !out.contains("mqtt_ws") && !out.contains("cicada_ws"),
            "{out}"
        );
        assert!(!out.contains("9001"), "{out}");
        for kept in [
            "balance hash var(sess.client_id)",
            "hash-type consistent",
            "option httpchk GET /ready",
            "send-proxy-v2",
            "mqtt_is_valid",
            "default_backend cicada_mqtt",
            "log stdout",
        ] {
            assert!(out.contains(kept), "{kept}: {out}");
        }
    }

    #[test]
    fn a_config_without_the_mqtt_frontend_is_refused() {
        let cfg =
            "global\n    log stdout local0\nfrontend other\n    bind :1\n    default_backend b\n";
        assert!(matches!(
            adapt(cfg, "127.0.0.1:1".parse().unwrap(), &[]),
            Err(HaproxyError::NoFrontend)
        ));
        let cfg = "frontend mqtt\n    bind :1\n    default_backend b\nbackend b\n    balance roundrobin\n";
        assert!(matches!(
            adapt(cfg, "127.0.0.1:1".parse().unwrap(), &[]),
            Err(HaproxyError::NoServers(_))
        ));
    }
}
