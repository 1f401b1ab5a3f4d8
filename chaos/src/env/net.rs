//! Where the nodes live on the network: three network namespaces joined by a bridge in the root namespace
//! (so links can be cut and slowed), or, without namespaces, three loopback addresses.
//!
//! In namespace mode node `n` is `10.{a}.{b}.{n}` in namespace `cc{id}n{n}`, behind veth `cc{id}v{n}` on
//! bridge `cc{id}br` (`10.{a}.{b}.254`, the root namespace's way in: HAProxy and the workload reach every
//! node through it). The subnet is derived from the run id and skipped while the host already routes it.
//! A partition is blackhole routes between the isolated node and the two others (the bridge address stays
//! reachable); netem is a root qdisc on each node's interface inside its namespace.

use std::net::Ipv4Addr;
use std::process::Stdio;
use std::time::Duration;

/// The nodes of a cluster under test.
pub const NODES: u8 = 3;

/// How long one `ip` / `tc` command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// Subnets tried after the one derived from the run id (each one further), before giving up.
const SUBNET_TRIES: u16 = 64;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{0} needs network namespaces (run as root where `ip netns add` works)")]
    NeedsNamespaces(&'static str),
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("`{command}` did not finish within {COMMAND_TIMEOUT:?}")]
    Timeout { command: String },
    #[error("`{command}`: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("no free 10.x.y.0/24 subnet found near the run id's")]
    NoSubnet,
}

/// A run's identifier: 4 hex digits from the pid and the clock, in every name this run creates.
pub fn run_id() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
        .unwrap_or(0);
    let mixed = (std::process::id().wrapping_mul(0x9E37_79B9)) ^ nanos;
    (mixed ^ (mixed >> 16)) as u16
}

/// The `10.a.b.0/24` subnet of a run id, `shift` subnets further (a in 100..=227, b any).
pub fn subnet(id: u16, shift: u16) -> (u8, u8) {
    let k = id.wrapping_add(shift.wrapping_mul(0x0101)) & 0x7FFF;
    (100 + (k >> 8) as u8, k as u8)
}

/// The network of one run.
#[derive(Debug)]
pub struct Net {
    mode: Mode,
}

#[derive(Debug)]
enum Mode {
    Loopback,
    Namespaces(Spaces),
}

#[derive(Debug)]
struct Spaces {
    id: String,
    a: u8,
    b: u8,
    /// Blackhole routes in place: (namespace node, blocked node).
    blocked: Vec<(u8, u8)>,
    netem: bool,
    removed: bool,
}

impl Spaces {
    fn ns(&self, n: u8) -> String {
        format!("cc{}n{n}", self.id)
    }
    fn bridge(&self) -> String {
        format!("cc{}br", self.id)
    }
    fn host_if(&self, n: u8) -> String {
        format!("cc{}v{n}", self.id)
    }
    fn node_if(&self, n: u8) -> String {
        format!("cc{}p{n}", self.id)
    }
    fn ip(&self, n: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, self.a, self.b, n)
    }
    fn in_ns(&self, n: u8, args: &[&str]) -> Vec<String> {
        let mut v = vec!["ip".to_string(), "netns".into(), "exec".into(), self.ns(n)];
        v.extend(args.iter().map(|s| s.to_string()));
        v
    }
}

