//! The admin API (`/api/v1`, JSON), what `cicada ctl` talks to. With `[http] token` (or `token_file`) set,
//! every request needs `Authorization: Bearer TOKEN`: 401 without one, 403 with another. Errors are JSON
//! `{"error": "..."}` with a 4xx status, never a panic.
//!
//! - `GET /api/v1/cluster`: this node's raft state (role, leader, term, commit and applied index, log
//!   bounds), the members and their peer addresses, the leader's view of each follower's log, the routes per
//!   node, this node's connections and sessions.
//! - `GET /api/v1/clients[?node=ID]`: the clients with a session on this node (`node` other than this one:
//!   404 naming where to ask).
//! - `GET /api/v1/sessions/{client_id}`: the client's stored session (owner, incarnation, expiry,
//!   subscriptions, inbox) and whether it is on this node.
//! - `POST /api/v1/cluster/transfer-leader?to=ID`: hands raft leadership to a member (asked of the leader).
//! - `POST /api/v1/cluster/join?node=ID&addr=HOST:PORT`, `POST /api/v1/cluster/leave?node=ID`: membership
//!   changes, asked of the leader (see [`super::members`]).
//! - `POST /api/v1/drain`: the node drains and exits 0, as on SIGTERM (see `broker::drain`).

use super::text;
use crate::broker::registry::RegistryMsg;
use crate::broker::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use std::collections::BTreeMap;

const JSON: &str = "application/json";

pub(super) type Body = Response<Full<Bytes>>;

pub(super) fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut s = serde_json::to_string_pretty(&body).unwrap_or_else(|_| "{}".into());
    s.push('\n');
    text(status, JSON, s)
}

pub(super) fn error(status: StatusCode, message: impl Into<String>) -> Response<Full<Bytes>> {
    reply(status, json!({ "error": message.into() }))
}

/// Compares without leaking where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `key=value` pairs of the query string, values percent-decoded (one that is not valid is left out).
fn query(req: &Request<Incoming>) -> BTreeMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(k, v)| Some((k.to_string(), decode_segment(v)?)))
        .collect()
}

/// Percent-decoding of a path segment (client ids may hold any UTF-8).
fn decode_segment(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

pub async fn respond(
    req: Request<Incoming>,
    ctx: &Context,
    token: Option<&str>,
) -> Response<Full<Bytes>> {
    if let Some(token) = token {
        let given = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                // The scheme is case-insensitive (RFC 9110 11.1).
                let (scheme, rest) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            });
        match given {
            None => return error(
                StatusCode::UNAUTHORIZED,
                "this API needs Authorization: Bearer TOKEN ([http] token in the node's config)",
            ),
            Some(g) if !same(g.as_bytes(), token.as_bytes()) => {
                return error(StatusCode::FORBIDDEN, "wrong token")
            }
            Some(_) => {}
        }
    }
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    match (method, path.as_str()) {
        (Method::GET, "/api/v1/cluster") => cluster(ctx).await,
        (Method::GET, "/api/v1/clients") => clients(ctx, &query(&req)).await,
        (Method::GET, p) if p.starts_with("/api/v1/sessions/") => {
            match decode_segment(&p["/api/v1/sessions/".len()..]) {
                Some(id) if !id.is_empty() => session(ctx, &id).await,
                _ => error(
                    StatusCode::BAD_REQUEST,
                    "the client id is not valid percent-encoded UTF-8",
                ),
            }
        }
        (Method::POST, "/api/v1/cluster/transfer-leader") => transfer(ctx, &query(&req)).await,
        (Method::POST, "/api/v1/cluster/join") => super::members::join(ctx, &query(&req)).await,
        (Method::POST, "/api/v1/cluster/leave") => super::members::leave(ctx, &query(&req)).await,
        (Method::POST, "/api/v1/drain") => {
            // `cicada serve` drains and exits 0, as on SIGTERM.
            ctx.draining
                .store(true, std::sync::atomic::Ordering::Release);
            ctx.drain_requested.notify_one();
            reply(StatusCode::ACCEPTED, json!({"draining": true}))
        }
        (
            m,
            p @ ("/api/v1/cluster"
            | "/api/v1/clients"
            | "/api/v1/cluster/transfer-leader"
            | "/api/v1/cluster/join"
            | "/api/v1/cluster/leave"
            | "/api/v1/drain"),
        ) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{m} is not allowed on {p}"),
        ),
        (_, p) => error(
            StatusCode::NOT_FOUND,
            format!(
                "no such endpoint: {p} (see /api/v1/cluster, /api/v1/clients, /api/v1/sessions/ID)"
            ),
        ),
    }
}

