//! One chaos run: start the cluster, run the workload while the nemesis follows its schedule, heal, let the
//! subscribers catch up, then judge the history and write the report.

use crate::checker::{self, Judgement};
use crate::env::{Cluster, ClusterOptions, NamespaceMode};
use crate::history::{Event, FaultKind, Recorder};
use crate::nemesis;
use crate::report;
use crate::workload::{Load, Targets, Workload};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Mutex};

/// What `cicada-chaos run` was asked to do.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub seed: u64,
    /// How long the faults go on (the drain phase comes after).
    pub duration: Duration,
    pub faults: Vec<FaultKind>,
    pub report: PathBuf,
    pub cicada: PathBuf,
    pub haproxy: PathBuf,
    pub haproxy_cfg: PathBuf,
    pub namespaces: NamespaceMode,
    pub load: Load,
}

/// How a run went.
pub struct RunOutcome {
    pub judgement: Judgement,
    pub namespaces: bool,
    /// The fault kinds left out because they need network namespaces.
    pub skipped: Vec<FaultKind>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("report directory {path}: {source}")]
    Report {
        path: String,
        source: std::io::Error,
    },
    #[error("starting the cluster: {0}")]
    Cluster(#[from] crate::env::EnvError),
    #[error("writing the report: {0}")]
    Write(#[from] report::ReportError),
}

/// The node settings every run adds to the nodes' configuration: a maximum packet size the bad clients
/// can pass without sending megabytes, and stored quotas no subscriber of the workload reaches (a copy
/// over a session's quota is dropped while the publish is acknowledged for the other sessions, which the
/// checker would rightly count as lost).
pub const NODE_TOML: &str = "[limits]\nmax_packet_size = 65536\nmax_queued_messages = 10000000\nmax_queued_bytes = 4294967296\n";

/// How long the subscribers get, after the faults, to receive what was acknowledged.
const DRAIN_WITHIN: Duration = Duration::from_secs(90);
/// The drain of an interrupted run: publishers record their outcomes (each waits at most 10 s; the
/// resuming one 30 s); subscribers are not waited for.
const INTERRUPTED_DRAIN: Duration = Duration::from_secs(35);

pub async fn run(
    opts: RunOptions,
    interrupt: watch::Receiver<bool>,
) -> Result<RunOutcome, RunError> {
    let io = |source| RunError::Report {
        path: opts.report.display().to_string(),
        source,
    };
    std::fs::create_dir_all(&opts.report).map_err(io)?;
    let rec = Recorder::new(Some(&opts.report.join("history.jsonl"))).map_err(io)?;
    let cluster = Cluster::start(ClusterOptions {
        cicada: opts.cicada.clone(),
        haproxy: opts.haproxy.clone(),
        haproxy_cfg: opts.haproxy_cfg.clone(),
        work_dir: opts.report.join("cluster"),
        namespaces: opts.namespaces,
        extra_toml: NODE_TOML.into(),
    })
    .await?;
    let namespaces = cluster.namespaces();
    let clocks = cluster.clocks();
    let (faults, skipped): (Vec<FaultKind>, Vec<FaultKind>) =
        opts.faults.iter().partition(|k| match k {
            FaultKind::ClockJump => clocks,
            k => namespaces || !k.needs_namespaces(),
        });
    rec.record(Event::Start {
        seed: opts.seed,
        nodes: 3,
        namespaces,
        faults: faults.clone(),
    });
    let addrs = cluster.addrs();
    let targets = Targets {
        nodes: addrs.mqtt.clone(),
        haproxy: addrs.haproxy,
    };
    let cluster = Arc::new(Mutex::new(cluster));
    let mut workload = Workload::start(targets, rec.clone(), opts.seed, opts.load);

    // The faults, until the schedule ends or the run is interrupted.
    let until = tokio::time::Instant::now() + opts.duration;
    let steps = nemesis::schedule(opts.seed, &faults, opts.duration.as_millis() as u64);
    let rounds = nemesis::run(
        cluster.clone(),
        steps,
        rec.clone(),
        Workload::OWNED.to_string(),
        interrupt.clone(),
    )
    .await;
    // The schedule's last fault may heal before the time is up: the workload runs on to the end.
    let mut stopped = interrupt.clone();
    tokio::select! {
        _ = tokio::time::sleep_until(until) => {}
        _ = stopped.wait_for(|i| *i) => {}
    }

    // Everything healed: every node back, then the subscribers catch up.
    {
        let c = cluster.lock().await;
        for n in 1..=3u8 {
            if !c.wait_ready(n, Duration::from_secs(60)).await {
                tracing::warn!(node = n, "not ready 60 s after the last fault healed");
            }
        }
    }
    // Interrupted: a short drain all the same, so every publish's outcome is recorded before the end (a
    // delivery of a message whose outcome was not recorded would read as a phantom).
    let within = if *interrupt.borrow() {
        INTERRUPTED_DRAIN
    } else {
        DRAIN_WITHIN
    };
    let missing = workload.drain(within).await;
    if missing > 0 {
        tracing::warn!(
            missing,
            "subscribers still miss acknowledged messages after the drain phase"
        );
    }
    rec.record(Event::End { rounds });
    rec.seal();
    rec.flush().map_err(io)?;
    workload.stop().await;
    cluster.lock().await.shutdown().await;

    let records = rec.snapshot();
    let judgement = checker::check(&records);
    report::write_dir(&opts.report, opts.seed, namespaces, &records, &judgement)?;
    Ok(RunOutcome {
        judgement,
        namespaces,
        skipped,
    })
}
