//! Membership changes through the admin API, asked of the raft leader:
//!
//! - `POST /api/v1/cluster/join?node=ID&addr=HOST:PORT`: the node (started with `[cluster] join = true`)
//!   is added as a learner, given the log until it has caught up, then made a voter. 504 if it has not caught
//!   up within [`CATCH_UP`] (it stays a learner: asking again finishes the join).
//! - `POST /api/v1/cluster/leave?node=ID[&force=true]`: the node is removed from the raft group, then its
//!   routes go and it counts as down for good (its connections' Wills fire, its sessions expire; clients
//!   resume them on other nodes). A node heard from within `failure_detection_ms` is refused (409: drain it
//!   first) unless `force=true`.

use super::admin::{error, reply, Body};
use crate::broker::Context;
use crate::store::Store;
use cicada_cluster::{ClusterError, Membership, NodeStatus};
use hyper::StatusCode;
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

/// How long a join waits for the new node to catch up with the log before it answers 504.
pub const CATCH_UP: Duration = Duration::from_secs(20);

/// Why a membership request is refused: the status and message of the JSON error answer.
struct Refusal(StatusCode, String);

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Refusal {
        Refusal(status, message.into())
    }

    fn answer(result: Result<Body, Refusal>) -> Body {
        result.unwrap_or_else(|Refusal(status, message)| error(status, message))
    }
}

/// The store and its status on the leader.
async fn on_leader(ctx: &Context) -> Result<(&Store, NodeStatus), Refusal> {
    let Some(store) = ctx.store.as_deref() else {
        return Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this node runs without a store",
        ));
    };
    let status = store
        .status()
        .await
        .map_err(|e| Refusal::new(StatusCode::SERVICE_UNAVAILABLE, format!("raft node: {e}")))?;
    if status.leader != status.id {
        return Err(Refusal::new(
            StatusCode::CONFLICT,
            format!(
                "this node is not the leader (node {} is): ask it",
                status.leader
            ),
        ));
    }
    Ok((store, status))
}

fn node_param(q: &BTreeMap<String, String>) -> Result<u64, Refusal> {
    match q.get("node").map(|n| n.parse::<u64>()) {
        Some(Ok(n)) if n > 0 => Ok(n),
        _ => Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "give the node as ?node=ID (a positive number)",
        )),
    }
}

/// `host:port` with a port number and a host.
fn valid_addr(addr: &str) -> bool {
    match addr.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0),
        None => false,
    }
}

fn change_failed(e: ClusterError) -> Refusal {
    let status = match e {
        ClusterError::NoLeader | ClusterError::Rejected(_) => StatusCode::CONFLICT,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    Refusal::new(status, format!("the membership change failed: {e}"))
}

fn store_failed(e: ClusterError) -> Refusal {
    Refusal::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("the store refused: {e}"),
    )
}

pub async fn join(ctx: &Context, q: &BTreeMap<String, String>) -> Body {
    Refusal::answer(try_join(ctx, q).await)
}

async fn try_join(ctx: &Context, q: &BTreeMap<String, String>) -> Result<Body, Refusal> {
    let node = node_param(q)?;
    let Some(addr) = q.get("addr").filter(|a| valid_addr(a)) else {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "give the node's peer address as &addr=HOST:PORT (its [cluster] advertise)",
        ));
    };
    let (store, status) = on_leader(ctx).await?;
    if status.voters.contains(&node) {
        return Ok(reply(
            StatusCode::OK,
            json!({"joined": node, "voters": status.voters, "already": true}),
        ));
    }
    let members = store.cluster().view().peers().unwrap_or_default();
    if let Some(known) = members.get(&node).filter(|a| *a != addr) {
        return Err(Refusal::new(
            StatusCode::CONFLICT,
            format!("node {node} is a learner at {known}, not {addr}: remove it first (cicada ctl leave {node})"),
        ));
    }
    if !store.admit_node(node).await.map_err(store_failed)? {
        return Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the store did not apply the admission: ask again",
        ));
    }
    if !status.learners.contains(&node) {
        let add = Membership::AddLearner {
            id: node,
            addr: addr.clone(),
        };
        store
            .cluster()
            .change_membership(add)
            .await
            .map_err(change_failed)?;
        tracing::info!(node, addr = %addr, "node added as a learner");
    }
    if !caught_up(store, node).await {
        return Err(Refusal::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "node {node} is a learner but has not caught up with the log in {} s: is it running with [cluster] join = true, reachable at {addr} and given the cluster's secret? Ask again to finish the join",
                CATCH_UP.as_secs()
            ),
        ));
    }
    store
        .cluster()
        .change_membership(Membership::Promote { id: node })
        .await
        .map_err(change_failed)?;
    tracing::info!(node, "node joined as a voter");
    let voters = store.status().await.map(|s| s.voters).unwrap_or_default();
    Ok(reply(
        StatusCode::OK,
        json!({"joined": node, "voters": voters}),
    ))
}