async fn cluster(ctx: &Context) -> Response<Full<Bytes>> {
    let Some(store) = &ctx.store else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this node runs without a store",
        );
    };
    let status = match store.status().await {
        Ok(s) => s,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, format!("raft node: {e}")),
    };
    let members: BTreeMap<String, String> = store
        .cluster()
        .view()
        .peers()
        .unwrap_or_default()
        .into_iter()
        .map(|(id, addr)| (id.to_string(), addr))
        .collect();
    let routes: BTreeMap<String, usize> = ctx
        .remote
        .as_ref()
        .map(|l| {
            l.table()
                .nodes()
                .into_iter()
                .map(|(n, c)| (n.to_string(), c))
                .collect()
        })
        .unwrap_or_default();
    let m = &ctx.metrics;
    reply(
        StatusCode::OK,
        json!({
            "node_id": status.id,
            "role": status.role,
            "leader": status.leader,
            "term": status.term,
            "commit_index": status.commit,
            "applied_index": status.applied,
            "first_index": status.first_index,
            "last_index": status.last_index,
            "voters": status.voters,
            "learners": status.learners,
            "members": members,
            "replication": status.peers.iter().map(|(n, matched)| json!({"node": n, "matched_index": matched})).collect::<Vec<_>>(),
            "routes_per_node": routes,
            "ready": !ctx.shutdown.is_cancelled() && store.has_leader(),
            "connections": m.connections.get(),
            "sessions": {"online": m.sessions_online.get(), "offline": m.sessions_offline.get()},
        }),
    )
}

async fn clients(ctx: &Context, q: &BTreeMap<String, String>) -> Response<Full<Bytes>> {
    let me = ctx.store.as_ref().map_or(1, |s| s.node_id());
    if let Some(n) = q.get("node") {
        match n.parse::<u64>() {
            Ok(n) if n == me => {}
            Ok(n) => {
                return error(
                    StatusCode::NOT_FOUND,
                    format!("this is node {me}: ask node {n} at its own HTTP address"),
                )
            }
            Err(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("node={n:?} is not a node id"),
                )
            }
        }
    }
    let Some(registry) = ctx.registry.get() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the broker is starting");
    };
    match registry.call(RegistryMsg::List, None).await {
        Ok(ractor::rpc::CallResult::Success(list)) => reply(
            StatusCode::OK,
            json!({
                "node_id": me,
                "clients": list.into_iter().map(|(id, online)| json!({"client_id": id, "connected": online})).collect::<Vec<_>>(),
            }),
        ),
        _ => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the registry did not answer",
        ),
    }
}

async fn session(ctx: &Context, client_id: &str) -> Response<Full<Bytes>> {
    let Some(store) = &ctx.store else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this node runs without a store",
        );
    };
    let Some(rec) = store.session(client_id) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no stored session for {client_id:?} (clean sessions are listed by /api/v1/clients on their node)"),
        );
    };
    let inbox = store.inbox_summary(client_id, rec.incarnation);
    let owner = store.owner(client_id);
    reply(
        StatusCode::OK,
        json!({
            "client_id": client_id,
            "owner_node": owner.map(|o| o.node),
            "owner_epoch": owner.map(|o| o.epoch),
            "incarnation": rec.incarnation,
            "expiry_seconds": rec.expiry,
            "connected": rec.offline_since == 0,
            "subscriptions": rec.subscriptions.iter().map(|(f, o, id)| json!({"filter": f, "qos": o.qos as u8, "no_local": o.no_local, "retain_as_published": o.retain_as_published, "subscription_identifier": id})).collect::<Vec<_>>(),
            "inbox": {"messages": inbox.count, "bytes": inbox.bytes, "last_seq": inbox.last_seq},
            "inbound_qos2_ids": store.qos2_ids(client_id).len(),
        }),
    )
}

async fn transfer(ctx: &Context, q: &BTreeMap<String, String>) -> Response<Full<Bytes>> {
    let Some(store) = &ctx.store else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this node runs without a store",
        );
    };
    let Some(to) = q.get("to").and_then(|t| t.parse::<u64>().ok()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "give the new leader as ?to=NODE_ID",
        );
    };
    let members = store.cluster().view().peers().unwrap_or_default();
    if !members.contains_key(&to) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("node {to} is not a member"),
        );
    }
    let leader = store.cluster().leader();
    if leader != store.node_id() {
        return error(
            StatusCode::CONFLICT,
            format!("this node is not the leader (node {leader} is): ask it"),
        );
    }
    store.cluster().transfer_leader(to);
    reply(StatusCode::ACCEPTED, json!({"transferring_to": to}))
}