/// Runs a command to completion, bounded; its stderr is the error.
async fn run(args: &[String]) -> Result<(), NetError> {
    let command = args.join(" ");
    let mut cmd = tokio::process::Command::new(&args[0]);
    cmd.args(&args[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().map_err(|source| NetError::Spawn {
        command: command.clone(),
        source,
    })?;
    let out = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| NetError::Timeout {
            command: command.clone(),
        })?
        .map_err(|source| NetError::Spawn {
            command: command.clone(),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetError::Command {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

/// Runs a command synchronously, ignoring its outcome (cleanup from `Drop`).
fn run_sync_quiet(args: &[String]) {
    let _ = std::process::Command::new(&args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Whether this process can make network namespaces: root, and a probe namespace can be added and removed.
pub async fn available() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return false;
    }
    let probe = format!("ccprobe{:04x}", run_id());
    if run(&words(&format!("ip netns add {probe}"))).await.is_err() {
        return false;
    }
    run(&words(&format!("ip netns del {probe}"))).await.is_ok()
}

/// Whether some address or route of the host already mentions `10.a.b.`.
async fn subnet_in_use(a: u8, b: u8) -> bool {
    let prefix = format!("10.{a}.{b}.");
    for args in [
        &["-o", "route", "show", "table", "all"][..],
        &["-o", "addr", "show"][..],
    ] {
        let out = tokio::time::timeout(
            COMMAND_TIMEOUT,
            tokio::process::Command::new("ip")
                .args(args)
                .stderr(Stdio::null())
                .output(),
        )
        .await;
        match out {
            Ok(Ok(o)) if String::from_utf8_lossy(&o.stdout).contains(&prefix) => return true,
            Ok(Ok(_)) => {}
            _ => return true,
        }
    }
    false
}

impl Net {
    /// Nodes on 127.0.0.{11,12,13}: no link faults.
    pub fn loopback() -> Net {
        Net {
            mode: Mode::Loopback,
        }
    }

    /// Three namespaces and a bridge named after run id `id`. On failure what was made is removed.
    pub async fn namespaces(id: u16) -> Result<Net, NetError> {
        let mut shift = 0;
        let (a, b) = loop {
            let (a, b) = subnet(id, shift);
            if !subnet_in_use(a, b).await {
                break (a, b);
            }
            shift += 1;
            if shift >= SUBNET_TRIES {
                return Err(NetError::NoSubnet);
            }
        };
        let spaces = Spaces {
            id: format!("{id:04x}"),
            a,
            b,
            blocked: Vec::new(),
            netem: false,
            removed: false,
        };
        let mut net = Net {
            mode: Mode::Namespaces(spaces),
        };
        if let Err(e) = net.build().await {
            net.cleanup().await;
            return Err(e);
        }
        Ok(net)
    }

    async fn build(&self) -> Result<(), NetError> {
        let Mode::Namespaces(s) = &self.mode else {
            return Ok(());
        };
        let br = s.bridge();
        let mut steps = vec![
            format!("ip link add {br} type bridge"),
            format!("ip addr add 10.{}.{}.254/24 dev {br}", s.a, s.b),
            format!("ip link set {br} up"),
        ];
        for n in 1..=NODES {
            let (ns, host, node) = (s.ns(n), s.host_if(n), s.node_if(n));
            steps.extend([
                format!("ip netns add {ns}"),
                format!("ip link add {host} type veth peer name {node}"),
                format!("ip link set {node} netns {ns}"),
                format!("ip link set {host} master {br}"),
                format!("ip link set {host} up"),
                format!("ip netns exec {ns} ip addr add {}/24 dev {node}", s.ip(n)),
                format!("ip netns exec {ns} ip link set {node} up"),
                format!("ip netns exec {ns} ip link set lo up"),
            ]);
        }
        for step in steps {
            run(&words(&step)).await?;
        }
        Ok(())
    }

    pub fn namespaced(&self) -> bool {
        matches!(self.mode, Mode::Namespaces(_))
    }

    /// Node `n`'s address (1-based).
    pub fn ip(&self, n: u8) -> Ipv4Addr {
        match &self.mode {
            Mode::Loopback => Ipv4Addr::new(127, 0, 0, 10 + n),
            Mode::Namespaces(s) => s.ip(n),
        }
    }

    /// The command prefix that runs a program in node `n`'s namespace (empty in loopback mode).
    pub fn exec_prefix(&self, n: u8) -> Vec<String> {
        match &self.mode {
            Mode::Loopback => Vec::new(),
            Mode::Namespaces(s) => s.in_ns(n, &[]),
        }
    }

    /// The namespaces and the bridge this run made (empty in loopback mode): for checks after cleanup.
    pub fn names(&self) -> (Vec<String>, Option<String>) {
        match &self.mode {
            Mode::Loopback => (Vec::new(), None),
            Mode::Namespaces(s) => ((1..=NODES).map(|n| s.ns(n)).collect(), Some(s.bridge())),
        }
    }

    fn spaces(&mut self, what: &'static str) -> Result<&mut Spaces, NetError> {
        match &mut self.mode {
            Mode::Loopback => Err(NetError::NeedsNamespaces(what)),
            Mode::Namespaces(s) => Ok(s),
        }
    }

    /// Cuts node `n` off from the other nodes (both directions); clients in the root namespace still reach it.
    pub async fn partition(&mut self, n: u8) -> Result<(), NetError> {
        let s = self.spaces("a partition")?;
        for m in (1..=NODES).filter(|m| *m != n) {
            for (from, to) in [(n, m), (m, n)] {
                if s.blocked.contains(&(from, to)) {
                    continue;
                }
                let ip = format!("{}/32", s.ip(to));
                run(&s.in_ns(from, &["ip", "route", "add", "blackhole", &ip])).await?;
                s.blocked.push((from, to));
            }
        }
        Ok(())
    }

    /// Slow links on every node (`on`), or plain ones again; returns what was applied. netem (delay 40 ms
    /// ± 20 ms, 3 % loss, 10 % reordering) where the kernel has it; otherwise a token bucket (tbf) of
    /// 2 Mbit/s with a 16 kbit burst and 100 ms of queue: queueing delay, and tail drops when the queue is
    /// full (no reordering). Kernels without `sch_netem` (this project's CI machines among them) still get
    /// a slow, lossy link.
    pub async fn netem(&mut self, on: bool) -> Result<&'static str, NetError> {
        const NETEM: [&str; 9] = [
            "netem", "delay", "40ms", "20ms", "loss", "3%", "reorder", "10%", "",
        ];
        const TBF: [&str; 7] = [
            "tbf", "rate", "2mbit", "burst", "16kbit", "latency", "100ms",
        ];
        let s = self.spaces("netem")?;
        let mut applied = "plain links";
        for n in 1..=NODES {
            let dev = s.node_if(n);
            let base = ["tc", "qdisc", "replace", "dev", dev.as_str(), "root"];
            if on {
                let netem: Vec<&str> = base
                    .iter()
                    .chain(NETEM.iter())
                    .copied()
                    .filter(|a| !a.is_empty())
                    .collect();
                match run(&s.in_ns(n, &netem)).await {
                    Ok(()) => applied = "netem delay 40ms 20ms loss 3% reorder 10%",
                    Err(_) => {
                        let tbf: Vec<&str> = base.iter().chain(TBF.iter()).copied().collect();
                        run(&s.in_ns(n, &tbf)).await?;
                        applied = "tbf rate 2mbit burst 16kbit latency 100ms (no sch_netem in this kernel)";
                    }
                }
            } else {
                let r = run(&s.in_ns(n, &["tc", "qdisc", "del", "dev", &dev, "root"])).await;
                match r {
                    // Removing a qdisc that was never added is not a failure of `heal`.
                    Err(NetError::Command { .. }) if !s.netem => {}
                    other => other?,
                }
            }
        }
        s.netem = on;
        Ok(applied)
    }

    /// Whether the kernel has netem (tried on node 1's link and removed again); false without namespaces.
    pub async fn netem_works(&mut self) -> bool {
        let Ok(s) = self.spaces("netem") else {
            return false;
        };
        if s.netem {
            return true;
        }
        let dev = s.node_if(1);
        let on = [
            "tc", "qdisc", "replace", "dev", &dev, "root", "netem", "delay", "1ms",
        ];
        let works = run(&s.in_ns(1, &on)).await.is_ok();
        if works {
            let _ = run(&s.in_ns(1, &["tc", "qdisc", "del", "dev", &dev, "root"])).await;
        }
        works
    }

    /// Removes every partition route and the netem qdiscs.
    pub async fn heal(&mut self) -> Result<(), NetError> {
        let Mode::Namespaces(s) = &mut self.mode else {
            return Ok(());
        };
        let mut first_error = None;
        for (from, to) in std::mem::take(&mut s.blocked) {
            let ip = format!("{}/32", s.ip(to));
            if let Err(e) = run(&s.in_ns(from, &["ip", "route", "del", "blackhole", &ip])).await {
                first_error.get_or_insert(e);
            }
        }
        if s.netem {
            if let Err(e) = self.netem(false).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn removal(&mut self) -> Option<Vec<Vec<String>>> {
        let Mode::Namespaces(s) = &mut self.mode else {
            return None;
        };
        if s.removed {
            return None;
        }
        s.removed = true;
        // Deleting a namespace deletes the veth end in it, and with it its peer on the bridge.
        let mut cmds: Vec<Vec<String>> = (1..=NODES)
            .map(|n| words(&format!("ip netns del {}", s.ns(n))))
            .collect();
        cmds.extend((1..=NODES).map(|n| words(&format!("ip link del {}", s.host_if(n)))));
        cmds.push(words(&format!("ip link del {}", s.bridge())));
        Some(cmds)
    }

    /// Removes the namespaces, veths and bridge; idempotent (the second call does nothing).
    pub async fn cleanup(&mut self) {
        for cmd in self.removal().unwrap_or_default() {
            // A veth already gone with its namespace is expected.
            let _ = run(&cmd).await;
        }
    }

    /// As [`Net::cleanup`], blocking (for `Drop`).
    pub fn cleanup_sync(&mut self) {
        for cmd in self.removal().unwrap_or_default() {
            run_sync_quiet(&cmd);
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.cleanup_sync();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_come_from_the_run_id_and_shift_apart() {
        for id in [0u16, 1, 0x7fff, 0xffff, 0x1234] {
            let (a, b) = subnet(id, 0);
            assert!((100..=227).contains(&a), "{id}: {a}");
            assert_ne!(subnet(id, 1), (a, b));
            assert_eq!(subnet(id, 0), (a, b));
        }
        assert_ne!(subnet(1, 0), subnet(2, 0));
    }

    #[test]
    fn interface_names_fit_in_fifteen_bytes() {
        let s = Spaces {
            id: format!("{:04x}", 0xffffu16),
            a: 100,
            b: 0,
            blocked: Vec::new(),
            netem: false,
            removed: false,
        };
        for name in [s.bridge(), s.host_if(3), s.node_if(3), s.ns(3)] {
            assert!(name.len() <= 15, "{name}");
        }
    }

    #[tokio::test]
    async fn link_faults_need_namespaces() {
        let mut net = Net::loopback();
        assert!(matches!(
            net.partition(1).await,
            Err(NetError::NeedsNamespaces(_))
        ));
        assert!(matches!(
            net.netem(true).await,
            Err(NetError::NeedsNamespaces(_))
        ));
        assert!(net.heal().await.is_ok());
        assert_eq!(net.ip(2), Ipv4Addr::new(127, 0, 0, 12));
    }
}
