//! The workload: real MQTT clients (Cicada's own client, and raw sockets for the bad ones) through HAProxy
//! and straight to nodes, recording every operation in the history. Publishers with numbered messages,
//! persistent subscribers at QoS 1 and 2 (slow ones, one that goes offline, ones that move between nodes,
//! two members of one shared group on different nodes),
//! a retained writer and readers on every node, roamers that take their sessions over from node to node,
//! misbehaving clients, and an availability probe.

pub mod bad;
pub mod conn;
pub mod ledger;
pub mod probe;
pub mod publisher;
pub mod pump;
pub mod resuming;
pub mod retained;
pub mod roamer;
pub mod subscriber;

pub use conn::{Ctx, Targets};

use crate::history::{Recorder, Via};
use crate::rng::Rng;
use cicada::protocol::{ProtocolVersion, QoS};
use ledger::Ledger;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How hard the workload pushes.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Messages per second of each publisher.
    pub rate: u32,
}

impl Default for Load {
    fn default() -> Self {
        Load { rate: 20 }
    }
}

/// The running workload.
pub struct Workload {
    tasks: Vec<JoinHandle<()>>,
    /// The publishers, awaited when draining (every outcome recorded before the subscribers are judged).
    publishing: Vec<JoinHandle<()>>,
    stop: watch::Sender<bool>,
    draining: watch::Sender<bool>,
    ledger: Arc<Ledger>,
}

impl Workload {
    /// Starts every client of the workload.
    pub fn start(targets: Targets, rec: Recorder, seed: u64, load: Load) -> Workload {
        let (stop, stop_rx) = watch::channel(false);
        let (draining, draining_rx) = watch::channel(false);
        let ctx = Ctx::new(targets, rec, stop_rx, draining_rx);
        let ledger = Arc::new(Ledger::default());
        let mut rng = Rng::new(seed).fork(0x776f_726b);
        let nodes: Vec<Via> = (0..ctx.targets.nodes.len())
            .map(|i| ctx.targets.node(i))
            .collect();
        let mut tasks = Vec::new();

        // The shared group's members start on different nodes and move on when their node fails.
        let mut from_second = nodes.clone();
        let second = 1.min(from_second.len());
        from_second.rotate_left(second);
        let group = subscriber::GROUP_FILTER;
        let data = subscriber::DATA_FILTER;
        let subscribers = [
            (
                "sub-q1-haproxy",
                QoS::AtLeastOnce,
                ProtocolVersion::V5,
                None,
                vec![Via::Haproxy],
                false,
                data,
            ),
            (
                "sub-q2-roaming",
                QoS::ExactlyOnce,
                ProtocolVersion::V5,
                None,
                nodes.clone(),
                false,
                data,
            ),
            (
                "sub-q2-slow",
                QoS::ExactlyOnce,
                ProtocolVersion::V5,
                Some(Duration::from_millis(25)),
                vec![Via::Haproxy],
                false,
                data,
            ),
            (
                "sub-q1-v311-offline",
                QoS::AtLeastOnce,
                ProtocolVersion::V311,
                None,
                nodes.clone(),
                true,
                data,
            ),
            (
                "sub-share-1",
                QoS::ExactlyOnce,
                ProtocolVersion::V5,
                None,
                nodes.clone(),
                false,
                group,
            ),
            (
                "sub-share-2",
                QoS::ExactlyOnce,
                ProtocolVersion::V5,
                None,
                from_second,
                false,
                group,
            ),
        ];
        for (id, qos, version, slow, via, offline, filter) in subscribers {
            let spec = subscriber::Spec {
                id: id.into(),
                qos,
                version,
                slow,
                via,
                offline,
                filter,
            };
            tasks.push(tokio::spawn(subscriber::run(
                ctx.clone(),
                spec,
                ledger.clone(),
                rng.next_u64(),
            )));
        }

        let mut publishing = Vec::new();
        let publishers = [
            (
                "pub-1",
                QoS::AtLeastOnce,
                ProtocolVersion::V5,
                vec![Via::Haproxy],
            ),
            (
                "pub-2",
                QoS::ExactlyOnce,
                ProtocolVersion::V5,
                vec![Via::Haproxy],
            ),
            (
                "pub-3",
                QoS::AtLeastOnce,
                ProtocolVersion::V311,
                nodes.clone(),
            ),
            (
                "pub-4",
                QoS::ExactlyOnce,
                ProtocolVersion::V5,
                nodes.clone(),
            ),
        ];
        for (id, qos, version, via) in publishers {
            let spec = publisher::Spec {
                id: id.into(),
                qos,
                version,
                rate: load.rate,
                via,
                window: 16,
            };
            publishing.push(tokio::spawn(publisher::run(
                ctx.clone(),
                spec,
                ledger.clone(),
            )));
        }

        // A QoS 2 publisher that keeps its session and resends on whichever node it reconnects to.
        publishing.push(tokio::spawn(resuming::run(
            ctx.clone(),
            "pub-5-resuming".into(),
            load.rate,
            nodes.clone(),
            ledger.clone(),
        )));
        tasks.push(tokio::spawn(retained::write(
            ctx.clone(),
            Duration::from_millis(200),
        )));
        for r in 0..2 {
            tasks.push(tokio::spawn(retained::read(
                ctx.clone(),
                format!("retain-reader-{r}"),
                r,
                Duration::from_millis(500),
            )));
        }
        for r in 0..2 {
            tasks.push(tokio::spawn(roamer::run(
                ctx.clone(),
                format!("roam-{r}"),
                rng.next_u64(),
            )));
        }
        tasks.push(tokio::spawn(bad::run(ctx.clone(), Duration::from_secs(2))));
        tasks.push(tokio::spawn(probe::run(
            ctx.clone(),
            Duration::from_millis(300),
        )));

        Workload {
            tasks,
            publishing,
            stop,
            draining,
            ledger,
        }
    }

    /// The client id whose session the nemesis's "kill the owner" fault targets.
    pub const OWNED: &'static str = "sub-q2-roaming";

    /// The last phase: publishing stops, subscribers stay online; returns once every persistent subscriber
    /// has every acknowledged message or `within` has passed (the checker then says what is missing).
    pub async fn drain(&mut self, within: Duration) -> usize {
        let _ = self.draining.send(true);
        let deadline = Instant::now() + within;
        // Publishers stop and record their last outcomes first (bounded by their operation timeout).
        for p in self.publishing.drain(..) {
            let abort = p.abort_handle();
            if tokio::time::timeout_at(deadline, p).await.is_err() {
                abort.abort();
            }
        }
        // Then the subscribers catch up: nothing missing on two looks in a row.
        let mut clear = 0;
        loop {
            let missing = self.ledger.missing();
            clear = if missing == 0 { clear + 1 } else { 0 };
            if clear >= 2 || Instant::now() >= deadline {
                return missing;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Stops every client and waits for them (bounded).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.publishing.into_iter().chain(self.tasks) {
            let abort = t.abort_handle();
            if tokio::time::timeout(Duration::from_secs(15), t)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}
