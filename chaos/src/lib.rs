//! `cicada-chaos`: checks the promises of ARCHITECTURE §5 against a real three-node Cicada cluster, the way
//! Jepsen checks databases. A workload of real MQTT clients records a [`history`], a nemesis injects faults
//! (kill -9, SIGSTOP, partitions, slow links, rolling restarts), and a checker judges the history, one verdict
//! per promise.

pub mod checker;
pub mod env;
pub mod history;
pub mod nemesis;
pub mod report;
pub mod rng;
pub mod run;
pub mod workload;
