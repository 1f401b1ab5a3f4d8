//! Plays a schedule against the cluster: each step at its time, held, healed, recorded; after a node comes
//! back (kill, pause, rolling restart) it is checked for catching up and a `Rejoin` is recorded.

use super::schedule::Step;
use crate::env::Cluster;
use crate::history::{Event, FaultKind, FaultPhase, NodeId, Recorder};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Mutex};
use tokio::time::Instant;

/// How long a node that came back may take to be ready and caught up.
pub const REJOIN_WAIT: Duration = Duration::from_secs(60);

/// How often the rejoin check polls.
const POLL: Duration = Duration::from_millis(100);

const ALL: [NodeId; 3] = [1, 2, 3];

/// Plays `steps` (times relative to this call) until they are done or `stop` turns true (whatever is
/// active is then healed). Returns the rounds done: faults applied and healed.
pub async fn run(
    cluster: Arc<Mutex<Cluster>>,
    steps: Vec<Step>,
    rec: Recorder,
    owner_client: String,
    mut stop: watch::Receiver<bool>,
) -> u64 {
    let start = Instant::now();
    let nemesis = Nemesis {
        cluster,
        rec,
        owner_client,
    };
    let mut rounds = 0;
    for step in steps {
        if !hold(start + Duration::from_millis(step.at_ms), &mut stop).await {
            break;
        }
        if nemesis.apply(&step, &mut stop).await {
            rounds += 1;
        }
        if *stop.borrow() {
            break;
        }
    }
    rounds
}

/// Sleeps until `until`; false when `stop` turned true first.
async fn hold(until: Instant, stop: &mut watch::Receiver<bool>) -> bool {
    loop {
        if *stop.borrow_and_update() {
            return false;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(until) => return true,
            changed = stop.changed() => if changed.is_err() {
                // No one can stop us any more: just the schedule.
                tokio::time::sleep_until(until).await;
                return true;
            },
        }
    }
}

struct Nemesis {
    cluster: Arc<Mutex<Cluster>>,
    rec: Recorder,
    owner_client: String,
}

impl Nemesis {
    fn fault(&self, kind: FaultKind, phase: FaultPhase, targets: Vec<NodeId>, detail: String) {
        tracing::info!(kind = kind.name(), ?phase, ?targets, %detail, "fault");
        self.rec.record(Event::Fault {
            kind,
            phase,
            targets,
            detail,
        });
    }

