//! Accept loops. Each accepted socket is served by its own task, tracked for shutdown.

use super::connection::{self, Identity};
use super::tls::{self, Tls};
use super::Context;
use crate::auth::Auth;
use crate::config::ListenerConfig;
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
    loop {
        let accepted = tokio::select! {
            r = sock.accept() => r,
            _ = ctx.shutdown.cancelled() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                match &tls {
                    None => {
                        let serve = connection::serve(
                            stream,
                            peer,
                            config.clone(),
                            auth.clone(),
                            Identity::None,
                            ctx.clone(),
                        );
                        tasks.spawn(serve);
                    }
                    Some(tls) => {
                        tasks.spawn(handshake(
                            stream,
                            peer,
                            tls.clone(),
                            config.clone(),
                            auth.clone(),
                            ctx.clone(),
                        ));
                    }
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

/// The TLS handshake (bounded by the CONNECT timeout), then the MQTT connection over it.
async fn handshake(
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    tls: Arc<Tls>,
    config: Arc<ListenerConfig>,
    auth: Arc<Auth>,
    ctx: Arc<Context>,
) {
    let accepted = tokio::select! {
        r = tokio::time::timeout(connection::CONNECT_TIMEOUT, tls.acceptor().accept(stream)) => r,
        _ = ctx.shutdown.cancelled() => return,
    };
    let stream = match accepted {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            ctx.metrics.tls_handshake_failures.inc();
            tracing::info!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            ctx.metrics.tls_handshake_failures.inc();
            tracing::info!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let identity = if tls.config.use_identity_as_username {
        let cert = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first().cloned());
        match cert.as_ref().and_then(tls::identity) {
            Some(name) => Identity::Certificate(name),
            None => Identity::Missing,
        }
    } else {
        Identity::None
    };
    connection::serve(stream, peer, config, auth, identity, ctx).await;
}
