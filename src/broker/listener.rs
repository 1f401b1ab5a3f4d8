//! Accept loops. Each accepted socket is served by its own task, tracked for shutdown.

use super::connection::{self, Identity};
use super::tls::{self, Tls};
use super::Context;
use crate::auth::Auth;
use crate::config::{ListenerConfig, ListenerKind};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

/// Accepts until shutdown. An accept error (e.g. out of file descriptors) is logged and retried after a
/// short pause instead of ending the listener.
pub async fn run(
    sock: TcpListener,
    config: ListenerConfig,
    auth: Arc<Auth>,
    tls: Option<Arc<Tls>>,
    ctx: Arc<Context>,
    tasks: TaskTracker,
) {
    let config = Arc::new(config);
    let mut rate = super::ratelimit::bucket(config.max_connection_rate, std::time::Instant::now());
    loop {
        let accepted = tokio::select! {
            r = sock.accept() => r,
            _ = ctx.shutdown.cancelled() => return,
        };
        if let Some(bucket) = rate.as_mut() {
            // Over max_connection_rate the next accept waits; arrivals queue in the kernel's backlog.
            let wait = bucket.take(1, std::time::Instant::now());
            if !wait.is_zero() {
                ctx.metrics
                    .rate_limited
                    .with_label_values(&["listener_connections"])
                    .inc();
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = ctx.shutdown.cancelled() => return,
                }
            }
        }
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                if config.kind == ListenerKind::Tcp && !config.proxy_protocol {
                    let serve = connection::serve(
                        stream,
                        peer,
                        config.clone(),
                        auth.clone(),
                        Identity::None,
                        ctx.clone(),
                    );
                    tasks.spawn(serve);
                } else {
                    tasks.spawn(upgrade(
                        stream,
                        peer,
                        tls.clone(),
                        config.clone(),
                        auth.clone(),
                        ctx.clone(),
                    ));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = ctx.shutdown.cancelled() => return,
                }
            }
        }
    }
}

/// The PROXY header, the TLS and/or WebSocket handshakes (all bounded by the CONNECT timeout), then MQTT
/// over the result.
async fn upgrade(
    mut stream: tokio::net::TcpStream,
    mut peer: std::net::SocketAddr,
    tls: Option<Arc<Tls>>,
    config: Arc<ListenerConfig>,
    auth: Arc<Auth>,
    ctx: Arc<Context>,
) {
    let max = ctx.config.limits.max_packet_size as usize;
    let deadline = tokio::time::Instant::now() + connection::CONNECT_TIMEOUT;
    let socket_peer = peer;
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        tracing::info!(peer = %socket_peer, error = %e, "{what} handshake failed");
    };
    macro_rules! step {
        ($what:expr, $fut:expr, $metric:expr) => {
            match tokio::select! {
                r = tokio::time::timeout_at(deadline, $fut) => r,
                _ = ctx.shutdown.cancelled() => return,
            } {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    $metric.inc();
                    failed($what, &e);
                    return;
                }
                Err(e) => {
                    $metric.inc();
                    failed($what, &e);
                    return;
                }
            }
        };
    }
    let m = &ctx.metrics;
    if config.proxy_protocol {
        let via = peer;
        peer = step!(
            "PROXY",
            super::proxy::read_header(&mut stream, peer),
            m.proxy_header_failures
        );
        tracing::debug!(%peer, %via, "PROXY header");
    }
    match (config.kind, tls) {
        (ListenerKind::Tcp, _) => {
            connection::serve(stream, peer, config, auth, Identity::None, ctx).await
        }
        (ListenerKind::Ws, _) => {
            let ws = step!(
                "WebSocket",
                crate::ws::accept(stream, &config.path, max),
                m.ws_handshake_failures
            );
            connection::serve(ws, peer, config, auth, Identity::None, ctx).await;
        }
        (ListenerKind::Tls, Some(tls)) => {
            let s = step!(
                "TLS",
                tls.acceptor().accept(stream),
                m.tls_handshake_failures
            );
            let identity = identity_of(&tls, s.get_ref().1);
            connection::serve(s, peer, config, auth, identity, ctx).await;
        }
        (ListenerKind::Wss, Some(tls)) => {
            let s = step!(
                "TLS",
                tls.acceptor().accept(stream),
                m.tls_handshake_failures
            );
            let identity = identity_of(&tls, s.get_ref().1);
            let ws = step!(
                "WebSocket",
                crate::ws::accept(s, &config.path, max),
                m.ws_handshake_failures
            );
            connection::serve(ws, peer, config, auth, identity, ctx).await;
        }
        (kind @ (ListenerKind::Tls | ListenerKind::Wss), None) => {
            tracing::error!(%kind, "listener kind without its TLS configuration")
        }
    }
}

/// The client certificate's identity when the listener uses it as the user name.
fn identity_of(tls: &Tls, session: &rustls::ServerConnection) -> Identity {
    if !tls.config.use_identity_as_username {
        return Identity::None;
    }
    match session
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(tls::identity)
    {
        Some(name) => Identity::Certificate(name),
        None => Identity::Missing,
    }
}
