//! `cicada serve` as a real process on free loopback ports, for tests that need signals, RSS or the binary.

use super::{free_port, WAIT};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

pub struct CicadaProcess {
    pub child: Child,
    pub port: u16,
    pub http_port: u16,
    pub dir: tempfile::TempDir,
}

impl CicadaProcess {
    /// Starts the broker with the embedded defaults plus `extra` TOML (limits, mqtt, ...), on free ports.
    pub fn start(extra: &str) -> CicadaProcess {
        Self::start_with_log(extra, "warn")
    }

    /// Like `start`, with this RUST_LOG; stderr is piped for the test to read (`child.stderr`).
    pub fn start_with_log(extra: &str, log: &str) -> CicadaProcess {
        let mut p = Self::spawn(extra, log);
        p.wait_listening();
        p
    }

    /// Starts the process without waiting for it to listen (a cluster node waits for its peers first).
    pub fn spawn(extra: &str, log: &str) -> CicadaProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        let (port, http_port) = (free_port(), free_port());
        let conf = format!(
            "data_dir = {data:?}\n[[listener]]\nkind = \"tcp\"\nbind = \"127.0.0.1:{port}\"\n[http]\nbind = \"127.0.0.1:{http_port}\"\n{extra}\n",
            data = dir.path().join("data")
        );
        let file = dir.path().join("cicada.toml");
        std::fs::write(&file, conf).expect("write config");
        let child = spawn(&file, log);
        CicadaProcess {
            child,
            port,
            http_port,
            dir,
        }
    }

    /// `kill -9`, then the same configuration and data directory again.
    pub fn kill9_and_restart(&mut self) {
        self.signal(libc::SIGKILL);
        self.wait_exit();
        self.child = spawn(&self.config_path(), "warn");
        self.wait_listening();
    }

    /// SIGTERM (a graceful stop, which must exit 0), then the same configuration and data directory again.
    pub fn term_and_restart(&mut self) {
        self.signal(libc::SIGTERM);
        let status = self.wait_exit();
        assert!(status.success(), "SIGTERM exit: {status}");
        self.child = spawn(&self.config_path(), "warn");
        self.wait_listening();
    }

    /// `kill -9` or SIGTERM, then start again.
    pub fn restart_after(&mut self, signal: i32) {
        if signal == libc::SIGKILL {
            self.kill9_and_restart()
        } else {
            self.term_and_restart()
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("cicada.toml")
    }

    /// `kill -9`, then start again without waiting (a cluster node may need its peers to serve).
    pub fn kill9_and_spawn(&mut self) {
        self.signal(libc::SIGKILL);
        self.wait_exit();
        self.kill9_and_spawn_after_exit();
    }

    /// Starts the same configuration and data directory again (the process already exited).
    pub fn kill9_and_spawn_after_exit(&mut self) {
        self.child = spawn(&self.config_path(), "warn");
    }

    pub fn wait_listening(&mut self) {
        let deadline = Instant::now() + WAIT;
        while !super::answers_connect(self.port) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("cicada exited early with {status}");
            }
            assert!(
                Instant::now() < deadline,
                "cicada did not listen on {}",
                self.port
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// A field of /proc/PID/status in kB (VmRSS, VmHWM).
    pub fn status_kb(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("proc status");
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .expect("field present")
    }

    /// Whether the process still runs.
    pub fn child_alive(&self) -> bool {
        let exists = unsafe { libc::kill(self.child.id() as i32, 0) == 0 };
        exists
            && std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
                .is_ok_and(|s| !s.contains(") Z "))
    }

    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Waits for the process to exit within the test bound.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(s) = self.child.try_wait().expect("poll") {
                return s;
            }
            assert!(Instant::now() < deadline, "cicada did not exit");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

fn spawn(config: &std::path::Path, log: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_cicada"))
        .arg("serve")
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", log)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cicada serve")
}

impl Drop for CicadaProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A metric of a `cicada serve` process (the first sample whose name and labels start with `name`; 0 when
/// absent).
pub async fn metric(http_port: u16, name: &str) -> f64 {
    let (_, body) = super::broker::http_request(
        format!("127.0.0.1:{http_port}").parse().unwrap(),
        "GET",
        "/metrics",
    )
    .await;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}