/// Waits (bounded by [`CATCH_UP`]) until the leader sees the learner's log reach the commit index it had
/// when the wait began.
async fn caught_up(store: &Store, node: u64) -> bool {
    let wait = async {
        let mut target = None;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            let Ok(s) = store.status().await else {
                continue;
            };
            let target = *target.get_or_insert(s.commit);
            if s.peers.iter().any(|&(n, m)| n == node && m >= target) {
                return;
            }
        }
    };
    tokio::time::timeout(CATCH_UP, wait).await.is_ok()
}

pub async fn leave(ctx: &Context, q: &BTreeMap<String, String>) -> Body {
    Refusal::answer(try_leave(ctx, q).await)
}

async fn try_leave(ctx: &Context, q: &BTreeMap<String, String>) -> Result<Body, Refusal> {
    let node = node_param(q)?;
    let (store, status) = on_leader(ctx).await?;
    if node == status.id {
        let other = status.voters.iter().find(|&&v| v != node);
        return Err(Refusal::new(
            StatusCode::CONFLICT,
            match other {
                Some(o) => format!("node {node} leads: move leadership first (cicada ctl transfer-leader {o}), then ask the new leader"),
                None => format!("node {node} is the only voter"),
            },
        ));
    }
    let member = status.voters.contains(&node) || status.learners.contains(&node);
    let force = q.get("force").is_some_and(|f| f == "true");
    if member && !force {
        // A node removed while it runs keeps its clients, never told: two live connections for a client id
        // once the cluster counts it as gone. It must be drained (or dead) first.
        let silent = status
            .silent_ms
            .iter()
            .find(|(n, _)| *n == node)
            .map_or(u64::MAX, |(_, ms)| *ms);
        let threshold = ctx
            .config
            .cluster
            .as_ref()
            .map_or(u64::MAX, |c| c.failure_detection_ms);
        if silent < threshold {
            return Err(Refusal::new(
                StatusCode::CONFLICT,
                format!("node {node} is running (heard from {silent} ms ago): drain it first (cicada ctl --url http://NODE drain), or leave it with --force once it is stopped"),
            ));
        }
    }
    if !member {
        if store.is_departed(node) {
            return Ok(reply(
                StatusCode::OK,
                json!({"left": node, "voters": status.voters, "already": true}),
            ));
        }
        let routed = ctx
            .remote
            .as_ref()
            .is_some_and(|r| r.table().nodes().contains_key(&node));
        if !routed {
            return Err(Refusal::new(
                StatusCode::NOT_FOUND,
                format!("node {node} is not a member"),
            ));
        }
        // Removed from raft earlier, but its departure was not recorded: finish it.
    } else {
        store
            .cluster()
            .change_membership(Membership::Remove { id: node })
            .await
            .map_err(change_failed)?;
        tracing::info!(node, "node removed from the raft group");
    }
    let recorded = store.drop_node(node).await.map_err(|e| {
        Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("node {node} is out of the raft group, but recording its departure failed ({e}): ask again"),
        )
    })?;
    if !recorded {
        return Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("node {node} is out of the raft group, but the store did not apply its departure: ask again"),
        ));
    }
    tracing::info!(node, "node left the cluster");
    let voters = store.status().await.map(|s| s.voters).unwrap_or_default();
    Ok(reply(
        StatusCode::OK,
        json!({"left": node, "voters": voters}),
    ))
}
