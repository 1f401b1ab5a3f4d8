//! Accept loops. Each accepted socket is served by its own task, tracked for shutdown.

use super::connection;
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
                tasks.spawn(connection::serve(
                    stream,
                    peer,
                    config.clone(),
                    auth.clone(),
                    ctx.clone(),
                ));
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
