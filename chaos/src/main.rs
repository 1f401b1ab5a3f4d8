//! `cicada-chaos run | check`: runs the workload and the nemesis against a real three-node cluster and
//! judges the history, or judges a saved history again. README "Chaos" says how to read the report.

use anyhow::{bail, Context};
use cicada_chaos::env::{sibling_binary, NamespaceMode};
use cicada_chaos::history::{self, FaultKind};
use cicada_chaos::run::{self, RunOptions};
use cicada_chaos::workload::Load;
use cicada_chaos::{checker, report};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "cicada-chaos",
    version,
    about = "Checks Cicada's promises under faults"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start three nodes and HAProxy, run the workload with faults, judge the history.
    Run {
        /// How long the faults go on, in minutes (the catch-up phase comes after).
        #[arg(long, default_value_t = 5.0)]
        minutes: f64,
        /// The schedule's seed (printed at the start; the same seed replays the same schedule).
        #[arg(long)]
        seed: Option<u64>,
        /// Fault kinds, comma-separated: kill, kill_leader, kill_owner, pause, partition, netem, rolling,
        /// clock_jump
        /// (default: all; those needing network namespaces are skipped without them).
        #[arg(long, value_delimiter = ',')]
        faults: Option<Vec<String>>,
        /// Where the history, the judgement, the timeline and the nodes' logs go.
        #[arg(long)]
        report: Option<PathBuf>,
        /// End the output with one JSON line of the figures.
        #[arg(long)]
        json: bool,
        /// The broker binary (default: next to this one).
        #[arg(long)]
        cicada: Option<PathBuf>,
        #[arg(long, default_value = "haproxy")]
        haproxy: PathBuf,
        /// HAProxy's configuration to adapt (default: the shipped config/cluster/haproxy.cfg).
        #[arg(long)]
        haproxy_cfg: Option<PathBuf>,
        /// Run on 127.0.0.x addresses even where network namespaces are available.
        #[arg(long)]
        no_namespaces: bool,
        /// Messages per second of each of the four publishers.
        #[arg(long, default_value_t = 20)]
        rate: u32,
    },
    /// Judge a saved history (history.jsonl of a run's report directory) again.
    Check {
        history: PathBuf,
        /// Also write the report files here.
        #[arg(long)]
        report: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

fn parse_faults(names: Option<Vec<String>>) -> anyhow::Result<Vec<FaultKind>> {
    let Some(names) = names else {
        return Ok(FaultKind::ALL.to_vec());
    };
    names
        .iter()
        .map(|n| {
            FaultKind::parse(n.trim()).with_context(|| {
                let known: Vec<&str> = FaultKind::ALL.iter().map(|k| k.name()).collect();
                format!("unknown fault {n:?}; known: {}", known.join(", "))
            })
        })
        .collect()
}

fn seed_now() -> u64 {
    // Only to pick a seed when none is given; the run itself never depends on the clock's value.
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    // Below 2^53, so JSON readers (jq, JavaScript) keep it exact for a replay.
    (t ^ u64::from(std::process::id()).rotate_left(32)) & ((1 << 53) - 1)
}

async fn main_run(cmd: Command) -> anyhow::Result<i32> {
    match cmd {
        Command::Run {
            minutes,
            seed,
            faults,
            report,
            json,
            cicada,
            haproxy,
            haproxy_cfg,
            no_namespaces,
            rate,
        } => {
            if !(minutes > 0.0 && minutes <= 24.0 * 60.0) {
                bail!("--minutes must be above 0 and at most 1440, not {minutes}");
            }
            let faults = parse_faults(faults)?;
            let seed = seed.unwrap_or_else(seed_now);
            let report = report.unwrap_or_else(|| PathBuf::from(format!("chaos-report-{seed}")));
            let names: Vec<&str> = faults.iter().map(|k| k.name()).collect();
            println!(
                "seed {seed} (replay: cicada-chaos run --seed {seed} --minutes {minutes} --faults {})",
                names.join(",")
            );
            let opts = RunOptions {
                seed,
                duration: Duration::from_secs_f64(minutes * 60.0),
                faults,
                report: report.clone(),
                cicada: cicada.unwrap_or_else(|| sibling_binary("cicada")),
                haproxy,
                haproxy_cfg: haproxy_cfg.unwrap_or_else(cicada_chaos::env::shipped_haproxy_cfg),
                namespaces: if no_namespaces {
                    NamespaceMode::Off
                } else {
                    NamespaceMode::Auto
                },
                load: Load { rate },
            };
            let (tx, rx) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    eprintln!("interrupted: healing, stopping the cluster and cleaning up");
                    let _ = tx.send(true);
                }
            });
            let out = run::run(opts, rx).await?;
            if !out.namespaces {
                println!("network namespaces unavailable (not root?): ran on 127.0.0.x without partition and netem");
            }
            if !out.skipped.is_empty() {
                let s: Vec<&str> = out.skipped.iter().map(|k| k.name()).collect();
                println!(
                    "skipped (need network namespaces, or libfaketime for clock_jump): {}",
                    s.join(", ")
                );
            }
            print!("{}", report::summary(seed, out.namespaces, &out.judgement));
            println!("report: {}", report.display());
            if json {
                println!("{}", report::json_line(seed, &out.judgement, Some(&report)));
            }
            Ok(if out.judgement.violations() == 0 {
                0
            } else {
                1
            })
        }
        Command::Check {
            history: path,
            report,
            json,
        } => {
            let records = history::load(&path)?;
            let (seed, namespaces) = records
                .iter()
                .find_map(|r| match &r.event {
                    history::Event::Start {
                        seed, namespaces, ..
                    } => Some((*seed, *namespaces)),
                    _ => None,
                })
                .unwrap_or((0, false));
            let judgement = checker::check(&records);
            if let Some(dir) = &report {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("report directory {}", dir.display()))?;
                report::write_dir(dir, seed, namespaces, &records, &judgement)?;
            }
            print!("{}", report::summary(seed, namespaces, &judgement));
            if json {
                println!("{}", report::json_line(seed, &judgement, report.as_deref()));
            }
            Ok(if judgement.violations() == 0 { 0 } else { 1 })
        }
    }
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber_init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cicada-chaos: cannot start the runtime: {e}");
            std::process::exit(2);
        }
    };
    match rt.block_on(main_run(cli.command)) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("cicada-chaos: {e:#}");
            std::process::exit(2);
        }
    }
}

fn tracing_subscriber_init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
