//! Whether this node still holds a client's connection (ARCHITECTURE §5.4: at most one live connection per
//! client id). Asked before something is acknowledged on a connection whose node may have missed a takeover:
//! after the reader's read barrier (the node stalled or lost the leader), and before an acknowledgement that
//! waited for a commit leaves (the node may have stalled during the wait, or applied the take in the same
//! batch as the commit, before its registry closed the connection).
//!
//! Another node's CONNACK for the client waits for this node to let go, or for this node's freshness lease
//! to run out (see `remote::TAKEOVER_SYNC_MARGIN`). So a node that is fresh now has applied every take
//! whose CONNACK is already out, and its applied owner record is enough; a node that is not fresh reads
//! through the leader first. The registry decides when the record names another node (its own claim may be
//! on its way, later in the log).

use super::registry::RegistryMsg;
use super::Context;
use cicada_cluster::ClusterError;
use ractor::rpc::CallResult;
use std::time::Duration;

/// How long the registry gets to confirm; no answer in time counts as not held (nothing is acknowledged
/// on a connection this node cannot vouch for: the client sends again). Also how long a reader then waits
/// for its connection's close.
pub const CONFIRM_WAIT: Duration = Duration::from_secs(3);

/// The answer.
#[derive(Debug)]
pub enum Held {
    /// This node holds the client: acknowledge.
    Yes,
    /// Another node took the client over: the registry is closing the connection (0x8E); acknowledge
    /// nothing.
    No,
    /// The registry did not answer in time: acknowledge nothing, close the connection (the client sends
    /// again, here or elsewhere).
    Unconfirmed,
    /// Not fresh and no leader to read through: nothing can be vouched for.
    NoLeader(ClusterError),
}

/// Whether the node holds `client_id`, reading through the leader only when this node is not fresh.
/// `check_fresh`: also compare the applied owner record when fresh (an acknowledgement that waited for a
/// commit); the reader, which has just routed the message, skips that read.
pub async fn held(ctx: &Context, client_id: &str, check_fresh: bool) -> Held {
    let Some(store) = ctx.store.as_ref().filter(|s| s.clustered()) else {
        return Held::Yes;
    };
    let barriers = &ctx.metrics.read_barriers;
    if store.cluster().fresh() {
        if !check_fresh {
            return Held::Yes;
        }
        let owner = store.owner(client_id);
        if owner.is_none_or(|o| o.node == store.node_id()) {
            return Held::Yes;
        }
    } else {
        match store.ensure_fresh().await {
            Ok(()) => barriers.with_label_values(&["ok"]).inc(),
            Err(e) => {
                barriers.with_label_values(&["refused"]).inc();
                return Held::NoLeader(e);
            }
        }
    }
    confirm(ctx, client_id).await
}

/// The registry's answer (see [`RegistryMsg::Confirm`]); it ends the session when another node holds the
/// client now.
async fn confirm(ctx: &Context, client_id: &str) -> Held {
    let Some(registry) = ctx.registry.get() else {
        return Held::No;
    };
    let confirmed = registry
        .call(
            |reply| RegistryMsg::Confirm {
                client_id: client_id.to_string(),
                reply,
            },
            Some(CONFIRM_WAIT),
        )
        .await;
    match confirmed {
        Ok(CallResult::Success(true)) => return Held::Yes,
        Ok(CallResult::Success(false)) => {}
        _ => {
            tracing::warn!(
                client_id,
                "the registry did not confirm the client is held here in time: not acknowledged"
            );
            return Held::Unconfirmed;
        }
    }
    ctx.metrics
        .read_barriers
        .with_label_values(&["taken_over"])
        .inc();
    tracing::info!(
        client_id,
        "another node holds the client now: not acknowledged"
    );
    Held::No
}

/// What a connection does when the client is [`Held::Unconfirmed`]: closes itself.
pub fn close_unconfirmed(handle: &super::conn::ConnHandle) {
    handle.close_with(
        crate::protocol::ReasonCode::UNSPECIFIED_ERROR,
        Some("this node could not confirm it still holds the session".into()),
    );
}