    /// Applies, holds and heals one step; false when the fault could not be applied.
    async fn apply(&self, step: &Step, stop: &mut watch::Receiver<bool>) -> bool {
        let kind = step.kind;
        let random = (step.pick % ALL.len() as u64) as NodeId + 1;
        let until = Instant::now() + Duration::from_millis(step.hold_ms);
        let applied = match kind {
            FaultKind::Kill | FaultKind::KillLeader | FaultKind::KillOwner => {
                let (n, why) = self.target(kind, random).await;
                let r = self.cluster.lock().await.kill(n).await;
                r.map(|()| (vec![n], format!("kill -9 node {n} ({why})")))
            }
            FaultKind::Pause => {
                let r = self.cluster.lock().await.pause(random);
                r.map(|()| (vec![random], format!("SIGSTOP node {random}")))
            }
            FaultKind::Partition => {
                let r = self.cluster.lock().await.partition(random).await;
                r.map(|()| {
                    (
                        vec![random],
                        format!("node {random} cut off from the others"),
                    )
                })
            }
            FaultKind::Netem => {
                let r = self.cluster.lock().await.netem(true).await;
                r.map(|applied| (ALL.to_vec(), applied.to_string()))
            }
            FaultKind::Rolling => {
                Ok((ALL.to_vec(), "drain and restart, one node at a time".into()))
            }
            FaultKind::ClockJump => {
                // Forward or back, 10 minutes to 2 hours: past the workload's session expiry (600 s for
                // the roamers) either way.
                let minutes = 10 + (step.pick >> 8) % 111;
                let secs = (minutes * 60) as i64 * if step.pick & 0x10 == 0 { 1 } else { -1 };
                let r = self.cluster.lock().await.clock_jump(random, secs);
                r.map(|()| (vec![random], format!("node {random}'s clock {secs:+} s")))
            }
        };
        let (targets, detail) = match applied {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(kind = kind.name(), error = %e, "fault not applied");
                return false;
            }
        };
        self.fault(kind, FaultPhase::Start, targets.clone(), detail);
        if kind == FaultKind::Rolling {
            let detail = self.rolling(stop).await;
            self.fault(kind, FaultPhase::End, targets, detail);
            return true;
        }
        hold(until, stop).await;
        let n = targets[0];
        let (healed, back) = match kind {
            FaultKind::Pause => (self.cluster.lock().await.resume(n), true),
            FaultKind::Partition | FaultKind::Netem => {
                (self.cluster.lock().await.heal().await, false)
            }
            FaultKind::ClockJump => (self.cluster.lock().await.clock_jump(n, 0), false),
            _ => (self.cluster.lock().await.restart(n).await, true),
        };
        let detail = match &healed {
            Ok(()) => "healed".to_string(),
            Err(e) => format!("healing failed: {e}"),
        };
        if let Err(e) = &healed {
            tracing::warn!(kind = kind.name(), error = %e, "fault not healed");
        }
        self.fault(kind, FaultPhase::End, targets, detail);
        if back {
            self.rejoin(n, healed.is_ok()).await;
        }
        true
    }

    /// The node a kill acts on, and why that one.
    async fn target(&self, kind: FaultKind, random: NodeId) -> (NodeId, String) {
        let c = self.cluster.lock().await;
        match kind {
            FaultKind::KillLeader => match c.leader().await {
                Some(n) => (n, "the leader".into()),
                None => (random, "no leader known: a random node".into()),
            },
            FaultKind::KillOwner => match c.owner(&self.owner_client).await {
                Some(n) => (n, format!("owner of {}", self.owner_client)),
                None => (
                    random,
                    format!("no owner of {} known: a random node", self.owner_client),
                ),
            },
            _ => (random, "a random node".into()),
        }
    }

    /// Drains and restarts every node in turn, each caught up before the next; stops early on `stop`.
    /// Returns what happened to each node (for the fault's end record).
    async fn rolling(&self, stop: &mut watch::Receiver<bool>) -> String {
        let mut done = Vec::new();
        for n in ALL {
            let drained = self.cluster.lock().await.drain(n).await;
            match drained {
                Ok(true) => {
                    tracing::info!(node = n, "drained");
                    done.push(format!("node {n} drained"));
                }
                Ok(false) => {
                    tracing::warn!(node = n, "did not exit after drain: killed");
                    done.push(format!("node {n} killed (no exit after drain)"));
                }
                Err(e) => {
                    tracing::warn!(node = n, error = %e, "drain failed: killed");
                    done.push(format!("node {n} killed (drain failed: {e})"));
                }
            }
            let restarted = self.cluster.lock().await.restart(n).await;
            if let Err(e) = &restarted {
                tracing::warn!(node = n, error = %e, "restart failed");
            }
            self.rejoin(n, restarted.is_ok()).await;
            if *stop.borrow() {
                done.push("stopped early".into());
                break;
            }
        }
        done.join(", ")
    }

    /// Records whether node `n`, just back, answers `/ready` 200 with an applied index at least the
    /// leader's commit index of when it came back, within [`REJOIN_WAIT`].
    async fn rejoin(&self, n: NodeId, started: bool) {
        let back = Instant::now();
        let (target, applied, ok) = if started {
            self.catch_up(n, back + REJOIN_WAIT).await
        } else {
            (None, 0, false)
        };
        let ms = back.elapsed().as_millis() as u64;
        let target = target.unwrap_or(0);
        if ok {
            tracing::info!(node = n, applied, target, ms, "rejoined");
        } else {
            tracing::warn!(node = n, applied, target, ms, "did not rejoin");
        }
        self.rec.record(Event::Rejoin {
            node: n,
            ok,
            applied,
            target,
            ms,
        });
    }

    /// Polls node `n` until it is ready with the target applied, or `deadline`: (target, applied, ok).
    async fn catch_up(&self, n: NodeId, deadline: Instant) -> (Option<u64>, u64, bool) {
        let (mut target, mut applied) = (None, 0);
        loop {
            {
                let c = self.cluster.lock().await;
                if target.is_none() {
                    if let Some(l) = c.leader().await {
                        target = c.status(l).await.map(|s| s.commit_index);
                    }
                }
                if let Some(s) = c.status(n).await {
                    applied = s.applied_index;
                    if target.is_some_and(|t| applied >= t) && c.ready_code(n).await == Some(200) {
                        return (target, applied, true);
                    }
                }
            }
            if Instant::now() >= deadline {
                return (target, applied, false);
            }
            tokio::time::sleep(POLL).await;
        }
    }
}
