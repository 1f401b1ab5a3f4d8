//! Test helpers: a private Mosquitto broker per test on an ephemeral port, and bounded waits on events.
#![allow(dead_code)]

pub mod broker;
pub mod certs;
pub mod cluster;
pub mod mqttjs;
pub mod process;

use cicada::client::{Client, ClientOptions, Event, Events};
use cicada::protocol::{ProtocolVersion, Publish};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Upper bound for any single wait in a test: it only fires when something is broken.
pub const WAIT: Duration = Duration::from_secs(10);

/// A Mosquitto process owned by one test; killed on drop.
pub struct Mosquitto {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// Extra lines for mosquitto.conf.
    extra: String,
}

/// A free loopback port never handed out before in this test process: two brokers of parallel tests must not
/// race for one port (the OS may hand a just-released port out again).
pub fn free_port() -> u16 {
    static USED: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let port = l.local_addr().expect("local address").port();
        let mut used = USED.lock().unwrap_or_else(|e| e.into_inner());
        if !used.contains(&port) {
            used.push(port);
            return port;
        }
    }
}

impl Mosquitto {
    /// Starts Debian's mosquitto (never the system service) on a free loopback port.
    pub fn start() -> Mosquitto {
        Mosquitto::start_with("allow_anonymous true\n")
    }

    /// Starts mosquitto with these extra configuration lines.
    pub fn start_with(extra: &str) -> Mosquitto {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut m = Mosquitto {
            port: free_port(),
            child: None,
            dir,
            extra: extra.to_string(),
        };
        m.spawn();
        m
    }

    fn conf(&self) -> PathBuf {
        self.dir.path().join("mosquitto.conf")
    }

    fn spawn(&mut self) {
        let conf = format!(
            "listener {} 127.0.0.1\npersistence false\nuser root\nmax_queued_messages 100000\n{}",
            self.port, self.extra
        );
        std::fs::write(self.conf(), conf).expect("write mosquitto.conf");
        // Debian installs the broker in /usr/sbin, which a non-root PATH may lack.
        let program = if std::path::Path::new("/usr/sbin/mosquitto").exists() {
            "/usr/sbin/mosquitto"
        } else {
            "mosquitto"
        };
        let log = std::fs::File::create(self.log()).expect("mosquitto log file");
        let child = Command::new(program)
            .arg("-c")
            .arg(self.conf())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("mosquitto must be installed (bash .ci/install)");
        self.child = Some(child);
        self.wait_listening();
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("mosquitto.log")
    }

    /// Polls until mosquitto answers an MQTT CONNECT with a CONNACK: the event we wait on is "broker ready". A bare
    /// TCP connect is not enough evidence (it once passed in CI while the next connect was refused).
    fn wait_listening(&mut self) {
        let deadline = Instant::now() + WAIT;
        while !answers_connect(self.port) {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "mosquitto exited early with {status} on port {}: {}",
                        self.port,
                        self.diagnose()
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen on {}: {}",
                self.port,
                self.diagnose()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the broker (SIGKILL) and starts it again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Kills the broker.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn options(&self, client_id: &str, version: ProtocolVersion) -> ClientOptions {
        ClientOptions::new("127.0.0.1", self.port, client_id).version(version)
    }

    pub async fn connect(&self, client_id: &str, version: ProtocolVersion) -> (Client, Events) {
        let (c, e, _) = Client::connect(self.options(client_id, version))
            .await
            .unwrap_or_else(|e| panic!("connect to mosquitto: {e:?}; {}", self.diagnose()));
        (c, e)
    }

    /// Whether the process still runs, and what it wrote to stderr: printed when a test cannot reach it.
    pub fn diagnose(&self) -> String {
        let log = std::fs::read_to_string(self.log()).unwrap_or_default();
        let pid = self.child.as_ref().map(|c| c.id());
        let alive = pid.is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
        format!("mosquitto pid {pid:?} alive: {alive}; its log:\n{log}")
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether an MQTT broker on this loopback port answers a CONNECT with a CONNACK. A socket connected to itself
/// (same local and remote port) does not count.
pub fn answers_connect(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    if s.local_addr().is_ok_and(|a| a.port() == port) {
        return false;
    }
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    // MQTT 3.1.1 CONNECT, clean session, keep-alive 10 s, empty client id.
    let connect = [0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 10, 0, 0];
    let mut first = [0u8; 1];
    s.write_all(&connect).is_ok() && s.read_exact(&mut first).is_ok() && first[0] == 0x20
}

/// The next application message, or a panic naming what was awaited.
pub async fn next_message(events: &mut Events, what: &str) -> Publish {
    match tokio::time::timeout(WAIT, events.next_message()).await {
        Ok(Some(m)) => m,
        Ok(None) => panic!("client stopped while waiting for {what}"),
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// The next event of any kind.
pub async fn next_event(events: &mut Events, what: &str) -> Event {
    match tokio::time::timeout(WAIT, events.recv()).await {
        Ok(Some(e)) => e,
        Ok(None) => panic!("client stopped while waiting for {what}"),
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// Whether something accepts TCP connections on this loopback port.
pub fn answers_http(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}
